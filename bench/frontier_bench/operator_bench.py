"""Operator benchmark on the local control plane: how fast ModelTiers become workloads; what a restart costs.

Two measurements against a real API server, controller-manager, scheduler and KWOK GPU nodes, with
`frontier-operator` running as its own process:

1. **apply → children**: ModelTiers are created open-loop (a fixed interval apart, spread over several
   InferencePools); for each, the time from its create call returning to (a) its Deployment and its pool's
   picker Deployment existing, (b) its status first written, (c) `Ready=True` (pods Ready on KWOK).
   Watches timestamp the events, so polling does not quantise the numbers.
2. **restart**: with N ModelTiers Ready, the operator is stopped and started again; time from process start
   to its last initial reconcile (steady state), the number of writes it logs, and how many objects'
   resourceVersion changed (target: steady state within 60 s, zero writes).

The machine is shared and noisy; these are end-to-end wall times of a Python operator on 2 cores.
"""

import argparse
import contextlib
import datetime
import json
import logging
import math
import os
import pathlib
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any, Final

from kubernetes import client as k8s_client
from kubernetes import dynamic, watch

from frontier_api import names
from frontier_bench import stats
from frontier_testkit import controlplane

log = logging.getLogger("frontier_bench.operator_bench")

REPO: Final = pathlib.Path(__file__).resolve().parents[2]
CRD: Final = REPO / "crds" / "modeltier.yaml"
TIER_API: Final = f"{names.FRONTIER_GROUP}/{names.FRONTIER_VERSION}"
H100: Final = "nvidia-h100-80gb"


def pool_manifest(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{names.GIE_GROUP}/{names.GIE_VERSION}",
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": f"{name}-servers"}},
            "targetPorts": [{"number": 8000}],
            "endpointPickerRef": {"name": f"{name}-picker", "port": {"number": 9002}},
        },
    }


def tier_manifest(name: str, namespace: str, pool: str) -> dict[str, Any]:
    """An aggregated one-replica, one-GPU tier (fp8, ngram speculation) on the H100 pool."""
    return {
        "apiVersion": TIER_API,
        "kind": names.MODEL_TIER_KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "poolRef": {"name": pool},
            "model": {"source": "meta-llama/Llama-3.1-8B-Instruct", "servedName": name},
            "engine": {"quantization": "fp8", "speculative": {"method": "ngram", "numSpeculativeTokens": 4}},
            "serving": {"replicas": 1, "accelerator": {"type": H100}},
        },
    }


class Timeline:
    """First-seen wall times of objects and tier states, filled by watch threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deployments: dict[str, float] = {}
        self.status_written: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.stop = threading.Event()

    def _first(self, table: dict[str, float], key: str, when: float) -> None:
        with self.lock:
            table.setdefault(key, when)


def _watch_forever(timeline: Timeline, fn: Any, handle: Any, **kwargs: Any) -> None:
    # Each restart resumes from the last resourceVersion seen, so no event between two watches is lost (a
    # fresh list would merge several state changes into one "ADDED" and skew the first-seen times).
    resource_version: str | None = None
    while not timeline.stop.is_set():
        w = watch.Watch()
        try:
            extra = {"resource_version": resource_version} if resource_version else {}
            for event in w.stream(fn, timeout_seconds=5, **kwargs, **extra):
                handle(event, time.time())
                obj = event["object"]
                meta = obj["metadata"] if isinstance(obj, dict) else obj.metadata
                resource_version = (
                    meta["resourceVersion"] if isinstance(meta, dict) else meta.resource_version
                )
                if timeline.stop.is_set():
                    break
        except Exception as err:  # a watch can expire (410 Gone) or drop: start again from a fresh list
            log.debug("watch restarted: %s", err)
            resource_version = None
        finally:
            w.stop()


def start_watches(
    api_client: k8s_client.ApiClient, namespace: str, timeline: Timeline
) -> list[threading.Thread]:
    apps = k8s_client.AppsV1Api(api_client)
    custom = k8s_client.CustomObjectsApi(api_client)

    def on_deployment(event: dict[str, Any], when: float) -> None:
        timeline._first(timeline.deployments, event["object"].metadata.name, when)

    def on_tier(event: dict[str, Any], when: float) -> None:
        obj = event["object"]
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        if "observedGeneration" in status:
            timeline._first(timeline.status_written, name, when)
        for cond in status.get("conditions") or []:
            if cond.get("type") == "Ready" and cond.get("status") == "True":
                timeline._first(timeline.ready, name, when)

    threads = [
        threading.Thread(
            target=_watch_forever,
            args=(timeline, apps.list_namespaced_deployment, on_deployment),
            kwargs={"namespace": namespace},
            daemon=True,
        ),
        threading.Thread(
            target=_watch_forever,
            args=(timeline, custom.list_namespaced_custom_object, on_tier),
            kwargs={
                "group": names.FRONTIER_GROUP,
                "version": names.FRONTIER_VERSION,
                "namespace": namespace,
                "plural": names.MODEL_TIER_PLURAL,
            },
            daemon=True,
        ),
    ]
    for t in threads:
        t.start()
    return threads


@contextlib.contextmanager
def operator_process(kubeconfig: pathlib.Path, namespace: str, log_path: pathlib.Path) -> Iterator[Any]:
    """`frontier-operator` watching `namespace`; yields (process, start wall time)."""
    with log_path.open("ab") as out:
        started = time.time()
        process = subprocess.Popen(
            [sys.executable, "-m", "frontier_operator.main", "--kubeconfig", str(kubeconfig),
             "--namespace", namespace, "--engine-command", "frontier-sim serve", "--resync-seconds", "3600"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            yield process, started
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)


def wait_until(what: str, check: Any, *, timeout_s: float, interval_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


def _log_time(line: str) -> float:
    stamp = line[:23]  # logging's default asctime: "2026-11-27 06:56:44,750" (local time)
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def resource_versions(dyn: dynamic.DynamicClient, namespace: str) -> dict[str, str]:
    kinds = [
        (TIER_API, names.MODEL_TIER_KIND),
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("v1", "ConfigMap"),
        ("v1", "ServiceAccount"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ]
    out: dict[str, str] = {}
    for api_version, kind in kinds:
        for item in dyn.get(dyn.resources.get(api_version=api_version, kind=kind), namespace=namespace).items:
            out[f"{kind}/{item.metadata.name}"] = item.metadata.resourceVersion
    return out


def run(
    *, tiers: int, restart_tiers: int, pools: int, interval_s: float, workdir: pathlib.Path
) -> dict[str, Any]:
    node_pools = (
        controlplane.NodePool(
            name="h100",
            size=math.ceil(restart_tiers / 8) + 1,
            instance_type="a3-highgpu-8g",
            cpu="208",
            memory="1872Gi",
            accelerator=H100,
            gpus_per_node=8,
        ),
        controlplane.NodePool(name="cpu", size=1, instance_type="n2-standard-8", cpu="8", memory="32Gi"),
    )
    with controlplane.ControlPlane(workdir / "cp", node_pools=node_pools) as plane:
        api_client = plane.api_client()
        dyn = dynamic.DynamicClient(api_client)
        plane.apply_crds([CRD])
        ns = plane.namespace("op-bench")
        pool_res = dyn.resources.get(
            api_version=f"{names.GIE_GROUP}/{names.GIE_VERSION}", kind="InferencePool"
        )
        tier_res = dyn.resources.get(api_version=TIER_API, kind=names.MODEL_TIER_KIND)
        for p in range(pools):
            dyn.create(pool_res, body=pool_manifest(f"pool-{p}", ns), namespace=ns)
        timeline = Timeline()
        start_watches(api_client, ns, timeline)
        created: dict[str, float] = {}
        pool_of: dict[str, str] = {}

        first_log = workdir / "operator-first.log"
        with operator_process(plane.kubeconfig, ns, first_log):
            wait_until(
                "operator start", lambda: "starting namespaces=" in first_log.read_text(), timeout_s=60
            )
            time.sleep(2.0)  # kopf's watches are open once its startup handlers ran
            # 1. apply -> children, open loop.
            for i in range(tiers):
                name, pool = f"tier-{i:03d}", f"pool-{i % pools}"
                dyn.create(tier_res, body=tier_manifest(name, ns, pool), namespace=ns)
                created[name], pool_of[name] = time.time(), pool
                time.sleep(interval_s)
            wait_until("first batch Ready", lambda: len(timeline.ready) >= tiers, timeout_s=300)
            first_batch = sorted(created)
            children = [
                max(timeline.deployments[f"{n}-serving"], timeline.deployments[f"{pool_of[n]}-picker"])
                - created[n]
                for n in first_batch
            ]
            status_lat = [timeline.status_written[n] - created[n] for n in first_batch]
            ready_lat = [timeline.ready[n] - created[n] for n in first_batch]
            # 2. fill up to restart_tiers, wait until all are Ready and the operator is quiet.
            for i in range(tiers, restart_tiers):
                name = f"tier-{i:03d}"
                dyn.create(tier_res, body=tier_manifest(name, ns, f"pool-{i % pools}"), namespace=ns)
            wait_until(
                f"{restart_tiers} tiers Ready", lambda: len(timeline.ready) >= restart_tiers, timeout_s=600
            )
            wait_until(
                "operator quiet",
                lambda: time.time() - first_log.stat().st_mtime > 3.0,
                timeout_s=120,
            )
        first_writes = sum(1 for line in first_log.read_text().splitlines() if " write verb=" in line)
        before = resource_versions(dyn, ns)

        second_log = workdir / "operator-second.log"
        marker = f"reconcile tier={ns}/"
        with operator_process(plane.kubeconfig, ns, second_log) as (_process, started):

            def reconciled() -> set[str]:
                return {
                    line.split(marker, 1)[1].split(" ", 1)[0]
                    for line in second_log.read_text().splitlines()
                    if marker in line
                }

            wait_until("restart steady state", lambda: len(reconciled()) >= restart_tiers, timeout_s=300)
            time.sleep(5.0)  # let the Deployment events of the initial listing be handled too
        lines = second_log.read_text().splitlines()
        steady = max(_log_time(line) for line in lines if marker in line) - started
        restart_writes = [line for line in lines if " write verb=" in line]
        after = resource_versions(dyn, ns)
        changed = sorted(k for k in before if after.get(k) != before[k])
        timeline.stop.set()
    return {
        "apply": {
            "tiers": tiers,
            "pools": pools,
            "interval_s": interval_s,
            "children_created_s": stats.percentiles(children),
            "status_written_s": stats.percentiles(status_lat),
            "ready_s": stats.percentiles(ready_lat),
        },
        "restart": {
            "tiers": restart_tiers,
            "objects": len(before),
            "steady_state_s": round(steady, 2),
            "writes": len(restart_writes),
            "changed_resource_versions": changed,
            "writes_before_restart": first_writes,
        },
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }


def _ms(values: dict[str, float | None], key: str) -> str:
    value = values.get(key)
    return "-" if value is None else f"{value * 1000:,.0f}"


def report(result: dict[str, Any], command: str) -> str:
    a, r = result["apply"], result["restart"]
    rows = [
        ("children created (tier Deployment + pool picker)", a["children_created_s"]),
        ("status first written", a["status_written_s"]),
        ("Ready=True (pods scheduled and Ready on KWOK)", a["ready_s"]),
    ]
    lines = [
        "# Operator: apply → children, and restart cost",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()} python {platform.python_version()}, {os.cpu_count()} CPUs shared with"
        f" other work (1-minute load average at the end: {result['load_average_1m_at_end']})",
        "",
        f"## Apply → children ({a['tiers']} ModelTiers, {a['pools']} pools, one every {a['interval_s']} s)",
        "",
        "| milestone | p50 ms | p90 ms | p99 ms |",
        "|---|---:|---:|---:|",
    ]
    for label, values in rows:
        lines.append(f"| {label} | {_ms(values, 'p50')} | {_ms(values, 'p90')} | {_ms(values, 'p99')} |")
    lines += [
        "",
        f"## Operator restart with {r['tiers']} ModelTiers Ready ({r['objects']} objects)",
        "",
        f"- process start to the last initial reconcile: **{r['steady_state_s']} s** (target ≤ 60 s)",
        f"- writes logged by the restarted operator: **{r['writes']}** (target 0)",
        f"- objects whose resourceVersion changed: **{len(r['changed_resource_versions'])}**",
        f"- for scale: writes the first operator made to create all of them: {r['writes_before_restart']}",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench/results"))
    parser.add_argument("--tiers", type=int, default=50)
    parser.add_argument("--restart-tiers", type=int, default=200)
    parser.add_argument("--pools", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between ModelTier creations")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    command = "python -m frontier_bench.operator_bench " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    with tempfile.TemporaryDirectory(prefix="operator-bench-") as tmp:
        result = run(
            tiers=args.tiers,
            restart_tiers=args.restart_tiers,
            pools=args.pools,
            interval_s=args.interval,
            workdir=pathlib.Path(tmp),
        )
    result["command"] = command
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "operator_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "operator_bench.md").write_text(report(result, command))
    print(report(result, command))


if __name__ == "__main__":
    main()
