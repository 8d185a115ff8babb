"""Scorers over engine metrics and the picker's own accounting: each maps every candidate to [0, 1].

Load scorers are min-max normalised over the candidates (the GIE queue scorer's formula), so they express
"least loaded among these" whatever the absolute level; with all candidates equal every score is 1.
"""

import base64
import binascii
import collections

import numpy as np

from frontier_picker.scheduling import types
from frontier_picker.scheduling.framework import cycles, plugin


def min_max_inverse(values: np.ndarray) -> np.ndarray:
    """(max - x) / (max - min): 1 for the smallest value, 0 for the largest, all 1 when all are equal."""
    if values.size == 0:
        return values
    low = values.min()
    high = values.max()
    if high == low:
        return np.ones_like(values)
    scaled: np.ndarray = (high - values) / (high - low)
    return scaled


@plugin.register
class QueueScorer(plugin.Scorer):
    """Prefer endpoints with shorter engine queues (GIE queue-scorer)."""

    type_name = "queue-scorer"
    formula = "score = (max(waiting) - waiting) / (max(waiting) - min(waiting)); all equal -> 1"
    intent = "distribution"
    consumes = frozenset({"metrics"})

    def score(self, cycle: cycles.Cycle) -> np.ndarray:
        return min_max_inverse(cycle.column("waiting"))


@plugin.register
class KVCacheUtilizationScorer(plugin.Scorer):
    """Prefer endpoints with more free KV cache (GIE kv-cache-utilization-scorer)."""

    type_name = "kv-cache-utilization-scorer"
    formula = "score = 1 - kv_usage"
    intent = "distribution"
    consumes = frozenset({"metrics"})

    def score(self, cycle: cycles.Cycle) -> np.ndarray:
        return np.clip(1.0 - cycle.column("kv"), 0.0, 1.0)


@plugin.register
class RunningRequestsScorer(plugin.Scorer):
    """Prefer endpoints decoding fewer requests (smaller batch: faster inter-token latency)."""

    type_name = "running-requests-scorer"
    formula = "score = (max(running) - running) / (max(running) - min(running)); all equal -> 1"
    intent = "distribution"
    consumes = frozenset({"metrics"})

    def score(self, cycle: cycles.Cycle) -> np.ndarray:
        return min_max_inverse(cycle.column("running"))


@plugin.register
class InflightLoadScorer(plugin.Scorer):
    """Prefer endpoints with fewer requests in flight (the picker's own accounting, fresher than scrapes)."""

    type_name = "inflight-load-scorer"
    formula = "score = (max(in_flight) - in_flight) / (max(in_flight) - min(in_flight)); all equal -> 1"
    intent = "distribution"
    consumes = frozenset({"load"})

    def score(self, cycle: cycles.Cycle) -> np.ndarray:
        return min_max_inverse(cycle.column("in_flight"))


@plugin.register
class LoraAffinityScorer(plugin.Scorer):
    """Prefer endpoints that already run the request's LoRA adapter, then those that can load it.

    Without an adapter in the request every endpoint scores 1 (the scorer is neutral).
    """

    type_name = "lora-affinity-scorer"
    formula = "score = 1 running adapter, 0.8 queued adapter, 0.6 free adapter slot, 0 otherwise"
    intent = "affinity"
    consumes = frozenset({"metrics"})

    def score(self, cycle: cycles.Cycle) -> np.ndarray:
        adapter = cycle.request.lora_adapter
        if not adapter:
            return np.ones(len(cycle.candidates), dtype=np.float64)
        scores = np.zeros(len(cycle.candidates), dtype=np.float64)
        for i, state in enumerate(cycle.candidates):
            metrics = state.metrics
            if adapter in metrics.running_loras:
                scores[i] = 1.0
            elif adapter in metrics.waiting_loras:
                scores[i] = 0.8
            elif metrics.max_loras is not None and len(metrics.running_loras) < metrics.max_loras:
                scores[i] = 0.6
        return scores


@plugin.register
class SessionAffinityScorer(plugin.Scorer):
    """Send the requests of one session (header x-session-token) to the endpoint that served it before.

    The token is either base64 of the endpoint's `ip:port` (the llm-d convention, a token handed out on a
    response) or any opaque value, in which case the endpoint is the one this picker last chose for it.
    """

    type_name = "session-affinity-scorer"
    formula = "score = 1 for the session's endpoint, 0 otherwise"
    intent = "affinity"
    consumes = frozenset({"labels"})
    MAX_SESSIONS = plugin.Param(
        "maxSessions", 100_000, "sessions remembered, least recently used first out", 1
    )
    parameter_docs = plugin.documented((MAX_SESSIONS,))

    def __init__(self, name: str, *, max_sessions: int = 100_000) -> None:
        super().__init__(name)
        self.max_sessions = max_sessions
        self._sessions: collections.OrderedDict[str, str] = collections.OrderedDict()

    @classmethod
    def build(cls, name: str, parameters: plugin.Parameters, handle: plugin.Handle) -> plugin.Plugin:
        return cls(name, max_sessions=parameters.read(cls.MAX_SESSIONS))

    def _endpoint_for(self, token: str) -> str | None:
        known = self._sessions.get(token)
        if known is not None:
            return known
        try:
            return base64.b64decode(token, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None

    def score(self, cycle: cycles.Cycle) -> np.ndarray:
        scores = np.zeros(len(cycle.candidates), dtype=np.float64)
        token = cycle.request.session_token
        if token:
            key = self._endpoint_for(token)
            position = cycle.positions().get(key) if key else None
            if position is not None:
                scores[position] = 1.0
        return scores

    def on_decision(self, cycle: cycles.Cycle, decision: types.Decision) -> None:
        token = cycle.request.session_token
        if token:
            self._remember(token, decision.primary)

    def share(self, cycle: cycles.Cycle, decision: types.Decision) -> bytes | None:
        token = cycle.request.session_token
        return token.encode() if token else None

    def learn_shared(self, data: bytes, shared: types.SharedDecision) -> None:
        self._remember(data.decode(errors="replace"), shared.decision.primary)

    def _remember(self, token: str, key: str) -> None:
        self._sessions[token] = key
        self._sessions.move_to_end(token)
        if len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
