"""The ModelTier resource (`inference.frontier.dev/v1alpha1`): one served model variant in an InferencePool.

A pool (the standard GIE `InferencePool`) is what a Gateway routes to; a *tier* is one way of serving a model
in it — a model source and the name clients ask for, a rank and a relative cost the picker weighs when it
chooses between tiers, engine settings (quantization, speculative decoding, prefix caching, LoRA, limits), and
how it runs: either aggregated (one `serving` role whose endpoints do prefill and decode) or disaggregated
(`prefill` and `decode` roles, each its own Deployment, the KV cache moving between them over a KV connector).

These dataclasses are the single source of truth: `frontier_operator.crdgen` writes the CRD from them (via
`frontier_api.schema`), the operator and the picker parse resources with `schema.parse`. Rules that span
fields are CEL rules in each class's `__cel__`, enforced by the API server.
"""

# schema.prop returns a dataclasses.field (with the schema metadata); ruff cannot see that.
# ruff: noqa: RUF009

import dataclasses
import enum
from typing import ClassVar, Final

from frontier_api import names, schema


class EngineType(enum.StrEnum):
    """The model server; chosen per pod by the picker through the engine-type label."""

    VLLM = names.ENGINE_VLLM
    SGLANG = names.ENGINE_SGLANG


class Quantization(enum.StrEnum):
    """Weight quantization methods vLLM accepts for `--quantization`."""

    FP8 = "fp8"
    FBGEMM_FP8 = "fbgemm_fp8"
    MODELOPT = "modelopt"
    AWQ = "awq"
    AWQ_MARLIN = "awq_marlin"
    GPTQ = "gptq"
    GPTQ_MARLIN = "gptq_marlin"
    BITSANDBYTES = "bitsandbytes"
    COMPRESSED_TENSORS = "compressed-tensors"
    EXPERTS_INT8 = "experts_int8"
    GGUF = "gguf"
    MXFP4 = "mxfp4"


class Dtype(enum.StrEnum):
    """Activation and weight dtype (`--dtype`)."""

    AUTO = "auto"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FLOAT32 = "float32"


class KvCacheDtype(enum.StrEnum):
    """KV cache element type (`--kv-cache-dtype`); fp8 halves KV memory."""

    AUTO = "auto"
    FP8 = "fp8"
    FP8_E4M3 = "fp8_e4m3"
    FP8_E5M2 = "fp8_e5m2"


class SpeculativeMethod(enum.StrEnum):
    """Speculative decoding proposers (`--speculative-config` method); each one vLLM 0.11 runs (it refuses
    `draft_model`: its V1 engine has no draft-model proposer)."""

    NGRAM = "ngram"
    EAGLE = "eagle"
    EAGLE3 = "eagle3"
    MTP = "mtp"


# Methods whose proposer is a separate model that must be named.
DRAFTED_METHODS: Final = (SpeculativeMethod.EAGLE, SpeculativeMethod.EAGLE3)

# The `--max-lora-rank` values vLLM 0.11 accepts (it refuses any other at start-up).
MAX_LORA_RANKS: Final = (8, 16, 32, 64, 128, 256, 320, 512)


class PrefixHashAlgo(enum.StrEnum):
    """Block hash of vLLM's prefix cache (`--prefix-caching-hash-algo`)."""

    SHA256 = "sha256"
    SHA256_CBOR = "sha256_cbor"


class KvConnector(enum.StrEnum):
    """vLLM KV connectors that move prefill KV to decode endpoints."""

    NIXL = "NixlConnector"
    LMCACHE = "LMCacheConnectorV1"
    P2P_NCCL = "P2pNcclConnector"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PoolRef(schema.Model):
    """The InferencePool (inference.networking.k8s.io/v1, same namespace) this tier serves in."""

    name: str = schema.prop("Name of the InferencePool.", min_length=1, max_length=253)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SecretKeyRef(schema.Model):
    """One key of a Secret in the tier's namespace."""

    name: str = schema.prop("Secret name.", min_length=1, max_length=253)
    key: str = schema.prop(
        "Key of the Secret holding the value.", default="token", min_length=1, max_length=253
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelCache(schema.Model):
    """A PersistentVolumeClaim holding the Hugging Face cache (`HF_HOME`): the model downloads once, and pods
    that restart or scale out load it from there."""

    claim_name: str = schema.prop(
        "PersistentVolumeClaim in the tier's namespace (ReadWriteMany, or ReadOnlyMany when filled"
        " beforehand, for more than one pod).",
        min_length=1,
        max_length=253,
    )
    read_only: bool = schema.prop("Mount it read-only (a cache filled beforehand).", default=False)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSource(schema.Model):
    """What the engine loads and the name clients request it by."""

    source: str = schema.prop(
        "Model to load: a Hugging Face repo id (org/name) or a path/URI the engine understands.",
        min_length=1,
        max_length=1024,
    )
    served_name: str = schema.prop(
        "Model name clients put in the request's `model` field (`--served-model-name`).",
        min_length=1,
        max_length=256,
    )
    token_secret_ref: SecretKeyRef | None = schema.prop(
        "Secret key holding the Hugging Face token for gated models; the engine gets it as `HF_TOKEN`.",
        default=None,
    )
    cache: ModelCache | None = schema.prop(
        f"Model cache volume, mounted at {names.MODEL_CACHE_PATH} and set as `HF_HOME`; unset, each pod"
        " downloads the model into its own filesystem.",
        default=None,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Routing(schema.Model):
    """Hints the picker uses to choose this tier for a request."""

    __cel__: ClassVar[tuple[schema.Rule, ...]] = (
        schema.Rule(
            rule="!has(self.minPromptTokens) || !has(self.maxPromptTokens)"
            " || self.minPromptTokens <= self.maxPromptTokens",
            message="tier.routing.minPromptTokens must not exceed maxPromptTokens",
            field_path=".minPromptTokens",
        ),
        schema.Rule(
            rule="!has(self.keywords) || self.keywords.all(k, size(k) >= 1 && size(k) <= 128)",
            message="tier.routing.keywords entries must be 1 to 128 characters",
            field_path=".keywords",
        ),
    )

    max_prompt_tokens: int | None = schema.prop(
        "Prefer this tier only for prompts up to this many tokens.", default=None, minimum=1
    )
    min_prompt_tokens: int | None = schema.prop(
        "Prefer this tier only for prompts of at least this many tokens.", default=None, minimum=0
    )
    keywords: list[str] = schema.prop(
        "Prompts containing any of these words prefer this tier.", default_factory=list, max_items=64
    )
    fallback: bool = schema.prop(
        "The fallback tier: requests no hint or classifier decides go here, and requests needing a higher"
        " rank may spill down to it when every tier at their rank is saturated.",
        default=False,
    )


DEFAULT_VIRTUAL_MODEL: Final = "auto"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Tier(schema.Model):
    """Where this variant sits among the pool's tiers."""

    __cel__: ClassVar[tuple[schema.Rule, ...]] = (
        schema.Rule(
            rule="!has(self.virtualModels) || self.virtualModels.all(m, size(m) >= 1 && size(m) <= 256)",
            message="tier.virtualModels entries must be 1 to 256 characters",
            field_path=".virtualModels",
        ),
    )

    virtual_models: list[str] = schema.prop(
        "Virtual model names this tier answers for: a request naming one goes to the cheapest tier of the"
        " pool that is good enough for it (by rank, routing hints and the picker's prompt classifier), and"
        " spills to the next while that tier is saturated. Empty: only the served name reaches this tier.",
        default_factory=lambda: [DEFAULT_VIRTUAL_MODEL],
        max_items=16,
    )
    rank: int = schema.prop(
        "Quality rank; higher ranks are preferred when cost allows.", default=0, minimum=0
    )
    relative_cost: float = schema.prop(
        "Cost of one request relative to other tiers (1.0 = reference).", default=1.0, minimum=0
    )
    routing: Routing = schema.prop("Tier-selection hints.", default_factory=Routing)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Speculative(schema.Model):
    """Speculative decoding: a cheap proposer guesses tokens the target model verifies in one step."""

    __cel__: ClassVar[tuple[schema.Rule, ...]] = (
        schema.Rule(
            rule=f"!(self.method in {[m.value for m in DRAFTED_METHODS]}) || has(self.draftModel)",
            message="speculative.draftModel is required for methods eagle and eagle3",
            field_path=".draftModel",
        ),
        schema.Rule(
            rule="self.method == 'ngram' || (!has(self.promptLookupMax) && !has(self.promptLookupMin))",
            message="speculative.promptLookupMax/promptLookupMin apply only to method ngram",
        ),
        schema.Rule(
            rule="!has(self.promptLookupMax) || !has(self.promptLookupMin)"
            " || self.promptLookupMin <= self.promptLookupMax",
            message="speculative.promptLookupMin must not exceed promptLookupMax",
            field_path=".promptLookupMin",
        ),
    )

    method: SpeculativeMethod = schema.prop("Proposer.")
    num_speculative_tokens: int = schema.prop("Tokens proposed per step.", minimum=1, maximum=16)
    draft_model: str | None = schema.prop("Proposer model (eagle, eagle3).", default=None, max_length=1024)
    prompt_lookup_max: int | None = schema.prop(
        "ngram: longest n-gram matched in the prompt.", default=None, minimum=1
    )
    prompt_lookup_min: int | None = schema.prop(
        "ngram: shortest n-gram matched in the prompt.", default=None, minimum=1
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrefixCaching(schema.Model):
    """Automatic prefix caching: reuse KV blocks of shared prompt prefixes."""

    enabled: bool = schema.prop("Enable the engine's prefix cache.", default=True)
    hash_algo: PrefixHashAlgo | None = schema.prop("Block hash algorithm.", default=None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraAdapter(schema.Model):
    """A LoRA adapter loaded at start-up and served under its own model name."""

    name: str = schema.prop("Model name clients request the adapter by.", min_length=1, max_length=256)
    source: str = schema.prop("Adapter repo id or path.", min_length=1, max_length=1024)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Lora(schema.Model):
    """Multi-LoRA serving."""

    __cel__: ClassVar[tuple[schema.Rule, ...]] = (
        schema.Rule(
            rule=f"!has(self.maxLoraRank) || self.maxLoraRank in {list(MAX_LORA_RANKS)}",
            message="lora.maxLoraRank must be one of " + ", ".join(map(str, MAX_LORA_RANKS)),
            field_path=".maxLoraRank",
        ),
    )

    max_loras: int = schema.prop("Adapters resident in one batch (`--max-loras`).", default=1, minimum=1)
    max_lora_rank: int | None = schema.prop(
        "Largest adapter rank (`--max-lora-rank`): 8, 16, 32, 64, 128, 256, 320 or 512.",
        default=None,
        minimum=1,
    )
    adapters: list[LoraAdapter] = schema.prop(
        "Adapters loaded at start-up (`--lora-modules`).", default_factory=list, max_items=64
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class KvEvents(schema.Model):
    """KV cache events the engine publishes over ZMQ so the picker knows exactly which prefixes it holds."""

    __cel__: ClassVar[tuple[schema.Rule, ...]] = (
        schema.Rule(
            rule="!has(self.replayEndpoint) || self.replayEndpoint == ''"
            " || self.replayEndpoint != self.endpoint",
            message="engine.kvEvents.replayEndpoint must differ from engine.kvEvents.endpoint",
            field_path=".replayEndpoint",
        ),
    )

    enabled: bool = schema.prop("Publish KV events (`--kv-events-config`).", default=False)
    endpoint: str = schema.prop(
        "ZMQ PUB bind address.", default=names.KV_EVENTS_DEFAULT_ENDPOINT, min_length=1, max_length=256
    )
    replay_endpoint: str = schema.prop(
        "ZMQ ROUTER bind address (`tcp://*:<port>`) where the engine answers requests for event batches a"
        " picker missed (vLLM's `replay_endpoint`); empty: no replay, and a picker that misses a batch drops"
        " what it knew of that engine's cache and learns it again from new events.",
        default=names.KV_EVENTS_DEFAULT_REPLAY_ENDPOINT,
        max_length=256,
        pattern=r"^(tcp://[^:/]+:[0-9]{1,5})?$",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class EnvVar(schema.Model):
    """An environment variable of the engine container."""

    name: str = schema.prop("Variable name.", min_length=1, max_length=256)
    value: str = schema.prop("Value.", default="", max_length=4096)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Engine(schema.Model):
    """Model-server settings shared by every role of the tier."""

    __cel__: ClassVar[tuple[schema.Rule, ...]] = (
        schema.Rule(
            rule="!has(self.maxNumBatchedTokens) || !has(self.maxNumSeqs)"
            " || self.maxNumBatchedTokens >= self.maxNumSeqs",
            message="engine.maxNumBatchedTokens must be at least engine.maxNumSeqs",
            field_path=".maxNumBatchedTokens",
        ),
    )

    type: EngineType = schema.prop("Model server.", default=EngineType.VLLM)
    image: str | None = schema.prop(
        "Engine container image; the operator's default image when unset.", default=None, max_length=1024
    )
    max_model_len: int | None = schema.prop("Context length (`--max-model-len`).", default=None, minimum=1)
    max_num_seqs: int | None = schema.prop("Sequences per batch (`--max-num-seqs`).", default=None, minimum=1)
    max_num_batched_tokens: int | None = schema.prop(
        "Tokens per engine step (`--max-num-batched-tokens`).", default=None, minimum=1
    )
    gpu_memory_utilization: float | None = schema.prop(
        "Fraction of GPU memory the engine may use (`--gpu-memory-utilization`).",
        default=None,
        minimum=0,
        exclusive_minimum=True,
        maximum=1,
    )
    dtype: Dtype | None = schema.prop("Weight/activation dtype (`--dtype`).", default=None)
    kv_cache_dtype: KvCacheDtype | None = schema.prop("KV cache dtype (`--kv-cache-dtype`).", default=None)
    quantization: Quantization | None = schema.prop(
        "Weight quantization (`--quantization`); unset serves the checkpoint as is.", default=None
    )
    speculative: Speculative | None = schema.prop("Speculative decoding.", default=None)
    prefix_caching: PrefixCaching = schema.prop("Prefix caching.", default_factory=PrefixCaching)
    lora: Lora | None = schema.prop("Multi-LoRA serving.", default=None)
    kv_events: KvEvents = schema.prop("KV cache events for precise prefix routing.", default_factory=KvEvents)
    extra_args: list[str] = schema.prop(
        "Further engine arguments, appended verbatim; must not repeat a flag a typed field renders.",
        default_factory=list,
        max_items=128,
    )
    env: list[EnvVar] = schema.prop("Engine environment variables.", default_factory=list, max_items=128)
    image_pull_secrets: list[str] = schema.prop(
        "Secrets (names) for pulling the engine image from a private registry.",
        default_factory=list,
        max_items=16,
    )
    service_account_name: str | None = schema.prop(
        "ServiceAccount of the engine pods (e.g. for workload identity to a model bucket); the namespace's"
        " default when unset.",
        default=None,
        max_length=253,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Disaggregation(schema.Model):
    """Prefill/decode disaggregation: prompts are prefilled on `prefill` endpoints, tokens generated on
    `decode` endpoints, the KV cache moved between them by the KV connector."""

    enabled: bool = schema.prop("Run separate prefill and decode roles.", default=False)
    kv_connector: KvConnector = schema.prop(
        "KV connector (`--kv-transfer-config`).", default=KvConnector.NIXL
    )
    non_cached_tokens: int = schema.prop(
        "The picker sends a request through a prefill endpoint only when more than this many prompt tokens "
        "are not already cached on the chosen decode endpoint (rendered into the picker's P/D decider).",
        default=2048,
        minimum=0,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Autoscaling(schema.Model):
    """A HorizontalPodAutoscaler owns the role's replica count."""

    __cel__: ClassVar[tuple[schema.Rule, ...]] = (
        schema.Rule(
            rule="self.minReplicas <= self.maxReplicas",
            message="autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
            field_path=".minReplicas",
        ),
    )

    min_replicas: int = schema.prop("Fewest replicas.", default=1, minimum=1)
    max_replicas: int = schema.prop("Most replicas.", minimum=1)
    metric: str = schema.prop(
        "`cpu`, `memory` (utilization percent) or a per-pod custom metric name served by a metrics adapter.",
        default="vllm:num_requests_waiting",
        min_length=1,
        max_length=256,
    )
    target: int = schema.prop(
        "Target per-pod average (utilization percent for cpu/memory).", default=5, minimum=1
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Parallelism(schema.Model):
    """How one replica spreads the model over GPUs; a pod requests tensor x pipeline x data GPUs."""

    tensor: int = schema.prop(
        "Tensor-parallel size (`--tensor-parallel-size`).", default=1, minimum=1, maximum=64
    )
    pipeline: int = schema.prop(
        "Pipeline-parallel size (`--pipeline-parallel-size`).", default=1, minimum=1, maximum=64
    )
    data: int = schema.prop(
        "Data-parallel ranks inside one pod (`--data-parallel-size`).", default=1, minimum=1, maximum=64
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Accelerator(schema.Model):
    """The GPU type a role runs on: the value of the node label the operator matches (`--accelerator-label`:
    GKE's `cloud.google.com/gke-accelerator` by default, or GPU Feature Discovery's `nvidia.com/gpu.product`);
    `countPerPod: 0` makes a CPU-only role (no GPU request, toleration or accelerator node selector)."""

    __cel__: ClassVar[tuple[schema.Rule, ...]] = (
        schema.Rule(
            rule="!has(self.type) || !has(self.countPerPod) || self.countPerPod > 0",
            message="a CPU-only role (accelerator.countPerPod: 0) has no accelerator.type",
            field_path=".type",
        ),
    )

    type: str | None = schema.prop(
        "Accelerator label value, e.g. nvidia-h100-80gb (GKE) or NVIDIA-H100-80GB-HBM3 (GPU Feature"
        " Discovery); unset places on any GPU node.",
        default=None,
        max_length=128,
    )
    count_per_pod: int | None = schema.prop(
        "GPUs per pod; defaults to tensor x pipeline x data; 0 runs the role on CPU nodes (with a CPU build"
        " of the engine, spec.engine.image).",
        default=None,
        minimum=0,
        maximum=64,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Placement(schema.Model):
    """Scheduling constraints added to the role's pods."""

    node_selector: dict[str, str] = schema.prop("Extra node labels required.", default_factory=dict)
    tolerations: list[schema.FreeForm] = schema.prop(
        "Tolerations (Kubernetes Toleration objects) in addition to the GPU toleration.",
        default_factory=list,
        max_items=32,
    )
    affinity: schema.FreeForm | None = schema.prop("Kubernetes Affinity of the pods.", default=None)
    priority_class_name: str | None = schema.prop("PriorityClass of the pods.", default=None, max_length=253)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Resources(schema.Model):
    """CPU/memory of the engine container; the GPU count is derived from parallelism."""

    requests: dict[str, schema.IntOrString] = schema.prop("Resource requests.", default_factory=dict)
    limits: dict[str, schema.IntOrString] = schema.prop("Resource limits.", default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Probes(schema.Model):
    """Probe timings: /health for liveness, /v1/models for readiness, a long startup allowance for loading."""

    startup_timeout_seconds: int = schema.prop(
        "How long a starting engine may take to load the model.", default=1800, minimum=10
    )
    period_seconds: int = schema.prop("Probe period.", default=10, minimum=1)
    timeout_seconds: int = schema.prop("Probe timeout.", default=5, minimum=1)
    failure_threshold: int = schema.prop("Failures before liveness restarts a pod.", default=3, minimum=1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Role(schema.Model):
    """One Deployment of the tier: `serving` (aggregated), `prefill` or `decode`."""

    __cel__: ClassVar[tuple[schema.Rule, ...]] = (
        schema.Rule(
            rule="!(has(self.replicas) && has(self.autoscaling))",
            message="set either replicas or autoscaling, not both",
            field_path=".autoscaling",
        ),
        schema.Rule(
            rule="!has(self.accelerator) || !has(self.accelerator.countPerPod) || !has(self.parallelism)"
            " || self.accelerator.countPerPod == 0 || self.accelerator.countPerPod >="
            " self.parallelism.tensor * self.parallelism.pipeline * self.parallelism.data",
            message="accelerator.countPerPod must be 0 (CPU-only) or at least tensor x pipeline x data",
            field_path=".accelerator.countPerPod",
        ),
    )

    replicas: int | None = schema.prop(
        "Fixed replica count (1 when neither replicas nor autoscaling is set).", default=None, minimum=0
    )
    autoscaling: Autoscaling | None = schema.prop("Autoscaling instead of a fixed count.", default=None)
    parallelism: Parallelism = schema.prop("Parallelism of one replica.", default_factory=Parallelism)
    accelerator: Accelerator = schema.prop("GPU type and count.", default_factory=Accelerator)
    placement: Placement = schema.prop("Scheduling constraints.", default_factory=Placement)
    resources: Resources = schema.prop("CPU/memory of the engine container.", default_factory=Resources)
    probes: Probes = schema.prop("Probe timings.", default_factory=Probes)

    def gpus_per_pod(self) -> int:
        """GPUs one pod requests: the explicit count, else tensor x pipeline x data."""
        if self.accelerator.count_per_pod is not None:
            return self.accelerator.count_per_pod
        p = self.parallelism
        return p.tensor * p.pipeline * p.data


class RolloutStrategy(enum.StrEnum):
    """How a role's Deployment replaces its pods (the Deployment strategy type)."""

    ROLLING_UPDATE = "RollingUpdate"
    RECREATE = "Recreate"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rollout(schema.Model):
    """How the pods of every role are replaced and stopped: on a spec change, a node drain or a scale-down."""

    __cel__: ClassVar[tuple[schema.Rule, ...]] = (
        schema.Rule(
            # The has() guards are for the CRD's own default ({}), checked before defaulting fills it.
            rule="!has(self.maxSurge) || !has(self.maxUnavailable) || self.strategy == 'Recreate'"
            " || self.maxSurge + self.maxUnavailable >= 1",
            message="rollout.maxSurge and rollout.maxUnavailable must not both be 0",
            field_path=".maxUnavailable",
        ),
    )

    strategy: RolloutStrategy = schema.prop(
        "RollingUpdate replaces pods a few at a time (maxSurge/maxUnavailable); Recreate stops every pod of"
        " the role before starting new ones (an outage of the role, but no extra GPUs and never two"
        " versions at once).",
        default=RolloutStrategy.ROLLING_UPDATE,
    )
    max_surge: int = schema.prop(
        "RollingUpdate: pods started above the replica count. Default 0: a GPU pool is usually full, and a"
        " surge pod would wait for GPUs that only the pods it replaces can free, so the rollout would stall"
        " (Kubernetes' 25% rounds up to one such pod). Raise it only where spare GPUs exist.",
        default=0,
        minimum=0,
    )
    max_unavailable: int = schema.prop(
        "Pods of a role that may be down at once: during a RollingUpdate (default 1: one pod stops, freeing"
        " its GPUs for its replacement, so capacity dips by one pod) and for voluntary disruptions such as"
        " node drains, through the role's PodDisruptionBudget (which allows at least 1, so a drain never"
        " blocks forever). A pod count, not a percentage: Kubernetes' 25% rounds down to 0 below 4 replicas.",
        default=1,
        minimum=0,
    )
    drain_timeout_seconds: int = schema.prop(
        "How long a stopping engine pod keeps serving its in-flight requests: after the picker has dropped"
        " it, the pod waits until the engine's running and waiting requests reach 0, or this long, before"
        " the engine gets SIGTERM (vLLM itself has no drain).",
        default=120,
        minimum=0,
        maximum=3600,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelTierSpec(schema.Model):
    """One served model variant in an InferencePool: model, tier, engine settings and roles."""

    __cel__: ClassVar[tuple[schema.Rule, ...]] = (
        schema.Rule(
            rule="!self.disaggregation.enabled || (has(self.prefill) && has(self.decode))",
            message="disaggregation.enabled requires both spec.prefill and spec.decode",
            field_path=".disaggregation.enabled",
        ),
        schema.Rule(
            rule="!self.disaggregation.enabled || !has(self.serving)",
            message="spec.serving is for aggregated tiers; with disaggregation.enabled use prefill/decode",
            field_path=".serving",
        ),
        schema.Rule(
            rule="self.disaggregation.enabled || (!has(self.prefill) && !has(self.decode))",
            message="spec.prefill and spec.decode require disaggregation.enabled=true; use spec.serving",
            field_path=".disaggregation.enabled",
        ),
        schema.Rule(
            rule="self.disaggregation.enabled || has(self.serving)",
            message="spec.serving is required when disaggregation is not enabled",
        ),
        schema.Rule(
            rule="!has(self.model.tokenSecretRef) || !has(self.engine) || !has(self.engine.env)"
            " || !self.engine.env.exists(e, e.name == 'HF_TOKEN')",
            message="spec.engine.env must not set HF_TOKEN: spec.model.tokenSecretRef renders it",
            field_path=".engine.env",
        ),
        schema.Rule(
            rule="!has(self.model.cache) || !has(self.engine) || !has(self.engine.env)"
            " || !self.engine.env.exists(e, e.name == 'HF_HOME')",
            message="spec.engine.env must not set HF_HOME: spec.model.cache renders it",
            field_path=".engine.env",
        ),
    )

    pool_ref: PoolRef = schema.prop("The InferencePool this tier serves in.")
    model: ModelSource = schema.prop("Model source and served name.")
    tier: Tier = schema.prop("Rank, cost and routing hints.", default_factory=Tier)
    engine: Engine = schema.prop("Engine settings.", default_factory=Engine)
    disaggregation: Disaggregation = schema.prop(
        "Prefill/decode disaggregation.", default_factory=Disaggregation
    )
    serving: Role | None = schema.prop(
        "The aggregated role (prefill and decode in one server).", default=None
    )
    prefill: Role | None = schema.prop("The prefill role (disaggregation only).", default=None)
    decode: Role | None = schema.prop("The decode role (disaggregation only).", default=None)
    rollout: Rollout = schema.prop("How every role's pods are replaced and stopped.", default_factory=Rollout)

    def roles(self) -> dict[str, Role]:
        """The tier's roles by label value (`both` for the aggregated serving role)."""
        found: dict[str, Role] = {}
        if self.disaggregation.enabled:
            if self.prefill is not None:
                found[names.ROLE_PREFILL] = self.prefill
            if self.decode is not None:
                found[names.ROLE_DECODE] = self.decode
        elif self.serving is not None:
            found[names.ROLE_BOTH] = self.serving
        return found


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Condition(schema.Model):
    """A Kubernetes-style condition."""

    type: str = schema.prop("Condition type.", max_length=64)
    status: ConditionStatus = schema.prop("True, False or Unknown.")
    reason: str = schema.prop("CamelCase reason.", default="", max_length=128)
    message: str = schema.prop("Human-readable detail.", default="", max_length=4096)
    last_transition_time: str | None = schema.prop("When status last changed (RFC 3339).", default=None)
    observed_generation: int | None = schema.prop("Generation the condition was computed for.", default=None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RoleStatus(schema.Model):
    """Replica counts of one role's Deployment."""

    replicas: int = schema.prop("Desired replicas.", default=0)
    ready: int = schema.prop("Ready replicas.", default=0)
    updated: int = schema.prop("Replicas running the current pod template.", default=0)
    available: int = schema.prop("Available replicas.", default=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelTierStatus(schema.Model):
    """Observed state, derived from the owned Deployments."""

    observed_generation: int | None = schema.prop("Generation last reconciled.", default=None)
    conditions: list[Condition] | None = schema.prop("Ready, Progressing, ... conditions.", default=None)
    roles: dict[str, RoleStatus] | None = schema.prop("Per-role replica counts.", default=None)
    ready_roles: str | None = schema.prop("Roles with all replicas ready, as ready/total.", default=None)
    split: str | None = schema.prop(
        "A disaggregated tier's available prefill:decode endpoints (e.g. 2:4), the split the picker routes "
        "over; absent for a tier that prefills and decodes on the same endpoints.",
        default=None,
    )
    rendered_args_hash: str | None = schema.prop(
        "Hash of the rendered engine arguments of all roles.", default=None
    )


# Condition types and what they say.
READY: Final = "Ready"
PROGRESSING: Final = "Progressing"
PREFILL_AVAILABLE: Final = "PrefillAvailable"
DECODE_AVAILABLE: Final = "DecodeAvailable"
CONFIG_VALID: Final = "ConfigValid"
DEGRADED: Final = "Degraded"
ROUTABLE: Final = "Routable"
CONDITION_TYPES: Final = (
    READY,
    PROGRESSING,
    PREFILL_AVAILABLE,
    DECODE_AVAILABLE,
    CONFIG_VALID,
    DEGRADED,
    ROUTABLE,
)


def parse_spec(spec: object) -> ModelTierSpec:
    """A ModelTier spec from API JSON; raises `schema.ParseError` naming the field."""
    return schema.parse(ModelTierSpec, spec, path="spec")
