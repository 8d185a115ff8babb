"""Flow control through a real Envoy (the GIE full-duplex configuration): with the pool at its in-flight
limit, a sheddable request waits its TTL and gets 429 with the reason, a critical request waits and is
served as soon as room frees, and a client that goes away while queued leaves the queue at once."""

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
import yaml

from frontier_picker.scheduling import config

from . import stack

pytestmark = pytest.mark.envoy

OBJECTIVES = [{"name": "critical", "priority": 100}, {"name": "batch", "priority": -1}]
LONG = {"x-test-chunks": "60", "x-test-delay": "0.02"}  # an answer streamed over ~1.2 s


def flow_config() -> str:
    text = yaml.safe_load(config.builtin_text("round-robin"))
    text["plugins"].append({"type": "inference-objectives", "parameters": {"objectives": OBJECTIVES}})
    # One request in flight per endpoint: the test's two backends are full with two long answers.
    text["flowControl"] = {"maxInFlightPerEndpoint": 1, "sheddableRequestTTL": "300ms"}
    return yaml.safe_dump(text)


@pytest.fixture
def full(tmp_path: Path):  # type: ignore[no-untyped-def]
    running = stack.start(tmp_path, backends=2, profile=None, config_text=flow_config())
    yield running
    running.stop()


BODY = json.dumps({"model": "m", "prompt": "hi", "stream": True}).encode()


async def request(url: str, objective: str | None = None, **extra: str) -> tuple[int, bytes, float]:
    headers = dict(extra)
    if objective is not None:
        headers["x-gateway-inference-objective"] = objective
    began = asyncio.get_running_loop().time()
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/v1/completions", data=BODY, headers=headers) as response,
    ):
        payload = await response.read()
        return response.status, payload, asyncio.get_running_loop().time() - began


async def fill(url: str) -> list[asyncio.Task[tuple[int, bytes, float]]]:
    """Two long answers in flight, one per backend."""
    tasks = [asyncio.create_task(request(url, **LONG)) for _ in range(2)]
    await asyncio.sleep(0.3)
    return tasks


async def test_sheddable_request_waits_its_ttl_then_gets_429_with_the_reason(full: stack.Stack) -> None:
    long = await fill(full.url)
    status, payload, took = await request(full.url, "batch")
    assert status == 429
    assert b"flow control" in payload and b"TTL" in payload
    assert 0.25 <= took < 1.0
    assert [result[0] for result in await asyncio.gather(*long)] == [200, 200]
    assert await stack.wait_for(lambda: full.store.in_flight() == 0)


async def test_critical_request_waits_for_room_and_is_served(full: stack.Stack) -> None:
    long = await fill(full.url)
    status, _, took = await request(full.url, "critical")
    assert status == 200
    assert took > 0.5  # it waited for one of the long answers to end
    assert [result[0] for result in await asyncio.gather(*long)] == [200, 200]
    flow = full.scheduler.flow
    assert flow is not None and flow.count == 0


async def test_client_gone_while_queued_leaves_the_queue_at_once(full: stack.Stack) -> None:
    long = await fill(full.url)
    flow = full.scheduler.flow
    assert flow is not None
    waiting = asyncio.create_task(request(full.url))
    assert await stack.wait_for(lambda: flow.count == 1)
    waiting.cancel()  # the client hangs up while its request is queued
    assert await stack.wait_for(lambda: flow.count == 0, timeout=2.0)
    assert [result[0] for result in await asyncio.gather(*long)] == [200, 200]
    metrics = await metrics_text(full)
    assert 'outcome="EvictedContextCancelled"' in metrics
    assert await stack.wait_for(lambda: full.store.in_flight() == 0)
    assert len(full.scheduler.decisions) == 2  # the abandoned request was never routed


async def metrics_text(running: stack.Stack) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{stack.FRONT}:{running.picker.metrics_port}/metrics") as response,
    ):
        return await response.text()
