"""Names that cross a process boundary: HTTP headers, Envoy metadata keys, labels, model-server metrics.

They are facts of the Gateway API Inference Extension (GIE), Envoy, vLLM, SGLang and llm-d, written down once
here so that the picker, the operator, the simulator and the benchmark can never disagree about them.
"""

import dataclasses
from types import MappingProxyType
from typing import Final

# --- GIE endpoint-picker protocol (Envoy ext_proc) -------------------------------------------------------
DESTINATION_ENDPOINT: Final = "x-gateway-destination-endpoint"
DESTINATION_ENDPOINT_SERVED: Final = "x-gateway-destination-endpoint-served"
DESTINATION_SUBSET: Final = "x-gateway-destination-endpoint-subset"
LB_NAMESPACE: Final = "envoy.lb"
SUBSET_HINT_NAMESPACE: Final = "envoy.lb.subset_hint"
EXT_PROC_SERVICE: Final = "envoy.service.ext_proc.v3.ExternalProcessor"

# Request headers GIE endpoint pickers read (llm-d spells some of them x-llm-d-*).
REQUEST_ID: Final = "x-request-id"
INFERENCE_OBJECTIVE: Final = "x-gateway-inference-objective"
FAIRNESS_ID: Final = "x-gateway-inference-fairness-id"
MODEL_NAME_REWRITE: Final = "x-gateway-model-name-rewrite"
SESSION_TOKEN: Final = "x-session-token"
TTFT_SLO: Final = (
    "x-slo-ttft-ms"  # the request's time-to-first-token objective in milliseconds (llm-d's name)
)
LLMD_ALIASES: Final = {
    "x-llm-d-inference-objective": INFERENCE_OBJECTIVE,
    "x-llm-d-fairness-id": FAIRNESS_ID,
    "x-llm-d-model-name-rewrite": MODEL_NAME_REWRITE,
}

# Prefill/decode disaggregation (llm-d convention): the decode endpoint is the destination; this header
# names the prefill endpoint its sidecar asks first.
PREFILLER_HOST_PORT: Final = "x-prefiller-host-port"
# The `kv_transfer_params` of the prefill leg (vLLM's NixlConnector, as llm-d's sidecar sends it): prefill
# only, keep the KV for a remote decode. The prefill answer's params (`do_remote_prefill: true`, the blocks,
# engine id, host and port) go unchanged into the decode request.
KV_TRANSFER_PREFILL_PARAMS: Final = MappingProxyType(
    {
        "do_remote_decode": True,
        "do_remote_prefill": False,
        "remote_engine_id": None,
        "remote_block_ids": None,
        "remote_host": None,
        "remote_port": None,
    }
)

# Tier routing (Frontier's own): a request naming a virtual model may declare its category; the response
# names the tier (served model) chosen and why.
CATEGORY_HEADER: Final = "x-frontier-category"
TIER_HEADER: Final = "x-frontier-tier"
TIER_REASON_HEADER: Final = "x-frontier-tier-reason"

# The OpenAI-compatible APIs whose bodies name a model (other paths are scheduled without one), and the model
# list, which the picker answers for the whole pool (one engine knows only its own models).
INFERENCE_PATHS: Final = frozenset(
    {"/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/embeddings"}
)
MODELS_PATH: Final = "/v1/models"
# The simulated engine's own request field (vLLM ignores unknown fields): the answer's length, where the
# simulated model emits EOS (finish_reason "stop") unless max_tokens comes first or ignore_eos is set.
SIM_OUTPUT_TOKENS: Final = "sim_output_tokens"

# The Envoy attribute the bootstrap asks for: when the gateway got the request's first byte (the picker's
# overload check measures how late a request reaches it from this).
REQUEST_TIME_ATTRIBUTE: Final = "request.time"

# Picker ports, as the GIE EPP uses them.
EXT_PROC_PORT: Final = 9002
HEALTH_PORT: Final = 9003
METRICS_PORT: Final = 9090
# Frontier's own: replicas of a pool's picker learn each other's decisions here (frontier.picker.v1).
PEER_PORT: Final = 9004
# A standalone picker's Envoy sidecar (GIE's standalone chart): the clients' HTTP port and its readiness port.
STANDALONE_HTTP_PORT: Final = 8081
STANDALONE_READY_PORT: Final = 19001

# --- Kubernetes -----------------------------------------------------------------------------------------
GIE_GROUP: Final = "inference.networking.k8s.io"
GIE_VERSION: Final = "v1"
INFERENCE_POOL_PLURAL: Final = "inferencepools"
GIE_X_GROUP: Final = "inference.networking.x-k8s.io"
INFERENCE_OBJECTIVE_PLURAL: Final = "inferenceobjectives"
INFERENCE_OBJECTIVE_VERSION: Final = "v1alpha2"  # as GIE v1.5.0 ships it

FRONTIER_GROUP: Final = "inference.frontier.dev"
FRONTIER_VERSION: Final = "v1alpha1"
MODEL_TIER_KIND: Final = "ModelTier"
MODEL_TIER_PLURAL: Final = "modeltiers"

ENGINE_TYPE_LABEL: Final = "inference.networking.k8s.io/engine-type"
TIER_LABEL: Final = "inference.frontier.dev/tier"
ROLE_LABEL: Final = "inference.frontier.dev/role"
POOL_LABEL: Final = "inference.frontier.dev/pool"
MODEL_LABEL: Final = "inference.frontier.dev/model"
# A label value cannot hold `meta-llama/Llama-3.1-8B-Instruct`: the exact served name travels in this pod
# annotation, and pool discovery gives it to the picker as the endpoint's MODEL_LABEL.
SERVED_MODEL_ANNOTATION: Final = "inference.frontier.dev/served-model"
# The LoRA adapters a pod serves (comma-separated adapter names, `--lora-modules` of its engine).
ADAPTERS_ANNOTATION: Final = "inference.frontier.dev/lora-adapters"
# The port of a pod's KV event publisher (ZMQ PUB, `--kv-events-config` endpoint); pool discovery gives it to
# the picker as the endpoint's label of the same name, and the picker subscribes to tcp://<pod-ip>:<port>.
KV_EVENTS_PORT_ANNOTATION: Final = "inference.frontier.dev/kv-events-port"
# The port of its KV event replay socket (ZMQ ROUTER, the `--kv-events-config` `replay_endpoint`), likewise:
# after a sequence gap the picker asks it for the batches it missed instead of dropping what it knew.
KV_EVENTS_REPLAY_PORT_ANNOTATION: Final = "inference.frontier.dev/kv-events-replay-port"
# Roles a model-server pod plays; "both" is an aggregated (not disaggregated) server.
ROLE_PREFILL: Final = "prefill"
ROLE_DECODE: Final = "decode"
ROLE_BOTH: Final = "both"

GPU_RESOURCE: Final = "nvidia.com/gpu"
GKE_ACCELERATOR_LABEL: Final = "cloud.google.com/gke-accelerator"
# Where an engine pod mounts the tier's model cache volume (its `HF_HOME`).
MODEL_CACHE_PATH: Final = "/var/cache/huggingface"

# --- Model-server metrics (Prometheus text on the serving port) ------------------------------------------
ENGINE_VLLM: Final = "vllm"
ENGINE_SGLANG: Final = "sglang"


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineMetricNames:
    """The metric families one engine type exposes for what the picker reads."""

    waiting: str
    running: str
    kv_usage: tuple[str, ...]  # first match wins; vLLM renamed gpu_cache_usage_perc
    cache_config: str
    block_size_label: str
    num_blocks_label: str
    lora: str | None


ENGINE_METRICS: Final = {
    ENGINE_VLLM: EngineMetricNames(
        waiting="vllm:num_requests_waiting",
        running="vllm:num_requests_running",
        kv_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        cache_config="vllm:cache_config_info",
        block_size_label="block_size",
        num_blocks_label="num_gpu_blocks",
        lora="vllm:lora_requests_info",
    ),
    ENGINE_SGLANG: EngineMetricNames(
        waiting="sglang:num_queue_reqs",
        running="sglang:num_running_reqs",
        kv_usage=("sglang:token_usage",),
        cache_config="sglang:cache_config_info",
        block_size_label="page_size",
        num_blocks_label="num_pages",
        lora=None,
    ),
}

# vLLM KV events (ZMQ PUB), llm-d topic convention kv@<endpoint-ip>@<model>.
KV_EVENTS_DEFAULT_ENDPOINT: Final = "tcp://*:5557"
KV_EVENTS_DEFAULT_REPLAY_ENDPOINT: Final = "tcp://*:5558"  # vLLM's examples pair 5558 with 5557


def kv_events_port(endpoint: str) -> int | None:
    """The TCP port of a ZMQ endpoint `tcp://host:port` (None when it names no fixed port)."""
    scheme, _, rest = endpoint.partition("://")
    port = rest.rpartition(":")[2]
    return int(port) if scheme == "tcp" and port.isdigit() and 0 < int(port) < 65536 else None


def kv_events_topic(address: str, model: str) -> str:
    """The llm-d topic a model server publishes its KV events under."""
    return f"kv@{address}@{model}"
