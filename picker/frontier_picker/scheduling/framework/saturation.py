"""Saturation: when an endpoint should get no more work, and when the whole pool is full.

An endpoint is *saturated* when its engine reports a queue of at least `queue_depth` waiting requests or a KV
cache at least `kv_utilization` full, or when its metrics are older than `staleness_s` (an endpoint that stops
answering scrapes is never silently trusted). These are the GIE saturation detector's defaults (5, 0.8,
200 ms) and its config fields (`saturationDetector: {queueDepthThreshold, kvCacheUtilThreshold,
metricsStalenessThreshold}`). The saturation filter routes around saturated endpoints; admission sheds
low-priority requests only when every candidate is saturated.
"""

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

from frontier_picker import endpoints
from frontier_picker.scheduling.framework.errors import ConfigError

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|us|µs|m)?\s*$")
_UNIT_SECONDS = {"ms": 1e-3, "s": 1.0, "us": 1e-6, "µs": 1e-6, "m": 60.0, None: 1.0}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Thresholds:
    """When one endpoint counts as saturated."""

    queue_depth: int = 5
    kv_utilization: float = 0.8
    staleness_s: float = 0.2

    def is_stale(self, state: endpoints.EndpointState, now: float) -> bool:
        return now - state.metrics.updated_at >= self.staleness_s

    def is_saturated(self, state: endpoints.EndpointState, now: float, *, unreported: int = 0) -> bool:
        """`unreported`: requests sent to it since its metrics report, counted as waiting."""
        metrics = state.metrics
        return (
            now - metrics.updated_at >= self.staleness_s
            or metrics.waiting + unreported >= self.queue_depth
            or metrics.kv_usage >= self.kv_utilization
        )

    def all_saturated(self, states: Iterable[endpoints.EndpointState], now: float) -> bool:
        return all(self.is_saturated(state, now) for state in states)


DEFAULT = Thresholds()


def duration_seconds(value: Any, *, field: str) -> float:
    """A GIE duration (`"200ms"`, `"1s"`) or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ConfigError(f"{field}: {value!r} is not a duration; use e.g. '200ms' or '1s'")


def from_config(raw: Mapping[str, Any] | None) -> Thresholds:
    """Thresholds from an EndpointPickerConfig `saturationDetector` section (GIE field names)."""
    if raw is None:
        return Thresholds()
    if not isinstance(raw, Mapping):
        raise ConfigError("saturationDetector must be a mapping")
    known = {"queueDepthThreshold", "kvCacheUtilThreshold", "metricsStalenessThreshold"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"saturationDetector: unknown field {unknown[0]!r}; known: {', '.join(sorted(known))}"
        )
    default = Thresholds()
    queue = raw.get("queueDepthThreshold", default.queue_depth)
    kv = raw.get("kvCacheUtilThreshold", default.kv_utilization)
    if isinstance(queue, bool) or not isinstance(queue, int) or queue < 1:
        raise ConfigError(f"saturationDetector.queueDepthThreshold must be an integer >= 1, got {queue!r}")
    if isinstance(kv, bool) or not isinstance(kv, int | float) or not 0 < kv <= 1:
        raise ConfigError(f"saturationDetector.kvCacheUtilThreshold must be in (0, 1], got {kv!r}")
    staleness = duration_seconds(
        raw.get("metricsStalenessThreshold", default.staleness_s),
        field="saturationDetector.metricsStalenessThreshold",
    )
    return Thresholds(queue_depth=queue, kv_utilization=float(kv), staleness_s=staleness)
