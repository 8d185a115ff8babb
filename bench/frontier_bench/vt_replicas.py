"""Picker replicas in virtual time: one picker against three, with and without peering.

The fleet: 6 simulated H100s (Llama-3.1-8B shape). The workload: the shared-prefix shape with a fresh
1,200-token question per request (`overload.FreshSharedPrefix`: 112 groups of a 6,000-token system prompt,
never repeated, 100 tokens out), Poisson arrivals. The `frontier` profile runs as

- `1 replica`: one picker decides everything;
- `3 replicas, peering`: three pickers take arrivals in turn (as a gateway spreads streams over replicas),
  each with its own datastore and scheduler, and each learns the others' decisions and completions through
  the peering's own path (`frontier.picker.v1` messages, `Director.learn_peer_decision`) at once;
- `3 replicas, blind`: the same three without peering: each sees only its own third of the traffic (what
  active-active replicas without shared state do).

Reported per arm and load, min-max over 3 arrival seeds: TTFT p90, goodput (TTFT <= 1 s and TPOT <= 50 ms),
and the engines' prefix-cache hit rate. Peering here has no network delay: the real one's is measured in
real time (`bench/results/scale-out-consistency.md`).

    python -m frontier_bench.vt_replicas --out bench/results
"""

import argparse
import json
import platform
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from frontier_bench import overload, progress, stats, virtual, workloads
from frontier_sim.vt import cluster

ENGINES = 6
WARMUP_S = 20.0
MEASURED_S = 30.0
LOADS = (40.0, 55.0, 65.0)
ARMS = {"1 replica": (1, True), "3 replicas, peering": (3, True), "3 replicas, blind": (3, False)}
SLO = stats.Slo(ttft_s=1.0, tpot_s=0.05)


def arrivals(source: overload.FreshSharedPrefix, qps: float, seed: int) -> Iterator[cluster.Arrival]:
    schedule = workloads.poisson_schedule(qps=qps, duration_s=WARMUP_S + MEASURED_S, seed=seed)
    for index, offset in enumerate(schedule.offsets_s):
        yield cluster.Arrival(
            at=float(offset), model=overload.MODEL, prompt=source.prompt(index), max_tokens=source.output_len
        )


def run_cell(arm: str, qps: float, seed: int) -> dict[str, Any]:
    replicas, peering = ARMS[arm]
    source = overload.FreshSharedPrefix(seed=seed)
    results = cluster.run(
        engines=cluster.engines(ENGINES, args=["--model", overload.MODEL]),
        workload=arrivals(source, qps, seed),
        policy="frontier",
        replicas=replicas,
        peering=peering,
        seed=seed,
    )
    kept = [t for t in virtual.traces(results) if t.sent >= WARMUP_S]
    summary = stats.summarize(kept, slo=SLO, window_s=MEASURED_S)
    return {
        "arm": arm,
        "qps": qps,
        "seed": seed,
        "ttft_p90_s": summary["ttft_s"]["p90"],
        "goodput_rps": summary["goodput_rps"],
        "hit_rate": summary["prefix_hit_rate"],
        "failed": summary.get("failed", 0),
    }


def span(values: Sequence[float], digits: int = 3) -> str:
    low, high = min(values), max(values)
    return f"{low:.{digits}g}" if low == high else f"{low:.{digits}g}-{high:.{digits}g}"


def markdown(rows: Sequence[dict[str, Any]], command: str) -> str:
    lines = [
        "# Picker replicas in virtual time: 1 picker, 3 with peering, 3 blind (issue 19)",
        "",
        f"Command: `{command}`  ",
        f"Fleet: {ENGINES} simulated H100s; shared-prefix shape with a fresh question per request; "
        f"{WARMUP_S:g} s warm-up left out, {MEASURED_S:g} s measured; 3 arrival seeds (min-max).",
        "",
        "| load req/s | arm | TTFT p90 s | goodput req/s | hit rate |",
        "|---|---|---|---|---|",
    ]
    for qps in LOADS:
        for arm in ARMS:
            cells = [r for r in rows if r["qps"] == qps and r["arm"] == arm]
            lines.append(
                f"| {qps:g} | {arm} | {span([c['ttft_p90_s'] for c in cells])} | "
                f"{span([c['goodput_rps'] for c in cells])} | {span([c['hit_rate'] for c in cells])} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m frontier_bench.vt_replicas", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    bar = progress.Bar(steps=len(LOADS) * len(ARMS) * args.seeds)
    rows = []
    began = time.monotonic()
    for qps in LOADS:
        for seed in range(args.seeds):
            for arm in ARMS:
                bar.step += 1
                bar.label = f"{arm} @ {qps:g} req/s seed {seed}"
                bar.draw()
                rows.append(run_cell(arm, qps, seed))
    bar.finish()
    command = "python -m frontier_bench.vt_replicas " + shlex.join(argv if argv is not None else sys.argv[1:])
    document = {
        "command": command.strip(),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "wall_s": round(time.monotonic() - began, 1),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vt-replicas.json").write_text(json.dumps(document, indent=1, default=float) + "\n")
    text = markdown(rows, command.strip())
    (args.out / "vt-replicas.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
