"""The `frontier` profile end to end: a real Envoy, the picker's ext_proc server, the real metrics scraper and
two HTTP model servers that report vLLM metrics the test sets.

- a model server reporting a long queue gets no traffic while the other is free;
- prompts sharing a 4 KB prefix stick to one model server until it reports saturation, then move to the
  other and stick there.

The model servers are small aiohttp apps, not engines: they answer completions at once and serve a /metrics
body whose queue and KV values the test sets. Addresses: 127.5.2.1-2 model servers, 127.5.2.100 Envoy and
the picker (this suite's loopback range).
"""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from frontier_api import envoy_bootstrap
from frontier_picker import datastore, endpoints, server
from frontier_picker.scheduling import config

from .. import stack

pytestmark = pytest.mark.envoy

FRONT = "127.5.2.100"
SHARED = "".join(f"policy paragraph {i:03d} ".ljust(64, ".") for i in range(64))  # 4 KB


class ModelServer:
    """Answers /v1/completions and serves vLLM-named metrics with the queue and KV use the test sets."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.port = 0
        self.waiting = 0
        self.kv = 0.1
        self.served = 0
        self.runner: web.AppRunner | None = None

    @property
    def key(self) -> str:
        return f"{self.address}:{self.port}"

    async def metrics(self, request: web.Request) -> web.Response:
        labels = 'model_name="llama",engine="0"'
        body = (
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{{{labels}}} {self.waiting}.0\n"
            f"vllm:num_requests_running{{{labels}}} 1.0\nvllm:kv_cache_usage_perc{{{labels}}} {self.kv}\n"
        )
        return web.Response(text=body, content_type="text/plain")

    async def completions(self, request: web.Request) -> web.Response:
        await request.read()
        self.served += 1
        usage = {"prompt_tokens": 1000, "completion_tokens": 5}
        return web.json_response({"served_by": self.key, "usage": usage})

    async def start(self) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/v1/completions", self.completions)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        self.port = stack.free_port(self.address)
        await web.TCPSite(self.runner, self.address, self.port).start()


class Fleet:
    def __init__(self, tmp: Path) -> None:
        self.loop = stack.LoopThread()
        self.servers = [ModelServer("127.5.2.1"), ModelServer("127.5.2.2")]
        for model_server in self.servers:
            self.loop.run(model_server.start())
        store = datastore.Datastore()
        store.replace(
            endpoints.Endpoint(name=f"e{i}", address=s.address, port=s.port)
            for i, s in enumerate(self.servers)
        )
        options = server.Options(
            address=FRONT, grpc_port=0, grpc_health_port=0, metrics_port=0, secure_serving=False, fallbacks=0
        )
        scheduler = config.load(fallbacks=0, seed=0)
        self.picker = self.loop.run(server.start(options, scheduler=scheduler, store=store))
        listen_port, admin_port = stack.free_port(FRONT), stack.free_port(FRONT)
        bootstrap = envoy_bootstrap.bootstrap(
            listen_address=FRONT,
            listen_port=listen_port,
            pickers=[f"{FRONT}:{self.picker.grpc_port}"],
            picker_tls=False,
            mode="gie",
            endpoints=None,
            admin_port=admin_port,
        )
        self.envoy, log_path = stack.launch_envoy(bootstrap, tmp=tmp, name="envoy")
        self.url = f"http://{FRONT}:{listen_port}/v1/completions"
        self.loop.run(stack.wait_ready(f"http://{FRONT}:{admin_port}/ready", self.envoy, log_path))

    def by_key(self, key: str) -> ModelServer:
        return next(s for s in self.servers if s.key == key)

    def stop(self) -> None:
        stack.stop_envoy(self.envoy)
        self.loop.run(self.picker.stop())
        for model_server in self.servers:
            if model_server.runner is not None:
                self.loop.run(model_server.runner.cleanup())
        self.loop.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    running = Fleet(tmp_path_factory.mktemp("e2e"))
    yield running
    running.stop()


async def served_by(session: aiohttp.ClientSession, url: str, prompt: str) -> str:
    async with session.post(url, json={"model": "llama", "prompt": prompt, "max_tokens": 5}) as response:
        assert response.status == 200, await response.text()
        return str((await response.json())["served_by"])


async def settle() -> None:
    await asyncio.sleep(0.3)  # several scrape intervals: every endpoint's metrics reflect the change


async def test_traffic_avoids_the_endpoint_reporting_a_long_queue(fleet: Fleet) -> None:
    busy, free = fleet.servers
    busy.waiting, free.waiting = 30, 0
    await settle()
    async with aiohttp.ClientSession() as session:
        chosen = {await served_by(session, fleet.url, f"unrelated question {i} " * 30) for i in range(20)}
    assert chosen == {free.key}
    busy.waiting = 0


async def test_shared_prefix_sticks_to_one_endpoint_until_it_saturates(fleet: Fleet) -> None:
    for model_server in fleet.servers:
        model_server.waiting = 0
    await settle()
    async with aiohttp.ClientSession() as session:
        first = {await served_by(session, fleet.url, f"{SHARED} question {i}") for i in range(10)}
        assert len(first) == 1
        holder = fleet.by_key(first.pop())
        holder.waiting = 5  # the GIE saturation threshold
        await settle()
        after = [await served_by(session, fleet.url, f"{SHARED} question {i}") for i in range(10, 20)]
    assert holder.key not in after
    assert len(set(after)) == 1
