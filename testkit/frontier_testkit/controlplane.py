"""A real, local Kubernetes control plane for tests and demos, with simulated GPU node pools.

There is no container runtime here, so kind cannot run; instead the real upstream components, built from the
Go module proxy by `make testbin` (hack/build.sh), run as local processes:

- etcd, kube-apiserver (loopback only, token auth for one `system:masters` user, RBAC on),
  kube-controller-manager (deployment, replicaset, garbage-collector, namespace and serviceaccount
  controllers) and kube-scheduler, all from one multi-call binary `kubecp`;
- KWOK, which plays the kubelet for every Node annotated `kwok.x-k8s.io/node: fake`: such nodes and the pods
  scheduled onto them become Ready without any container. Pod IPs come from a loopback range (127.1.0.0/16),
  so a local process can serve a fake pod's port by binding its IP.

Simulated *node pools* are Nodes created directly with the labels, taints and `nvidia.com/gpu` capacity a GKE
GPU node pool has, so the real scheduler places GPU workloads exactly as it would on GKE. The GIE CRDs
(`InferencePool` v1, ...) are installed from the GIE Go module at the version hack/build.sh pins.

`ControlPlane` is a context manager; every process runs in its own process group, dies with the Python process
that started it (PR_SET_PDEATHSIG) and is killed on exit, at interpreter exit, or on a failed start.
Run `python -m frontier_testkit.controlplane up --dir DIR` to keep one up by hand.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import pathlib
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, Self

import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from frontier_api import names

logger = logging.getLogger(__name__)

KWOK_NODE_ANNOTATION: Final = "kwok.x-k8s.io/node"
GKE_NODEPOOL_LABEL: Final = "cloud.google.com/gke-nodepool"
INSTANCE_TYPE_LABEL: Final = "node.kubernetes.io/instance-type"
POD_CIDR: Final = "127.1.0.0/16"
SERVICE_CIDR: Final = "10.0.0.0/24"
ADMIN_USER: Final = "frontier-admin"
CONTROLLERS: Final = (
    "deployment-controller",
    "replicaset-controller",
    "garbage-collector-controller",
    # PodDisruptionBudget status (which pods a budget covers, how many may be evicted).
    "disruption-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    # The API server taints every new Node node.kubernetes.io/not-ready (TaintNodesByCondition); only this
    # controller lifts the taint once KWOK reports the node Ready, so without it nothing schedules.
    "node-lifecycle-controller",
)
NOT_READY_TAINT: Final = "node.kubernetes.io/not-ready"
BINARY_NAMES: Final = ("kubecp", "kwok")


class ControlPlaneError(RuntimeError):
    """A component could not be found, started or made ready; the message says which and where its log is."""


# --- what to run -----------------------------------------------------------------------------------------


def default_cache_dir() -> pathlib.Path:
    """The folder hack/build.sh fills: `$FRONTIER_CACHE`, else the per-user `~/.cache/frontier`.

    Per-user rather than per-clone so a fresh clone (CI) reuses binaries that take many minutes to build."""
    if env := os.environ.get("FRONTIER_CACHE"):
        return pathlib.Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(pathlib.Path.home() / ".cache")
    return pathlib.Path(base) / "frontier"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Assets:
    """Everything `make testbin` produces: the binaries, KWOK's stages and the GIE CRDs."""

    kubecp: pathlib.Path
    kwok: pathlib.Path
    kwok_stages: pathlib.Path
    gie_crds: tuple[pathlib.Path, ...]

    @classmethod
    def discover(cls, cache_dir: pathlib.Path | None = None) -> Self:
        """Finds the assets under `cache_dir` (binaries also on PATH); raises `ControlPlaneError` naming what
        is missing and how to build it."""
        cache = cache_dir or default_cache_dir()
        found: dict[str, pathlib.Path] = {}
        missing: list[str] = []
        for name in BINARY_NAMES:
            local = cache / "bin" / name
            on_path = shutil.which(name)
            if local.is_file() and os.access(local, os.X_OK):
                found[name] = local
            elif on_path:
                found[name] = pathlib.Path(on_path)
            else:
                missing.append(f"{local} (or {name} on PATH)")
        stages = cache / "kwok" / "stages.yaml"
        if not stages.is_file():
            missing.append(str(stages))
        crds = tuple(sorted((cache / "gie").glob("*.yaml")))
        if not crds:
            missing.append(f"{cache / 'gie'}/*.yaml")
        if missing:
            raise ControlPlaneError(
                "local control plane not built; run `make testbin` (hack/build.sh). Missing: "
                + ", ".join(missing)
            )
        return cls(kubecp=found["kubecp"], kwok=found["kwok"], kwok_stages=stages, gie_crds=crds)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NodePool:
    """A simulated node pool: `size` identical KWOK nodes, GPU nodes labelled and tainted as GKE does."""

    name: str
    size: int
    instance_type: str
    cpu: str
    memory: str
    accelerator: str | None = None  # GKE accelerator label value, e.g. nvidia-h100-80gb; None for CPU pools
    gpus_per_node: int = 0
    max_pods: int = 110


DEFAULT_NODE_POOLS: Final = (
    NodePool(
        name="h100",
        size=2,
        instance_type="a3-highgpu-8g",
        cpu="208",
        memory="1872Gi",
        accelerator="nvidia-h100-80gb",
        gpus_per_node=8,
    ),
    NodePool(
        name="h200",
        size=1,
        instance_type="a3-ultragpu-8g",
        cpu="224",
        memory="2952Gi",
        accelerator="nvidia-h200-141gb",
        gpus_per_node=8,
    ),
    NodePool(name="cpu", size=1, instance_type="n2-standard-8", cpu="8", memory="32Gi"),
)


def node_manifest(pool: NodePool, index: int, *, pod_cidr: str) -> dict[str, Any]:
    """The Node object for member `index` of `pool`, as a GKE node of that pool looks to the scheduler.

    Each node gets its own `pod_cidr`: KWOK hands out pod IPs per node, so nodes sharing one range give
    two pods on different nodes the same IP, and local processes serving those pods would collide."""
    node_name = f"{pool.name}-{index}"
    labels = {
        "kubernetes.io/hostname": node_name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        GKE_NODEPOOL_LABEL: pool.name,
        INSTANCE_TYPE_LABEL: pool.instance_type,
        "type": "kwok",
    }
    resources = {"cpu": pool.cpu, "memory": pool.memory, "pods": str(pool.max_pods)}
    taints: list[dict[str, str]] = []
    if pool.accelerator:
        labels[names.GKE_ACCELERATOR_LABEL] = pool.accelerator
        resources[names.GPU_RESOURCE] = str(pool.gpus_per_node)
        # GKE taints every GPU node so only pods that tolerate it (and ask for GPUs) land there.
        taints.append({"key": names.GPU_RESOURCE, "value": "present", "effect": "NoSchedule"})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node_name, "labels": labels, "annotations": {KWOK_NODE_ANNOTATION: "fake"}},
        "spec": {"taints": taints, "podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {"capacity": resources, "allocatable": resources},
    }


# --- processes -------------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG: Final = 1
# Every component process still running, so interpreter exit can kill what a crashed caller left behind.
_running: set[subprocess.Popen[bytes]] = set()


def _die_with_parent() -> None:
    """Runs in the child before exec: ask the kernel to SIGKILL it when the Python process dies, even by
    SIGKILL, so a crashed test run leaves nothing behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    # Each component leads its own process group (start_new_session), so its pid is the group id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def stop_process(process: subprocess.Popen[bytes], *, grace_s: float) -> None:
    """SIGTERM the process's group, wait up to `grace_s` for the leader, then SIGKILL the group and reap."""
    _signal_group(process, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    _signal_group(process, signal.SIGKILL)
    process.wait()
    _running.discard(process)


@atexit.register
def _stop_all_processes() -> None:
    for process in list(_running):
        stop_process(process, grace_s=1.0)


@dataclasses.dataclass(kw_only=True)
class Component:
    """One running control-plane process (the leader of its own process group) and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: pathlib.Path

    def check_alive(self) -> None:
        if (code := self.process.poll()) is not None:
            raise ControlPlaneError(
                f"{self.name} exited with code {code}; last log lines:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, *, grace_s: float = 5.0) -> None:
        stop_process(self.process, grace_s=grace_s)


def free_port() -> int:
    """A loopback TCP port the OS considers free now (tiny race until the component binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _openssl(*args: str, cwd: pathlib.Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def generate_pki(pki: pathlib.Path) -> None:
    """A CA, a serving certificate for 127.0.0.1/localhost signed by it, and the service-account key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=frontier-local-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=pki)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver",
             "-keyout", "apiserver.key", "-out", "apiserver.csr", cwd=pki)  # fmt: skip
    (pki / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n")
    _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "30", "-extfile", "san.ext", "-out", "apiserver.crt", cwd=pki)  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def write_kubeconfig(path: pathlib.Path, *, server: str, ca_file: pathlib.Path, token: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "frontier", "cluster": {"server": server, "certificate-authority": str(ca_file)}}
        ],
        "users": [{"name": ADMIN_USER, "user": {"token": token}}],
        "contexts": [{"name": "frontier", "context": {"cluster": "frontier", "user": ADMIN_USER}}],
        "current-context": "frontier",
    }
    path.write_text(yaml.safe_dump(config))


# --- the control plane -----------------------------------------------------------------------------------


class ControlPlane:
    """etcd + kube-apiserver + controller-manager + scheduler + KWOK in `workdir`, with simulated node pools
    and the GIE CRDs installed. Use as a context manager; `kubeconfig` is valid between enter and exit."""

    def __init__(
        self,
        workdir: pathlib.Path,
        *,
        assets: Assets | None = None,
        node_pools: Iterable[NodePool] = DEFAULT_NODE_POOLS,
        start_timeout_s: float = 180.0,
    ) -> None:
        self.workdir = workdir.resolve()
        self.assets = assets or Assets.discover()
        self.node_pools = tuple(node_pools)
        self.start_timeout_s = start_timeout_s
        self.kubeconfig = self.workdir / "kubeconfig"
        self.token = secrets.token_hex(16)
        self.server = ""
        self.components: list[Component] = []
        self._api_client: k8s_client.ApiClient | None = None

    # context manager ---------------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.stop()

    # lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Starts every component in dependency order, creates the node pools and installs the GIE CRDs."""
        started = time.monotonic()
        self._replace_previous()
        for sub in ("logs", "pki", "etcd"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        pki = self.workdir / "pki"
        generate_pki(pki)
        (pki / "tokens.csv").write_text(f'{self.token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        etcd_url = self._start_etcd()
        self._start_apiserver(etcd_url=etcd_url, pki=pki)
        self._start_controllers(pki=pki)
        self._start_kwok()
        self.create_node_pools(self.node_pools)
        self.apply_crds(self.assets.gie_crds)
        self._wait_for(
            "controller-manager (default ServiceAccount)",
            lambda: self._has_service_account("default", "default"),
        )
        logger.info(
            "event=controlplane_ready server=%s kubeconfig=%s nodes=%d seconds=%.1f",
            self.server,
            self.kubeconfig,
            sum(pool.size for pool in self.node_pools),
            time.monotonic() - started,
        )

    def _replace_previous(self) -> None:
        """Stop a control plane an earlier `start` left running in this folder (its process groups are listed
        in `pids`) and drop its etcd data, so every start is a fresh cluster instead of a 409 on objects the
        last one created."""
        pids_file = self.workdir / "pids"
        if pids_file.exists():
            stopped = 0
            for line in pids_file.read_text().split():
                with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
                    os.killpg(int(line), signal.SIGKILL)
                    stopped += 1
            pids_file.unlink()
            if stopped:
                logger.info("event=controlplane_replaced workdir=%s processes=%d", self.workdir, stopped)
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)

    def _start_etcd(self) -> str:
        client_port, peer_port = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        self._spawn(
            "etcd",
            [str(self.assets.kubecp), "etcd",
             "--name=frontier", f"--data-dir={self.workdir / 'etcd'}", "--unsafe-no-fsync",
             f"--listen-client-urls={client_url}", f"--advertise-client-urls={client_url}",
             f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
             f"--initial-cluster=frontier={peer_url}", "--log-level=warn"],
        )  # fmt: skip
        self._wait_http("etcd", f"{client_url}/health", context=None)
        return client_url

    def _start_apiserver(self, *, etcd_url: str, pki: pathlib.Path) -> None:
        api_port = free_port()
        self.server = f"https://127.0.0.1:{api_port}"
        self._spawn(
            "kube-apiserver",
            [str(self.assets.kubecp), "kube-apiserver",
             f"--etcd-servers={etcd_url}",
             "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
             f"--cert-dir={pki}", f"--tls-cert-file={pki / 'apiserver.crt'}",
             f"--tls-private-key-file={pki / 'apiserver.key'}", f"--client-ca-file={pki / 'ca.crt'}",
             f"--token-auth-file={pki / 'tokens.csv'}", "--authorization-mode=RBAC",
             "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
             f"--service-account-key-file={pki / 'sa.pub'}",
             f"--service-account-signing-key-file={pki / 'sa.key'}",
             f"--service-cluster-ip-range={SERVICE_CIDR}", "--allow-privileged=true",
             # The default reconciler would publish 127.0.0.1 as the `kubernetes` Service endpoint, which
             # Endpoints validation rejects, and retry forever.
             "--endpoint-reconciler-type=none", "--profiling=false"],
        )  # fmt: skip
        write_kubeconfig(self.kubeconfig, server=self.server, ca_file=pki / "ca.crt", token=self.token)
        tls = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self._wait_http("kube-apiserver", f"{self.server}/readyz", context=tls)

    def _start_controllers(self, *, pki: pathlib.Path) -> None:
        # Both serve no port (--secure-port=0); readiness shows in what they do (ServiceAccounts, taints).
        self._spawn(
            "kube-controller-manager",
            [str(self.assets.kubecp), "kube-controller-manager",
             f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--secure-port=0",
             f"--controllers={','.join(CONTROLLERS)}",
             f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}"],
        )  # fmt: skip
        self._spawn(
            "kube-scheduler",
            [str(self.assets.kubecp), "kube-scheduler",
             f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--secure-port=0"],
        )  # fmt: skip

    def _start_kwok(self) -> None:
        self._spawn(
            "kwok",
            [str(self.assets.kwok), f"--kubeconfig={self.kubeconfig}", f"--config={self.assets.kwok_stages}",
             "--manage-all-nodes=false",
             f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
             f"--cidr={POD_CIDR}", "--node-ip=127.0.0.1", "--node-lease-duration-seconds=40",
             "--server-address="],
        )  # fmt: skip

    def stop(self) -> None:
        """Stops every component, newest first (KWOK and controllers before the API server before etcd)."""
        if self._api_client is not None:
            self._api_client.close()
            self._api_client = None
        for component in reversed(self.components):
            component.stop()
            logger.info("event=component_stopped component=%s", component.name)
        self.components.clear()

    # API access ----------------------------------------------------------------------------------------

    def api_client(self) -> k8s_client.ApiClient:
        """A `kubernetes` client for this control plane (shared; closed on stop)."""
        if self._api_client is None:
            self._api_client = k8s_config.new_client_from_config(config_file=str(self.kubeconfig))
        return self._api_client

    def namespace(self, name: str) -> str:
        """Creates a fresh namespace `name-<random>` and waits until pods can be created in it (its default
        ServiceAccount exists); returns its name."""
        unique = f"{name[:50].rstrip('-')}-{secrets.token_hex(3)}"
        core = k8s_client.CoreV1Api(self.api_client())
        core.create_namespace({"metadata": {"name": unique}})
        self._wait_for(
            f"ServiceAccount default in {unique}", lambda: self._has_service_account(unique, "default")
        )
        return unique

    def create_node_pools(self, pools: Iterable[NodePool]) -> None:
        """Creates every pool's nodes and waits until KWOK reports them Ready and the node lifecycle
        controller has lifted the not-ready taint, so they accept pods."""
        core = k8s_client.CoreV1Api(self.api_client())
        node_names: list[str] = []
        for pool in pools:
            for index in range(pool.size):
                # 127.1.0.0/16 split into one /24 per node, in creation order (.0 stays unused).
                pod_cidr = f"127.1.{len(node_names) + 1}.0/24"
                manifest = node_manifest(pool, index, pod_cidr=pod_cidr)
                core.create_node(manifest)
                node_names.append(manifest["metadata"]["name"])
            logger.info(
                "event=node_pool_created pool=%s size=%d accelerator=%s gpus_per_node=%d",
                pool.name,
                pool.size,
                pool.accelerator or "none",
                pool.gpus_per_node,
            )

        def all_schedulable() -> bool:
            ready = {
                node.metadata.name
                for node in core.list_node().items
                if _is_ready(node.status.conditions)
                and not any(taint.key == NOT_READY_TAINT for taint in node.spec.taints or ())
            }
            return ready.issuperset(node_names)

        self._wait_for(f"KWOK nodes Ready and untainted {node_names}", all_schedulable)

    def apply_crds(self, paths: Iterable[pathlib.Path]) -> list[str]:
        """Creates or replaces every CustomResourceDefinition in the YAML files `paths` and waits until each
        is Established; returns their names. Other kinds in the files are an error."""
        ext = k8s_client.ApiextensionsV1Api(self.api_client())
        crd_names = []
        for path in paths:
            for doc in yaml.safe_load_all(path.read_text()):
                if not doc:
                    continue
                if doc.get("kind") != "CustomResourceDefinition":
                    raise ControlPlaneError(
                        f"{path}: expected only CustomResourceDefinitions, got {doc.get('kind')}"
                    )
                crd_name = doc["metadata"]["name"]
                try:
                    ext.create_custom_resource_definition(doc)
                except k8s_client.ApiException as error:
                    if error.status != 409:
                        raise
                    current = ext.read_custom_resource_definition(crd_name)
                    doc["metadata"]["resourceVersion"] = current.metadata.resource_version
                    ext.replace_custom_resource_definition(crd_name, doc)
                crd_names.append(crd_name)
                logger.info("event=crd_applied crd=%s file=%s", crd_name, path.name)

        def established() -> bool:
            return all(
                _is_established(ext.read_custom_resource_definition(crd).status.conditions)
                for crd in crd_names
            )

        self._wait_for(f"CRDs Established {crd_names}", established)
        return crd_names

    # helpers -----------------------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> None:
        log_path = self.workdir / "logs" / f"{name}.log"
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
                # Only sets PDEATHSIG (one prctl call), so it is safe even though preexec_fn runs after fork.
                preexec_fn=_die_with_parent,
            )
        _running.add(process)
        with self.workdir.joinpath("pids").open("a") as pids:
            pids.write(f"{process.pid}\n")
        self.components.append(Component(name=name, process=process, log_path=log_path))
        logger.info("event=component_started component=%s pid=%d log=%s", name, process.pid, log_path)

    def check_components(self) -> None:
        """Raises `ControlPlaneError` with its log tail if any component has exited."""
        for component in self.components:
            component.check_alive()

    def _wait_for(self, what: str, ready: Callable[[], bool], *, interval_s: float = 0.2) -> None:
        """Polls `ready()` until true; fails fast if a component died, or after the start timeout."""
        deadline = time.monotonic() + self.start_timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            self.check_components()
            try:
                if ready():
                    return
            except (k8s_client.ApiException, OSError, ValueError) as error:
                last_error = error
            time.sleep(interval_s)
        logs = "\n".join(f"--- {c.name} ({c.log_path}):\n{c.log_tail(8)}" for c in self.components)
        raise ControlPlaneError(
            f"timed out after {self.start_timeout_s}s waiting for {what}: {last_error}\n{logs}"
        )

    def _wait_http(self, name: str, url: str, *, context: ssl.SSLContext | None) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if context else {}

        def ok() -> bool:
            request = urllib.request.Request(url, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=2, context=context) as response:
                    return bool(response.status == 200)
            except urllib.error.URLError:
                return False

        self._wait_for(f"{name} at {url}", ok)

    def _has_service_account(self, namespace: str, name: str) -> bool:
        core = k8s_client.CoreV1Api(self.api_client())
        try:
            core.read_namespaced_service_account(name, namespace)
        except k8s_client.ApiException as error:
            if error.status == 404:
                return False
            raise
        return True


def _is_ready(conditions: list[Any] | None) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in conditions or ())


def _is_established(conditions: list[Any] | None) -> bool:
    return any(c.type == "Established" and c.status == "True" for c in conditions or ())


def pool_summary(pools: Iterable[NodePool]) -> list[Mapping[str, Any]]:
    """What a human needs to target a pool: its nodeSelector and, for GPU pools, the toleration."""
    return [
        {
            "pool": pool.name,
            "nodes": pool.size,
            "nodeSelector": {GKE_NODEPOOL_LABEL: pool.name},
            "gpus_per_node": pool.gpus_per_node,
            "accelerator": pool.accelerator,
        }
        for pool in pools
    ]


# --- command line ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """Turns SIGTERM into KeyboardInterrupt so `up` tears down on either signal."""

    def handler(signum: int, frame: types.FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m frontier_testkit.controlplane", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start a control plane and keep it up until Ctrl-C")
    up.add_argument(
        "--dir", type=pathlib.Path, required=True, help="working folder (kubeconfig, logs, etcd data)"
    )
    up.add_argument(
        "--cache", type=pathlib.Path, default=None, help="make testbin's output (default: ~/.cache/frontier)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    assets = Assets.discover(args.cache)
    with _stop_on_sigterm(), ControlPlane(args.dir, assets=assets) as plane:
        print(plane.kubeconfig, flush=True)
        print(json.dumps(pool_summary(plane.node_pools)), file=sys.stderr, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                plane.check_components()
                time.sleep(1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
