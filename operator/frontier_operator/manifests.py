"""Helpers every renderer shares: owner references, common labels, label-safe values, the applied hash, and
the comparisons of a desired manifest with the live object (drift, ownership).

The *applied hash* is how the operator stays idempotent: each child it applies carries the hash of its desired
manifest in an annotation. A reconcile writes a child only when that hash differs or a field the operator
sets was changed by someone else (`drift`); both are computed from objects it has already read, so an
unchanged cluster costs no write and no extra request. `foreign` says when a live object of the same name is
not the operator's (never adopted, never applied over).
"""

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, Final

from frontier_api import names

APPLIED_HASH_ANNOTATION: Final = "inference.frontier.dev/applied-hash"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "frontier-operator"
PART_OF_LABEL: Final = "app.kubernetes.io/part-of"
COMPONENT_LABEL: Final = "app.kubernetes.io/component"
INSTANCE_LABEL: Final = "app.kubernetes.io/instance"
# The exact name of the pool a picker object serves (the instance label holds it cut to a label value); the
# same key as the pods' pool label.
POOL_ANNOTATION: Final = names.POOL_LABEL

Manifest = dict[str, Any]

_LABEL_INVALID = re.compile(r"[^A-Za-z0-9_.-]+")


def label_value(text: str) -> str:
    """`text` as a label value: invalid characters become '-', at most 63, alphanumeric at both ends."""
    cleaned = _LABEL_INVALID.sub("-", text)[:63]
    return cleaned.strip("-_.")


def owner_reference(owner: Mapping[str, Any], *, controller: bool) -> dict[str, Any]:
    """An ownerReference to an API object (children are garbage collected when every owner is gone)."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def common_labels(*, component: str, instance: str) -> dict[str, str]:
    return {
        MANAGED_BY_LABEL: MANAGED_BY,
        PART_OF_LABEL: "frontier",
        COMPONENT_LABEL: component,
        INSTANCE_LABEL: label_value(instance),
    }


def manifest_hash(manifest: Mapping[str, Any]) -> str:
    """Hash of a desired manifest, computed before the hash annotation is added."""
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def stamped(manifest: Manifest) -> Manifest:
    """The manifest with its applied-hash annotation set."""
    digest = manifest_hash(manifest)
    manifest.setdefault("metadata", {}).setdefault("annotations", {})[APPLIED_HASH_ANNOTATION] = digest
    return manifest


def key(manifest: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """(apiVersion, kind, namespace, name) identifying a manifest."""
    meta = manifest["metadata"]
    return (manifest["apiVersion"], manifest["kind"], meta.get("namespace", ""), meta["name"])


def tier_pod_labels(
    *, pool_selector: Mapping[str, str], tier: str, role: str, model: str, engine: str
) -> dict[str, str]:
    """Labels of a tier's pods: the pool's selector (membership) plus what the picker reads."""
    return {
        **common_labels(component="model-server", instance=tier),
        names.TIER_LABEL: label_value(tier),
        names.ROLE_LABEL: role,
        names.MODEL_LABEL: label_value(model),
        names.ENGINE_TYPE_LABEL: engine,
        **pool_selector,
    }


def drift(desired: Mapping[str, Any], observed: Mapping[str, Any]) -> list[str]:
    """The paths (`spec.template.spec.containers[0].image`) of the fields `desired` sets that the live object
    does not hold as desired. Fields the API server or other managers add are ignored, and a field the API
    server omits when empty (false, 0, "", [], {}) matches an empty desired value."""
    found: list[str] = []
    for field, want in desired.items():
        if field in ("apiVersion", "kind", "status"):
            continue
        _diff(want, observed.get(field), field, found)
    return found


def _diff(want: Any, have: Any, path: str, found: list[str]) -> None:
    if want is None or (have is None and not want):
        return
    if isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            found.append(path)
            return
        for field, value in want.items():
            _diff(value, have.get(field), f"{path}.{field}", found)
    elif isinstance(want, list):
        # Lists the operator renders are replaced whole by its apply (or keyed lists it fills completely):
        # an item added, removed or changed by hand is drift.
        if not isinstance(have, list) or len(have) != len(want):
            found.append(path)
            return
        for i, (w, h) in enumerate(zip(want, have, strict=True)):
            _diff(w, h, f"{path}[{i}]", found)
    elif want != have:
        found.append(path)


def foreign(desired: Mapping[str, Any], observed: Mapping[str, Any]) -> str | None:
    """Why the live object `observed` (named as `desired`) is not the operator's to apply over, or None when
    it is: the operator adopts nothing it did not create (an existing GIE EPP, another pool's picker, a
    Deployment someone made by hand), since applying over it would take it over and tie its lifetime to a
    ModelTier."""
    want = desired["metadata"]
    have = observed.get("metadata") or {}
    labels = have.get("labels") or {}
    manager = labels.get(MANAGED_BY_LABEL)
    if manager != MANAGED_BY:
        return f"is managed by {manager!r}" if manager else f"has no {MANAGED_BY_LABEL}={MANAGED_BY} label"
    pool = (want.get("annotations") or {}).get(POOL_ANNOTATION)
    live_pool = (have.get("annotations") or {}).get(POOL_ANNOTATION)
    if pool is not None and live_pool is not None and live_pool != pool:
        return f"belongs to the endpoint picker of InferencePool {live_pool}"
    for label in (COMPONENT_LABEL, INSTANCE_LABEL):
        if labels.get(label) != want["labels"][label]:
            return f"belongs to {label}={labels.get(label)!r}"
    controller = _controller_uid(want)
    if controller is not None and _controller_uid(have) not in (None, controller):
        return "is controlled by another object"
    return None


def _controller_uid(meta: Mapping[str, Any]) -> str | None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None
