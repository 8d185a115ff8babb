"""The load generator measures what the server did, sends open-loop, and traces failures."""

import time

import pytest

from frontier_bench import loadgen, progress, stats, workloads

from .backends import Backend


def workload(output_len: int = 5) -> workloads.Workload:
    return workloads.no_sharing(prompt_len=10, output_len=output_len, seed=0)


async def test_ttft_itl_and_usage_match_what_the_server_did():
    backend = Backend("a", first_token_s=0.20, itl_s=0.05, cached=7)
    await backend.start("127.4.1.1")
    try:
        schedule = workloads.Schedule(qps=1.0, offsets_s=[0.0, 0.1], seed=0)
        traces = await loadgen.run(
            url=f"http://127.4.1.1:{backend.port}", model="m", workload=workload(), schedule=schedule
        )
    finally:
        await backend.stop()
    assert [t.ok for t in traces] == [True, True]
    for t in traces:
        assert t.ttft == pytest.approx(0.20, abs=0.08)
        assert len(t.token_times) == 5
        assert all(gap == pytest.approx(0.05, abs=0.04) for gap in t.itls())
        assert (t.prompt_tokens, t.completion_tokens, t.cached_tokens) == (10, 5, 7)
    summary = stats.summarize(traces)
    assert summary["prefix_hit_rate"] == pytest.approx(7 / 10)


async def test_requests_are_sent_on_schedule_whatever_the_server_does():
    backend = Backend("slow", first_token_s=1.0, itl_s=0.0)
    await backend.start("127.4.1.2")
    counters = progress.Counters()
    try:
        offsets = [0.0, 0.05, 0.10, 0.15, 0.20]
        start = time.perf_counter()
        traces = await loadgen.run(
            url=f"http://127.4.1.2:{backend.port}",
            model="m",
            workload=workload(1),
            schedule=workloads.Schedule(qps=20.0, offsets_s=offsets, seed=0),
            counters=counters,
        )
    finally:
        await backend.stop()
    sent = [t.sent - start for t in traces]
    assert sent == pytest.approx(offsets, abs=0.05)  # open loop: not held back by the 1 s responses
    assert (counters.total, counters.sent, counters.done, counters.failed) == (5, 5, 5, 0)


async def test_refused_and_unreachable_requests_are_traced_as_failures():
    schedule = workloads.Schedule(qps=1.0, offsets_s=[0.0], seed=0)
    traces = await loadgen.run(url="http://127.4.1.3:9", model="m", workload=workload(), schedule=schedule)
    assert not traces[0].ok and "Client" in (traces[0].error or "")
    assert stats.summarize(traces)["failed"] == 1


async def test_requests_still_running_at_the_drain_timeout_are_cancelled():
    backend = Backend("stuck", first_token_s=5.0)
    await backend.start("127.4.1.4")
    try:
        traces = await loadgen.run(
            url=f"http://127.4.1.4:{backend.port}",
            model="m",
            workload=workload(),
            schedule=workloads.Schedule(qps=1.0, offsets_s=[0.0], seed=0),
            drain_timeout_s=0.3,
        )
    finally:
        await backend.stop()
    assert traces[0].error and "drain timeout" in traces[0].error
