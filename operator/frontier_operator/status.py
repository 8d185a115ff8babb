"""ModelTier status derived from the owned Deployments' status — observed, never guessed.

Per role: desired replicas (the Deployment's spec, which an HPA may change), ready, updated and available
counts. Conditions: `ConfigValid` (spec renderable), `PrefillAvailable`/`DecodeAvailable` (at least one
available endpoint doing that work; an aggregated `serving` role does both), `Progressing` (a rollout or
scale is under way; False with reason `Unschedulable` and the scheduler's own message when a pod of an
unsettled role cannot be placed), `Routable` (the pool's endpoint picker has an available replica),
`Ready` (every role has all its replicas updated and ready, and the tier is routable), `Degraded` (a
Deployment reports a failure, a pod cannot be scheduled or a role that should serve has no endpoint).

"Routable" is what the cluster can show: the tier's pods carry the pool's selector by construction, so the
gateway reaches them exactly when the pool's endpoint picker (the Deployment `endpointPickerRef` names) has
an available replica; whether a Gateway route references the pool is the gateway's to report, in the pool's
`status.parents`. A condition keeps its lastTransitionTime while its status stays the same, so an unchanged
world derives a byte-identical status and the operator writes nothing.
"""

import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from frontier_api import modeltier, names
from frontier_operator import validate


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def role_counts(deployment: Mapping[str, Any] | None) -> dict[str, int]:
    """Replica counts of one Deployment (all zero when it does not exist yet)."""
    if deployment is None:
        return {"replicas": 0, "ready": 0, "updated": 0, "available": 0}
    spec = deployment.get("spec") or {}
    st = deployment.get("status") or {}
    return {
        "replicas": int(spec.get("replicas", 1)),
        "ready": int(st.get("readyReplicas", 0)),
        "updated": int(st.get("updatedReplicas", 0)),
        "available": int(st.get("availableReplicas", 0)),
    }


def _settled(deployment: Mapping[str, Any] | None, counts: Mapping[str, int]) -> bool:
    if deployment is None:
        return False
    meta = deployment.get("metadata") or {}
    st = deployment.get("status") or {}
    current = int(st.get("observedGeneration", 0)) >= int(meta.get("generation", 0))
    total = int(st.get("replicas", 0))
    return (
        current
        and counts["updated"] == counts["replicas"]
        and counts["ready"] == counts["replicas"]
        and total == counts["replicas"]
    )


def unsettled_roles(roles: Sequence[str], deployments: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    """The roles whose Deployment is missing or has replicas not yet updated and ready."""
    return [r for r in roles if not _settled(deployments.get(r), role_counts(deployments.get(r)))]


def unschedulable(pods: Iterable[Mapping[str, Any]]) -> str | None:
    """The scheduler's message for the first live pod it cannot place (PodScheduled=False, reason
    Unschedulable), e.g. `0/3 nodes are available: 3 Insufficient nvidia.com/gpu.`; None when all placed."""
    for pod in pods:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if (
                cond.get("type") == "PodScheduled"
                and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"
            ):
                return str(cond.get("message") or "Unschedulable")
    return None


def picker_availability(picker: Mapping[str, Any]) -> tuple[int, int]:
    """(available, desired) replicas of the pool's endpoint picker Deployment: what a tier's status shows.
    Available counts at most the desired replicas: a rollout's surge replica (each tier joining the pool
    rolls the picker's config) would otherwise rewrite the status of every tier of the pool twice."""
    available = int((picker.get("status") or {}).get("availableReplicas") or 0)
    desired = int((picker.get("spec") or {}).get("replicas", 1))
    return min(available, desired), desired


def _routable(picker: Mapping[str, Any] | None, picker_name: str) -> tuple[bool, str, str]:
    """(routable, reason, message) from the pool's endpoint picker Deployment."""
    if picker is None:
        return False, "PickerUnavailable", f"endpoint picker Deployment {picker_name} does not exist yet"
    available, desired = picker_availability(picker)
    message = f"endpoint picker {picker_name}: {available} of {desired} replica(s) available"
    return (True, "PickerAvailable", message) if available > 0 else (False, "PickerUnavailable", message)


def _failure(deployment: Mapping[str, Any] | None) -> str | None:
    for cond in (deployment or {}).get("status", {}).get("conditions") or []:
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return f"{cond.get('reason', 'ReplicaFailure')}: {cond.get('message', '')}"
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return f"ProgressDeadlineExceeded: {cond.get('message', '')}"
    return None


def _condition(
    previous: Mapping[str, Mapping[str, Any]],
    *,
    type_: str,
    ok: bool,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> dict[str, Any]:
    status = "True" if ok else "False"
    before = previous.get(type_)
    unchanged = before is not None and before.get("status") == status
    since = before.get("lastTransitionTime") if unchanged and before is not None else now
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def derive(
    *,
    tier: Mapping[str, Any],
    roles: Sequence[str],
    deployments: Mapping[str, Mapping[str, Any] | None],
    pods: Mapping[str, Sequence[Mapping[str, Any]]],
    picker: Mapping[str, Any] | None,
    picker_name: str,
    invalid: validate.Invalid | None,
    args_hash: str | None,
    now: str,
) -> dict[str, Any]:
    """The status object for `tier` given its roles' Deployments (None: not created yet), the pods of its
    unsettled roles (by role) and its pool's endpoint picker Deployment `picker_name` (None: absent)."""
    meta = tier["metadata"]
    generation = int(meta.get("generation", 0))
    old_status = tier.get("status") or {}
    previous = {c["type"]: c for c in old_status.get("conditions") or [] if "type" in c}

    def cond(type_: str, ok: bool, reason: str, message: str = "") -> dict[str, Any]:
        return _condition(
            previous, type_=type_, ok=ok, reason=reason, message=message, generation=generation, now=now
        )

    if invalid is not None:
        # Keep the last observed role counts: the children are untouched and still serve.
        conditions = [
            cond(modeltier.CONFIG_VALID, False, invalid.reason, invalid.message),
            cond(modeltier.READY, False, "ConfigInvalid", "the spec cannot be rendered; see ConfigValid"),
        ]
        out = dict(old_status)
        out.update({"observedGeneration": generation, "conditions": conditions})
        return out

    counts = {r: role_counts(deployments.get(r)) for r in roles}
    unsettled = unsettled_roles(roles, deployments)
    failures = {r: f for r in roles if (f := _failure(deployments.get(r))) is not None}

    def available(work: str) -> tuple[bool, str]:
        serving = [r for r in roles if r in (work, names.ROLE_BOTH)]
        n = sum(counts[r]["available"] for r in serving)
        return n > 0, f"{n} available {work} endpoint(s)"

    prefill_ok, prefill_msg = available(names.ROLE_PREFILL)
    decode_ok, decode_msg = available(names.ROLE_DECODE)
    routable, routable_reason, routable_msg = _routable(picker, picker_name)
    replicas_ready = not unsettled and all(counts[r]["replicas"] > 0 for r in roles)
    ready = replicas_ready and routable
    progress_msg = ", ".join(
        f"{r}: {counts[r]['updated']} updated, {counts[r]['ready']} ready of {counts[r]['replicas']}"
        for r in unsettled
    )
    zero_scaled = [r for r in roles if counts[r]["replicas"] == 0]
    # A pod the scheduler cannot place stalls the rollout until capacity appears: say why, in its words,
    # rather than "rolling out" until the Deployment's progress deadline.
    stuck = {r: m for r in unsettled if (m := unschedulable(pods.get(r) or ())) is not None}
    stuck_msg = "; ".join(f"{r}: {m}" for r, m in stuck.items())
    if stuck:
        progressing = cond(modeltier.PROGRESSING, False, "Unschedulable", stuck_msg)
        ready_reason, ready_msg = "Unschedulable", stuck_msg
    else:
        progressing = cond(
            modeltier.PROGRESSING, bool(unsettled), "RollingOut" if unsettled else "Settled", progress_msg
        )
        if replicas_ready:
            ready_reason, ready_msg = (
                ("AllReplicasReady", "") if routable else (routable_reason, routable_msg)
            )
        else:
            ready_reason = "ScaledToZero" if zero_scaled else "ReplicasNotReady"
            ready_msg = progress_msg
    if failures:
        degraded_reason, degraded_msg = (
            "DeploymentFailure",
            "; ".join(f"{r}: {m}" for r, m in failures.items()),
        )
    elif stuck:
        degraded_reason, degraded_msg = "Unschedulable", stuck_msg
    elif not (prefill_ok and decode_ok) and not unsettled and not zero_scaled:
        degraded_reason, degraded_msg = "NoEndpoints", "a role has no available endpoint"
    else:
        degraded_reason, degraded_msg = "AsExpected", ""
    conditions = [
        cond(modeltier.CONFIG_VALID, True, "Rendered"),
        cond(
            modeltier.PREFILL_AVAILABLE, prefill_ok, "Available" if prefill_ok else "NoEndpoint", prefill_msg
        ),
        cond(modeltier.DECODE_AVAILABLE, decode_ok, "Available" if decode_ok else "NoEndpoint", decode_msg),
        progressing,
        cond(modeltier.ROUTABLE, routable, routable_reason, routable_msg),
        cond(modeltier.READY, ready, ready_reason, ready_msg),
        cond(modeltier.DEGRADED, degraded_reason != "AsExpected", degraded_reason, degraded_msg),
    ]
    ready_roles = sum(1 for r in roles if r not in unsettled and counts[r]["replicas"] > 0)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": conditions,
        "roles": counts,
        "readyRoles": f"{ready_roles}/{len(roles)}",
        # None (a merge patch's delete) once a tier stops being disaggregated.
        "split": (
            f"{counts[names.ROLE_PREFILL]['available']}:{counts[names.ROLE_DECODE]['available']}"
            if names.ROLE_PREFILL in roles and names.ROLE_DECODE in roles
            else None
        ),
    }
    if args_hash is not None:
        status["renderedArgsHash"] = args_hash
    return status
