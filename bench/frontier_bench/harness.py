"""Runs sweeps over one simulated fleet and writes their report: the part `demo`, `sweep` and `all` share.

Addresses: engines on 127.10.1.x, front doors (Envoy, picker, sglang-router) on 127.10.0.1 — the loopback
range the benchmark owns, so it never collides with tests (127.4.0.0/16) running beside it.
"""

import logging
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from frontier_bench import fleet, processes, progress, report, sweep, workloads

log = logging.getLogger(__name__)

FLEET_PREFIX = "127.10.1"  # engines at 127.10.1.1, .2, ...
FRONT_DOOR_ADDRESS = "127.10.0.1"


async def run_sweeps(
    plans: Sequence[sweep.Plan],
    *,
    engines: int,
    time_scale: float,
    model: str,
    out: Path,
    name: str,
    command: str,
    title: str,
    notes: Sequence[str] = (),
    fleet_args: tuple[str, ...] = (),
    run_root: Path | str = "out/runs",
) -> list[report.Row]:
    """Start a fleet, run `plans` over it, stop everything, write the report under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    # Logs, endpoints file and Envoy configs of the run; kept out of `out` so committed results stay small.
    run_dir = Path(run_root) / name
    bar = progress.Bar(steps=sum(p.runs() for p in plans))
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    rows: list[report.Row] = []
    started = time.monotonic()
    source_at_start = source()
    frozen = freeze_source(run_dir / "source")
    with processes.Group(run_dir / "logs", env=frozen) as group:
        running = await fleet.start(
            group,
            engines=engines,
            address_prefix=FLEET_PREFIX,
            time_scale=time_scale,
            model=model,
            run_dir=run_dir,
            extra_args=fleet_args,
        )
        log.info("event=fleet_ready engines=%d time_scale=%g", len(running.engines), time_scale)
        for plan in plans:
            rows += await sweep.run(
                plan, group=group, running=running, address=FRONT_DOOR_ADDRESS, run_dir=run_dir, bar=bar
            )
    meta: dict[str, Any] = {
        "title": title,
        "notes": [*notes, load_note(rows, cpus=os.cpu_count())],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_s": round(time.monotonic() - started, 1),
        "source": {**source_at_start, "frozen": bool(frozen)},
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "fleet": {"engines": engines, "time_scale": time_scale, "model": model, "args": list(fleet_args)},
        "plans": [
            {
                "workload": p.workload.name,
                "params": p.workload.params,
                "policies": list(p.policies),
                "loads_qps": list(p.loads),
                "duration_s": p.duration_s,
                "warmup_s": p.warmup_s,
                "seed": p.seed,
                "rounds": p.rounds,
                "arrival": workloads.arrival_label(p.arrival_cv),
                "envoy_modes": list(p.envoy_modes),
                "slo": {"ttft_s": p.slo.ttft_s, "tpot_s": p.slo.tpot_s},
            }
            for p in plans
        ],
    }
    paths = report.write(rows, out, name=name, command=command, meta=meta)
    print(report.table(rows))
    print()
    print(report.comparisons_markdown(report.comparisons(rows)))
    print()
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return rows


def load_note(rows: Sequence[report.Row], *, cpus: int | None) -> str:
    """The machine's load while the runs were made: real-time numbers are only as quiet as the machine."""
    loads = sorted(r.load_average_1m for r in rows if r.load_average_1m is not None)
    if not loads:
        return f"machine: {cpus} CPUs; load average not recorded"
    return (
        f"machine: {cpus} CPUs shared with other work; 1-minute load average as each run ended"
        f" {loads[0]:g}-{loads[-1]:g} (median {loads[len(loads) // 2]:g})"
    )


def source() -> dict[str, str]:
    """The commit the run used, and whether the picker or sim had uncommitted changes (they run from here)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "commit": git("rev-parse", "HEAD"),
        "uncommitted": git("status", "--short", "--untracked-files=no", "--", "picker", "sim", "bench"),
    }


def freeze_source(where: Path) -> dict[str, str]:
    """Export the committed api/, picker/ and sim/ at HEAD to `where` and return the environment that runs
    the fleet and the pickers from it, so colleagues' commits and edits during a long sweep cannot change the
    code under test between runs. Empty (run from the working tree) when git is unavailable."""
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    try:
        archive = subprocess.run(
            ["git", "archive", "HEAD", "api", "picker", "sim"], capture_output=True, check=True, timeout=60
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("event=source_not_frozen reason=%s", error)
        return {}
    roots = [str((where / root).resolve()) for root in ("api", "picker", "sim")]
    return {"PYTHONPATH": os.pathsep.join([*roots, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
