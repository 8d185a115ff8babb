"""How long one engine step takes on a GPU, from our own measurements.

The calibration files (`frontier_sim/calibration/*.json`, measured by `shared/calibration/gpu_profile.py` on a
Llama-3.1-8B-shaped decoder in bf16 on one GPU) fit two formulas:

    prefill chunk of N new tokens over C cached:  t = p0 + p1*N + p2*N*(C + N/2)
    decode step of B sequences, context C, k query tokens each:  t = d0 + d1*B*k + d2*B*C

`StepModel` scales the fit to the served model and deployment:

- *parameter count* `s = params / 8.03e9`: the per-token GEMM terms p1, d1 grow with s; the weight-read
  share of d0 (estimated from the measured bf16 weight GEMMs at M=1) grows with weight bytes; launch overheads
  (the rest of d0, and p0) grow with the layer count. Attention (p2) scales with layers x query width, KV
  reads (d2) with KV bytes per token (layers x KV heads x head dim x KV dtype bytes). Shapes come from the
  nearest entry of a small Llama-family table, so any parameter count gets a plausible shape.
- *tensor parallelism* `tp`: weight and attention terms divide by tp; every step adds two all-reduces per
  layer (a latency plus the bytes of the activations over NVLink).
- *GPU*: the H100 or H200 calibration file.
- *quantization*: every value the ModelTier CRD accepts is priced (`QUANTIZATIONS`, each figure's source
  beside it): fp8 halves weight bytes and runs GEMMs at the measured bf16/fp8 speed ratio (decode-sized M
  for d-terms, prefill-sized M for p-terms); int4 weight-only (awq/gptq, Marlin kernels; mxfp4 on Hopper)
  quarter the weight bytes, speed memory-bound decode GEMMs 2.5x (an assumption, not measured here) and
  leave compute-bound prefill GEMMs at 0.95x bf16; gguf and bitsandbytes are slower 4-bit kernels
  (assumptions). `--kv-cache-dtype fp8` halves KV bytes (more blocks, d2 / 2).

Mixed steps (vLLM V1 runs chunked prefill and decodes in one forward pass): the decode fit prices the decodes,
and each prefill chunk adds only its marginal cost p1*N + p2*N*(C+N/2), because the pass reads the weights
and launches its kernels once. A step with no decodes is priced by the prefill fit alone, one with no prefill
by the decode fit alone, so pure steps reproduce the calibration exactly.

*Data parallelism* `--data-parallel-size N` (N engine ranks of `tp` GPUs each behind one server): one
engine stands for the N ranks, with N times the KV blocks, sequences and token budget; a step's decode work
(the d1 and d2 terms) is spread evenly over the ranks, and its prefill chunks too, except that one chunk is
computed by one rank, so a step takes at least its largest chunk (a lone prompt is no faster than on one
rank). Two assumptions: vLLM's ranks are balanced (its load balancer counts requests, not tokens), and
their prefix caches are pooled as one (a prompt cached on one rank is a miss on the others in vLLM, whose
balancer does not route by prefix): hit rates are optimistic.

Speculative decoding verifies k = 1 + num_speculative_tokens query tokens per sequence at the measured
multi-token cost (the d1*B*k term) plus a proposer cost per drafted token: 0 for ngram, a fraction of a decode
step's fixed cost for EAGLE/MTP heads (vLLM 0.11 runs no separate draft model).

Caveat from the calibration README: short-prompt prefill was measured eagerly, so p0 is an upper bound.
"""

import dataclasses
import functools
import json
import math
import re
from importlib import resources
from typing import Final

CALIBRATED_PARAMS: Final = 8.03e9
GIB: Final = 1024**3
# Usable device memory as torch reports it (H100 80GB HBM3, H200 141GB).
GPU_MEMORY_BYTES: Final = {"h100": int(79.1 * GIB), "h200": int(139.8 * GIB)}
GPU_FILES: Final = {"h100": "h100_llama8b.json", "h200": "h200_llama8b.json"}

# Every `--quantization` value the ModelTier CRD accepts (`frontier_api.modeltier.Quantization`), priced as
# (weight bytes per parameter, GEMM kind). A kind's speed against bf16 weight GEMMs, at decode-sized and at
# prefill-sized M, comes from `GEMM_SPEEDUPS`; "fp8" is measured (the calibration file's bf16/fp8 GEMM times).
# Where each figure comes from (M: measured here; P: a published figure; A: an assumption):
#   none          bf16 weights, 2 bytes                                                   M (the calibration)
#   fp8           1 byte, FP8 GEMMs at the measured speed                                 M
#   fbgemm_fp8    1 byte, per-channel FP8 GEMMs: priced as fp8                  A (same tensor cores)
#   modelopt      ModelOpt's FP8 checkpoints (its default format): priced as fp8          A
#   compressed-tensors  its most common scheme, W8A8 FP8: priced as fp8                   A (the format also
#                 carries INT8 and W4A16 schemes, which this one price does not tell apart)
#   awq, gptq, awq_marlin, gptq_marlin  4-bit weights + scales (0.53 bytes: 4 bits and one fp16 scale per
#                 128 weights), Marlin W4A16 kernels                                      bytes: P (the
#                 formats); speed: A (2.5x at decode, memory-bound; 0.95x at prefill, dequantising costs)
#   mxfp4         4-bit microscaled FP4 (4.25 bits: one 8-bit scale per 32 weights); Hopper has no FP4
#                 tensor cores, so vLLM runs it weight-only (Marlin): priced as int4       bytes: P (the OCP
#                 MX spec); speed: A
#   gguf          GGUF files, Q4_K_M typical (4.85 bits per weight, 0.61 bytes); vLLM's GGUF kernels are
#                 slower than Marlin                              bytes: P (llama.cpp's quant table);
#                 speed: A (1.8x at decode, 0.7x at prefill)
#   bitsandbytes  NF4 4-bit weights (0.56 bytes with double-quantised scales), dequantised to bf16 on every
#                 GEMM                                                                    bytes: P (QLoRA
#                 paper); speed: A (1.0x at decode: the bandwidth saved is spent dequantising; 0.5x at
#                 prefill)
#   experts_int8  int8 weights of MoE experts only; the simulated Llama shape is dense, so nothing is
#                 quantised and it is priced as bf16                                      A (dense model)
QUANTIZATIONS: Final = {
    "none": (2.0, "bf16"),
    "fp8": (1.0, "fp8"),
    "fbgemm_fp8": (1.0, "fp8"),
    "modelopt": (1.0, "fp8"),
    "compressed-tensors": (1.0, "fp8"),
    "awq": (0.53, "int4"),
    "awq_marlin": (0.53, "int4"),
    "gptq": (0.53, "int4"),
    "gptq_marlin": (0.53, "int4"),
    "mxfp4": (0.53, "int4"),
    "gguf": (0.61, "gguf"),
    "bitsandbytes": (0.56, "nf4"),
    "experts_int8": (2.0, "bf16"),
}
# (decode-sized M, prefill-sized M) speed of a GEMM kind against bf16; None: measured ("fp8"; calibration).
GEMM_SPEEDUPS: Final[dict[str, tuple[float, float] | None]] = {
    "bf16": (1.0, 1.0),
    "fp8": None,
    "int4": (2.5, 0.95),
    "gguf": (1.8, 0.7),
    "nf4": (1.0, 0.5),
}
KV_DTYPE_BYTES: Final = {
    "auto": 2.0,
    "bfloat16": 2.0,
    "float16": 2.0,
    "fp8": 1.0,
    "fp8_e4m3": 1.0,
    "fp8_e5m2": 1.0,
}

# Proposer cost per drafted token, as a fraction of the decode step's fixed cost d0.
SPECULATIVE_DRAFT_COST: Final = {"ngram": 0.0, "eagle": 0.1, "eagle3": 0.1, "mtp": 0.12}

# Two all-reduces per layer under tensor parallelism: a fixed latency each, plus activation bytes over NVLink.
ALLREDUCE_LATENCY_S: Final = 12e-6
NVLINK_ALLREDUCE_BYTES_PER_S: Final = 150e9


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ModelShape:
    """The few dimensions of a decoder that step time and KV size depend on."""

    params: float
    layers: int
    hidden: int  # query width (heads x head dim)
    kv_heads: int
    head_dim: int

    def kv_bytes_per_token(self, kv_dtype_bytes: float) -> float:
        """K and V of every layer for one token."""
        return 2 * self.layers * self.kv_heads * self.head_dim * kv_dtype_bytes


# Llama-family shapes (3.2-1B, 3.2-3B, 3.1-8B, 14B-class, 32B-class, 3.1-70B, 3.1-405B).
SHAPES: Final = (
    ModelShape(params=1.24e9, layers=16, hidden=2048, kv_heads=8, head_dim=64),
    ModelShape(params=3.21e9, layers=28, hidden=3072, kv_heads=8, head_dim=128),
    ModelShape(params=8.03e9, layers=32, hidden=4096, kv_heads=8, head_dim=128),
    ModelShape(params=14.8e9, layers=48, hidden=5120, kv_heads=8, head_dim=128),
    ModelShape(params=32.8e9, layers=64, hidden=5120, kv_heads=8, head_dim=128),
    ModelShape(params=70.6e9, layers=80, hidden=8192, kv_heads=8, head_dim=128),
    ModelShape(params=405e9, layers=126, hidden=16384, kv_heads=8, head_dim=128),
)
CALIBRATED_SHAPE: Final = SHAPES[2]

_PARAMS_IN_NAME = re.compile(r"(?<![\dx.])(\d+(?:\.\d+)?)\s*([bBmM])(?![a-zA-Z])")


def params_from_name(model: str) -> float | None:
    """Parameter count spelled in a model name (`Llama-3.1-8B-Instruct` -> 8e9, `Qwen2.5-0.5B` -> 5e8)."""
    found = _PARAMS_IN_NAME.findall(model)
    if not found:
        return None
    value, unit = found[-1]
    return float(value) * (1e9 if unit in "bB" else 1e6)


def shape_for(params: float) -> ModelShape:
    """The table shape nearest in log-parameters, carrying the exact parameter count."""
    nearest = min(SHAPES, key=lambda s: abs(math.log(s.params / params)))
    return dataclasses.replace(nearest, params=params)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Calibration:
    """One calibration file: the fitted coefficients and the weight-GEMM speed data."""

    gpu: str
    device: str
    p0: float
    p1: float
    p2: float
    d0: float
    d1: float
    d2: float
    # bf16/fp8 time ratio of the weight GEMMs at decode-sized and prefill-sized M.
    fp8_decode_speedup: float
    fp8_prefill_speedup: float
    # Share of d0 that is reading weights (measured bf16 weight GEMMs at M=1 over d0).
    d0_weight_share: float


@functools.cache
def load(gpu: str = "h100") -> Calibration:
    """Load the calibration for `gpu` ("h100" or "h200") from package data."""
    if gpu not in GPU_FILES:
        raise ValueError(f"--sim-gpu={gpu!r} is not calibrated; allowed: {', '.join(sorted(GPU_FILES))}")
    text = resources.files("frontier_sim.calibration").joinpath(GPU_FILES[gpu]).read_text()
    data = json.loads(text)
    fit = data["fit"]

    def speedup(rows: list[dict[str, dict[str, float]]]) -> float:
        bf16 = sum(row[p]["bf16_s"] for row in rows for p in ("qkv", "gate_up", "down"))
        fp8 = sum(row[p]["fp8_s"] for row in rows for p in ("qkv", "gate_up", "down"))
        return bf16 / fp8

    gemm = data["gemm_fp8"]
    d0 = fit["decode"]["d0"]
    m1 = next(row for row in gemm if row["m"] == 1)
    # Per layer: qkv, gate_up, down measured; o_proj (hidden x hidden) costs about qkv x hidden/(hidden+2*kv).
    per_layer = sum(m1[p]["bf16_s"] for p in ("qkv", "gate_up", "down")) + m1["qkv"]["bf16_s"] * 4096 / 6144
    weight_share = min(0.9, per_layer * CALIBRATED_SHAPE.layers / d0)
    return Calibration(
        gpu=gpu,
        device=data["device"],
        p0=fit["prefill"]["p0"],
        p1=fit["prefill"]["p1_per_token"],
        p2=fit["prefill"]["p2_per_token_context"],
        d0=d0,
        d1=fit["decode"]["d1_per_query_token"],
        d2=fit["decode"]["d2_per_context_token"],
        fp8_decode_speedup=speedup([row for row in gemm if row["m"] <= 256]),
        fp8_prefill_speedup=speedup([row for row in gemm if row["m"] >= 1024]),
        d0_weight_share=weight_share,
    )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PrefillChunk:
    """`new` prompt tokens computed over `cached` tokens already in the KV cache."""

    new: int
    cached: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StepModel:
    """Scaled step-time coefficients for one deployment; `step_time` prices a batch."""

    p0: float
    p1: float
    p2: float
    d0: float
    d1: float
    d2: float
    comm_fixed: float  # per step, tensor-parallel all-reduce latency
    comm_per_token: float  # per token in the step, all-reduce bytes
    draft_per_token: float  # per drafted token per step (speculative proposer)
    data_parallel: int  # ranks sharing one step's sequences and tokens (module doc)
    shape: ModelShape
    weight_bytes_per_gpu: float
    kv_bytes_per_token_per_gpu: float

    def _chunks_time(self, chunks: list[PrefillChunk]) -> float:
        """The marginal time of prefill chunks: spread over the data-parallel ranks, but one chunk is computed
        by one rank (the slowest rank sets the step)."""
        costs = [
            self.p1 * c.new + self.p2 * c.new * (c.cached + c.new / 2) + self.comm_per_token * c.new
            for c in chunks
        ]
        total = sum(costs)
        return max(max(costs), total / self.data_parallel) if self.data_parallel > 1 else total

    def prefill_time(self, chunks: list[PrefillChunk]) -> float:
        """A step with prefill chunks only (the prefill fit)."""
        return self.p0 + self.comm_fixed + self._chunks_time(chunks)

    def decode_time(self, *, batch: int, query_tokens: int, context_tokens: int) -> float:
        """A decode step of `batch` sequences, `query_tokens` each, `context_tokens` summed over sequences
        (spread evenly over the data-parallel ranks)."""
        tokens = batch * query_tokens
        draft = self.draft_per_token * (query_tokens - 1)
        shared = self.d1 * tokens + self.d2 * context_tokens + self.comm_per_token * tokens
        return self.d0 + shared / self.data_parallel + draft + self.comm_fixed

    def step_time(
        self, *, chunks: list[PrefillChunk], batch: int, query_tokens: int, context_tokens: int
    ) -> float:
        """Any step: decodes priced by the decode fit, prefill chunks at their marginal cost (module doc)."""
        if batch == 0:
            return self.prefill_time(chunks) if chunks else 0.0
        t = self.decode_time(batch=batch, query_tokens=query_tokens, context_tokens=context_tokens)
        return t + self._chunks_time(chunks) if chunks else t


def step_model(
    *,
    calibration: Calibration,
    params: float = CALIBRATED_PARAMS,
    tensor_parallel: int = 1,
    data_parallel: int = 1,
    quantization: str | None = None,
    kv_cache_dtype: str = "auto",
    speculative_method: str | None = None,
) -> StepModel:
    """Scale `calibration` to a model of `params` parameters on `tensor_parallel` GPUs (see module doc)."""
    quant = (quantization or "none").lower()
    if quant not in QUANTIZATIONS:
        raise ValueError(
            f"--quantization={quantization!r} is not simulated; allowed: {', '.join(QUANTIZATIONS)}"
        )
    if kv_cache_dtype not in KV_DTYPE_BYTES:
        raise ValueError(f"--kv-cache-dtype={kv_cache_dtype!r}; allowed: {', '.join(KV_DTYPE_BYTES)}")
    if tensor_parallel < 1:
        raise ValueError(f"--tensor-parallel-size={tensor_parallel}; must be >= 1")
    if data_parallel < 1:
        raise ValueError(f"--data-parallel-size={data_parallel}; must be >= 1")
    weight_bytes, gemm = QUANTIZATIONS[quant]
    speeds = GEMM_SPEEDUPS[gemm]
    if speeds is None:
        decode_speed, prefill_speed = calibration.fp8_decode_speedup, calibration.fp8_prefill_speedup
    else:
        decode_speed, prefill_speed = speeds
    shape = shape_for(params)
    base = CALIBRATED_SHAPE
    tp = tensor_parallel
    scale = params / CALIBRATED_PARAMS
    layers = shape.layers / base.layers
    attention = shape.layers * shape.hidden / (base.layers * base.hidden)
    kv_dtype = KV_DTYPE_BYTES[kv_cache_dtype]
    kv_ratio = shape.kv_bytes_per_token(kv_dtype) / base.kv_bytes_per_token(2.0)
    weight_ratio = scale * (weight_bytes / 2.0)
    share = calibration.d0_weight_share
    d0 = calibration.d0 * ((1 - share) * layers + share * weight_ratio / tp)
    comm_fixed = 0.0 if tp == 1 else 2 * shape.layers * ALLREDUCE_LATENCY_S
    comm_per_token = (
        0.0
        if tp == 1
        else 2 * shape.layers * shape.hidden * 2 * 2 * (tp - 1) / tp / NVLINK_ALLREDUCE_BYTES_PER_S
    )
    draft = 0.0
    if speculative_method is not None:
        if speculative_method not in SPECULATIVE_DRAFT_COST:
            raise ValueError(
                f"speculative method {speculative_method!r}; allowed: {', '.join(SPECULATIVE_DRAFT_COST)}"
            )
        draft = SPECULATIVE_DRAFT_COST[speculative_method] * d0
    return StepModel(
        p0=calibration.p0 * layers,
        p1=calibration.p1 * scale / tp / prefill_speed,
        p2=calibration.p2 * attention / tp,
        d0=d0,
        d1=calibration.d1 * scale / tp / decode_speed,
        d2=calibration.d2 * kv_ratio / tp,
        comm_fixed=comm_fixed,
        comm_per_token=comm_per_token,
        draft_per_token=draft,
        data_parallel=data_parallel,
        shape=shape,
        weight_bytes_per_gpu=params * weight_bytes / tp,
        kv_bytes_per_token_per_gpu=shape.kv_bytes_per_token(kv_dtype) / min(tp, shape.kv_heads),
    )


# Activation peak, CUDA graphs and allocator slack that vLLM's memory profiling sets aside per GPU.
RESERVED_BYTES: Final = 3 * GIB


def num_gpu_blocks(*, model: StepModel, gpu: str, gpu_memory_utilization: float, block_size: int) -> int:
    """KV blocks that fit: (GPU memory x utilization - weights - reserve) / (block_size x KV bytes/token)."""
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"--gpu-memory-utilization={gpu_memory_utilization}; must be in (0, 1]")
    free = GPU_MEMORY_BYTES[gpu] * gpu_memory_utilization - model.weight_bytes_per_gpu - RESERVED_BYTES
    blocks = int(free // (block_size * model.kv_bytes_per_token_per_gpu))
    if blocks <= 0:
        raise ValueError(
            f"the model's weights ({model.weight_bytes_per_gpu / GIB:.1f} GiB per GPU) leave no room for a "
            f"KV cache at --gpu-memory-utilization={gpu_memory_utilization} on {gpu}; raise the utilization, "
            "the tensor-parallel size, or quantize"
        )
    return blocks
