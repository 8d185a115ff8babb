"""Prefill/decode disaggregation end to end on real parts: client -> Envoy (GIE's ext_proc configuration) ->
the picker (its `frontier` scheduling, P/D threshold lowered) -> the decode pod's sidecar -> the prefill
engine -> the decode engine. The answer equals aggregated serving's; with the prefill engine gone the request
falls back to local prefill and none is lost."""

import asyncio
import contextlib
import json
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from frontier_api import envoy_bootstrap, names
from frontier_picker import datastore, endpoints, server
from frontier_picker.scheduling import config

from .harness import MODEL, engine, sidecar, text, url

pytestmark = pytest.mark.envoy

ENVOY = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "envoy"
NON_CACHED_TOKENS = 256


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def pd_config() -> str:
    document = yaml.safe_load(config.builtin_text("frontier"))
    for plugin in document["plugins"]:
        if plugin["type"] == "prefix-based-pd-decider":
            plugin["parameters"] = {"nonCachedTokens": NON_CACHED_TOKENS}
    return yaml.safe_dump(document)


@contextlib.asynccontextmanager
async def envoy_in_front(
    subnet: str, picker_port: int, pool: list[tuple[str, int]], tmp: Path
) -> AsyncIterator[str]:
    address = f"{subnet}.100"
    listen, admin = free_port(address), free_port(address)
    bootstrap = envoy_bootstrap.bootstrap(
        listen_address=address,
        listen_port=listen,
        pickers=[f"{address}:{picker_port}"],
        picker_tls=False,
        endpoints=pool,
        admin_port=admin,
    )
    path = tmp / "envoy.json"
    path.write_text(json.dumps(bootstrap))
    log = tmp / "envoy.log"
    process = subprocess.Popen(
        [str(ENVOY), "-c", str(path), "--disable-hot-restart", "--concurrency", "1", "-l", "warning"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as session:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://{address}:{admin}/ready") as response:
                        if response.status == 200:
                            break
                assert time.monotonic() < deadline and process.poll() is None, log.read_text()[-2000:]
                await asyncio.sleep(0.05)
        yield f"http://{address}:{listen}"
    finally:
        process.terminate()
        process.wait(5)


def counter(side, name: str, **labels: str) -> float | None:
    return side.metrics.registry.get_sample_value(name, labels)


async def complete(session: aiohttp.ClientSession, base: str, prompt: str) -> tuple[int, dict]:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 12, "temperature": 0}
    async with session.post(f"{base}/v1/completions", json=body) as response:
        return response.status, await response.json()


async def test_a_long_prompt_is_prefilled_remotely_and_answers_as_aggregated_serving(
    subnet: str, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with (
        contextlib.AsyncExitStack() as prefill_stack,
        engine(f"{subnet}.2") as decode,
        engine(f"{subnet}.3") as aggregated,
        sidecar(f"{subnet}.4", url(decode)) as (side, sidecar_url),
    ):
        prefill = await prefill_stack.enter_async_context(engine(f"{subnet}.1"))
        side_address, side_port = sidecar_url.removeprefix("http://").split(":")
        store = datastore.Datastore()
        store.replace(
            [
                endpoints.Endpoint(
                    name="prefill-0",
                    address=prefill.address,
                    port=prefill.port,
                    labels={names.ROLE_LABEL: names.ROLE_PREFILL},
                ),
                endpoints.Endpoint(
                    name="decode-0",
                    address=side_address,
                    port=int(side_port),
                    labels={names.ROLE_LABEL: names.ROLE_DECODE},
                ),
            ]
        )
        options = server.Options(
            address=f"{subnet}.100",
            grpc_port=0,
            grpc_health_port=0,
            metrics_port=0,
            secure_serving=False,
            config_text=pd_config(),
            refresh_metrics_interval_s=0.05,
        )
        picker = await server.start(options, store=store)
        pool = [(prefill.address, prefill.port), (side_address, int(side_port))]
        try:
            async with envoy_in_front(subnet, picker.grpc_port, pool, tmp_path) as gateway:
                long_prompt = text("p", 2 * NON_CACHED_TOKENS)
                status, through = await complete(session, gateway, long_prompt)
                assert status == 200, through
                _, alone = await complete(session, url(aggregated), long_prompt)
                assert through["choices"][0]["text"] == alone["choices"][0]["text"]
                assert through["usage"]["completion_tokens"] == alone["usage"]["completion_tokens"]
                assert prefill.core.stats.finished_requests == 1  # the prefill leg, one token
                assert prefill.core.stats.generation_tokens == 1
                assert counter(side, "frontier_sidecar_remote_prefills_total") == 1

                # The prefill engine goes away: requests fall back to local prefill, none is lost.
                await prefill_stack.aclose()
                for i in range(3):
                    status, answer = await complete(session, gateway, text(str(i), 2 * NON_CACHED_TOKENS))
                    assert status == 200, answer
                fallbacks = counter(
                    side, "frontier_sidecar_prefill_fallbacks_total", reason="connection_error"
                )
                assert fallbacks == 3
        finally:
            await picker.stop()
