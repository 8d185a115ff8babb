"""InferencePool discovery, the pure part: watch events in the API server's JSON shape (list then watch)
turned into the pool's ready endpoints. The shell that runs the watches is covered by the cluster test."""

import copy
from typing import Any

from frontier_api import names
from frontier_picker import kv_subscriber, pool_discovery


def pool(
    name: str = "chat", *, selector: dict[str, str] | None = None, ports: tuple[int, ...] = (8000,)
) -> dict[str, Any]:
    return {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": "serving", "resourceVersion": "101"},
        "spec": {
            "selector": {"matchLabels": selector or {"app": "vllm"}},
            "targetPorts": [{"number": port} for port in ports],
            "endpointPickerRef": {"name": "chat-epp", "port": {"number": 9002}},
        },
    }


def pod(
    name: str, ip: str, *, labels: dict[str, str] | None = None, ready: bool = True, terminating: bool = False
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "serving", "labels": labels or {"app": "vllm"}}
    if terminating:
        metadata["deletionTimestamp"] = "2026-11-27T06:00:00Z"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "Ready", "status": "True" if ready else "False"},
            ],
        },
    }


def keys(view: pool_discovery.PoolView) -> list[str]:
    return [endpoint.key for endpoint in view.endpoints()]


def test_only_ready_non_terminating_matching_pods_become_endpoints() -> None:
    view = pool_discovery.PoolView(pool_name="chat")
    view.apply_pool(pool_discovery.SYNCED, [pool("other"), pool("chat")])
    view.apply_pod(
        pool_discovery.SYNCED,
        [
            pod("a", "10.1.0.1"),
            pod("b", "10.1.0.2", ready=False),
            pod("c", "10.1.0.3", terminating=True),
            pod("d", "10.1.0.4", labels={"app": "web"}),
        ],
    )
    assert keys(view) == ["10.1.0.1:8000"]


def test_watch_events_add_update_and_remove_endpoints() -> None:
    view = pool_discovery.PoolView(pool_name="chat")
    view.apply_pool(pool_discovery.SYNCED, [pool()])
    view.apply_pod(pool_discovery.SYNCED, [])
    assert keys(view) == []
    starting = pod("a", "10.1.0.1", ready=False)
    view.apply_pod("ADDED", starting)
    assert keys(view) == []
    ready = copy.deepcopy(starting)
    ready["status"]["conditions"][1]["status"] = "True"
    view.apply_pod("MODIFIED", ready)
    view.apply_pod("ADDED", pod("b", "10.1.0.2"))
    assert keys(view) == ["10.1.0.1:8000", "10.1.0.2:8000"]
    view.apply_pod("MODIFIED", pod("a", "10.1.0.1", terminating=True))
    assert keys(view) == ["10.1.0.2:8000"]
    view.apply_pod("DELETED", pod("b", "10.1.0.2"))
    assert keys(view) == []


def test_one_endpoint_per_target_port_and_selector_changes_apply_at_once() -> None:
    view = pool_discovery.PoolView(pool_name="chat")
    view.apply_pool("ADDED", pool(ports=(8000, 8001)))
    view.apply_pod(pool_discovery.SYNCED, [pod("a", "10.1.0.1"), pod("w", "10.1.0.9", labels={"app": "web"})])
    assert keys(view) == ["10.1.0.1:8000", "10.1.0.1:8001"]
    assert [e.name for e in view.endpoints()] == ["a:8000", "a:8001"]
    view.apply_pool("MODIFIED", pool(selector={"app": "web"}))
    assert keys(view) == ["10.1.0.9:8000"]
    view.apply_pool("DELETED", pool())
    assert keys(view) == []


def test_events_for_other_pools_are_ignored() -> None:
    view = pool_discovery.PoolView(pool_name="chat")
    view.apply_pool("ADDED", pool())
    view.apply_pool("MODIFIED", pool("other", selector={"app": "web"}))
    view.apply_pod("ADDED", pod("a", "10.1.0.1"))
    assert keys(view) == ["10.1.0.1:8000"]


def test_the_served_model_annotation_gives_the_exact_name_a_label_cannot_hold() -> None:
    view = pool_discovery.PoolView(pool_name="chat")
    view.apply_pool(pool_discovery.SYNCED, [pool("chat")])
    exact = "meta-llama/Llama-3.1-8B-Instruct"
    labelled = {"app": "vllm", names.MODEL_LABEL: "meta-llama-Llama-3.1-8B-Instruct"}
    annotated = pod("a", "10.1.0.1", labels=labelled)
    annotated["metadata"]["annotations"] = {names.SERVED_MODEL_ANNOTATION: exact}
    view.apply_pod(pool_discovery.SYNCED, [annotated, pod("b", "10.1.0.2", labels=labelled)])
    served = {e.name: e.labels[names.MODEL_LABEL] for e in view.endpoints()}
    assert served == {"a": exact, "b": "meta-llama-Llama-3.1-8B-Instruct"}
    assert annotated["metadata"]["labels"][names.MODEL_LABEL] != exact  # the pod object is not changed


def objective(name: str, pool_name: str, priority: object = None) -> dict:
    spec: dict = {"poolRef": {"name": pool_name}}
    if priority is not None:
        spec["priority"] = priority
    return {"metadata": {"name": name, "namespace": "serving"}, "spec": spec}


def test_the_pools_inference_objectives_give_priorities_and_others_are_ignored() -> None:
    view = pool_discovery.PoolView(pool_name="chat")
    view.apply_objective(
        pool_discovery.SYNCED,
        [objective("batch", "chat", -1), objective("interactive", "chat", 10), objective("x", "other", 5)],
    )
    view.apply_objective("ADDED", objective("default", "chat"))  # unset priority counts as 0
    assert view.priorities() == {"batch": -1, "interactive": 10, "default": 0}
    view.apply_objective("DELETED", objective("batch", "chat", -1))
    view.apply_objective("MODIFIED", objective("interactive", "chat", 3))
    assert view.priorities() == {"interactive": 3, "default": 0}


def test_the_adapters_annotation_lists_the_lora_adapters_a_pod_serves() -> None:
    view = pool_discovery.PoolView(pool_name="chat")
    view.apply_pool(pool_discovery.SYNCED, [pool("chat")])
    with_adapters = pod("a", "10.1.0.1")
    with_adapters["metadata"]["annotations"] = {names.ADAPTERS_ANNOTATION: "sql-lora, chat-lora"}
    view.apply_pod(pool_discovery.SYNCED, [with_adapters, pod("b", "10.1.0.2")])
    assert {e.name: e.adapters for e in view.endpoints()} == {
        "a": frozenset({"sql-lora", "chat-lora"}),
        "b": frozenset(),
    }


def test_the_kv_events_port_annotation_tells_the_picker_where_to_subscribe() -> None:
    view = pool_discovery.PoolView(pool_name="chat")
    view.apply_pool(pool_discovery.SYNCED, [pool("chat")])
    publishing = pod("a", "10.1.0.1")
    publishing["metadata"]["annotations"] = {
        names.KV_EVENTS_PORT_ANNOTATION: "5557",
        names.KV_EVENTS_REPLAY_PORT_ANNOTATION: "5558",
    }
    view.apply_pod(pool_discovery.SYNCED, [publishing, pod("b", "10.1.0.2")])
    found = {e.name: kv_subscriber.events_address(e) for e in view.endpoints()}
    assert found == {"a": "tcp://10.1.0.1:5557", "b": None}
    replay = names.KV_EVENTS_REPLAY_PORT_ANNOTATION
    found = {e.name: kv_subscriber.events_address(e, label=replay) for e in view.endpoints()}
    assert found == {"a": "tcp://10.1.0.1:5558", "b": None}
