"""Prefill/decode disaggregation against aggregated serving on the same GPUs, in virtual time.

Arms, each on 8 simulated H100 engines (Llama-3.1-8B) routed by the picker's `frontier` scheduling:
- `aggregated`: 8 engines that prefill and decode;
- `pd-static-P:D`: P prefill + D decode engines (every split from 2:6 to 6:2), `prefix-based-pd-decider`
  (disaggregate every prompt with more than 2,048 uncached tokens);
- `pd-load-aware-P:D`: the same splits, `load-aware-pd-decider` (local prefill when the decode endpoint is
  idle or the prefill engines are backed up);
- `pd-load-aware-local-P:D`: the same, and a request kept local is served on any endpoint, prefill engines
  included (the P/D profile handler's `localProfile`), so traffic that is not disaggregated uses every GPU.
The KV transfer of a disaggregated request is priced by the simulator (uncached prompt KV over a 200 Gbit/s
link) and counted in its TTFT.

Workloads: `long` (8,000 tokens in, 256 out, every prompt unique), `llm-d` (the llm-d study's shape: 150
groups of a 6,000-token system prompt, each request a fresh 1,200-token question, 1,000 out) and `short`
(200 in, 256 out, unique). Poisson arrivals on a ladder of loads that goes past each arm's knee; three
arrival seeds per point. Reported: TTFT p90, TPOT p50 / p90, the share of requests disaggregated and their
KV transfer time, and goodput (requests per second finishing with TTFT <= 1 s and TPOT within an SLO) at
the issue's TPOT SLO of 50 ms and at tighter ones (30 and 20 ms, as DistServe measures), with each arm's peak
goodput per SLO and its spread over seeds.

    python -m frontier_bench.pd --jobs 15 --out bench/results
"""

import argparse
import concurrent.futures
import dataclasses
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from frontier_bench import stats, workloads
from frontier_picker.scheduling import config
from frontier_sim.vt import cluster

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ENGINES = 8
SLO_TTFT_S = 1.0
# The TPOT SLO first, then DistServe-style tighter ones; goodput is reported at each.
SLO_TPOT_S = (0.05, 0.03, 0.02)
SPLITS = (2, 3, 4, 5, 6)  # prefill engines of a P/D arm; the rest of the 8 decode
DECIDERS = (
    ("static", "prefix-based-pd-decider", False),
    ("load-aware", "load-aware-pd-decider", False),
    ("load-aware-local", "load-aware-pd-decider", True),
)
# Arm -> (prefill engines, decider type or None when there are no prefill engines, local profile on).
ARMS: dict[str, tuple[int, str | None, bool]] = {
    "aggregated": (0, None, False),
    **{
        f"pd-{kind}-{p}:{ENGINES - p}": (p, decider, local)
        for p in SPLITS
        for kind, decider, local in DECIDERS
    },
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Shape:
    """A workload: what its prompts look like and the loads (req/s) it is offered."""

    describe: str
    loads: tuple[float, ...]
    make: Callable[[int], workloads.Workload]  # seed -> the request stream


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Unique:
    """Every prompt fresh text of `prompt_len` tokens, `output_len` tokens out."""

    prompt_len: int
    output_len: int
    seed: int
    name: str = "unique"

    @property
    def params(self) -> dict[str, Any]:
        return {"prompt_len": self.prompt_len, "output_len": self.output_len, "seed": self.seed}

    def prompt_for(self, index: int) -> workloads.Prompt:
        text = workloads.words(np.random.default_rng([self.seed, index]), self.prompt_len)
        return workloads.Prompt(prompt=text, max_tokens=self.output_len, group="")


WORKLOADS: dict[str, Shape] = {
    "long": Shape(
        describe="8,000 tokens in (unique), 256 out",
        loads=(4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0, 22.0, 24.0),
        make=lambda seed: Unique(prompt_len=8000, output_len=256, seed=seed),
    ),
    "llm-d": Shape(
        describe="the llm-d study: 6,000-token group system prompt + 1,200-token fresh question, 1,000 out",
        loads=(6.0, 10.0, 14.0, 18.0, 22.0, 26.0, 30.0, 34.0, 38.0),
        make=lambda seed: workloads.llmd_study(engines=ENGINES, output_len=1000, seed=seed),
    ),
    "short": Shape(
        describe="200 tokens in (unique), 256 out",
        loads=(120.0, 240.0, 300.0, 360.0, 420.0, 480.0),
        make=lambda seed: Unique(prompt_len=200, output_len=256, seed=seed),
    ),
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Point:
    arm: str
    workload: str
    qps: float
    seed: int


def with_decider(text: str, decider: str) -> str:
    """A scheduling config `text` with `decider` as the P/D profile handler's decider."""
    document = yaml.safe_load(text)
    for plugin in document["plugins"]:
        if plugin["type"] == "prefix-based-pd-decider":
            plugin["type"] = decider
            plugin["name"] = decider
        if plugin["type"] == "pd-profile-handler":
            plugin["parameters"]["deciderPluginName"] = decider
    return yaml.safe_dump(document, sort_keys=False)


def with_local_profile(text: str) -> str:
    """A `frontier` config whose P/D handler serves a request it keeps local on any role's endpoint: the
    decode profile with a role filter keeping every role, as its `localProfile`."""
    document = yaml.safe_load(text)
    document["plugins"].append(
        {"name": "any-role-filter", "type": "role-filter", "parameters": {"role": "any"}}
    )
    for plugin in document["plugins"]:
        if plugin["type"] == "pd-profile-handler":
            plugin["parameters"]["localProfile"] = "frontier-local"
    decode = next(p for p in document["schedulingProfiles"] if p["name"] == "frontier")
    refs = [
        {"pluginRef": "any-role-filter"} if r["pluginRef"] == "decode-filter" else r
        for r in decode["plugins"]
    ]
    document["schedulingProfiles"].append({"name": "frontier-local", "plugins": refs})
    return yaml.safe_dump(document, sort_keys=False)


def scheduler_config(arm: str) -> str:
    """The `frontier` config with the arm's decider in the P/D profile handler (and its local profile)."""
    _, decider, local = ARMS[arm]
    text = config.builtin_text("frontier")
    if decider is not None:
        text = with_decider(text, decider)
    return with_local_profile(text) if local else text


def slo_key(tpot_s: float) -> str:
    """The JSON key of goodput at TPOT <= `tpot_s` (and TTFT <= 1 s)."""
    return f"goodput_tpot_{tpot_s * 1e3:g}ms"


def run_point(point: Point, *, duration_s: float) -> dict[str, Any]:
    """One arm at one load and seed: the latency percentiles, goodput per SLO and the KV transfers."""
    workload = WORKLOADS[point.workload].make(point.seed)
    schedule = workloads.poisson_schedule(qps=point.qps, duration_s=duration_s, seed=point.seed)
    arrivals = []
    for index, at in enumerate(schedule.offsets_s):
        prompt = workload.prompt_for(index)
        arrivals.append(
            cluster.Arrival(at=float(at), model=MODEL, prompt=prompt.prompt, max_tokens=prompt.max_tokens)
        )
    engines = cluster.engines(ENGINES, args=("--model", MODEL), prefill=ARMS[point.arm][0])
    results = cluster.run(
        engines=engines, workload=arrivals, policy=scheduler_config(point.arm), seed=point.seed
    )
    ok = (results.status == 200) & ~np.isnan(results.end)
    ttft, tpot, transfer = results.ttft[ok], results.tpot[ok], results.transfer[ok]
    moved = ~np.isnan(transfer)

    def pct(values: np.ndarray, q: float) -> float:
        values = values[~np.isnan(values)]
        return float(np.percentile(values, q)) if values.size else math.nan

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if values.size else math.nan

    goodput = {
        slo_key(slo): float(((ttft <= SLO_TTFT_S) & ~(tpot > slo)).sum()) / duration_s for slo in SLO_TPOT_S
    }
    return {
        **dataclasses.asdict(point),
        "requests": len(arrivals),
        "completed": int(ok.sum()),
        "ttft_p90_s": pct(ttft, 90),
        "tpot_p50_s": pct(tpot, 50),
        "tpot_p90_s": pct(tpot, 90),
        **goodput,
        "disaggregated": float(moved.sum()) / max(int(ok.sum()), 1),
        "transfer_mean_s": mean(transfer[moved]),
        # The transfer's part of a disaggregated request's TTFT (prefill, transfer, first decode step).
        "transfer_share_of_ttft": mean(transfer[moved] / ttft[moved]),
        "wall_s": results.wall_s,
    }


def _cell(values: Sequence[float], fmt: str) -> str:
    """Median [min, max] over seeds; a dash when no seed has a value."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    s = stats.spread(values)
    return f"{fmt.format(s.median)} [{fmt.format(s.low)}, {fmt.format(s.high)}]"


def peaks(
    runs: list[dict[str, Any]], *, workload: str, arm: str, key: str
) -> list[tuple[float, float, bool]]:
    """Per seed: the best goodput under `key` over the ladder, its load, and whether a higher load was run."""
    out = []
    for seed in sorted({r["seed"] for r in runs}):
        rows = [r for r in runs if (r["workload"], r["arm"], r["seed"]) == (workload, arm, seed)]
        if rows:
            best = max(rows, key=lambda r: r[key])
            out.append((best[key], best["qps"], best["qps"] < max(r["qps"] for r in rows)))
    return out


def render(report: dict[str, Any]) -> str:
    """Markdown: per workload, the peak goodput per SLO and arm, then every load with each arm's numbers."""
    runs = report["runs"]
    lines = [
        "# Prefill/decode disaggregation against aggregated serving (virtual time, same 8 GPUs)",
        "",
        "Commands: " + "; ".join(f"`{c}`" for c in report["commands"]) + f" ({report['machine']}, "
        f"{report['wall_s']:.0f} s wall in all). "
        f"{ENGINES} x {MODEL} on H100; a P/D arm's name gives its prefill:decode split. "
        f"{report['duration_s']:.0f} s of Poisson arrivals per point, seeds {report['seeds']}. Goodput: "
        f"requests/s with TTFT <= {SLO_TTFT_S:g} s and TPOT <= the SLO named. Cells: median [min, max] over "
        "seeds. A ratio is a win or a loss only where the seeds' ranges do not overlap.",
    ]
    for workload, shape in WORKLOADS.items():
        if not any(r["workload"] == workload for r in runs):
            continue
        lines += ["", f"## {workload}: {shape.describe}", ""]
        lines += [
            "Peak goodput (req/s; each seed's best load, the ladder passing its knee), and the ratio of "
            "medians to aggregated:",
            "",
            "| arm | " + " | ".join(f"TPOT <= {slo * 1e3:g} ms" for slo in SLO_TPOT_S) + " |",
            "|---|" + "---|" * len(SLO_TPOT_S),
        ]
        for arm in ARMS:
            if not any((r["workload"], r["arm"]) == (workload, arm) for r in runs):
                continue
            cells = []
            for slo in SLO_TPOT_S:
                key = slo_key(slo)
                mine = peaks(runs, workload=workload, arm=arm, key=key)
                base = peaks(runs, workload=workload, arm="aggregated", key=key)
                if not mine:
                    cells.append("-")
                    continue
                s = stats.spread([p[0] for p in mine])
                cell = _cell([p[0] for p in mine], "{:.2f}")
                if not all(p[2] for p in mine):
                    cell += " (knee not passed)"
                if arm != "aggregated" and base:
                    b = stats.spread([p[0] for p in base])
                    verdict = "tie" if s.overlaps(b) else ("win" if s.median > b.median else "loss")
                    ratio = s.median / b.median if b.median else math.inf
                    cell += f" {ratio:.2f}x {verdict}"
                cells.append(cell)
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "| req/s | arm | TTFT p90 s | TPOT p50 ms | TPOT p90 ms | disaggregated | KV transfer ms "
            "(share of TTFT) | " + " | ".join(f"goodput @{slo * 1e3:g} ms" for slo in SLO_TPOT_S) + " |",
            "|---|---|---|---|---|---|---|" + "---|" * len(SLO_TPOT_S),
        ]
        for qps in shape.loads:
            for arm in ARMS:
                rows = [r for r in runs if (r["workload"], r["arm"], r["qps"]) == (workload, arm, qps)]
                if not rows:
                    continue
                transfer = _cell([r["transfer_mean_s"] * 1e3 for r in rows], "{:.0f}")
                share = _cell([r["transfer_share_of_ttft"] * 100 for r in rows], "{:.0f}%")
                moved = f"{transfer} ({share})" if transfer != "-" else "-"
                lines.append(
                    f"| {qps:g} | {arm} | {_cell([r['ttft_p90_s'] for r in rows], '{:.2f}')} "
                    f"| {_cell([r['tpot_p50_s'] * 1e3 for r in rows], '{:.1f}')} "
                    f"| {_cell([r['tpot_p90_s'] * 1e3 for r in rows], '{:.1f}')} "
                    f"| {_cell([r['disaggregated'] * 100 for r in rows], '{:.0f}%')} | {moved} | "
                    + " | ".join(_cell([r[slo_key(slo)] for r in rows], "{:.2f}") for slo in SLO_TPOT_S)
                    + " |"
                )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m frontier_bench.pd", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=40.0, help="model seconds of arrivals per point")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--jobs", type=int, default=1, help="points run at once, one process each")
    parser.add_argument(
        "--merge", nargs="+", type=Path, metavar="PD_JSON", help="run nothing: join earlier pd.json files"
    )
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "frontier_bench.pd", *(argv if argv is not None else sys.argv[1:])])
    if args.merge:
        parts = [json.loads(path.read_text()) for path in args.merge]
        report = {
            "commands": [c for part in parts for c in part["commands"]] + [command],
            "machine": parts[0]["machine"],
            "seeds": parts[0]["seeds"],
            "duration_s": parts[0]["duration_s"],
            "runs": [run for part in parts for run in part["runs"]],
            "wall_s": sum(part["wall_s"] for part in parts),
        }
    else:
        report = run_all(args, command)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pd.json").write_text(json.dumps(report, indent=1))
    (out / "pd.md").write_text(render(report))
    print(render(report))


def run_all(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Every point the arguments name, `--jobs` at a time; the report with the runs in ladder order."""
    began = time.perf_counter()
    points = [
        Point(arm=arm, workload=workload, qps=qps, seed=seed)
        for workload in args.workloads
        for qps in WORKLOADS[workload].loads
        for seed in range(args.seeds)
        for arm in args.arms  # arms interleaved: each load and seed runs every arm before the next
    ]
    runs = []
    # Virtual time: a point's numbers do not depend on what else runs beside it, so points run in parallel.
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(run_point, point, duration_s=args.duration): point for point in points}
        for index, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            point, row = futures[future], future.result()
            runs.append(row)
            print(
                f"[{index}/{len(points)}] pd {point.workload} {point.arm} {point.qps:g} req/s "
                f"seed={point.seed}: TTFT p90 {row['ttft_p90_s']:.2f} s, TPOT p90 "
                f"{row['tpot_p90_s'] * 1e3:.0f} ms, goodput@50ms {row[slo_key(0.05)]:.2f} "
                f"({time.perf_counter() - began:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    order = {point: i for i, point in enumerate(points)}
    runs.sort(key=lambda r: order[Point(arm=r["arm"], workload=r["workload"], qps=r["qps"], seed=r["seed"])])
    return {
        "commands": [command],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "seeds": args.seeds,
        "duration_s": args.duration,
        "runs": runs,
        "wall_s": time.perf_counter() - began,
    }


if __name__ == "__main__":
    main()
