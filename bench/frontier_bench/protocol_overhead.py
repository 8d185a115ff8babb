"""What the endpoint-picker protocol costs: Envoy + picker against Envoy routing straight to the same backend.

Five front doors to one trivial backend, all running at once and measured cell by cell, side by side, so
the machine's noise lands on all of them alike:

- `direct`: Envoy with a static cluster of the backend, no ext_proc (the baseline);
- `floor-gie` / `floor-cheap`: Envoy with the ext_proc filter calling a minimal pass-through processor
  (fixed endpoint, headers answered at once, body chunks echoed): the least any Python processor can cost
  for the protocol itself, in GIE's full-duplex configuration and in the picker's cheap one;
- `hold-gie`: the floor, except that it answers the request headers only after the last body byte (and then
  echoes the held chunks), as any picker that routes by the body's model must for small bodies: it separates
  the cost of that ordering from the cost of the picker's own work;
- `picker-gie` / `picker-cheap`: the same Envoys calling `frontier-picker` (plaintext, file discovery of the
  one backend, `--fallbacks 0`, the `round-robin` built-in config so the numbers are the protocol layer's).

Cells: prompts of 1 KB, 16 KB and 200 KB; 1, 16 and 64 concurrent closed-loop clients; a JSON response or a
100-chunk SSE stream. Per cell and front door: client latency p50/p99 (request sent to last byte), and CPU
per request of the processor and of Envoy (from /proc: every thread's scheduler nanoseconds). Added latency
and the picker/floor CPU ratio are computed against the same cell of the same run; each cell runs in
`--rounds` interleaved rounds with the door order rotated.

`python -m frontier_bench.protocol_overhead run --out bench/results` writes `protocol_overhead.json` and
`.md`; `floor` and `backend` are the helper processes it starts.
"""

import argparse
import asyncio
import dataclasses
import itertools
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Final

import aiohttp
import grpc
from aiohttp import web
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from frontier_api import envoy_bootstrap
from frontier_bench import envoy_lb, processes

log = logging.getLogger(__name__)

ADDRESS: Final = "127.2.1.1"  # the picker engineer's loopback range, apart from the picker's tests
PROMPT_BYTES: Final = (1_000, 16_000, 200_000)
CONCURRENCY: Final = (1, 16, 64)
STREAM_CHUNKS: Final = (0, 100)
FRONT_DOORS: Final = ("direct", "floor-gie", "hold-gie", "picker-gie", "floor-cheap", "picker-cheap")
CLOCK_TICK: Final = os.sysconf("SC_CLK_TCK")
ENVOY: Final = Path(sys.executable).parent / "envoy"
_FULL_DUPLEX: Final = processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED


# --- the floor: a minimal pass-through ext_proc processor ------------------------------------------------
class Floor(ext_proc_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """Routes every request to the next of its endpoints (round-robin) at once and echoes bodies: the
    protocol's cost, nothing else."""

    def __init__(self, endpoints: Sequence[str], *, hold: bool = False) -> None:
        self.hold = hold
        self.headers_replies = itertools.cycle([_route(endpoint) for endpoint in endpoints])

    async def Process(
        self, request_iterator: AsyncIterator[ext_proc.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> None:
        duplex = True
        held: list[ext_proc.HttpBody] | None = None
        async for message in request_iterator:
            kind = message.WhichOneof("request")
            if kind == "request_headers":
                headers_reply = next(self.headers_replies)
                if message.HasField("protocol_config"):
                    duplex = message.protocol_config.request_body_mode == _FULL_DUPLEX
                if self.hold and duplex and not message.request_headers.end_of_stream:
                    held = []
                else:
                    await context.write(headers_reply)
            elif kind == "request_body":
                body = message.request_body
                if held is not None:
                    held.append(body)
                    if body.end_of_stream:
                        await context.write(headers_reply)
                        for chunk in held:
                            await context.write(_echo(chunk, response=False))
                        held = None
                else:
                    await context.write(_echo(body, response=False) if duplex else _continue_request_body)
            elif kind == "response_body":
                await context.write(_echo(message.response_body, response=True))
            elif kind == "response_headers":
                await context.write(_continue_response_headers)
            elif kind == "request_trailers":
                await context.write(ext_proc.ProcessingResponse(request_trailers=ext_proc.TrailersResponse()))
            elif kind == "response_trailers":
                await context.write(
                    ext_proc.ProcessingResponse(response_trailers=ext_proc.TrailersResponse())
                )


def _route(endpoint: str) -> ext_proc.ProcessingResponse:
    option = base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key="x-gateway-destination-endpoint", raw_value=endpoint.encode()),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )
    return ext_proc.ProcessingResponse(
        request_headers=ext_proc.HeadersResponse(
            response=ext_proc.CommonResponse(
                header_mutation=ext_proc.HeaderMutation(set_headers=[option]), clear_route_cache=True
            )
        )
    )


_continue_request_body = ext_proc.ProcessingResponse(request_body=ext_proc.BodyResponse())
_continue_response_headers = ext_proc.ProcessingResponse(response_headers=ext_proc.HeadersResponse())


def _echo(body: ext_proc.HttpBody, *, response: bool) -> ext_proc.ProcessingResponse:
    reply = ext_proc.BodyResponse(
        response=ext_proc.CommonResponse(
            body_mutation=ext_proc.BodyMutation(
                streamed_response=ext_proc.StreamedBodyResponse(
                    body=body.body, end_of_stream=body.end_of_stream
                )
            )
        )
    )
    if response:
        return ext_proc.ProcessingResponse(response_body=reply)
    return ext_proc.ProcessingResponse(request_body=reply)


async def serve_floor(address: str, port: int, endpoints: Sequence[str], *, hold: bool) -> None:
    """Serve the floor processor, and gRPC health (always SERVING) on the same port for Envoy's checks."""
    server = grpc.aio.server()
    ext_proc_grpc.add_ExternalProcessorServicer_to_server(Floor(endpoints, hold=hold), server)
    checks = health.aio.HealthServicer()
    await checks.set(envoy_bootstrap.PICKER_HEALTH_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    server.add_insecure_port(f"{address}:{port}")
    await server.start()
    await server.wait_for_termination()


# --- the backend: answers at once, JSON or an SSE stream of N small chunks -------------------------------
async def serve_backend(address: str, port: int) -> None:
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":100}}\n\ndata: [DONE]\n\n'
    chunk = b'data: {"choices":[{"index":0,"delta":{"content":"token "}}],"usage":null}\n\n'
    answer = json.dumps({"choices": [{"text": "ok"}], "usage": {"prompt_tokens": 10, "completion_tokens": 1}})

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        chunks = int(request.headers.get("x-bench-chunks", "0"))
        if not chunks:
            return web.Response(body=answer.encode(), content_type="application/json")
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(chunks):
            await response.write(chunk)
        await response.write(usage)
        await response.write_eof()
        return response

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port, backlog=1024).start()
    await asyncio.Event().wait()


# --- measurement ----------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """CPU time of a process so far, all its threads: the scheduler's nanosecond count per thread
    (/proc/PID/task/TID/schedstat), falling back to utime + stime in clock ticks (10 ms) without it."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # a thread that just ended
    except OSError:
        total = 0
    if total:
        return total / 1e9
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def chat_body(size: int) -> bytes:
    head = b'{"model":"bench-model","messages":[{"role":"user","content":"'
    tail = b'"}],"max_tokens":100,"stream":false}'
    return head + b"x" * max(0, size - len(head) - len(tail)) + tail


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclasses.dataclass(slots=True, kw_only=True)
class Door:
    """One front door: the URL clients use and the processes whose CPU is charged to it."""

    name: str
    url: str
    envoy_pid: int
    processor_pid: int | None


@dataclasses.dataclass(slots=True, kw_only=True)
class Cell:
    prompt_bytes: int
    concurrency: int
    chunks: int
    door: str
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    processor_cpu_us: float | None
    envoy_cpu_us: float
    latencies: list[float] = dataclasses.field(default_factory=list, repr=False)


async def measure(
    session: aiohttp.ClientSession, door: Door, *, body: bytes, concurrency: int, chunks: int, requests: int
) -> Cell:
    headers = {"content-type": "application/json"}
    if chunks:
        headers["x-bench-chunks"] = str(chunks)
    latencies: list[float] = []
    errors = 0
    remaining = requests

    async def one() -> None:
        nonlocal errors
        started = time.perf_counter()
        async with session.post(door.url, data=body, headers=headers) as response:
            await response.read()
            if response.status != 200:
                errors += 1
        latencies.append(time.perf_counter() - started)

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    await asyncio.gather(*(one() for _ in range(min(concurrency, 8))))  # warm connections
    latencies.clear()
    envoy_before = cpu_seconds(door.envoy_pid)
    processor_before = cpu_seconds(door.processor_pid) if door.processor_pid else 0.0
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    envoy_cpu = cpu_seconds(door.envoy_pid) - envoy_before
    processor_cpu = cpu_seconds(door.processor_pid) - processor_before if door.processor_pid else None
    return Cell(
        prompt_bytes=len(body),
        concurrency=concurrency,
        chunks=chunks,
        door=door.name,
        requests=requests,
        errors=errors,
        p50_ms=statistics.median(latencies) * 1e3,
        p99_ms=percentile(latencies, 0.99) * 1e3,
        processor_cpu_us=processor_cpu / requests * 1e6 if processor_cpu is not None else None,
        envoy_cpu_us=envoy_cpu / requests * 1e6,
        latencies=latencies,
    )


def requests_for(concurrency: int, scale: float) -> int:
    return max(20, int({1: 100, 16: 320, 64: 512}[concurrency] * scale))


async def start_doors(group: processes.Group, work: Path) -> dict[str, Door]:
    backend_port = processes.free_port(ADDRESS)
    backend = group.start(
        "backend",
        [sys.executable, "-m", "frontier_bench.protocol_overhead", "backend", "--port", str(backend_port)],
    )
    await processes.wait_port(ADDRESS, backend_port, child=backend)
    endpoint = f"{ADDRESS}:{backend_port}"
    endpoints_file = work / "endpoints.yaml"
    endpoints_file.write_text(f"endpoints: [{{name: backend, address: {ADDRESS}, port: {backend_port}}}]\n")
    doors: dict[str, Door] = {}
    for name in FRONT_DOORS:
        listen, admin = processes.free_port(ADDRESS), processes.free_port(ADDRESS)
        processor_pid = None
        if name == "direct":
            config = envoy_lb.bootstrap(
                policy="round-robin",
                listen_address=ADDRESS,
                listen_port=listen,
                engines=[(ADDRESS, backend_port)],
                admin_port=admin,
            )
        else:
            kind, mode = name.split("-")
            port = processes.free_port(ADDRESS)
            if kind in ("floor", "hold"):
                argv = [sys.executable, "-m", "frontier_bench.protocol_overhead", "floor"]
                argv += ["--port", str(port), "--endpoint", endpoint] + (["--hold"] if kind == "hold" else [])
            else:
                argv = [sys.executable, "-m", "frontier_picker.main", "--address", ADDRESS]
                argv += ["--grpc-port", str(port), "--grpc-health-port", "0", "--metrics-port", "0"]
                argv += ["--secure-serving", "false", "--endpoints-file", str(endpoints_file)]
                argv += [
                    "--fallbacks",
                    "0",
                    "--builtin-config",
                    "round-robin",
                    "--refresh-metrics-interval",
                    "0",
                ]
            processor = group.start(name, argv)
            await processes.wait_port(ADDRESS, port, child=processor)
            processor_pid = processor.process.pid
            config = envoy_bootstrap.bootstrap(
                listen_address=ADDRESS,
                listen_port=listen,
                pickers=[f"{ADDRESS}:{port}"],
                picker_tls=False,
                mode=mode,
                retries=0,
                admin_port=admin,
            )
        path = work / f"envoy-{name}.json"
        path.write_text(json.dumps(config))
        envoy = group.start(
            f"envoy-{name}",
            [str(ENVOY), "-c", str(path), "--disable-hot-restart", "--concurrency", "1", "-l", "warning"],
        )
        await processes.wait_http(f"http://{ADDRESS}:{admin}/ready", child=envoy)
        doors[name] = Door(
            name=name,
            url=f"http://{ADDRESS}:{listen}/v1/chat/completions",
            envoy_pid=envoy.process.pid,
            processor_pid=processor_pid,
        )
    return doors


async def run(*, scale: float, rounds: int, work: Path) -> list[Cell]:
    cells: list[Cell] = []
    with processes.Group(work / "logs") as group:
        doors = await start_doors(group, work)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=120)
        ) as session:
            order = list(doors.values())
            for size in PROMPT_BYTES:
                body = chat_body(size)
                for concurrency in CONCURRENCY:
                    for chunks in STREAM_CHUNKS:
                        parts: dict[str, list[Cell]] = {door.name: [] for door in order}
                        # Rounds in rotated door order, so a burst of load from the shared machine does not
                        # land on one front door only.
                        for round_index in range(rounds):
                            for door in order[round_index % len(order) :] + order[: round_index % len(order)]:
                                part = await measure(
                                    session,
                                    door,
                                    body=body,
                                    concurrency=concurrency,
                                    chunks=chunks,
                                    requests=max(concurrency, requests_for(concurrency, scale) // rounds),
                                )
                                parts[door.name].append(part)
                        for door in order:
                            cell = merge(parts[door.name])
                            cells.append(cell)
                            log.info("event=cell %s", json.dumps(_public(cell)))
    return cells


def _public(cell: Cell) -> dict[str, Any]:
    fields = dataclasses.asdict(cell)
    del fields["latencies"]
    return fields


def merge(parts: Sequence[Cell]) -> Cell:
    """One cell from rounds: latency percentiles over all requests, CPU summed over all requests."""
    latencies = [latency for part in parts for latency in part.latencies]
    requests = sum(part.requests for part in parts)
    processor = [part.processor_cpu_us for part in parts]
    first = parts[0]
    return Cell(
        prompt_bytes=first.prompt_bytes,
        concurrency=first.concurrency,
        chunks=first.chunks,
        door=first.door,
        requests=requests,
        errors=sum(part.errors for part in parts),
        p50_ms=statistics.median(latencies) * 1e3,
        p99_ms=percentile(latencies, 0.99) * 1e3,
        processor_cpu_us=(
            sum(us * part.requests for us, part in zip(processor, parts, strict=True) if us is not None)
            / requests
            if first.processor_cpu_us is not None
            else None
        ),
        envoy_cpu_us=sum(part.envoy_cpu_us * part.requests for part in parts) / requests,
    )


# --- report ---------------------------------------------------------------------------------------------
def summarize(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """Per cell: added latency of each ext_proc door over `direct`, and picker CPU over the floor's."""
    by_key = {(c.prompt_bytes, c.concurrency, c.chunks, c.door): c for c in cells}
    rows: list[dict[str, Any]] = []
    for size in sorted({c.prompt_bytes for c in cells}):
        for concurrency in sorted({c.concurrency for c in cells}):
            for chunks in sorted({c.chunks for c in cells}):
                direct = by_key[(size, concurrency, chunks, "direct")]
                row: dict[str, Any] = {
                    "prompt_bytes": size,
                    "concurrency": concurrency,
                    "chunks": chunks,
                    "direct_p50_ms": round(direct.p50_ms, 2),
                    "direct_p99_ms": round(direct.p99_ms, 2),
                }
                hold = by_key[(size, concurrency, chunks, "hold-gie")]
                picker_gie = by_key[(size, concurrency, chunks, "picker-gie")]
                row["gie_hold_added_p50_ms"] = round(hold.p50_ms - direct.p50_ms, 2)
                row["gie_hold_cpu_us"] = round(hold.processor_cpu_us or 0.0)
                row["gie_picker_over_hold_cpu"] = (
                    round((picker_gie.processor_cpu_us or 0.0) / hold.processor_cpu_us, 2)
                    if hold.processor_cpu_us
                    else None
                )
                for mode in ("gie", "cheap"):
                    floor = by_key[(size, concurrency, chunks, f"floor-{mode}")]
                    picker = by_key[(size, concurrency, chunks, f"picker-{mode}")]
                    row[f"{mode}_floor_added_p50_ms"] = round(floor.p50_ms - direct.p50_ms, 2)
                    row[f"{mode}_picker_added_p50_ms"] = round(picker.p50_ms - direct.p50_ms, 2)
                    row[f"{mode}_picker_added_p99_ms"] = round(picker.p99_ms - direct.p99_ms, 2)
                    row[f"{mode}_floor_cpu_us"] = round(floor.processor_cpu_us or 0.0)
                    row[f"{mode}_picker_cpu_us"] = round(picker.processor_cpu_us or 0.0)
                    row[f"{mode}_picker_over_floor_cpu"] = (
                        round((picker.processor_cpu_us or 0.0) / floor.processor_cpu_us, 2)
                        if floor.processor_cpu_us
                        else None
                    )
                    row[f"{mode}_envoy_extra_cpu_us"] = round(picker.envoy_cpu_us - direct.envoy_cpu_us)
                rows.append(row)
    return rows


_TABLE_KEYS: Final = (
    "concurrency",
    "chunks",
    "direct_p50_ms",
    "gie_floor_added_p50_ms",
    "gie_picker_added_p50_ms",
    "gie_picker_added_p99_ms",
    "gie_floor_cpu_us",
    "gie_picker_cpu_us",
    "gie_picker_over_floor_cpu",
    "gie_hold_added_p50_ms",
    "gie_hold_cpu_us",
    "gie_picker_over_hold_cpu",
    "gie_envoy_extra_cpu_us",
    "cheap_floor_added_p50_ms",
    "cheap_picker_added_p50_ms",
    "cheap_floor_cpu_us",
    "cheap_picker_cpu_us",
    "cheap_picker_over_floor_cpu",
)


def markdown(rows: Sequence[dict[str, Any]], *, command: str, machine: dict[str, Any]) -> str:
    lines = [
        "# Protocol overhead: Envoy + picker vs Envoy straight to the backend",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine['cpus']} CPUs, load average at start {machine['load_average']}, "
        f"Envoy {machine['envoy']}, Python {machine['python']}. Shared and noisy: compare within a row.",
        "",
        "Added = p50 (or p99) of the door minus `direct` in the same cell. CPU = processor CPU per request",
        "(µs); ratio = picker CPU / floor CPU. `envoy+` = Envoy CPU per request over direct's.",
        "",
        "| prompt | conc | chunks | direct p50 ms | gie floor +p50 | gie picker +p50 | gie picker +p99 "
        "| gie floor µs | gie picker µs | gie ratio | gie hold +p50 | gie hold µs | ratio to hold "
        "| gie envoy+ µs | cheap floor +p50 | cheap picker +p50 | cheap floor µs | cheap picker µs "
        "| cheap ratio |",
        "|" + "---|" * 19,
    ]
    for row in rows:
        values = [f"{row['prompt_bytes'] // 1000} KB", *(str(row[key]) for key in _TABLE_KEYS)]
        lines.append("| " + " | ".join(values) + " |")
    lines += ["", "## Against the targets", ""]
    for key, what in (
        ("gie_picker_over_floor_cpu", "picker CPU / floor CPU, GIE full-duplex (target <= 1.3)"),
        ("gie_picker_over_hold_cpu", "picker CPU / hold-floor CPU, GIE full-duplex"),
        ("cheap_picker_over_floor_cpu", "picker CPU / floor CPU, cheap mode (target <= 1.3)"),
    ):
        ratios = sorted(row[key] for row in rows if row[key] is not None)
        if ratios:
            lines.append(
                f"- {what}: median {statistics.median(ratios):.2f} over {len(ratios)} cells "
                f"(min {ratios[0]:.2f}, max {ratios[-1]:.2f})"
            )
    for row in rows:
        if (row["prompt_bytes"], row["concurrency"], row["chunks"]) == (200_000, 16, 0):
            lines.append(
                f"- added p50 at 200 KB, 16 clients, not streamed (target < 40 ms): GIE picker "
                f"{row['gie_picker_added_p50_ms']} ms (floor {row['gie_floor_added_p50_ms']} ms, hold "
                f"{row['gie_hold_added_p50_ms']} ms), cheap picker {row['cheap_picker_added_p50_ms']} ms"
            )
    return "\n".join(lines) + "\n"


def machine_facts() -> dict[str, Any]:
    envoy_version = subprocess.run([str(ENVOY), "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "envoy": envoy_version.split("version:")[-1].strip().split("/")[1],
        "python": platform.python_version(),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m frontier_bench.protocol_overhead")
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="measure every cell and write the results")
    run_parser.add_argument("--out", type=Path, default=Path("bench/results"))
    run_parser.add_argument("--scale", type=float, default=1.0, help="multiplies the requests per cell")
    run_parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell")
    run_parser.add_argument("--work", type=Path, default=Path("out/protocol_overhead"))
    floor_parser = sub.add_parser("floor", help="serve the minimal pass-through processor")
    floor_parser.add_argument("--address", default=ADDRESS)
    floor_parser.add_argument("--port", type=int, required=True)
    floor_parser.add_argument("--endpoint", action="append", required=True, help="repeat: round-robin")
    floor_parser.add_argument("--hold", action="store_true", help="answer headers after the whole body")
    report_parser = sub.add_parser("report", help="re-render the markdown of a results JSON")
    report_parser.add_argument("--json", type=Path, default=Path("bench/results/protocol_overhead.json"))
    backend_parser = sub.add_parser("backend", help="serve the trivial backend")
    backend_parser.add_argument("--address", default=ADDRESS)
    backend_parser.add_argument("--port", type=int, required=True)
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if arguments.command == "floor":
        asyncio.run(serve_floor(arguments.address, arguments.port, arguments.endpoint, hold=arguments.hold))
    elif arguments.command == "backend":
        asyncio.run(serve_backend(arguments.address, arguments.port))
    elif arguments.command == "report":
        result = json.loads(arguments.json.read_text())
        text = markdown(result["summary"], command=result["command"], machine=result["machine"])
        arguments.json.with_suffix(".md").write_text(text)
    else:
        command = "python -m frontier_bench.protocol_overhead " + " ".join(argv or sys.argv[1:])
        machine = machine_facts()
        arguments.work.mkdir(parents=True, exist_ok=True)
        cells = asyncio.run(run(scale=arguments.scale, rounds=arguments.rounds, work=arguments.work))
        rows = summarize(cells)
        arguments.out.mkdir(parents=True, exist_ok=True)
        result = {
            "command": command,
            "machine": machine,
            "summary": rows,
            "cells": [_public(cell) for cell in cells],
        }
        (arguments.out / "protocol_overhead.json").write_text(json.dumps(result, indent=1) + "\n")
        (arguments.out / "protocol_overhead.md").write_text(markdown(rows, command=command, machine=machine))
        log.info("event=written out=%s", arguments.out)


if __name__ == "__main__":
    main()
