"""Predicted time-to-first-token: the cost model behind the `frontier` profile.

For each candidate endpoint the scorer estimates how long this request would wait for its first token there:

    ttft = queue + own prefill + decode interference + KV pressure + load guard
    queue        = p0 * requests_ahead + p1 * uncached_tokens_ahead
    own prefill  = p0 + p1 * u + p2 * u * (c + u / 2)       (u uncached, c cached prompt tokens here)
    interference = ceil((tokens_ahead + u) / chunk) * running * decodeTokenSeconds
    KV pressure  = kvPenaltySeconds * max(0, kv - kvSoftThreshold) / (1 - kvSoftThreshold)
    load guard   = loadSeconds * in_flight

`p0, p1, p2` are the calibrated prefill fit `t = p0 + p1*N + p2*N*(C + N/2)` of an H100 running a
Llama-3.1-8B-shaped model (../shared/calibration/h100_llama8b.json); set them per pool for other engines.
The cached part `c` comes from the prefix index (matched blocks x 16 tokens), so the same shared prefix that
makes an endpoint attractive also makes its queue visible: requests stick to the endpoint holding their
prefix only while recomputing the prefix elsewhere would be slower than waiting there.

*Requests ahead* come from the engine's waiting count, sized by the uncached tokens this picker predicted for
the requests it has in flight there, plus the requests this picker sent after the endpoint's last scrape (not
yet in that count) — so a burst cannot herd onto one endpoint between two scrapes. When the endpoint's
metrics are stale, the picker's own in-flight accounting replaces the engine's counts.
"""

import collections
import contextlib
import dataclasses

import numpy as np

from frontier_picker.scheduling import plugins, prefix, types

# Calibrated H100 / Llama-3.1-8B prefill fit (seconds, seconds per token, seconds per token x context token).
H100_LLAMA8B_P0 = 0.005749
H100_LLAMA8B_P1 = 2.7019e-05
H100_LLAMA8B_P2 = 8.077e-10


@dataclasses.dataclass(slots=True)
class _Pending:
    """The picker's own estimate of the prefill work it sent to one endpoint and has not seen finish."""

    uncached_tokens: float = 0.0
    requests: int = 0
    recent: collections.deque[tuple[float, float]] = dataclasses.field(default_factory=collections.deque)


@plugins.register
class PredictedTTFTScorer(plugins.Scorer):
    """Prefer the endpoint with the lowest predicted time to first token for this request (see module doc)."""

    type_name = "predicted-ttft-scorer"
    formula = "score = min(ttft) / ttft, ttft = queue + uncached prefill + interference + kv + load guard"
    intent = "latency (affinity and distribution in one cost)"
    consumes = frozenset({"metrics", "load", "prefix-index"})
    parameter_docs = {
        "prefixPlugin": "prefix-cache-scorer whose index gives cached tokens (first one configured)",
        "p0Seconds": f"fixed prefill cost per request ({H100_LLAMA8B_P0})",
        "p1SecondsPerToken": f"prefill cost per uncached token ({H100_LLAMA8B_P1})",
        "p2SecondsPerTokenContext": f"attention cost per uncached token x context token ({H100_LLAMA8B_P2})",
        "chunkTokens": "tokens per engine step, max_num_batched_tokens (8192)",
        "decodeTokenSeconds": "extra step time per running request (0.00003)",
        "defaultPromptTokens": "uncached tokens per waiting request of unknown size (1024)",
        "kvSoftThreshold": "KV use where the KV-pressure penalty starts (0.7)",
        "kvPenaltySeconds": "penalty at a full KV cache (0.5)",
        "loadSeconds": "herding guard per in-flight request (0.002)",
        "stalenessSeconds": "metrics older than this are replaced by in-flight accounting (0.2)",
    }

    def __init__(
        self,
        name: str,
        *,
        prefix_plugin: str = "",
        p0: float = H100_LLAMA8B_P0,
        p1: float = H100_LLAMA8B_P1,
        p2: float = H100_LLAMA8B_P2,
        chunk_tokens: int = 8192,
        decode_token_s: float = 3e-5,
        default_prompt_tokens: float = 1024.0,
        kv_soft: float = 0.7,
        kv_penalty_s: float = 0.5,
        load_s: float = 0.002,
        staleness_s: float = 0.2,
    ) -> None:
        super().__init__(name)
        self.prefix_plugin = prefix_plugin
        self.index: prefix.Index | None = None  # bound by the config loader to the producing plugin's index
        self.p0, self.p1, self.p2 = p0, p1, p2
        self.chunk_tokens = chunk_tokens
        self.decode_token_s = decode_token_s
        self.default_prompt_tokens = default_prompt_tokens
        self.kv_soft = kv_soft
        self.kv_penalty_s = kv_penalty_s
        self.load_s = load_s
        self.staleness_s = staleness_s
        self._pending: dict[str, _Pending] = {}
        self._requests: dict[str, list[tuple[str, tuple[float, float]]]] = {}

    @classmethod
    def build(cls, name: str, parameters: plugins.Parameters) -> plugins.Plugin:
        return cls(
            name,
            prefix_plugin=parameters.text("prefixPlugin", ""),
            p0=parameters.number("p0Seconds", H100_LLAMA8B_P0, minimum=0),
            p1=parameters.number("p1SecondsPerToken", H100_LLAMA8B_P1, minimum=0),
            p2=parameters.number("p2SecondsPerTokenContext", H100_LLAMA8B_P2, minimum=0),
            chunk_tokens=parameters.integer("chunkTokens", 8192, minimum=1),
            decode_token_s=parameters.number("decodeTokenSeconds", 3e-5, minimum=0),
            default_prompt_tokens=parameters.number("defaultPromptTokens", 1024, minimum=0),
            kv_soft=parameters.number("kvSoftThreshold", 0.7, minimum=0),
            kv_penalty_s=parameters.number("kvPenaltySeconds", 0.5, minimum=0),
            load_s=parameters.number("loadSeconds", 0.002, minimum=0),
            staleness_s=parameters.number("stalenessSeconds", 0.2, minimum=0),
        )

    def _prompt_tokens(self, request: types.Request) -> float:
        return float(request.prompt_tokens or len(request.prompt) // prefix.CHARS_PER_TOKEN)

    def _own_accounting(self, cycle: plugins.Cycle) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per candidate: in-flight uncached tokens and requests, and those sent since the last scrape."""
        n = len(cycle.candidates)
        inflight_tokens = np.zeros(n)
        inflight_requests = np.zeros(n)
        recent_tokens = np.zeros(n)
        recent_requests = np.zeros(n)
        if not self._pending:
            return inflight_tokens, inflight_requests, recent_tokens, recent_requests
        positions = cycle.positions()
        candidates = cycle.candidates
        for key, pending in self._pending.items():
            i = positions.get(key)
            if i is None:
                continue
            inflight_tokens[i] = pending.uncached_tokens
            inflight_requests[i] = pending.requests
            recent = pending.recent
            # Sends before the last scrape are in its waiting count; with stale metrics they are not read.
            seen_until = max(candidates[i].metrics.updated_at, cycle.now - self.staleness_s)
            while recent and recent[0][0] <= seen_until:
                recent.popleft()
            if recent:
                recent_requests[i] = len(recent)
                recent_tokens[i] = sum(tokens for _, tokens in recent)
        return inflight_tokens, inflight_requests, recent_tokens, recent_requests

    def predict(self, cycle: plugins.Cycle) -> tuple[np.ndarray, np.ndarray]:
        """Predicted TTFT (seconds) and uncached prompt tokens, per candidate."""
        prompt = self._prompt_tokens(cycle.request)
        if self.index is not None and self.index.hashes(cycle):
            cached = np.minimum(self.index.matched_blocks(cycle) * self.index.tokens_per_block, prompt)
        else:
            cached = np.zeros(len(cycle.candidates))
        uncached = prompt - cached
        waiting = cycle.column("waiting")
        running = cycle.column("running")
        in_flight = cycle.column("in_flight")
        fresh = cycle.fresh(self.staleness_s)
        own_tokens, own_requests, recent_tokens, recent_requests = self._own_accounting(cycle)
        mean_uncached = np.where(
            own_requests > 0, own_tokens / np.maximum(own_requests, 1), self.default_prompt_tokens
        )
        ahead_requests = np.where(fresh, waiting + recent_requests, own_requests)
        ahead_tokens = np.where(fresh, waiting * mean_uncached + recent_tokens, own_tokens)
        batch = np.where(fresh, running, in_flight)
        queue = self.p0 * ahead_requests + self.p1 * ahead_tokens
        own = self.p0 + self.p1 * uncached + self.p2 * uncached * (cached + uncached / 2)
        steps = np.ceil((ahead_tokens + uncached) / self.chunk_tokens)
        interference = steps * batch * self.decode_token_s
        kv = np.where(fresh, cycle.column("kv"), 0.0)
        pressure = self.kv_penalty_s * np.clip((kv - self.kv_soft) / max(1e-9, 1 - self.kv_soft), 0.0, None)
        ttft = queue + own + interference + pressure + self.load_s * in_flight
        cycle.derived.setdefault(f"ttft_uncached:{id(self)}", []).append((cycle.positions(), uncached))
        return ttft, uncached

    def score(self, cycle: plugins.Cycle) -> np.ndarray:
        ttft, _ = self.predict(cycle)
        if ttft.size == 0:
            return ttft
        return np.maximum(ttft.min(), 1e-9) / np.maximum(ttft, 1e-9)

    def _charge(self, key: str, tokens: float, *, now: float, request_id: str) -> None:
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending()
        pending.uncached_tokens += tokens
        pending.requests += 1
        sent = (now, tokens)
        pending.recent.append(sent)
        self._requests.setdefault(request_id, []).append((key, sent))

    def on_decision(self, cycle: plugins.Cycle, decision: types.Decision) -> None:
        predictions = cycle.derived.get(f"ttft_uncached:{id(self)}", [])

        def uncached_at(key: str) -> float:
            for positions, uncached in predictions:
                i = positions.get(key)
                if i is not None:
                    return float(uncached[i])
            return self._prompt_tokens(cycle.request)

        request_id = cycle.request.request_id
        if decision.prefill is not None:
            # The prefill endpoint computes the prompt; the decode endpoint only receives its KV.
            self._charge(
                decision.prefill, uncached_at(decision.prefill), now=cycle.now, request_id=request_id
            )
            self._charge(decision.primary, 0.0, now=cycle.now, request_id=request_id)
        else:
            self._charge(
                decision.primary, uncached_at(decision.primary), now=cycle.now, request_id=request_id
            )

    def on_completion(
        self, request: types.Request, decision: types.Decision, completion: types.Completion
    ) -> None:
        for key, sent in self._requests.pop(request.request_id, ()):
            pending = self._pending.get(key)
            if pending is None:
                continue
            # A finished request is in no queue, even if no scrape has seen it yet.
            with contextlib.suppress(ValueError):
                pending.recent.remove(sent)
            pending.uncached_tokens = max(0.0, pending.uncached_tokens - sent[1])
            pending.requests = max(0, pending.requests - 1)
            if pending.requests == 0 and not pending.recent:
                del self._pending[key]
