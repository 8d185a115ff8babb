"""Do the virtual-time cluster and the real-time fleet agree? The same small case through both.

The case: N simulated engines (`frontier-sim fleet`, in this process, on loopback), a shared-prefix workload,
Poisson arrivals, requests sent straight to the engines in round-robin order (no Envoy, no picker: routing
is identical by construction, so any difference is the clock's). The real-time fleet runs `time_scale`
times slower than model time and the client converts what it measures back to model seconds; the virtual
cluster runs the identical arrivals on engines built from the identical flags.

Compared: TTFT p50 / p90, e2e p50, output tokens/s over the run, prefix hit rate. The real side measures TTFT
as the first streamed token chunk after the send, so it includes HTTP and event-loop delays (divided by the
time scale) that the virtual side does not have.

    python -m frontier_bench.vt_agreement --engines 4 --qps 8 --duration 20 --time-scale 3 --out bench/results
"""

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson

from frontier_bench import workloads
from frontier_sim import fleet
from frontier_sim.vt import cluster

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ENGINE_ARGS = ("--model", MODEL)


@dataclasses.dataclass(slots=True, kw_only=True)
class Case:
    """One agreement case: fleet size, load and workload shape."""

    engines: int = 4
    qps: float = 8.0
    duration_s: float = 20.0
    time_scale: float = 3.0
    num_groups: int = 4
    prompts_per_group: int = 8
    system_prompt_len: int = 600
    question_len: int = 60
    output_len: int = 64
    seed: int = 0
    base_address: str = "127.0.0.1"


@dataclasses.dataclass(slots=True, kw_only=True)
class Measured:
    """Per-request model-time measurements of one side."""

    ttft: np.ndarray
    e2e: np.ndarray
    completion_tokens: np.ndarray
    prompt_tokens: np.ndarray
    cached_tokens: np.ndarray
    span_s: float

    def summary(self) -> dict[str, float]:
        return {
            "ttft_p50_s": float(np.percentile(self.ttft, 50)),
            "ttft_p90_s": float(np.percentile(self.ttft, 90)),
            "e2e_p50_s": float(np.percentile(self.e2e, 50)),
            "output_tokens_per_s": float(self.completion_tokens.sum()) / self.span_s,
            "prefix_hit_rate": float(self.cached_tokens.sum()) / float(self.prompt_tokens.sum()),
        }


def _inputs(case: Case) -> tuple[workloads.Workload, workloads.Schedule]:
    workload = workloads.shared_prefix(
        num_groups=case.num_groups,
        num_prompts_per_group=case.prompts_per_group,
        system_prompt_len=case.system_prompt_len,
        question_len=case.question_len,
        output_len=case.output_len,
        seed=case.seed,
    )
    return workload, workloads.poisson_schedule(qps=case.qps, duration_s=case.duration_s, seed=case.seed)


def run_virtual(case: Case) -> Measured:
    """The case on the virtual-time cluster, round-robin."""
    workload, schedule = _inputs(case)
    arrivals = [
        cluster.Arrival(
            at=float(at),
            model=MODEL,
            prompt=workload.prompt_for(i).prompt,
            max_tokens=workload.prompt_for(i).max_tokens,
        )
        for i, at in enumerate(schedule.offsets_s)
    ]
    specs = cluster.engines(case.engines, args=ENGINE_ARGS)
    results = cluster.run(engines=specs, workload=arrivals, policy="round-robin")
    done = results.status == 200
    return Measured(
        ttft=results.ttft[done],
        e2e=(results.end - results.arrival)[done],
        completion_tokens=results.completion_tokens[done],
        prompt_tokens=results.prompt_tokens[done],
        cached_tokens=results.cached_tokens[done],
        span_s=float(np.nanmax(results.end) - results.arrival.min()),
    )


async def _send(
    session: aiohttp.ClientSession, url: str, body: bytes, *, scale: float
) -> tuple[float, float, dict[str, Any]]:
    """POST a streamed completion; (TTFT, e2e) in model seconds and the usage."""
    sent = time.perf_counter()
    first: float | None = None
    usage: dict[str, Any] = {}
    async with session.post(url, data=body, headers={"content-type": "application/json"}) as reply:
        reply.raise_for_status()
        async for line in reply.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = orjson.loads(line[6:])
            if first is None and any(c.get("text") for c in chunk.get("choices", ())):
                first = time.perf_counter()
            if chunk.get("usage"):
                usage = chunk["usage"]
    ended = time.perf_counter()
    assert first is not None, "no token streamed"
    return (first - sent) / scale, (ended - sent) / scale, usage


async def run_real(case: Case) -> Measured:
    """The case through a real-time fleet in this event loop, requests sent round-robin."""
    workload, schedule = _inputs(case)
    argv = [
        "--engines",
        str(case.engines),
        "--base-address",
        case.base_address,
        "--port",
        "0",
        "--time-scale",
        str(case.time_scale),
        *ENGINE_ARGS,
    ]
    spec = fleet.parse_args(argv)
    async with fleet.run(spec) as running, aiohttp.ClientSession() as session:
        urls = [f"{e.url}/v1/completions" for e in running.engines]
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for i, at in enumerate(schedule.offsets_s):
            delay = start + float(at) * case.time_scale - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            body = orjson.dumps(workload.prompt_for(i).body(model=MODEL, stream=True))
            tasks.append(
                asyncio.create_task(_send(session, urls[i % len(urls)], body, scale=case.time_scale))
            )
        answers = await asyncio.gather(*tasks)
        span = (loop.time() - start) / case.time_scale
    ttft, e2e, usage = zip(*answers, strict=True)
    return Measured(
        ttft=np.array(ttft),
        e2e=np.array(e2e),
        completion_tokens=np.array([u["completion_tokens"] for u in usage]),
        prompt_tokens=np.array([u["prompt_tokens"] for u in usage]),
        cached_tokens=np.array([u["prompt_tokens_details"]["cached_tokens"] for u in usage]),
        span_s=span,
    )


def compare(case: Case) -> dict[str, Any]:
    """Both sides of `case` and the relative difference (virtual / real - 1) of each number."""
    virtual = run_virtual(case).summary()
    real = asyncio.run(run_real(case)).summary()
    return {
        "case": dataclasses.asdict(case),
        "virtual": virtual,
        "real": real,
        "relative_difference": {key: virtual[key] / real[key] - 1 for key in virtual if real[key]},
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Virtual-time cluster vs real-time fleet",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}",
        "",
        "| case | metric | virtual | real-time | virtual / real - 1 |",
        "|---|---|---:|---:|---:|",
    ]
    for row in report["rows"]:
        c = row["case"]
        name = f"{c['engines']} engines, {c['qps']:g} req/s, {c['duration_s']:g} s, scale {c['time_scale']:g}"
        for key, value in row["virtual"].items():
            real = row["real"][key]
            diff = row["relative_difference"].get(key)
            shown = f"{diff:+.1%}" if diff is not None else "-"
            lines.append(f"| {name} | {key} | {value:.4g} | {real:.4g} | {shown} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--engines", type=int, nargs="+", default=[4])
    parser.add_argument("--qps", type=float, nargs="+", default=[8.0])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--time-scale", type=float, default=3.0)
    parser.add_argument("--base-address", default="127.3.250.1")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    command = shlex.join(
        ["python", "-m", "frontier_bench.vt_agreement", *(sys.argv[1:] if argv is None else argv)]
    )
    rows = []
    for engines in args.engines:
        for qps in args.qps:
            case = Case(
                engines=engines,
                qps=qps,
                duration_s=args.duration,
                time_scale=args.time_scale,
                num_groups=engines,
                base_address=args.base_address,
            )
            rows.append(compare(case))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    report = {
        "command": command,
        "machine": f"{platform.machine()} python {platform.python_version()} cpus={os.cpu_count()}",
        "rows": rows,
    }
    text = markdown(report)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "vt_agreement.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "vt_agreement.md").write_text(text)


if __name__ == "__main__":
    main()
