"""The real GIE endpoint picker (EPP v1.5.0, Go) beside Frontier's picker, in the Envoy configuration GIE
ships: request and response bodies `FULL_DUPLEX_STREAMED` (`envoy_bootstrap` mode `gie`), so every response
chunk passes through the picker (issue 14 item 4, issue 19 "Hold where the real GIE EPP holds").

One local control plane (`frontier_testkit.controlplane`) holds an InferencePool whose six Pods stand for the
six simulated engines (`frontier-sim fleet`, time scale 2): each Pod is bound to a node no kubelet serves and
its status (Ready, `podIP`) is written here, pointing at the engine's loopback address, so every picker finds
the same engines through the same pool and scrapes their vLLM `/metrics` itself. Policies, each a picker
behind its own fresh Envoy (`mode="gie"`, one Envoy thread, the same static cluster of the six engines):

- `gie-epp-v1.5.0`: the real EPP (`hack/build-epp.sh`), its default scheduling config, plaintext, tracing
  off (no collector here), metrics without authentication;
- `frontier`: `frontier-picker --pool-name`, the `frontier` built-in config (its cost model told the fleet's
  time scale, as in the real-time `shared-prefix` suite), one process;
- `frontier-2-workers`: the same with `--workers 2` (processes sharing their decisions);
- `gie-default`: `frontier-picker` with Frontier's re-implementation of GIE's default profile;
- `python-floor`: not a picker but the least any Python ext_proc processor costs in this configuration
  (`protocol_overhead`'s pass-through processor, round-robin over the engines, no scraping): it separates
  what the Python gRPC transport costs per chunk from what the picker adds.

Each (round, load) runs every policy in turn (order rotated by round) on the shared-prefix workload of the
real-time suite (`full.shared_prefix_6`; every request a fresh question after its group's system prompt),
with the same seeded arrivals for every policy within a round and a new draw per round: Poisson, or bursty
with `--arrival-cv` above 1 (Gamma gaps of that CV). Per run: the
engines' prefix caches are emptied, the picker and Envoy start fresh, and the run measures time to ready
(first request answered through Envoy), the picker's idle CPU rate over `--idle` seconds, then the load.
CPU is every process of the picker (the EPP's one, or the picker's supervisor and workers) from the first
send until the engines drain; the marginal CPU per request subtracts the idle rate over that window.

`python -m frontier_bench.gie_mode --out bench/results` writes `gie-mode.{json,md}`; `--envoy-mode cheap`
runs the same comparison behind Envoys in Frontier's cheap mode (response bodies not sent to the picker) and
writes `gie-mode-cheap-envoy.{json,md}`; bursty arrivals add `-gamma-cv<CV>` to the name.
"""

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import aiohttp
from kubernetes import client as k8s_client

from frontier_api import envoy_bootstrap, names
from frontier_bench import (
    fleet,
    frontdoors,
    full,
    harness,
    loadgen,
    processes,
    protocol_overhead,
    scale_out,
    stats,
    sweep,
    workloads,
)
from frontier_picker.scheduling import config as scheduling_config
from frontier_testkit import controlplane

log = logging.getLogger(__name__)

GIE_VERSION: Final = "v1.5.0"
EPP_POLICY: Final = f"gie-epp-{GIE_VERSION}"
# policy -> (built-in profile, worker processes) of frontier-picker
PICKERS: Final = {
    "frontier": ("frontier", 1),
    "frontier-2-workers": ("frontier", 2),
    "gie-default": ("gie-default", 1),
}
# The least a Python ext_proc processor costs here: round-robin, bodies echoed (`protocol_overhead.Floor`).
FLOOR_POLICY: Final = "python-floor"
POLICIES: Final = (EPP_POLICY, *PICKERS, FLOOR_POLICY)
POOL: Final = "bench"
POOL_APP: Final = "bench-sim"
ENGINE_PORT: Final = 8000  # frontier-sim fleet's default: every engine on its own address, this port
# A node name no kubelet (nor KWOK) serves: the Pods bound to it keep the status this module writes.
UNSERVED_NODE: Final = "bench-host"
# Loopback addresses of its own (not `harness`'s), so it runs beside the other real-time suites.
ENGINE_PREFIX: Final = "127.14.1"  # engines at 127.14.1.1, .2, ...
FRONT_DOOR_ADDRESS: Final = "127.14.0.1"
ENVOY_MODES: Final = ("gie", "cheap")
RESPONSE_BODIES: Final = {
    "gie": "request and response bodies FULL_DUPLEX_STREAMED",
    "cheap": "request body FULL_DUPLEX_STREAMED, response body NONE (trailers sent)",
}


def epp_binary() -> Path:
    """The EPP built by `hack/build-epp.sh` (`make epp`) in the control plane's cache."""
    path = controlplane.default_cache_dir() / "bin" / "epp"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run `make epp` (hack/build-epp.sh) first")
    return path


def inference_pool() -> dict[str, Any]:
    return {
        "apiVersion": f"{names.GIE_GROUP}/{names.GIE_VERSION}",
        "kind": "InferencePool",
        "metadata": {"name": POOL},
        "spec": {
            "selector": {"matchLabels": {"app": POOL_APP}},
            "targetPorts": [{"number": ENGINE_PORT}],
            "endpointPickerRef": {"name": f"{POOL}-epp", "port": {"number": names.EXT_PROC_PORT}},
        },
    }


def publish_engines(core: k8s_client.CoreV1Api, namespace: str, engines: Sequence[fleet.Engine]) -> None:
    """One Ready Pod of the pool per engine, its `podIP` the engine's address."""
    for engine in engines:
        if engine.port != ENGINE_PORT:
            raise ValueError(
                f"{engine.name} listens on {engine.port}; the pool's target port is {ENGINE_PORT}"
            )
        core.create_namespaced_pod(
            namespace,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": engine.name, "labels": {"app": POOL_APP}},
                "spec": {
                    "nodeName": UNSERVED_NODE,
                    "containers": [{"name": "engine", "image": "frontier-sim"}],
                },
            },
        )
        core.patch_namespaced_pod_status(
            engine.name,
            namespace,
            {
                "status": {
                    "phase": "Running",
                    "podIP": engine.address,
                    "podIPs": [{"ip": engine.address}],
                    "conditions": [{"type": "Ready", "status": "True"}],
                }
            },
        )


@dataclasses.dataclass(slots=True, kw_only=True)
class Cluster:
    kubeconfig: Path
    namespace: str


def pool_cluster(plane: controlplane.ControlPlane, namespace_prefix: str) -> Cluster:
    """A fresh namespace of `plane` holding the benchmark's InferencePool, where every picker looks for it."""
    namespace = plane.namespace(namespace_prefix)
    k8s_client.CustomObjectsApi(plane.api_client()).create_namespaced_custom_object(
        names.GIE_GROUP, names.GIE_VERSION, namespace, names.INFERENCE_POOL_PLURAL, inference_pool()
    )
    return Cluster(kubeconfig=plane.kubeconfig, namespace=namespace)


@dataclasses.dataclass(slots=True, kw_only=True)
class Door:
    policy: str
    url: str
    picker: processes.Child
    envoy: processes.Child


async def start_door(
    policy: str,
    *,
    group: processes.Group,
    cluster: Cluster,
    running: fleet.Fleet,
    run_dir: Path,
    envoy_mode: str = "gie",
) -> Door:
    """The policy's picker and a fresh Envoy in `envoy_mode` in front of it."""
    address = FRONT_DOOR_ADDRESS
    run_dir.mkdir(parents=True, exist_ok=True)
    if policy == EPP_POLICY:
        # The EPP binds its ports on every address: ask for ports free on all of them.
        grpc_port, health_port, metrics_port = (processes.free_port("0.0.0.0") for _ in range(3))
        argv = [
            str(epp_binary()),
            f"--pool-name={POOL}",
            f"--pool-namespace={cluster.namespace}",
            f"--grpc-port={grpc_port}",
            f"--grpc-health-port={health_port}",
            f"--metrics-port={metrics_port}",
            "--secure-serving=false",
            "--metrics-endpoint-auth=false",
            "--tracing=false",
            "--v=1",
        ]
        picker = group.start(f"epp-{policy}", argv, env={"KUBECONFIG": str(cluster.kubeconfig)})
    elif policy == FLOOR_POLICY:
        grpc_port = processes.free_port(address)
        argv = [sys.executable, "-m", "frontier_bench.protocol_overhead", "floor"]
        argv += ["--address", address, "--port", str(grpc_port)]
        for host, engine_port in running.addresses:
            argv += ["--endpoint", f"{host}:{engine_port}"]
        picker = group.start(f"floor-{policy}", argv)
    else:
        profile, workers = PICKERS[policy]
        grpc_port, health_port, metrics_port = (processes.free_port(address) for _ in range(3))
        config_path = run_dir / f"picker-{policy}.yaml"
        config_path.write_text(scheduling_config.builtin_text(profile))
        argv = [
            sys.executable,
            "-m",
            "frontier_picker.main",
            f"--pool-name={POOL}",
            f"--pool-namespace={cluster.namespace}",
            f"--kubeconfig={cluster.kubeconfig}",
            "--secure-serving=false",
            "--metrics-endpoint-auth=false",
            "--address",
            address,
            "--grpc-port",
            str(grpc_port),
            "--grpc-health-port",
            str(health_port),
            "--metrics-port",
            str(metrics_port),
            "--config-file",
            str(config_path),
            "--workers",
            str(workers),
            "--log-level",
            "WARNING",
        ]
        picker = group.start(f"picker-{policy}", argv)
    await processes.wait_port(address, grpc_port, child=picker, timeout_s=60.0)
    port = processes.free_port(address)
    config = envoy_bootstrap.bootstrap(
        mode=envoy_mode,
        listen_address=address,
        listen_port=port,
        pickers=[f"{address}:{grpc_port}"],
        picker_tls=False,
        endpoints=running.addresses,
    )
    path = run_dir / f"envoy-{policy}.json"
    path.write_text(json.dumps(config, indent=1))
    envoy = group.start(
        f"envoy-{policy}",
        [
            frontdoors.envoy_binary(),
            "--config-path",
            str(path),
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--log-level",
            "warn",
        ],
    )
    await processes.wait_port(address, port, child=envoy)
    return Door(policy=policy, url=f"http://{address}:{port}", picker=picker, envoy=envoy)


async def wait_answering(door: Door, *, model: str, timeout_s: float = 90.0) -> None:
    """Until one tiny request is answered through Envoy: the picker has found the pool and its endpoints."""
    body = {"model": model, "messages": [{"role": "user", "content": "ready?"}], "max_tokens": 1}
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as session:
        while time.monotonic() < deadline:
            door.picker.check_alive()
            door.envoy.check_alive()
            try:
                async with session.post(f"{door.url}/v1/chat/completions", json=body) as response:
                    await response.read()
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as error:
                last = type(error).__name__
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{door.policy} not answering after {timeout_s:.0f}s ({last}):\n{door.picker.tail()}")


@dataclasses.dataclass(slots=True, kw_only=True)
class Row:
    """One run: the issue-19 columns first, then what explains them."""

    policy: str
    envoy_mode: str
    workload: str
    arrival: str
    offered_rps: float
    round: int
    errors: int
    ttft_p90_s: float | None
    goodput_rps: float
    picker_cpu_ms_per_req: float
    picker_marginal_cpu_ms_per_req: float
    requests: int
    ttft_p50_s: float | None
    prefix_hit_rate: float | None
    ready_s: float
    picker_idle_cores: float
    picker_busy_cores: float
    envoy_cpu_ms_per_req: float
    error_samples: list[str]
    load_average_1m: float


async def run_one(
    policy: str,
    *,
    qps: float,
    round_: int,
    seed: int,
    group: processes.Group,
    cluster: Cluster,
    running: fleet.Fleet,
    workload: workloads.Workload,
    warmup_s: float,
    duration_s: float,
    idle_s: float,
    run_dir: Path,
    envoy_mode: str,
    arrival_cv: float,
) -> Row:
    await fleet.wait_idle(running)
    started = time.monotonic()
    door = await start_door(
        policy, group=group, cluster=cluster, running=running, run_dir=run_dir, envoy_mode=envoy_mode
    )
    try:
        await wait_answering(door, model=running.model)
        ready_s = time.monotonic() - started
        if not await fleet.reset_prefix_caches(running):
            raise RuntimeError("an engine refused POST /reset_prefix_cache; runs would not start cold")
        picker_pid, envoy_pid = door.picker.process.pid, door.envoy.process.pid
        idle_before, idle_began = scale_out.tree_cpu_seconds(picker_pid), time.monotonic()
        await asyncio.sleep(idle_s)
        idle_cores = (scale_out.tree_cpu_seconds(picker_pid) - idle_before) / (time.monotonic() - idle_began)
        schedule = workloads.schedule(qps=qps, duration_s=warmup_s + duration_s, seed=seed, cv=arrival_cv)
        measured = schedule.offsets_s >= warmup_s
        before = await fleet.metrics(running)
        cpu_before, envoy_before, began = (
            scale_out.tree_cpu_seconds(picker_pid),
            protocol_overhead.cpu_seconds(envoy_pid),
            time.monotonic(),
        )
        traces = await loadgen.run(
            url=door.url,
            model=running.model,
            workload=workload,
            schedule=sweep.stretched(schedule, running.time_scale),
            drain_timeout_s=300.0 * running.time_scale,
            request_timeout_s=(warmup_s + duration_s + 300.0) * running.time_scale,
        )
        await fleet.wait_idle(running)
        wall = time.monotonic() - began
        cpu = scale_out.tree_cpu_seconds(picker_pid) - cpu_before
        envoy_cpu = protocol_overhead.cpu_seconds(envoy_pid) - envoy_before
        after = await fleet.metrics(running)
    finally:
        group.stop(door.envoy)
        group.stop(door.picker)
    summary = stats.summarize(
        [trace for trace, keep in zip(traces, measured, strict=True) if keep],
        time_scale=running.time_scale,
        endpoint_work=fleet.generated_tokens(before, after),
        window_s=duration_s,
    )
    sent = len(traces)
    failed = [trace for trace in traces if not trace.ok]
    return Row(
        policy=policy,
        envoy_mode=envoy_mode,
        workload=workload.name,
        arrival=workloads.arrival_label(arrival_cv),
        offered_rps=qps,
        round=round_,
        errors=len(failed),
        ttft_p90_s=summary["ttft_s"]["p90"],
        goodput_rps=round(summary["goodput_rps"], 3),
        picker_cpu_ms_per_req=round(cpu / sent * 1e3, 3),
        picker_marginal_cpu_ms_per_req=round((cpu - idle_cores * wall) / sent * 1e3, 3),
        requests=sent,
        ttft_p50_s=summary["ttft_s"]["p50"],
        prefix_hit_rate=summary["prefix_hit_rate"],
        ready_s=round(ready_s, 2),
        picker_idle_cores=round(idle_cores, 4),
        picker_busy_cores=round(cpu / wall, 3),
        envoy_cpu_ms_per_req=round(envoy_cpu / sent * 1e3, 3),
        error_samples=sorted({(trace.error or f"HTTP {trace.status}")[:120] for trace in failed})[:3],
        load_average_1m=round(os.getloadavg()[0], 2),
    )


async def run(
    *,
    policies: Sequence[str],
    loads: Sequence[float],
    rounds: int,
    warmup_s: float,
    duration_s: float,
    idle_s: float,
    work: Path,
    envoy_mode: str,
    arrival_cv: float = 1.0,
) -> list[Row]:
    work.mkdir(parents=True, exist_ok=True)
    workload = full.shared_prefix_6()
    rows: list[Row] = []
    with controlplane.ControlPlane(work / "controlplane", node_pools=()) as plane:
        api = plane.api_client()
        cluster = pool_cluster(plane, "gie-mode")
        namespace = cluster.namespace
        # The fleet and frontier-picker run from a snapshot of HEAD, as the other real-time suites do.
        frozen = harness.freeze_source(work / "source")
        with processes.Group(work / "logs", env=frozen) as group:
            running = await fleet.start(
                group,
                engines=full.ENGINES,
                address_prefix=ENGINE_PREFIX,
                time_scale=full.TIME_SCALE,
                model=full.MODEL,
                run_dir=work,
            )
            publish_engines(k8s_client.CoreV1Api(api), namespace, running.engines)
            for round_ in range(rounds):
                for load_index, qps in enumerate(loads):
                    shift = (round_ + load_index) % len(policies)
                    for policy in [*policies[shift:], *policies[:shift]]:
                        row = await run_one(
                            policy,
                            qps=qps,
                            round_=round_,
                            seed=1000 * round_ + load_index,
                            group=group,
                            cluster=cluster,
                            running=running,
                            workload=workload,
                            warmup_s=warmup_s,
                            duration_s=duration_s,
                            idle_s=idle_s,
                            run_dir=work / "runs",
                            envoy_mode=envoy_mode,
                            arrival_cv=arrival_cv,
                        )
                        rows.append(row)
                        log.info("event=run_done %s", json.dumps(dataclasses.asdict(row)))
                        print(
                            f"  round={round_} {qps:g} req/s {policy:18s} errors={row.errors:3d} "
                            f"ttft_p90={row.ttft_p90_s} goodput={row.goodput_rps:.2f} "
                            f"cpu={row.picker_cpu_ms_per_req:.2f} "
                            f"marginal={row.picker_marginal_cpu_ms_per_req:.2f}"
                            f" ms/req busy={row.picker_busy_cores:.2f} ready={row.ready_s:.1f}s",
                            flush=True,
                        )
    return rows


def _span(values: Sequence[float | None], digits: int = 3) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    low, high = round(min(present), digits), round(max(present), digits)
    return f"{low:g}" if low == high else f"{low:g}-{high:g}"


def ratios(rows: Sequence[Row], policy: str, field: str) -> list[float]:
    """`field` of `policy` over the EPP's, round by round at each load (where both have a value)."""
    out = []
    for row in rows:
        if row.policy != policy:
            continue
        for epp in rows:
            if (epp.policy, epp.offered_rps, epp.round) == (EPP_POLICY, row.offered_rps, row.round):
                mine, theirs = getattr(row, field), getattr(epp, field)
                if mine is not None and theirs:
                    out.append(round(mine / theirs, 2))
    return out


def markdown(rows: Sequence[Row], *, command: str, meta: dict[str, Any]) -> str:
    lines = [
        f"# The real GIE EPP {GIE_VERSION} beside Frontier's picker, Envoy in `{meta['envoy_mode']}` mode"
        " (issues 14, 19)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {meta['machine']}  ",
        f"Setup: {meta['setup']}",
        "",
        "Cells are min-max over rounds (model time: TTFT in seconds, goodput in req/s at TTFT <= 1 s and"
        " TPOT <= 50 ms); ratios to the EPP are per round, same arrivals.",
        "",
        "| load req/s | policy | errors | TTFT p90 s | x EPP | goodput req/s | x EPP | hit rate |"
        " picker CPU ms/req | marginal ms/req | x EPP | picker cores busy | ready s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    policies = list(dict.fromkeys(row.policy for row in rows))
    for qps in sorted({row.offered_rps for row in rows}):
        at = [row for row in rows if row.offered_rps == qps]
        for policy in policies:
            cells = [row for row in at if row.policy == policy]
            if not cells:
                continue

            def versus(field: str, policy: str = policy, at: Sequence[Row] = at) -> str:
                if policy == EPP_POLICY:
                    return ""
                return ", ".join(f"{r:g}" for r in ratios(at, policy, field)) or "-"

            lines.append(
                f"| {qps:g} | {policy} | {', '.join(str(c.errors) for c in cells)} "
                f"| {_span([c.ttft_p90_s for c in cells])} | {versus('ttft_p90_s')} "
                f"| {_span([c.goodput_rps for c in cells], 2)} | {versus('goodput_rps')} "
                f"| {_span([c.prefix_hit_rate for c in cells])} "
                f"| {_span([c.picker_cpu_ms_per_req for c in cells], 2)} "
                f"| {_span([c.picker_marginal_cpu_ms_per_req for c in cells], 2)} "
                f"| {versus('picker_marginal_cpu_ms_per_req')} "
                f"| {_span([c.picker_busy_cores for c in cells], 2)} "
                f"| {_span([c.ready_s for c in cells], 1)} |"
            )
    ready = {
        policy: statistics.median(row.ready_s for row in rows if row.policy == policy) for policy in policies
    }
    lines += [
        "",
        "Time to ready (picker start to the first request answered through Envoy), median over runs: "
        + ", ".join(f"{policy} {seconds:.1f} s" for policy, seconds in ready.items())
        + ".",
        "",
    ]
    return "\n".join(lines)


def default_name(envoy_mode: str, arrival_cv: float) -> str:
    """`gie-mode`, `gie-mode-cheap-envoy`, and `-gamma-cv<CV>` after either for bursty arrivals."""
    name = "gie-mode" if envoy_mode == "gie" else f"gie-mode-{envoy_mode}-envoy"
    return name if arrival_cv == 1.0 else f"{name}-{workloads.arrival_label(arrival_cv)}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m frontier_bench.gie_mode", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--work", type=Path, default=Path("out/gie_mode"))
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--loads", nargs="+", type=float, default=[25.0, 40.0, 55.0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--envoy-mode", choices=ENVOY_MODES, default="gie")
    parser.add_argument(
        "--arrival-cv", type=float, default=1.0, help="CV of the Gamma gaps between arrivals (1: Poisson)"
    )
    parser.add_argument("--name", help="results file name (default gie-mode, or gie-mode-MODE-envoy)")
    parser.add_argument("--warmup", type=float, default=10.0, help="model seconds of arrivals left out")
    parser.add_argument("--duration", type=float, default=20.0, help="model seconds of measured arrivals")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds the idle CPU rate is measured over")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if EPP_POLICY in args.policies:
        epp_binary()
    began = time.monotonic()
    rows = asyncio.run(
        run(
            policies=args.policies,
            loads=args.loads,
            rounds=args.rounds,
            warmup_s=args.warmup,
            duration_s=args.duration,
            idle_s=args.idle,
            work=args.work,
            envoy_mode=args.envoy_mode,
            arrival_cv=args.arrival_cv,
        )
    )
    command = "python -m frontier_bench.gie_mode " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {
        "envoy_mode": args.envoy_mode,
        "machine": protocol_overhead.machine_facts(),
        "setup": (
            f"{full.ENGINES} simulated engines (time scale {full.TIME_SCALE:g}) found through one"
            f" InferencePool on the local control plane; Envoy mode `{args.envoy_mode}`"
            f" ({RESPONSE_BODIES[args.envoy_mode]}), one Envoy thread; shared-prefix workload (fresh"
            f" question per request), {workloads.arrival_label(args.arrival_cv)} arrivals;"
            f" {args.warmup:g} s warm-up + {args.duration:g} s measured (model time) per run; {args.rounds}"
            " interleaved rounds"
        ),
        "wall_s": round(time.monotonic() - began, 1),
        "source": harness.source(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    document = {"command": command.strip(), **meta, "rows": [dataclasses.asdict(row) for row in rows]}
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.name or default_name(args.envoy_mode, args.arrival_cv)
    (args.out / f"{name}.json").write_text(json.dumps(document, indent=1) + "\n")
    text = markdown(rows, command=command.strip(), meta=meta)
    (args.out / f"{name}.md").write_text(text)
    print(text)
    print(f"wall {meta['wall_s']} s; cpus {os.cpu_count()}")


if __name__ == "__main__":
    main()
