"""`gie-default`, Frontier's in-process stand-in for the GIE EPP's default scheduling (the virtual-time suites
run it where the real EPP cannot), picks what the real GIE EPP v1.5.0 picks on a small recorded scenario.

Setup as the gie-mode benchmark runs the EPP: four simulated engines published as the Pods of one
InferencePool on the local control plane, the real EPP (built by `make epp`) behind a real Envoy in GIE's
full-duplex mode. Each engine carries a different background load, requests sent to it directly (so the EPP
never sees them), so every engine reports a different KV-cache use: the KV scores never tie, and neither do
the totals, so GIE's random tie-break never decides (that is the one behaviour the two cannot share pick by
pick). Scenario requests go through Envoy one at a time; the EPP's pick is the engine whose
`vllm:request_success_total` moved. Before each request the test scrapes the engines itself, builds the
snapshot the EPP saw (same metrics; the background load changes by under 1% of the KV cache per second)
and asks `gie-default` for its pick; as both learn prefixes only from their own picks, agreeing on every
pick keeps their prefix indexes equal.

The scenario exercises every term of score = 2 x queue + 2 x (1 - KV use) + 3 x prefix share: fresh prompts
go to the least-used engine; a prompt whose prefix one engine holds goes there over a less-used engine when
the shared part is large (prefix beats load) and not when it is small (load beats prefix). Requests are
completions (a plain `prompt`): for chat requests the EPP hashes the JSON of the messages and Frontier their
role and text, so block boundaries differ there and matched shares can differ slightly.
"""

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from kubernetes import client as k8s_client

from frontier_api import names
from frontier_bench import fleet, gie_mode, processes
from frontier_picker import endpoints, scraper
from frontier_picker.scheduling import config, types
from frontier_testkit import controlplane

pytestmark = [pytest.mark.cluster, pytest.mark.envoy, pytest.mark.slow, pytest.mark.timeout(420)]

BLOCKS = 1000  # KV blocks per engine (16 tokens each): a few thousand prompt tokens move KV use by tenths
TIME_SCALE = 5.0  # slow enough that background decodes barely change KV use while the scenario runs
CHARS_PER_BLOCK = 64  # GIE's prefix block: 16 tokens x 4 characters (the engines report block size 16)
SUCCESS = "vllm:request_success_total"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Pick:
    """One scenario request: the endpoint both should pick and why, what each picked, gie-default's lead
    over its runner-up."""

    why: str
    expected: str
    epp: str
    gie_default: str
    margin: float


def text(seed: str, blocks: int) -> str:
    """`blocks` prefix blocks of ASCII text that no other seed shares."""
    return "".join(f"{seed}:{i:04d}:".ljust(CHARS_PER_BLOCK, "x")[:CHARS_PER_BLOCK] for i in range(blocks))


@pytest.fixture
def epp_built() -> None:
    if not (controlplane.default_cache_dir() / "bin" / "epp").exists():
        reason = "the GIE EPP is not built: run `make epp` (hack/build-epp.sh)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and {reason}")
        pytest.skip(reason)


async def hold(session: aiohttp.ClientSession, engine: fleet.Engine, model: str, tokens: int) -> None:
    """A long streamed request straight to `engine` (not through Envoy), held open until cancelled."""
    body = {"model": model, "prompt": text(f"bg-{engine.name}-{tokens}", tokens // 16), "max_tokens": 4000}
    async with session.post(f"{engine.url}/v1/completions", json={**body, "stream": True}) as response:
        async for _ in response.content.iter_any():
            pass


async def kv_uses(running: fleet.Fleet) -> dict[str, float]:
    readings = await fleet.metrics(running)
    return {name: values.get("vllm:kv_cache_usage_perc", 0.0) for name, values in readings.items()}


async def wait_kv_at_least(running: fleet.Fleet, floors: dict[str, float]) -> None:
    """Until every engine's background prompts are prefilled (its KV use has reached its floor)."""
    deadline = time.monotonic() + 120.0
    while time.monotonic() < deadline:
        uses = await kv_uses(running)
        if all(uses[name] >= floor for name, floor in floors.items()):
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"background load not placed: KV use {uses}, wanted at least {floors}")


async def snapshot(running: fleet.Fleet, session: aiohttp.ClientSession) -> endpoints.Snapshot:
    """What a picker scraping the engines now sees (the picker's own parser of their /metrics pages)."""
    now = time.monotonic()
    states = []
    for engine in running.engines:
        async with session.get(f"{engine.url}/metrics") as response:
            body = await response.read()
        states.append(
            endpoints.EndpointState(
                endpoint=endpoints.Endpoint(name=engine.name, address=engine.address, port=engine.port),
                metrics=scraper.parse(body, names.ENGINE_VLLM, now=now),
            )
        )
    return endpoints.Snapshot(now=now, endpoints=states)


async def epp_pick(
    door: gie_mode.Door, running: fleet.Fleet, session: aiohttp.ClientSession, prompt: str
) -> str:
    """The engine (`ip:port`) the EPP sent one completion to, through Envoy."""
    before = await fleet.metrics(running)
    body = {"model": running.model, "prompt": prompt, "max_tokens": 1}
    async with session.post(f"{door.url}/v1/completions", json=body) as response:
        await response.read()
        assert response.status == 200, response.status
    after = await fleet.metrics(running)
    served = [
        e for e in running.engines if after[e.name].get(SUCCESS, 0.0) > before[e.name].get(SUCCESS, 0.0)
    ]
    assert len(served) == 1, f"served by {[e.name for e in served]}"
    return f"{served[0].address}:{served[0].port}"


@pytest.fixture
async def pool_and_epp(
    epp_built: None, control_plane: controlplane.ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[fleet.Fleet, gie_mode.Door]]:
    monkeypatch.setattr(gie_mode, "FRONT_DOOR_ADDRESS", "127.4.15.100")
    api = control_plane.api_client()
    cluster = gie_mode.pool_cluster(control_plane, "gie-pinned")
    namespace = cluster.namespace
    with processes.Group(tmp_path / "logs") as group:
        running = await fleet.start(
            group,
            engines=4,
            address_prefix="127.4.15",
            time_scale=TIME_SCALE,
            model="bench-model",
            run_dir=tmp_path,
            extra_args=("--num-gpu-blocks-override", str(BLOCKS)),
        )
        gie_mode.publish_engines(k8s_client.CoreV1Api(api), namespace, running.engines)
        door = await gie_mode.start_door(
            gie_mode.EPP_POLICY, group=group, cluster=cluster, running=running, run_dir=tmp_path / "runs"
        )
        await gie_mode.wait_answering(door, model=running.model)
        yield running, door


async def test_gie_default_picks_what_the_real_gie_epp_picks(
    pool_and_epp: tuple[fleet.Fleet, gie_mode.Door],
) -> None:
    running, door = pool_and_epp
    e0, e1, e2, e3 = running.engines
    key = {engine.name: f"{engine.address}:{engine.port}" for engine in running.engines}
    scheduler = config.load(builtin="gie-default", fallbacks=len(running.engines) - 1, seed=0)
    a, b = text("a", 40), text("b", 40)
    # (prompt, engine both must pick, why), after the background load of its phase is placed
    phase_1 = [
        (a, e0, "fresh prompt: the least-used engine"),
        (a + text("a-q1", 2), e0, "its prefix and the least KV use"),
    ]
    phase_2 = [  # e0 now the most used
        (b, e1, "fresh prompt: the least-used engine, now e1"),
        (a + text("a-q2", 2), e0, "95% of the prompt held on e0: prefix beats load"),
        (a[: 6 * CHARS_PER_BLOCK] + text("c", 34), e1, "15% held on e0: load beats prefix"),
        (a[: 28 * CHARS_PER_BLOCK] + text("d", 12), e0, "70% held on e0, 15% on e1: prefix beats load"),
        (b + text("b-q1", 2), e1, "its prefix on e1"),
    ]
    timeout = aiohttp.ClientTimeout(total=60.0 * TIME_SCALE)
    async with aiohttp.ClientSession(timeout=timeout) as session, asyncio.TaskGroup() as background:
        held = []
        placed: dict[str, float] = {}
        for engine, tokens, floor in ((e0, 400, 0.02), (e1, 3200, 0.19), (e2, 6400, 0.39), (e3, 8800, 0.54)):
            held.append(background.create_task(hold(session, engine, running.model, tokens)))
            placed[engine.name] = floor
        await wait_kv_at_least(running, placed)
        picks: list[Pick] = []
        for phase, scenario in enumerate((phase_1, phase_2)):
            if phase == 1:
                held.append(background.create_task(hold(session, e0, running.model, 9600)))
                await wait_kv_at_least(running, {e0.name: 0.62})
            for prompt, expected, why in scenario:
                await asyncio.sleep(0.3)  # the EPP's 50 ms scrapes no longer see the last request's blocks
                seen = await snapshot(running, session)
                request = types.Request(
                    request_id=f"r{len(picks)}",
                    model=running.model,
                    target_model=running.model,
                    prompt=prompt,
                )
                decision = scheduler.schedule(request, seen)
                epp = await epp_pick(door, running, session, prompt)
                first, second = sorted(decision.scores.values(), reverse=True)[:2]
                picks.append(
                    Pick(
                        why=why,
                        expected=key[expected.name],
                        epp=epp,
                        gie_default=decision.primary,
                        margin=round(first - second, 2),
                    )
                )
        for task in held:  # the background requests end with the scenario
            task.cancel()
    assert [(pick.why, pick.epp) for pick in picks] == [(pick.why, pick.expected) for pick in picks]
    assert [(pick.why, pick.gie_default) for pick in picks] == [(pick.why, pick.epp) for pick in picks]
    # Every pick was clear: the runner-up scored at least 0.3 lower (background decodes move scores ~0.02).
    assert min(pick.margin for pick in picks) >= 0.3, picks
