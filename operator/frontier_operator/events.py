"""Kubernetes Events on a ModelTier: a Warning when it becomes (or stays, for a new reason) ConfigValid=False.

`kubectl describe modeltier` and event-based alerting show why a tier stopped rendering: a spec the operator
cannot render, a child the API server refused at apply (`ApplyRefused`), a name taken by an object the
operator did not create (`PickerNameTaken`, `ChildNameTaken`). One Event per transition of the ConfigValid
condition, never one per pass: a resync of an unchanged tier posts nothing.
"""

from collections.abc import Mapping
from typing import Any, Final

from frontier_operator import manifests, validate

COMPONENT: Final = "frontier-operator"
# The API server refuses longer Event messages.
MESSAGE_LIMIT: Final = 1024


def is_transition(previous: Mapping[str, Any] | None, invalid: validate.Invalid) -> bool:
    """Whether `invalid` is news against the tier's ConfigValid condition before the pass (`previous`)."""
    if previous is None:
        return True
    return (previous.get("status"), previous.get("reason"), previous.get("message")) != (
        "False",
        invalid.reason,
        invalid.message,
    )


def warning(*, tier: Mapping[str, Any], reason: str, message: str, now: str) -> manifests.Manifest:
    """A core/v1 Warning Event about `tier` (named by the server from `generateName`)."""
    meta = tier["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": tier["apiVersion"],
            "kind": tier["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "type": "Warning",
        "reason": reason,
        "message": message[:MESSAGE_LIMIT],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
