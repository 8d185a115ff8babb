"""A sweep: policies x offered loads on one workload, over one running fleet, through real front doors.

For every (policy, load) the sweep empties the engines' prefix caches, starts the policy's front door fresh,
sends the load's schedule (the same seeded arrivals for every policy), waits for the engines to drain, reads
the engines' counters, and stops the front door. Requests that arrive in the first `warmup_s` warm the
caches and the policy's state and are left out of the summary, so a short run reports the steady state
rather than the cold start (the engines' per-endpoint counters still span the whole run). Schedules are
built in model time and stretched by the fleet's time scale on the wire; summaries are in model time.
"""

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from frontier_bench import fleet, frontdoors, loadgen, processes, progress, report, stats, workloads

log = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True, kw_only=True)
class Plan:
    """What one sweep runs: `policies` at each of `loads` (model-time QPS) for `duration_s` of model time."""

    workload: workloads.Workload
    policies: Sequence[str]
    loads: Sequence[float]
    duration_s: float
    warmup_s: float = 0.0  # model seconds of arrivals sent first and left out of the summary (steady state)
    seed: int = 0
    slo: stats.Slo = dataclasses.field(default_factory=stats.Slo)
    drain_timeout_s: float = 600.0  # model time a run may take to finish after its last arrival


def stretched(schedule: workloads.Schedule, time_scale: float) -> workloads.Schedule:
    """The schedule on the wire when the fleet runs `time_scale` times slower than model time."""
    return workloads.Schedule(
        qps=schedule.qps / time_scale,
        offsets_s=np.asarray(schedule.offsets_s) * time_scale,
        seed=schedule.seed,
    )


async def run(
    plan: Plan,
    *,
    group: processes.Group,
    running: fleet.Fleet,
    address: str,
    run_dir: Path,
    bar: progress.Bar,
    on_row: Callable[[report.Row], None] | None = None,
) -> list[report.Row]:
    rows = []
    for load_index, qps in enumerate(plan.loads):
        schedule = workloads.poisson_schedule(
            qps=qps, duration_s=plan.warmup_s + plan.duration_s, seed=plan.seed + load_index
        )
        measured = schedule.offsets_s >= plan.warmup_s
        on_wire = stretched(schedule, running.time_scale)
        for policy in plan.policies:
            bar.step += 1
            bar.label = f"{plan.workload.name} {policy} @ {qps:g} req/s"
            await fleet.wait_idle(running)
            if not await fleet.reset_prefix_caches(running):
                raise RuntimeError("an engine refused POST /reset_prefix_cache; runs would not start cold")
            door = await frontdoors.start(
                policy,
                group=group,
                engines=running.addresses,
                endpoints_file=running.endpoints_file,
                model=running.model,
                address=address,
                run_dir=run_dir,
            )
            try:
                before = await fleet.metrics(running)
                traces = await loadgen.run(
                    url=door.url,
                    model=running.model,
                    workload=plan.workload,
                    schedule=on_wire,
                    counters=bar.counters,
                    on_tick=bar.draw,
                    drain_timeout_s=plan.drain_timeout_s * running.time_scale,
                    request_timeout_s=(plan.warmup_s + plan.duration_s + plan.drain_timeout_s)
                    * running.time_scale,
                )
                bar.finish()
                await fleet.wait_idle(running)
                after = await fleet.metrics(running)
            finally:
                frontdoors.stop(group, door)
            summary = stats.summarize(
                [trace for trace, keep in zip(traces, measured, strict=True) if keep],
                slo=plan.slo,
                time_scale=running.time_scale,
                endpoint_work=fleet.generated_tokens(before, after),
                window_s=plan.duration_s,
            )
            row = report.Row(policy=policy, workload=plan.workload.name, qps=qps, summary=summary)
            log.info(
                "event=run_done workload=%s policy=%s qps=%g ttft_p90=%s tok_s=%.0f goodput=%.3g hit=%s"
                " failed=%d",
                row.workload,
                policy,
                qps,
                summary["ttft_s"]["p90"],
                summary["output_tokens_per_s"],
                summary["goodput_rps"],
                summary["prefix_hit_rate"],
                summary["failed"],
            )
            rows.append(row)
            if on_row:
                on_row(row)
    return rows
