"""Several picker replicas behind one real Envoy: Envoy health-checks each replica's `readiness`, so a replica
that drains (SIGTERM: readiness NOT_SERVING, new streams still taken for the drain delay) stops getting new
streams before it refuses them, and requests keep succeeding through the other replica."""

import asyncio
from pathlib import Path

import aiohttp
import pytest

from frontier_api import envoy_bootstrap
from frontier_picker import datastore, endpoints, server

from . import stack


def _picker(
    loop: stack.LoopThread, backends: list[stack.Backend]
) -> tuple[server.Picker, stack.RecordingScheduler]:
    store = datastore.Datastore()
    store.replace(
        endpoints.Endpoint(name=f"e{index}", address=backend.address, port=backend.port)
        for index, backend in enumerate(backends)
    )
    scheduler = stack.RecordingScheduler(fallbacks=0)
    options = server.Options(
        address=stack.FRONT,
        grpc_port=0,
        grpc_health_port=0,
        metrics_port=0,
        secure_serving=False,
        fallbacks=0,
        refresh_metrics_interval_s=0,  # the echo backends serve no /metrics
        # The backends share the picker's loop on a shared test machine: its noise must not refuse requests
        # (overload has its own tests).
        overload_lag_s=0,
    )
    return loop.run(server.start(options, scheduler=scheduler, store=store)), scheduler


async def _replicas_healthy(session: aiohttp.ClientSession, admin_port: int, timeout_s: float = 10) -> int:
    """How many picker replicas Envoy's admin reports healthy, once all are (or at `timeout_s`)."""
    healthy = 0
    for _ in range(int(timeout_s / 0.05)):
        async with session.get(f"http://{stack.FRONT}:{admin_port}/clusters") as answer:
            flags = [
                line.rsplit("::", 1)[1]
                for line in (await answer.text()).splitlines()
                if line.startswith("frontier_picker::") and "::health_flags::" in line
            ]
        healthy = flags.count("healthy")
        if flags and healthy == len(flags):
            break
        await asyncio.sleep(0.05)
    return healthy


@pytest.mark.envoy
def test_requests_keep_succeeding_while_one_of_two_picker_replicas_drains_and_stops(tmp_path: Path) -> None:
    loop = stack.LoopThread()
    backends = [stack.Backend(address=f"127.2.0.{index + 1}") for index in range(2)]
    for backend in backends:
        loop.run(backend.start())
    (draining, drained_scheduler), (staying, staying_scheduler) = (
        _picker(loop, backends),
        _picker(loop, backends),
    )
    listen_port, admin_port = stack.free_port(stack.FRONT), stack.free_port(stack.FRONT)
    bootstrap = envoy_bootstrap.bootstrap(
        listen_address=stack.FRONT,
        listen_port=listen_port,
        pickers=[f"{stack.FRONT}:{draining.grpc_port}", f"{stack.FRONT}:{staying.grpc_port}"],
        picker_tls=False,
        endpoints=[(backend.address, backend.port) for backend in backends],
        retries=0,
        admin_port=admin_port,
    )
    envoy, log_path = stack.launch_envoy(bootstrap, tmp=tmp_path, name="envoy-replicas")
    url = f"http://{stack.FRONT}:{listen_port}/v1/completions"

    async def send(session: aiohttp.ClientSession) -> int:
        async with session.post(url, json={"model": "m", "prompt": "hello"}) as answer:
            await answer.read()
            return answer.status

    async def scenario() -> tuple[list[int], int, int]:
        await stack.wait_ready(f"http://{stack.FRONT}:{admin_port}/ready", envoy, log_path)
        async with aiohttp.ClientSession() as session:
            # Both replicas ready and taking streams first.
            assert await _replicas_healthy(session, admin_port) == 2
            statuses = [await send(session) for _ in range(20)]
            assert drained_scheduler.decisions and staying_scheduler.decisions
            stopping = asyncio.ensure_future(
                asyncio.wrap_future(
                    asyncio.run_coroutine_threadsafe(
                        draining.stop(drain_delay_s=1.0, drain_timeout_s=5.0), loop.loop
                    )
                )
            )
            # Requests all through the drain delay, the stop and after: none may fail.
            while not stopping.done():
                statuses.append(await send(session))
                await asyncio.sleep(0.02)
            await stopping
            before = len(staying_scheduler.decisions)
            statuses += [await send(session) for _ in range(20)]
            return statuses, before, len(staying_scheduler.decisions)

    try:
        statuses, before, after = asyncio.run(scenario())
        assert statuses.count(200) == len(statuses), statuses
        assert after - before == 20  # the stopped replica gets nothing more
    finally:
        stack.stop_envoy(envoy)
        loop.run(staying.stop())
        for backend in backends:
            if backend.runner is not None:
                loop.run(backend.runner.cleanup())
        loop.close()
