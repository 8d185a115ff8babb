"""`python -m frontier_bench.misspecified`: fleets the picker's prior fit (an H100 running a Llama-3.1-8B
shape) does not describe, the picker told nothing about them, in virtual time.

Fleets (each `ENGINES` engines of the cluster simulator): the control (`h100-prior`, the engines the
prior describes), an H200, FP8 weights, a 70B-class model on 4 GPUs
(tensor parallel), a fleet 2x slower (a 16B-parameter model: twice the per-token prefill and per-sequence
decode work), and a mixed pool of H100 and H200 engines. Arms:

- `frontier`: the frontier profile learning each endpoint's prefill and decode speed from completions
  (`speedLearningRate: 0.05`, the built-in profile's default, see `cost.SPEED_RATE`);
- `frontier-told`: the cost model *told* the fleet's true step-time coefficients (the simulator's own model
  of those engines), learning off: an oracle arm no deployment has. The mixed pool's engines differ and a
  scorer takes one set, so there it is told their geometric mean;
- `frontier-unlearned`: learning off (`speedLearningRate: 0`), the prior fit as given;
- `gie-default`, `round-robin`.

Workloads (`--workload`): the shared-prefix shape (`misspecified.*`), and unique prompts
(`misspecified-no-sharing.*`), where a mispriced fleet hurt most before learning. Per arm, fleet and arrival
draw, the peak goodput by knee search (`knee.py`); the table gives the median and range over the draws,
and per fleet the learning arm's peak over the told arm's (the target: >= 0.9) and whether each beats
`gie-default` (ranges not overlapping).
"""

import argparse
import dataclasses
import math
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from typing import Any, Final

from frontier_bench import harness, knee, report, virtual, workloads
from frontier_picker.scheduling import config
from frontier_sim import fleet, settings
from frontier_sim.vt import cluster

MODEL: Final = "meta-llama/Llama-3.1-8B-Instruct"
ENGINES: Final = 4
SYSTEM_PROMPT_LEN: Final = 6000
QUESTION_LEN: Final = 1200
UNIQUE_PROMPT_LEN: Final = 7200
OUTPUT_LEN: Final = 100
# A run measures at least this many requests after at least this many warm-up arrivals.
MEASURED_REQUESTS: Final = 100
WARMUP_REQUESTS: Final = 30
ARMS: Final = ("frontier", "frontier-told", "frontier-unlearned", "gie-default", "round-robin")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Fleet:
    """A fleet: its name and the engine flags of each part (parts of a mixed pool differ)."""

    name: str
    parts: tuple[tuple[str, ...], ...]

    def specs(self, engines: int) -> list[fleet.EngineSpec]:
        """`engines` engines split evenly over the parts, each part on its own addresses and names."""
        out: list[fleet.EngineSpec] = []
        for i, flags in enumerate(self.parts):
            count = engines // len(self.parts) + (1 if i < engines % len(self.parts) else 0)
            out += cluster.engines(
                count,
                args=["--model", MODEL, "--name-prefix", f"part{i}", *flags],
                base_address=f"10.0.{i}.1",
            )
        return out


FLEETS: Final = (
    # The control: the fleet the prior fit describes (told = unlearned), what learning costs where it has
    # nothing to correct.
    Fleet(name="h100-prior", parts=((),)),
    Fleet(name="h200", parts=(("--sim-gpu", "h200"),)),
    Fleet(name="fp8", parts=(("--quantization", "fp8"),)),
    Fleet(name="70b-tp4", parts=(("--sim-params", "70.6e9", "--tensor-parallel-size", "4"),)),
    Fleet(name="2x-slower", parts=(("--sim-params", "16e9"),)),
    Fleet(name="mixed-h100-h200", parts=((), ("--sim-gpu", "h200"))),
)


def true_fit(specs: Sequence[fleet.EngineSpec]) -> dict[str, float]:
    """The cost model's six coefficients for `specs` as the simulator prices them (tensor-parallel
    communication folded into the fixed and per-token terms); a geometric mean over unlike engines."""
    models = [settings.step_model(spec.config) for spec in specs]
    values = {
        "p0Seconds": [m.p0 + m.comm_fixed for m in models],
        "p1SecondsPerToken": [m.p1 + m.comm_per_token for m in models],
        "p2SecondsPerTokenContext": [m.p2 for m in models],
        "d0Seconds": [m.d0 + m.comm_fixed for m in models],
        "d1SecondsPerSequence": [m.d1 + m.comm_per_token for m in models],
        "d2SecondsPerContextToken": [m.d2 for m in models],
    }
    return {key: math.exp(statistics.fmean(math.log(v) for v in vs)) for key, vs in values.items()}


def frontier_config(**parameters: float) -> str:
    """The built-in `frontier` config with these predicted-ttft-scorer parameters."""
    given = ", ".join(f"{key}: {value!r}" for key, value in parameters.items())
    return config.builtin_text("frontier").replace(
        "- type: predicted-ttft-scorer", "- type: predicted-ttft-scorer\n  parameters: {" + given + "}"
    )


def arm_config(arm: str, specs: Sequence[fleet.EngineSpec]) -> str | None:
    """The EndpointPickerConfig text of `arm` (None: a built-in policy of that name)."""
    if arm == "frontier-told":
        return frontier_config(**true_fit(specs), speedLearningRate=0.0)
    if arm == "frontier-unlearned":
        return frontier_config(speedLearningRate=0.0)
    if arm == "frontier":
        return frontier_config(speedLearningRate=0.05)
    return None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Shape:
    """A workload of the benchmark: its name, what it is, and the uncached prompt tokens a request brings
    (where the knee search starts)."""

    name: str
    description: str
    fresh_tokens: int
    source: workloads.Workload


SHAPES: Final = {
    shape.name: shape
    for shape in (
        Shape(
            name="shared-prefix",
            description=f"the shared-prefix shape: {workloads.llmd_groups(ENGINES)} groups x 5 requests per"
            f" block, {SYSTEM_PROMPT_LEN:,}-token system prompt, a fresh {QUESTION_LEN:,}-token question"
            f" per request, {OUTPUT_LEN}-token output",
            fresh_tokens=QUESTION_LEN,
            source=workloads.shared_prefix(
                num_groups=workloads.llmd_groups(ENGINES),
                num_prompts_per_group=5,
                system_prompt_len=SYSTEM_PROMPT_LEN,
                question_len=QUESTION_LEN,
                output_len=OUTPUT_LEN,
                seed=0,
            ),
        ),
        # Where a mispriced fleet hurt most before learning: unique prompts, nothing to keep affinity to,
        # the fluid queue draining on the picker's clock.
        Shape(
            name="no-sharing",
            description=f"no sharing: unique {UNIQUE_PROMPT_LEN:,}-token prompts, {OUTPUT_LEN}-token output",
            fresh_tokens=UNIQUE_PROMPT_LEN,
            source=workloads.no_sharing(prompt_len=UNIQUE_PROMPT_LEN, output_len=OUTPUT_LEN, seed=0),
        ),
    )
}


def ladder_start(specs: Sequence[fleet.EngineSpec], fresh_tokens: int) -> float:
    """A first load near 0.6 of the fleet's capacity to prefill each request's uncached tokens alone, on
    the ladder's 1.25 steps."""
    p1 = true_fit(specs)["p1SecondsPerToken"]
    capacity = len(specs) / (p1 * fresh_tokens)
    return 1.25 ** round(math.log(capacity * 0.6, 1.25))


def run(
    f: Fleet, seed: int, shape: Shape, *, duration_s: float, warmup_s: float
) -> tuple[list[report.Row], list[dict[str, Any]]]:
    """Every arm's knee search on fleet `f` for arrival draw `seed`: the runs as rows, the searches'
    results."""
    rows: list[report.Row] = []
    found: list[dict[str, Any]] = []
    source = shape.source
    specs = f.specs(ENGINES)
    ladder = knee.Ladder(
        start=ladder_start(specs, shape.fresh_tokens), factor=1.25, tolerance=0.15, max_loads=6
    )
    setup = virtual.Setup(
        engines=len(specs),
        source=source,
        duration_s=duration_s,
        warmup_s=warmup_s,
        model=MODEL,
        label=f"-{f.name}",
    )
    for arm in ARMS:
        text = arm_config(arm, specs)

        def measure(qps: float, arm: str = arm, text: str | None = text) -> knee.Point:
            # Fresh engines for every run: empty caches, nothing carried between loads. A slow fleet's
            # knee is at a few requests/s: the run lasts until enough requests were measured.
            timed = dataclasses.replace(
                setup,
                duration_s=max(setup.duration_s, MEASURED_REQUESTS / qps),
                warmup_s=max(setup.warmup_s, WARMUP_REQUESTS / qps),
            )
            row = virtual.run_once(
                timed, policy=arm, qps=qps, seed=seed, scheduler_config=text, specs=f.specs(ENGINES)
            )
            rows.append(row)
            s = row.summary
            return knee.Point(qps=qps, goodput_rps=s["goodput_rps"], good_fraction=s["good_fraction"])

        result = knee.search(measure, ladder)
        workload = f"{source.name}@{len(specs)}-{f.name}"
        found.append({"policy": arm, "workload": workload, "seed": seed, **dataclasses.asdict(result)})
        print(
            f"event=misspecified_knee fleet={f.name} arm={arm} seed={seed}"
            f" peak={result.peak_goodput_rps:.3g}",
            file=sys.stderr,
            flush=True,
        )
    return rows, found


def summary_markdown(knees: Sequence[dict[str, Any]]) -> str:
    """Per fleet: each arm's median peak, learning over told, and learning against gie-default."""
    by: dict[tuple[str, str], list[float]] = {}
    for k in knees:
        by.setdefault((k["workload"], k["policy"]), []).append(k["peak_goodput_rps"])
    lines = [
        "| fleet | frontier (learning) | told (oracle arm) | unlearned | gie-default | round-robin"
        " | learning / told (median, range over draws) | learning vs gie-default | told vs gie-default |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for workload in sorted({w for w, _ in by}):

        def cell(arm: str, workload: str = workload) -> str:
            values = by.get((workload, arm), [])
            return f"{statistics.median(values):.3g} [{min(values):.3g}-{max(values):.3g}]" if values else "-"

        learning = by.get((workload, "frontier"), [])
        told = by.get((workload, "frontier-told"), [])
        gie = by.get((workload, "gie-default"), [])
        ratios = sorted(a / b for a, b in zip(learning, told, strict=True) if b > 0)
        ratio = f"{statistics.median(ratios):.2f} [{ratios[0]:.2f}-{ratios[-1]:.2f}]" if ratios else "-"

        def versus(mine: list[float], theirs: list[float]) -> str:
            if not mine or not theirs:
                return "-"
            if min(mine) > max(theirs):
                return "win"
            if max(mine) < min(theirs):
                return "loss"
            return "tie (ranges overlap)"

        lines.append(
            f"| {workload} | {cell('frontier')} | {cell('frontier-told')} | {cell('frontier-unlearned')}"
            f" | {cell('gie-default')} | {cell('round-robin')} | {ratio} | {versus(learning, gie)}"
            f" | {versus(told, gie)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m frontier_bench.misspecified", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=16.0, help="measured model seconds per run")
    parser.add_argument("--warmup", type=float, default=8.0, help="warm-up model seconds per run")
    parser.add_argument("--fleets", nargs="*", default=[f.name for f in FLEETS])
    parser.add_argument(
        "--workload",
        choices=list(SHAPES),
        default="shared-prefix",
        help="results go to misspecified.* for shared-prefix, misspecified-<workload>.* otherwise",
    )
    parser.add_argument("--jobs", type=int, default=1, help="(fleet, draw) searches in parallel processes")
    args = parser.parse_args(argv)
    command = shlex.join(
        ["python", "-m", "frontier_bench.misspecified", *(argv if argv is not None else sys.argv[1:])]
    )
    fleets = [f for f in FLEETS if f.name in args.fleets]
    started = time.monotonic()
    source = harness.source()
    rows: list[report.Row] = []
    knees: list[dict[str, Any]] = []
    # One task per (fleet, draw), draws in order: the report is rewritten as each finishes, so a run cut
    # short still leaves every finished draw on disk.
    tasks = [(f, seed) for seed in range(args.seeds) for f in fleets]
    with futures.ProcessPoolExecutor(max_workers=args.jobs) as pool:
        pending = [
            pool.submit(run, f, seed, SHAPES[args.workload], duration_s=args.duration, warmup_s=args.warmup)
            for f, seed in tasks
        ]
        for task in futures.as_completed(pending):
            task_rows, task_knees = task.result()
            rows += task_rows
            knees += task_knees
            write(rows, knees, args=args, fleets=fleets, command=command, started=started, source=source)


def write(
    rows: list[report.Row],
    knees: list[dict[str, Any]],
    *,
    args: argparse.Namespace,
    fleets: Sequence[Fleet],
    command: str,
    started: float,
    source: dict[str, str],
) -> None:
    """The results so far as `misspecified.{json,md,png}` under `args.out`."""
    summary = summary_markdown(knees)
    meta = {
        "title": "Virtual time: mis-specified fleets, the picker told nothing (peak goodput by knee search)",
        "notes": [
            f"{ENGINES} virtual engines per fleet; fleets: "
            + "; ".join(
                f"{f.name}: {' + '.join(' '.join(p) or 'h100 (default)' for p in f.parts)}" for f in fleets
            ),
            SHAPES[args.workload].description,
            f"{args.warmup:g} s (at least {WARMUP_REQUESTS} arrivals) of warm-up left out, then"
            f" {args.duration:g} s (at least {MEASURED_REQUESTS} arrivals) measured (model time)",
            "loads by knee search per arm and draw: a 1.25x ladder from 0.6 of the fleet's capacity to"
            " prefill each request's uncached tokens up to the first load where goodput < 90% of offered"
            " or SLO attainment < 90%, then bisection to 15% (at most 6 loads)",
            f"{len(knees) // len(ARMS)} of {args.seeds * len(fleets)} (fleet, arrival draw) searches done;"
            " medians with min-max ranges over the draws",
            "frontier-told is an oracle arm: told the simulator's own coefficients of those engines (the"
            " mixed pool: their geometric mean), learning off",
            "ITL is not recorded in virtual time: the ITL column repeats TPOT",
        ],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_s": round(time.monotonic() - started, 1),
        "source": source,
        "draws_done": len(knees) // len(ARMS),
        "knees": knees,
        "summary_markdown": summary,
    }
    name = "misspecified" if args.workload == "shared-prefix" else f"misspecified-{args.workload}"
    paths = report.write(rows, args.out, name=name, command=command, meta=meta)
    md = paths["md"]
    md.write_text(md.read_text() + "\n## Summary per fleet\n\n" + summary + "\n")
    print(summary, flush=True)


if __name__ == "__main__":
    main()
