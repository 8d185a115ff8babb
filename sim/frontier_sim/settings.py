"""One simulated server's settings: the `vllm serve` flags it was given plus the simulator's own (`--sim-*`).

`Settings` is what a server, the fleet launcher and the virtual-time cluster build engines from; `flags.py`
turns a command line into one. `build_engine` derives the KV cache size (`timing.num_gpu_blocks`) unless
`--num-gpu-blocks-override` fixes it, as vLLM does.
"""

import dataclasses
import json
from typing import Any

from frontier_sim import engine, timing


@dataclasses.dataclass(slots=True, kw_only=True)
class Settings:
    """Everything that configures one simulated vLLM server."""

    model: str
    served_model_names: list[str] = dataclasses.field(default_factory=list)
    host: str = "0.0.0.0"
    port: int = 8000
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    max_model_len: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float = 0.9
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    enable_prefix_caching: bool = True
    prefix_caching_hash_algo: str = "sha256"
    block_size: int = 16
    num_gpu_blocks_override: int | None = None
    speculative_config: dict[str, Any] | None = None
    enable_lora: bool = False
    max_loras: int = 1
    lora_modules: list[str] = dataclasses.field(default_factory=list)
    kv_transfer_config: dict[str, Any] | None = None
    kv_events_config: dict[str, Any] | None = None
    seed: int = 0
    # --sim-* (not vLLM's): hardware, clock and behaviour the simulator cannot infer.
    gpu: str = "h100"
    time_scale: float = 1.0
    params: float | None = None  # parameter count; from the model name when None, else 8B
    acceptance_rate: float = 0.7
    kv_link_bytes_per_s: float = 25e9
    lora_load_s: float = 0.02
    default_max_tokens: int = 256
    engine_id: str = ""
    # Whose command line it was, and so whose metric names /metrics uses: "vllm" or "sglang".
    engine_type: str = "vllm"

    @property
    def served_model_name(self) -> str:
        return self.served_model_names[0] if self.served_model_names else self.model

    @property
    def model_params(self) -> float:
        return self.params or timing.params_from_name(self.model) or timing.CALIBRATED_PARAMS

    @property
    def num_speculative_tokens(self) -> int:
        if not self.speculative_config:
            return 0
        return int(self.speculative_config.get("num_speculative_tokens", 0))

    @property
    def kv_events_enabled(self) -> bool:
        cfg = self.kv_events_config or {}
        return bool(cfg.get("enable_kv_cache_events")) and cfg.get("publisher", "zmq") == "zmq"


def speculative_method(spec: dict[str, Any]) -> str:
    """The method of a `--speculative-config`: the one named, else the one vLLM infers from the draft model's
    name (`eagle-...`, `...eagle3...`), else `draft_model`; ngram when no model is named."""
    if spec.get("method"):
        return str(spec["method"])
    model = str(spec.get("model") or "").lower()
    if not model:
        return "ngram"
    if "eagle-" in model:
        return "eagle"
    return "eagle3" if "eagle3" in model else "draft_model"


def step_model(settings: Settings) -> timing.StepModel:
    spec = settings.speculative_config
    return timing.step_model(
        calibration=timing.load(settings.gpu),
        params=settings.model_params,
        tensor_parallel=settings.tensor_parallel_size,
        data_parallel=settings.data_parallel_size,
        quantization=settings.quantization,
        kv_cache_dtype=settings.kv_cache_dtype,
        speculative_method=speculative_method(spec) if spec else None,
    )


def build_engine(settings: Settings) -> engine.Engine:
    """The engine core these settings describe (KV cache sized from GPU memory unless overridden; with data
    parallelism, one core for all ranks: their blocks, sequences and token budgets summed)."""
    model = step_model(settings)
    ranks = settings.data_parallel_size
    blocks = settings.num_gpu_blocks_override or ranks * timing.num_gpu_blocks(
        model=model,
        gpu=settings.gpu,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        block_size=settings.block_size,
    )
    max_model_len = settings.max_model_len or 131072
    config = engine.EngineConfig(
        num_gpu_blocks=blocks,
        block_size=settings.block_size,
        max_num_seqs=settings.max_num_seqs * ranks,
        max_num_batched_tokens=(settings.max_num_batched_tokens or 8192) * ranks,
        max_model_len=max_model_len,
        enable_prefix_caching=settings.enable_prefix_caching,
        num_speculative_tokens=settings.num_speculative_tokens,
        acceptance_rate=settings.acceptance_rate,
        enable_lora=settings.enable_lora,
        max_loras=settings.max_loras,
        lora_load_s=settings.lora_load_s,
        seed=settings.seed,
    )
    core = engine.Engine(config, model)
    for module in settings.lora_modules:
        core.add_lora(module.split("=", 1)[0])
    return core


def parse_json_flag(flag: str, value: str) -> dict[str, Any]:
    """A vLLM JSON-valued flag (`--speculative-config '{...}'`), with an error naming the flag."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise ValueError(f"{flag}: not valid JSON ({e.msg}): {value!r}") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{flag}: expected a JSON object, got {value!r}")
    return parsed
