"""The picker's fault suite (issue 20) as a benchmark: each fault injected under open-loop load through a real
Envoy, measured against the issue's targets.

    python -m frontier_bench.faults --out bench/results

Every scenario starts a fresh stack on loopback: three stand-in engines (separate processes answering
`/v1/completions` after `ENGINE_LATENCY_S` and serving vLLM's metric names on `/metrics`, which a fault can
make hostile), the picker (`frontier-picker`, file discovery, its default scheduling config and flags unless
the scenario says otherwise) and Envoy in GIE's full-duplex mode with a static cluster of the engines.
Clients send `RATE` req/s (Poisson) for `DURATION_S`; each request carries an `x-request-id`, and the
picker's `event=decision` log lines say where each was routed, so misrouting is counted from the picker's own
decisions rather than guessed from responses. Faults:

- `control`: none; the reference shares.
- `engine_killed`: one engine SIGKILLed; errors beyond its in-flight requests, decisions to it after one
  scrape interval (misrouted), the time from the kill to the last decision to it.
- `metrics_nan`, `metrics_html`: one engine's `/metrics` turns to NaN values, or to an HTML page with status
  200, then healthy again; decisions to it while hostile (after one interval), the time to its last decision
  once hostile (stale) and to its first once healthy again (recovered).
- `idle_streams_300`: 300 ext_proc streams opened straight to the picker, pinned by a subset hint to one
  engine and then silent; the real traffic's shares against control, with the default stream idle timeout
  (5 min, longer than the run) and with `--stream-idle-timeout 8s`.
- `model_names_1000`: 1,000 requests each naming a distinct 10 KB model, after 1,000 ordinary ones; the
  picker's `/metrics` size and RSS before and after.
- `uploads_10x15mb`: 10 concurrent chunked uploads (no content-length) of 15 MB bodies, three rounds one
  after the other; the picker's RSS before, at its peak (sampled every 10 ms) and after each round, and its
  CPU.
- `picker_restart_rolling_2`: two picker replicas behind Envoy (which health-checks their readiness); each
  in turn gets SIGTERM, drains (`--drain-delay 1`, `--drain-timeout 30`, the defaults), exits and is started
  again on its ports, the next only once Envoy has seen it ready. Every tenth request lasts LONG_S, so the
  drains wait for long streams. Client errors, split by when the request was sent.
- `picker_restart_single`: the same with one replica: what clients see while no picker takes streams.
- `cpu_starved`: the picker pinned to one core (`taskset`), which HOGS busy loops share with it from the
  fault to the heal, while Envoy, the engines and the load generator run on the other core; every tenth
  request long. Routed requests that failed, statuses and latency while starved, Envoy's ext_proc counters;
  with `--overload-lag 1s` (refusals) and, as `cpu_starved_no_shedding`, with `--overload-lag 0`.

The engines are stand-ins (fixed latency, no tokens), so the numbers say how the picker routes around faults,
not how a model server fails.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import random
import re
import shlex
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Final

import aiohttp
import grpc
from aiohttp import web
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from frontier_api import envoy_bootstrap, names
from frontier_bench import frontdoors, harness, processes

ADDRESS: Final = "127.6.0.100"
ENGINE_ADDRESSES: Final = ("127.6.0.1", "127.6.0.2", "127.6.0.3")
RATE: Final = 20.0
DURATION_S: Final = 24.0
FAULT_AT_S: Final = 6.0
HEAL_AT_S: Final = 15.0
ENGINE_LATENCY_S: Final = 0.1
SCRAPE_INTERVAL_S: Final = 0.05
IDLE_STREAMS: Final = 300
MODEL_NAMES: Final = 1000
MODEL_NAME_BYTES: Final = 10 * 1024
MODEL: Final = "faults-model"
UPLOADS: Final = 10
UPLOAD_BYTES: Final = 15 * 1024 * 1024
UPLOAD_CHUNK_BYTES: Final = 64 * 1024
UPLOAD_ROUNDS: Final = 3  # one after the other: memory kept for good would grow round by round
# CPU starvation: the picker pinned to one core that this many busy loops share with it while the fault lasts.
STARVED_CORE: Final = "0"
OTHER_CORE: Final = "1"  # Envoy, the engines and the load generator
HOGS: Final = 40
LATENCY_HEADER: Final = "x-faults-latency-s"  # a request's own engine latency (long requests)
LONG_EVERY: Final = 10  # in the restart scenarios, every tenth request is long
LONG_S: Final = 3.0
# The picker's drain (frontier-picker's defaults, what the operator renders): readiness NOT_SERVING and new
# streams still taken for DRAIN_DELAY_S, routed streams get up to DRAIN_TIMEOUT_S in all.
DRAIN_DELAY_S: Final = 1.0
DRAIN_TIMEOUT_S: Final = 30.0
_DECISION = re.compile(r"event=decision request_id=(\S+) .*? endpoints=([^ ,]+)")


# --- the stand-in engine ------------------------------------------------------------------------------
def _healthy_metrics(running: int) -> str:
    return (
        "# TYPE vllm:num_requests_running gauge\n"
        f'vllm:num_requests_running{{model_name="{MODEL}"}} {running}\n'
        "# TYPE vllm:num_requests_waiting gauge\n"
        f'vllm:num_requests_waiting{{model_name="{MODEL}"}} 0\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        f'vllm:kv_cache_usage_perc{{model_name="{MODEL}"}} {min(1.0, 0.05 * running)}\n'
    )


HOSTILE_METRICS: Final = {
    "nan": (
        f'vllm:num_requests_running{{model_name="{MODEL}"}} NaN\n'
        f'vllm:num_requests_waiting{{model_name="{MODEL}"}} +Inf\n'
        f'vllm:kv_cache_usage_perc{{model_name="{MODEL}"}} NaN\n'
    ),
    "html": "<!doctype html><html><body><h1>Welcome</h1></body></html>\n",
}


@dataclasses.dataclass(slots=True)
class EngineState:
    mode: str = "healthy"  # or a key of HOSTILE_METRICS
    running: int = 0


async def serve_engine(address: str, port: int) -> None:
    """A stand-in engine: completions after ENGINE_LATENCY_S (or the request's LATENCY_HEADER), vLLM
    metrics, `POST /fault/<mode>`."""
    state = EngineState()

    async def complete(request: web.Request) -> web.Response:
        document = await request.json()
        if document.get("model") != MODEL:  # as vLLM answers a model it does not serve
            message = f"The model `{str(document.get('model'))[:64]}` does not exist."
            return web.json_response({"error": {"message": message, "code": 404}}, status=404)
        state.running += 1
        try:
            await asyncio.sleep(float(request.headers.get(LATENCY_HEADER, ENGINE_LATENCY_S)))
        finally:
            state.running -= 1
        usage = {"prompt_tokens": 8, "completion_tokens": 8}
        return web.json_response({"served_by": f"{address}:{port}", "usage": usage})

    async def metrics(_request: web.Request) -> web.Response:
        mode = state.mode
        if mode == "healthy":
            return web.Response(text=_healthy_metrics(state.running))
        return web.Response(text=HOSTILE_METRICS[mode], content_type="text/html" if mode == "html" else None)

    async def fault(request: web.Request) -> web.Response:
        state.mode = request.match_info["mode"]
        return web.Response(text="ok\n")

    app = web.Application(client_max_size=2 * UPLOAD_BYTES)
    app.router.add_post("/v1/completions", complete)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/fault/{mode}", fault)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port).start()
    await asyncio.Event().wait()


# --- the stack ----------------------------------------------------------------------------------------
@dataclasses.dataclass(slots=True, kw_only=True)
class Replica:
    """One picker replica: its command line and ports (kept across restarts) and its current process."""

    name: str
    argv: list[str]
    grpc_port: int
    health_port: int
    metrics_port: int
    child: processes.Child
    restarts: int = 0


@dataclasses.dataclass(slots=True, kw_only=True)
class Stack:
    url: str
    admin_url: str  # Envoy's admin interface
    engines: list[str]  # address:port
    engine_children: list[processes.Child]
    replicas: list[Replica]
    picker_logs: list[Path]  # every picker process's log, restarts included

    @property
    def picker(self) -> processes.Child:
        return self.replicas[0].child

    @property
    def grpc_port(self) -> int:
        return self.replicas[0].grpc_port

    @property
    def metrics_url(self) -> str:
        return f"http://{ADDRESS}:{self.replicas[0].metrics_port}/metrics"


async def start_stack(
    group: processes.Group,
    run_dir: Path,
    picker_flags: Sequence[str],
    *,
    replicas: int = 1,
    picker_prefix: Sequence[str] = (),
    others_prefix: Sequence[str] = (),
) -> Stack:
    """Engines, `replicas` pickers and Envoy (health-checking the pickers), each waited for; the pickers run
    under `picker_prefix` and the others under `others_prefix` (e.g. `taskset`)."""
    engines, children = [], []
    for index, address in enumerate(ENGINE_ADDRESSES):
        port = processes.free_port(address)
        argv = [sys.executable, "-m", "frontier_bench.faults", "engine", address, str(port)]
        children.append(group.start(f"engine-{index}", [*others_prefix, *argv]))
        engines.append(f"{address}:{port}")
    for child, key in zip(children, engines, strict=True):
        await processes.wait_http(f"http://{key}/metrics", child=child)
    endpoints_file = run_dir / "endpoints.yaml"
    listed = ", ".join(f"{{address: {key.split(':')[0]}, port: {key.split(':')[1]}}}" for key in engines)
    endpoints_file.write_text(f"endpoints: [{listed}]\n")
    started = []
    for index in range(replicas):
        grpc_port, health_port, metrics_port = (processes.free_port(ADDRESS) for _ in range(3))
        argv = [
            *picker_prefix,
            *frontdoors.picker_argv(
                endpoints_file=endpoints_file,
                address=ADDRESS,
                grpc_port=grpc_port,
                health_port=health_port,
                metrics_port=metrics_port,
                extra=picker_flags,
            ),
        ]
        name = f"picker-{index}"
        started.append(
            Replica(
                name=name,
                argv=argv,
                grpc_port=grpc_port,
                health_port=health_port,
                metrics_port=metrics_port,
                child=group.start(name, argv),
            )
        )
    for replica in started:
        await wait_ready(replica)
    port, admin_port = processes.free_port(ADDRESS), processes.free_port(ADDRESS)
    config = envoy_bootstrap.bootstrap(
        mode="gie",
        listen_address=ADDRESS,
        listen_port=port,
        admin_port=admin_port,
        pickers=[f"{ADDRESS}:{replica.grpc_port}" for replica in started],
        picker_tls=False,
        endpoints=[(key.split(":")[0], int(key.split(":")[1])) for key in engines],
    )
    config_path = run_dir / "envoy.json"
    config_path.write_text(json.dumps(config))
    argv = [frontdoors.envoy_binary(), "--config-path", str(config_path), "--concurrency", "1"]
    envoy = group.start("envoy", [*others_prefix, *argv, "--disable-hot-restart", "--log-level", "warn"])
    await processes.wait_port(ADDRESS, port, child=envoy)
    stack = Stack(
        url=f"http://{ADDRESS}:{port}",
        admin_url=f"http://{ADDRESS}:{admin_port}",
        engines=engines,
        engine_children=children,
        replicas=started,
        picker_logs=[replica.child.log_path for replica in started],
    )
    await _wait_routable(stack)
    return stack


async def wait_ready(replica: Replica, timeout_s: float = 30.0) -> None:
    """Wait until the replica's gRPC health says `readiness` SERVING (its endpoints are loaded)."""
    deadline = time.monotonic() + timeout_s
    request = health_pb2.HealthCheckRequest(service="readiness")
    async with grpc.aio.insecure_channel(f"{ADDRESS}:{replica.health_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            replica.child.check_alive()
            with contextlib.suppress(grpc.aio.AioRpcError):
                answer = await stub.Check(request, timeout=1.0)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{replica.name} not ready after {timeout_s}s:\n{replica.child.tail()}")


async def _wait_routable(stack: Stack, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.post(f"{stack.url}/v1/completions", json=_body(MODEL)) as answer:
                    if answer.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"the stack did not route a request within {timeout_s}s:\n{stack.picker.tail()}")


# --- load ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(slots=True)
class Sent:
    request_id: str
    at: float  # seconds since the load began
    status: int = 0  # 0: no HTTP answer (connection error)
    latency_s: float = 0.0
    long: bool = False  # asked the engine for LONG_S

    @property
    def ended(self) -> float:
        """Seconds since the load began when the answer (or the error) came."""
        return self.at + self.latency_s


def _body(model: str) -> dict[str, Any]:
    return {"model": model, "prompt": "Say something about faults.", "max_tokens": 8}


async def open_loop(
    url: str,
    *,
    rate: float,
    duration_s: float,
    began: float,
    models: Sequence[str] = (MODEL,),
    long_every: int = 0,
) -> list[Sent]:
    """Poisson arrivals at `rate` for `duration_s`; request i names `models[i % len(models)]`, and every
    `long_every`-th asks the engine for LONG_S (0: none)."""
    rng = random.Random(20)
    sent: list[Sent] = []
    tasks: list[asyncio.Task[None]] = []
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(entry: Sent, model: str) -> None:
            started = time.monotonic()
            try:
                headers = {"x-request-id": entry.request_id}
                if entry.long:
                    headers[LATENCY_HEADER] = str(LONG_S)
                async with session.post(
                    f"{url}/v1/completions", json=_body(model), headers=headers
                ) as answer:
                    await answer.read()
                    entry.status = answer.status
            except (aiohttp.ClientError, TimeoutError):
                entry.status = 0
            entry.latency_s = time.monotonic() - started

        at = 0.0
        index = 0
        while True:
            at += rng.expovariate(rate)
            if at >= duration_s:
                break
            delay = began + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            entry = Sent(uuid.uuid4().hex, at, long=long_every > 0 and index % long_every == 0)
            sent.append(entry)
            tasks.append(asyncio.create_task(one(entry, models[index % len(models)])))
            index += 1
        await asyncio.gather(*tasks)
    return sent


async def decisions(stack: Stack) -> dict[str, str]:
    """Request id -> primary endpoint, from the `event=decision` log lines of every picker process."""
    await asyncio.sleep(1.0)  # the picker writes its log in batches
    found = {}
    for path in stack.picker_logs:
        for line in path.read_text(errors="replace").splitlines():
            match = _DECISION.search(line)
            if match:
                found[match.group(1)] = match.group(2)
    return found


def shares(
    sent: Sequence[Sent], routed: dict[str, str], engines: Sequence[str], window: tuple[float, float]
) -> dict[str, float]:
    """Each engine's share of the decisions for requests sent within `window`, by engine address (the
    same in every scenario; ports are not)."""
    keys = [routed[s.request_id] for s in sent if window[0] <= s.at < window[1] and s.request_id in routed]
    return {_host(engine): round(keys.count(engine) / len(keys), 3) if keys else 0.0 for engine in engines}


def _host(engine: str) -> str:
    return engine.partition(":")[0]


def errors(sent: Sequence[Sent]) -> int:
    return sum(1 for s in sent if s.status != 200)


async def _fault(engine: str, mode: str) -> None:
    async with aiohttp.ClientSession() as session, session.post(f"http://{engine}/fault/{mode}") as answer:
        answer.raise_for_status()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def ext_proc_stats(stack: Stack) -> dict[str, int]:
    """Envoy's ext_proc counters that are not zero (streams started, failed, message timeouts, ...)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{stack.admin_url}/stats", params={"filter": "ext_proc"}) as answer,
    ):
        text = await answer.text()
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit() and int(value) > 0:
            found[name.removeprefix("http.ingress.ext_proc.")] = int(value)
    return found


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def metrics_bytes(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url) as answer:
        return len(await answer.read())


# --- scenarios ----------------------------------------------------------------------------------------
async def control(stack: Stack) -> dict[str, Any]:
    began = time.monotonic()
    cpu_before = cpu_s(stack.picker.process.pid)
    sent = await open_loop(stack.url, rate=RATE, duration_s=DURATION_S, began=began)
    cpu = cpu_s(stack.picker.process.pid) - cpu_before
    routed = await decisions(stack)
    return {
        "requests": len(sent),
        "client_errors": errors(sent),
        "picker_cpu_ms_per_request": round(1000 * cpu / len(sent), 2),
        "shares": shares(sent, routed, stack.engines, (0, DURATION_S)),
    }


async def engine_killed(stack: Stack) -> dict[str, Any]:
    began = time.monotonic()
    victim = stack.engines[1]
    load = asyncio.create_task(open_loop(stack.url, rate=RATE, duration_s=DURATION_S, began=began))
    await asyncio.sleep(began + FAULT_AT_S - time.monotonic())
    child = stack.engine_children[1]
    os.killpg(child.process.pid, signal.SIGKILL)
    killed_at = time.monotonic() - began
    sent = await load
    routed = await decisions(stack)
    # In flight at the kill: sent within one engine latency before it and routed to the victim.
    in_flight = [
        s
        for s in sent
        if killed_at - ENGINE_LATENCY_S * 2 <= s.at < killed_at and routed.get(s.request_id) == victim
    ]
    after = [s for s in sent if s.at >= killed_at + SCRAPE_INTERVAL_S]
    misrouted = [s for s in after if routed.get(s.request_id) == victim]
    to_victim_after_kill = [s.at for s in sent if s.at >= killed_at and routed.get(s.request_id) == victim]
    return {
        "requests": len(sent),
        "client_errors": errors(sent),
        "in_flight_at_kill": len(in_flight),
        "errors_beyond_in_flight": max(0, errors(sent) - len(in_flight)),
        "decisions_to_dead_after_one_interval": len(misrouted),
        "recovery_s": round(max(to_victim_after_kill) - killed_at, 3) if to_victim_after_kill else 0.0,
        "shares_after": shares(sent, routed, stack.engines, (killed_at + 1, DURATION_S)),
    }


async def hostile_metrics(stack: Stack, mode: str) -> dict[str, Any]:
    began = time.monotonic()
    victim = stack.engines[1]
    load = asyncio.create_task(open_loop(stack.url, rate=RATE, duration_s=DURATION_S, began=began))
    await asyncio.sleep(began + FAULT_AT_S - time.monotonic())
    await _fault(victim, mode)
    hostile_at = time.monotonic() - began
    await asyncio.sleep(began + HEAL_AT_S - time.monotonic())
    await _fault(victim, "healthy")
    healed_at = time.monotonic() - began
    sent = await load
    routed = await decisions(stack)
    to_victim = sorted(s.at for s in sent if routed.get(s.request_id) == victim)
    while_hostile = [at for at in to_victim if hostile_at <= at < healed_at]
    after_heal = [at for at in to_victim if at >= healed_at]
    late = [at for at in while_hostile if at >= hostile_at + SCRAPE_INTERVAL_S]
    picker_alive = stack.picker.process.poll() is None
    return {
        "requests": len(sent),
        "client_errors": errors(sent),
        "decisions_to_it_while_hostile_after_one_interval": len(late),
        "stale_after_s": round(max(while_hostile) - hostile_at, 3) if while_hostile else 0.0,
        "recovered_after_s": round(after_heal[0] - healed_at, 3) if after_heal else None,
        "share_while_hostile": shares(sent, routed, stack.engines, (hostile_at + 1, healed_at))[
            _host(victim)
        ],
        "share_after_heal": shares(sent, routed, stack.engines, (healed_at + 1, DURATION_S))[_host(victim)],
        "picker_alive": picker_alive,
    }


def upload_body(index: int) -> bytes:
    """A completions body of UPLOAD_BYTES: the model, then a prompt of ASCII text (distinct per upload)."""
    head = b'{"model": "%s", "max_tokens": 8, "prompt": "upload %d ' % (MODEL.encode(), index)
    tail = b'"}'
    filler = b"the quick brown fox jumps over the lazy dog "
    size = UPLOAD_BYTES - len(head) - len(tail)
    return head + (filler * (size // len(filler) + 1))[:size] + tail


async def uploads(stack: Stack) -> dict[str, Any]:
    """UPLOADS concurrent chunked uploads of UPLOAD_BYTES each (no content-length: the picker cannot know
    the size before the end), while the picker's RSS is sampled every 10 ms."""
    await asyncio.sleep(2)  # settle after the warm-up request
    pid = stack.picker.process.pid
    before = rss_mib(pid)
    peak = before
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, rss_mib(pid))
            await asyncio.sleep(0.01)

    async def send(session: aiohttp.ClientSession, index: int) -> Sent:
        body = upload_body(index)
        entry = Sent(uuid.uuid4().hex, 0.0)

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), UPLOAD_CHUNK_BYTES):
                yield body[start : start + UPLOAD_CHUNK_BYTES]

        started = time.monotonic()
        try:
            headers = {"x-request-id": entry.request_id, "content-type": "application/json"}
            async with session.post(f"{stack.url}/v1/completions", data=chunks(), headers=headers) as answer:
                await answer.read()
                entry.status = answer.status
        except (aiohttp.ClientError, TimeoutError):
            entry.status = 0
        entry.latency_s = time.monotonic() - started
        return entry

    sampler = asyncio.create_task(sample())
    cpu_before = cpu_s(pid)
    timeout = aiohttp.ClientTimeout(total=120)
    sent: list[Sent] = []
    after_rounds = []
    for _ in range(UPLOAD_ROUNDS):
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
            sent += await asyncio.gather(*(send(session, index) for index in range(UPLOADS)))
        await asyncio.sleep(3)  # let the picker free what it held
        after_rounds.append(rss_mib(pid))
    sampling = False
    await sampler
    after = after_rounds[-1]
    cpu = cpu_s(pid) - cpu_before
    total_mib = UPLOADS * UPLOAD_BYTES / 2**20
    return {
        "uploads": UPLOADS,
        "upload_mib": round(UPLOAD_BYTES / 2**20, 1),
        "total_mib": round(total_mib, 1),
        "rounds": UPLOAD_ROUNDS,
        "statuses": {
            str(code): sum(1 for s in sent if s.status == code) for code in sorted({s.status for s in sent})
        },
        "slowest_s": round(max(s.latency_s for s in sent), 2),
        "picker_cpu_s": round(cpu, 2),
        "rss_before_mib": before,
        "rss_peak_mib": peak,
        "rss_after_mib": after,
        "rss_after_each_round_mib": after_rounds,
        "peak_growth_over_total": round((peak - before) / total_mib, 2),
        "retained_mib": round(after - before, 1),
    }


async def restart(group: processes.Group, stack: Stack, replica: Replica, *, began: float) -> dict[str, Any]:
    """SIGTERM one picker replica, wait for its drain and exit, start it again on the same ports and wait
    until it is ready; when each step happened (seconds since `began`)."""
    sigterm_at = time.monotonic() - began
    old = replica.child
    await asyncio.to_thread(group.stop, old, grace_s=DRAIN_TIMEOUT_S + 5)
    exited_at = time.monotonic() - began
    replica.restarts += 1
    replica.child = group.start(f"{replica.name}-restart-{replica.restarts}", replica.argv)
    stack.picker_logs.append(replica.child.log_path)
    await wait_ready(replica)
    ready_at = time.monotonic() - began
    stopped = re.search(r"event=stopped drained_s=(\S+) cut_in_flight=(\d+)", old.log_path.read_text())
    return {
        "replica": replica.name,
        "sigterm_at": round(sigterm_at, 2),
        "exited_at": round(exited_at, 2),
        "ready_at": round(ready_at, 2),
        "exit_code": old.process.returncode,
        "drained_s": float(stopped.group(1)) if stopped else None,
        "cut_in_flight": int(stopped.group(2)) if stopped else None,
    }


async def picker_restart(group: processes.Group, stack: Stack) -> dict[str, Any]:
    """Restart every picker replica in turn under load (each one ready again, and seen ready by Envoy,
    before the next gets SIGTERM); every LONG_EVERY-th request lasts LONG_S, so drains have long streams
    to wait for."""
    began = time.monotonic()
    load = asyncio.create_task(
        open_loop(stack.url, rate=RATE, duration_s=DURATION_S, began=began, long_every=LONG_EVERY)
    )
    await asyncio.sleep(began + FAULT_AT_S - time.monotonic())
    steps = []
    for replica in stack.replicas:
        steps.append(await restart(group, stack, replica, began=began))
        # Envoy health-checks each replica every interval (plus the check's timeout): let it see this one.
        await asyncio.sleep(
            2 * (envoy_bootstrap.PICKER_HEALTH_INTERVAL_S + envoy_bootstrap.PICKER_HEALTH_TIMEOUT_S)
        )
    sent = await load
    routed = await decisions(stack)

    def failed(window: Sequence[Sent]) -> int:
        return sum(1 for s in window if s.status != 200)

    in_flight = [s for s in sent if any(s.at < step["sigterm_at"] < s.ended for step in steps)]
    in_delay = [s for s in sent if any(0 <= s.at - step["sigterm_at"] < DRAIN_DELAY_S for step in steps)]
    while_down = [
        s
        for s in sent
        if any(step["sigterm_at"] + DRAIN_DELAY_S <= s.at < step["ready_at"] for step in steps)
    ]
    return {
        "requests": len(sent),
        "client_errors": errors(sent),
        "statuses": {
            str(code): sum(1 for s in sent if s.status == code) for code in sorted({s.status for s in sent})
        },
        "restarts": steps,
        "in_flight_at_sigterm": len(in_flight),
        "long_in_flight_at_sigterm": sum(1 for s in in_flight if s.long),
        "errors_in_flight_at_sigterm": failed(in_flight),
        "sent_in_drain_delay": len(in_delay),
        "errors_in_drain_delay": failed(in_delay),
        "sent_while_down": len(while_down),
        "errors_while_down": failed(while_down),
        "slowest_s": round(max(s.latency_s for s in sent), 2),
        "routed": sum(1 for s in sent if s.request_id in routed),
    }


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 3) if ordered else 0.0


async def cpu_starved(group: processes.Group, stack: Stack) -> dict[str, Any]:
    """The picker (pinned to STARVED_CORE) shares its core with HOGS busy loops from FAULT_AT_S to HEAL_AT_S;
    every LONG_EVERY-th request lasts LONG_S, so routed streams stay open through the starvation."""
    began = time.monotonic()
    load = asyncio.create_task(
        open_loop(stack.url, rate=RATE, duration_s=DURATION_S, began=began, long_every=LONG_EVERY)
    )
    await asyncio.sleep(began + FAULT_AT_S - time.monotonic())
    busy = [sys.executable, "-c", "while True: pass"]
    hogs = [group.start(f"hog-{index}", ["taskset", "-c", STARVED_CORE, *busy]) for index in range(HOGS)]
    starved_at = time.monotonic() - began
    await asyncio.sleep(began + HEAL_AT_S - time.monotonic())
    for hog in hogs:
        await asyncio.to_thread(group.stop, hog, grace_s=1.0)
    healed_at = time.monotonic() - began
    sent = await load
    routed = await decisions(stack)
    log = "\n".join(path.read_text(errors="replace") for path in stack.picker_logs)
    events = {
        event: len(re.findall(rf"event={event}\b", log))
        for event in ("refused", "stream_refused", "stream_idle_timeout", "internal_error", "overloaded")
    }
    starved = [s for s in sent if starved_at <= s.at < healed_at]
    routed_failed = [s for s in sent if s.request_id in routed and s.status != 200]
    return {
        "requests": len(sent),
        "client_errors": errors(sent),
        "statuses": {
            str(code): sum(1 for s in sent if s.status == code) for code in sorted({s.status for s in sent})
        },
        "starved_s": round(healed_at - starved_at, 2),
        "sent_while_starved": len(starved),
        "statuses_while_starved": {
            str(code): sum(1 for s in starved if s.status == code)
            for code in sorted({s.status for s in starved})
        },
        "routed_then_failed": len(routed_failed),
        "routed_then_failed_statuses": sorted({s.status for s in routed_failed}),
        "latency_p50_s_while_starved": _percentile([s.latency_s for s in starved if not s.long], 0.5),
        "latency_p99_s_while_starved": _percentile([s.latency_s for s in starved if not s.long], 0.99),
        "picker_events": events,
        "envoy_ext_proc": await ext_proc_stats(stack),
    }


def _pinned_headers(subset: str) -> ext_proc.ProcessingRequest:
    headers = [(":method", "POST"), (":path", "/v1/models"), (":authority", "faults")]
    header_map = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers]
    )
    hint = struct_pb2.Struct()
    hint.fields[names.DESTINATION_SUBSET].string_value = subset
    metadata = base_pb2.Metadata()
    metadata.filter_metadata[names.SUBSET_HINT_NAMESPACE].CopyFrom(hint)
    return ext_proc.ProcessingRequest(
        request_headers=ext_proc.HttpHeaders(headers=header_map, end_of_stream=True),
        metadata_context=metadata,
    )


async def idle_streams(stack: Stack, control_shares: dict[str, float]) -> dict[str, Any]:
    began = time.monotonic()
    target = stack.engines[0]
    load = asyncio.create_task(open_loop(stack.url, rate=RATE, duration_s=DURATION_S, began=began))
    await asyncio.sleep(began + FAULT_AT_S - time.monotonic())
    opened_at = time.monotonic() - began
    routed_streams = 0
    async with grpc.aio.insecure_channel(f"{ADDRESS}:{stack.grpc_port}") as channel:
        stub = ext_proc_grpc.ExternalProcessorStub(channel)
        streams = []
        for _ in range(IDLE_STREAMS):
            stream = stub.Process()
            await stream.write(_pinned_headers(target))
            streams.append(stream)
        for stream in streams:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stream.read()
                routed_streams += int(reply is not grpc.aio.EOF and reply.HasField("request_headers"))
        sent = await load
        closed = sum(1 for stream in streams if stream.done())
        for stream in streams:
            stream.cancel()
    routed = await decisions(stack)
    held = shares(sent, routed, stack.engines, (opened_at + 1, DURATION_S))
    return {
        "requests": len(sent),
        "client_errors": errors(sent),
        "streams_routed": routed_streams,
        "streams_closed_by_picker": closed,
        "pinned_engine_share": held[_host(target)],
        "control_share": control_shares[_host(target)],
        "shift_points": round(100 * abs(held[_host(target)] - control_shares[_host(target)]), 1),
        "shares_last_8s": shares(sent, routed, stack.engines, (DURATION_S - 8, DURATION_S)),
    }


async def model_names(stack: Stack) -> dict[str, Any]:
    rate = 50.0
    duration = MODEL_NAMES / rate
    # The same number of requests first, so that the baseline has paid for warm-up: ordinary ones and, ten in
    # a hundred, one of ten unknown names (so the series of an unserved name, `other` with 404, exist).
    warm_up = [MODEL] * 9 + [f"unknown-{index}" for index in range(10)] + [MODEL] * 81
    await open_loop(stack.url, rate=rate, duration_s=duration, began=time.monotonic(), models=warm_up)
    before = {
        "metrics_bytes": await metrics_bytes(stack.metrics_url),
        "rss_mib": rss_mib(stack.picker.process.pid),
    }
    rng = random.Random(7)
    names_sent = [
        f"m{index}-" + "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=MODEL_NAME_BYTES))
        for index in range(MODEL_NAMES)
    ]
    sent = await open_loop(
        stack.url, rate=rate, duration_s=duration * 1.2, began=time.monotonic(), models=names_sent
    )
    await asyncio.sleep(2)
    after = {
        "metrics_bytes": await metrics_bytes(stack.metrics_url),
        "rss_mib": rss_mib(stack.picker.process.pid),
    }
    return {
        "requests": len(sent),
        "distinct_models": len({names_sent[i % MODEL_NAMES] for i in range(len(sent))}),
        "client_errors": errors(sent),
        "statuses": {
            str(code): sum(1 for s in sent if s.status == code) for code in sorted({s.status for s in sent})
        },
        "before": before,
        "after": after,
        "metrics_growth_pct": round(100 * (after["metrics_bytes"] / before["metrics_bytes"] - 1), 1),
        "rss_growth_pct": round(100 * (after["rss_mib"] / before["rss_mib"] - 1), 1),
    }


# --- the suite ----------------------------------------------------------------------------------------
def verdicts(rows: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each target of the issue that was run, met or missed, with the numbers that decide."""
    out: dict[str, str] = {}
    if "engine_killed" in rows:
        killed = rows["engine_killed"]
        out["engine_killed"] = _verdict(
            killed["errors_beyond_in_flight"] == 0 and killed["decisions_to_dead_after_one_interval"] == 0,
            f"{killed['errors_beyond_in_flight']} errors beyond {killed['in_flight_at_kill']} in flight, "
            f"{killed['decisions_to_dead_after_one_interval']} decisions to it after one interval, last "
            f"{killed['recovery_s']} s after the kill",
        )
    for mode in ("metrics_nan", "metrics_html"):
        if mode not in rows:
            continue
        row = rows[mode]
        recovered = row["recovered_after_s"]
        # Decisions only happen at arrivals: the victim's next request comes ~3/RATE after any instant.
        met = (
            row["picker_alive"]
            and row["decisions_to_it_while_hostile_after_one_interval"] == 0
            and recovered is not None
            and recovered <= SCRAPE_INTERVAL_S + 3 / RATE
        )
        out[mode] = _verdict(
            met,
            f"{row['decisions_to_it_while_hostile_after_one_interval']} decisions to it after one interval "
            f"of hostile metrics; first decision to it {recovered} s after healing",
        )
    for name in ("idle_streams_300", "idle_streams_300_timeout_8s"):
        if name in rows:
            row = rows[name]
            out[name] = _verdict(
                row["shift_points"] <= 5,
                f"pinned engine's share {row['pinned_engine_share']:.0%} vs {row['control_share']:.0%} in "
                f"control ({row['shift_points']} points); last 8 s: {row['shares_last_8s']}",
            )
    if "uploads_10x15mb" in rows:
        row = rows["uploads_10x15mb"]
        out["uploads_10x15mb"] = _verdict(
            row["statuses"] == {"200": UPLOADS * row["rounds"]}
            and row["peak_growth_over_total"] <= 1.3
            and row["retained_mib"] <= 0.05 * row["total_mib"],
            f"RSS {row['rss_before_mib']} -> peak {row['rss_peak_mib']} -> {row['rss_after_mib']} MiB: peak "
            f"growth {row['peak_growth_over_total']}x the {row['total_mib']} MiB of bodies, "
            f"{row['retained_mib']} MiB retained; statuses {row['statuses']}",
        )
    if "picker_restart_rolling_2" in rows:
        row = rows["picker_restart_rolling_2"]
        out["picker_restart_rolling_2"] = _verdict(
            row["client_errors"] == 0,
            f"{row['client_errors']} client errors of {row['requests']} (statuses {row['statuses']}); "
            f"{row['in_flight_at_sigterm']} in flight at the SIGTERMs ({row['long_in_flight_at_sigterm']} "
            f"of {LONG_S:g} s), slowest {row['slowest_s']} s",
        )
    if "picker_restart_single" in rows:
        row = rows["picker_restart_single"]
        (step,) = row["restarts"]
        out["picker_restart_single"] = _verdict(
            row["errors_in_flight_at_sigterm"] == 0 and row["errors_in_drain_delay"] == 0,
            f"{row['errors_in_flight_at_sigterm']} errors of {row['in_flight_at_sigterm']} in flight at "
            f"SIGTERM, {row['errors_in_drain_delay']} of {row['sent_in_drain_delay']} sent in the drain "
            f"delay; but {row['errors_while_down']} of {row['sent_while_down']} sent while no picker took "
            f"streams ({step['ready_at'] - step['sigterm_at'] - DRAIN_DELAY_S:.1f} s) failed "
            f"(statuses {row['statuses']})",
        )
    for name in ("cpu_starved", "cpu_starved_no_shedding"):
        if name not in rows:
            continue
        row = rows[name]
        out[name] = _verdict(
            row["routed_then_failed"] == 0 and set(row["statuses"]) <= {"200", "429", "503"},
            f"{row['routed_then_failed']} routed requests failed; statuses while starved "
            f"{row['statuses_while_starved']} (latency p50 {row['latency_p50_s_while_starved']} s, p99 "
            f"{row['latency_p99_s_while_starved']} s); Envoy ext_proc {row['envoy_ext_proc']}",
        )
    if "model_names_1000" in rows:
        names_row = rows["model_names_1000"]
        out["model_names_1000"] = _verdict(
            abs(names_row["metrics_growth_pct"]) <= 5 and abs(names_row["rss_growth_pct"]) <= 5,
            f"/metrics {names_row['metrics_growth_pct']:+}%, RSS {names_row['rss_growth_pct']:+}%",
        )
    return out


def _verdict(met: bool, detail: str) -> str:
    return f"{'met' if met else 'MISSED'}: {detail}"


SCENARIOS: Final[Sequence[tuple[str, Sequence[str]]]] = [
    ("control", ()),
    ("engine_killed", ()),
    ("metrics_nan", ()),
    ("metrics_html", ()),
    ("idle_streams_300", ()),
    ("idle_streams_300_timeout_8s", ("--stream-idle-timeout", "8s")),
    ("model_names_1000", ()),
    ("uploads_10x15mb", ()),
    ("picker_restart_rolling_2", ()),
    ("picker_restart_single", ()),
    ("cpu_starved", ("--overload-lag", "1s")),
    ("cpu_starved_no_shedding", ("--overload-lag", "0")),
]


async def run_suite(run_dir: Path, only: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Run the scenarios named in `only` (all when empty; control too when an idle-stream one needs it)."""
    wanted = set(only) | ({"control"} if any(n.startswith("idle_streams") for n in only) else set())
    rows: dict[str, dict[str, Any]] = {}
    for name, flags in SCENARIOS:
        if wanted and name not in wanted:
            continue
        where = run_dir / name
        where.mkdir(parents=True, exist_ok=True)
        with processes.Group(where) as group:
            replicas = 2 if name == "picker_restart_rolling_2" else 1
            starved = name.startswith("cpu_starved")
            # Starved: the picker on its core with the busy loops, everything else (this process too) on
            # the other, so that only the picker lacks CPU.
            affinity = os.sched_getaffinity(0)
            if starved:
                os.sched_setaffinity(0, {int(OTHER_CORE)})
            stack = await start_stack(
                group,
                where,
                flags,
                replicas=replicas,
                picker_prefix=("taskset", "-c", STARVED_CORE) if starved else (),
                others_prefix=("taskset", "-c", OTHER_CORE) if starved else (),
            )
            if name == "control":
                row = await control(stack)
            elif name == "engine_killed":
                row = await engine_killed(stack)
            elif name.startswith("metrics_"):
                row = await hostile_metrics(stack, name.removeprefix("metrics_"))
            elif name.startswith("idle_streams"):
                row = await idle_streams(stack, rows["control"]["shares"])
            elif name == "uploads_10x15mb":
                row = await uploads(stack)
            elif name.startswith("picker_restart"):
                row = await picker_restart(group, stack)
            elif starved:
                row = await cpu_starved(group, stack)
            else:
                row = await model_names(stack)
        os.sched_setaffinity(0, affinity)
        row["picker_flags"] = list(flags)
        rows[name] = row
        print(f"{name}: {json.dumps(row)}", flush=True)
    return rows


def markdown(document: dict[str, Any]) -> str:
    rows, verdict = document["rows"], document["verdicts"]
    dirty = " (uncommitted changes)" if document["source"]["uncommitted"] else ""
    control = ""
    if "control" in rows:
        row = rows["control"]
        shown = ", ".join(f"{engine} {share:.0%}" for engine, share in row["shares"].items())
        control = f"Control shares: {shown} ({row['client_errors']} errors of {row['requests']})."
    lines = [
        "# Fault suite (issue 20)",
        "",
        f"Command: `{document['command']}`  ",
        f"Source: {document['source']['commit']}{dirty}  ",
        f"Machine: {document['machine']}",
        "",
        f"Load: Poisson {RATE:g} req/s for {DURATION_S:g} s per scenario through Envoy (GIE full-duplex) to "
        f"three stand-in engines ({ENGINE_LATENCY_S * 1000:g} ms per request); faults at {FAULT_AT_S:g} s, "
        f"healed at {HEAL_AT_S:g} s; scrape interval {SCRAPE_INTERVAL_S * 1000:g} ms. {control}",
        "",
        "| fault | target | result |",
        "|---|---|---|",
    ]
    targets = {
        "engine_killed": "0 errors beyond its in-flight streams, 0 decisions to it after one interval",
        "metrics_nan": "stale within one interval, back within one interval of healthy metrics, task alive",
        "metrics_html": "same as NaN",
        "idle_streams_300": "real traffic within 5 points of control (default flags)",
        "idle_streams_300_timeout_8s": "same, with --stream-idle-timeout 8s",
        "model_names_1000": "/metrics size and RSS within 5%",
        "uploads_10x15mb": "peak RSS growth <= 1.3x the bodies' total, all returned (<= 5% kept), all 200",
        "picker_restart_rolling_2": "rolling restart of two replicas: 0 client errors",
        "cpu_starved": f"picker on one core with {HOGS} busy loops: no routed request fails; refusals only "
        "503/429",
        "cpu_starved_no_shedding": "same with --overload-lag 0 (no refusals): the comparison",
        "picker_restart_single": "one replica with drain: 0 errors for requests in flight or in the drain "
        "delay (what clients see while it is down: reported)",
    }
    for name, target in targets.items():
        if name in verdict:
            lines.append(f"| `{name}` | {target} | {verdict[name]} |")
    lines += ["", "Raw rows:", "", "```json", json.dumps(rows, indent=1), "```", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["engine"]:
        asyncio.run(serve_engine(arguments[1], int(arguments[2])))
        return
    parser = argparse.ArgumentParser(prog="frontier_bench.faults", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--run-dir", type=Path, default=Path("/tmp/frontier-faults"))
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated scenarios (default all): " + ", ".join(n for n, _ in SCENARIOS),
    )
    args = parser.parse_args(arguments)
    command = shlex.join(["python", "-m", "frontier_bench.faults", *arguments])
    rows = asyncio.run(run_suite(args.run_dir, [name for name in args.only.split(",") if name]))
    document = {
        "command": command,
        "source": harness.source(),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "rows": rows,
        "verdicts": verdicts(rows),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faults.json").write_text(json.dumps(document, indent=1) + "\n")
    (args.out / "faults.md").write_text(markdown(document))
    print((args.out / "faults.md").read_text())


if __name__ == "__main__":
    main()
