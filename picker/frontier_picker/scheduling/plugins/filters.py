"""Filters: drop the endpoints that must not get a request before any scoring happens.

A filter that would leave no candidate says what to do instead: the saturation filter keeps every endpoint
(a full pool still serves its critical traffic, ranked by load), the model filter leaves the set empty so the
request is refused with 503 and a message naming the model.
"""

from collections.abc import Callable, Sequence

from frontier_api import names
from frontier_picker import endpoints
from frontier_picker.scheduling.framework import cycles, plugin, saturation


class _SameInput:
    """Results of a label-only filter, reused while the same candidate sequence object comes back.

    Labels change only when discovery replaces the datastore's endpoint sequence, which is then a new object,
    so identity is a safe key; the reference held here keeps the object (and so its id) alive.
    """

    __slots__ = ("_results", "_source")

    def __init__(self) -> None:
        self._source: Sequence[endpoints.EndpointState] | None = None
        self._results: dict[tuple[str, ...], Sequence[endpoints.EndpointState]] = {}

    def get(
        self,
        candidates: Sequence[endpoints.EndpointState],
        key: tuple[str, ...],
        compute: Callable[[], Sequence[endpoints.EndpointState]],
    ) -> Sequence[endpoints.EndpointState]:
        if candidates is not self._source:
            self._source = candidates
            self._results = {}
        result = self._results.get(key)
        if result is None:
            if len(self._results) >= 64:  # many model names: keep the memory bounded
                self._results.clear()
            result = self._results[key] = compute()
        return result


@plugin.register
class SaturationFilter(plugin.Filter):
    """Route around endpoints that are saturated or whose metrics went stale.

    Keeps endpoints with waiting < queueDepthThreshold and KV use < kvCacheUtilThreshold whose metrics are
    younger than metricsStalenessThreshold. When that leaves none, keeps all of them: if every endpoint is
    stale the scorers fall back on the picker's own in-flight accounting, and if every endpoint is saturated
    the request still goes to the least loaded one (shedding is admission's job, by priority).
    """

    type_name = "saturation-filter"
    formula = "keep waiting < q and kv < k and age < s; none left -> keep all"
    intent = "protection"
    consumes = frozenset({"metrics"})
    parameter_docs = {
        "queueDepthThreshold": "waiting requests that saturate (default: saturationDetector, 5)",
        "kvCacheUtilThreshold": "KV use that saturates (default: saturationDetector, 0.8)",
        "metricsStalenessThreshold": "metrics age that saturates (default: saturationDetector, 200ms)",
    }

    def __init__(self, name: str, *, thresholds: saturation.Thresholds = saturation.DEFAULT) -> None:
        super().__init__(name)
        self.thresholds = thresholds

    @classmethod
    def build(cls, name: str, parameters: plugin.Parameters, handle: plugin.Handle) -> plugin.Plugin:
        raw = {
            key: parameters.raw(key, None)
            for key in ("queueDepthThreshold", "kvCacheUtilThreshold", "metricsStalenessThreshold")
        }
        given = {key: value for key, value in raw.items() if value is not None}
        return cls(name, thresholds=saturation.from_config(given) if given else handle.saturation)

    def filter(
        self, cycle: cycles.Cycle, candidates: Sequence[endpoints.EndpointState]
    ) -> Sequence[endpoints.EndpointState]:
        now = cycle.now
        limits = self.thresholds
        stale_before = now - limits.staleness_s
        kept = [
            state
            for state in candidates
            if state.metrics.updated_at > stale_before
            and state.metrics.waiting < limits.queue_depth
            and state.metrics.kv_usage < limits.kv_utilization
        ]
        return kept or candidates


@plugin.register
class StaleFilter(plugin.Filter):
    """Route around endpoints whose metrics went stale (their scrapes fail or lag), and only those.

    Unlike saturation-filter it keeps busy endpoints: removing a busy endpoint that holds a request's prefix
    forces the prompt to be recomputed elsewhere, and under load those copies crowd caches and queues until
    the fleet collapses (measured in bench/results). Load is the scorers' job. When every endpoint is
    stale it keeps them all, and the scorers run on the picker's own in-flight accounting.
    """

    type_name = "stale-filter"
    formula = "keep age < s; none left -> keep all"
    intent = "protection"
    consumes = frozenset({"metrics"})
    parameter_docs = {
        "metricsStalenessThreshold": "metrics age that counts as stale (default: saturationDetector, 200ms)",
    }

    def __init__(self, name: str, *, staleness_s: float = saturation.DEFAULT.staleness_s) -> None:
        super().__init__(name)
        self.staleness_s = staleness_s

    @classmethod
    def build(cls, name: str, parameters: plugin.Parameters, handle: plugin.Handle) -> plugin.Plugin:
        raw = parameters.raw("metricsStalenessThreshold", None)
        if raw is None:
            return cls(name, staleness_s=handle.saturation.staleness_s)
        return cls(name, staleness_s=saturation.duration_seconds(raw, field="metricsStalenessThreshold"))

    def filter(
        self, cycle: cycles.Cycle, candidates: Sequence[endpoints.EndpointState]
    ) -> Sequence[endpoints.EndpointState]:
        stale_before = cycle.now - self.staleness_s
        kept = [state for state in candidates if state.metrics.updated_at > stale_before]
        return kept or candidates


@plugin.register
class ModelFilter(plugin.Filter):
    """Keep endpoints that serve the request's model, and for a LoRA request those that can serve the adapter.

    A request for a LoRA adapter (the director sets `lora_adapter` when the model names an adapter some
    endpoint declares) keeps the endpoints declaring it. Otherwise an endpoint serves a model when its label
    inference.frontier.dev/model is absent or equals the request's target model (after
    x-gateway-model-name-rewrite) or requested model; for an adapter no endpoint declares, prefer those that
    run or queue it or have LoRA enabled (max_lora known); if none report LoRA, keep the model's endpoints
    (the engine then answers for itself).
    """

    type_name = "model-filter"
    formula = (
        "LoRA: keep endpoints declaring the adapter; else keep label(model) in {unset, target_model, model},"
        " LoRA: adapter active/queued or max_lora set"
    )
    intent = "correctness"
    consumes = frozenset({"labels", "metrics"})

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._same = _SameInput()

    def filter(
        self, cycle: cycles.Cycle, candidates: Sequence[endpoints.EndpointState]
    ) -> Sequence[endpoints.EndpointState]:
        request = cycle.request
        target = request.target_model
        adapter = request.lora_adapter
        if adapter:
            serving = self._same.get(
                candidates,
                ("adapter", adapter),
                lambda: [s for s in candidates if adapter in s.endpoint.adapters],
            )
            if serving:
                return serving
        wanted = {target, request.model}
        label = names.MODEL_LABEL
        kept = self._same.get(
            candidates,
            (target, request.model),
            lambda: [state for state in candidates if state.endpoint.labels.get(label, target) in wanted],
        )
        if adapter and kept:
            lora = [
                state
                for state in kept
                if adapter in state.metrics.running_loras
                or adapter in state.metrics.waiting_loras
                or state.metrics.max_loras is not None
            ]
            return lora or kept
        return kept


@plugin.register
class RoleFilter(plugin.Filter):
    """Keep endpoints that can play a prefill/decode role (label inference.frontier.dev/role, default both).

    role=decode keeps decode and both endpoints (destinations of a request); role=prefill keeps only
    prefill endpoints (the prefill side of a disaggregated request); role=any keeps every endpoint (where a
    P/D pool serves a request it does not disaggregate, prefill engines included).
    """

    type_name = "role-filter"
    formula = "decode: keep role in {decode, both}; prefill: keep role == prefill; any: keep all"
    intent = "correctness"
    consumes = frozenset({"labels"})
    ANY = "any"
    ROLE = plugin.Param(
        "role",
        names.ROLE_DECODE,
        "decode, prefill or any",
        allowed=(names.ROLE_DECODE, names.ROLE_PREFILL, ANY),
    )
    parameter_docs = plugin.documented((ROLE,))

    def __init__(self, name: str, *, role: str = names.ROLE_DECODE) -> None:
        super().__init__(name)
        self.role = role
        self._same = _SameInput()
        self._roles = {
            names.ROLE_DECODE: frozenset({names.ROLE_DECODE, names.ROLE_BOTH}),
            names.ROLE_PREFILL: frozenset({names.ROLE_PREFILL}),
            self.ANY: frozenset({names.ROLE_DECODE, names.ROLE_BOTH, names.ROLE_PREFILL}),
        }[role]

    @classmethod
    def build(cls, name: str, parameters: plugin.Parameters, handle: plugin.Handle) -> plugin.Plugin:
        role = parameters.read(cls.ROLE)
        return cls(name, role=role)

    def filter(
        self, cycle: cycles.Cycle, candidates: Sequence[endpoints.EndpointState]
    ) -> Sequence[endpoints.EndpointState]:
        roles = self._roles
        label = names.ROLE_LABEL
        both = names.ROLE_BOTH
        return self._same.get(
            candidates,
            (),
            lambda: [state for state in candidates if state.endpoint.labels.get(label, both) in roles],
        )
