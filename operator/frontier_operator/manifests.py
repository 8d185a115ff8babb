"""Helpers every renderer shares: owner references, common labels, label-safe values and the applied hash.

The *applied hash* is how the operator stays idempotent: each child it applies carries the hash of its desired
manifest in an annotation, so a reconcile compares one string per child and writes nothing when the hash
already matches (no server-side-apply round trip, no Deployment generation bump after an operator restart).
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
