"""ModelTier status derived from the owned Deployments' status — observed, never guessed.

Per role: desired replicas (the Deployment's spec, which an HPA may change), ready, updated and available
counts. Conditions: `ConfigValid` (spec renderable), `PrefillAvailable`/`DecodeAvailable` (at least one
available endpoint doing that work; an aggregated `serving` role does both), `Progressing` (a rollout or
scale is under way), `Ready` (every role has all its replicas updated and ready), `Degraded` (a Deployment
reports a failure or a role that should serve has no endpoint). A condition keeps its lastTransitionTime while
its status stays the same, so an unchanged world derives a byte-identical status and the operator writes
nothing.
"""

import datetime
from collections.abc import Mapping, Sequence
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
    invalid: validate.Invalid | None,
    args_hash: str | None,
    now: str,
) -> dict[str, Any]:
    """The status object for `tier` given its roles' Deployments (None: not created yet)."""
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
    settled = {r: _settled(deployments.get(r), counts[r]) for r in roles}
    failures = {r: f for r in roles if (f := _failure(deployments.get(r))) is not None}

    def available(work: str) -> tuple[bool, str]:
        serving = [r for r in roles if r in (work, names.ROLE_BOTH)]
        n = sum(counts[r]["available"] for r in serving)
        return n > 0, f"{n} available {work} endpoint(s)"

    prefill_ok, prefill_msg = available(names.ROLE_PREFILL)
    decode_ok, decode_msg = available(names.ROLE_DECODE)
    unsettled = [r for r in roles if not settled[r]]
    ready = not unsettled and all(counts[r]["replicas"] > 0 for r in roles)
    progress_msg = ", ".join(
        f"{r}: {counts[r]['updated']} updated, {counts[r]['ready']} ready of {counts[r]['replicas']}"
        for r in unsettled
    )
    zero_scaled = [r for r in roles if counts[r]["replicas"] == 0]
    if failures:
        degraded_reason, degraded_msg = (
            "DeploymentFailure",
            "; ".join(f"{r}: {m}" for r, m in failures.items()),
        )
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
        cond(modeltier.PROGRESSING, bool(unsettled), "RollingOut" if unsettled else "Settled", progress_msg),
        cond(
            modeltier.READY,
            ready,
            "AllReplicasReady" if ready else ("ScaledToZero" if zero_scaled else "ReplicasNotReady"),
            progress_msg,
        ),
        cond(modeltier.DEGRADED, degraded_reason != "AsExpected", degraded_reason, degraded_msg),
    ]
    ready_roles = sum(1 for r in roles if settled[r] and counts[r]["replicas"] > 0)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": conditions,
        "roles": counts,
        "readyRoles": f"{ready_roles}/{len(roles)}",
    }
    if args_hash is not None:
        status["renderedArgsHash"] = args_hash
    return status
