"""Desired children of one ModelTier: per role a Deployment and a PodDisruptionBudget, and a
HorizontalPodAutoscaler per autoscaled role.

Pure: (ModelTier object, Pool, Settings) -> manifests. Names are `<tier>-serving`, `<tier>-prefill`,
`<tier>-decode`. The Deployment selector uses only the tier and role labels (a selector is immutable, and
those two never change for a child); pods additionally carry the pool's selector, the served model and the
engine type. Decode pods of a disaggregated tier run the routing sidecar (`frontier-sidecar`) on the
pool's target port in front of the engine, which listens on `ENGINE_LOCAL_PORT`. GPU placement:
`nvidia.com/gpu` requests = limits = GPUs per pod, the accelerator node selector (`accelerator.type` as the
value of the operator's accelerator label) and the GPU tolerations.
Model access: the Hugging Face token from a Secret (`HF_TOKEN`), a model cache PersistentVolumeClaim mounted
as `HF_HOME`, image pull secrets and the pods' ServiceAccount.
`replicas` is left out when an HPA owns the role, so the operator never fights it.

Stopping and replacing pods follows `spec.rollout`: the Deployment strategy (by default one pod at a time and
no surge, since a surge pod on a full GPU pool waits for GPUs forever), a PodDisruptionBudget for node drains,
and a preStop drain on engine pods (`DRAIN_SCRIPT`) within `terminationGracePeriodSeconds`.
"""

import math
from collections.abc import Mapping
from typing import Any, Final

from frontier_api import modeltier, names
from frontier_operator import manifests, pools, render_args, settings

ROLE_SUFFIX: Final = {names.ROLE_BOTH: "serving", names.ROLE_PREFILL: "prefill", names.ROLE_DECODE: "decode"}
NIXL_SIDE_CHANNEL_PORT: Final = 5600
KV_EVENTS_PORT: Final = 5557
# A decode pod of a disaggregated tier: the routing sidecar takes the pool's target port and the engine
# listens here, on localhost only as far as the pool is concerned.
ENGINE_LOCAL_PORT: Final = 8200

# The preStop drain of an engine pod. When it runs the pod is terminating, so the picker (which drops
# terminating pods) sends it nothing new; it first waits ENDPOINT_REMOVAL_S for requests already on their way
# (the picker's watch and Envoy lag behind the deletion), then polls the engine's own gauges until no request
# runs or waits (vLLM's or SGLang's gauges), or the drain timeout passes. vLLM has no drain endpoint and
# aborts what is in flight on SIGTERM; a fixed sleep would hold every idle pod for the worst case. Python,
# because every engine image (vLLM's, SGLang's, the simulator's) has it; an engine that does not answer has
# nothing left to drain.
DRAIN_SCRIPT: Final = """\
import re, sys, time, urllib.request
url, settle_s, timeout_s = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
time.sleep(settle_s)
deadline = time.monotonic() + timeout_s
names = r"vllm:num_requests_(?:running|waiting)|sglang:num_(?:running|queue)_reqs"
gauge = re.compile(r"^(?:" + names + r")(?:\\{[^}]*\\})? (\\S+)$", re.M)
while time.monotonic() < deadline:
    try:
        page = urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        break
    if not any(float(value) for value in gauge.findall(page)):
        break
    time.sleep(1)
"""
ENDPOINT_REMOVAL_S: Final = 5
# After the drain, the engine's own shutdown on SIGTERM (freeing GPU memory, stopping workers).
ENGINE_STOP_S: Final = 30


def child_name(tier: str, role: str) -> str:
    return f"{tier}-{ROLE_SUFFIX[role]}"


def _selector(tier: str, role: str) -> dict[str, str]:
    """The pods of one role: only the tier and role labels, which never change for a child."""
    return {names.TIER_LABEL: manifests.label_value(tier), names.ROLE_LABEL: role}


def _drain(engine_port: int, rollout: modeltier.Rollout) -> dict[str, Any]:
    """The preStop hook that keeps a stopping container up while its engine still has requests."""
    command = [
        "python3",
        "-c",
        DRAIN_SCRIPT,
        f"http://127.0.0.1:{engine_port}/metrics",
        str(ENDPOINT_REMOVAL_S),
        str(rollout.drain_timeout_seconds),
    ]
    return {"preStop": {"exec": {"command": command}}}


def termination_grace_seconds(rollout: modeltier.Rollout) -> int:
    """The engine pod's grace period: the whole drain, then the engine's own shutdown."""
    return ENDPOINT_REMOVAL_S + rollout.drain_timeout_seconds + ENGINE_STOP_S


def _resources(role: modeltier.Role) -> dict[str, Any]:
    requests: dict[str, Any] = dict(role.resources.requests)
    limits: dict[str, Any] = dict(role.resources.limits)
    gpus = role.gpus_per_pod()
    if gpus > 0:
        requests[names.GPU_RESOURCE] = str(gpus)
        limits[names.GPU_RESOURCE] = str(gpus)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _probes(role: modeltier.Role, port: int) -> dict[str, Any]:
    p = role.probes

    def probe(path: str, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": port},
            "periodSeconds": p.period_seconds,
            "timeoutSeconds": p.timeout_seconds,
            "failureThreshold": failures,
        }

    return {
        "startupProbe": probe("/health", max(1, math.ceil(p.startup_timeout_seconds / p.period_seconds))),
        "livenessProbe": probe("/health", p.failure_threshold),
        "readinessProbe": probe("/v1/models", 1),
    }


def _env(spec: modeltier.ModelTierSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    if spec.disaggregation.enabled and spec.disaggregation.kv_connector == modeltier.KvConnector.NIXL:
        env += [
            {"name": "VLLM_NIXL_SIDE_CHANNEL_HOST", "value": render_args.POD_IP_REF},
            {"name": "VLLM_NIXL_SIDE_CHANNEL_PORT", "value": str(NIXL_SIDE_CHANNEL_PORT)},
        ]
    token = spec.model.token_secret_ref
    if token is not None:
        env.append(
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}}
        )
    if spec.model.cache is not None:
        env.append({"name": "HF_HOME", "value": names.MODEL_CACHE_PATH})
    env += [{"name": e.name, "value": e.value} for e in spec.engine.env]
    return env


def _sidecar(
    role: modeltier.Role, *, pool: pools.Pool, cfg: settings.Settings, rollout: modeltier.Rollout
) -> dict[str, Any]:
    """The decode pod's routing sidecar: it takes the pool's target port, asks the prefill endpoint the
    picker names (`x-prefiller-host-port`) for the KV, then the local engine for the answer. The probes go
    through it, so a pod is ready only when both answer; it drains with the engine, since the engine's
    requests come through it."""
    return {
        "name": "sidecar",
        "image": cfg.picker_image,
        "command": list(cfg.sidecar_command),
        "args": [
            "--port",
            str(pool.target_port),
            "--engine-url",
            f"http://127.0.0.1:{ENGINE_LOCAL_PORT}",
        ],
        "ports": [{"name": "http", "containerPort": pool.target_port, "protocol": "TCP"}],
        "lifecycle": _drain(ENGINE_LOCAL_PORT, rollout),
        "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        **_probes(role, pool.target_port),
    }


def _pod_spec(
    *,
    spec: modeltier.ModelTierSpec,
    role_name: str,
    role: modeltier.Role,
    pool: pools.Pool,
    cfg: settings.Settings,
) -> dict[str, Any]:
    sidecar = spec.disaggregation.enabled and role_name == names.ROLE_DECODE
    port = ENGINE_LOCAL_PORT if sidecar else pool.target_port
    ports: list[dict[str, Any]] = (
        [] if sidecar else [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    )
    if spec.engine.kv_events.enabled:
        ports.append({"name": "kv-events", "containerPort": _kv_events_port(spec), "protocol": "TCP"})
        replay = names.kv_events_port(spec.engine.kv_events.replay_endpoint)
        if replay is not None:
            ports.append({"name": "kv-replay", "containerPort": replay, "protocol": "TCP"})
    if spec.disaggregation.enabled and spec.disaggregation.kv_connector == modeltier.KvConnector.NIXL:
        ports.append({"name": "nixl", "containerPort": NIXL_SIDE_CHANNEL_PORT, "protocol": "TCP"})
    container: dict[str, Any] = {
        "name": "engine",
        "image": spec.engine.image or cfg.image_of(spec.engine.type),
        "command": list(cfg.command_of(spec.engine.type)),
        "args": render_args.engine_args(spec, role=role_name, port=port),
        "ports": ports,
        "env": _env(spec),
        "lifecycle": _drain(port, spec.rollout),
        "resources": _resources(role),
        **({} if sidecar else _probes(role, port)),
        # Tensor-parallel workers exchange tensors through shared memory.
        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
    }
    volumes: list[dict[str, Any]] = [{"name": "shm", "emptyDir": {"medium": "Memory"}}]
    cache = spec.model.cache
    if cache is not None:
        container["volumeMounts"].append(
            {"name": "model-cache", "mountPath": names.MODEL_CACHE_PATH, "readOnly": cache.read_only}
        )
        volumes.append(
            {
                "name": "model-cache",
                "persistentVolumeClaim": {"claimName": cache.claim_name, "readOnly": cache.read_only},
            }
        )
    containers = (
        [container, _sidecar(role, pool=pool, cfg=cfg, rollout=spec.rollout)] if sidecar else [container]
    )
    node_selector = dict(role.placement.node_selector)
    if role.accelerator.type is not None:
        node_selector[cfg.accelerator_label] = role.accelerator.type
    pod: dict[str, Any] = {
        "terminationGracePeriodSeconds": termination_grace_seconds(spec.rollout),
        "containers": containers,
        "volumes": volumes,
    }
    if spec.engine.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in spec.engine.image_pull_secrets]
    if spec.engine.service_account_name is not None:
        pod["serviceAccountName"] = spec.engine.service_account_name
    if node_selector:
        pod["nodeSelector"] = node_selector
    tolerations = [dict(t) for t in cfg.gpu_tolerations] if role.gpus_per_pod() > 0 else []
    tolerations += [dict(t) for t in role.placement.tolerations]
    if tolerations:
        pod["tolerations"] = tolerations
    if role.placement.affinity is not None:
        pod["affinity"] = role.placement.affinity
    if role.placement.priority_class_name is not None:
        pod["priorityClassName"] = role.placement.priority_class_name
    return pod


def _annotations(spec: modeltier.ModelTierSpec) -> dict[str, str]:
    """What the picker reads off a pod: the exact served name, the LoRA adapters it serves, and the ports of
    its KV event publisher and replay socket."""
    found = {names.SERVED_MODEL_ANNOTATION: spec.model.served_name}
    lora = spec.engine.lora
    if lora is not None and lora.adapters:
        found[names.ADAPTERS_ANNOTATION] = ",".join(adapter.name for adapter in lora.adapters)
    if spec.engine.kv_events.enabled:
        found[names.KV_EVENTS_PORT_ANNOTATION] = str(_kv_events_port(spec))
        replay = names.kv_events_port(spec.engine.kv_events.replay_endpoint)
        if replay is not None:
            found[names.KV_EVENTS_REPLAY_PORT_ANNOTATION] = str(replay)
    return found


def _kv_events_port(spec: modeltier.ModelTierSpec) -> int:
    """The port the engine publishes KV events on (its `kvEvents.endpoint`, 5557 when that names none)."""
    return names.kv_events_port(spec.engine.kv_events.endpoint) or KV_EVENTS_PORT


def _strategy(rollout: modeltier.Rollout) -> dict[str, Any]:
    if rollout.strategy == modeltier.RolloutStrategy.RECREATE:
        return {"type": "Recreate"}
    return {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": rollout.max_surge, "maxUnavailable": rollout.max_unavailable},
    }


def deployment(
    *,
    tier: Mapping[str, Any],
    spec: modeltier.ModelTierSpec,
    role_name: str,
    pool: pools.Pool,
    cfg: settings.Settings,
) -> manifests.Manifest:
    """The Deployment of one role."""
    meta = tier["metadata"]
    role = spec.roles()[role_name]
    pod_labels = manifests.tier_pod_labels(
        pool_selector=pool.selector,
        tier=meta["name"],
        role=role_name,
        model=spec.model.served_name,
        engine=spec.engine.type.value,
    )
    dep_spec: dict[str, Any] = {
        "selector": {"matchLabels": _selector(meta["name"], role_name)},
        "strategy": _strategy(spec.rollout),
        "template": {
            "metadata": {
                "labels": pod_labels,
                # The label holds the served name cut to a label value; the picker reads the exact one here.
                "annotations": _annotations(spec),
            },
            "spec": _pod_spec(spec=spec, role_name=role_name, role=role, pool=pool, cfg=cfg),
        },
    }
    if role.autoscaling is None:
        dep_spec = {"replicas": 1 if role.replicas is None else role.replicas, **dep_spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": child_name(meta["name"], role_name),
            "namespace": meta["namespace"],
            "labels": {k: v for k, v in pod_labels.items() if k not in pool.selector},
            "ownerReferences": [manifests.owner_reference(tier, controller=True)],
        },
        "spec": dep_spec,
    }


def disruption_budget(
    *, tier: Mapping[str, Any], role_name: str, rollout: modeltier.Rollout
) -> manifests.Manifest:
    """The PodDisruptionBudget of one role: node drains evict at most `rollout.maxUnavailable` of its pods
    at a time (at least 1, so a drain never waits forever on a role of one pod)."""
    meta = tier["metadata"]
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": child_name(meta["name"], role_name),
            "namespace": meta["namespace"],
            "labels": manifests.common_labels(component="model-server", instance=meta["name"]),
            "ownerReferences": [manifests.owner_reference(tier, controller=True)],
        },
        "spec": {
            "selector": {"matchLabels": _selector(meta["name"], role_name)},
            "maxUnavailable": max(1, rollout.max_unavailable),
            # A pod still loading its model (or crash-looping) serves nothing: evicting it costs no capacity,
            # and counting it would block every drain while a role is not fully ready.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def autoscaler(
    *, tier: Mapping[str, Any], role_name: str, autoscaling: modeltier.Autoscaling
) -> manifests.Manifest:
    """The HorizontalPodAutoscaler (autoscaling/v2) of an autoscaled role."""
    meta = tier["metadata"]
    name = child_name(meta["name"], role_name)
    metric: dict[str, Any]
    if autoscaling.metric in ("cpu", "memory"):
        metric = {
            "type": "Resource",
            "resource": {
                "name": autoscaling.metric,
                "target": {"type": "Utilization", "averageUtilization": autoscaling.target},
            },
        }
    else:
        metric = {
            "type": "Pods",
            "pods": {
                "metric": {"name": autoscaling.metric},
                "target": {"type": "AverageValue", "averageValue": str(autoscaling.target)},
            },
        }
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": manifests.common_labels(component="model-server", instance=meta["name"]),
            "ownerReferences": [manifests.owner_reference(tier, controller=True)],
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": autoscaling.min_replicas,
            "maxReplicas": autoscaling.max_replicas,
            "metrics": [metric],
        },
    }


def render(
    *, tier: Mapping[str, Any], spec: modeltier.ModelTierSpec, pool: pools.Pool, cfg: settings.Settings
) -> list[manifests.Manifest]:
    """Every child of the tier, each stamped with its applied hash."""
    out: list[manifests.Manifest] = []
    for role_name, role in spec.roles().items():
        out.append(deployment(tier=tier, spec=spec, role_name=role_name, pool=pool, cfg=cfg))
        out.append(disruption_budget(tier=tier, role_name=role_name, rollout=spec.rollout))
        if role.autoscaling is not None:
            out.append(autoscaler(tier=tier, role_name=role_name, autoscaling=role.autoscaling))
    return [manifests.stamped(m) for m in out]


def rendered_args(*, spec: modeltier.ModelTierSpec, pool: pools.Pool) -> dict[str, list[str]]:
    """Each role's engine arguments (for status.renderedArgsHash)."""
    return {r: render_args.engine_args(spec, role=r, port=pool.target_port) for r in spec.roles()}
