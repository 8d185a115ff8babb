"""Sweeps in virtual time: the same workloads and policies on 16, 128 and 1,024 engines of the discrete-event
cluster (`frontier_sim.vt.cluster`), with the perfect-information (greedy) oracle.

The cluster runs the same engine core as the real-time server and calls the picker's schedulers in-process
on staleness-faithful snapshots; nothing crosses a socket, so fleets far beyond one machine run in minutes.
Each (policy, load) run gets fresh engines (empty caches) and a fresh policy, the same seeded arrivals as
the other policies at that load, and a warm-up whose requests are left out of the summary. Summaries use the
same metrics math as the real-time sweeps (`stats.summarize`); the cluster does not record individual token
gaps, so ITL is absent here and TPOT stands for it.

Workloads at 1,024 engines are big (the llm-d shape scaled to 1,024 engines is 19,200 groups of 6,000-token
system prompts); the workloads make each prompt on demand (`workloads.Workload.prompt_for`), so nothing is
held in memory up front.
"""

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from frontier_bench import knee, progress, report, stats, workloads
from frontier_sim import fleet
from frontier_sim.vt import cluster

log = logging.getLogger(__name__)

POLICIES = ("round-robin", "least-request", "random", "gie-default", "frontier", "oracle")


def arrivals(
    source: workloads.Workload, schedule: workloads.Schedule, *, model: str
) -> Iterator[cluster.Arrival]:
    for index, offset in enumerate(schedule.offsets_s):
        prompt = source.prompt_for(index)
        yield cluster.Arrival(
            at=float(offset),
            model=model,
            prompt=prompt.prompt,
            messages=[{"role": role, "content": content} for role, content in prompt.messages],
            max_tokens=prompt.max_tokens,
            output_tokens=prompt.output_tokens,
        )


def traces(results: cluster.Results) -> list[stats.RequestTrace]:
    """The cluster's per-request columns as client-side traces (first token only: no per-token times)."""
    out = []
    for i in range(len(results.arrival)):
        sent = float(results.arrival[i])
        ttft, end, status = float(results.ttft[i]), float(results.end[i]), int(results.status[i])
        done = status == 200 and not np.isnan(end) and not np.isnan(ttft)
        out.append(
            stats.RequestTrace(
                sent=sent,
                token_times=[sent + ttft] if done else [],
                end=end if done else None,
                status=status,
                error=None if done else f"status {status}",
                prompt_tokens=int(results.prompt_tokens[i]),
                completion_tokens=int(results.completion_tokens[i]),
                cached_tokens=int(results.cached_tokens[i]),
            )
        )
    return out


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Setup:
    """What every run of a sweep shares: the fleet, the workload, the run's timing and the SLO."""

    engines: int
    source: workloads.Workload
    duration_s: float
    warmup_s: float
    model: str
    engine_args: Sequence[str] = ()
    label: str = ""
    slo: stats.Slo | None = None
    arrival_cv: float = 1.0  # 1: Poisson arrivals; more: bursty (`workloads.gamma_schedule`)


def arrival_seed(seed: int, qps: float) -> int:
    """The arrival draw of (`seed`, load): every policy at that load and draw faces the same arrivals."""
    return int(np.random.SeedSequence([seed, round(qps * 1000)]).generate_state(1)[0])


def run_once(
    setup: Setup,
    *,
    policy: str,
    qps: float,
    seed: int,
    bar: progress.Bar | None = None,
    scheduler_config: str | None = None,
    specs: Sequence[fleet.EngineSpec] | None = None,
) -> report.Row:
    """One policy at one load and arrival draw on fresh engines; the steady-state summary as a row.
    `scheduler_config`: an EndpointPickerConfig text run under the name `policy`; `specs`: the engines
    (default: `setup.engines` alike, from `setup.model` and `setup.engine_args`)."""
    schedule = workloads.schedule(
        qps=qps,
        duration_s=setup.warmup_s + setup.duration_s,
        seed=arrival_seed(seed, qps),
        cv=setup.arrival_cv,
    )
    if bar:
        bar.step += 1
        bar.label = f"virtual {setup.engines} engines {policy} @ {qps:.4g} req/s seed {seed}"
        bar.counters.total, bar.counters.done = len(schedule), 0
        bar.draw()
    began = time.monotonic()
    if specs is None:
        specs = cluster.engines(setup.engines, args=["--model", setup.model, *setup.engine_args])
    results = cluster.run(
        engines=specs,
        workload=arrivals(setup.source, schedule, model=setup.model),
        policy=scheduler_config or policy,
    )
    kept = [t for t in traces(results) if t.sent >= setup.warmup_s]
    work = {e.name: float(e.generation_tokens) for e in results.engines}
    summary = stats.summarize(kept, slo=setup.slo, endpoint_work=work, window_s=setup.duration_s)
    summary["itl_s"] = summary["tpot_s"]  # no per-token gaps in virtual time: TPOT stands for ITL
    summary["preemptions"] = int(sum(e.preemptions for e in results.engines))
    summary["wall_s"] = round(time.monotonic() - began, 1)
    workload = f"{setup.source.name}@{setup.engines}{setup.label}"
    log.info(
        "event=virtual_run_done engines=%d policy=%s qps=%g seed=%d ttft_p90=%s goodput=%.3g hit=%s"
        " wall_s=%s",
        setup.engines,
        policy,
        qps,
        seed,
        summary["ttft_s"]["p90"],
        summary["goodput_rps"],
        summary["prefix_hit_rate"],
        summary["wall_s"],
    )
    if bar:
        bar.counters.done = len(schedule)
        bar.finish()
    return report.Row(
        policy=policy,
        workload=workload,
        qps=qps,
        summary=summary,
        seed=seed,
        arrival=workloads.arrival_label(setup.arrival_cv),
    )


def sweep(
    setup: Setup,
    *,
    policies: Sequence[str],
    loads: Sequence[float],
    seeds: Sequence[int] = (0,),
    bar: progress.Bar | None = None,
    on_row: Callable[[report.Row], None] | None = None,
) -> list[report.Row]:
    """policies x loads x arrival draws on `setup.engines` virtual engines; loads in requests/s of model
    time. Rows are labelled `<workload>@<engines>` followed by `setup.label`."""
    rows = []
    for seed in seeds:
        for qps in loads:
            for policy in policies:
                row = run_once(setup, policy=policy, qps=qps, seed=seed, bar=bar)
                rows.append(row)
                if on_row:
                    on_row(row)
    return rows


def knee_search(
    setup: Setup,
    *,
    policies: Sequence[str],
    ladder: knee.Ladder,
    seeds: Sequence[int] = (0,),
    bar: progress.Bar | None = None,
) -> tuple[list[report.Row], list[dict[str, Any]]]:
    """Per policy and arrival draw, the knee search (`knee.search`); every run as a row, and per search
    its result as a dict (policy, workload, seed and `knee.Knee`'s fields)."""
    rows: list[report.Row] = []
    found: list[dict[str, Any]] = []
    for seed in seeds:
        for policy in policies:

            def measure(qps: float, policy: str = policy, seed: int = seed) -> knee.Point:
                row = run_once(setup, policy=policy, qps=qps, seed=seed, bar=bar)
                rows.append(row)
                s = row.summary
                return knee.Point(qps=qps, goodput_rps=s["goodput_rps"], good_fraction=s["good_fraction"])

            result = knee.search(measure, ladder)
            workload = f"{setup.source.name}@{setup.engines}{setup.label}"
            found.append({"policy": policy, "workload": workload, "seed": seed, **dataclasses.asdict(result)})
            log.info(
                "event=virtual_knee policy=%s seed=%d peak=%.3g knee=%s first_failed=%s",
                policy,
                seed,
                result.peak_goodput_rps,
                result.knee_qps,
                result.first_failed_qps,
            )
    return rows, found
