"""Prefill/decode disaggregation in real time: client -> Envoy -> picker -> frontier-sidecar -> prefill engine
-> decode engine, against aggregated serving on the same number of simulated GPUs.

A small, real-process counterpart of the virtual-time `pd` benchmark, sized for a 2-core machine: 4
simulated H100 engines (`frontier-sim fleet`, Llama-3.1-8B, `--time-scale` S so that the engines' model clock
runs S times slower than the wall clock and the CPUs are not the bottleneck), either all aggregated, or 2
prefill + 2 decode engines with a `frontier-sidecar` process in front of each decode engine (the pool's
decode endpoints are the sidecars, as in a decode pod). One picker process (`frontier` scheduling, its cost
model told the time scale, the `load-aware-pd-decider` on the P/D arm) behind one Envoy, in each of
`--envoy-modes` (`cheap`, and `gie`: GIE's full-duplex configuration, every response chunk through the
picker). Every run starts all of it fresh.

Workload: the `long` shape of `pd` (8,000 unique tokens in, 256 out), open-loop at `--qps` requests per model
second, for each of `--arrival-cvs` (1: Poisson; 3: bursty, Gamma gaps of CV 3). Within a round every
(arrival shape, Envoy mode) runs both arms, the same arrivals for both, first arm swapped each round.
Reported in model seconds (wall / S):
TTFT p50/p90, TPOT p50/p90, goodput at TTFT <= 1 s with TPOT <= 50 and <= 20 ms, and from the sidecars'
counters how many requests were prefilled remotely and how many fell back. Next to each run, its virtual-time
twin: the same engines, scheduling config, arrivals and prompts in the virtual-time cluster (`pd`'s
simulator), so the real-process stack can be compared with the model it is measured against.

    python -m frontier_bench.pd_realtime --out bench/results
"""

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Final

import aiohttp
import numpy as np
import yaml

from frontier_api import envoy_bootstrap, names
from frontier_bench import frontdoors, loadgen, pd, processes, stats, workloads
from frontier_picker.scheduling import config as scheduling_config
from frontier_sim.vt import cluster

MODEL: Final = pd.MODEL
ENGINES: Final = 4
PREFILL: Final = 2
ADDRESS: Final = "127.13.0.1"  # picker and Envoy; engines at 127.13.1.x
ENGINE_PREFIX: Final = "127.13.1"
ARMS: Final = ("aggregated", f"pd-load-aware-{PREFILL}:{ENGINES - PREFILL}")
TPOT_SLOS_S: Final = (0.05, 0.02)
_SIDECAR_COUNTER = re.compile(r"^(frontier_sidecar_\w+_total)(\{[^}]*\})? ([0-9.e+]+)$", re.MULTILINE)


def scheduling() -> str:
    """The picker's config: `frontier` (told nothing of the fleet's speed), the load-aware decider."""
    return pd.with_decider(scheduling_config.builtin_text("frontier"), "load-aware-pd-decider")


def virtual_twin(arm: str, *, qps: float, duration_s: float, seed: int, cv: float) -> dict[str, float]:
    """The run's numbers in virtual time: same engines, config (at time scale 1), arrivals and prompts."""
    schedule = workloads.schedule(qps=qps, duration_s=duration_s, seed=seed, cv=cv)
    workload = pd.WORKLOADS["long"].make(seed)
    arrivals = []
    for index, at in enumerate(schedule.offsets_s):
        prompt = workload.prompt_for(index)
        arrivals.append(
            cluster.Arrival(at=float(at), model=MODEL, prompt=prompt.prompt, max_tokens=prompt.max_tokens)
        )
    prefill = PREFILL if arm != "aggregated" else 0
    engines = cluster.engines(ENGINES, args=("--model", MODEL), prefill=prefill)
    results = cluster.run(engines=engines, workload=arrivals, policy=scheduling(), seed=seed)
    ok = (results.status == 200) & ~np.isnan(results.end)
    ttft, tpot = results.ttft[ok], results.tpot[ok]
    twin = {
        "ttft_p50_s": float(np.percentile(ttft, 50)),
        "ttft_p90_s": float(np.percentile(ttft, 90)),
        "tpot_p50_s": float(np.nanpercentile(tpot, 50)),
        "tpot_p90_s": float(np.nanpercentile(tpot, 90)),
    }
    for slo in TPOT_SLOS_S:
        twin[pd.slo_key(slo)] = float(((ttft <= pd.SLO_TTFT_S) & ~(tpot > slo)).sum()) / duration_s
    return twin


@contextlib.asynccontextmanager
async def stack(
    arm: str, *, run_dir: Path, time_scale: float, envoy_mode: str
) -> AsyncIterator[tuple[str, list[str]]]:
    """The arm's engines, sidecars, picker and Envoy, started and routable: (Envoy's URL, sidecar
    metrics URLs)."""
    group = processes.Group(run_dir / "logs")
    try:
        fleet_file = run_dir / "fleet.yaml"
        prefill = PREFILL if arm != "aggregated" else 0
        fleet_argv = [
            sys.executable, "-m", "frontier_sim.main", "fleet", "--engines", str(ENGINES),
            "--prefill-engines", str(prefill), "--model", MODEL, "--address-prefix", ENGINE_PREFIX,
            "--port", "8000", "--time-scale", str(time_scale), "--endpoints-file", str(fleet_file),
        ]  # fmt: skip
        fleet = group.start("fleet", fleet_argv)
        for i in range(1, ENGINES + 1):
            await processes.wait_http(f"http://{ENGINE_PREFIX}.{i}:8000/health", child=fleet)
        listed = yaml.safe_load(fleet_file.read_text())["endpoints"]
        sidecar_metrics = []
        for entry in listed:
            if entry["labels"].get(names.ROLE_LABEL) != names.ROLE_DECODE:
                continue
            address = entry["address"]
            port, metrics_port = processes.free_port(address), processes.free_port(address)
            side = group.start(
                f"sidecar-{address}",
                [
                    sys.executable, "-m", "frontier_sidecar.main", "--address", address, "--port", str(port),
                    "--engine-url", f"http://{address}:{entry['port']}", "--metrics-port", str(metrics_port),
                    "--log-level", "warning",
                ],
            )  # fmt: skip
            await processes.wait_port(address, port, child=side)
            entry["port"] = port  # the pool's decode endpoint is the sidecar, as in a decode pod
            sidecar_metrics.append(f"http://{address}:{metrics_port}/metrics")
        endpoints_file = run_dir / "endpoints.yaml"
        endpoints_file.write_text(yaml.safe_dump({"endpoints": listed}, sort_keys=False))
        config_file = run_dir / "picker.yaml"
        config_file.write_text(scheduling())
        grpc_port, health_port, metrics_port = (processes.free_port(ADDRESS) for _ in range(3))
        picker = group.start(
            "picker",
            frontdoors.picker_argv(
                endpoints_file=endpoints_file,
                address=ADDRESS,
                grpc_port=grpc_port,
                health_port=health_port,
                metrics_port=metrics_port,
                extra=["--config-file", str(config_file)],
            ),
        )
        await processes.wait_port(ADDRESS, grpc_port, child=picker)
        port = processes.free_port(ADDRESS)
        bootstrap = envoy_bootstrap.bootstrap(
            mode=envoy_mode,
            listen_address=ADDRESS,
            listen_port=port,
            pickers=[f"{ADDRESS}:{grpc_port}"],
            picker_tls=False,
            endpoints=[(e["address"], int(e["port"])) for e in listed],
        )
        envoy_file = run_dir / "envoy.json"
        envoy_file.write_text(json.dumps(bootstrap))
        envoy = group.start(
            "envoy",
            [frontdoors.envoy_binary(), "--config-path", str(envoy_file), "--concurrency", "1",
             "--disable-hot-restart", "--log-level", "warn"],
        )  # fmt: skip
        await processes.wait_port(ADDRESS, port, child=envoy)
        url = f"http://{ADDRESS}:{port}"
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    body = {"model": MODEL, "prompt": "warm up", "max_tokens": 2}
                    async with session.post(f"{url}/v1/completions", json=body) as answer:
                        if answer.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{arm}: the stack did not route a request:\n{picker.tail()}")
                await asyncio.sleep(0.2)
        yield url, sidecar_metrics
    finally:
        group.stop_all()


async def sidecar_counters(urls: Sequence[str]) -> dict[str, float]:
    """The sidecars' counters summed over sidecars (name{labels} -> value)."""
    totals: dict[str, float] = {}
    async with aiohttp.ClientSession() as session:
        for url in urls:
            async with session.get(url) as response:
                page = await response.text()
            for name, labels, value in _SIDECAR_COUNTER.findall(page):
                key = name + (labels or "")
                totals[key] = totals.get(key, 0.0) + float(value)
    return totals


async def run_one(
    arm: str, *, qps: float, duration_s: float, time_scale: float, seed: int, envoy_mode: str, cv: float
) -> dict[str, Any]:
    """One run of `arm`: `duration_s` model seconds of arrivals (Gamma gaps of CV `cv`; 1 is Poisson) at
    `qps` per model second, Envoy in `envoy_mode`."""
    with tempfile.TemporaryDirectory(prefix=f"pd-rt-{arm.replace(':', '-')}-") as tmp:
        started = stack(arm, run_dir=Path(tmp), time_scale=time_scale, envoy_mode=envoy_mode)
        async with started as (url, sidecar_metrics):
            schedule = workloads.schedule(qps=qps, duration_s=duration_s, seed=seed, cv=cv)
            wall = workloads.Schedule(
                qps=qps / time_scale, offsets_s=schedule.offsets_s * time_scale, seed=seed
            )
            workload = pd.WORKLOADS["long"].make(seed)
            began = time.perf_counter()
            traces = await loadgen.run(url=url, model=MODEL, workload=workload, schedule=wall)
            wall_s = time.perf_counter() - began
            counters = await sidecar_counters(sidecar_metrics) if sidecar_metrics else {}
    row: dict[str, Any] = {
        "arm": arm,
        "envoy_mode": envoy_mode,
        "arrival": workloads.arrival_label(cv),
        "qps": qps,
        "seed": seed,
        "wall_s": wall_s,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "sidecars": counters,
    }
    row["virtual"] = virtual_twin(arm, qps=qps, duration_s=duration_s, seed=seed, cv=cv)
    for slo in TPOT_SLOS_S:
        summary = stats.summarize(
            traces,
            slo=stats.Slo(ttft_s=pd.SLO_TTFT_S, tpot_s=slo),
            time_scale=time_scale,
            window_s=duration_s,
        )
        row[pd.slo_key(slo)] = summary["goodput_rps"]
        row["summary"] = summary  # latency figures do not depend on the SLO
    return row


def render(report: dict[str, Any]) -> str:
    """Markdown: one row per run, in the order run."""
    lines = [
        "# Prefill/decode disaggregation in real time (Envoy + picker + sidecars, simulated engines)",
        "",
        f"Command: `{report['command']}` ({report['machine']}, {report['wall_s']:.0f} s wall). {ENGINES} x "
        f"{MODEL} (simulated H100, time scale {report['time_scale']:g}: numbers in model seconds); "
        f"aggregated or {PREFILL}:{ENGINES - PREFILL} with a frontier-sidecar per decode engine. Workload: "
        f"8,000 unique tokens in, 256 out, {report['duration_s']:g} model s of arrivals at "
        f"{report['qps']:g} req/s. Goodput: req/s with TTFT <= {pd.SLO_TTFT_S:g} s and TPOT within the SLO.",
        "",
        "Each cell: real time through the stack / its virtual-time twin. Load: the machine's 1-minute load"
        " average as the run ended.",
        "",
        "| round | arrivals | Envoy mode | arm | requests (failed) | TTFT p50 s | TTFT p90 s | TPOT p50 ms "
        "| TPOT p90 ms | goodput @50 ms | goodput @20 ms | remote prefills | fallbacks | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["runs"]:
        s = row["summary"]
        remote = sum(
            v for k, v in row["sidecars"].items() if k.startswith("frontier_sidecar_remote_prefills")
        )
        fallback = sum(
            v for k, v in row["sidecars"].items() if k.startswith("frontier_sidecar_prefill_fallbacks")
        )
        side = f"{remote:.0f} | {fallback:.0f}" if row["sidecars"] else "- | -"
        v = row["virtual"]
        lines.append(
            f"| {row['round']} | {row.get('arrival', workloads.POISSON)} | {row.get('envoy_mode', 'cheap')} "
            f"| {row['arm']} | {s['requests']} ({s['failed']}) "
            f"| {s['ttft_s']['p50']:.2f} / {v['ttft_p50_s']:.2f} "
            f"| {s['ttft_s']['p90']:.2f} / {v['ttft_p90_s']:.2f} "
            f"| {s['tpot_s']['p50'] * 1e3:.1f} / {v['tpot_p50_s'] * 1e3:.1f} "
            f"| {s['tpot_s']['p90'] * 1e3:.1f} / {v['tpot_p90_s'] * 1e3:.1f} "
            f"| {row[pd.slo_key(0.05)]:.2f} / {v[pd.slo_key(0.05)]:.2f} "
            f"| {row[pd.slo_key(0.02)]:.2f} / {v[pd.slo_key(0.02)]:.2f} | {side} "
            f"| {row.get('load_average_1m', '-')} |"
        )
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace, command: str) -> dict[str, Any]:
    began = time.perf_counter()
    runs = []
    settings = [(cv, mode) for cv in args.arrival_cvs for mode in args.envoy_modes]
    for round_index in range(args.rounds):
        order = ARMS if round_index % 2 == 0 else tuple(reversed(ARMS))
        for (cv, envoy_mode), arm in ((setting, arm) for setting in settings for arm in order):
            row = await run_one(
                arm,
                qps=args.qps,
                duration_s=args.duration,
                time_scale=args.time_scale,
                seed=round_index,
                envoy_mode=envoy_mode,
                cv=cv,
            )
            row["round"] = round_index
            runs.append(row)
            s = row["summary"]
            print(
                f"round {round_index} {row['arrival']} {envoy_mode} {arm}: "
                f"TTFT p90 {s['ttft_s']['p90']:.2f} s, TPOT p90 "
                f"{s['tpot_s']['p90'] * 1e3:.1f} ms, goodput@20ms {row[pd.slo_key(0.02)]:.2f}, sidecars "
                f"{row['sidecars']} ({time.perf_counter() - began:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    return {
        "command": command,
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "qps": args.qps,
        "duration_s": args.duration,
        "time_scale": args.time_scale,
        "runs": runs,
        "wall_s": time.perf_counter() - began,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m frontier_bench.pd_realtime", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--qps", type=float, default=6.0, help="requests per model second")
    parser.add_argument("--duration", type=float, default=15.0, help="model seconds of arrivals per run")
    parser.add_argument("--time-scale", type=float, default=10.0, help="wall seconds per model second")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--envoy-modes", nargs="+", choices=frontdoors.ENVOY_MODES, default=["cheap", "gie"])
    parser.add_argument(
        "--arrival-cvs", nargs="+", type=float, default=[1.0, 3.0], help="CV of Gamma gaps (1: Poisson)"
    )
    args = parser.parse_args(argv)
    command = shlex.join(
        ["python", "-m", "frontier_bench.pd_realtime", *(argv if argv is not None else sys.argv[1:])]
    )
    report = asyncio.run(main_async(args, command))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pd_realtime.json").write_text(json.dumps(report, indent=1))
    (out / "pd_realtime.md").write_text(render(report))
    print(render(report))


if __name__ == "__main__":
    main()
