"""Flow control end to end on the local control plane, through the real Envoy: the picker discovers the
InferencePool's pods and the InferenceObjectives naming the pool; with both pods at their in-flight limit,
a request of the objective with a negative priority is shed with 429, and one of a critical objective waits
and is served. The pods' IPs are loopback addresses (KWOK's pod range), where this test serves them."""

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes import client as k8s_client

from frontier_api import envoy_bootstrap, names
from frontier_picker import server
from frontier_picker.scheduling import config
from frontier_testkit import controlplane

from . import stack
from .test_pool_discovery_cluster import deployment, inference_pool, ready_pod_ips, wait_until

pytestmark = pytest.mark.cluster

POOL = "chat"
LONG = {"x-test-chunks": "80", "x-test-delay": "0.02"}  # an answer streamed over ~1.6 s


def objective(name: str, priority: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{names.GIE_X_GROUP}/{names.INFERENCE_OBJECTIVE_VERSION}",
        "kind": "InferenceObjective",
        "metadata": {"name": name},
        "spec": {"poolRef": {"name": POOL}, "priority": priority},
    }


def picker_config() -> str:
    text = yaml.safe_load(config.builtin_text("round-robin"))
    text["flowControl"] = {"maxInFlightPerEndpoint": 1, "sheddableRequestTTL": "300ms"}
    return yaml.safe_dump(text)


async def post(url: str, headers: dict[str, str]) -> tuple[int, bytes, float]:
    began = time.monotonic()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url + "/v1/completions", data=b'{"model":"m","prompt":"hi"}', headers=headers
        ) as response,
    ):
        return response.status, await response.read(), time.monotonic() - began


async def test_objectives_from_the_cluster_shed_and_queue_through_envoy(
    control_plane: controlplane.ControlPlane, tmp_path: Path
) -> None:
    namespace = control_plane.namespace("flow-control")
    api = control_plane.api_client()
    core, apps = k8s_client.CoreV1Api(api), k8s_client.AppsV1Api(api)
    custom = k8s_client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(
        names.GIE_GROUP, names.GIE_VERSION, namespace, names.INFERENCE_POOL_PLURAL, inference_pool(POOL)
    )
    for name, priority in (("batch", -1), ("critical", 100)):
        custom.create_namespaced_custom_object(
            names.GIE_X_GROUP,
            names.INFERENCE_OBJECTIVE_VERSION,
            namespace,
            names.INFERENCE_OBJECTIVE_PLURAL,
            objective(name, priority),
        )
    apps.create_namespaced_deployment(namespace, deployment(POOL, 2))
    await wait_until(
        "two ready pods", lambda: len(ready_pod_ips(core, namespace, POOL)) == 2, lambda: "pods not ready"
    )
    backends = [stack.Backend(address=ip, port=8000) for ip in sorted(ready_pod_ips(core, namespace, POOL))]
    for backend in backends:
        await backend.start()
    options = server.Options(
        address=stack.FRONT,
        grpc_port=0,
        grpc_health_port=0,
        metrics_port=0,
        secure_serving=False,
        config_text=picker_config(),
        refresh_metrics_interval_s=0,  # the backends serve no /metrics: the in-flight limit is the signal
        pool_name=POOL,
        pool_namespace=namespace,
        kubeconfig=control_plane.kubeconfig,
    )
    picker = await server.start(options)
    envoy = None
    try:
        await wait_until(
            "the pool and its objectives in the picker",
            lambda: (
                len(picker.store.states()) == 2
                and dict(picker.store.objectives) == {"batch": -1, "critical": 100}
            ),
            lambda: f"{len(picker.store.states())} endpoints, objectives {dict(picker.store.objectives)}",
        )
        listen_port, admin_port = stack.free_port(stack.FRONT), stack.free_port(stack.FRONT)
        bootstrap = envoy_bootstrap.bootstrap(
            listen_address=stack.FRONT,
            listen_port=listen_port,
            pickers=[f"{stack.FRONT}:{picker.grpc_port}"],
            picker_tls=False,
            mode="gie",
            endpoints=[(backend.address, backend.port) for backend in backends],
            admin_port=admin_port,
        )
        envoy, log_path = stack.launch_envoy(bootstrap, tmp=tmp_path, name="envoy-flow")
        await stack.wait_ready(f"http://{stack.FRONT}:{admin_port}/ready", envoy, log_path)
        url = f"http://{stack.FRONT}:{listen_port}"

        long = [asyncio.create_task(post(url, LONG)) for _ in range(2)]
        await asyncio.sleep(0.3)
        status, payload, _ = await post(url, {names.INFERENCE_OBJECTIVE: "batch"})
        assert status == 429 and b"flow control" in payload
        status, _, took = await post(url, {names.INFERENCE_OBJECTIVE: "critical"})
        assert status == 200 and took > 0.5  # it waited for a long answer to end, then was served
        assert [result[0] for result in await asyncio.gather(*long)] == [200, 200]
    finally:
        if envoy is not None:
            stack.stop_envoy(envoy)
        await picker.stop()
        for backend in backends:
            if backend.runner is not None:
                await backend.runner.cleanup()
