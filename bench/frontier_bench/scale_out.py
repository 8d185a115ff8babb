"""Scale-out of the picker: requests per second through Envoy with 1 and 2 worker processes.

Front doors, all running at once and measured side by side in interleaved rounds (door order rotated), to
one trivial backend (`protocol_overhead backend`: JSON, or an SSE stream of 100 chunks):

- `floor-gie`: Envoy in GIE's full-duplex mode calling the minimal pass-through processor
  (`protocol_overhead floor`): the most any one Python process can carry for the protocol;
- `picker-1w`, `picker-2w`: the same Envoy calling `frontier-picker --workers 1` / `--workers 2` (plaintext,
  the `round-robin` built-in config, no scraping: the numbers are the processes', not the policy's).

Each cell is a closed loop of `--concurrency` clients for `--requests` requests; per door it reports
requests per second, client latency p50/p99 and CPU per request of the processor (every process of the
picker pod: the supervisor and its workers) and of Envoy. Envoy runs two threads, so it opens at least two
connections and the workers can share them. On a 2-core machine the clients, Envoy and the backend share
the cores with the picker: the ratio 2w / 1w is what this machine allows, not what two idle cores would.

`python -m frontier_bench.scale_out --out bench/results` writes `scale-out-throughput.{json,md}`.
"""

import argparse
import asyncio
import dataclasses
import json
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import aiohttp

from frontier_api import envoy_bootstrap
from frontier_bench import frontdoors, processes, protocol_overhead

log = logging.getLogger(__name__)

ADDRESS: Final = "127.2.1.2"
DOORS: Final = ("floor-gie", "picker-1w", "picker-2w")


@dataclasses.dataclass(slots=True, kw_only=True)
class Door:
    name: str
    url: str
    envoy_pid: int
    processor_pid: int


@dataclasses.dataclass(slots=True, kw_only=True)
class Result:
    door: str
    chunks: int
    round: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    processor_cpu_ms_per_req: float
    envoy_cpu_ms_per_req: float


def tree_cpu_seconds(pid: int) -> float:
    """CPU time so far of process `pid` and its children (a picker pod's supervisor and workers)."""
    total = protocol_overhead.cpu_seconds(pid)
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids = [int(child) for child in children.read_text().split()]
        except OSError:
            continue
        total += sum(tree_cpu_seconds(child) for child in kids)
    return total


async def start_doors(group: processes.Group, work: Path) -> dict[str, Door]:
    backend_port = processes.free_port(ADDRESS)
    backend = group.start(
        "backend",
        [
            sys.executable,
            "-m",
            "frontier_bench.protocol_overhead",
            "backend",
            "--address",
            ADDRESS,
            "--port",
            str(backend_port),
        ],
    )
    await processes.wait_port(ADDRESS, backend_port, child=backend)
    endpoints_file = work / "endpoints.yaml"
    endpoints_file.write_text(f"endpoints: [{{name: backend, address: {ADDRESS}, port: {backend_port}}}]\n")
    doors = {}
    for name in DOORS:
        port = processes.free_port(ADDRESS)
        if name == "floor-gie":
            argv = [sys.executable, "-m", "frontier_bench.protocol_overhead", "floor", "--address", ADDRESS]
            argv += ["--port", str(port), "--endpoint", f"{ADDRESS}:{backend_port}"]
        else:
            argv = frontdoors.picker_argv(
                endpoints_file=endpoints_file,
                address=ADDRESS,
                grpc_port=port,
                health_port=0,
                metrics_port=0,
                extra=[
                    *("--workers", name[-2], "--fallbacks", "0", "--builtin-config", "round-robin"),
                    *("--refresh-metrics-interval", "0", "--log-level", "WARNING"),
                ],
            )
        processor = group.start(name, argv)
        await processes.wait_port(ADDRESS, port, child=processor)
        listen, admin = processes.free_port(ADDRESS), processes.free_port(ADDRESS)
        config = envoy_bootstrap.bootstrap(
            listen_address=ADDRESS,
            listen_port=listen,
            pickers=[f"{ADDRESS}:{port}"],
            picker_tls=False,
            mode="gie",
            retries=0,
            admin_port=admin,
        )
        path = work / f"envoy-{name}.json"
        path.write_text(json.dumps(config))
        envoy = group.start(
            f"envoy-{name}",
            [
                str(protocol_overhead.ENVOY),
                "-c",
                str(path),
                "--disable-hot-restart",
                "--concurrency",
                "2",
                "-l",
                "warning",
            ],
        )
        await processes.wait_http(f"http://{ADDRESS}:{admin}/ready", child=envoy)
        assert processor.process.pid is not None and envoy.process.pid is not None
        doors[name] = Door(
            name=name,
            url=f"http://{ADDRESS}:{listen}/v1/chat/completions",
            envoy_pid=envoy.process.pid,
            processor_pid=processor.process.pid,
        )
    await asyncio.sleep(2.0)  # workers of a pod come up after its port answers
    return doors


async def measure(
    session: aiohttp.ClientSession, door: Door, *, concurrency: int, requests: int, chunks: int, round_: int
) -> Result:
    body = protocol_overhead.chat_body(1_000)
    headers = {"content-type": "application/json", **({"x-bench-chunks": str(chunks)} if chunks else {})}
    latencies: list[float] = []
    errors = 0
    remaining = requests

    async def client() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                async with session.post(door.url, data=body, headers=headers) as response:
                    await response.read()
                    errors += response.status != 200
            except aiohttp.ClientError:
                errors += 1
            latencies.append(time.perf_counter() - started)

    envoy_before, processor_before = (
        protocol_overhead.cpu_seconds(door.envoy_pid),
        tree_cpu_seconds(door.processor_pid),
    )
    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    return Result(
        door=door.name,
        chunks=chunks,
        round=round_,
        requests=requests,
        errors=errors,
        rps=requests / elapsed,
        p50_ms=statistics.median(latencies) * 1e3,
        p99_ms=protocol_overhead.percentile(latencies, 0.99) * 1e3,
        processor_cpu_ms_per_req=(tree_cpu_seconds(door.processor_pid) - processor_before) / requests * 1e3,
        envoy_cpu_ms_per_req=(protocol_overhead.cpu_seconds(door.envoy_pid) - envoy_before) / requests * 1e3,
    )


async def run(*, rounds: int, concurrency: int, requests: int, work: Path) -> list[Result]:
    results: list[Result] = []
    work.mkdir(parents=True, exist_ok=True)
    with processes.Group(work / "logs") as group:
        doors = await start_doors(group, work)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            order = list(doors.values())
            for door in order:  # warm: connections, workers' first requests
                await measure(
                    session, door, concurrency=concurrency, requests=concurrency * 4, chunks=0, round_=-1
                )
            for chunks in (0, 100):
                for round_ in range(rounds):
                    shift = round_ % len(order)
                    for door in order[shift:] + order[:shift]:
                        result = await measure(
                            session,
                            door,
                            concurrency=concurrency,
                            requests=requests,
                            chunks=chunks,
                            round_=round_,
                        )
                        results.append(result)
                        log.info("event=cell %s", json.dumps(dataclasses.asdict(result)))
                        print(
                            f"  {result.door:10s} chunks={chunks:3d} round={round_} rps={result.rps:7.1f} "
                            f"p50={result.p50_ms:6.1f}ms "
                            f"picker_cpu={result.processor_cpu_ms_per_req:.2f}ms/req",
                            flush=True,
                        )
    return results


def summary(results: Sequence[Result]) -> list[dict[str, Any]]:
    """Per door and response kind: req/s and CPU per request over rounds (min-max), and the ratios of
    `picker-2w` to `picker-1w` computed round by round."""
    rows = []
    for chunks in sorted({r.chunks for r in results}):
        cells = {door: [r for r in results if r.chunks == chunks and r.door == door] for door in DOORS}
        one, two = cells["picker-1w"], cells["picker-2w"]
        rows.append(
            {
                "chunks": chunks,
                **{
                    door: {
                        "rps": [round(min(r.rps for r in rs), 1), round(max(r.rps for r in rs), 1)],
                        "cpu_ms_per_req": [
                            round(min(r.processor_cpu_ms_per_req for r in rs), 3),
                            round(max(r.processor_cpu_ms_per_req for r in rs), 3),
                        ],
                        "errors": sum(r.errors for r in rs),
                    }
                    for door, rs in cells.items()
                },
                "rps_2w_over_1w": sorted(round(b.rps / a.rps, 2) for a, b in zip(one, two, strict=True)),
                "cpu_2w_over_1w": sorted(
                    round(b.processor_cpu_ms_per_req / a.processor_cpu_ms_per_req, 2)
                    for a, b in zip(one, two, strict=True)
                ),
            }
        )
    return rows


def markdown(
    rows: Sequence[dict[str, Any]], *, command: str, machine: dict[str, Any], args: dict[str, Any]
) -> str:
    lines = [
        "# Picker scale-out: requests/s with 1 and 2 worker processes (issue 19)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}  ",
        f"Cells: closed loop, {args['concurrency']} clients, {args['requests']} requests per door and round, "
        f"{args['rounds']} interleaved rounds; 1 KB chat bodies; Envoy in GIE's full-duplex mode, 2 threads. "
        "Ranges are min-max over rounds; ratios are per round.",
        "",
        "| response | floor-gie req/s | picker-1w req/s | picker-2w req/s | 2w / 1w req/s"
        " | picker CPU ms/req 1w | 2w | 2w / 1w CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        kind = "JSON" if row["chunks"] == 0 else f"SSE, {row['chunks']} chunks"

        def span(values: list[float]) -> str:
            return f"{values[0]:g}-{values[1]:g}"

        lines.append(
            f"| {kind} | {span(row['floor-gie']['rps'])} | {span(row['picker-1w']['rps'])} | "
            f"{span(row['picker-2w']['rps'])} | {', '.join(map(str, row['rps_2w_over_1w']))} | "
            f"{span(row['picker-1w']['cpu_ms_per_req'])} | {span(row['picker-2w']['cpu_ms_per_req'])} | "
            f"{', '.join(map(str, row['cpu_2w_over_1w']))} |"
        )
    errors = sum(row[door]["errors"] for row in rows for door in DOORS)
    lines += ["", f"Errors over all cells: {errors}.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m frontier_bench.scale_out", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--work", type=Path, default=Path("out/scale_out"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=1500)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = asyncio.run(
        run(rounds=args.rounds, concurrency=args.concurrency, requests=args.requests, work=args.work)
    )
    rows = summary(results)
    command = "python -m frontier_bench.scale_out " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = protocol_overhead.machine_facts()
    document = {
        "command": command.strip(),
        "machine": machine,
        "args": vars(args) | {"out": str(args.out), "work": str(args.work)},
        "summary": rows,
        "cells": [dataclasses.asdict(r) for r in results],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale-out-throughput.json").write_text(json.dumps(document, indent=1) + "\n")
    (args.out / "scale-out-throughput.md").write_text(
        markdown(rows, command=command.strip(), machine=machine, args=vars(args))
    )
    print(markdown(rows, command=command.strip(), machine=machine, args=vars(args)))


if __name__ == "__main__":
    main()
