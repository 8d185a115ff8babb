"""Measure mixed steps (a prefill chunk and a decode batch in one forward pass) on one GPU.

The calibration files fit pure prefill steps and pure decode steps (`shared/calibration/gpu_profile.py`, the
same Llama-3.1-8B-shaped decoder with random bf16 weights). vLLM V1 runs chunked prefill and decodes in one
pass: the weight GEMMs see all the step's tokens at once, attention runs per sequence. This script times
such passes, and the pure prefill and pure decode passes they are made of, on the same GPU in the same run,
so the simulator's price of a mixed step (the decode fit plus the chunk's marginal prefill cost) can be
checked against the GPU rather than assumed.

Every pass is captured in a CUDA graph (as vLLM captures decode steps; for chunks of thousands of tokens the
launch overhead that graphs remove is well under 1% of the step). Each point is the median of 10 replays.

Usage (on a GPU machine with PyTorch): python3 mixed_step_profile.py OUT.json
The committed run (H200, torch 2.11, 33 s): `sim/frontier_sim/calibration/h200_llama8b_mixed.json`.
"""

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

torch.backends.cuda.matmul.allow_tf32 = True
DEVICE = "cuda"
DTYPE = torch.bfloat16
H, L, NH, NKV, HD, FF, V = 4096, 32, 32, 8, 128, 14336, 128256
G = NH // NKV

# (prefill chunk tokens N, decode batch B, decode context C); N=0 or B=0 are the pure passes.
DECODES = [(16, 2048), (64, 2048), (128, 1024), (32, 8192)]
CHUNKS = [512, 2048, 8192]


def weights(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, device=DEVICE, dtype=DTYPE) * 0.02


LAYERS = [
    {
        "qkv": weights((NH + 2 * NKV) * HD, H),
        "o": weights(H, NH * HD),
        "gu": weights(2 * FF, H),
        "d": weights(H, FF),
        "n1": torch.ones(H, device=DEVICE, dtype=DTYPE),
        "n2": torch.ones(H, device=DEVICE, dtype=DTYPE),
    }
    for _ in range(L)
]
EMBED = weights(V, H)
LM_HEAD = weights(V, H)


def rms(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5).to(x.dtype) * g


def layer(
    x: torch.Tensor, p: dict[str, torch.Tensor], n: int, cache: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    """One decoder layer over `n` prefill tokens followed by one token for each cached decode sequence."""
    h = rms(x, p["n1"])
    q, k, v = F.linear(h, p["qkv"]).split([NH * HD, NKV * HD, NKV * HD], dim=-1)
    parts = []
    if n:  # the prefill chunk: causal attention over itself
        qp = q[:n].view(1, n, NH, HD).transpose(1, 2)
        kp = k[:n].view(1, n, NKV, HD).transpose(1, 2).repeat_interleave(G, 1)
        vp = v[:n].view(1, n, NKV, HD).transpose(1, 2).repeat_interleave(G, 1)
        a = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True)
        parts.append(a.transpose(1, 2).reshape(n, NH * HD))
    if cache is not None:  # the decodes: one query token each over its cache (new K/V in the last slot)
        kc, vc = cache
        b = kc.shape[0]
        kc[:, :, -1:] = k[n:].view(b, 1, NKV, HD).transpose(1, 2)
        vc[:, :, -1:] = v[n:].view(b, 1, NKV, HD).transpose(1, 2)
        qd = q[n:].view(b, NKV, G, HD)
        a = F.scaled_dot_product_attention(qd, kc, vc)
        parts.append(a.reshape(b, NH * HD))
    x = x + F.linear(torch.cat(parts) if len(parts) > 1 else parts[0], p["o"])
    h = rms(x, p["n2"])
    g, u = F.linear(h, p["gu"]).chunk(2, dim=-1)
    return x + F.linear(F.silu(g) * u, p["d"])


Caches = list[tuple[torch.Tensor, torch.Tensor]]


def forward(ids: torch.Tensor, n: int, caches: Caches | None) -> torch.Tensor:
    x = EMBED[ids]
    for i, p in enumerate(LAYERS):
        x = layer(x, p, n, caches[i] if caches else None)
    # vLLM computes logits only for each sequence's last token: the chunk's last and every decode's.
    rows = torch.cat([x[n - 1 : n], x[n:]]) if n else x
    return F.linear(rms(rows, LAYERS[-1]["n2"]), LM_HEAD)


def graph_time(fn: Callable[[], torch.Tensor], reps: int = 10) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    times.sort()
    return times[len(times) // 2]


def step_seconds(n: int, batch: int, context: int) -> float:
    """A pass over `n` prefill tokens and `batch` decodes of `context` cached tokens each."""
    ids = torch.randint(0, V, (n + batch,), device=DEVICE)
    caches: Caches | None = None
    if batch:
        caches = [
            (weights(batch, NKV, context + 1, HD), weights(batch, NKV, context + 1, HD)) for _ in range(L)
        ]
    return graph_time(lambda: forward(ids, n, caches))


def measure(n: int, batch: int, context: int) -> float:
    """`step_seconds`, then the caches it made are given back before the next point."""
    seconds = step_seconds(n, batch, context)
    torch.cuda.empty_cache()
    return seconds


def main() -> None:
    began = time.time()
    out: dict[str, Any] = {
        "model": "llama-3.1-8b-shaped (random bf16 weights)",
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "points": [],
    }
    with torch.inference_mode():
        prefill = {n: measure(n, 0, 0) for n in CHUNKS}
        for n, seconds in prefill.items():
            out["points"].append({"new_tokens": n, "batch": 0, "context": 0, "seconds": seconds})
            print("prefill", n, round(seconds * 1e3, 2), "ms", flush=True)
        for batch, context in DECODES:
            alone = measure(0, batch, context)
            out["points"].append({"new_tokens": 0, "batch": batch, "context": context, "seconds": alone})
            print("decode", batch, context, round(alone * 1e3, 2), "ms", flush=True)
            for n in CHUNKS:
                mixed = measure(n, batch, context)
                out["points"].append({"new_tokens": n, "batch": batch, "context": context, "seconds": mixed})
                print(
                    "mixed", n, batch, context, round(mixed * 1e3, 2), "ms;",
                    "sum of pure passes", round((alone + prefill[n]) * 1e3, 2), "ms",
                    flush=True,
                )  # fmt: skip
    out["elapsed_s"] = time.time() - began
    Path(sys.argv[1]).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
