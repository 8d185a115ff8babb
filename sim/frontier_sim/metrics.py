"""The Prometheus page a simulated server exposes, with vLLM's metric names and labels (or SGLang's, for a
server started as `frontier-sim sglang`).

Gauges and counters are read from the engine core at scrape time (never cached), so a scrape always agrees
with the engine's state; latency histograms are observed by the server as requests progress, in model
seconds. The text is rendered by hand: it is small, and the picker scrapes every endpoint at 20 Hz.
"""

import bisect
import dataclasses
from collections.abc import Sequence

from frontier_sim import engine as engine_

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)  # fmt: skip
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)  # fmt: skip


@dataclasses.dataclass(slots=True)
class Histogram:
    """Cumulative-at-render histogram of model-time seconds."""

    bounds: Sequence[float]
    counts: list[int] = dataclasses.field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def render(self, name: str, labels: str, out: list[str]) -> None:
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append(f'{name}_bucket{{{labels},le="{bound}"}} {running}')
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.count}')
        out.append(f"{name}_sum{{{labels}}} {self.total!r}")
        out.append(f"{name}_count{{{labels}}} {self.count}")


@dataclasses.dataclass(slots=True, kw_only=True)
class ServerMetrics:
    """What the server observes itself (latencies, request outcomes); the engine holds the rest."""

    ttft: Histogram = dataclasses.field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    itl: Histogram = dataclasses.field(default_factory=lambda: Histogram(ITL_BUCKETS))
    e2e: Histogram = dataclasses.field(default_factory=lambda: Histogram(E2E_BUCKETS))
    success: dict[str, int] = dataclasses.field(default_factory=dict)  # by finished_reason


def _help(out: list[str], name: str, kind: str, text: str) -> None:
    out.append(f"# HELP {name} {text}")
    out.append(f"# TYPE {name} {kind}")


def _samples(out: list[str], kind: str, labels: str, rows: tuple[tuple[str, str, float], ...]) -> None:
    """One family per (name, help, value) row, each a single sample under `labels`."""
    for name, text, value in rows:
        _help(out, name, kind, text)
        out.append(f"{name}{{{labels}}} {value}")


def _histograms(out: list[str], labels: str, rows: tuple[tuple[str, str, Histogram], ...]) -> None:
    for name, text, hist in rows:
        _help(out, name, "histogram", text)
        hist.render(name, labels, out)


def render(
    *,
    core: engine_.Engine,
    server: ServerMetrics,
    model_name: str,
    gpu_memory_utilization: float,
    lora_timestamp: float,
) -> str:
    """The /metrics page (Prometheus text format 0.0.4)."""
    labels = f'engine="0",model_name="{model_name}"'
    cfg = core.config
    stats = core.stats
    out: list[str] = []
    gauges = (
        ("vllm:num_requests_running", "Number of requests in model execution batches.", core.num_running),
        ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", core.num_waiting),
        ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", core.kv_usage),
    )
    _samples(out, "gauge", labels, gauges)
    _help(out, "vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig")
    out.append(
        f'vllm:cache_config_info{{block_size="{cfg.block_size}",cache_dtype="auto",'
        f'enable_prefix_caching="{cfg.enable_prefix_caching}",engine="0",'
        f'gpu_memory_utilization="{gpu_memory_utilization}",num_gpu_blocks="{cfg.num_gpu_blocks}"}} 1.0'
    )
    if cfg.enable_lora:
        _help(out, "vllm:lora_requests_info", "gauge", "Running stats on lora requests.")
        running = ",".join(sorted(core.running_loras()))
        waiting = ",".join(sorted(core.waiting_loras()))
        out.append(
            f'vllm:lora_requests_info{{max_lora="{cfg.max_loras}",running_lora_adapters="{running}",'
            f'waiting_lora_adapters="{waiting}"}} {lora_timestamp!r}'
        )
    counters = (
        (
            "vllm:prefix_cache_queries_total",
            "Prefix cache queries, in queried tokens.",
            stats.prefix_cache_queries,
        ),
        ("vllm:prefix_cache_hits_total", "Prefix cache hits, in cached tokens.", stats.prefix_cache_hits),
        ("vllm:prompt_tokens_total", "Number of prefill tokens processed.", stats.prompt_tokens),
        ("vllm:generation_tokens_total", "Number of generation tokens processed.", stats.generation_tokens),
        (
            "vllm:num_preemptions_total",
            "Cumulative number of preemptions from the engine.",
            stats.preemptions,
        ),
    )
    _samples(out, "counter", labels, counters)
    _help(out, "vllm:request_success_total", "counter", "Count of successfully processed requests.")
    for reason in ("stop", "length", "abort"):
        out.append(
            f'vllm:request_success_total{{{labels},finished_reason="{reason}"}} '
            f"{server.success.get(reason, 0)}"
        )
    histograms = (
        ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", server.ttft),
        ("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", server.itl),
        ("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", server.e2e),
    )
    _histograms(out, labels, histograms)
    out.append("")
    return "\n".join(out)


def render_sglang(
    *,
    core: engine_.Engine,
    server: ServerMetrics,
    model_name: str,
    gpu_memory_utilization: float,
    lora_timestamp: float,
) -> str:
    """The /metrics page of an SGLang server: the same engine state under SGLang's names (`sglang:` prefix,
    `model_name` label; the KV cache as pages). Same signature as `render`, so the server picks either."""
    del gpu_memory_utilization, lora_timestamp  # vLLM-only labels and families
    labels = f'model_name="{model_name}"'
    cfg = core.config
    stats = core.stats
    out: list[str] = []
    gauges = (
        ("sglang:num_running_reqs", "The number of running requests.", core.num_running),
        ("sglang:num_queue_reqs", "The number of requests in the waiting queue.", core.num_waiting),
        ("sglang:token_usage", "The token usage.", core.kv_usage),
    )
    _samples(out, "gauge", labels, gauges)
    _help(out, "sglang:cache_config_info", "gauge", "KV cache configuration.")
    out.append(
        f'sglang:cache_config_info{{num_pages="{cfg.num_gpu_blocks}",page_size="{cfg.block_size}"}} 1.0'
    )
    counters = (
        ("sglang:prompt_tokens_total", "Number of prefill tokens processed.", stats.prompt_tokens),
        ("sglang:generation_tokens_total", "Number of generation tokens processed.", stats.generation_tokens),
        ("sglang:cached_tokens_total", "Number of cached prompt tokens.", stats.prefix_cache_hits),
        ("sglang:num_requests_total", "Number of requests processed.", sum(server.success.values())),
    )
    _samples(out, "counter", labels, counters)
    histograms = (
        ("sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.", server.ttft),
        ("sglang:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", server.itl),
        (
            "sglang:e2e_request_latency_seconds",
            "Histogram of End-to-end request latency in seconds",
            server.e2e,
        ),
    )
    _histograms(out, labels, histograms)
    out.append("")
    return "\n".join(out)
