"""Status derived from the owned Deployments: counts, conditions, and stability when nothing changes."""

import operator_samples as samples

from frontier_api import modeltier, names
from frontier_operator import status, validate

ROLES = [names.ROLE_PREFILL, names.ROLE_DECODE]


def _deployment(*, replicas, ready, updated=None, generation=1, observed=1):
    updated = ready if updated is None else updated
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": observed,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "availableReplicas": ready,
        },
    }


def _conditions(st):
    return {c["type"]: c for c in st["conditions"]}


PICKER = "chat-picker"


def _picker(available=1):
    return {"spec": {"replicas": 1}, "status": {"availableReplicas": available}}


def _derive(
    tier, deployments, *, invalid=None, now="2026-01-01T00:00:00Z", pods=None, picker=None, roles=ROLES
):
    return status.derive(
        tier=tier,
        roles=roles,
        deployments=deployments,
        pods=pods or {},
        picker=_picker() if picker is None else picker,
        picker_name=PICKER,
        invalid=invalid,
        args_hash="h",
        now=now,
    )


def _pending_pod(message="0/3 nodes are available: 3 Insufficient nvidia.com/gpu."):
    return {
        "metadata": {"name": "p"},
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
            ],
        },
    }


def test_all_replicas_ready_is_ready_with_counts():
    deployments = {
        names.ROLE_PREFILL: _deployment(replicas=2, ready=2),
        names.ROLE_DECODE: _deployment(replicas=4, ready=4),
    }
    st = _derive(samples.tier(), deployments)
    cond = _conditions(st)
    assert cond[modeltier.READY]["status"] == "True"
    assert cond[modeltier.PROGRESSING]["status"] == "False"
    assert cond[modeltier.PREFILL_AVAILABLE]["status"] == "True"
    assert cond[modeltier.DECODE_AVAILABLE]["status"] == "True"
    assert cond[modeltier.CONFIG_VALID]["status"] == "True"
    assert cond[modeltier.DEGRADED]["status"] == "False"
    assert st["roles"][names.ROLE_DECODE] == {"replicas": 4, "ready": 4, "updated": 4, "available": 4}
    assert st["readyRoles"] == "2/2"
    assert st["split"] == "2:4"
    assert st["observedGeneration"] == 1


def test_rollout_in_progress_is_progressing_not_ready():
    deployments = {
        names.ROLE_PREFILL: _deployment(replicas=2, ready=2),
        names.ROLE_DECODE: _deployment(replicas=4, ready=4, updated=1, generation=2, observed=2),
    }
    cond = _conditions(_derive(samples.tier(), deployments))
    assert cond[modeltier.READY]["status"] == "False"
    assert cond[modeltier.PROGRESSING]["status"] == "True"
    assert "decode: 1 updated" in cond[modeltier.PROGRESSING]["message"]


def test_missing_decode_deployment_means_decode_unavailable():
    deployments = {names.ROLE_PREFILL: _deployment(replicas=2, ready=2), names.ROLE_DECODE: None}
    st = _derive(samples.tier(), deployments)
    cond = _conditions(st)
    assert cond[modeltier.DECODE_AVAILABLE]["status"] == "False"
    assert cond[modeltier.PREFILL_AVAILABLE]["status"] == "True"
    assert st["readyRoles"] == "1/2"


def test_unchanged_world_derives_identical_status_keeping_transition_times():
    deployments = {
        names.ROLE_PREFILL: _deployment(replicas=2, ready=2),
        names.ROLE_DECODE: _deployment(replicas=4, ready=4),
    }
    tier = samples.tier()
    first = _derive(tier, deployments, now="2026-01-01T00:00:00Z")
    tier["status"] = first
    second = _derive(tier, deployments, now="2026-01-01T01:00:00Z")
    assert second == first


def test_invalid_config_sets_config_valid_false_and_keeps_old_counts():
    tier = samples.tier()
    tier["status"] = {"roles": {"decode": {"replicas": 4, "ready": 4, "updated": 4, "available": 4}}}
    invalid = validate.Invalid(
        reason="PoolNotFound", message="spec.poolRef.name: InferencePool x does not exist"
    )
    st = _derive(tier, {}, invalid=invalid)
    cond = _conditions(st)
    assert cond[modeltier.CONFIG_VALID]["status"] == "False"
    assert cond[modeltier.CONFIG_VALID]["reason"] == "PoolNotFound"
    assert cond[modeltier.READY]["status"] == "False"
    assert st["roles"]["decode"]["ready"] == 4


def test_replica_failure_is_degraded():
    failing = _deployment(replicas=4, ready=0)
    failing["status"]["conditions"] = [
        {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": "quota"}
    ]
    deployments = {names.ROLE_PREFILL: _deployment(replicas=2, ready=2), names.ROLE_DECODE: failing}
    cond = _conditions(_derive(samples.tier(), deployments))
    assert cond[modeltier.DEGRADED]["status"] == "True"
    assert "FailedCreate" in cond[modeltier.DEGRADED]["message"]


def test_a_pod_the_scheduler_cannot_place_shows_its_reason_not_rolling_out():
    deployments = {
        names.ROLE_PREFILL: _deployment(replicas=2, ready=2),
        names.ROLE_DECODE: _deployment(replicas=4, ready=3),
    }
    scheduled = {
        "metadata": {"name": "q"},
        "status": {"conditions": [{"type": "PodScheduled", "status": "True"}]},
    }
    cond = _conditions(
        _derive(samples.tier(), deployments, pods={names.ROLE_DECODE: [scheduled, _pending_pod()]})
    )
    for type_ in (modeltier.PROGRESSING, modeltier.READY):
        assert cond[type_]["status"] == "False"
        assert cond[type_]["reason"] == "Unschedulable"
        assert cond[type_]["message"] == "decode: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    assert cond[modeltier.DEGRADED]["reason"] == "Unschedulable"


def test_unschedulable_pods_of_a_settled_role_or_deleted_pods_do_not_count():
    deployments = {
        names.ROLE_PREFILL: _deployment(replicas=2, ready=2),
        names.ROLE_DECODE: _deployment(replicas=4, ready=3),
    }
    going = _pending_pod()
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    cond = _conditions(
        _derive(
            samples.tier(),
            deployments,
            pods={names.ROLE_PREFILL: [_pending_pod()], names.ROLE_DECODE: [going]},
        )
    )
    assert cond[modeltier.PROGRESSING]["reason"] == "RollingOut"
    assert cond[modeltier.READY]["reason"] == "ReplicasNotReady"


def test_ready_replicas_behind_an_unavailable_picker_are_not_ready():
    deployments = {
        names.ROLE_PREFILL: _deployment(replicas=2, ready=2),
        names.ROLE_DECODE: _deployment(replicas=4, ready=4),
    }
    st = _derive(samples.tier(), deployments, picker=_picker(available=0))
    cond = _conditions(st)
    assert cond[modeltier.ROUTABLE]["status"] == "False"
    assert cond[modeltier.READY]["status"] == "False"
    assert cond[modeltier.READY]["reason"] == "PickerUnavailable"
    assert cond[modeltier.READY]["message"] == "endpoint picker chat-picker: 0 of 1 replica(s) available"
    assert st["readyRoles"] == "2/2"  # the replicas are ready; the tier is not routable

    missing = _conditions(
        status.derive(
            tier=samples.tier(),
            roles=ROLES,
            deployments=deployments,
            pods={},
            picker=None,
            picker_name=PICKER,
            invalid=None,
            args_hash="h",
            now="2026-01-01T00:00:00Z",
        )
    )
    assert missing[modeltier.ROUTABLE]["reason"] == "PickerUnavailable"
    assert "does not exist" in missing[modeltier.ROUTABLE]["message"]
    routed = _conditions(_derive(samples.tier(), deployments))
    assert routed[modeltier.ROUTABLE]["status"] == "True"
    assert routed[modeltier.READY]["status"] == "True"


def test_a_picker_rollouts_surge_replica_leaves_the_status_unchanged():
    deployments = {
        names.ROLE_PREFILL: _deployment(replicas=1, ready=1),
        names.ROLE_DECODE: _deployment(replicas=1, ready=1),
    }
    settled = _derive(samples.tier(), deployments, picker=_picker(available=1))
    surging = _derive(samples.tier(), deployments, picker=_picker(available=2))
    assert surging == settled
    assert (
        _conditions(surging)[modeltier.ROUTABLE]["message"]
        == "endpoint picker chat-picker: 1 of 1 replica(s) available"
    )


def test_the_split_counts_available_endpoints_and_an_aggregated_tier_has_none():
    deployments = {
        names.ROLE_PREFILL: _deployment(replicas=2, ready=1),
        names.ROLE_DECODE: _deployment(replicas=4, ready=3),
    }
    assert _derive(samples.tier(), deployments)["split"] == "1:3"
    both = {names.ROLE_BOTH: _deployment(replicas=3, ready=3)}
    assert _derive(samples.tier(), both, roles=[names.ROLE_BOTH])["split"] is None
