"""The plain Envoy baselines route over the engines with the load-balancing policy they are named for."""

import pytest

from frontier_bench import frontdoors, loadgen, processes, workloads

from .backends import Backend

pytestmark = pytest.mark.envoy


async def route(policy: str, tmp_path, *, requests: int, address: str, backends: list[Backend]):
    for b in backends:
        await b.start(address.rsplit(".", 1)[0] + f".{10 + backends.index(b)}")
    engines = [(b.runner.addresses[0][0], b.port) for b in backends]  # type: ignore[union-attr]
    try:
        with processes.Group(tmp_path / "logs") as group:
            door = await frontdoors.start(
                policy,
                group=group,
                engines=engines,
                endpoints_file=tmp_path / "unused.yaml",
                model="m",
                address=address,
                run_dir=tmp_path,
            )
            traces = await loadgen.run(
                url=door.url,
                model="m",
                workload=workloads.no_sharing(prompt_len=4, output_len=2, seed=0),
                schedule=workloads.Schedule(qps=100.0, offsets_s=[i * 0.01 for i in range(requests)], seed=0),
            )
            assert group.children  # still running until the group closes
        assert not group.children
    finally:
        for b in backends:
            await b.stop()
    assert all(t.ok for t in traces), [t.error for t in traces if not t.ok]
    return [b.served for b in backends]


async def test_round_robin_spreads_requests_evenly(tmp_path):
    served = await route(
        "round-robin", tmp_path, requests=30, address="127.4.2.1", backends=[Backend(n) for n in "abc"]
    )
    assert served == [10, 10, 10]


async def test_least_request_avoids_the_slow_engine(tmp_path):
    # One engine holds every request for 1 s; the others answer at once. Envoy's least-request (two random
    # choices, fewer active requests wins) sends the slow one fewer than round-robin's third.
    backends = [Backend("slow", first_token_s=1.0), Backend("b"), Backend("c")]
    served = await route("least-request", tmp_path, requests=60, address="127.4.3.1", backends=backends)
    assert sum(served) == 60
    assert served[0] < 15


async def test_unknown_policy_names_the_allowed_ones(tmp_path):
    with processes.Group(tmp_path) as group, pytest.raises(ValueError, match="round-robin"):
        await frontdoors.start(
            "fastest",
            group=group,
            engines=[],
            endpoints_file=tmp_path,
            model="m",
            address="127.4.0.1",
            run_dir=tmp_path,
        )


async def test_sglang_router_cache_aware_keeps_a_repeated_prompt_on_one_engine(tmp_path):
    pytest.importorskip("sglang_router", reason="sglang-router is installed only for the benchmark")
    backends = [Backend(n) for n in "abc"]
    for i, b in enumerate(backends):
        await b.start(f"127.4.4.{10 + i}")
    engines = [(f"127.4.4.{10 + i}", b.port) for i, b in enumerate(backends)]
    one_prompt = workloads.Trace(
        name="one", params={}, prompts=[workloads.Prompt(prompt="abc " * 500, max_tokens=2, group="g")]
    )
    try:
        with processes.Group(tmp_path / "logs") as group:
            door = await frontdoors.start(
                frontdoors.SGLANG_POLICY,
                group=group,
                engines=engines,
                endpoints_file=tmp_path / "unused.yaml",
                model="m",
                address="127.4.4.1",
                run_dir=tmp_path,
            )
            traces = await loadgen.run(
                url=door.url,
                model="m",
                workload=one_prompt,
                schedule=workloads.Schedule(qps=10.0, offsets_s=[i * 0.1 for i in range(10)], seed=0),
            )
    finally:
        for b in backends:
            await b.stop()
    assert all(t.ok for t in traces), [t.error for t in traces if not t.ok]
    assert sorted(b.served for b in backends) == [0, 0, 10]
