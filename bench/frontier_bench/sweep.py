"""A sweep: policies x offered loads on one workload, over one running fleet, through real front doors.

A policy that calls a picker runs once per Envoy mode of the plan (`cheap`, `gie`); the others once. Arrivals
are Poisson or bursty (Gamma gaps, `arrival_cv`). With several `rounds`, every (load, policy, mode) runs once
per round, rounds one after the other, each round with its own arrival draw (the same for every policy
within it) and the policies' order rotated, so slow drifts of a shared machine fall on every policy alike;
the report shows the median and range over rounds.

For every (policy, load) the sweep empties the engines' prefix caches, starts the policy's front door fresh,
sends the load's schedule (the same seeded arrivals for every policy), waits for the engines to drain, reads
the engines' counters, and stops the front door. Requests that arrive in the first `warmup_s` warm the
caches and the policy's state and are left out of the summary, so a short run reports the steady state
rather than the cold start (the engines' per-endpoint counters still span the whole run). Schedules are
built in model time and stretched by the fleet's time scale on the wire; summaries are in model time.
"""

import dataclasses
import logging
import os
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
    envoy_modes: Sequence[str] = ("cheap",)  # for policies that call a picker
    arrival_cv: float = 1.0  # 1: Poisson; more: bursty (Gamma gaps with this CV)
    rounds: int = 1

    def doors(self) -> list[tuple[str, str]]:
        """Every (policy, Envoy mode) the plan runs at each load and round."""
        return [
            (policy, mode)
            for policy in self.policies
            for mode in (self.envoy_modes if frontdoors.calls_picker(policy) else (report.NO_PICKER,))
        ]

    def runs(self) -> int:
        return len(self.doors()) * len(self.loads) * self.rounds


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
    doors = plan.doors()
    arrival = workloads.arrival_label(plan.arrival_cv)
    for round_, load_index, qps in ((r, i, q) for r in range(plan.rounds) for i, q in enumerate(plan.loads)):
        seed = plan.seed + 1000 * round_ + load_index  # round 0: the single-round sweep's draws
        schedule = workloads.schedule(
            qps=qps, duration_s=plan.warmup_s + plan.duration_s, seed=seed, cv=plan.arrival_cv
        )
        measured = schedule.offsets_s >= plan.warmup_s
        on_wire = stretched(schedule, running.time_scale)
        shift = (round_ + load_index) % len(doors)
        for policy, envoy_mode in [*doors[shift:], *doors[:shift]]:
            bar.step += 1
            bar.label = f"{plan.workload.name} {arrival} {policy} ({envoy_mode}) @ {qps:g} req/s r{round_}"
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
                envoy_mode=envoy_mode,
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
            row = report.Row(
                policy=policy,
                workload=plan.workload.name,
                qps=qps,
                summary=summary,
                seed=round_,
                arrival=arrival,
                envoy_mode=envoy_mode,
                load_average_1m=round(os.getloadavg()[0], 2),
            )
            log.info(
                "event=run_done workload=%s arrival=%s envoy_mode=%s round=%d policy=%s qps=%g ttft_p90=%s"
                " tok_s=%.0f goodput=%.3g hit=%s failed=%d",
                row.workload,
                arrival,
                envoy_mode,
                round_,
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
