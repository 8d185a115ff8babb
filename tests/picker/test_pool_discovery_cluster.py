"""InferencePool discovery against the local control plane (real kube-apiserver, scheduler, KWOK): the
picker's datastore follows the pool's Ready pods as a Deployment scales and the pool's selector changes, and
the priorities of the InferenceObjectives that name the pool."""

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client as k8s_client

from frontier_api import names
from frontier_picker import datastore, pool_discovery
from frontier_testkit import controlplane

pytestmark = pytest.mark.cluster


def inference_pool(app: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{names.GIE_GROUP}/{names.GIE_VERSION}",
        "kind": "InferencePool",
        "metadata": {"name": "chat"},
        "spec": {
            "selector": {"matchLabels": {"app": app}},
            "targetPorts": [{"number": 8000}],
            "endpointPickerRef": {"name": "chat-picker", "port": {"number": names.EXT_PROC_PORT}},
        },
    }


def deployment(app: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": app},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": {"app": app}},
                "spec": {"containers": [{"name": "server", "image": "vllm/vllm-openai:latest"}]},
            },
        },
    }


async def wait_until(
    what: str, check: Callable[[], bool], state: Callable[[], str], timeout_s: float = 90.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}; {state()}")
        await asyncio.sleep(0.2)


def ready_pod_ips(core: k8s_client.CoreV1Api, namespace: str, app: str) -> set[str]:
    pods = core.list_namespaced_pod(namespace, label_selector=f"app={app}").items
    return {
        pod.status.pod_ip
        for pod in pods
        if pod.status.pod_ip
        and pod.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    }


async def test_datastore_follows_the_pools_ready_pods(control_plane: controlplane.ControlPlane) -> None:
    namespace = control_plane.namespace("picker-discovery")
    api = control_plane.api_client()
    apps, core = k8s_client.AppsV1Api(api), k8s_client.CoreV1Api(api)
    custom = k8s_client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(
        names.GIE_GROUP, names.GIE_VERSION, namespace, names.INFERENCE_POOL_PLURAL, inference_pool("chat")
    )
    apps.create_namespaced_deployment(namespace, deployment("chat", 2))
    apps.create_namespaced_deployment(namespace, deployment("other", 1))
    store = datastore.Datastore()
    watcher = asyncio.create_task(
        pool_discovery.watch(
            name="chat", namespace=namespace, store=store, kubeconfig=control_plane.kubeconfig
        )
    )

    def keys() -> set[str]:
        return {state.endpoint.key for state in store.states()}

    def matches(app: str, count: int) -> Callable[[], bool]:
        def check() -> bool:
            ips = ready_pod_ips(core, namespace, app)
            return len(ips) == count and keys() == {f"{ip}:8000" for ip in ips}

        return check

    def state() -> str:
        ready = {app: sorted(ready_pod_ips(core, namespace, app)) for app in ("chat", "other")}
        return f"datastore {sorted(keys())}, ready pods {ready}"

    try:
        await wait_until("two chat endpoints", matches("chat", 2), state)
        apps.patch_namespaced_deployment_scale(
            namespace=namespace, name="chat", body={"spec": {"replicas": 3}}
        )
        await wait_until("three chat endpoints", matches("chat", 3), state)
        apps.patch_namespaced_deployment_scale(
            namespace=namespace, name="chat", body={"spec": {"replicas": 1}}
        )
        await wait_until("one chat endpoint", matches("chat", 1), state)
        custom.patch_namespaced_custom_object(
            names.GIE_GROUP,
            names.GIE_VERSION,
            namespace,
            names.INFERENCE_POOL_PLURAL,
            "chat",
            {"spec": {"selector": {"matchLabels": {"app": "other"}}}},
        )
        await wait_until("the pool's new selector", matches("other", 1), state)

        # An InferenceObjective naming the pool gives its requests their priority (a negative one is
        # sheddable); one naming another pool does not count.
        for name, pool_name, priority in (("batch", "chat", -1), ("elsewhere", "other-pool", 7)):
            custom.create_namespaced_custom_object(
                names.GIE_X_GROUP,
                names.INFERENCE_OBJECTIVE_VERSION,
                namespace,
                names.INFERENCE_OBJECTIVE_PLURAL,
                {
                    "apiVersion": f"{names.GIE_X_GROUP}/{names.INFERENCE_OBJECTIVE_VERSION}",
                    "kind": "InferenceObjective",
                    "metadata": {"name": name},
                    "spec": {"poolRef": {"name": pool_name}, "priority": priority},
                },
            )
        await wait_until(
            "the pool's objective",
            lambda: dict(store.objectives) == {"batch": -1},
            lambda: str(store.objectives),
        )
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
