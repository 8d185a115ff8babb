"""`frontier-bench all`: every sweep whose results are committed under bench/results/.

Virtual-time sweeps (the cluster simulator, picker code in-process, and the perfect-information oracle):
- `virtual-16`, `virtual-128`, `virtual-1024`: the llm-d study shape (1,000-token outputs) scaled to 16, 128
  and 1,024 engines; the full ladder at 16, one load at the larger sizes (their wall time is minutes a run);
- `virtual-16-multi-turn-chat`, `virtual-16-long-documents`, `virtual-16-no-sharing`,
  `virtual-16-mixed-lengths`, `virtual-16-mixed-lengths-eos`: the other workloads;
- `virtual-6-shared-prefix`: the real-time shared-prefix fleet and shape, each policy's peak goodput found
  by search (`knee.py`), up to and past its knee; `virtual-6-shared-prefix-bursty-cv3` the same with bursty
  arrivals (Gamma gaps, CV 3);
- `tiers`: tier routing (`frontier_bench.tiers`): cost against quality, and spill-over under a burst;
- `pd`: prefill/decode disaggregation against aggregated serving on the same GPUs (`frontier_bench.pd`);
- `misspecified`: fleets the cost model's prior does not describe (H200, FP8, 70B, 2x slower, mixed), the
  picker told nothing, learning against the arm told the truth (`frontier_bench.misspecified`);
- `overload`: flow control past capacity, three priority classes and two tenants (`frontier_bench.overload`).
- `pd-realtime`: prefill/decode disaggregation through Envoy, picker and sidecars in real time
  (`frontier_bench.pd_realtime`).
- `gie-mode`: the real GIE EPP v1.5.0 (Go) beside Frontier's picker, Envoy in each mode, each arrival
  shape, all finding the same engines through one InferencePool on the local control plane
  (`frontier_bench.gie_mode`).

Real-time sweeps (6 simulated engines, real Envoy, the real picker, real sglang-router):
- `shared-prefix`: the llm-d study's input shape, 100-token outputs, all six policies up to saturation;
- `no-sharing`: the control, four policies.
Each runs the pickers in both Envoy modes (`cheap`, and GIE's full-duplex `gie`), with Poisson and bursty
(Gamma gaps, CV 3) arrivals, in 2 interleaved rounds (`RealTime`; `--envoy-modes`, `--arrival-cvs`,
`--rounds`, and `--loads`, `--duration`, `--warmup` to shorten them).

Loads are in model-time requests/s; each results file carries the exact command. `--only NAME...` runs a
subset; `--quick` shortens every run (to try the pipeline, not to commit).
"""

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

from frontier_bench import (
    frontdoors,
    gie_mode,
    harness,
    knee,
    misspecified,
    overload,
    pd,
    pd_realtime,
    progress,
    report,
    sweep,
    tiers,
    virtual,
    workloads,
)

ENGINES = 6
TIME_SCALE = 2.0
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
# Real-time runs keep the workloads' input shapes but generate 100 tokens per request: every token is an SSE
# chunk through Envoy and the Python client, and 1,000-token answers at the loads that saturate 6 engines
# would make the 2-core machine, not the engines, the bottleneck (or take hours at a slower time scale).
OUTPUT_LEN = 100


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RealTime:
    """How every real-time suite runs: the Envoy modes its pickers are called in, its arrival shapes (Gamma
    CVs; 1 is Poisson), its interleaved rounds; and, to shorten a run, loads and model seconds to use
    instead of the suite's own."""

    envoy_modes: tuple[str, ...] = frontdoors.ENVOY_MODES
    arrival_cvs: tuple[float, ...] = (1.0, 3.0)
    rounds: int = 2
    loads: tuple[float, ...] = ()
    duration_s: float | None = None
    warmup_s: float | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Suite:
    name: str
    title: str
    plan: sweep.Plan
    notes: tuple[str, ...] = ()

    def plans(self, real_time: RealTime) -> list[sweep.Plan]:
        """The suite's plan once per arrival shape, run as `real_time` says."""
        plan = self.plan
        return [
            dataclasses.replace(
                plan,
                envoy_modes=real_time.envoy_modes,
                arrival_cv=cv,
                rounds=real_time.rounds,
                loads=real_time.loads or plan.loads,
                duration_s=plan.duration_s if real_time.duration_s is None else real_time.duration_s,
                warmup_s=plan.warmup_s if real_time.warmup_s is None else real_time.warmup_s,
            )
            for cv in real_time.arrival_cvs
        ]


def shared_prefix_6() -> workloads.SharedPrefix:
    """The real-time shared-prefix shape: the llm-d study's inputs scaled to 6 engines, 100-token outputs."""
    return workloads.shared_prefix(
        num_groups=workloads.llmd_groups(ENGINES),
        num_prompts_per_group=5,
        system_prompt_len=6000,
        question_len=1200,
        output_len=OUTPUT_LEN,
        seed=0,
    )


def suites(*, quick: bool) -> list[Suite]:
    duration = 10.0 if quick else 30.0
    short = 10.0 if quick else 20.0
    warmup = 5.0 if quick else 10.0
    policies = frontdoors.ALL_POLICIES
    fleet_note = f"{ENGINES} simulated H100 engines (Llama-3.1-8B shape), time scale {TIME_SCALE:g}"
    shared = shared_prefix_6()
    return [
        Suite(
            name="shared-prefix",
            title="Shared prefix (llm-d study input shape, scaled to 6 engines): policies through Envoy",
            plan=sweep.Plan(
                workload=shared,
                # random, the weakest baseline, is left out to keep the sweep near half an hour
                policies=tuple(p for p in policies if p != "random"),
                loads=(10.0, 25.0, 40.0, 55.0),
                duration_s=duration,
                warmup_s=warmup,
            ),
            notes=(
                fleet_note,
                f"{shared.params['num_groups']} groups x 5 prompts (150 x 5 scaled by 6/8 engines),"
                f" 6,000-token system prompt, 1,200-token question, {OUTPUT_LEN}-token output"
                " (the study's 1,000 shortened for real time on 2 cores)",
            ),
        ),
        Suite(
            name="no-sharing",
            title="No sharing (control): policies through Envoy",
            plan=sweep.Plan(
                workload=workloads.no_sharing(prompt_len=7200, output_len=OUTPUT_LEN, seed=0),
                policies=policies,
                loads=(10.0, 20.0),
                duration_s=short,
                warmup_s=warmup,
            ),
            notes=(fleet_note, f"unique 7,200-token prompts, {OUTPUT_LEN}-token output"),
        ),
    ]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class VirtualSuite:
    """A virtual-time sweep at one fleet size: the llm-d study shape (1,000-token outputs) or `workload`."""

    engines: int
    policies: tuple[str, ...]
    duration_s: float
    warmup_s: float
    seeds: int  # arrival draws per (policy, load): the tables show their median and range
    loads_per_engine: tuple[float, ...] = ()
    # the knee search instead of the fixed loads: per policy and draw, up the ladder to past its knee
    ladder: knee.Ladder | None = None
    workload: workloads.Workload | None = None
    description: str = ""
    arrival_cv: float = 1.0  # 1: Poisson; more: bursty arrivals (Gamma gaps with this CV)

    @property
    def name(self) -> str:
        bursty = f"-bursty-cv{self.arrival_cv:g}" if self.arrival_cv != 1.0 else ""
        return f"virtual-{self.engines}" + (f"-{self.workload.name}" if self.workload else "") + bursty


def virtual_suites(*, quick: bool) -> list[VirtualSuite]:
    scale = 0.5 if quick else 1.0
    # One run's p90 swings with the arrival draw (several-fold near saturation): three draws per cell.
    draws = 1 if quick else 3
    small = 16
    return [
        VirtualSuite(
            engines=small,
            policies=virtual.POLICIES,
            loads_per_engine=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0),
            duration_s=30.0 * scale,
            warmup_s=10.0,
            seeds=draws,
        ),
        # The larger fleets cost minutes of wall time per run (about 25 ms per request at 128 engines on the
        # shared 2-core machine, far more once round-robin saturates): one load below saturation, and the
        # telling policies.
        VirtualSuite(
            engines=128,
            policies=("round-robin", "gie-default", "frontier", "oracle"),
            loads_per_engine=(2.0,),
            duration_s=20.0 * scale,
            warmup_s=10.0,
            seeds=draws,
        ),
        VirtualSuite(
            engines=1024,
            policies=("round-robin", "frontier", "oracle"),
            loads_per_engine=(2.0,),
            duration_s=5.0 * scale,
            warmup_s=5.0,
            seeds=draws,
        ),
        VirtualSuite(
            engines=small,
            policies=virtual.POLICIES,
            loads_per_engine=(2.0, 4.0, 6.0),
            duration_s=30.0 * scale,
            warmup_s=10.0,
            seeds=draws,
            workload=workloads.multi_turn_chat(
                num_sessions=8 * small, turns=5, system_prompt_len=2000, user_len=200, output_len=200, seed=0
            ),
            description="128 sessions x 5 turns, 2,000-token system prompt, 200-token user turns,"
            " 200-token output",
        ),
        VirtualSuite(
            engines=small,
            policies=virtual.POLICIES,
            loads_per_engine=(2.0, 4.0, 6.0),
            duration_s=30.0 * scale,
            warmup_s=10.0,
            seeds=draws,
            workload=workloads.long_documents(
                num_documents=2 * small,
                document_len=16000,
                question_len=100,
                output_len=200,
                seed=0,
            ),
            description="32 documents of 16,000 tokens, Zipf(1) popularity, 100-token questions,"
            " 200-token output",
        ),
        VirtualSuite(
            engines=small,
            policies=virtual.POLICIES,
            loads_per_engine=(2.0, 4.0, 6.0),
            duration_s=30.0 * scale,
            warmup_s=10.0,
            seeds=draws,
            workload=workloads.no_sharing(prompt_len=2000, output_len=200, seed=0),
            description="unique 2,000-token prompts, 200-token output (the control)",
        ),
        # The second: the same draws as clients send them, one max_tokens (1,000) for all and answers
        # ending at EOS, so the picker must learn how much of max_tokens answers use.
        *(
            VirtualSuite(
                engines=small,
                policies=virtual.POLICIES,
                loads_per_engine=(3.0, 6.0, 9.0),
                duration_s=30.0 * scale,
                warmup_s=10.0,
                seeds=draws,
                workload=workloads.mixed_lengths(
                    median_prompt_len=1500, median_output_len=150, ends_at_eos=eos, seed=0
                ),
                description="unique prompts, log-normal lengths: prompts median 1,500 tokens (sigma 0.9, up"
                " to 16,000), outputs median 150 (sigma 0.8, up to 1,000)"
                + (", ending at EOS, every request asking max_tokens 1,000" if eos else ""),
            )
            for eos in (False, True)
        ),
        # The real-time shared-prefix sweep's fleet and shape, carried up to and past each policy's own knee
        # by search (fresh 1,200-token questions make it prefill-bound: `frontier` holds ~60 req/s).
        VirtualSuite(
            engines=ENGINES,
            policies=virtual.POLICIES,
            ladder=knee.Ladder(start=40.0, factor=1.25, tolerance=0.05, max_loads=10),
            duration_s=30.0 * scale,
            warmup_s=10.0,
            seeds=draws,
            workload=shared_prefix_6(),
            description=f"{workloads.llmd_groups(ENGINES)} groups x 5 requests per block, 6,000-token system"
            f" prompt, a fresh 1,200-token question per request, {OUTPUT_LEN}-token output (the real-time"
            " shared-prefix shape)",
        ),
        # The same, with bursty arrivals (Gamma gaps, CV 3): real gateways see bursts, not Poisson.
        VirtualSuite(
            engines=ENGINES,
            policies=virtual.POLICIES,
            ladder=knee.Ladder(start=30.0, factor=1.25, tolerance=0.05, max_loads=10),
            duration_s=30.0 * scale,
            warmup_s=10.0,
            seeds=draws,
            workload=shared_prefix_6(),
            arrival_cv=3.0,
            description=f"{workloads.llmd_groups(ENGINES)} groups x 5 requests per block, 6,000-token system"
            f" prompt, a fresh 1,200-token question per request, {OUTPUT_LEN}-token output; bursty arrivals:"
            " Gamma-distributed gaps with a coefficient of variation of 3",
        ),
    ]


def run_virtual(suite: VirtualSuite, *, out: Path, command: str) -> None:
    source = suite.workload or workloads.llmd_study(engines=suite.engines)
    setup = virtual.Setup(
        engines=suite.engines,
        source=source,
        duration_s=suite.duration_s,
        warmup_s=suite.warmup_s,
        model=MODEL,
        arrival_cv=suite.arrival_cv,
    )
    seeds = range(suite.seeds)
    loads = tuple(per * suite.engines for per in suite.loads_per_engine)
    runs_per_draw = suite.ladder.max_loads if suite.ladder else len(loads)  # a search's at most
    bar = progress.Bar(steps=runs_per_draw * len(suite.policies) * suite.seeds)
    started = time.monotonic()
    # The picker and sim code run in this process, imported before the first run: their state at start.
    source_at_start = harness.source()
    knees: list[dict[str, Any]] = []
    if suite.ladder:
        rows, knees = virtual.knee_search(
            setup, policies=suite.policies, ladder=suite.ladder, seeds=seeds, bar=bar
        )
    else:
        rows = virtual.sweep(setup, policies=suite.policies, loads=loads, seeds=seeds, bar=bar)
    shape = suite.description or (
        f"{source.params['num_groups']} groups x 5 requests per block (150 x 5 scaled by {suite.engines}/8"
        " engines), 6,000-token system prompt, a fresh 1,200-token question per request, 1,000-token output"
    )
    ladder = suite.ladder
    loads_note = (
        f"loads by knee search per policy and draw: the ladder {ladder.start:g} x {ladder.factor:g}^k req/s"
        f" up to the first load where goodput < {ladder.floor:.0%} of offered or SLO attainment <"
        f" {ladder.floor:.0%}, then bisection to {ladder.tolerance:.0%}"
        if ladder
        else f"loads {', '.join(f'{q:g}' for q in loads)} req/s"
    )
    meta = {
        "title": f"Virtual time: {source.name} on {suite.engines} engines, with the perfect-signal oracle",
        "notes": [
            f"{suite.engines} virtual H100 engines (Llama-3.1-8B shape) on the discrete-event clock",
            shape,
            f"{suite.warmup_s:g} s of warm-up arrivals left out, then {suite.duration_s:g} s measured"
            " (model time)",
            loads_note,
            "arrivals: Poisson"
            if suite.arrival_cv == 1.0
            else f"arrivals: bursty, Gamma gaps with coefficient of variation {suite.arrival_cv:g}",
            f"{suite.seeds} arrival draws per (policy, load): figures are the median with the min-max range"
            " in brackets; a comparison's verdict is a win or a loss only where the ranges do not overlap",
            "ITL is not recorded in virtual time: the ITL column repeats TPOT",
        ],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_s": round(time.monotonic() - started, 1),
        "source": source_at_start,
        "workload": source.params,
        "loads_qps": list(loads),
        "ladder": dataclasses.asdict(suite.ladder) if suite.ladder else None,
        "knees": knees,
    }
    paths = report.write(rows, out, name=suite.name, command=command, meta=meta)
    print(report.table(rows))
    print()
    print(report.comparisons_markdown(report.comparisons(rows)))
    if knees:
        print()
        print(report.knees_markdown(knees))
    for kind, path in paths.items():
        print(f"{kind}: {path}")


def run(
    *,
    out: Path,
    command: str,
    quick: bool,
    only: tuple[str, ...] = (),
    real_time: RealTime = RealTime(),
) -> None:
    for vsuite in virtual_suites(quick=quick):
        if not only or vsuite.name in only:
            run_virtual(vsuite, out=out, command=command)
    if not only or "tiers" in only:
        tiers.main(["--out", str(out), *(["--seeds", "1", "--duration", "40"] if quick else [])])
    if not only or "pd" in only:
        pd.main(["--out", str(out), *(["--seeds", "1", "--duration", "10"] if quick else [])])
    if not only or "misspecified" in only:
        misspecified.main(["--out", str(out), *(["--seeds", "1", "--duration", "8"] if quick else [])])
    if not only or "overload" in only:
        overload.main(["--out", str(out), *(["--seeds", "1", "--loads", "1.5"] if quick else [])])
    if not only or "pd-realtime" in only:
        pd_realtime.main(
            [
                "--out",
                str(out),
                "--envoy-modes",
                *real_time.envoy_modes,
                "--arrival-cvs",
                *(f"{cv:g}" for cv in real_time.arrival_cvs),
                "--rounds",
                str(1 if quick else real_time.rounds),
                *(["--duration", "5"] if quick else []),
            ]
        )
    if not only or "gie-mode" in only:
        for envoy_mode in real_time.envoy_modes:
            for cv in real_time.arrival_cvs:
                gie_mode.main(
                    [
                        "--out",
                        str(out),
                        "--envoy-mode",
                        envoy_mode,
                        "--arrival-cv",
                        f"{cv:g}",
                        "--rounds",
                        str(1 if quick else real_time.rounds),
                        *(["--loads", "25", "--duration", "10"] if quick else []),
                    ]
                )
    for suite in suites(quick=quick):
        if only and suite.name not in only:
            continue
        asyncio.run(
            harness.run_sweeps(
                suite.plans(real_time),
                engines=ENGINES,
                time_scale=TIME_SCALE,
                model=MODEL,
                out=out,
                name=suite.name,
                command=command,
                title=suite.title,
                notes=suite.notes,
            )
        )
