"""The engine argument list of one role of a ModelTier: `vllm serve`'s, or SGLang's `launch_server`'s.

The model comes first, positionally: vLLM 0.11 refuses `vllm serve --model X`. Every typed engine field maps
to exactly one vLLM flag (`TYPED_FLAGS`); the JSON-valued flags
(`--speculative-config`, `--kv-transfer-config`, `--kv-events-config`) are written compactly with a fixed key
order, so the same spec always renders the same bytes and a changed spec changes the pod template (rollout).
`$(POD_IP)` in the KV-events topic is expanded by the kubelet from the container's POD_IP variable.

Role differences: speculative decoding only helps token generation, so a `prefill` role does not load the
proposer; both disaggregated roles get the KV connector in `kv_both` mode (llm-d's convention with NIXL).

SGLang (`sglang_args`) renders only the fields it has a flag of the same meaning for; `validate.check_sglang`
refuses the others (`SGLANG_REFUSED`) before anything is rendered.
"""

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from frontier_api import modeltier, names

POD_IP_REF: Final = "$(POD_IP)"


def _json(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


def speculative_config(spec: modeltier.Speculative) -> dict[str, Any]:
    """The `--speculative-config` object."""
    config: dict[str, Any] = {
        "method": spec.method.value,
        "num_speculative_tokens": spec.num_speculative_tokens,
    }
    if spec.draft_model is not None:
        config["model"] = spec.draft_model
    if spec.prompt_lookup_max is not None:
        config["prompt_lookup_max"] = spec.prompt_lookup_max
    if spec.prompt_lookup_min is not None:
        config["prompt_lookup_min"] = spec.prompt_lookup_min
    return config


def kv_transfer_config(disaggregation: modeltier.Disaggregation) -> dict[str, Any]:
    """The `--kv-transfer-config` object of a disaggregated role."""
    return {"kv_connector": disaggregation.kv_connector.value, "kv_role": "kv_both"}


def kv_events_config(events: modeltier.KvEvents, served_name: str) -> dict[str, Any]:
    """The `--kv-events-config` object; the topic follows llm-d's `kv@<pod-ip>@<model>`."""
    config: dict[str, Any] = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": events.endpoint,
        "topic": names.kv_events_topic(POD_IP_REF, served_name),
    }
    if events.replay_endpoint:
        config["replay_endpoint"] = events.replay_endpoint
    return config


def _parallelism(spec: modeltier.ModelTierSpec, role: str) -> modeltier.Parallelism:
    roles = spec.roles()
    if role not in roles:
        raise KeyError(f"role {role!r} is not part of this tier (roles: {', '.join(roles)})")
    return roles[role].parallelism


def vllm_args(spec: modeltier.ModelTierSpec, *, role: str, port: int) -> list[str]:
    """Arguments after `vllm serve` for `role` (prefill, decode or both) listening on `port`: the model, then
    flags."""
    parallel = _parallelism(spec, role)
    engine = spec.engine
    args = [
        spec.model.source,
        "--served-model-name",
        spec.model.served_name,
        "--port",
        str(port),
        "--tensor-parallel-size",
        str(parallel.tensor),
    ]
    if parallel.pipeline > 1:
        args += ["--pipeline-parallel-size", str(parallel.pipeline)]
    if parallel.data > 1:
        args += ["--data-parallel-size", str(parallel.data)]
    for flag, value in (
        ("--max-model-len", engine.max_model_len),
        ("--max-num-seqs", engine.max_num_seqs),
        ("--max-num-batched-tokens", engine.max_num_batched_tokens),
        ("--gpu-memory-utilization", engine.gpu_memory_utilization),
        ("--dtype", engine.dtype),
        ("--kv-cache-dtype", engine.kv_cache_dtype),
        ("--quantization", engine.quantization),
    ):
        if value is not None:
            args += [flag, str(value)]
    if engine.prefix_caching.enabled:
        args.append("--enable-prefix-caching")
        if engine.prefix_caching.hash_algo is not None:
            args += ["--prefix-caching-hash-algo", engine.prefix_caching.hash_algo.value]
    else:
        args.append("--no-enable-prefix-caching")
    if engine.speculative is not None and role != names.ROLE_PREFILL:
        args += ["--speculative-config", _json(speculative_config(engine.speculative))]
    if engine.lora is not None:
        args += ["--enable-lora", "--max-loras", str(engine.lora.max_loras)]
        if engine.lora.max_lora_rank is not None:
            args += ["--max-lora-rank", str(engine.lora.max_lora_rank)]
        if engine.lora.adapters:
            args += ["--lora-modules", *(f"{a.name}={a.source}" for a in engine.lora.adapters)]
    if spec.disaggregation.enabled:
        args += ["--kv-transfer-config", _json(kv_transfer_config(spec.disaggregation))]
    if engine.kv_events.enabled:
        args += ["--kv-events-config", _json(kv_events_config(engine.kv_events, spec.model.served_name))]
    args += engine.extra_args
    return args


def sglang_args(spec: modeltier.ModelTierSpec, *, role: str, port: int) -> list[str]:
    """Arguments after `python3 -m sglang.launch_server` for `role` listening on `port` (SGLang 0.5)."""
    parallel = _parallelism(spec, role)
    engine = spec.engine
    args = [
        "--model-path",
        spec.model.source,
        "--served-model-name",
        spec.model.served_name,
        # SGLang listens on 127.0.0.1 unless told otherwise; the pool reaches it on the pod IP.
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        "--tp-size",
        str(parallel.tensor),
    ]
    if parallel.pipeline > 1:
        args += ["--pp-size", str(parallel.pipeline)]
    if parallel.data > 1:
        args += ["--dp-size", str(parallel.data)]
    for flag, value in (
        ("--context-length", engine.max_model_len),
        ("--max-running-requests", engine.max_num_seqs),
        ("--mem-fraction-static", engine.gpu_memory_utilization),
        ("--dtype", engine.dtype),
        ("--kv-cache-dtype", engine.kv_cache_dtype),
        ("--quantization", engine.quantization),
    ):
        if value is not None:
            args += [flag, str(value)]
    # SGLang's prefix cache (the radix cache) is on by default.
    if not engine.prefix_caching.enabled:
        args.append("--disable-radix-cache")
    args += engine.extra_args
    return args


def engine_args(spec: modeltier.ModelTierSpec, *, role: str, port: int) -> list[str]:
    """The engine arguments of `role` for the tier's engine type."""
    if spec.engine.type == modeltier.EngineType.SGLANG:
        return sglang_args(spec, role=role, port=port)
    return vllm_args(spec, role=role, port=port)


# Flags a typed field renders, with that field; repeating one in extraArgs would make the engine's behaviour
# depend on argparse's last-wins order, so validation refuses it.
TYPED_FLAGS: Final = {
    "--served-model-name": "spec.model.servedName",
    "--port": "the pool's targetPort",
    "--tensor-parallel-size": "the roles' parallelism.tensor",
    "--pipeline-parallel-size": "the roles' parallelism.pipeline",
    "--data-parallel-size": "the roles' parallelism.data",
    "--max-model-len": "spec.engine.maxModelLen",
    "--max-num-seqs": "spec.engine.maxNumSeqs",
    "--max-num-batched-tokens": "spec.engine.maxNumBatchedTokens",
    "--gpu-memory-utilization": "spec.engine.gpuMemoryUtilization",
    "--dtype": "spec.engine.dtype",
    "--kv-cache-dtype": "spec.engine.kvCacheDtype",
    "--quantization": "spec.engine.quantization",
    "--enable-prefix-caching": "spec.engine.prefixCaching.enabled",
    "--prefix-caching-hash-algo": "spec.engine.prefixCaching.hashAlgo",
    "--speculative-config": "spec.engine.speculative",
    "--enable-lora": "spec.engine.lora",
    "--max-loras": "spec.engine.lora.maxLoras",
    "--max-lora-rank": "spec.engine.lora.maxLoraRank",
    "--lora-modules": "spec.engine.lora.adapters",
    "--kv-transfer-config": "spec.disaggregation",
    "--kv-events-config": "spec.engine.kvEvents",
}


# SGLang's flags a typed field renders (every spelling SGLang 0.5 accepts), with that field.
SGLANG_TYPED_FLAGS: Final = {
    "--model-path": "spec.model.source",
    "--model": "spec.model.source",
    "--served-model-name": "spec.model.servedName",
    "--host": "the operator (0.0.0.0)",
    "--port": "the pool's targetPort",
    "--tp-size": "the roles' parallelism.tensor",
    "--tensor-parallel-size": "the roles' parallelism.tensor",
    "--tp": "the roles' parallelism.tensor",
    "--pp-size": "the roles' parallelism.pipeline",
    "--pipeline-parallel-size": "the roles' parallelism.pipeline",
    "--dp-size": "the roles' parallelism.data",
    "--data-parallel-size": "the roles' parallelism.data",
    "--dp": "the roles' parallelism.data",
    "--context-length": "spec.engine.maxModelLen",
    "--max-running-requests": "spec.engine.maxNumSeqs",
    "--mem-fraction-static": "spec.engine.gpuMemoryUtilization",
    "--dtype": "spec.engine.dtype",
    "--kv-cache-dtype": "spec.engine.kvCacheDtype",
    "--quantization": "spec.engine.quantization",
    "--disable-radix-cache": "spec.engine.prefixCaching.enabled",
}

# Values of typed fields SGLang 0.5 has no equivalent of: vLLM's bare `fp8` KV cache dtype (SGLang names
# fp8_e4m3 or fp8_e5m2) and the quantization methods missing from SGLang's `--quantization` choices.
SGLANG_KV_CACHE_DTYPES: Final = frozenset({"auto", "fp8_e4m3", "fp8_e5m2"})
SGLANG_QUANTIZATION: Final = frozenset(
    {"fp8", "modelopt", "awq", "awq_marlin", "gptq", "gptq_marlin", "bitsandbytes", "gguf", "mxfp4"}
)


def args_hash(args_by_role: Mapping[str, Sequence[str]]) -> str:
    """A short stable hash of every role's arguments (reported in status.renderedArgsHash)."""
    text = json.dumps(
        {role: list(args) for role, args in sorted(args_by_role.items())}, separators=(",", ":")
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]
