"""Overload in virtual time: flow control against routing alone, past the fleet's capacity.

The fleet: 6 simulated H100s (Llama-3.1-8B shape). The workload: the shared-prefix shape (112 groups of a
6,000-token system prompt, a fresh 1,200-token question per request, never repeated, 100 tokens out) with
three priority classes in equal parts, named by InferenceObjective (`critical` 100, `standard` 0, `batch`
-1, sheddable, with `x-slo-ttft-ms: 1000`), and two tenants (`x-gateway-inference-fairness-id`) sending 75%
and 25% of the traffic. Offered load from 1.0x to 2.0x of the fleet's capacity on this workload (65 req/s:
the `frontier` profile kept every request within the SLO at 60 req/s and fell to 7 good requests/s at 80;
fresh 1,200-token questions make it prefill-bound, far below the 110+ req/s of the older workload that
repeated its 560 prompts), 3 arrival seeds each.

Policies: the `frontier` and `gie-default` profiles as they are (the scheduler's priority shedding only:
429 for sheddable requests while every endpoint is saturated), and each with a `flowControl` section:
`gie-default+fc` with GIE's saturation thresholds alone (what GIE's flow control does),
`frontier+fc` with `tpotTarget: 40ms` as well (per-endpoint in-flight limits learned from completions).
The picker is told nothing about the fleet's speed; the TPOT target is the operator's objective.

Reported per policy and load (min-max over seeds): goodput (requests within TTFT <= 1 s and TPOT <= 50 ms,
per second), SLO attainment per class (refused requests count as misses), 429s and 503s, requests lost
(no answer at all: must be 0), and each tenant's goodput over its fair share (priority first, then within a
class the max-min split by the tenants' demands).
The first `WARMUP_S` seconds are left out: the learned limits start open and settle in ~35 s from a cold
start here (reported as `settle`: the start of the first 5 s window from which critical requests meet the
SLO >= 99% to the end of the run).

    python -m frontier_bench.overload --out bench/results
"""

import argparse
import dataclasses
import functools
import json
import platform
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from frontier_bench import progress, stats, workloads
from frontier_picker.scheduling import config
from frontier_sim.vt import cluster

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ENGINES = 6
CAPACITY_RPS = 65.0
LOADS = (1.0, 1.25, 1.5, 2.0)  # x capacity
WARMUP_S = 40.0
MEASURED_S = 30.0
CLASSES = {"critical": 100, "standard": 0, "batch": -1}
TENANTS = {"tenant-a": 0.75, "tenant-b": 0.25}
FLOW = {
    "frontier+fc": (
        "frontier",
        {"tpotTarget": "35ms", "lifoAfter": "1s", "defaultRequestTTL": "20s"},
    ),
    "gie-default+fc": ("gie-default", {"defaultRequestTTL": "20s"}),
    "frontier": ("frontier", None),
    "gie-default": ("gie-default", None),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class FreshSharedPrefix:
    """The shared-prefix shape with a fresh question per request: request i gets a seeded random group's
    system prompt and its own seeded question, so no two requests are equal."""

    num_groups: int = 112
    system_prompt_len: int = 6000
    question_len: int = 1200
    output_len: int = 100
    seed: int = 0

    @functools.lru_cache(maxsize=256)  # noqa: B019 - bounded, and the workload lives as long as the run
    def _system(self, group: int) -> str:
        return workloads.words(np.random.default_rng([self.seed, 1, group]), self.system_prompt_len)

    def prompt(self, index: int) -> str:
        rng = np.random.default_rng([self.seed, 2, index])
        group = int(rng.integers(self.num_groups))
        return f"{self._system(group)} {workloads.words(rng, self.question_len)}"


def policy_text(policy: str) -> str:
    """The EndpointPickerConfig of `policy`: its profile, the objectives, and any flowControl section."""
    profile, flow = FLOW[policy]
    document = yaml.safe_load(config.builtin_text(profile))
    objectives = [{"name": name, "priority": priority} for name, priority in CLASSES.items()]
    document["plugins"].append({"type": "inference-objectives", "parameters": {"objectives": objectives}})
    if flow is not None:
        document["flowControl"] = flow
    return str(yaml.safe_dump(document))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Traffic:
    offsets: np.ndarray
    classes: np.ndarray
    tenants: np.ndarray


def traffic(qps: float, seed: int) -> Traffic:
    schedule = workloads.poisson_schedule(qps=qps, duration_s=WARMUP_S + MEASURED_S, seed=seed)
    rng = np.random.default_rng([seed, 7])
    n = len(schedule.offsets_s)
    return Traffic(
        offsets=np.asarray(schedule.offsets_s, dtype=np.float64),
        classes=rng.choice(list(CLASSES), size=n),
        tenants=rng.choice(list(TENANTS), p=list(TENANTS.values()), size=n),
    )


def arrivals(source: FreshSharedPrefix, load: Traffic) -> Iterator[cluster.Arrival]:
    for i, at in enumerate(load.offsets):
        headers = {
            "x-gateway-inference-objective": str(load.classes[i]),
            "x-gateway-inference-fairness-id": str(load.tenants[i]),
        }
        if CLASSES[str(load.classes[i])] < 0:
            headers["x-slo-ttft-ms"] = "1000"
        yield cluster.Arrival(
            at=float(at), model=MODEL, prompt=source.prompt(i), max_tokens=source.output_len, headers=headers
        )


def measure(results: cluster.Results, load: Traffic, slo: stats.Slo) -> dict[str, Any]:
    """The run's numbers over the measured window (arrivals after the warm-up)."""
    kept = load.offsets >= WARMUP_S
    status = results.status
    with np.errstate(invalid="ignore"):
        good = (status == 200) & (results.ttft <= slo.ttft_s) & ~(results.tpot > slo.tpot_s)
    answered = np.isin(status, (200, 429, 503)) & ((status != 200) | ~np.isnan(results.end))
    out: dict[str, Any] = {
        "goodput_rps": float(good[kept].sum() / MEASURED_S),
        "lost": int((kept & ~answered).sum()),
        "status_429": int((kept & (status == 429)).sum()),
        "status_503": int((kept & (status == 503)).sum()),
        "requests": int(kept.sum()),
    }
    for name in CLASSES:
        member = kept & (load.classes == name)
        out[f"slo_{name}"] = float(good[member].mean()) if member.any() else float("nan")
    fair = fair_shares(good, kept, load)
    for name in TENANTS:
        got = float(good[kept & (load.tenants == name)].sum())
        out[f"fair_{name}"] = got / fair[name] if fair[name] else float("nan")
    out["settle_s"] = settle(results, load, good)
    return out


def fair_shares(good: np.ndarray, kept: np.ndarray, load: Traffic) -> dict[str, float]:
    """Each tenant's fair share of the good requests: priority first, so within each class the max-min fair
    split of that class's good requests by the tenants' demands (a tenant asking for less than an equal split
    gets all it asked for, the other the rest), summed over the classes."""
    shares = dict.fromkeys(TENANTS, 0.0)
    for name in CLASSES:
        member = kept & (load.classes == name)
        total = float(good[member].sum())
        demand = {tenant: float((member & (load.tenants == tenant)).sum()) for tenant in TENANTS}
        small = min(demand, key=lambda tenant: demand[tenant])
        share = min(demand[small], total / len(TENANTS))
        shares[small] += share
        for tenant in TENANTS:
            if tenant != small:
                shares[tenant] += total - share
    return shares


def settle(results: cluster.Results, load: Traffic, good: np.ndarray) -> float | None:
    """The start of the first 5 s window from which critical requests meet the SLO >= 99% to the end."""
    critical = load.classes == "critical"
    windows = np.arange(0.0, WARMUP_S + MEASURED_S, 5.0)
    met = []
    for start in windows:
        member = critical & (load.offsets >= start) & (load.offsets < start + 5.0)
        met.append(bool(member.any()) and float(good[member].mean()) >= 0.99)
    for i, start in enumerate(windows):
        if all(met[i:]):
            return float(start)
    return None


def run(seeds: int, loads: Sequence[float], policies: Sequence[str]) -> list[dict[str, Any]]:
    specs = cluster.engines(ENGINES, args=["--model", MODEL])
    slo = stats.Slo()
    rows = []
    bar = progress.Bar(steps=seeds * len(loads) * len(policies))
    for factor in loads:
        qps = CAPACITY_RPS * factor
        for seed in range(seeds):
            load = traffic(qps, seed)
            source = FreshSharedPrefix(seed=seed)
            for policy in policies:
                bar.step += 1
                bar.label = f"overload {policy} @ {qps:.0f} req/s seed {seed}"
                bar.counters.total, bar.counters.done = len(load.offsets), 0
                bar.draw()
                began = time.monotonic()
                results = cluster.run(
                    engines=specs, workload=arrivals(source, load), policy=policy_text(policy)
                )
                row = {
                    "policy": policy,
                    "load_x": factor,
                    "qps": qps,
                    "seed": seed,
                    **measure(results, load, slo),
                }
                row["wall_s"] = round(time.monotonic() - began, 1)
                rows.append(row)
                bar.counters.done = len(load.offsets)
                bar.finish()
    return rows


def _span(values: Sequence[float], digits: int = 2) -> str:
    clean = [v for v in values if v == v]
    if not clean:
        return "-"
    low, high = min(clean), max(clean)
    return (
        f"{low:.{digits}f}"
        if round(low, digits) == round(high, digits)
        else f"{low:.{digits}f}-{high:.{digits}f}"
    )


def markdown(rows: Sequence[dict[str, Any]], command: str) -> str:
    lines = [
        "# Overload: flow control in virtual time",
        "",
        f"Command: `{command}`",
        "",
        f"- {ENGINES} virtual H100 engines (Llama-3.1-8B shape); shared-prefix shape with a fresh question",
        "  per request (never repeated); classes critical (100) / standard (0) / batch (-1, sheddable, TTFT",
        "  SLO 1 s) in equal parts; tenants a / b at 75% / 25%",
        f"- capacity taken as {CAPACITY_RPS:g} req/s; warm-up {WARMUP_S:g} s left out, {MEASURED_S:g} s",
        "  measured (model time); SLO: TTFT <= 1 s and TPOT <= 50 ms; refused requests count as misses",
        "- each cell: min-max over seeds; `fair a/b`: tenant goodput over its fair share (per class, the",
        "  max-min split of the class's good requests by the tenants' demands, summed over classes);",
        "  `settle`: model second from which critical requests meet the SLO >= 99% (`-`: never)",
        "",
        "| load | policy | goodput req/s | critical SLO | standard SLO | batch SLO | 429 | 503 | lost "
        "| fair a | fair b | settle s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["load_x"], r["policy"]) for r in rows}, key=lambda k: (k[0], list(FLOW).index(k[1])))
    for factor, policy in keys:
        group = [r for r in rows if r["load_x"] == factor and r["policy"] == policy]

        def col(key: str, digits: int = 2, rows: list[dict[str, Any]] = group) -> str:
            return _span([float(r[key]) if r[key] is not None else float("nan") for r in rows], digits)

        lines.append(
            f"| {factor:g}x ({group[0]['qps']:.0f}) | {policy} | {col('goodput_rps', 1)} "
            f"| {col('slo_critical')} | {col('slo_standard')} | {col('slo_batch')} "
            f"| {col('status_429', 0)} | {col('status_503', 0)} "
            f"| {col('lost', 0)} | {col('fair_tenant-a')} | {col('fair_tenant-b')} | {col('settle_s', 0)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="frontier_bench.overload", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--loads", type=float, nargs="+", default=list(LOADS))
    parser.add_argument("--policies", nargs="+", choices=list(FLOW), default=list(FLOW))
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "frontier_bench.overload", *(argv or sys.argv[1:])])
    rows = run(args.seeds, args.loads, args.policies)
    args.out.mkdir(parents=True, exist_ok=True)
    document = {"command": command, "machine": platform.platform(), "rows": rows}
    (args.out / "overload.json").write_text(json.dumps(document, indent=1) + "\n")
    (args.out / "overload.md").write_text(markdown(rows, command))
    print((args.out / "overload.md").read_text())


if __name__ == "__main__":
    main()
