"""Endpoint discovery from Kubernetes: one GIE `InferencePool` and the Pods it selects.

The picker watches the pool (`inference.networking.k8s.io/v1`, by name) for `spec.selector.matchLabels` and
`spec.targetPorts[].number`, the Pods of its namespace, and the InferenceObjectives naming the pool
(`inference.networking.x-k8s.io/v1alpha2`: their `spec.priority`, which requests naming the objective in
`x-gateway-inference-objective` get). An endpoint is `podIP:targetPort` for every Pod
whose labels match the selector, that is Ready (condition `Ready=True`), has an IP and is not terminating
(no `deletionTimestamp`); a Pod gives one endpoint per target port. Pods are watched namespace-wide and
filtered here, so a change of the pool's selector takes effect without restarting a watch.

`PoolView` is the pure part: it applies watch events (`ADDED`/`MODIFIED`/`DELETED`, plus `SYNCED` carrying a
full listing) and answers the endpoint set; it is unit-tested against recorded events. `watch` is the shell:
list-then-watch loops on threads (the `kubernetes` client is synchronous) feeding the view in the loop.
"""

import asyncio
import dataclasses
import json
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from frontier_api import names
from frontier_picker import datastore, endpoints

log = logging.getLogger(__name__)

SYNCED = "SYNCED"  # a full listing: `object` is the list of items


def _ready(pod: Mapping[str, Any]) -> bool:
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if metadata.get("deletionTimestamp") or not status.get("podIP"):
        return False
    return any(
        condition.get("type") == "Ready" and condition.get("status") == "True"
        for condition in status.get("conditions") or []
    )


@dataclasses.dataclass(slots=True)
class PoolView:
    """The pool's selector and target ports and the namespace's Pods, as the watches last reported them."""

    pool_name: str
    selector: dict[str, str] | None = None
    target_ports: tuple[int, ...] = ()
    pods: dict[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    objectives: dict[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    def apply_pool(self, event_type: str, pool: Any) -> None:
        if event_type == SYNCED:
            matching = [item for item in pool if (item.get("metadata") or {}).get("name") == self.pool_name]
            if not matching:
                self.selector, self.target_ports = None, ()
                return
            pool = matching[0]
            event_type = "MODIFIED"
        if (pool.get("metadata") or {}).get("name") != self.pool_name:
            return
        if event_type == "DELETED":
            self.selector, self.target_ports = None, ()
            return
        spec = pool.get("spec") or {}
        self.selector = dict((spec.get("selector") or {}).get("matchLabels") or {})
        self.target_ports = tuple(
            int(entry["number"]) for entry in spec.get("targetPorts") or [] if "number" in entry
        )

    def apply_pod(self, event_type: str, pod: Any) -> None:
        if event_type == SYNCED:
            self.pods = {item["metadata"]["name"]: item for item in pod}
            return
        name = pod["metadata"]["name"]
        if event_type == "DELETED":
            self.pods.pop(name, None)
        else:
            self.pods[name] = pod

    def apply_objective(self, event_type: str, objective: Any) -> None:
        if event_type == SYNCED:
            self.objectives = {item["metadata"]["name"]: item for item in objective}
            return
        name = objective["metadata"]["name"]
        if event_type == "DELETED":
            self.objectives.pop(name, None)
        else:
            self.objectives[name] = objective

    def priorities(self) -> dict[str, int]:
        """Priority of each InferenceObjective that names this pool (unset counts as 0, as in GIE)."""
        found: dict[str, int] = {}
        for name, objective in self.objectives.items():
            spec = objective.get("spec") or {}
            if (spec.get("poolRef") or {}).get("name") != self.pool_name:
                continue
            priority = spec.get("priority", 0)
            found[name] = priority if isinstance(priority, int) and not isinstance(priority, bool) else 0
        return found

    def endpoints(self) -> list[endpoints.Endpoint]:
        """The ready endpoints of the pool; none while the pool is unknown or selects nothing."""
        if not self.selector or not self.target_ports:
            return []
        found: list[endpoints.Endpoint] = []
        for name in sorted(self.pods):
            pod = self.pods[name]
            meta = pod.get("metadata") or {}
            labels: dict[str, str] = meta.get("labels") or {}
            if any(labels.get(key) != value for key, value in self.selector.items()) or not _ready(pod):
                continue
            annotations = meta.get("annotations") or {}
            served = annotations.get(names.SERVED_MODEL_ANNOTATION)
            if served:
                labels = {**labels, names.MODEL_LABEL: served}  # exact; the label may be cut to fit
            for copied in (names.KV_EVENTS_PORT_ANNOTATION, names.KV_EVENTS_REPLAY_PORT_ANNOTATION):
                if annotations.get(copied):
                    labels = {**labels, copied: annotations[copied]}
            listed = annotations.get(names.ADAPTERS_ANNOTATION, "")
            adapters = frozenset(a.strip() for a in listed.split(",") if a.strip())
            address = pod["status"]["podIP"]
            for port in self.target_ports:
                endpoint_name = name if len(self.target_ports) == 1 else f"{name}:{port}"
                found.append(
                    endpoints.Endpoint(
                        name=endpoint_name, address=address, port=port, labels=labels, adapters=adapters
                    )
                )
        return found


def _watch_loop(
    *,
    list_call: Callable[..., Any],
    list_kwargs: dict[str, Any],
    deliver: Callable[[str, Any], None],
    stop: threading.Event,
    what: str,
    retry_s: float = 1.0,
) -> None:
    """List then watch, forever: deliver a SYNCED listing, then every event; relist after errors (after
    `retry_s`)."""
    from kubernetes import watch as kube_watch  # imported here: only Kubernetes mode needs the client

    while not stop.is_set():
        try:
            response = list_call(**list_kwargs, _preload_content=False)
            listing = json.loads(response.data)
            deliver(SYNCED, listing.get("items") or [])
            version = listing["metadata"].get("resourceVersion")
            watcher = kube_watch.Watch()
            for event in watcher.stream(
                list_call,
                **list_kwargs,
                resource_version=version,
                timeout_seconds=30,
                allow_watch_bookmarks=False,
            ):
                if stop.is_set():
                    watcher.stop()
                    return
                if event["type"] == "ERROR":
                    break  # typically 410 Gone: relist
                deliver(event["type"], event["raw_object"])
        except Exception as error:
            log.warning("event=watch_failed what=%s error=%r", what, str(error))
            stop.wait(retry_s)


async def watch(
    *, name: str, namespace: str, store: datastore.Datastore, kubeconfig: Path | None = None
) -> None:
    """Keep `store` equal to the ready endpoints of InferencePool `namespace/name` until cancelled."""
    from kubernetes import client, config

    if kubeconfig is not None:
        config.load_kube_config(config_file=str(kubeconfig))
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
    api = client.ApiClient()
    custom = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)
    view = PoolView(pool_name=name)
    loop = asyncio.get_running_loop()
    stop = threading.Event()

    def apply(kind: str, event_type: str, obj: Any) -> None:
        if kind == "objectives":
            view.apply_objective(event_type, obj)
            store.replace_objectives(view.priorities())
            return
        if kind == "pool":
            view.apply_pool(event_type, obj)
        else:
            view.apply_pod(event_type, obj)
        store.replace(view.endpoints())

    def deliver_to(kind: str) -> Callable[[str, Any], None]:
        def deliver(event_type: str, obj: Any) -> None:
            loop.call_soon_threadsafe(apply, kind, event_type, obj)

        return deliver

    threads = [
        threading.Thread(
            target=_watch_loop,
            kwargs={
                "list_call": custom.list_namespaced_custom_object,
                "list_kwargs": {
                    "group": names.GIE_GROUP,
                    "version": names.GIE_VERSION,
                    "namespace": namespace,
                    "plural": names.INFERENCE_POOL_PLURAL,
                    "field_selector": f"metadata.name={name}",
                },
                "deliver": deliver_to("pool"),
                "stop": stop,
                "what": f"inferencepool/{namespace}/{name}",
            },
            daemon=True,
        ),
        threading.Thread(
            target=_watch_loop,
            kwargs={
                "list_call": core.list_namespaced_pod,
                "list_kwargs": {"namespace": namespace},
                "deliver": deliver_to("pods"),
                "stop": stop,
                "what": f"pods/{namespace}",
            },
            daemon=True,
        ),
        # Priorities of the pool's InferenceObjectives; a cluster without GIE's x-k8s CRDs is retried slowly.
        threading.Thread(
            target=_watch_loop,
            kwargs={
                "list_call": custom.list_namespaced_custom_object,
                "list_kwargs": {
                    "group": names.GIE_X_GROUP,
                    "version": names.INFERENCE_OBJECTIVE_VERSION,
                    "namespace": namespace,
                    "plural": names.INFERENCE_OBJECTIVE_PLURAL,
                },
                "deliver": deliver_to("objectives"),
                "stop": stop,
                "what": f"inferenceobjectives/{namespace}",
                "retry_s": 30.0,
            },
            daemon=True,
        ),
    ]
    for thread in threads:
        thread.start()
    log.info("event=watching_pool pool=%s namespace=%s", name, namespace)
    try:
        await asyncio.Event().wait()
    finally:
        stop.set()
