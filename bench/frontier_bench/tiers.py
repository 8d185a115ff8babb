"""Tier routing in virtual time: cost against quality, and latency under a burst on the cheap tier.

The fleet: a small tier (one Llama-3.1-8B engine on one H100, at most 16 running sequences) and a large tier
(two Llama-3.3-70B engines, tensor parallel over four H100s each), each simulated with its own calibrated
speed. Requests name the virtual
model `auto` (the always-* policies name a served model instead) and carry prompts from the *held-out* fifth
of Frontier's labelled prompt set, which the shipped classifier never trained on; each request is stamped
with its own number, so no two requests are equal (a held-out prompt appears several times, numbered apart).

Measured per policy (always-small, always-large, rules from ModelTier hints, classifier, classifier with
spill-over), over seeds:
- *cost*: the sum over requests of the tier's `relativeCost`, as a share of always-large's; and the
  GPU-seconds the engines were busy (busy seconds x GPUs per engine);
- *quality proxy*: the share of requests served by a tier at or above the rank their label requires
  (code, math, reasoning need the large tier; chit-chat, summarisation, extraction do not);
- TTFT p90, and the share of requests within the TTFT SLO, in steady load and under a burst of cheap-tier
  requests at three times their steady rate.

    python -m frontier_bench.tiers --out bench/results
"""

import argparse
import dataclasses
import json
import math
import platform
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from frontier_api import prompt_categories
from frontier_picker.scheduling import config
from frontier_picker.scheduling.plugins import classifier, tiers
from frontier_sim.vt import cluster

SMALL = "meta-llama/Llama-3.1-8B-Instruct"
LARGE = "meta-llama/Llama-3.3-70B-Instruct"
# The small tier is capped at 16 running sequences (a memory-constrained cheap engine): uncapped, one 8B H100
# absorbed a 3x burst of its traffic at 40 and 100 req/s (TTFT p90 <= 0.07 s with or without spill-over), so
# a burst could not show what spill-over is for.
SMALL_ARGS = ("--model", SMALL, "--max-num-seqs", "16")
LARGE_ARGS = ("--model", LARGE, "--tensor-parallel-size", "4")
GPUS = {SMALL: 1, LARGE: 4}
RANK = {SMALL: 0, LARGE: 1}
RELATIVE_COST = {SMALL: 1.0, LARGE: 6.0}  # the tiers' spec.tier.relativeCost in this benchmark
# ModelTier routing hints a platform engineer might write for the large tier (the `rules` policy).
LARGE_KEYWORDS = ["code", "function", "python", "sql", "bug", "prove", "calculate", "solve", "why", "explain"]
# Output tokens per category: the workload's definition, not measured.
OUTPUT_TOKENS = {
    "code": 256,
    "math": 192,
    "reasoning": 256,
    "chit-chat": 64,
    "summarisation": 128,
    "extraction": 96,
}
# Policy -> (model the client names, tier-router parameters beyond the tiers; None: no router involved).
POLICIES: dict[str, tuple[str, dict[str, Any] | None]] = {
    "always-small": (SMALL, None),
    "always-large": (LARGE, None),
    "rules": ("auto", {"spill": False}),
    "classifier": ("auto", {"spill": False, "classifier": "prompt-classifier"}),
    "classifier-conf-0.6": (
        "auto",
        {"spill": False, "classifier": "prompt-classifier", "minConfidence": 0.6},
    ),
    "classifier-conf-0.8": (
        "auto",
        {"spill": False, "classifier": "prompt-classifier", "minConfidence": 0.8},
    ),
    "classifier+spill": ("auto", {"spill": True, "classifier": "prompt-classifier"}),
}
BURST_POLICIES = ("always-small", "always-large", "classifier", "classifier+spill")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    """Fleet and load: `qps` steady; the burst multiplies the cheap categories' rate by `burst_factor`
    between `burst_at_s` and `burst_at_s + burst_s`."""

    small_engines: int = 1
    large_engines: int = 2
    qps: float = 40.0
    duration_s: float = 120.0
    burst_factor: float = 3.0
    burst_at_s: float = 40.0
    burst_s: float = 40.0
    slo_ttft_s: float = 2.0


def router_config(policy: str) -> str:
    """The picker's `frontier` config with the tier router set up for `policy`."""
    document = yaml.safe_load(config.builtin_text("frontier"))
    small: dict[str, Any] = {
        "model": SMALL,
        "rank": 0,
        "relativeCost": RELATIVE_COST[SMALL],
        "fallback": True,
    }
    large: dict[str, Any] = {"model": LARGE, "rank": 1, "relativeCost": RELATIVE_COST[LARGE]}
    extra = POLICIES[policy][1] or {}
    if policy == "rules":
        large["keywords"] = LARGE_KEYWORDS
    if "classifier" in extra:
        document["plugins"].append({"type": "prompt-classifier"})
    for plugin in document["plugins"]:
        if plugin["type"] == "tier-router":
            plugin["parameters"] = {"virtualModels": {"auto": [small, large]}, **extra}
    return yaml.safe_dump(document, sort_keys=False)


def arrivals(
    examples: Sequence[prompt_categories.Example], case: Case, *, model: str, seed: int, burst: bool
) -> Iterator[tuple[cluster.Arrival, str]]:
    """Poisson arrivals of held-out prompts (each stamped with its request number) and their labels."""
    rng = np.random.default_rng(seed)
    cheap = [e for e in examples if tiers.DEFAULT_CATEGORY_RANKS[e.category] == 0]
    t, number = 0.0, 0
    while True:
        in_burst = burst and case.burst_at_s <= t < case.burst_at_s + case.burst_s
        extra = case.qps * len(cheap) / len(examples) * (case.burst_factor - 1) if in_burst else 0.0
        rate = case.qps + extra
        t += float(rng.exponential(1.0 / rate))
        if t >= case.duration_s:
            return
        pool = cheap if in_burst and rng.random() < extra / rate else examples
        example = pool[int(rng.integers(len(pool)))]
        number += 1
        text = f"Request {number}.\n{example.prompt}"
        arrival = cluster.Arrival(
            at=t,
            model=model,
            messages=({"role": "user", "content": text},),
            max_tokens=OUTPUT_TOKENS[example.category],
        )
        yield arrival, example.category


def fleet(case: Case) -> list[Any]:
    small = cluster.engines(case.small_engines, args=SMALL_ARGS, base_address="10.1.0.1", tier="small")
    large = cluster.engines(case.large_engines, args=LARGE_ARGS, base_address="10.2.0.1", tier="large")
    return [*small, *large]


def run_one(
    examples: Sequence[prompt_categories.Example], case: Case, *, policy: str, seed: int, burst: bool
) -> dict[str, Any]:
    """One simulated run; its cost, quality and latency numbers."""
    model = POLICIES[policy][0]
    pairs = list(arrivals(examples, case, model=model, seed=seed, burst=burst))
    engines = fleet(case)
    results = cluster.run(
        engines=engines,
        workload=[arrival for arrival, _ in pairs],
        policy=router_config(policy),
        seed=seed,
    )
    served = np.array([engines[i].config.served_model_name if i >= 0 else "" for i in results.engine])
    required = np.array([tiers.DEFAULT_CATEGORY_RANKS[category] for _, category in pairs])
    ok = results.status == 200
    rank = np.array([RANK.get(name, -1) for name in served])
    ttft = results.ttft[ok]
    at = results.arrival[ok]
    in_burst = (at >= case.burst_at_s) & (at < case.burst_at_s + case.burst_s)
    window = ttft[in_burst] if burst and in_burst.any() else ttft
    return {
        "policy": policy,
        "seed": seed,
        "burst": burst,
        "requests": len(pairs),
        "completed": int(ok.sum()),
        "relative_cost": float(sum(RELATIVE_COST.get(name, 0.0) for name in served[ok])),
        "busy_gpu_s": float(
            sum(
                e.busy_s * GPUS[spec.config.served_model_name]
                for e, spec in zip(results.engines, engines, strict=True)
            )
        ),
        "quality": float((rank[ok] >= required[ok]).mean()) if ok.any() else math.nan,
        "large_share": float((rank[ok] == 1).mean()) if ok.any() else math.nan,
        "ttft_p90_s": float(np.percentile(window, 90)) if window.size else math.nan,
        "within_slo": float((window <= case.slo_ttft_s).mean()) if window.size else math.nan,
    }


TIMING_PASSES = 20  # classifications per held-out prompt for the latency percentiles (p99 of 126 is the max)


def classifier_report(examples: Sequence[prompt_categories.Example]) -> dict[str, Any]:
    """Accuracy on the held-out split, per category, and the classification time per prompt."""
    model = classifier.trained("", 1 << 16, 2000)
    per: dict[str, list[int]] = {}
    for example in examples:
        found = model.classify(example.prompt)
        per.setdefault(example.category, []).append(int(found.category == example.category))
    seconds = [model.classify(e.prompt).seconds for _ in range(TIMING_PASSES) for e in examples]
    correct = sum(sum(v) for v in per.values())
    return {
        "held_out": len(examples),
        "accuracy": correct / len(examples),
        "per_category": {k: sum(v) / len(v) for k, v in sorted(per.items())},
        "classify_p50_ms": float(np.percentile(seconds, 50) * 1e3),
        "classify_p99_ms": float(np.percentile(seconds, 99) * 1e3),
    }


def spread(rows: Sequence[dict[str, Any]], key: str) -> str:
    values = [row[key] for row in rows]
    low, high, mean = min(values), max(values), sum(values) / len(values)
    fmt = "{:.3f}" if abs(mean) < 10 else "{:.0f}"
    return f"{fmt.format(mean)} [{fmt.format(low)}, {fmt.format(high)}]"


def render(report: dict[str, Any]) -> str:
    """The markdown of a report: classifier accuracy, the cost/quality table, the burst table."""
    c = report["classifier"]
    case = report["case"]
    lines = [
        "# Tier routing: cost against quality, and spill-over under a burst (virtual time)",
        "",
        f"Command: `{report['command']}` ({report['machine']}, {report['wall_s']:.0f} s wall).",
        "",
        f"Fleet: {case['small_engines']} x {SMALL} (1 H100 each, --max-num-seqs 16) and "
        f"{case['large_engines']} x {LARGE} "
        f"(TP 4 on H100), relativeCost {RELATIVE_COST[SMALL]:g} and {RELATIVE_COST[LARGE]:g}. "
        f"Load: {case['qps']} req/s "
        f"Poisson for {case['duration_s']:.0f} s of held-out prompts, each numbered apart; TTFT SLO "
        f"{case['slo_ttft_s']} s. Seeds: {report['seeds']}; cells show mean [min, max].",
        "",
        f"## Classifier (held-out split, {c['held_out']} prompts never trained on)",
        "",
        f"Accuracy {c['accuracy']:.3f}; per category "
        + ", ".join(f"{k} {v:.2f}" for k, v in c["per_category"].items())
        + f". Classification p50 {c['classify_p50_ms']:.2f} ms, p99 {c['classify_p99_ms']:.2f} ms "
        f"on this machine ({TIMING_PASSES} passes over the held-out prompts).",
        "",
        "## Steady load",
        "",
        "| policy | cost vs always-large | busy GPU-s | quality proxy | share on large | TTFT p90 s "
        "| within SLO |",
        "|---|---|---|---|---|---|---|",
    ]
    steady = [r for r in report["runs"] if not r["burst"]]
    baseline = {r["seed"]: r["relative_cost"] for r in steady if r["policy"] == "always-large"}
    for policy in POLICIES:
        rows = [
            dict(r, cost_share=r["relative_cost"] / baseline[r["seed"]])
            for r in steady
            if r["policy"] == policy
        ]
        if not rows:
            continue
        keys = ("cost_share", "busy_gpu_s", "quality", "large_share", "ttft_p90_s", "within_slo")
        lines.append(f"| {policy} | " + " | ".join(spread(rows, key) for key in keys) + " |")
    lines += [
        "",
        f"## Burst: cheap-category requests at {case['burst_factor']:g}x their rate for "
        f"{case['burst_s']:.0f} s (TTFT measured over requests arriving in the burst)",
        "",
        "| policy | TTFT p90 s | within SLO | share on large | quality proxy |",
        "|---|---|---|---|---|",
    ]
    for policy in BURST_POLICIES:
        rows = [r for r in report["runs"] if r["burst"] and r["policy"] == policy]
        if not rows:
            continue
        lines.append(
            f"| {policy} | {spread(rows, 'ttft_p90_s')} | {spread(rows, 'within_slo')} "
            f"| {spread(rows, 'large_share')} | {spread(rows, 'quality')} |"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """The cost/quality frontier: each steady-load policy's mean cost share and quality, seeds as bars."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    steady = [r for r in report["runs"] if not r["burst"]]
    baseline = {r["seed"]: r["relative_cost"] for r in steady if r["policy"] == "always-large"}
    figure, axes = pyplot.subplots(figsize=(7, 5))
    for policy in POLICIES:
        rows = [r for r in steady if r["policy"] == policy]
        if not rows or not baseline:
            continue
        cost = np.array([r["relative_cost"] / baseline[r["seed"]] for r in rows])
        quality = np.array([r["quality"] for r in rows])
        axes.errorbar(
            cost.mean(),
            quality.mean(),
            xerr=[[cost.mean() - cost.min()], [cost.max() - cost.mean()]],
            yerr=[[quality.mean() - quality.min()], [quality.max() - quality.mean()]],
            fmt="o",
            capsize=3,
            label=policy,
        )
    axes.set_xlabel("cost (sum of relativeCost) / always-large")
    axes.set_ylabel("quality proxy (share served at the rank its label needs)")
    axes.set_title("Tier routing: cost against quality (steady load, min-max over seeds)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m frontier_bench.tiers", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--qps", type=float, default=Case().qps)
    parser.add_argument("--duration", type=float, default=Case().duration_s)
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    args = parser.parse_args(argv)
    case = dataclasses.replace(Case(), qps=args.qps, duration_s=args.duration)
    began = time.perf_counter()
    _, held_out = prompt_categories.split(prompt_categories.load())
    report: dict[str, Any] = {
        "command": shlex.join(
            ["python", "-m", "frontier_bench.tiers", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "case": dataclasses.asdict(case),
        "seeds": args.seeds,
        "classifier": classifier_report(held_out),
        "runs": [],
    }
    plan = [(p, s, False) for s in range(args.seeds) for p in args.policies]
    plan += [(p, s, True) for s in range(args.seeds) for p in args.policies if p in BURST_POLICIES]
    for index, (policy, seed, burst) in enumerate(plan, start=1):
        row = run_one(held_out, case, policy=policy, seed=seed, burst=burst)
        report["runs"].append(row)
        print(
            f"[{index}/{len(plan)}] tiers {policy} seed={seed} burst={burst}: quality {row['quality']:.3f} "
            f"TTFT p90 {row['ttft_p90_s']:.3f} s ({time.perf_counter() - began:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    report["wall_s"] = time.perf_counter() - began
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tiers.json").write_text(json.dumps(report, indent=1))
    (out / "tiers.md").write_text(render(report))
    plot(report, out / "tiers.png")
    print(render(report))


if __name__ == "__main__":
    main()
