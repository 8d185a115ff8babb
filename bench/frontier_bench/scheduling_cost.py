"""Scheduling cost: CPU time of one `schedule()` call per request, and the prefix index's memory.

For 10, 100 and 1,000 endpoints, each profile schedules a stream of 16 KB prompts (256 prefix blocks, the
most the index hashes) against endpoints with varied fresh metrics. Prompts share 8 KB system prompts in
groups, so the prefix index is really matched and learned. Before timing, a warm-up fills the index and the
cost scorer's own accounting; during timing a window of in-flight requests completes in order, as in a
running picker. Only the `schedule()` call is timed, garbage collector on, by two clocks: the thread's CPU
time (`time.thread_time_ns`: the cost itself, blind to other processes preempting this one on a shared
machine) and wall time (`time.perf_counter_ns`: what a request waited, noise included).

Memory: the prefix index at full GIE capacity (31,250 hashes per endpoint) is measured with tracemalloc at
100 endpoints filled to capacity, and at 1,000 endpoints filled to a tenth of capacity; the full
1,000-endpoint figure is the per-entry cost times 31.25 M entries (stated as an extrapolation).

Run: python -m frontier_bench.scheduling_cost --out bench/results
"""

import argparse
import gc
import json
import os
import platform
import random
import shlex
import sys
import time
import tracemalloc
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from frontier_picker import endpoints
from frontier_picker.scheduling import config, prefix, types

PROMPT_CHARS = 16 * 1024
PROFILES = ("frontier", "gie-default", "round-robin")
SIZES = (10, 100, 1000)


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
    scheduler = config.load(None, profile=profile, seed=seed)
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


def index_memory(size: int, per_endpoint: int, seed: int) -> dict[str, Any]:
    """Bytes held by a prefix index with `per_endpoint` distinct hashes on each of `size` endpoints."""
    rng = random.Random(seed)
    gc.collect()
    tracemalloc.start()
    index = prefix.Index()
    for e in range(size):
        key = f"10.0.{e // 256}.{e % 256}:8000"
        for _ in range(per_endpoint // 256):
            index.add(key, [rng.getrandbits(64) for _ in range(256)], capacity=31_250)
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    entries = index.entries()
    return {
        "endpoints": size,
        "entries": entries,
        "bytes": current,
        "bytes_per_entry": round(current / entries, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--host", default="", help="words on where it ran, for the report")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "frontier_bench.scheduling_cost", *(argv or sys.argv[1:])])
    timings = []
    for size in SIZES:
        for profile in PROFILES:
            warmup = min(20 * size, 4000)
            result = measure(profile, size, requests=args.requests, warmup=warmup, seed=args.seed)
            print(json.dumps(result), flush=True)
            timings.append(result)
    full = index_memory(100, 31_250 - 31_250 % 256, args.seed)
    tenth = index_memory(1000, 3_125 - 3_125 % 256, args.seed)
    extrapolated = tenth["bytes_per_entry"] * 1000 * 31_250
    memory = {"full_100": full, "tenth_1000": tenth, "full_1000_extrapolated_bytes": int(extrapolated)}
    print(json.dumps(memory), flush=True)
    results = {
        "command": command,
        "machine": f"{platform.machine()} python {platform.python_version()} cpus={os.cpu_count()}",
        "host": args.host,
        "prompt_chars": PROMPT_CHARS,
        "timings": timings,
        "prefix_index_memory": memory,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scheduling_cost.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "scheduling_cost.md").write_text(report(results))


def report(results: dict[str, Any]) -> str:
    lines = [
        "# Scheduling cost per request (16 KB prompts)",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}{' (' + results['host'] + ')' if results.get('host') else ''}. "
        "Compare rows side by side, not across runs or machines.",
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
    lines += ["", "Times in µs per `schedule()` call."]
    memory = results["prefix_index_memory"]
    full, tenth = memory["full_100"], memory["tenth_1000"]
    lines += [
        "",
        "Targets: p99 <= 1,000 µs at 100 endpoints, <= 5,000 µs at 1,000.",
        "",
        "## Prefix index memory (distinct hashes, worst case: nothing shared between endpoints)",
        "",
        f"- 100 endpoints at full capacity: {full['entries']:,} entries, {full['bytes'] / 2**20:.0f} MiB "
        f"({full['bytes_per_entry']} B/entry, measured)",
        f"- 1,000 endpoints at a tenth of capacity: {tenth['entries']:,} entries, "
        f"{tenth['bytes'] / 2**20:.0f} MiB ({tenth['bytes_per_entry']} B/entry, measured)",
        f"- 1,000 endpoints at full capacity (31.25 M entries): "
        f"{memory['full_1000_extrapolated_bytes'] / 2**30:.1f} GiB (extrapolated from the measured B/entry)",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
