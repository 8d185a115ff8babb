"""What the operator's watches and its last listing showed, so a pass reads memory rather than the API server.

kopf watches ModelTiers and Deployments and delivers every object: an initial listing after a start, then
each change. `Cache` keeps the ModelTiers and the operator's own Deployments as last delivered, so a pass
finds a pool's tiers (the picker's owners) without listing every tier, and a tier's Deployments and its
pool's picker Deployment without a GET each. A watch event updates the cache before its handler runs, so
the pass an event triggers sees at least that event's object.

Objects of kinds nobody watches (PodDisruptionBudgets, HPAs, the picker's Service, ConfigMap,
ServiceAccount, Role, RoleBinding) come from one listing per kind (`listed`) and each is handed to one read
only, within `LISTED_TTL_S`: a later read goes to the API server, so a repair after the first pass compares
with the live object.

The cache never claims an object is absent (a miss is a GET), and until `watching` is set (the operator's
startup listed every watched kind) it holds no authority over tiers and Deployments: a Reconciler driven
without kopf reads the API server.
"""

import copy
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from frontier_api import names
from frontier_operator import manifests

# Kinds kept current by kopf's watches, and the other kinds the operator writes (listed, used once).
WATCHED_DEPLOYMENT: Final = ("apps/v1", "Deployment")
LISTED_KINDS: Final = (
    ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
)

# A listed object not read within this time is dropped (read from the API server instead): it serves the
# passes right after a listing, not a tier whose first pass comes much later (its pool appeared, say).
LISTED_TTL_S: Final = 120.0

Key = tuple[str, str, str, str]  # apiVersion, kind, namespace, name


def _ours(obj: Mapping[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(manifests.MANAGED_BY_LABEL) == manifests.MANAGED_BY


class Cache:
    """ModelTiers and the operator's Deployments as the watches last delivered them, plus single-use listed
    objects of the unwatched kinds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.watching = False
        self._clock = clock
        self._listed_at = 0.0
        self._tiers: dict[tuple[str, str], dict[str, Any]] = {}
        self._deployments: dict[tuple[str, str], dict[str, Any]] = {}
        self._listed: dict[Key, dict[str, Any]] = {}

    def seen(self, obj: Mapping[str, Any]) -> None:
        """A watch delivered `obj` (a ModelTier or a Deployment); a Deployment that is not the operator's
        (any more) is dropped, so a relabelled object is read from the API server again."""
        if obj.get("kind") == names.MODEL_TIER_KIND or _ours(obj):
            self._store(copy.deepcopy(dict(obj)))
        else:
            meta = obj["metadata"]
            self._deployments.pop((meta["namespace"], meta["name"]), None)

    def _store(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        table = self._tiers if obj.get("kind") == names.MODEL_TIER_KIND else self._deployments
        table[(meta["namespace"], meta["name"])] = obj

    def gone(self, obj: Mapping[str, Any]) -> None:
        """A watch delivered the deletion of `obj`."""
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        table = self._tiers if obj.get("kind") == names.MODEL_TIER_KIND else self._deployments
        table.pop(key, None)

    def tiers(self, namespace: str) -> list[dict[str, Any]] | None:
        """The ModelTiers of `namespace`, or None when not watching (list them from the API server)."""
        if not self.watching:
            return None
        return [t for (ns, _), t in self._tiers.items() if ns == namespace]

    def fill(
        self,
        *,
        tiers: Iterable[Mapping[str, Any]],
        deployments: Iterable[Mapping[str, Any]],
        listed: Iterable[Mapping[str, Any]],
    ) -> None:
        """Take the startup listing: the ModelTiers and the operator's Deployments (from now on kept current
        by the watches) and the objects of `LISTED_KINDS`."""
        for obj in [*tiers, *deployments]:
            self._store(dict(obj))
        self.relist(listed)
        self.watching = True

    def relist(self, listed: Iterable[Mapping[str, Any]]) -> None:
        """Replace the single-use objects of `LISTED_KINDS` with a new listing."""
        self._listed = {manifests.key(obj): dict(obj) for obj in listed}
        self._listed_at = self._clock()

    def take(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object if known (None: ask the API server): a watched Deployment, or a listed object, which
        is handed out only once."""
        if (api_version, kind) == WATCHED_DEPLOYMENT:
            return self._deployments.get((namespace, name)) if self.watching else None
        if self._listed and self._clock() - self._listed_at > LISTED_TTL_S:
            self._listed.clear()
        return self._listed.pop((api_version, kind, namespace, name), None)
