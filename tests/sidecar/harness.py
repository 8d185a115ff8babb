"""The sidecar tests' harness: simulated engines, stub upstreams and sidecars started in-process on
OS-chosen ports, and prompts of known token counts."""

import contextlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from frontier_sidecar import proxy
from frontier_sim import server, settings, timing

MODEL = "sim/llama-8b"


def text(tag: str, tokens: int) -> str:
    """Prompt text of exactly `tokens` distinct 4-character pieces (one token each)."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"

    def b36(i: int) -> str:
        return digits[i // 1296 % 36] + digits[i // 36 % 36] + digits[i % 36]

    return "".join(tag[0] + b36(i) for i in range(tokens))


def engine_config(address: str, **overrides) -> settings.Settings:
    base = {"model": MODEL, "host": address, "port": 0, "params": timing.CALIBRATED_PARAMS}
    base.update(overrides)
    return settings.Settings(**base)


def url(srv: server.Server) -> str:
    return f"http://{srv.address}:{srv.port}"


@contextlib.asynccontextmanager
async def engine(address: str, **overrides) -> AsyncIterator[server.Server]:
    async with server.serving(engine_config(address, **overrides)) as srv:
        yield srv


@contextlib.asynccontextmanager
async def sidecar(address: str, engine_url: str, **overrides) -> AsyncIterator[tuple[proxy.Sidecar, str]]:
    """A sidecar on `address` in front of `engine_url`; yields it and its base URL."""
    config = proxy.Settings(engine_url=engine_url, address=address, port=0, **overrides)
    async with proxy.serving(config) as side:
        yield side, f"http://{address}:{side.port}"


@contextlib.asynccontextmanager
async def stub(address: str, app: web.Application) -> AsyncIterator[str]:
    """`app` served on `address`; yields its `host:port`."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, address, 0)
    await site.start()
    try:
        yield f"{address}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def parse_metrics(page: str) -> dict[str, float]:
    """Prometheus text as {name (labels dropped): value}; labelled samples of one name are summed."""
    values: dict[str, float] = {}
    for line in page.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            name = key.split("{")[0]
            values[name] = values.get(name, 0.0) + float(value)
    return values


async def scrape(session: aiohttp.ClientSession, base: str) -> dict[str, float]:
    async with session.get(f"{base}/metrics") as response:
        return parse_metrics(await response.text())
