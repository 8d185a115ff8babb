"""Prefill/decode disaggregation against aggregated serving on the same GPUs, in virtual time.

Arms, each on 8 simulated H100 engines (Llama-3.1-8B) routed by the picker's `frontier` scheduling:
- `aggregated`: 8 engines that prefill and decode;
- `pd-static-P:D`: P prefill + D decode engines (2:6, 4:4, 6:2), `prefix-based-pd-decider` (disaggregate
  every prompt with more than 2,048 uncached tokens);
- `pd-load-aware-P:D`: the same splits, `load-aware-pd-decider` (local prefill when the decode endpoint is
  idle or the prefill engines are backed up).
The KV transfer of a disaggregated request is priced by the simulator (uncached prompt KV over a 200 Gbit/s
link) and counted in its TTFT.

Workloads, every prompt unique (random words, nothing for a prefix cache to reuse): `long` (8,000 tokens
in, 256 out) and `short` (200 in, 256 out). Poisson arrivals on a ladder of loads that goes past each arm's
knee; three arrival seeds per point. Reported: TTFT p90, TPOT p50 / p90, goodput (requests per second
finishing with TTFT <= 1 s and TPOT <= 50 ms), and each arm's peak goodput with its spread over seeds.

    python -m frontier_bench.pd --out bench/results
"""

import argparse
import dataclasses
import json
import math
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from frontier_bench import workloads
from frontier_picker.scheduling import config
from frontier_sim.vt import cluster

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ENGINES = 8
SLO_TTFT_S = 1.0
SLO_TPOT_S = 0.05
# Arm -> (prefill engines, decider type; None: no prefill engines, the decider never runs).
ARMS: dict[str, tuple[int, str | None]] = {
    "aggregated": (0, None),
    "pd-static-2:6": (2, "prefix-based-pd-decider"),
    "pd-load-aware-2:6": (2, "load-aware-pd-decider"),
    "pd-static-4:4": (4, "prefix-based-pd-decider"),
    "pd-load-aware-4:4": (4, "load-aware-pd-decider"),
    "pd-static-6:2": (6, "prefix-based-pd-decider"),
    "pd-load-aware-6:2": (6, "load-aware-pd-decider"),
}
# Workload -> (prompt tokens, output tokens, loads in req/s).
WORKLOADS: dict[str, tuple[int, int, tuple[float, ...]]] = {
    "long": (8000, 256, (8.0, 12.0, 16.0, 20.0, 24.0)),
    "short": (200, 256, (120.0, 240.0, 360.0, 480.0)),
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Point:
    arm: str
    workload: str
    qps: float
    seed: int


def scheduler_config(arm: str) -> str:
    """The `frontier` config with the arm's decider in the P/D profile handler."""
    document = yaml.safe_load(config.builtin_text("frontier"))
    decider = ARMS[arm][1]
    if decider is not None:
        for plugin in document["plugins"]:
            if plugin["type"] == "prefix-based-pd-decider":
                plugin["type"] = decider
                plugin["name"] = decider
            if plugin["type"] == "pd-profile-handler":
                plugin["parameters"]["deciderPluginName"] = decider
    return yaml.safe_dump(document, sort_keys=False)


def run_point(point: Point, *, duration_s: float) -> dict[str, Any]:
    prompt_len, output_len, _ = WORKLOADS[point.workload]
    rng = np.random.default_rng(point.seed)
    schedule = workloads.poisson_schedule(qps=point.qps, duration_s=duration_s, seed=point.seed)
    arrivals = [
        cluster.Arrival(
            at=float(at), model=MODEL, prompt=workloads.words(rng, prompt_len), max_tokens=output_len
        )
        for at in schedule.offsets_s
    ]
    engines = cluster.engines(ENGINES, args=("--model", MODEL), prefill=ARMS[point.arm][0])
    results = cluster.run(
        engines=engines, workload=arrivals, policy=scheduler_config(point.arm), seed=point.seed
    )
    ok = (results.status == 200) & ~np.isnan(results.end)
    ttft, tpot = results.ttft[ok], results.tpot[ok]
    good = (ttft <= SLO_TTFT_S) & ~(tpot > SLO_TPOT_S)
    span = duration_s

    def pct(values: np.ndarray, q: float) -> float:
        values = values[~np.isnan(values)]
        return float(np.percentile(values, q)) if values.size else math.nan

    return {
        **dataclasses.asdict(point),
        "requests": len(arrivals),
        "completed": int(ok.sum()),
        "ttft_p90_s": pct(ttft, 90),
        "tpot_p50_s": pct(tpot, 50),
        "tpot_p90_s": pct(tpot, 90),
        "goodput": float(good.sum()) / span,
        "wall_s": results.wall_s,
    }


def _range(values: Sequence[float], fmt: str) -> str:
    return f"{fmt.format(np.mean(values))} [{fmt.format(min(values))}, {fmt.format(max(values))}]"


def render(report: dict[str, Any]) -> str:
    """Markdown: per workload, every load with each arm's numbers, then the peak goodput per arm."""
    runs = report["runs"]
    lines = [
        "# Prefill/decode disaggregation against aggregated serving (virtual time, same 8 GPUs)",
        "",
        f"Command: `{report['command']}` ({report['machine']}, {report['wall_s']:.0f} s wall). "
        f"{ENGINES} x {MODEL} on H100; a P/D arm's name gives its prefill:decode split. "
        f"{report['duration_s']:.0f} s of Poisson arrivals per point, unique prompts, seeds "
        f"{report['seeds']}. Goodput: requests/s with TTFT <= {SLO_TTFT_S:g} s and TPOT <= "
        f"{SLO_TPOT_S * 1e3:g} ms. Cells: mean [min, max] over seeds.",
    ]
    for workload, (prompt_len, output_len, loads) in WORKLOADS.items():
        lines += [
            "",
            f"## {workload}: {prompt_len} tokens in, {output_len} out",
            "",
            "| req/s | arm | TTFT p90 s | TPOT p50 ms | TPOT p90 ms | goodput req/s |",
            "|---|---|---|---|---|---|",
        ]
        for qps in loads:
            for arm in ARMS:
                rows = [r for r in runs if (r["workload"], r["arm"], r["qps"]) == (workload, arm, qps)]
                if not rows:
                    continue
                lines.append(
                    f"| {qps:g} | {arm} | {_range([r['ttft_p90_s'] for r in rows], '{:.2f}')} "
                    f"| {_range([r['tpot_p50_s'] * 1e3 for r in rows], '{:.1f}')} "
                    f"| {_range([r['tpot_p90_s'] * 1e3 for r in rows], '{:.1f}')} "
                    f"| {_range([r['goodput'] for r in rows], '{:.2f}')} |"
                )
        lines += ["", "Peak goodput (the best load per seed; the ladder must pass each arm's knee):", ""]
        for arm in ARMS:
            peaks = []
            for seed in range(report["seeds"]):
                rows = [r for r in runs if (r["workload"], r["arm"], r["seed"]) == (workload, arm, seed)]
                if rows:
                    best = max(rows, key=lambda r: r["goodput"])
                    past_knee = best["qps"] < max(r["qps"] for r in rows)
                    peaks.append((best["goodput"], best["qps"], past_knee))
            if peaks:
                values = [p[0] for p in peaks]
                knee = "" if all(p[2] for p in peaks) else " (the ladder did not pass the knee)"
                at = sorted({p[1] for p in peaks})
                lines.append(f"- {arm}: {_range(values, '{:.2f}')} req/s at {at} req/s{knee}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m frontier_bench.pd", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=40.0, help="model seconds of arrivals per point")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    args = parser.parse_args(argv)
    began = time.perf_counter()
    points = [
        Point(arm=arm, workload=workload, qps=qps, seed=seed)
        for workload in args.workloads
        for qps in WORKLOADS[workload][2]
        for seed in range(args.seeds)
        for arm in ARMS  # arms interleaved: each load and seed runs every arm before the next
    ]
    runs = []
    for index, point in enumerate(points, start=1):
        row = run_point(point, duration_s=args.duration)
        runs.append(row)
        print(
            f"[{index}/{len(points)}] pd {point.workload} {point.arm} {point.qps:g} req/s seed={point.seed}: "
            f"TTFT p90 {row['ttft_p90_s']:.2f} s, TPOT p90 {row['tpot_p90_s'] * 1e3:.0f} ms, goodput "
            f"{row['goodput']:.2f} ({time.perf_counter() - began:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    report = {
        "command": shlex.join(
            ["python", "-m", "frontier_bench.pd", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "seeds": args.seeds,
        "duration_s": args.duration,
        "runs": runs,
        "wall_s": time.perf_counter() - began,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pd.json").write_text(json.dumps(report, indent=1))
    (out / "pd.md").write_text(render(report))
    print(render(report))


if __name__ == "__main__":
    main()
