"""What the P/D sidecar costs a request it does not disaggregate: the same completions straight to a simulated
engine and through `frontier-sidecar` in front of it, side by side.

One engine (`frontier-sim`, 1-token answers to short prompts, so the engine's own time is small and steady)
and one sidecar, in this process, on loopback; one client sends each request to both paths in turn
(alternating which goes first), for `--rounds` interleaved rounds of `--requests` requests. Reported: latency
p50 / p90 / p99 per path per round, and the per-request difference of the medians.

    python -m frontier_bench.sidecar_overhead --out bench/results
"""

import argparse
import asyncio
import json
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from frontier_sidecar import proxy
from frontier_sim import server, settings

MODEL = "sim/llama-8b"
ADDRESS = "127.11.0.1"


async def _timed(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> float:
    began = time.perf_counter()
    async with session.post(url, json=body) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"{url}: status {response.status}")
    return time.perf_counter() - began


async def measure(*, requests: int, rounds: int) -> list[dict[str, Any]]:
    """Per round: the latencies of the direct and the sidecar path, in seconds."""
    config = settings.Settings(model=MODEL, host=ADDRESS, port=0)
    results = []
    async with server.serving(config) as engine:
        engine_url = f"http://{engine.address}:{engine.port}"
        async with (
            proxy.serving(proxy.Settings(engine_url=engine_url, address=ADDRESS, port=0)) as side,
            aiohttp.ClientSession() as session,
        ):
            paths = {"direct": engine_url, "sidecar": f"http://{ADDRESS}:{side.port}"}
            for _ in range(20):  # warm both paths' connections
                for url in paths.values():
                    await _timed(
                        session, f"{url}/v1/completions", {"model": MODEL, "prompt": "warm", "max_tokens": 1}
                    )
            for round_index in range(rounds):
                latencies: dict[str, list[float]] = {name: [] for name in paths}
                for i in range(requests):
                    body = {"model": MODEL, "prompt": f"request {round_index}-{i} hello", "max_tokens": 1}
                    order = list(paths) if i % 2 == 0 else list(reversed(paths))
                    for name in order:
                        latencies[name].append(await _timed(session, f"{paths[name]}/v1/completions", body))
                results.append({"round": round_index, **latencies})
                print(
                    f"[{round_index + 1}/{rounds}] sidecar_overhead round done", file=sys.stderr, flush=True
                )
    return results


def render(report: dict[str, Any]) -> str:
    lines = [
        "# The P/D sidecar's cost on a request it does not disaggregate",
        "",
        f"Command: `{report['command']}` ({report['machine']}). One simulated engine, 1-token completions,"
        " each request sent straight to the engine and through the sidecar in turn (alternating order).",
        "",
        "| round | direct p50 / p90 / p99 ms | sidecar p50 / p90 / p99 ms | p50 difference ms |",
        "|---|---|---|---|",
    ]
    for row in report["rounds"]:
        direct, side = np.array(row["direct"]) * 1e3, np.array(row["sidecar"]) * 1e3
        d = [np.percentile(direct, q) for q in (50, 90, 99)]
        s = [np.percentile(side, q) for q in (50, 90, 99)]
        direct_cell = " / ".join(f"{v:.2f}" for v in d)
        sidecar_cell = " / ".join(f"{v:.2f}" for v in s)
        lines.append(f"| {row['round'] + 1} | {direct_cell} | {sidecar_cell} | +{s[0] - d[0]:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m frontier_bench.sidecar_overhead", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    rounds = asyncio.run(measure(requests=args.requests, rounds=args.rounds))
    report = {
        "command": shlex.join(
            ["python", "-m", "frontier_bench.sidecar_overhead", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "rounds": rounds,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sidecar_overhead.json").write_text(json.dumps(report))
    (out / "sidecar_overhead.md").write_text(render(report))
    print(render(report))


if __name__ == "__main__":
    main()
