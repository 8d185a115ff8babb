"""Precise vs approximate prefix routing, in virtual time, on a workload whose working set exceeds one
engine's KV cache.

The llm-d study's shape (`workloads.llmd_study`): 150 groups of 6,000-token system prompts on 8 simulated
H100s serving the 8B model, each request a group's system prompt and a fresh 1,200-token question: the
system prompts alone are 900k tokens, about twice one engine's cache (27,255 blocks of 16 tokens, 436k
tokens), so where each prefix lives depends on evictions the picker cannot see from its own decisions.

Policies: `approximate` is GIE's default scheduling (queue x2 + kv x2 + prefix x3, the prefix index learned
from the picker's own decisions with an LRU); `precise` is the same weights with `precise-prefix-cache-scorer`
reading the engines' KV events (fed by the virtual-time cluster at the end of each engine step); `frontier`
(Frontier's own profile, approximate index); `round-robin`; `oracle` (greedy on the engines' true state).
Each (policy, load, seed) runs on fresh engines with the same arrivals as the other policies; 3 seeds; the
report gives min-max over seeds.

Run: python -m frontier_bench.precise_prefix --out bench/results [--loads 8 12 16 20 24] [--seeds 0 1 2]
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from frontier_bench import stats, virtual, workloads
from frontier_picker import endpoints
from frontier_picker.scheduling import config, types
from frontier_picker.scheduling.framework import plugin
from frontier_sim.vt import cluster, policies

log = logging.getLogger(__name__)

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
PRECISE = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: kv-events-subscriber
- type: precise-prefix-cache-scorer
- type: max-score-picker
- type: single-profile-handler
schedulingProfiles:
- name: precise
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: precise-prefix-cache-scorer
    weight: 3
  - pluginRef: max-score-picker
"""
POLICIES = {
    "round-robin": "round-robin",
    "approximate": "gie-default",
    "precise": PRECISE,
    "frontier": "frontier",
    "oracle": "oracle",
}


class Replicas:
    """`count` picker replicas behind one proxy, each with its own scheduler built from the same config,
    taking requests in turn: each replica's approximate index sees only its own decisions, while every
    replica's KV event index hears every engine (the cluster feeds each replica's subscriber)."""

    def __init__(self, policy: str, *, count: int, seed: int) -> None:
        text = policy if "EndpointPickerConfig" in policy else None
        self.replicas = [
            config.load(text, builtin=None if text else policy, fallbacks=1, seed=seed + i)
            for i in range(count)
        ]
        self.data_sources: list[plugin.DataSource] = [s for r in self.replicas for s in r.data_sources]
        self._turn = 0
        self._owner: dict[str, types.Scheduler] = {}

    def schedule(self, request: types.Request, snapshot: endpoints.Snapshot) -> types.Decision:
        replica = self.replicas[self._turn % len(self.replicas)]
        self._turn += 1
        decision = replica.schedule(request, snapshot)
        self._owner[request.request_id] = replica
        return decision

    def on_completion(
        self, request: types.Request, decision: types.Decision, completion: types.Completion
    ) -> None:
        replica = self._owner.pop(request.request_id, None)
        if replica is not None:
            replica.on_completion(request, decision, completion)


def run_once(setup: virtual.Setup, *, policy: str, replicas: int, qps: float, seed: int) -> dict[str, Any]:
    """One policy at one load and arrival draw on fresh engines (as `virtual.run_once`, with replicas)."""
    schedule = workloads.poisson_schedule(
        qps=qps, duration_s=setup.warmup_s + setup.duration_s, seed=virtual.arrival_seed(seed, qps)
    )
    began = time.monotonic()
    chosen: str | types.Scheduler = policy
    if replicas > 1 and policy not in policies.BUILTIN:
        chosen = Replicas(policy, count=replicas, seed=seed)
    results = cluster.run(
        engines=cluster.engines(setup.engines, args=["--model", setup.model]),
        workload=virtual.arrivals(setup.source, schedule, model=setup.model),
        policy=chosen,
    )
    kept = [t for t in virtual.traces(results) if t.sent >= setup.warmup_s]
    work = {e.name: float(e.generation_tokens) for e in results.engines}
    summary = stats.summarize(kept, slo=setup.slo, endpoint_work=work, window_s=setup.duration_s)
    summary["wall_s"] = round(time.monotonic() - began, 1)
    return summary


def _span(values: list[float], digits: int = 3) -> str:
    low, high = min(values), max(values)
    return f"{low:.{digits}g}" if low == high else f"{low:.{digits}g}-{high:.{digits}g}"


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Per load and policy, min-max over seeds: TTFT p50/p90, goodput, prefix hit rate."""
    lines = [
        "| req/s | policy | TTFT p50 s | TTFT p90 s | goodput req/s | prefix hit rate |",
        "|---|---|---|---|---|---|",
    ]
    loads = sorted({row["qps"] for row in rows})
    for qps in loads:
        for policy in POLICIES:
            mine = [row for row in rows if row["qps"] == qps and row["policy"] == policy]
            if not mine:
                continue
            p50 = [row["summary"]["ttft_s"]["p50"] for row in mine]
            p90 = [row["summary"]["ttft_s"]["p90"] for row in mine]
            goodput = [row["summary"]["goodput_rps"] for row in mine]
            hit = [row["summary"]["prefix_hit_rate"] for row in mine]
            lines.append(
                f"| {qps:g} | {policy} | {_span(p50)} | {_span(p90)} | {_span(goodput)} | {_span(hit)} |"
            )
    return lines


def write(
    args: argparse.Namespace, source: workloads.SharedPrefix, *, command: str, rows: list[dict[str, Any]]
) -> None:
    """The results files for the rows so far."""
    text = [
        "# Precise vs approximate prefix routing (virtual time)",
        "",
        f"Command: `{command}`",
        "",
        f"{args.engines} simulated H100s (8B), the llm-d shape: {source.num_groups} groups x "
        f"{source.system_prompt_len}-token system prompts, {source.question_len}-token questions, "
        f"{args.output_len}-token outputs; {args.warmup:g} s warm-up left out, {args.duration:g} s measured; "
        f"seeds {', '.join(str(seed) for seed in sorted({row['seed'] for row in rows}))} (min-max);"
        f" {args.replicas} picker replica(s) taking requests in turn (baselines: one).",
        "Goodput: requests within the default SLO (TTFT 1 s, TPOT 50 ms).",
        "",
        *table(rows),
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(
        json.dumps({"command": command, "rows": rows}, indent=2) + "\n"
    )
    (args.out / f"{args.name}.md").write_text("\n".join(text))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--engines", type=int, default=8)
    parser.add_argument("--loads", type=float, nargs="+", default=[8, 12, 16, 20, 24])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--output-len", type=int, default=100)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--replicas", type=int, default=1, help="picker replicas taking requests in turn")
    parser.add_argument("--name", default="precise-prefix", help="results file stem")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    command = "python -m frontier_bench.precise_prefix " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        source = workloads.llmd_study(engines=args.engines, output_len=args.output_len, seed=seed)
        setup = virtual.Setup(
            engines=args.engines, source=source, duration_s=args.duration, warmup_s=args.warmup, model=MODEL
        )
        for qps in args.loads:
            for policy in args.policies:
                summary = run_once(setup, policy=POLICIES[policy], replicas=args.replicas, qps=qps, seed=seed)
                rows.append({"policy": policy, "qps": qps, "seed": seed, "summary": summary})
                print(
                    f"seed={seed} qps={qps:g} {policy}: ttft_p90={summary['ttft_s']['p90']:.3f} "
                    f"goodput={summary['goodput_rps']:.3g} hit={summary['prefix_hit_rate']:.3f} "
                    f"wall={summary['wall_s']}",
                    file=sys.stderr,
                    flush=True,
                )
                # After every run, so that a sweep cut short keeps what it measured.
                write(args, source, command=command, rows=rows)


if __name__ == "__main__":
    main()
