"""Precise prefix routing end to end: two simulated vLLM engines publishing KV events over ZMQ, the picker
subscribed to both (its `kv-events-subscriber`), a real Envoy in front, and a profile that scores only by
`precise-prefix-cache-scorer`.

The engines are told about the shared prefix by requests sent to them *directly* (never through the picker),
so only their KV events can tell the picker where it is: an approximate index, learned from the picker's own
decisions, could not. Then each engine-side change moves the traffic: a cache reset (`AllBlocksCleared`),
evictions under memory pressure (`BlockRemoved`), and a lost event batch (a sequence gap drops what the
picker knew of that engine).

Addresses: 127.5.7.1-2 engines (HTTP and ZMQ), 127.5.7.100 Envoy and the picker (this suite's range).
"""

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from frontier_api import envoy_bootstrap, names, standin_tokenizer
from frontier_picker import datastore, endpoints, kv_events, server
from frontier_picker.scheduling import config
from frontier_picker.scheduling.plugins import precise_prefix
from frontier_sim import server as sim_server
from frontier_sim import settings, timing

from .. import stack

pytestmark = pytest.mark.envoy

FRONT = "127.5.7.100"
MODEL = "sim/llama-8b"
EVENTS_PORT = 5557
CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: kv-events-subscriber
  parameters: {blockSize: 16}
- type: precise-prefix-cache-scorer
  parameters: {tokenizer: standin}
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: precise-prefix-cache-scorer
  - pluginRef: max-score-picker
"""


def text(tag: str, tokens: int) -> str:
    """Text of exactly `tokens` distinct 4-character pieces (one stand-in token each)."""
    return "".join(f"{tag[0]}{i:03x}" for i in range(tokens))


SHARED = text("s", 800)  # 50 blocks of 16 tokens


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.loop = stack.LoopThread()
        self.exits = contextlib.AsyncExitStack()
        self.engines: list[Any] = []
        for address in ("127.5.7.1", "127.5.7.2"):
            events = {
                "enable_kv_cache_events": True,
                "publisher": "zmq",
                "endpoint": f"tcp://*:{EVENTS_PORT}",
                "topic": "kv@$(POD_IP)@" + MODEL,
            }
            cfg = settings.Settings(
                model=MODEL,
                host=address,
                port=0,
                params=timing.CALIBRATED_PARAMS,
                kv_events_config=events,
                num_gpu_blocks_override=200,
            )
            self.engines.append(self.loop.run(self.exits.enter_async_context(sim_server.serving(cfg))))
        store = datastore.Datastore()
        store.replace(
            endpoints.Endpoint(
                name=f"e{i}",
                address=engine.address,
                port=engine.port,
                labels={names.KV_EVENTS_PORT_ANNOTATION: str(EVENTS_PORT)},
            )
            for i, engine in enumerate(self.engines)
        )
        options = server.Options(
            address=FRONT, grpc_port=0, grpc_health_port=0, metrics_port=0, secure_serving=False, fallbacks=0
        )
        self.scheduler = config.load(CONFIG, fallbacks=0, seed=0)
        self.picker = self.loop.run(server.start(options, scheduler=self.scheduler, store=store))
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
        self.url = f"http://{FRONT}:{listen_port}"
        self.loop.run(stack.wait_ready(f"http://{FRONT}:{admin_port}/ready", self.envoy, log_path))

    @property
    def subscriber(self) -> precise_prefix.KvEventsSubscriber:
        source = self.scheduler.data_sources[0]
        assert isinstance(source, precise_prefix.KvEventsSubscriber)
        return source

    @property
    def index(self) -> kv_events.BlockIndex:
        return self.subscriber.index

    def subscribed(self) -> dict[str, str]:
        running = self.subscriber.subscriber
        return running.subscribed() if running is not None else {}

    def gaps(self) -> int:
        running = self.subscriber.subscriber
        return running.gaps if running is not None else 0

    def stop(self) -> None:
        stack.stop_envoy(self.envoy)
        self.loop.run(self.picker.stop())
        self.loop.run(self.exits.aclose())
        self.loop.close()


def key(engine: Any) -> str:
    return f"{engine.address}:{engine.port}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = Cluster(tmp_path_factory.mktemp("precise"))
    yield running
    running.stop()


async def complete(session: aiohttp.ClientSession, base: str, prompt: str) -> None:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 2}
    async with session.post(f"{base}/v1/completions", json=body) as response:
        assert response.status == 200, await response.text()
        await response.read()


async def routed(cluster: Cluster, session: aiohttp.ClientSession, prompts: list[str]) -> list[int]:
    """Which engine (0 or 1) served each prompt sent through Envoy."""
    served = []
    for prompt in prompts:
        before = [engine.core.stats.finished_requests for engine in cluster.engines]
        await complete(session, cluster.url, prompt)
        after = [engine.core.stats.finished_requests for engine in cluster.engines]
        served.append(next(i for i in range(2) if after[i] > before[i]))
    return served


def holds_shared(cluster: Cluster, engine: Any) -> bool:
    first = kv_events.block_keys(standin_tokenizer.encode(SHARED[:64]), block_size=16)[0]
    return cluster.index.holds(key(engine), first)


async def direct(engine: Any, session: aiohttp.ClientSession, prompt: str) -> None:
    await complete(session, f"http://{engine.address}:{engine.port}", prompt)


def questions(start: int, count: int) -> list[str]:
    return [SHARED + text(f"{i % 10}", 40) for i in range(start, start + count)]


async def test_repeated_prefix_follows_what_the_engines_report_holding(cluster: Cluster) -> None:
    a, b = cluster.engines
    async with aiohttp.ClientSession() as session:
        # The subscriber connects within a reconcile; an engine's events before that are not seen.
        assert await stack.wait_for(lambda: len(cluster.subscribed()) == 2, timeout=5)
        await asyncio.sleep(0.3)  # ZMQ slow joiner: let the subscriptions reach the publishers
        await direct(a, session, SHARED + text("w", 40))
        assert await stack.wait_for(lambda: holds_shared(cluster, a), timeout=5)
        assert await routed(cluster, session, questions(0, 6)) == [0] * 6

        # AllBlocksCleared: A resets its prefix cache and B computes the prefix: traffic moves to B.
        await direct(b, session, SHARED + text("w", 40))
        async with session.post(f"http://{a.address}:{a.port}/reset_prefix_cache") as response:
            assert response.status == 200
        assert await stack.wait_for(lambda: cluster.index.size(key(a)) == 0 and holds_shared(cluster, b))
        assert await routed(cluster, session, questions(6, 6)) == [1] * 6

        # BlockRemoved: unrelated prompts fill B's 200 blocks and evict the prefix; A computes it again.
        for i in range(3):
            await direct(b, session, text(f"{i}", 1500))
        assert await stack.wait_for(lambda: not holds_shared(cluster, b))
        await direct(a, session, SHARED + text("w", 40))
        assert await stack.wait_for(lambda: holds_shared(cluster, a))
        assert await routed(cluster, session, questions(12, 6)) == [0] * 6

        # A lost batch (the publisher skips sequence numbers): the picker drops what it knew of A and
        # keeps only what A stores from then on; B's entries stay.
        gaps = cluster.gaps()
        held_b = cluster.index.size(key(b))
        a.publisher.seq += 3
        await direct(a, session, text("u", 100))
        assert await stack.wait_for(lambda: cluster.gaps() == gaps + 1)
        assert not holds_shared(cluster, a)
        assert cluster.index.size(key(a)) == 100 // 16
        assert cluster.index.size(key(b)) == held_b
