"""The local control plane behaves like a real cluster with GKE GPU node pools: the real scheduler places
GPU workloads on the GPU pool (and refuses impossible ones with its reason), KWOK makes them Ready with
loopback pod IPs, the garbage collector removes dependents, and the GIE InferencePool CRD validates its
schema."""

import ipaddress
import pathlib
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client as k8s_client

from frontier_api import names
from frontier_testkit import controlplane

pytestmark = pytest.mark.cluster

REPO = pathlib.Path(__file__).resolve().parents[2]
WAIT_S = 90.0


def wait_until(what: str, check: Callable[[], Any], *, timeout_s: float = WAIT_S) -> Any:
    """Polls `check()` until it returns something truthy, and returns that."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


def deployment(
    name: str, *, replicas: int = 1, gpus: int = 0, accelerator: str | None = None
) -> dict[str, Any]:
    """A vLLM-like Deployment; with `accelerator` it selects that GPU pool and tolerates the GPU taint."""
    container: dict[str, Any] = {"name": "server", "image": "vllm/vllm-openai:latest"}
    pod_spec: dict[str, Any] = {"containers": [container]}
    if gpus:
        container["resources"] = {"limits": {names.GPU_RESOURCE: str(gpus)}}
    if accelerator:
        pod_spec["nodeSelector"] = {names.GKE_ACCELERATOR_LABEL: accelerator}
        pod_spec["tolerations"] = [{"key": names.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
        },
    }


def pods_of(core: k8s_client.CoreV1Api, namespace: str, app: str) -> list[Any]:
    return list(core.list_namespaced_pod(namespace, label_selector=f"app={app}").items)


def is_ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or ())


def test_api_server_reports_the_pinned_kubernetes_release(control_plane: controlplane.ControlPlane):
    pinned = re.search(r"^K8S_VERSION=(\S+)", (REPO / "hack" / "build.sh").read_text(), re.MULTILINE)
    assert pinned
    version = k8s_client.VersionApi(control_plane.api_client()).get_code()
    assert version.git_version == pinned.group(1)


def test_gpu_deployment_lands_on_the_gpu_pool_ready_with_loopback_pod_ips(
    control_plane: controlplane.ControlPlane,
):
    namespace = control_plane.namespace("gpu-ready")
    api = control_plane.api_client()
    apps, core = k8s_client.AppsV1Api(api), k8s_client.CoreV1Api(api)
    apps.create_namespaced_deployment(
        namespace, deployment("decode", replicas=2, gpus=1, accelerator="nvidia-h100-80gb")
    )

    def ready_pods() -> list[Any]:
        pods = pods_of(core, namespace, "decode")
        return pods if len(pods) == 2 and all(is_ready(p) and p.status.pod_ip for p in pods) else []

    pods = wait_until("2 Ready decode pods", ready_pods)
    loopback = ipaddress.ip_network(controlplane.POD_CIDR)
    for pod in pods:
        node = core.read_node(pod.spec.node_name)
        assert node.metadata.labels[names.GKE_ACCELERATOR_LABEL] == "nvidia-h100-80gb"
        assert ipaddress.ip_address(pod.status.pod_ip) in loopback
    assert len({pod.status.pod_ip for pod in pods}) == 2
    status = wait_until(
        "Deployment status to count 2 available replicas",
        lambda: (
            (s := apps.read_namespaced_deployment_status("decode", namespace).status).available_replicas == 2
            and s
        ),
    )
    assert status.ready_replicas == 2


def test_pod_without_gpu_toleration_lands_on_the_cpu_pool(control_plane: controlplane.ControlPlane):
    namespace = control_plane.namespace("cpu-pool")
    api = control_plane.api_client()
    k8s_client.AppsV1Api(api).create_namespaced_deployment(namespace, deployment("web"))
    core = k8s_client.CoreV1Api(api)
    [pod] = wait_until("a Ready web pod", lambda: [p for p in pods_of(core, namespace, "web") if is_ready(p)])
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.labels[controlplane.GKE_NODEPOOL_LABEL] == "cpu"
    assert names.GKE_ACCELERATOR_LABEL not in node.metadata.labels


def test_deployment_asking_more_gpus_than_any_node_has_stays_pending_with_the_scheduler_reason(
    control_plane: controlplane.ControlPlane,
):
    namespace = control_plane.namespace("too-many-gpus")
    api = control_plane.api_client()
    most = max(pool.gpus_per_node for pool in control_plane.node_pools)
    k8s_client.AppsV1Api(api).create_namespaced_deployment(
        namespace, deployment("huge", gpus=most + 1, accelerator="nvidia-h100-80gb")
    )
    core = k8s_client.CoreV1Api(api)

    def unschedulable_condition() -> Any:
        for pod in pods_of(core, namespace, "huge"):
            for condition in pod.status.conditions or ():
                if condition.type == "PodScheduled" and condition.status == "False":
                    return (pod, condition)
        return None

    pod, condition = wait_until("the scheduler to mark the pod unschedulable", unschedulable_condition)
    assert pod.status.phase == "Pending"
    assert not pod.spec.node_name
    assert condition.reason == "Unschedulable"
    assert f"Insufficient {names.GPU_RESOURCE}" in condition.message


def test_deleting_a_deployment_garbage_collects_its_replicasets_and_pods(
    control_plane: controlplane.ControlPlane,
):
    namespace = control_plane.namespace("gc")
    api = control_plane.api_client()
    apps, core = k8s_client.AppsV1Api(api), k8s_client.CoreV1Api(api)
    apps.create_namespaced_deployment(namespace, deployment("owner", replicas=2))
    wait_until("2 Ready pods", lambda: sum(is_ready(p) for p in pods_of(core, namespace, "owner")) == 2)
    [replica_set] = apps.list_namespaced_replica_set(namespace).items
    assert replica_set.metadata.owner_references[0].kind == "Deployment"

    apps.delete_namespaced_deployment("owner", namespace, propagation_policy="Background")

    wait_until(
        "the ReplicaSet to be collected", lambda: not apps.list_namespaced_replica_set(namespace).items
    )
    wait_until("the pods to be collected", lambda: not pods_of(core, namespace, "owner"))


def inference_pool(target_port: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{names.GIE_GROUP}/{names.GIE_VERSION}",
        "kind": "InferencePool",
        "metadata": {"name": "pool"},
        "spec": {
            "selector": {"matchLabels": {"app": "vllm"}},
            "targetPorts": [{"number": target_port}],
            "endpointPickerRef": {"name": "picker", "port": {"number": names.EXT_PROC_PORT}},
        },
    }


def test_invalid_inference_pool_is_rejected_naming_the_field(control_plane: controlplane.ControlPlane):
    namespace = control_plane.namespace("gie")
    custom = k8s_client.CustomObjectsApi(control_plane.api_client())
    create = custom.create_namespaced_custom_object

    with pytest.raises(k8s_client.ApiException) as rejected:
        create(
            names.GIE_GROUP, names.GIE_VERSION, namespace, names.INFERENCE_POOL_PLURAL, inference_pool(70000)
        )

    assert rejected.value.status == 422
    assert "spec.targetPorts[0].number" in rejected.value.body
    created = create(
        names.GIE_GROUP, names.GIE_VERSION, namespace, names.INFERENCE_POOL_PLURAL, inference_pool(8000)
    )
    assert created["spec"]["endpointPickerRef"]["kind"] == "Service"  # the CRD's default was applied
