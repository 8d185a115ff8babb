"""Desired picker of one InferencePool: Deployment, Service, ServiceAccount, Role, RoleBinding, ConfigMap, and
for its replicas a headless peers Service and a PodDisruptionBudget.

The gateway finds the picker through the pool's `endpointPickerRef`, so the Service takes that name and port.
Every ModelTier serving in the pool is an owner (not the controller) of these objects: Kubernetes garbage
collects them when the last tier of the pool is deleted, and the pool itself stays the user's. The picker's
config is an EndpointPickerConfig (GIE's format) in a ConfigMap: the picker's built-in `frontier` config
(Frontier's default scheduling, the text `frontier_api.scheduling_configs.text("frontier")` returns, with
the pool's tier facts filled in: each disaggregated model's `nonCachedTokens` on the P/D decider and the
pool's virtual models on the tier router) unless the operator is given a config (`--picker-config-file`);
a pool annotated with `inference.frontier.dev/picker-config: <configmap>` mounts that ConfigMap instead
and gets none generated. The Deployment's `inference.frontier.dev/config-hash` annotation hashes the
generated text, so a changed config rolls the picker.
"""

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Final

import yaml

from frontier_api import modeltier, names, scheduling_configs, schema
from frontier_operator import manifests, pools, settings

CONFIG_KEY: Final = "config.yaml"
CONFIG_MOUNT: Final = "/config"

# What a picker reads (`frontier_picker.pool_discovery`), and nothing more: it lists and watches its pool,
# the namespace's pods (its endpoints) and InferenceObjectives (priorities); tier facts come in its config.
PICKER_RULES: Final = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {"apiGroups": [names.GIE_GROUP], "resources": [names.INFERENCE_POOL_PLURAL], "verbs": ["list", "watch"]},
    {
        "apiGroups": [names.GIE_X_GROUP],
        "resources": [names.INFERENCE_OBJECTIVE_PLURAL],
        "verbs": ["list", "watch"],
    },
]


# The picker's plugin types the operator fills in from the pool's tiers; it knows them as data.
PD_DECIDER_TYPE: Final = "prefix-based-pd-decider"
TIER_ROUTER_TYPE: Final = "tier-router"
CLASSIFIER_TYPE: Final = "prompt-classifier"


def default_config_text() -> str:
    """The picker's built-in default EndpointPickerConfig (profile `frontier`), as its package ships it."""
    return scheduling_configs.text(scheduling_configs.DEFAULT)


def _valid_specs(owners: Sequence[Mapping[str, Any]]) -> list[modeltier.ModelTierSpec]:
    """The specs of the tiers that parse, in name order (an invalid tier gets no endpoints; its status
    says why)."""
    specs = []
    for owner in sorted(owners, key=lambda o: str((o.get("metadata") or {}).get("name", ""))):
        try:
            specs.append(modeltier.parse_spec(owner.get("spec")))
        except schema.ParseError:
            continue
    return specs


def virtual_models(owners: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The pool's virtual models, as the `tier-router` reads them: each name a tier declares in
    `spec.tier.virtualModels`, mapped to the tiers declaring it (one entry per served model, first tier by
    name wins). A name that is also a served model of the pool is left out: the served model wins."""
    specs = _valid_specs(owners)
    served = {spec.model.served_name for spec in specs}
    mapping: dict[str, list[dict[str, Any]]] = {}
    for spec in specs:
        tier = spec.tier
        hints = tier.routing
        entry: dict[str, Any] = {
            "model": spec.model.served_name,
            "rank": tier.rank,
            "relativeCost": tier.relative_cost,
        }
        if hints.min_prompt_tokens is not None:
            entry["minPromptTokens"] = hints.min_prompt_tokens
        if hints.max_prompt_tokens is not None:
            entry["maxPromptTokens"] = hints.max_prompt_tokens
        if hints.keywords:
            entry["keywords"] = list(hints.keywords)
        if hints.fallback:
            entry["fallback"] = True
        for name in tier.virtual_models:
            listed = mapping.setdefault(name, [])
            if name not in served and all(e["model"] != entry["model"] for e in listed):
                listed.append(entry)
    return {name: tiers for name, tiers in sorted(mapping.items()) if tiers}


def with_virtual_models(text: str, owners: Sequence[Mapping[str, Any]]) -> str:
    """`text` with the pool's virtual models set on the config's `tier-router` plugins, and a
    `prompt-classifier` for them (added when the config has none); `text` itself when it has no router or
    the pool declares no virtual model."""
    document = yaml.safe_load(text)
    routers = [p for p in document.get("plugins") or [] if p.get("type") == TIER_ROUTER_TYPE]
    mapping = virtual_models(owners)
    if not routers or not mapping:
        return text
    plugins = document["plugins"]
    classifier = next((p for p in plugins if p.get("type") == CLASSIFIER_TYPE), None)
    if classifier is None:
        classifier = {"type": CLASSIFIER_TYPE}
        plugins.insert(plugins.index(routers[0]), classifier)
    for router in routers:
        parameters = router.setdefault("parameters", {})
        parameters["virtualModels"] = mapping
        parameters.setdefault("classifier", classifier.get("name") or CLASSIFIER_TYPE)
    return yaml.safe_dump(document, sort_keys=False)


def with_tier_thresholds(text: str, owners: Sequence[Mapping[str, Any]]) -> str:
    """`text` with each disaggregated tier's `spec.disaggregation.nonCachedTokens` set for its served model
    on the config's `prefix-based-pd-decider`s; `text` itself when every tier keeps the decider's default."""
    document = yaml.safe_load(text)
    deciders = [p for p in document.get("plugins") or [] if p.get("type") == PD_DECIDER_TYPE]
    by_model: dict[str, int] = {}
    for spec in _valid_specs(owners):
        if spec.disaggregation.enabled:
            by_model[spec.model.served_name] = spec.disaggregation.non_cached_tokens
    changed = False
    for decider in deciders:
        parameters = decider.setdefault("parameters", {})
        default = parameters.get("nonCachedTokens", modeltier.Disaggregation().non_cached_tokens)
        overrides = {model: tokens for model, tokens in sorted(by_model.items()) if tokens != default}
        if overrides:
            parameters["nonCachedTokensByModel"] = overrides
            changed = True
    return yaml.safe_dump(document, sort_keys=False) if changed else text


def config_map_name(pool: pools.Pool) -> str:
    return pool.picker_config_override or f"{pool.picker_name}-config"


# SIGTERM drain of the picker (its --drain-delay/--drain-timeout); the pod's grace period covers both.
DRAIN_DELAY_S = 1
DRAIN_TIMEOUT_S = 30
TERMINATION_GRACE_S = DRAIN_TIMEOUT_S + 5


def peers_service_name(pool: pools.Pool) -> str:
    """The headless Service through which the replicas of a pool's picker find each other."""
    return f"{pool.picker_name}-peers"


def picker_args(pool: pools.Pool, cfg: settings.Settings) -> list[str]:
    """The picker's command-line arguments (mirroring the GIE EPP's flags, then Frontier's own: its worker
    processes, and the peers it learns decisions from, every replica of the pool's picker)."""
    return [
        "--workers",
        str(cfg.picker_workers),
        "--peer-port",
        str(names.PEER_PORT),
        "--peer-service",
        f"{peers_service_name(pool)}.{pool.namespace}.svc:{names.PEER_PORT}",
        "--pool-name",
        pool.name,
        "--pool-namespace",
        pool.namespace,
        "--grpc-port",
        str(names.EXT_PROC_PORT),
        "--grpc-health-port",
        str(names.HEALTH_PORT),
        "--metrics-port",
        str(names.METRICS_PORT),
        "--config-file",
        f"{CONFIG_MOUNT}/{CONFIG_KEY}",
        "--drain-delay",
        str(DRAIN_DELAY_S),
        "--drain-timeout",
        str(DRAIN_TIMEOUT_S),
        # Reviewing scrapers' tokens needs a ClusterRoleBinding to system:auth-delegator per picker, which
        # this operator's namespaced, least-privilege RBAC cannot create; the metrics port stays open here.
        "--metrics-endpoint-auth=false",
    ]


def _meta(pool: pools.Pool, name: str, owners: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": pool.namespace,
        "labels": manifests.common_labels(component="endpoint-picker", instance=pool.name),
        "annotations": {manifests.POOL_ANNOTATION: pool.name},
        "ownerReferences": [
            manifests.owner_reference(o, controller=False)
            for o in sorted(owners, key=lambda o: o["metadata"]["uid"])
        ],
    }


def render(
    *, pool: pools.Pool, owners: Sequence[Mapping[str, Any]], cfg: settings.Settings
) -> list[manifests.Manifest]:
    """The picker's objects for `pool`, owned by `owners` (the pool's ModelTiers), each stamped."""
    name = pool.picker_name
    selector = {
        names.POOL_LABEL: manifests.label_value(pool.name),
        manifests.COMPONENT_LABEL: "endpoint-picker",
    }
    out: list[manifests.Manifest] = []
    config_text = cfg.picker_config or with_virtual_models(
        with_tier_thresholds(default_config_text(), owners), owners
    )
    if pool.picker_config_override is None:
        out.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": _meta(pool, config_map_name(pool), owners),
                "data": {CONFIG_KEY: config_text},
            }
        )
        config_hash = hashlib.sha256(config_text.encode()).hexdigest()[:16]
    else:
        # Changes to a user-owned ConfigMap are the picker's to reload; the operator does not watch it.
        config_hash = f"configmap:{pool.picker_config_override}"
    out.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(pool, name, owners)})
    out.append(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(pool, name, owners),
            "rules": PICKER_RULES,
        }
    )
    out.append(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(pool, name, owners),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": pool.namespace}],
        }
    )
    pod_labels = {**manifests.common_labels(component="endpoint-picker", instance=pool.name), **selector}
    container = {
        "name": "picker",
        "image": cfg.picker_image,
        "command": list(cfg.picker_command),
        "args": picker_args(pool, cfg),
        "ports": [
            {"name": "grpc", "containerPort": names.EXT_PROC_PORT, "protocol": "TCP"},
            {"name": "grpc-health", "containerPort": names.HEALTH_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": names.METRICS_PORT, "protocol": "TCP"},
            {"name": "peers", "containerPort": names.PEER_PORT, "protocol": "TCP"},
        ],
        "livenessProbe": {"grpc": {"port": names.HEALTH_PORT, "service": "liveness"}, "periodSeconds": 10},
        "readinessProbe": {"grpc": {"port": names.HEALTH_PORT, "service": "readiness"}, "periodSeconds": 2},
        "resources": {
            "requests": {
                "cpu": "500m" if cfg.picker_workers == 1 else str(cfg.picker_workers),
                "memory": "512Mi",
            }
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True}],
    }
    out.append(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(pool, name, owners),
            "spec": {
                "replicas": cfg.picker_replicas,
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {
                        "labels": pod_labels,
                        "annotations": {"inference.frontier.dev/config-hash": config_hash},
                    },
                    "spec": {
                        "serviceAccountName": name,
                        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
                        # Replicas on different nodes: a node lost takes one replica's streams, not all.
                        "affinity": {
                            "podAntiAffinity": {
                                "preferredDuringSchedulingIgnoredDuringExecution": [
                                    {
                                        "weight": 100,
                                        "podAffinityTerm": {
                                            "labelSelector": {"matchLabels": selector},
                                            "topologyKey": "kubernetes.io/hostname",
                                        },
                                    }
                                ]
                            }
                        },
                        "containers": [container],
                        "volumes": [{"name": "config", "configMap": {"name": config_map_name(pool)}}],
                    },
                },
            },
        }
    )
    out.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(pool, name, owners),
            "spec": {
                "selector": selector,
                "ports": [
                    {
                        "name": "grpc-ext-proc",
                        "port": pool.picker_port,
                        "targetPort": names.EXT_PROC_PORT,
                        "protocol": "TCP",
                        "appProtocol": "http2",
                    },
                    {
                        "name": "metrics",
                        "port": names.METRICS_PORT,
                        "targetPort": names.METRICS_PORT,
                        "protocol": "TCP",
                    },
                ],
            },
        }
    )
    out.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(pool, peers_service_name(pool), owners),
            "spec": {
                "clusterIP": "None",
                "selector": selector,
                # A draining replica (not ready) still finishes its streams: its peers keep following it.
                "publishNotReadyAddresses": True,
                "ports": [
                    {
                        "name": "peers",
                        "port": names.PEER_PORT,
                        "targetPort": names.PEER_PORT,
                        "protocol": "TCP",
                    }
                ],
            },
        }
    )
    out.append(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": _meta(pool, name, owners),
            # Node drains take one replica at a time; the others keep serving (and keep its peers' state).
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
        }
    )
    return [manifests.stamped(m) for m in out]
