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

A *standalone* picker (GIE's standalone chart shape, for clusters without an inference-capable Gateway) runs
an Envoy sidecar in the same pod: clients send OpenAI requests to the picker's Service on port 8081
(`names.STANDALONE_HTTP_PORT`), Envoy asks the picker over ext_proc on localhost (TLS, as a gateway does)
and forwards each request to the endpoint it names (an `ORIGINAL_DST` cluster reading
`x-gateway-destination-endpoint`). That cluster takes one address, so a standalone picker names no
fallbacks (`--fallbacks 0`). The bootstrap is `frontier_api.envoy_bootstrap`'s, in a ConfigMap
`<picker>-envoy`; the pod's `inference.frontier.dev/envoy-config-hash` rolls it when the bootstrap changes.
The pool's `inference.frontier.dev/standalone` annotation chooses, else the operator's `--picker-standalone`.
"""

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Final

import yaml

from frontier_api import envoy_bootstrap, modeltier, names, scheduling_configs, schema
from frontier_operator import manifests, pools, settings

CONFIG_KEY: Final = "config.yaml"
CONFIG_MOUNT: Final = "/config"
ENVOY_CONFIG_KEY: Final = "envoy.yaml"
ENVOY_CONFIG_MOUNT: Final = "/etc/envoy"
ENVOY_VOLUME: Final = "envoy-config"
# Envoy's own uid in its distroless images; set explicitly so `runAsNonRoot` can be verified.
ENVOY_UID: Final = 65532

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


def envoy_config_map_name(pool: pools.Pool) -> str:
    return f"{pool.picker_name}-envoy"


def standalone(pool: pools.Pool, cfg: settings.Settings) -> bool:
    """Whether `pool`'s picker runs with an Envoy sidecar: its annotation, else the operator's default."""
    return cfg.picker_standalone if pool.standalone is None else pool.standalone


def has_envoy(deployment: Mapping[str, Any]) -> bool:
    """Whether a live picker Deployment runs the Envoy sidecar (mounts its ConfigMap)."""
    volumes = (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get("volumes") or []
    return any(volume.get("name") == ENVOY_VOLUME for volume in volumes)


def envoy_config() -> dict[str, Any]:
    """The sidecar Envoy's bootstrap: clients on every address of the pod, the picker on localhost."""
    return envoy_bootstrap.bootstrap(
        listen_address="0.0.0.0",
        listen_port=names.STANDALONE_HTTP_PORT,
        pickers=[f"127.0.0.1:{names.EXT_PROC_PORT}"],
        mode="gie",
        picker_tls=True,
        ready_port=names.STANDALONE_READY_PORT,
    )


def envoy_container(cfg: settings.Settings) -> dict[str, Any]:
    """The Envoy sidecar of a standalone picker."""
    return {
        "name": "envoy",
        "image": cfg.envoy_image,
        "command": list(cfg.envoy_command),
        # No hot restart: it needs shared memory and a second Envoy; a new pod replaces this one.
        "args": [
            "--config-path",
            f"{ENVOY_CONFIG_MOUNT}/{ENVOY_CONFIG_KEY}",
            "--log-level",
            "warn",
            "--disable-hot-restart",
        ],
        "ports": [
            {"name": "http", "containerPort": names.STANDALONE_HTTP_PORT, "protocol": "TCP"},
            {"name": "envoy-ready", "containerPort": names.STANDALONE_READY_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": envoy_bootstrap.READY_PATH, "port": names.STANDALONE_READY_PORT},
            "periodSeconds": 2,
        },
        # Envoy stops at once on SIGTERM: keep it up while the pod leaves the Service's endpoints and the
        # requests in flight finish (the picker drains as long).
        "lifecycle": {"preStop": {"sleep": {"seconds": DRAIN_TIMEOUT_S}}},
        "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": ENVOY_UID,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": ENVOY_VOLUME, "mountPath": ENVOY_CONFIG_MOUNT, "readOnly": True}],
    }


def picker_args(pool: pools.Pool, cfg: settings.Settings, *, with_envoy: bool = False) -> list[str]:
    """The picker's command-line arguments: Frontier's own first (its worker processes, and the peers it
    learns decisions from: every replica of the pool's picker), then the GIE EPP's flags; `with_envoy`: a
    standalone picker's, which names no fallbacks (its Envoy's original-destination cluster takes one
    address)."""
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
        *(["--fallbacks", "0"] if with_envoy else []),
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
    with_envoy = standalone(pool, cfg)
    pod_annotations = {"inference.frontier.dev/config-hash": config_hash}
    if with_envoy:
        envoy_text = yaml.safe_dump(envoy_config(), sort_keys=False)
        out.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": _meta(pool, envoy_config_map_name(pool), owners),
                "data": {ENVOY_CONFIG_KEY: envoy_text},
            }
        )
        pod_annotations["inference.frontier.dev/envoy-config-hash"] = hashlib.sha256(
            envoy_text.encode()
        ).hexdigest()[:16]
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
        "args": picker_args(pool, cfg, with_envoy=with_envoy),
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
    containers = [container]
    volumes: list[dict[str, Any]] = [{"name": "config", "configMap": {"name": config_map_name(pool)}}]
    service_ports: list[dict[str, Any]] = [
        {
            "name": "grpc-ext-proc",
            "port": pool.picker_port,
            "targetPort": names.EXT_PROC_PORT,
            "protocol": "TCP",
            "appProtocol": "http2",
        },
        {"name": "metrics", "port": names.METRICS_PORT, "targetPort": names.METRICS_PORT, "protocol": "TCP"},
    ]
    if with_envoy:
        containers.append(envoy_container(cfg))
        volumes.append({"name": ENVOY_VOLUME, "configMap": {"name": envoy_config_map_name(pool)}})
        service_ports.append(
            {
                "name": "http",
                "port": names.STANDALONE_HTTP_PORT,
                "targetPort": names.STANDALONE_HTTP_PORT,
                "protocol": "TCP",
                "appProtocol": "http",
            }
        )
    out.append(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(pool, name, owners),
            "spec": {
                "replicas": cfg.picker_replicas,
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": pod_labels, "annotations": pod_annotations},
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
                        "containers": containers,
                        "volumes": volumes,
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
            "spec": {"selector": selector, "ports": service_ports},
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
