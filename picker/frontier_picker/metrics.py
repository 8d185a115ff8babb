"""The picker's own Prometheus metrics, served on the metrics port (9090 by default), behind `metrics_auth`
when scrapes must be authenticated.

Each picker owns a `CollectorRegistry` (not the process-global one), so several pickers can run in one
process (tests, benchmarks) without colliding. Names follow Prometheus conventions under `frontier_picker_`.
GIE's own family names (`inference_objective_*`, `inference_pool_*`,
`inference_extension_scheduler_e2e_duration_seconds`, `inference_extension_plugin_duration_seconds`,
`inference_extension_prefix_indexer_*`) are exported too, with GIE's labels and buckets (GIE v1.5.0's
`pkg/epp/metrics`), so GIE dashboards read a Frontier picker unchanged. Per-model families carry GIE's
label names: `model_name` (what the client asked for) and `target_model_name` (what the endpoint serves,
after any rewrite). Model names come from clients, so label values are bounded: a name becomes one only
once an endpoint has answered a request for it with 2xx (a model the pool serves: vLLM answers 404 for any
other), only if it is at most `MAX_LABEL_CHARS` long, and only for the first `MAX_MODEL_LABELS` such names;
every other name is counted as `other`. Fairness IDs (a header) are bounded the same way, by length and
number. Plugin labels come from the loaded config, so they are bounded by it.
"""

import bisect
import dataclasses
import itertools
import socket
import threading
import wsgiref.simple_server
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

import prometheus_client
from prometheus_client import exposition as prometheus_exposition
from prometheus_client import metrics_core as prometheus_metrics_core
from prometheus_client import registry as prometheus_registry

from frontier_picker import endpoints, metrics_auth
from frontier_picker.scheduling import types
from frontier_picker.scheduling.framework import plugin

MAX_MODEL_LABELS: Final = 256
# Longer than any served model name (Hugging Face ids stay under 100 characters).
MAX_LABEL_CHARS: Final = 256
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
    gie: "GieMetrics"
    pool: str = ""  # the inference_pool label value (watch_pool sets it)
    namespace: str = ""  # the pool's namespace, a label of scheduler attempts ("" without Kubernetes)
    _children: dict[tuple[Any, ...], Any] = dataclasses.field(default_factory=dict)
    _models: set[str] = dataclasses.field(default_factory=set)
    _flows: set[str] = dataclasses.field(default_factory=set)

    def model_label(self, name: str, *, admit: bool = False) -> str:
        """`name` as a label value: itself once admitted, else `other`. `admit=True` (an endpoint answered
        a request for it with 2xx) admits it while fewer than MAX_MODEL_LABELS were and it is no longer than
        MAX_LABEL_CHARS."""
        if name in self._models:
            return name
        if not admit or len(self._models) >= MAX_MODEL_LABELS or len(name) > MAX_LABEL_CHARS:
            return OTHER_MODEL
        self._models.add(name)
        return name

    def admitted(self, name: str) -> bool:
        """Whether `name` is a label value already."""
        return name in self._models

    def fairness_label(self, flow: str) -> str:
        """`flow` (a fairness ID, client input) as a label value, bounded like model names."""
        if flow in self._flows:
            return flow
        if len(self._flows) >= MAX_MODEL_LABELS or len(flow) > MAX_LABEL_CHARS:
            return OTHER_MODEL
        self._flows.add(flow)
        return flow

    def child(self, collector: Any, *labels: str) -> Any:
        """The labelled child of `collector` (cached: `labels()` costs microseconds per call)."""
        key = (id(collector), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = collector.labels(*labels)
        return found


# GIE v1.5.0's buckets (pkg/epp/metrics), so its dashboards' quantiles read the same.
_GIE_LATENCY_BUCKETS: Final = (
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 45, 60,
    120, 180, 240, 300, 360, 480, 600, 900, 1200, 1800, 2700, 3600,
)  # fmt: skip
_GIE_FLOW_BUCKETS: Final = (
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
_GIE_TPOT_BUCKETS: Final = (
    0.0005, 0.00205, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.125, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1,
    1.5, 2, 3, 4.5, 6, 12, 18, 24, 30, 36, 48, 60, 90, 120, 180, 270, 360,
)  # fmt: skip
_GIE_TOKEN_BUCKETS: Final = (
    1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536, 131072, 262144, 524288,
    1048576,
)  # fmt: skip
_GIE_SCHEDULER_BUCKETS: Final = (
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1,
)  # fmt: skip
_GIE_REQUEST_SIZE_BUCKETS: Final = (
    64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144, 524288, 1048576,
    2097152, 4194304, 8388608, 16777216, 33554432, 67108864, 134217728, 268435456, 536870912, 1073741824,
)  # fmt: skip
_GIE_RESPONSE_SIZE_BUCKETS: Final = (
    1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536,
)  # fmt: skip
_GIE_HIT_RATIO_BUCKETS: Final = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
_GIE_HIT_BYTES_BUCKETS: Final = (0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
_GIE_MODEL = ["model_name", "target_model_name"]


@dataclasses.dataclass(slots=True, kw_only=True)
class GieMetrics:
    """The families GIE's endpoint picker exports under its own names, for the dashboards that read them:
    `inference_objective_*` per model, `inference_pool_*` per pool, `inference_extension_*`."""

    requests: prometheus_client.Counter
    request_errors: prometheus_client.Counter
    request_duration: prometheus_client.Histogram
    ttft: prometheus_client.Histogram
    tpot: prometheus_client.Histogram
    normalized_tpot: prometheus_client.Histogram
    input_tokens: prometheus_client.Histogram
    output_tokens: prometheus_client.Histogram
    request_sizes: prometheus_client.Histogram
    running_requests: prometheus_client.Gauge
    response_sizes: prometheus_client.Histogram
    cached_tokens: prometheus_client.Histogram
    scheduler_e2e: prometheus_client.Histogram
    scheduler_attempts: prometheus_client.Counter
    prefix_hit_ratio: prometheus_client.Histogram
    prefix_hit_bytes: prometheus_client.Histogram
    flow_control_queue_duration: prometheus_client.Histogram
    flow_control_enqueue_duration: prometheus_client.Histogram
    flow_control_dispatch_cycle: prometheus_client.Histogram


def _gie(registry: prometheus_registry.CollectorRegistry) -> GieMetrics:
    def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> prometheus_client.Histogram:
        return prometheus_client.Histogram(name, doc, _GIE_MODEL, buckets=buckets, registry=registry)

    return GieMetrics(
        requests=prometheus_client.Counter(
            "inference_objective_request",
            "Requests routed, by model, target model and priority (GIE's name)",
            [*_GIE_MODEL, "priority"],
            registry=registry,
        ),
        request_errors=prometheus_client.Counter(
            "inference_objective_request_error",
            "Requests refused or failed, by model, target model and error code (GIE's name)",
            [*_GIE_MODEL, "error_code"],
            registry=registry,
        ),
        request_duration=histogram(
            "inference_objective_request_duration_seconds",
            "Request latency (GIE's name)",
            _GIE_LATENCY_BUCKETS,
        ),
        ttft=histogram(
            "inference_objective_request_ttft_seconds",
            "Time to the first response byte (first SSE event when streamed) (GIE's name)",
            _GIE_LATENCY_BUCKETS,
        ),
        tpot=histogram(
            "inference_objective_request_tpot_seconds",
            "(duration - TTFT) / (output tokens - 1) per request (GIE's name)",
            _GIE_TPOT_BUCKETS,
        ),
        normalized_tpot=histogram(
            "inference_objective_normalized_time_per_output_token_seconds",
            "Request latency divided by its output tokens (GIE's name)",
            _GIE_TPOT_BUCKETS,
        ),
        input_tokens=histogram(
            "inference_objective_input_tokens", "Prompt tokens per request (GIE's name)", _GIE_TOKEN_BUCKETS
        ),
        output_tokens=histogram(
            "inference_objective_output_tokens", "Output tokens per request (GIE's name)", _GIE_TOKEN_BUCKETS
        ),
        request_sizes=histogram(
            "inference_objective_request_sizes", "Request body bytes (GIE's name)", _GIE_REQUEST_SIZE_BUCKETS
        ),
        running_requests=prometheus_client.Gauge(
            "inference_objective_running_requests",
            "Requests decided and not yet completed, by requested model (GIE's name)",
            ["model_name"],
            registry=registry,
        ),
        response_sizes=histogram(
            "inference_objective_response_sizes",
            "Response body bytes, when the proxy sends the response body (GIE's name)",
            _GIE_RESPONSE_SIZE_BUCKETS,
        ),
        cached_tokens=histogram(
            "inference_objective_prompt_cached_tokens",
            "Prompt tokens served from the prefix cache per request (GIE's name)",
            _GIE_TOKEN_BUCKETS,
        ),
        scheduler_e2e=prometheus_client.Histogram(
            "inference_extension_scheduler_e2e_duration_seconds",
            "Scheduling latency per request (GIE's name)",
            buckets=_GIE_SCHEDULER_BUCKETS,
            registry=registry,
        ),
        scheduler_attempts=prometheus_client.Counter(
            "inference_extension_scheduler_attempts",
            "Scheduling attempts, by status (success, failure), target model and the chosen endpoint's pod "
            "name, namespace and port (empty on failure) (GIE's name)",
            ["status", "target_model_name", "pod_name", "namespace", "port"],
            registry=registry,
        ),
        prefix_hit_ratio=prometheus_client.Histogram(
            "inference_extension_prefix_indexer_hit_ratio",
            "Share of the prompt's prefix blocks the chosen endpoint held, per scheduled request "
            "(GIE's name)",
            buckets=_GIE_HIT_RATIO_BUCKETS,
            registry=registry,
        ),
        prefix_hit_bytes=prometheus_client.Histogram(
            "inference_extension_prefix_indexer_hit_bytes",
            "Prompt characters in the prefix blocks the chosen endpoint held, per scheduled request (GIE's "
            "name)",
            buckets=_GIE_HIT_BYTES_BUCKETS,
            registry=registry,
        ),
        flow_control_queue_duration=prometheus_client.Histogram(
            "inference_extension_flow_control_request_queue_duration_seconds",
            "Time requests spent in flow control, by fairness ID, priority and outcome (Dispatched, "
            "RejectedCapacity, RejectedSLO, EvictedTTL, EvictedContextCancelled) (GIE's name)",
            ["fairness_id", "priority", "outcome", "inference_pool", *_GIE_MODEL],
            buckets=_GIE_FLOW_BUCKETS,
            registry=registry,
        ),
        flow_control_enqueue_duration=prometheus_client.Histogram(
            "inference_extension_flow_control_request_enqueue_duration_seconds",
            "Time flow control took to take in a request, by fairness ID, priority and outcome "
            "(NotYetFinalized: queued; Dispatched; or the refusal) (GIE's name)",
            ["fairness_id", "priority", "outcome"],
            buckets=_GIE_SCHEDULER_BUCKETS,
            registry=registry,
        ),
        flow_control_dispatch_cycle=prometheus_client.Histogram(
            "inference_extension_flow_control_dispatch_cycle_duration_seconds",
            "Time of each flow-control pass over the queues (expiries and dispatches) (GIE's name)",
            buckets=_GIE_SCHEDULER_BUCKETS,
            registry=registry,
        ),
    )


class PoolCollector(prometheus_registry.Collector):
    """`inference_pool_*` gauges (GIE's names), read from the endpoint states when scraped: never stale and
    nothing to update per request."""

    def __init__(self, pool: str, states: Callable[[], Sequence[endpoints.EndpointState]]) -> None:
        self.pool = pool
        self.states = states

    def collect(self) -> Iterator[prometheus_metrics_core.Metric]:
        states = self.states()
        count = len(states)

        def gauge(name: str, doc: str, value: float) -> prometheus_metrics_core.GaugeMetricFamily:
            family = prometheus_metrics_core.GaugeMetricFamily(name, doc, labels=["name"])
            family.add_metric([self.pool], value)
            return family

        def mean(values: Iterable[float]) -> float:
            return sum(values) / count if count else 0.0

        yield gauge("inference_pool_ready_pods", "Endpoints in the pool (GIE's name)", count)
        yield gauge(
            "inference_pool_average_kv_cache_utilization",
            "Mean KV cache use over the pool's endpoints (GIE's name)",
            mean(s.metrics.kv_usage for s in states),
        )
        yield gauge(
            "inference_pool_average_queue_size",
            "Mean waiting requests over the pool's endpoints (GIE's name)",
            mean(s.metrics.waiting for s in states),
        )
        per_pod = prometheus_metrics_core.GaugeMetricFamily(
            "inference_pool_per_pod_queue_size",
            "Waiting requests of each endpoint of the pool (GIE's name)",
            labels=["name", "model_server_pod"],
        )
        for state in states:
            per_pod.add_metric([self.pool, state.endpoint.name], state.metrics.waiting)
        yield per_pod
        yield gauge(
            "inference_pool_average_running_requests",
            "Mean running requests over the pool's endpoints (GIE's name)",
            mean(s.metrics.running for s in states),
        )


@dataclasses.dataclass(slots=True)
class _Timings:
    """One plugin at one extension point: its labels and its histogram's per-bucket counts and sum."""

    labels: list[str]
    counts: list[int]
    total: float = 0.0


class PluginDurations(plugin.PluginTimer, prometheus_registry.Collector):
    """The scheduler's plugin timer, exported as `inference_extension_plugin_duration_seconds{
    extension_point, plugin_type, plugin_name}` (GIE's name and buckets). A call costs a bisect and two
    additions (no lock, unlike a prometheus_client histogram's `observe`); buckets are summed when scraped.
    What timing costs `schedule()`: bench/results/plugin_timer_cost.md."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, int], _Timings] = {}

    def record(self, extension_point: str, plugin: plugin.Plugin, seconds: float) -> None:
        key = (extension_point, id(plugin))
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Timings(
                [extension_point, plugin.type_name, plugin.name], [0] * (len(_GIE_SCHEDULER_BUCKETS) + 1)
            )
        series.counts[bisect.bisect_left(_GIE_SCHEDULER_BUCKETS, seconds)] += 1
        series.total += seconds

    def collect(self) -> Iterator[prometheus_metrics_core.Metric]:
        family = prometheus_metrics_core.HistogramMetricFamily(
            "inference_extension_plugin_duration_seconds",
            "Time of each plugin call, by extension point, plugin type and plugin name (GIE's name)",
            labels=["extension_point", "plugin_type", "plugin_name"],
        )
        for series in list(self._series.values()):
            counts = list(series.counts)
            cumulative = list(itertools.accumulate(counts))
            buckets = [
                (str(bound), float(count))
                for bound, count in zip(_GIE_SCHEDULER_BUCKETS, cumulative, strict=False)
            ]
            buckets.append(("+Inf", float(cumulative[-1])))
            family.add_metric(series.labels, buckets, sum_value=series.total)
        yield family


def record_prefix_match(metrics: Metrics, match: types.PrefixMatch) -> None:
    """GIE's prefix-indexer hit metrics for one scheduled request: the matched length always, the ratio when
    the prompt has at least one block."""
    metrics.gie.prefix_hit_bytes.observe(match.matched_blocks * match.block_chars)
    if match.total_blocks:
        metrics.gie.prefix_hit_ratio.observe(match.matched_blocks / match.total_blocks)


class PrefixIndexCollector(prometheus_registry.Collector):
    """`inference_extension_prefix_indexer_size` (GIE's name): entries held over every endpoint, read from
    the index when scraped."""

    def __init__(self, entries: Callable[[], int]) -> None:
        self.entries = entries

    def collect(self) -> Iterator[prometheus_metrics_core.Metric]:
        yield prometheus_metrics_core.GaugeMetricFamily(
            "inference_extension_prefix_indexer_size",
            "Prefix hashes the picker's prefix index holds over all endpoints (GIE's name)",
            value=self.entries(),
        )


def watch_pool(metrics: Metrics, pool: str, states: Callable[[], Sequence[endpoints.EndpointState]]) -> None:
    """Export the `inference_pool_*` gauges of `pool` from `states` (the datastore's)."""
    metrics.pool = pool
    metrics.registry.register(PoolCollector(pool, states))


class EngineSpeedCollector(prometheus_registry.Collector):
    """`frontier_picker_engine_speed_ratio{endpoint,phase}`: how many times slower than the cost model's
    prior fit each endpoint's prefill or decode steps run, as the `frontier` cost learned it from
    completions, and `frontier_picker_engine_speed_samples{endpoint,phase}`, the completions it learned
    from; read from the learner when scraped (`learned` yields endpoint key, phase, ratio, samples)."""

    def __init__(self, learned: Callable[[], Iterable[tuple[str, str, float, int]]]) -> None:
        self.learned = learned

    def collect(self) -> Iterator[prometheus_metrics_core.Metric]:
        labels = ["endpoint", "phase"]
        ratio = prometheus_metrics_core.GaugeMetricFamily(
            "frontier_picker_engine_speed_ratio",
            "Learned step time of an endpoint's engine over the cost model's prior fit, per phase",
            labels=labels,
        )
        samples = prometheus_metrics_core.GaugeMetricFamily(
            "frontier_picker_engine_speed_samples",
            "Completions the learned engine speed ratio of an endpoint and phase was learned from",
            labels=labels,
        )
        for endpoint, phase, value, count in self.learned():
            ratio.add_metric([endpoint, phase], value)
            samples.add_metric([endpoint, phase], count)
        yield ratio
        yield samples


class FlowCollector(prometheus_registry.Collector):
    """GIE's flow-control gauges, read from the queues when scraped: requests and bytes queued per fairness
    ID and priority, and the pool's saturation (the share of endpoints with no room)."""

    def __init__(
        self,
        metrics: Metrics,
        queued: Callable[[], dict[tuple[int, str], tuple[int, int]]],
        saturation: Callable[[], float],
    ) -> None:
        self.metrics = metrics
        self.queued = queued
        self.saturation = saturation

    def collect(self) -> Iterator[prometheus_metrics_core.Metric]:
        labels = ["fairness_id", "priority", "inference_pool"]
        size = prometheus_metrics_core.GaugeMetricFamily(
            "inference_extension_flow_control_queue_size",
            "Requests waiting in flow control (GIE's name)",
            labels=labels,
        )
        size_bytes = prometheus_metrics_core.GaugeMetricFamily(
            "inference_extension_flow_control_queue_bytes",
            "Body bytes of the requests waiting in flow control (GIE's name)",
            labels=labels,
        )
        pool = self.metrics.pool
        for (priority, flow), (count, held) in sorted(self.queued().items()):
            values = [self.metrics.fairness_label(flow), str(priority), pool]
            size.add_metric(values, count)
            size_bytes.add_metric(values, held)
        yield size
        yield size_bytes
        saturation = prometheus_metrics_core.GaugeMetricFamily(
            "inference_extension_flow_control_pool_saturation",
            "Share of the pool's endpoints with no room for another request (GIE's name)",
            labels=["inference_pool"],
        )
        saturation.add_metric([pool], self.saturation())
        yield saturation


def create() -> Metrics:
    """A fresh registry with the picker's collectors."""
    registry = prometheus_registry.CollectorRegistry()
    return Metrics(
        gie=_gie(registry),
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


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    """No access log on stderr: Prometheus scrapes every few seconds."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(
    registry: prometheus_registry.CollectorRegistry,
    *,
    address: str,
    port: int,
    gate: metrics_auth.Gate | None = None,
) -> tuple[int, threading.Thread, wsgiref.simple_server.WSGIServer]:
    """Serve `registry` over HTTP on a background thread, behind `gate` when given (authenticated scrapes);
    returns the bound port, the thread and the server."""
    app = prometheus_client.make_wsgi_app(registry)
    if gate is not None:
        app = metrics_auth.guard(app, gate)

    class Server(prometheus_exposition.ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in address else socket.AF_INET

    server = wsgiref.simple_server.make_server(address, port, app, Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return int(server.server_port), thread, server
