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

import logging
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from frontier_bench import progress, report, stats, workloads
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


def sweep(
    *,
    engines: int,
    source: workloads.Workload,
    policies: Sequence[str],
    loads: Sequence[float],
    duration_s: float,
    warmup_s: float,
    model: str,
    engine_args: Sequence[str] = (),
    seed: int = 0,
    label: str = "",
    slo: stats.Slo | None = None,
    bar: progress.Bar | None = None,
    on_row: Callable[[report.Row], None] | None = None,
) -> list[report.Row]:
    """policies x loads on `engines` virtual engines; loads in requests/s of model time. Rows are labelled
    `<workload>@<engines>` followed by `label`; `seed` picks the arrival times."""
    rows = []
    specs = cluster.engines(engines, args=["--model", model, *engine_args])
    for load_index, qps in enumerate(loads):
        schedule = workloads.poisson_schedule(
            qps=qps, duration_s=warmup_s + duration_s, seed=seed + load_index
        )
        for policy in policies:
            if bar:
                bar.step += 1
                bar.label = f"virtual {engines} engines {policy} @ {qps:g} req/s"
                bar.counters.total, bar.counters.done = len(schedule), 0
                bar.draw()
            began = time.monotonic()
            results = cluster.run(
                engines=specs, workload=arrivals(source, schedule, model=model), policy=policy
            )
            kept = [t for t in traces(results) if t.sent >= warmup_s]
            work = {e.name: float(e.generation_tokens) for e in results.engines}
            summary = stats.summarize(kept, slo=slo, endpoint_work=work, window_s=duration_s)
            summary["itl_s"] = summary["tpot_s"]  # no per-token gaps in virtual time: TPOT stands for ITL
            summary["preemptions"] = int(sum(e.preemptions for e in results.engines))
            summary["wall_s"] = round(time.monotonic() - began, 1)
            workload = f"{source.name}@{engines}{label}"
            row = report.Row(policy=policy, workload=workload, qps=qps, summary=summary)
            log.info(
                "event=virtual_run_done engines=%d policy=%s qps=%g ttft_p90=%s goodput=%.3g hit=%s"
                " wall_s=%s",
                engines,
                policy,
                qps,
                summary["ttft_s"]["p90"],
                summary["goodput_rps"],
                summary["prefix_hit_rate"],
                summary["wall_s"],
            )
            if bar:
                bar.counters.done = len(schedule)
                bar.finish()
            rows.append(row)
            if on_row:
                on_row(row)
    return rows
