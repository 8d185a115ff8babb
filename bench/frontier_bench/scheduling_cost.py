"""Scheduling cost: CPU time of one `schedule()` call per request, and the prefix index's memory.

For 10, 100 and 1,000 endpoints, each profile schedules a stream of 16 KB prompts (256 prefix blocks, the
most the index hashes) against endpoints with varied fresh metrics. Prompts share 8 KB system prompts in
groups, so the prefix index is really matched and learned. Before timing, a warm-up fills the index and the
cost scorer's own accounting; during timing a window of in-flight requests completes in order, as in a
running picker. Only the `schedule()` call is timed, garbage collector on, by two clocks: the thread's CPU
time (`time.thread_time_ns`: the cost itself, blind to other processes preempting this one on a shared
machine) and wall time (`time.perf_counter_ns`: what a request waited, noise included).

Learning: `Index.add` alone for one prompt on one endpoint, in three patterns (`LEARN_CASES`): all new
hashes, half a shared system prompt, and all hashes learned before (a hot set over a quarter of the
capacity, which the generational index renews by re-queueing).

Memory: the prefix index at full GIE capacity (31,250 hashes per endpoint) is measured with tracemalloc at
100 endpoints filled to capacity, and at 1,000 endpoints filled to a tenth of capacity; the full
1,000-endpoint figure is the per-entry cost times 31.25 M entries (stated as an extrapolation), and with
`--full-1000` also measured (current tree only: minutes and ~6 GB under tracemalloc). Distinct
hashes, nothing shared between endpoints: the worst case. A second case learns every hash on two endpoints
(decode and prefill of disaggregated requests, numbered far apart). The resident-set growth of a process
that builds the same index without tracemalloc is stated beside it (tracemalloc counts requested bytes,
not the allocator's rounding).

Every measurement runs in its own process on a frozen export of `api/` and `picker/` (`git archive`), so
edits made during the run change nothing. With `--baseline REF` each row is also measured on the picker as
of REF (or, with `--baseline-paths`, on HEAD with only those paths taken from REF, to isolate one change),
interleaved row by row with the order alternating over `--rounds`, and the report gives the ratios; each
statistic is the median over rounds.

Run: python -m frontier_bench.scheduling_cost --out bench/results [--baseline REF --rounds 3]
"""

import argparse
import gc
import json
import os
import platform
import random
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from frontier_picker import endpoints
from frontier_picker.scheduling import config, types

# A baseline picker (`--baseline REF`) may predate the framework/plugins split (commit a115f7a).
try:
    from frontier_picker.scheduling.plugins import prefix
except ImportError:  # pragma: no cover - only with an older baseline on the path
    from frontier_picker.scheduling import prefix  # type: ignore[attr-defined,no-redef]

PROMPT_CHARS = 16 * 1024
PROFILES = ("frontier", "gie-default", "round-robin")
SIZES = (10, 100, 1000)
FULL = 31_250 - 31_250 % 256  # hashes per endpoint, whole 256-block prompts
TENTH = 3_125 - 3_125 % 256
LEARN_CASES = {  # what one learned 16 KB prompt (256 hashes) does to an endpoint's index
    "new": "256 new hashes into an endpoint at capacity (256 evictions)",
    "shared-half": "128 hashes of one of 50 system prompts + 128 new, at capacity",
    "all-renewed": "256 hashes of one of 40 prompts learned in turn (10,240 hot hashes, over a quarter "
    "of capacity), not at capacity",
}
MEMORY_CASES = (  # name, endpoints, hashes per endpoint, endpoints learning each hash
    ("full_100", 100, FULL, 1),
    ("tenth_1000", 1000, TENTH, 1),
    ("tenth_1000_pairs", 1000, TENTH, 2),
    ("full_1000", 1000, FULL, 1),  # with --full-1000 only, and not for the baseline (minutes, GBs)
)


def fleet(size: int, rng: random.Random, *, now: float) -> list[endpoints.EndpointState]:
    states = []
    for i in range(size):
        endpoint = endpoints.Endpoint(
            name=f"e{i}", address=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", port=8000
        )
        metrics = endpoints.EndpointMetrics(
            waiting=rng.randint(0, 4),
            running=rng.randint(0, 60),
            kv_usage=rng.uniform(0.0, 0.75),
            block_size=16,
            num_gpu_blocks=31_250,
            updated_at=now,
        )
        states.append(endpoints.EndpointState(endpoint=endpoint, metrics=metrics))
    return states


def prompts(size: int, count: int, rng: random.Random) -> list[str]:
    groups = max(8, size // 2)
    systems = [
        f"system prompt of group {g} ".ljust(PROMPT_CHARS // 2, chr(97 + g % 26)) for g in range(groups)
    ]
    out = []
    for i in range(count):
        question = f"question {i} {rng.random()} ".ljust(PROMPT_CHARS // 2, "q")
        out.append(systems[rng.randrange(groups)] + question)
    return out


def measure(profile: str, size: int, *, requests: int, warmup: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    now = 1000.0
    states = fleet(size, rng, now=now)
    try:
        scheduler = config.load(builtin=profile, seed=seed)
    except TypeError:  # a baseline before a115f7a named the built-in config `profile`
        scheduler = config.load(None, profile=profile, seed=seed)  # type: ignore[call-arg]
    texts = prompts(size, warmup + requests, rng)
    in_flight: deque[tuple[types.Request, types.Decision]] = deque()
    window = 2 * size
    cpu = np.empty(requests, dtype=np.int64)
    wall = np.empty(requests, dtype=np.int64)
    for i, text in enumerate(texts):
        now += 0.001
        for state in states:  # the scraper stamps fresh metrics every 50 ms of model time
            if now - state.metrics.updated_at > 0.05:
                state.metrics.updated_at = now
        request = types.Request(
            request_id=str(i), model="llama", target_model="llama", prompt=text, prompt_tokens=len(text) // 4
        )
        snapshot = endpoints.Snapshot(now=now, endpoints=states)
        began_cpu = time.thread_time_ns()
        began = time.perf_counter_ns()
        decision = scheduler.schedule(request, snapshot)
        ended = time.perf_counter_ns()
        ended_cpu = time.thread_time_ns()
        if i >= warmup:
            wall[i - warmup] = ended - began
            cpu[i - warmup] = ended_cpu - began_cpu
        in_flight.append((request, decision))
        if len(in_flight) > window:
            done, sent = in_flight.popleft()
            scheduler.on_completion(done, sent, types.Completion(endpoint=sent.primary, status=200))
    result: dict[str, Any] = {"profile": profile, "endpoints": size, "requests": requests}
    for clock, samples in (("cpu", cpu), ("wall", wall)):
        micros = samples / 1000.0
        for label, q in (("p50", 50), ("p99", 99), ("p999", 99.9)):
            result[f"{clock}_{label}_us"] = round(float(np.percentile(micros, q)), 1)
        result[f"{clock}_mean_us"] = round(float(micros.mean()), 1)
    return result


def build_index(size: int, per_endpoint: int, *, holders: int, seed: int) -> prefix.Index:
    """A prefix index with `per_endpoint` distinct hashes on each of `size` endpoints; with `holders` 2,
    each hash is learned by endpoint e and endpoint size-1-e (a decode and its prefill endpoint)."""
    rng = random.Random(seed)
    index = prefix.Index()
    keys = [f"10.0.{e // 256}.{e % 256}:8000" for e in range(size)]
    for e in range(0, size, holders):
        for _ in range(per_endpoint // 256):
            hashes = prefix.block_hashes(rng.randbytes(PROMPT_CHARS // 2).hex(), model="llama")
            index.add(keys[e], hashes, capacity=31_250)
            if holders == 2:
                index.add(keys[size - 1 - e], hashes, capacity=31_250)
    return index


def learn_cost(case: str, *, seed: int, learns: int = 1000) -> dict[str, Any]:
    """CPU time of `Index.add` for one 16 KB prompt on one endpoint (capacity 31,250), in a `LEARN_CASES`
    pattern, after a warm-up that puts the endpoint in that pattern's steady state."""
    rng = random.Random(seed)

    def prompt_hashes() -> list[int]:
        return prefix.block_hashes(rng.randbytes(PROMPT_CHARS // 2).hex(), model="llama")

    if case == "new":
        warmup = 130
        batches = [prompt_hashes() for _ in range(warmup + learns)]
    elif case == "shared-half":
        warmup = 300
        systems = [prompt_hashes()[:128] for _ in range(50)]
        batches = [systems[i % 50] + prompt_hashes()[128:] for i in range(warmup + learns)]
    else:
        warmup = 400
        hot = [prompt_hashes() for _ in range(40)]
        batches = [hot[i % 40] for i in range(warmup + learns)]
    index = prefix.Index()
    cpu = np.empty(learns, dtype=np.int64)
    for i, hashes in enumerate(batches):
        began = time.thread_time_ns()
        index.add("10.0.0.1:8000", hashes, capacity=31_250)
        if i >= warmup:
            cpu[i - warmup] = time.thread_time_ns() - began
    micros = cpu / 1000.0
    return {
        "case": case,
        "learns": learns,
        "size": index.size("10.0.0.1:8000"),
        "cpu_p50_us": round(float(np.percentile(micros, 50)), 1),
        "cpu_p99_us": round(float(np.percentile(micros, 99)), 1),
        "cpu_mean_us": round(float(micros.mean()), 1),
    }


def index_memory(size: int, per_endpoint: int, *, holders: int, seed: int) -> dict[str, Any]:
    """Bytes held by the index (tracemalloc), and the resident-set growth of this process building it."""
    gc.collect()
    tracemalloc.start()
    index = build_index(size, per_endpoint, holders=holders, seed=seed)
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    entries = index.entries()
    return {
        "endpoints": size,
        "holders_per_hash": holders,
        "entries": entries,
        "bytes": current,
        "bytes_per_entry": round(current / entries, 1),
    }


def index_rss(size: int, per_endpoint: int, *, holders: int, seed: int) -> dict[str, Any]:
    """Peak resident-set growth while building the index, without tracemalloc (a fresh process)."""
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    index = build_index(size, per_endpoint, holders=holders, seed=seed)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    return {"rss_bytes": grown, "rss_bytes_per_entry": round(grown / index.entries(), 1)}


def worker(spec: str, *, requests: int, seed: int) -> dict[str, Any]:
    """One measurement, run in a process of its own: `timing:PROFILE:SIZE`, `learn:CASE`, `memory:CASE` or
    `rss:CASE`."""
    kind, *rest = spec.split(":")
    if kind == "timing":
        profile, size = rest[0], int(rest[1])
        return measure(profile, size, requests=requests, warmup=min(20 * size, 4000), seed=seed)
    if kind == "learn":
        return learn_cost(rest[0], seed=seed)
    _, size, per_endpoint, holders = next(case for case in MEMORY_CASES if case[0] == rest[0])
    if kind == "memory":
        return index_memory(size, per_endpoint, holders=holders, seed=seed)
    return index_rss(size, per_endpoint, holders=holders, seed=seed)


def export(ref: str, where: Path, *, base: str | None = None, paths: list[str] | None = None) -> str:
    """Write `api/` and `picker/` as of `ref` under `where`; with `base`, those of `base` with only `paths`
    taken from `ref`. Returns the PYTHONPATH that runs them (with this checkout's bench/)."""
    where.mkdir(parents=True)

    def unpack(commit: str, *members: str) -> None:
        archive = subprocess.run(
            ["git", "archive", commit, *members], capture_output=True, check=True, timeout=60
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True, timeout=60)

    if base is not None and paths:
        unpack(base, "api", "picker")
        unpack(ref, *paths)
    else:
        unpack(ref, "api", "picker")
    bench_root = Path(__file__).resolve().parents[1]
    return os.pathsep.join([str(where / "api"), str(where / "picker"), str(bench_root)])


def run_worker(spec: str, *, pythonpath: str, requests: int, seed: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "frontier_bench.scheduling_cost", "--worker", spec]
    command += ["--requests", str(requests), "--seed", str(seed)]
    env = {**os.environ, "PYTHONPATH": pythonpath}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=1800)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each numeric statistic's median over rounds; labels from the first run."""
    merged = dict(runs[0])
    for field, value in runs[0].items():
        if isinstance(value, float):
            merged[field] = round(statistics.median(run[field] for run in runs), 1)
    return merged


def git_commit(ref: str) -> str:
    return subprocess.run(
        ["git", "rev-parse", ref], capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--host", default="", help="words on where it ran, for the report")
    parser.add_argument("--baseline", help="git ref of the picker to compare with, side by side")
    parser.add_argument("--baseline-paths", nargs="*", help="take only these paths from --baseline")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions of every row")
    parser.add_argument("--full-1000", action="store_true", help="also measure 1,000 full endpoints")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, requests=args.requests, seed=args.seed)), flush=True)
        return
    command = shlex.join(["python", "-m", "frontier_bench.scheduling_cost", *(argv or sys.argv[1:])])
    scratch = Path(tempfile.mkdtemp(prefix="scheduling-cost-"))
    try:
        head = git_commit("HEAD")
        trees = {"current": export(head, scratch / "current")}
        sources = {"current": head}
        if args.baseline:
            base = git_commit(args.baseline)
            trees["baseline"] = export(base, scratch / "baseline", base=head, paths=args.baseline_paths)
            only = f" ({' '.join(args.baseline_paths)}; the rest at {head})" if args.baseline_paths else ""
            sources["baseline"] = base + only
        results = collect(trees, args=args)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results.update(
        command=command,
        machine=f"{platform.machine()} python {platform.python_version()} cpus={os.cpu_count()}",
        host=args.host,
        prompt_chars=PROMPT_CHARS,
        rounds=args.rounds,
        sources=sources,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scheduling_cost.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "scheduling_cost.md").write_text(report(results))


def interleaved(specs: list[str], trees: dict[str, str], *, args: argparse.Namespace) -> dict[str, list[Any]]:
    """Each worker spec on every tree, `--rounds` times with the tree order alternating; medians."""
    names = list(trees)
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for spec in specs:
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for round_ in range(args.rounds):
            for name in names if round_ % 2 == 0 else reversed(names):
                runs[name].append(
                    run_worker(spec, pythonpath=trees[name], requests=args.requests, seed=args.seed)
                )
        for name in names:
            out[name].append(median_of(runs[name]))
            print(name, json.dumps(out[name][-1]), flush=True)
    return out


def collect(trees: dict[str, str], *, args: argparse.Namespace) -> dict[str, Any]:
    """Every timing row, learning case and memory case on every tree."""
    names = list(trees)
    timings = interleaved(
        [f"timing:{profile}:{size}" for size in SIZES for profile in PROFILES], trees, args=args
    )
    learning = interleaved([f"learn:{case}" for case in LEARN_CASES], trees, args=args)
    memory: dict[str, dict[str, Any]] = {name: {} for name in names}
    for case, *_ in MEMORY_CASES:
        if case == "full_1000" and not args.full_1000:
            continue
        for name in names if case != "full_1000" else ["current"]:
            traced = run_worker(f"memory:{case}", pythonpath=trees[name], requests=0, seed=args.seed)
            rss = run_worker(f"rss:{case}", pythonpath=trees[name], requests=0, seed=args.seed)
            memory[name][case] = {**traced, **rss}
            print(name, json.dumps(memory[name][case]), flush=True)
    for name in names:
        memory[name]["full_1000_extrapolated_bytes"] = int(
            memory[name]["tenth_1000"]["bytes_per_entry"] * 1000 * 31_250
        )
    parts = {
        name: {"timings": timings[name], "learning": learning[name], "prefix_index_memory": memory[name]}
        for name in names
    }
    out = parts["current"]
    if "baseline" in parts:
        out["baseline"] = parts["baseline"]
    return out


def ratio(new: float, old: float) -> str:
    return f"{new / old:.2f}" if old else "-"


def report(results: dict[str, Any]) -> str:
    sources = results["sources"]
    lines = [
        "# Scheduling cost per request (16 KB prompts)",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}{' (' + results['host'] + ')' if results.get('host') else ''}. "
        "Compare rows side by side, not across runs or machines.  ",
        f"Source: `{sources['current']}`"
        + (f"; baseline: `{sources['baseline']}`" if "baseline" in sources else "")
        + f". Rounds: {results['rounds']} (each statistic the median over rounds).",
        "",
        "| endpoints | profile | CPU p50 | CPU p99 | CPU p99.9 | CPU mean "
        "| wall p50 | wall p99 | wall p99.9 |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["timings"]:
        lines.append(
            f"| {row['endpoints']} | {row['profile']} | {row['cpu_p50_us']} | {row['cpu_p99_us']} | "
            f"{row['cpu_p999_us']} | {row['cpu_mean_us']} | {row['wall_p50_us']} | {row['wall_p99_us']} | "
            f"{row['wall_p999_us']} |"
        )
    lines += ["", "Times in µs per `schedule()` call.", ""]
    lines += ["Targets: p99 <= 1,000 µs at 100 endpoints, <= 5,000 µs at 1,000.", ""]
    baseline = results.get("baseline")
    if baseline:
        lines += [
            "## Against the baseline (same run, interleaved; ratio = current / baseline, < 1 is better)",
            "",
            "| endpoints | profile | CPU p50 base | CPU p50 now | ratio | CPU p99 base | CPU p99 now | ratio "
            "| CPU mean ratio |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for now, old in zip(results["timings"], baseline["timings"], strict=True):
            lines.append(
                f"| {now['endpoints']} | {now['profile']} | {old['cpu_p50_us']} | {now['cpu_p50_us']} | "
                f"{ratio(now['cpu_p50_us'], old['cpu_p50_us'])} | "
                f"{old['cpu_p99_us']} | {now['cpu_p99_us']} | "
                f"{ratio(now['cpu_p99_us'], old['cpu_p99_us'])} | "
                f"{ratio(now['cpu_mean_us'], old['cpu_mean_us'])} |"
            )
        lines += ["", "round-robin does not use the prefix index.", ""]
    lines += learning_report(results["learning"], baseline["learning"] if baseline else None)
    lines += memory_report(
        results["prefix_index_memory"], baseline["prefix_index_memory"] if baseline else None
    )
    return "\n".join(lines)


def learning_report(learning: list[dict[str, Any]], old: list[dict[str, Any]] | None) -> list[str]:
    lines = [
        "## Learning one 16 KB prompt on one endpoint (`Index.add`, capacity 31,250; µs CPU)",
        "",
        "| case | pattern | p50 | p99 | mean |"
        + (" p50 base | p50 ratio | p99 base | p99 ratio |" if old else ""),
        "|---|---|---:|---:|---:|" + ("---:|---:|---:|---:|" if old else ""),
    ]
    for i, row in enumerate(learning):
        line = (
            f"| {row['case']} | {LEARN_CASES[row['case']]} | {row['cpu_p50_us']} | {row['cpu_p99_us']} | "
            f"{row['cpu_mean_us']} |"
        )
        if old:
            before = old[i]
            line += (
                f" {before['cpu_p50_us']} | {ratio(row['cpu_p50_us'], before['cpu_p50_us'])} | "
                f"{before['cpu_p99_us']} | {ratio(row['cpu_p99_us'], before['cpu_p99_us'])} |"
            )
        lines.append(line)
    return [*lines, ""]


def memory_report(memory: dict[str, Any], old: dict[str, Any] | None) -> list[str]:
    def line(label: str, case: str) -> str:
        now = memory[case]
        text = (
            f"- {label}: {now['entries']:,} entries, {now['bytes'] / 2**20:.0f} MiB "
            f"({now['bytes_per_entry']} B/entry traced; "
            f"resident set grew {now['rss_bytes_per_entry']} B/entry)"
        )
        if old is not None and case in old:
            text += (
                f"; baseline {old[case]['bytes_per_entry']} B/entry traced, "
                f"{old[case]['rss_bytes_per_entry']} resident (ratio "
                f"{ratio(now['bytes_per_entry'], old[case]['bytes_per_entry'])})"
            )
        return text

    lines = [
        "## Prefix index memory (distinct hashes, worst case: nothing shared between endpoints)",
        "",
        line("100 endpoints at full capacity", "full_100"),
        line("1,000 endpoints at a tenth of capacity", "tenth_1000"),
        line("1,000 endpoints at a tenth of capacity, every hash on two endpoints", "tenth_1000_pairs"),
        *([line("1,000 endpoints at full capacity, measured", "full_1000")] if "full_1000" in memory else []),
        f"- 1,000 endpoints at full capacity (31.25 M entries): "
        f"{memory['full_1000_extrapolated_bytes'] / 2**30:.1f} GiB (extrapolated from the measured B/entry"
        + (f"; baseline {old['full_1000_extrapolated_bytes'] / 2**30:.1f} GiB)" if old is not None else ")"),
        "",
    ]
    return lines


if __name__ == "__main__":
    main()
