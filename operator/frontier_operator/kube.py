"""The operator's Kubernetes client: reads, server-side apply under one field manager, status patches.

A thin layer over the `kubernetes` dynamic client (blocking; handlers call it via `asyncio.to_thread`). Reads
parse the API server's JSON directly: the dynamic client's object wrappers cost more CPU than the request.
Every write goes through `apply`, `create` (Events), `patch_status` or `delete`, which count it (metric
`frontier_operator_writes_total{verb,kind}`) and log one line, so "a restart makes no writes" is checked by
counting here and by the objects' resourceVersions in the cluster.
"""

import json
import logging
import threading
from collections.abc import Mapping
from typing import Any, Final

import prometheus_client
from kubernetes import client as k8s_client
from kubernetes import dynamic
from kubernetes.dynamic import exceptions

log = logging.getLogger("frontier_operator.kube")

WRITES = prometheus_client.Counter(
    "frontier_operator_writes", "Writes the operator sent to the API server.", ["verb", "kind"]
)


# What the API server answers for an object it will never accept as written: bad request, forbidden (also
# admission webhooks and quota), invalid. Conflicts, throttling and server errors are retried instead.
REFUSALS: Final = frozenset({400, 403, 422})


class Refused(Exception):
    """The API server refused to apply `what` (`Kind/name`); `message` is its own explanation."""

    def __init__(self, what: str, message: str) -> None:
        super().__init__(f"{what}: {message}")
        self.what = what
        self.message = message


def _api_message(error: exceptions.DynamicApiError) -> str:
    body = error.body.decode() if isinstance(error.body, bytes) else str(error.body or "")
    try:
        return str(json.loads(body).get("message") or body)
    except (ValueError, AttributeError):
        return body or str(error)


class Kube:
    """Reads and writes API objects as plain dicts."""

    def __init__(self, api_client: k8s_client.ApiClient, *, field_manager: str) -> None:
        self.configuration = api_client.configuration
        self._dyn = dynamic.DynamicClient(api_client)
        self._resources: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self.field_manager = field_manager
        self.writes = 0

    def _resource(self, api_version: str, kind: str) -> Any:
        with self._lock:
            found = self._resources.get((api_version, kind))
            if found is None:
                found = self._dyn.resources.get(api_version=api_version, kind=kind)
                self._resources[(api_version, kind)] = found
            return found

    def _count(self, verb: str, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            self.writes += 1
        WRITES.labels(verb=verb, kind=kind).inc()
        log.info("write verb=%s kind=%s namespace=%s name=%s", verb, kind, namespace, name)

    def get(self, api_version: str, kind: str, *, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            response = self._dyn.get(
                self._resource(api_version, kind), name=name, namespace=namespace, serialize=False
            )
        except exceptions.NotFoundError:
            return None
        result: dict[str, Any] = json.loads(response.data)
        return result

    def list(
        self, api_version: str, kind: str, *, namespace: str, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """The objects of a kind in `namespace` ("": every namespace), each with its apiVersion and kind
        (a list response leaves them out of its items)."""
        response = self._dyn.get(
            self._resource(api_version, kind),
            namespace=namespace or None,
            label_selector=label_selector,
            serialize=False,
        )
        items: list[dict[str, Any]] = json.loads(response.data)["items"]
        for item in items:
            item["apiVersion"], item["kind"] = api_version, kind
        return items

    def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply under the operator's field manager, taking over conflicting fields; raises
        `Refused` when the API server rejects the object itself (retrying would not help)."""
        meta = manifest["metadata"]
        try:
            result = self._dyn.server_side_apply(
                self._resource(manifest["apiVersion"], manifest["kind"]),
                body=dict(manifest),
                namespace=meta.get("namespace"),
                field_manager=self.field_manager,
                force_conflicts=True,
            )
        except exceptions.DynamicApiError as error:
            if error.status in REFUSALS:
                raise Refused(f"{manifest['kind']}/{meta['name']}", _api_message(error)) from None
            raise
        self._count("apply", manifest["kind"], meta.get("namespace", ""), meta["name"])
        applied: dict[str, Any] = result.to_dict()
        return applied

    def create(self, manifest: Mapping[str, Any]) -> None:
        """Create an object (the operator's Events); a refusal is logged, not raised, since an Event is a
        report and a pass must not fail for want of one."""
        meta = manifest["metadata"]
        namespace = meta.get("namespace", "")
        try:
            self._dyn.create(
                self._resource(manifest["apiVersion"], manifest["kind"]),
                body=dict(manifest),
                namespace=namespace,
            )
        except exceptions.DynamicApiError as error:
            log.warning(
                "event=create_failed kind=%s namespace=%s status=%s message=%r",
                manifest["kind"],
                namespace,
                error.status,
                _api_message(error),
            )
            return
        self._count("create", manifest["kind"], namespace, meta.get("name") or meta.get("generateName", ""))

    def patch_status(
        self, api_version: str, kind: str, *, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        """Merge-patch the status subresource (lists such as conditions are replaced whole)."""
        resource = self._resource(api_version, kind)
        self._dyn.patch(
            resource.subresources["status"],
            body={"status": dict(status)},
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
        )
        self._count("patch-status", kind, namespace, name)

    def delete(self, api_version: str, kind: str, *, namespace: str, name: str) -> None:
        try:
            self._dyn.delete(
                self._resource(api_version, kind),
                name=name,
                namespace=namespace,
                body={"propagationPolicy": "Background"},
            )
        except exceptions.NotFoundError:
            return
        self._count("delete", kind, namespace, name)
