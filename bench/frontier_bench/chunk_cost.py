"""What one streamed response chunk costs a Python ext_proc processor, the picker against the least one can.

In GIE's Envoy configuration (bodies `FULL_DUPLEX_STREAMED`) every response chunk goes to the processor and
back: a streamed LLM response is one message per token each way, and this path, not routing, is most of a
processor's CPU under load. Envoy coalesces chunks that arrive together, so to count messages exactly this
benchmark plays Envoy's part itself: per stream it sends the request headers and body, the response headers
and `--chunks` response chunks (the last with the usage, as vLLM ends a stream), each after the previous
reply, exactly as Envoy does in that mode.

Arms, each a separate process measured from /proc (all its threads):
- `floor-asyncio` / `floor-uvloop`: `protocol_overhead`'s minimal pass-through processor (fixed endpoint,
  bodies echoed as protobuf messages) on each event loop: the least a Python processor costs;
- `picker-asyncio` / `picker-uvloop`: `frontier-picker` (plaintext, one endpoint from a file, no scraping,
  the `round-robin` built-in config), `--event-loop` each.

Cells: 1 and 16 clients sending each chunk after the previous reply (no backlog: every message costs in
full), and 16 clients sending every chunk of a response at once, as Envoy forwards a burst (replies read
as they come; a version of the picker that joined the replies that piled up found almost none to join:
gRPC hands the messages over one at a time and each write keeps pace with each read, 0.3% fewer writes).
Each cell runs `--rounds` interleaved rounds with the arm order rotated. Reported: server CPU per message
(µs; messages = 4 + chunks per stream, each way counted once) and each arm's ratio to `floor-asyncio` in
the same round.

`python -m frontier_bench.chunk_cost --out bench/results` writes `chunk_cost.json` and `.md`.
"""

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

from frontier_bench import frontdoors, processes, protocol_overhead
from frontier_picker import event_loop

log = logging.getLogger(__name__)

ADDRESS: Final = "127.2.3.1"
ARMS: Final = ("floor-asyncio", "floor-uvloop", "picker-asyncio", "picker-uvloop")
# (clients, pipelined): one at a time with no backlog, and a burst of every chunk of 16 responses at once.
CELLS: Final = ((1, False), (16, False), (16, True))
_FULL_DUPLEX: Final = processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED
_TOKEN: Final = b'data: {"choices":[{"index":0,"delta":{"content":"token "}}],"usage":null}\n\n'
_LAST: Final = (
    b'data: {"choices":[],"usage":{"prompt_tokens":60,"completion_tokens":100}}\n\ndata: [DONE]\n\n'
)


def _header_map(pairs: Sequence[tuple[str, str]]) -> base_pb2.HeaderMap:
    return base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs])


def stream_messages(chunks: int) -> list[ext_proc.ProcessingRequest]:
    """What Envoy sends for one streamed completion, in order (each waits for the previous reply)."""
    body = json.dumps({"model": "bench-model", "prompt": "hello " * 50, "max_tokens": chunks, "stream": True})
    request_headers = _header_map(
        [
            (":method", "POST"),
            (":path", "/v1/completions"),
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
        ]
    )
    config = ext_proc.ProtocolConfiguration(request_body_mode=_FULL_DUPLEX, response_body_mode=_FULL_DUPLEX)
    response_headers = _header_map([(":status", "200"), ("content-type", "text/event-stream")])
    return [
        ext_proc.ProcessingRequest(
            request_headers=ext_proc.HttpHeaders(headers=request_headers), protocol_config=config
        ),
        ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=body.encode(), end_of_stream=True)),
        ext_proc.ProcessingRequest(response_headers=ext_proc.HttpHeaders(headers=response_headers)),
        *[
            ext_proc.ProcessingRequest(response_body=ext_proc.HttpBody(body=_TOKEN))
            for _ in range(chunks - 1)
        ],
        ext_proc.ProcessingRequest(response_body=ext_proc.HttpBody(body=_LAST, end_of_stream=True)),
    ]


async def _one_stream(
    stub: ext_proc_grpc.ExternalProcessorStub, messages: Sequence[Any], *, pipelined: bool
) -> None:
    call = stub.Process()
    # The request headers are answered once the body is in (the picker routes on the model): send both.
    await call.write(messages[0])
    await call.write(messages[1])
    await call.read()
    await call.read()
    if pipelined:  # the whole response at once, as Envoy forwards a burst: replies read as they come
        for message in messages[2:]:
            await call.write(message)
    else:
        for message in messages[2:]:
            await call.write(message)
            await call.read()
    await call.done_writing()
    while await call.read() is not grpc.aio.EOF:
        pass


async def drive(port: int, *, streams: int, chunks: int, concurrency: int, pipelined: bool = False) -> None:
    """`streams` streams of `chunks` response chunks each, `concurrency` at a time; `pipelined`: each
    stream's chunks sent without waiting for their replies (a burst), else one at a time."""
    messages = stream_messages(chunks)
    async with grpc.aio.insecure_channel(f"{ADDRESS}:{port}") as channel:
        stub = ext_proc_grpc.ExternalProcessorStub(channel)
        remaining = iter(range(streams))

        async def worker() -> None:
            for _ in remaining:
                await _one_stream(stub, messages, pipelined=pipelined)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def _arm_argv(arm: str, port: int, endpoints_file: Path) -> list[str]:
    kind, loop = arm.split("-")
    if kind == "floor":
        return [
            sys.executable,
            "-m",
            "frontier_bench.chunk_cost",
            "floor",
            "--port",
            str(port),
            "--loop",
            loop,
        ]
    return frontdoors.picker_argv(
        endpoints_file=endpoints_file,
        address=ADDRESS,
        grpc_port=port,
        health_port=0,
        metrics_port=0,
        extra=[
            *["--fallbacks", "0", "--builtin-config", "round-robin", "--refresh-metrics-interval", "0"],
            *["--workers", "1", "--event-loop", loop],
        ],
    )


async def run(*, streams: int, chunks: int, rounds: int, work: Path) -> list[dict[str, Any]]:
    """Every arm in every cell, interleaved rounds; one row per arm, cell and round."""
    endpoints_file = work / "endpoints.yaml"
    work.mkdir(parents=True, exist_ok=True)
    endpoints_file.write_text(f"endpoints: [{{name: backend, address: {ADDRESS}, port: 9}}]\n")
    rows: list[dict[str, Any]] = []
    with processes.Group(work / "logs") as group:
        ports: dict[str, int] = {}
        pids: dict[str, int] = {}
        for arm in ARMS:
            ports[arm] = processes.free_port(ADDRESS)
            child = group.start(arm, _arm_argv(arm, ports[arm], endpoints_file))
            await processes.wait_port(ADDRESS, ports[arm], child=child)
            pids[arm] = child.process.pid
        for arm in ARMS:  # warm up: first streams pay imports and caches
            await drive(ports[arm], streams=20, chunks=chunks, concurrency=4)
        total = len(CELLS) * rounds * len(ARMS)
        done = 0
        for concurrency, pipelined in CELLS:
            for round_index in range(rounds):
                order = ARMS[round_index % len(ARMS) :] + ARMS[: round_index % len(ARMS)]
                for arm in order:
                    before = protocol_overhead.cpu_seconds(pids[arm])
                    started = time.perf_counter()
                    await drive(
                        ports[arm],
                        streams=streams,
                        chunks=chunks,
                        concurrency=concurrency,
                        pipelined=pipelined,
                    )
                    wall = time.perf_counter() - started
                    cpu = protocol_overhead.cpu_seconds(pids[arm]) - before
                    messages = streams * (chunks + 3)
                    rows.append(
                        {
                            "arm": arm,
                            "concurrency": concurrency,
                            "pipelined": pipelined,
                            "round": round_index,
                            "streams": streams,
                            "chunks": chunks,
                            "cpu_s": round(cpu, 4),
                            "wall_s": round(wall, 3),
                            "us_per_message": round(cpu / messages * 1e6, 2),
                        }
                    )
                    done += 1
                    log.info(
                        "event=measured step=%d/%d arm=%s clients=%d pipelined=%s round=%d "
                        "us_per_message=%.1f",
                        done,
                        total,
                        arm,
                        concurrency,
                        pipelined,
                        round_index,
                        rows[-1]["us_per_message"],
                    )
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell and arm: µs per message (median, range) and the ratio to floor-asyncio in the same round."""
    base = {
        (r["concurrency"], r["pipelined"], r["round"]): r["us_per_message"]
        for r in rows
        if r["arm"] == "floor-asyncio"
    }
    out = []
    for concurrency, pipelined in CELLS:
        for arm in ARMS:
            mine = [
                r
                for r in rows
                if r["arm"] == arm and r["concurrency"] == concurrency and r["pipelined"] == pipelined
            ]
            if not mine:
                continue
            costs = [r["us_per_message"] for r in mine]
            ratios = [r["us_per_message"] / base[(concurrency, pipelined, r["round"])] for r in mine]
            out.append(
                {
                    "concurrency": concurrency,
                    "pipelined": pipelined,
                    "arm": arm,
                    "us_per_message_median": round(statistics.median(costs), 1),
                    "us_per_message_range": [round(min(costs), 1), round(max(costs), 1)],
                    "ratio_to_floor_asyncio_median": round(statistics.median(ratios), 2),
                    "ratio_to_floor_asyncio_range": [round(min(ratios), 2), round(max(ratios), 2)],
                }
            )
    return out


def markdown(summary: Sequence[dict[str, Any]], *, command: str, machine: dict[str, Any]) -> str:
    lines = [
        "# CPU per streamed response chunk: the picker against a minimal Python ext_proc processor",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}",
        "",
        "The benchmark plays Envoy in GIE's configuration (bodies FULL_DUPLEX_STREAMED), one message per",
        "chunk each way; CPU is the processor process's, all threads. Ratio: to `floor-asyncio` in the same",
        "round. Cells: median (min-max) over rounds.",
        "",
        "| clients | chunks sent | arm | µs per message | ratio to floor-asyncio |",
        "|---|---|---|---|---|",
    ]
    for row in summary:
        low, high = row["us_per_message_range"]
        rlow, rhigh = row["ratio_to_floor_asyncio_range"]
        sent = "all at once" if row["pipelined"] else "one at a time"
        lines.append(
            f"| {row['concurrency']} | {sent} | {row['arm']} | "
            f"{row['us_per_message_median']} ({low}-{high}) | "
            f"{row['ratio_to_floor_asyncio_median']} ({rlow}-{rhigh}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m frontier_bench.chunk_cost", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    floor_parser = sub.add_parser("floor", help="serve the minimal pass-through processor")
    floor_parser.add_argument("--port", type=int, required=True)
    floor_parser.add_argument("--loop", choices=event_loop.CHOICES, default="asyncio")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--streams", type=int, default=300, help="streams per arm, cell and round")
    parser.add_argument("--chunks", type=int, default=100, help="response chunks per stream")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("out/chunk_cost"))
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if arguments.command == "floor":
        event_loop.run(
            protocol_overhead.serve_floor(ADDRESS, arguments.port, [f"{ADDRESS}:9"], hold=False),
            kind=arguments.loop,
        )
        return
    machine = protocol_overhead.machine_facts()
    rows = asyncio.run(
        run(streams=arguments.streams, chunks=arguments.chunks, rounds=arguments.rounds, work=arguments.work)
    )
    summary = summarize(rows)
    command = "python -m frontier_bench.chunk_cost " + " ".join(sys.argv[1:] if argv is None else argv)
    arguments.out.mkdir(parents=True, exist_ok=True)
    document = {"command": command, "machine": machine, "rows": rows, "summary": summary}
    (arguments.out / "chunk_cost.json").write_text(json.dumps(document, indent=1) + "\n")
    (arguments.out / "chunk_cost.md").write_text(markdown(summary, command=command, machine=machine))
    print(markdown(summary, command=command, machine=machine))


if __name__ == "__main__":
    main()
