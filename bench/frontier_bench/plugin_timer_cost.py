"""What timing every plugin call costs (`inference_extension_plugin_duration_seconds`): CPU time of one
`schedule()` call per request, in three arms run side by side, interleaved, each in a process of its own on
a frozen export of `api/` and `picker/`:

- `baseline`: the picker as of `--baseline` (before plugin timing existed);
- `untimed`: the current picker with no timer set (the virtual-time cluster's case);
- `timed`: the current picker with the ext_proc server's timer (`metrics.PluginDurations`).

Fleet and prompts are `scheduling_cost`'s (16 KB prompts sharing 8 KB system prompts, fresh varied metrics),
at 100 endpoints, for the `gie-default` and `frontier` configs; each statistic is the median over rounds of
the per-arm median. Only the `schedule()` call is timed, by the thread's CPU clock.

Run: python -m frontier_bench.plugin_timer_cost --baseline REF --out bench/results
"""

import argparse
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from frontier_bench import scheduling_cost
from frontier_picker import endpoints, metrics
from frontier_picker.scheduling import config, types

PROFILES = ("gie-default", "frontier")
ARMS = ("baseline", "untimed", "timed")


def measure(profile: str, *, timed: bool, size: int, requests: int, warmup: int, seed: int) -> float:
    """Median CPU microseconds of `schedule()` over `requests` after `warmup`."""
    rng = random.Random(seed)
    now = 1000.0
    states = scheduling_cost.fleet(size, rng, now=now)
    scheduler = config.load(builtin=profile, seed=seed)
    if timed:
        scheduler.timer = metrics.PluginDurations()
    costs = []
    for i, text in enumerate(scheduling_cost.prompts(size, warmup + requests, rng)):
        now += 0.001
        for state in states:
            if now - state.metrics.updated_at > 0.05:
                state.metrics.updated_at = now
        request = types.Request(
            request_id=str(i), model="llama", target_model="llama", prompt=text, prompt_tokens=len(text) // 4
        )
        snapshot = endpoints.Snapshot(now=now, endpoints=states)
        began = time.thread_time_ns()
        scheduler.schedule(request, snapshot)
        if i >= warmup:
            costs.append(time.thread_time_ns() - began)
    return statistics.median(costs) / 1000


def run_worker(arm: str, profile: str, *, pythonpath: str, args: argparse.Namespace) -> float:
    command = [sys.executable, "-m", "frontier_bench.plugin_timer_cost", "--worker", f"{arm}:{profile}"]
    command += ["--requests", str(args.requests), "--size", str(args.size), "--seed", str(args.seed)]
    env = {**os.environ, "PYTHONPATH": pythonpath}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=1800)
    return float(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--baseline", required=False, help="git ref of the picker before plugin timing")
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        arm, profile = args.worker.split(":")
        warmup = min(20 * args.size, 2000)
        cost = measure(
            profile,
            timed=arm == "timed",
            size=args.size,
            requests=args.requests,
            warmup=warmup,
            seed=args.seed,
        )
        print(cost, flush=True)
        return
    if not args.baseline:
        parser.error("--baseline REF is required")
    command = shlex.join(["python", "-m", "frontier_bench.plugin_timer_cost", *(argv or sys.argv[1:])])
    scratch = Path(tempfile.mkdtemp(prefix="plugin-timer-cost-"))
    try:
        head = scheduling_cost.git_commit("HEAD")
        base = scheduling_cost.git_commit(args.baseline)
        trees = {
            "baseline": scheduling_cost.export(base, scratch / "baseline"),
            "current": scheduling_cost.export(head, scratch / "current"),
        }
        runs: dict[str, dict[str, list[float]]] = {p: {arm: [] for arm in ARMS} for p in PROFILES}
        for round_ in range(args.rounds):
            order = ARMS if round_ % 2 == 0 else ARMS[::-1]
            for profile in PROFILES:
                for arm in order:
                    tree = trees["baseline" if arm == "baseline" else "current"]
                    runs[profile][arm].append(run_worker(arm, profile, pythonpath=tree, args=args))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results = {
        "command": command,
        "machine": f"{platform.machine()} python {platform.python_version()} cpus={os.cpu_count()}",
        "sources": {"baseline": base, "current": head},
        "size": args.size,
        "requests": args.requests,
        "rounds": args.rounds,
        "runs": runs,
    }
    lines = [
        "# Plugin timing cost: `schedule()` CPU per request",
        "",
        f"`{command}`; {results['machine']}; {args.size} endpoints, {args.requests} requests per run, "
        f"{args.rounds} interleaved rounds (median of per-run medians, min-max in brackets). Baseline "
        f"{base[:10]}, current {head[:10]}.",
        "",
        "| config | baseline µs | untimed µs | timed µs | timed / baseline | untimed / baseline |",
        "|---|---|---|---|---|---|",
    ]
    for profile in PROFILES:
        arms = runs[profile]
        mid = {arm: statistics.median(arms[arm]) for arm in ARMS}

        def cell(arm: str, arms: dict[str, list[float]] = arms, mid: dict[str, float] = mid) -> str:
            return f"{mid[arm]:.1f} [{min(arms[arm]):.1f}-{max(arms[arm]):.1f}]"

        lines.append(
            f"| {profile} | {cell('baseline')} | {cell('untimed')} | {cell('timed')} | "
            f"{mid['timed'] / mid['baseline']:.3f} | {mid['untimed'] / mid['baseline']:.3f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "plugin_timer_cost.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "plugin_timer_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
