"""The metrics math: from per-request traces to the numbers in the report.

A *trace* (`RequestTrace`) is what the load generator saw for one request, in seconds on one clock: when it
was sent, when each streamed chunk carrying tokens arrived, when the response ended, and the usage the engine
reported. Definitions (those of vLLM's and inference-perf's benchmarks):

- TTFT = first token chunk - send;  e2e = end - send;
- ITL (inter-token latency) = the gaps between successive token chunks, pooled over all requests;
- TPOT (time per output token) = (end - first token) / (completion tokens - 1), per request with ≥ 2 tokens;
- output tokens/s = all completion tokens / (last end - first send);
- goodput = requests that succeeded within the SLO (TTFT ≤ 1 s and TPOT ≤ 50 ms by default) per second of
  the arrival window (the time over which they were sent): at a load the system sustains, goodput equals the
  offered load times the fraction that met the SLO;
- prefix hit rate = Σ cached prompt tokens / Σ prompt tokens (usage `prompt_tokens_details.cached_tokens`);
- load imbalance = max / mean of the work each endpoint did (e.g. completion tokens), 1.0 = perfectly even.

Times may be measured on a scaled clock (a simulated fleet running `time_scale` times slower than real time);
`summarize(..., time_scale=k)` reports model time by dividing durations by k and multiplying rates by k.
Percentiles interpolate linearly between order statistics (numpy's default).
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np

PERCENTILES: Final = (50, 90, 99)


@dataclasses.dataclass(slots=True, kw_only=True)
class Slo:
    """A request is *good* when it succeeded, its TTFT ≤ `ttft_s` and its TPOT ≤ `tpot_s`."""

    ttft_s: float = 1.0
    tpot_s: float = 0.050


@dataclasses.dataclass(slots=True, kw_only=True)
class RequestTrace:
    """One request as the client saw it; `token_times` are the arrival times of chunks carrying tokens."""

    sent: float
    token_times: list[float] = dataclasses.field(default_factory=list)
    end: float | None = None
    status: int = 0
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200 and self.end is not None

    @property
    def ttft(self) -> float | None:
        return self.token_times[0] - self.sent if self.token_times else None

    @property
    def e2e(self) -> float | None:
        return self.end - self.sent if self.end is not None else None

    @property
    def tpot(self) -> float | None:
        tokens = self.completion_tokens if self.completion_tokens is not None else len(self.token_times)
        if self.end is None or not self.token_times or tokens < 2:
            return None
        return (self.end - self.token_times[0]) / (tokens - 1)

    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:], strict=False)]

    def good(self, slo: Slo) -> bool:
        ttft, tpot = self.ttft, self.tpot
        return self.ok and ttft is not None and ttft <= slo.ttft_s and (tpot is None or tpot <= slo.tpot_s)


def percentiles(values: Sequence[float], points: Sequence[float] = PERCENTILES) -> dict[str, float | None]:
    """{'p50': ..., 'p90': ...}; None for every point when there are no values."""
    if len(values) == 0:
        return {f"p{p:g}": None for p in points}
    result = np.percentile(np.asarray(values, dtype=float), points)
    return {f"p{p:g}": float(v) for p, v in zip(points, result, strict=True)}


def imbalance(work: Mapping[str, float]) -> float | None:
    """max / mean of per-endpoint work; None when there is no work at all."""
    values = list(work.values())
    if not values or sum(values) <= 0:
        return None
    return max(values) / (sum(values) / len(values))


def summarize(
    traces: Sequence[RequestTrace],
    *,
    slo: Slo | None = None,
    time_scale: float = 1.0,
    endpoint_work: Mapping[str, float] | None = None,
    window_s: float | None = None,
) -> dict[str, Any]:
    """The report row of one run: latency percentiles, throughput, goodput, hit rate, imbalance.

    `time_scale` converts the measured (scaled) clock to model time; `endpoint_work` is per-endpoint work
    observed on the engines' side (any unit), for the imbalance figure; `window_s` is the arrival window in
    model time (default: first to last send).
    """
    slo = slo or Slo()
    k = time_scale
    ok = [t for t in traces if t.ok]
    ttfts = [t.ttft / k for t in ok if t.ttft is not None]
    e2es = [t.e2e / k for t in ok if t.e2e is not None]
    tpots = [t.tpot / k for t in ok if t.tpot is not None]
    itls = [gap / k for t in ok for gap in t.itls()]
    completion = sum(t.completion_tokens or len(t.token_times) for t in ok)
    prompt = sum(t.prompt_tokens or 0 for t in ok)
    cached = sum(t.cached_tokens or 0 for t in ok if t.prompt_tokens)
    ends = [t.end for t in traces if t.end is not None]
    span = (max(ends) - min(t.sent for t in traces)) / k if traces and ends else 0.0
    model_slo = Slo(ttft_s=slo.ttft_s * k, tpot_s=slo.tpot_s * k)  # compare on the measured clock
    good = sum(1 for t in ok if t.good(model_slo))
    if window_s is None:
        window_s = (max(t.sent for t in traces) - min(t.sent for t in traces)) / k if len(traces) > 1 else 0.0
    return {
        "requests": len(traces),
        "succeeded": len(ok),
        "failed": len(traces) - len(ok),
        # what the failures were (up to three distinct kinds), so a results file says why without its logs
        "error_samples": sorted({(t.error or f"HTTP {t.status}")[:120] for t in traces if not t.ok})[:3],
        "duration_s": span,
        "ttft_s": percentiles(ttfts),
        "itl_s": percentiles(itls),
        "tpot_s": percentiles(tpots),
        "e2e_s": percentiles(e2es),
        "ttft_mean_s": float(np.mean(ttfts)) if ttfts else None,
        "itl_mean_s": float(np.mean(itls)) if itls else None,
        "output_tokens": completion,
        "output_tokens_per_s": completion / span if span > 0 else 0.0,
        "requests_per_s": len(ok) / span if span > 0 else 0.0,
        "good_requests": good,
        "goodput_rps": good / window_s if window_s > 0 else 0.0,
        "window_s": window_s,
        "good_fraction": good / len(traces) if traces else 0.0,
        "slo": {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s},
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "prefix_hit_rate": cached / prompt if prompt > 0 else None,
        "imbalance": imbalance(endpoint_work) if endpoint_work is not None else None,
    }


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Spread:
    """A quantity over repeated draws (arrival seeds): its median and its range."""

    median: float
    low: float
    high: float
    n: int

    def overlaps(self, other: "Spread") -> bool:
        """Whether the two ranges share any value: if they do, neither side is a clear win."""
        return self.low <= other.high and other.low <= self.high


def spread(values: Sequence[float]) -> Spread:
    """Median and min-max of `values` (at least one)."""
    if len(values) == 0:
        raise ValueError("no values")
    array = np.asarray(values, dtype=float)
    return Spread(
        median=float(np.median(array)), low=float(array.min()), high=float(array.max()), n=len(array)
    )
