"""How fast the virtual-time cluster runs: engines x requests/s x simulated minutes against wall time.

The target (issue 3): 1,000 engines, 1,000 requests/s, 10 simulated minutes in under 10 minutes of wall
time. The workload is inference-perf's shared-prefix shape (`workloads.shared_prefix`: one group of
`--groups-per-engine` x engines system prompts, `--prompts-per-group` questions each, cycled) with open-loop
Poisson arrivals (`workloads.poisson_schedule`); the engines are H100s serving Llama-3.1-8B (calibrated step
model, KV cache sized from GPU memory). Each policy runs the identical arrival sequence; the wall time of
each is measured around `cluster.run` alone (workload generation excluded, engine construction included).

    python -m frontier_bench.vt_scale --engines 1000 --qps 1000 --duration 600 \\
        --policies round-robin frontier --out bench/results

Writes `vt_scale.json` and `vt_scale.md` (with the exact command) under `--out`.
"""

import argparse
import concurrent.futures
import json
import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from frontier_bench import workloads
from frontier_sim.vt import cluster

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
TARGET_WALL_S = 600.0


def arrivals(
    workload: workloads.Workload, schedule: workloads.Schedule, *, model: str
) -> Iterator[cluster.Arrival]:
    """The schedule's arrivals, each with the workload's next prompt (cycled), generated lazily."""
    for i, at in enumerate(schedule.offsets_s):
        prompt = workload.prompt_for(i)
        messages = [{"role": role, "content": content} for role, content in prompt.messages]
        yield cluster.Arrival(
            at=float(at), model=model, prompt=prompt.prompt, messages=messages, max_tokens=prompt.max_tokens
        )


def measure(args: argparse.Namespace, policy: str) -> dict[str, Any]:
    workload = workloads.shared_prefix(
        num_groups=max(1, int(args.engines * args.groups_per_engine)),
        num_prompts_per_group=args.prompts_per_group,
        system_prompt_len=args.system_prompt_len,
        question_len=args.question_len,
        output_len=args.output_len,
        seed=args.seed,
    )
    schedule = workloads.poisson_schedule(qps=args.qps, duration_s=args.duration, seed=args.seed)
    specs = cluster.engines(args.engines, args=["--model", MODEL])
    began = time.perf_counter()
    results = cluster.run(
        engines=specs,
        workload=arrivals(workload, schedule, model=MODEL),
        policy=policy,
        max_wall_s=args.max_wall,
    )
    wall = time.perf_counter() - began
    summary = results.summary()
    simulated = results.stopped_at if results.stopped_at is not None else summary.get("span_s", 0.0)
    return {
        "policy": policy,
        "engines": args.engines,
        "qps": args.qps,
        "duration_s": args.duration,
        "requests": len(schedule),
        "wall_s": wall,
        "simulated_s": simulated,
        "finished": results.stopped_at is None,
        "model_s_per_wall_s": simulated / wall if wall > 0 else None,
        "engine_events": results.events,
        "engine_steps": results.steps,
        "meets_target": bool(
            args.engines >= 1000
            and args.qps >= 1000
            and args.duration >= 600
            and results.stopped_at is None
            and wall < TARGET_WALL_S
        ),
        "summary": summary,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Virtual-time cluster: simulation speed",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}  ",
        f"Workload: {report['workload']}",
        "",
        f"Target: 1,000 engines x 1,000 requests/s x 600 simulated s in under {TARGET_WALL_S:.0f} s of wall "
        "time.",
        "",
        "| policy | engines | req/s | sim s | requests | wall s | sim s / wall s | engine steps "
        "| core events | TTFT p50 ms | TTFT p90 ms | TPOT p50 ms | hit rate | out tok/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        s = row["summary"]
        simulated = (
            f"{row['duration_s']:g}"
            if row["finished"]
            else f"{row['simulated_s']:.0f} of {row['duration_s']:g}"
        )
        lines.append(
            f"| {row['policy']} | {row['engines']} | {row['qps']:g} | {simulated} | "
            f"{row['requests']:,} | {row['wall_s']:.1f} | {row['model_s_per_wall_s']:.2f} | "
            f"{row['engine_steps']:,} | {row['engine_events']:,} | {s['ttft_p50_s'] * 1e3:.1f} | "
            f"{s['ttft_p90_s'] * 1e3:.1f} | {s['tpot_p50_s'] * 1e3:.2f} | {s['prefix_hit_rate']:.3f} | "
            f"{s['output_tokens_per_s']:,.0f} |"
        )
    lines += [
        "",
        "Engine steps: steps the engines took in model time; core events: the steps and decode runs the "
        "simulator processed (a run of plain decode steps is one event, see "
        "`frontier_sim.vt.virtual_engine`). "
        "`sim s` reads `X of Y` where `--max-wall` stopped a run after X simulated seconds; its latency "
        "columns then cover the requests finished by then.",
        "",
    ]
    if report.get("jobs", 1) > 1:
        lines += [
            f"Policies ran concurrently, one process each ({report['jobs']} at a time), on the machine "
            "above.",
            "",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--engines", type=int, default=1000)
    parser.add_argument("--qps", type=float, default=1000.0)
    parser.add_argument("--duration", type=float, default=600.0, help="simulated seconds of arrivals")
    parser.add_argument("--policies", nargs="+", default=["round-robin", "frontier"])
    parser.add_argument("--groups-per-engine", type=float, default=1.0)
    parser.add_argument("--prompts-per-group", type=int, default=16)
    parser.add_argument("--system-prompt-len", type=int, default=1000)
    parser.add_argument("--question-len", type=int, default=200)
    parser.add_argument("--output-len", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write vt_scale.json and vt_scale.md here")
    parser.add_argument("--jobs", type=int, default=1, help="policies run at once, one process each")
    parser.add_argument("--max-wall", type=float, default=None, help="stop a run after this many wall s")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    command = shlex.join(
        ["python", "-m", "frontier_bench.vt_scale", *(sys.argv[1:] if argv is None else argv)]
    )
    rows = []
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(measure, args, policy) for policy in args.policies]
        for future in futures:
            row = future.result()
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    report = {
        "command": command,
        "jobs": min(max(1, args.jobs), len(args.policies)),
        "machine": f"{platform.machine()} python {platform.python_version()} cpus={os.cpu_count()}",
        "workload": (
            f"shared-prefix, {max(1, int(args.engines * args.groups_per_engine))} groups x "
            f"{args.prompts_per_group} prompts, {args.system_prompt_len} + {args.question_len} tokens in, "
            f"{args.output_len} out, Poisson arrivals, seed {args.seed}; H100 engines serving {MODEL}"
        ),
        "rows": rows,
    }
    text = markdown(report)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "vt_scale.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "vt_scale.md").write_text(text)


if __name__ == "__main__":
    main()
