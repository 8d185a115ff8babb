"""The picker's own Prometheus metrics, served on the metrics port (9090 by default).

Each picker owns a `CollectorRegistry` (not the process-global one), so several pickers can run in one
process (tests, benchmarks) without colliding. Names follow Prometheus conventions under `frontier_picker_`.
Per-model families carry GIE's label names: `model_name` (what the client asked for) and `target_model_name`
(what the endpoint serves, after any rewrite). Model names come from clients, so label values are bounded:
the first `MAX_MODEL_LABELS` distinct names of routed requests are kept; any later one, and any name only
refused requests carried, is counted as `other`.
"""

import dataclasses
import threading
from typing import Any, Final

import prometheus_client
from prometheus_client import registry as prometheus_registry

MAX_MODEL_LABELS: Final = 256
OTHER_MODEL: Final = "other"
_LATENCY_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_SCHEDULING_BUCKETS: Final = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


@dataclasses.dataclass(slots=True, kw_only=True)
class Metrics:
    """The collectors the protocol layer updates."""

    registry: prometheus_registry.CollectorRegistry
    requests: prometheus_client.Counter
    request_duration: prometheus_client.Histogram
    errors: prometheus_client.Counter
    ready_endpoints: prometheus_client.Gauge
    in_flight: prometheus_client.Gauge
    scheduling_duration: prometheus_client.Histogram
    prompt_tokens: prometheus_client.Counter
    completion_tokens: prometheus_client.Counter
    tier_decisions: prometheus_client.Counter
    classification_duration: prometheus_client.Histogram
    _children: dict[tuple[str, ...], Any] = dataclasses.field(default_factory=dict)
    _models: set[str] = dataclasses.field(default_factory=set)

    def model_label(self, name: str, *, admit: bool = True) -> str:
        """`name` as a label value: itself once admitted (while fewer than MAX_MODEL_LABELS were), else
        `other`. Refused requests pass `admit=False`: a name no request was ever routed for takes no slot."""
        if name in self._models:
            return name
        if not admit or len(self._models) >= MAX_MODEL_LABELS:
            return OTHER_MODEL
        self._models.add(name)
        return name

    def child(self, family: str, *labels: str) -> Any:
        """The labelled child of collector `family` (cached: `labels()` costs microseconds per call)."""
        key = (family, *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = getattr(self, family).labels(*labels)
        return found


def create() -> Metrics:
    """A fresh registry with the picker's collectors."""
    registry = prometheus_registry.CollectorRegistry()
    return Metrics(
        registry=registry,
        requests=prometheus_client.Counter(
            "frontier_picker_requests",
            "Requests the picker handled, by requested and target model and final HTTP status",
            ["model_name", "target_model_name", "code"],
            registry=registry,
        ),
        request_duration=prometheus_client.Histogram(
            "frontier_picker_request_duration_seconds",
            "From the request's headers reaching the picker to the end of its response, by model",
            ["model_name", "target_model_name"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        ),
        errors=prometheus_client.Counter(
            "frontier_picker_errors",
            "Requests the picker refused itself (immediate responses), by HTTP status",
            ["code"],
            registry=registry,
        ),
        ready_endpoints=prometheus_client.Gauge(
            "frontier_picker_ready_endpoints", "Endpoints currently in the pool", registry=registry
        ),
        in_flight=prometheus_client.Gauge(
            "frontier_picker_in_flight_requests",
            "Requests scheduled and not yet completed",
            registry=registry,
        ),
        scheduling_duration=prometheus_client.Histogram(
            "frontier_picker_scheduling_duration_seconds",
            "Time spent in the scheduler per request",
            buckets=_SCHEDULING_BUCKETS,
            registry=registry,
        ),
        prompt_tokens=prometheus_client.Counter(
            "frontier_picker_prompt_tokens",
            "Prompt tokens the model servers reported, by model",
            ["model_name", "target_model_name"],
            registry=registry,
        ),
        completion_tokens=prometheus_client.Counter(
            "frontier_picker_completion_tokens",
            "Completion tokens the model servers reported, by model",
            ["model_name", "target_model_name"],
            registry=registry,
        ),
        tier_decisions=prometheus_client.Counter(
            "frontier_picker_tier_decisions",
            "Requests for a virtual model, by virtual model, tier chosen (its served model), reason and "
            "category",
            ["model_name", "target_model_name", "reason", "category"],
            registry=registry,
        ),
        classification_duration=prometheus_client.Histogram(
            "frontier_picker_classification_duration_seconds",
            "Time the prompt classifier took per classified request",
            buckets=_SCHEDULING_BUCKETS,
            registry=registry,
        ),
    )


def serve(metrics: Metrics, *, address: str, port: int) -> tuple[int, threading.Thread, object]:
    """Serve `metrics` over HTTP on a background thread; returns the bound port, the thread and server."""
    server, thread = prometheus_client.start_http_server(port, addr=address, registry=metrics.registry)
    return int(server.server_port), thread, server
