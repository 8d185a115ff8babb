"""Predicted time-to-first-token, plus what the choice costs everyone else: the `frontier` profile's cost.

For each candidate endpoint the scorer predicts how long this request would wait for its first token there,
with the engine's own calibrated step model, and adds the delay its prefill would impose on that endpoint's
other requests:

    cost    = wait + service + no_room + eviction + interference + decode
    service = p0 + p1 * u + p2 * u * (c + u / 2) + ceil(u / chunkTokens) * decode_step
    wait    = max(p1 * ahead + ceil(ahead / chunkTokens) * decode_step,  waiting / drain_rate,  backlog)
    decode_step  = d0 + d1 * running + d2 * running * mean_context      (every engine step also decodes)
    no_room      = noRoomSeconds when the u uncached tokens do not fit the endpoint's free KV cache
    eviction     = evictionWeight * p1 * u * kv_use
    interference = interferenceWeight * (running + waiting) * p1 * (u - min u over the candidates) / reuse
    reuse = 1 + (recent requests/s with this request's cached prefix) * reuseHorizonSeconds
    decode = decodeWeight * output * (d0 + d1 * (sharing + 1) + d2 * (sharing * mean_context + prompt))

`u` and `c` are this request's uncached and cached prompt tokens *on that endpoint* (the prefix index's
matched blocks x 16 tokens), `ahead` the uncached prompt tokens queued there before it. `p0, p1, p2` are the
calibrated prefill fit `t = p0 + p1*N + p2*N*(C + N/2)` and `d0, d1, d2` the decode-step fit of an H100
running a Llama-3.1-8B-shaped model (`frontier_api.step_fit`, pinned to the simulator's calibration); set them
per pool for other engines, or set `slowdown` to how many times slower than that the pool's engines run. Every
term is in seconds of the clock the picker lives on, so a wrong speed skews the fluid queue first: it drains
on the picker's clock (measured: engines running 2x slower than the fit, unique 7,200-token prompts, TTFT p90
33% above round-robin's without `slowdown`).

*Wait.* Queued tokens ahead are the engine's waiting count, sized by the mean uncached tokens of what this
picker has in flight there, plus the uncached tokens this picker sent after the endpoint's last scrape (not
yet in that count), so a burst cannot herd onto one endpoint between two scrapes. That prices a prefill
backlog; an engine that stops admitting (its sequence or KV limit reached) drains its queue only as fast as
it finishes requests, so the wait is at least `waiting / drain_rate` (Little's law), with `drain_rate` the
completions per second this picker saw from it over the last `rateWindowSeconds` (at least 8 of them). A
hot document's holder therefore sheds load to a second copy once its queue stops moving. With stale
metrics the picker's own in-flight accounting replaces the engine's counts.

*Interference.* Choosing an endpoint that must recompute tokens another endpoint has cached is not only this
request's business: every sequence running or waiting there stalls while those extra tokens are computed,
and the copy displaces other prefixes' cached blocks. Greedy TTFT alone ignores that; under load it spreads
a group's prompts over several endpoints, each copy adds prefill work, queues grow, and the fleet collapses
(measured: 6 engines at 80 req/s of the shared-prefix shape went from TTFT p90 34 ms to over 1 s). Pricing
the excess tokens at the stall they cause keeps prompts on their prefix while the fleet is busy and lets them
move to an idle endpoint, where the stall costs nobody. A copy of a hot prefix (a popular document) is
different: it will serve that prefix's next requests too, so its one-off stall is divided among the
requests expected within `reuseHorizonSeconds`, and a hot prefix gets a second holder when its first stops
keeping up (measured: 16 engines, Zipf documents at 96 req/s, TTFT p90 23 s without the division, 0.3-0.7 s
with it; the shared-prefix shape unchanged).

*Decode.* TTFT alone keeps sending a hot prefix's requests to its holder until that endpoint decodes so
large a batch of long sequences that every token there is slow, while another endpoint decodes fast: the
first token comes quickly, the answer does not (TPOT over its SLO). So the cost also carries this request's
own decode time there: its expected output tokens times the decode step once it joins the `sharing`
sequences (running, waiting, or sent by this picker and not finished), at `decodeWeight`. The expected
output is max_tokens times the share of max_tokens that completed answers used (learned, starting at 1),
or their mean length when max_tokens is absent. Measured on 16 engines, Zipf documents of 16,000 tokens:
at 96 req/s goodput 41 -> 94-97 req/s over three arrival draws, TTFT p90 173 -> 72-78 ms; the other
workloads unchanged within run-to-run noise. At weight 1 it outweighs prefix affinity under load (the same
workload at 96 req/s: hit rate 0.97, TTFT p90 1.9 s).

The score is `exp(-(cost - min cost) / scoreScaleSeconds)`: 1 for the best endpoint, shift-invariant (a load
common to every endpoint changes nothing), and 0.37 for one predicted `scoreScaleSeconds` slower.
"""

import collections
import contextlib
import dataclasses
import math

import numpy as np

from frontier_api import estimates, step_fit
from frontier_picker.scheduling import types
from frontier_picker.scheduling.framework import cycles, plugin
from frontier_picker.scheduling.plugins import prefix

# The calibrated H100 / Llama-3.1-8B fit (frontier_api.step_fit, pinned to the simulator's calibration).
H100_LLAMA8B_P0 = step_fit.H100_LLAMA8B.p0
H100_LLAMA8B_P1 = step_fit.H100_LLAMA8B.p1
H100_LLAMA8B_P2 = step_fit.H100_LLAMA8B.p2
H100_LLAMA8B_D0 = step_fit.H100_LLAMA8B.d0
H100_LLAMA8B_D1 = step_fit.H100_LLAMA8B.d1
H100_LLAMA8B_D2 = step_fit.H100_LLAMA8B.d2


MIN_COMPLETIONS_FOR_RATE = 8
# A prefix's request rate is a count decayed with this time constant (seconds); the table of counts is
# pruned of prefixes idle for several time constants once it holds this many.
PREFIX_RATE_TAU_S = 10.0
PREFIX_RATE_MAX_ENTRIES = 65_536
# Weight of each completion in the running means of output length (about the last 50 count).
OUTPUT_LEARNING_RATE = 0.02


@dataclasses.dataclass(slots=True)
class _Pending:
    """The picker's own estimate of the prefill work it sent to one endpoint and has not seen finish."""

    uncached_tokens: float = 0.0
    requests: int = 0
    recent: collections.deque[tuple[float, float]] = dataclasses.field(default_factory=collections.deque)
    recent_tokens: float = 0.0  # sum of the tokens in `recent`
    busy_until: float = 0.0  # when the prefills this picker sent there are predicted to be done
    advanced: float = 0.0  # total time `busy_until` was pulled in by requests that finished early
    finished: collections.deque[float] = dataclasses.field(default_factory=collections.deque)


@plugin.register
class PredictedTTFTScorer(plugin.Scorer):
    """Prefer the endpoint with the lowest predicted time to first token for this request (see module doc)."""

    type_name = "predicted-ttft-scorer"
    formula = (
        "score = exp(-(cost - min cost) / scale), cost = max(scraped queue, waiting / drain rate, own"
        " fluid queue) + uncached prefill + no-room + eviction + others x excess prefill"
        " + weight x output x decode step"
    )
    intent = "latency (affinity and distribution in one cost)"
    consumes = frozenset({"metrics", "load", "prefix-index"})
    parameter_docs = {
        "prefixPlugin": "prefix-cache-scorer whose index gives cached tokens (first one configured)",
        "p0Seconds": f"prefill: fixed cost ({H100_LLAMA8B_P0})",
        "p1SecondsPerToken": f"prefill: per uncached token ({H100_LLAMA8B_P1})",
        "p2SecondsPerTokenContext": f"prefill: per uncached token x context token ({H100_LLAMA8B_P2})",
        "d0Seconds": f"decode step: fixed cost ({H100_LLAMA8B_D0})",
        "d1SecondsPerSequence": f"decode step: per running sequence ({H100_LLAMA8B_D1})",
        "d2SecondsPerContextToken": f"decode step: per context token of the batch ({H100_LLAMA8B_D2})",
        "chunkTokens": "prompt tokens per engine step, max_num_batched_tokens (8192)",
        "defaultPromptTokens": "uncached tokens per waiting request of unknown size (1024)",
        "noRoomSeconds": "penalty when the uncached tokens do not fit the free KV cache (1.0)",
        "scoreScaleSeconds": "TTFT difference that scores 1/e (0.1)",
        "stalenessSeconds": "metrics older than this are replaced by in-flight accounting (0.2)",
        "evictionWeight": "price of displacing cached blocks: weight x p1 x uncached x KV use (1.0)",
        "interferenceWeight": "price of the stall extra prefill causes the endpoint's other requests:"
        " weight x (running + waiting) x p1 x (uncached - least uncached) (1.0)",
        "rateWindowSeconds": "window over which an endpoint's completion rate is measured (2.0)",
        "reuseHorizonSeconds": "a new copy of a prefix is expected to serve its next requests for this long:"
        " the interference of making it is divided by 1 + prefix rate x horizon (5.0)",
        "decodeWeight": "price of this request's own decode time there: weight x expected output tokens x"
        " decode step once it joins the batch (0.3)",
        "defaultOutputTokens": "expected output tokens of a request without max_tokens, until completions"
        " teach the mean (256)",
        "slowdown": "the engines run this many times slower than the p and d fits say (a slower GPU, or a"
        " time-scaled simulated fleet); multiplies p0..d2 (1)",
    }

    def __init__(
        self,
        name: str,
        *,
        index: prefix.Index | None = None,
        p0: float = H100_LLAMA8B_P0,
        p1: float = H100_LLAMA8B_P1,
        p2: float = H100_LLAMA8B_P2,
        d0: float = H100_LLAMA8B_D0,
        d1: float = H100_LLAMA8B_D1,
        d2: float = H100_LLAMA8B_D2,
        chunk_tokens: int = 8192,
        default_prompt_tokens: float = 1024.0,
        no_room_s: float = 1.0,
        score_scale_s: float = 0.1,
        staleness_s: float = 0.2,
        eviction_weight: float = 1.0,
        interference_weight: float = 1.0,
        rate_window_s: float = 2.0,
        reuse_horizon_s: float = 5.0,
        decode_weight: float = 0.3,
        default_output_tokens: float = 256.0,
        slowdown: float = 1.0,
    ) -> None:
        super().__init__(name)
        self.index = index  # None: nothing is known to be cached anywhere
        # Per cycle: (positions, uncached tokens, service time) of each prediction, read at the decision.
        self.predictions_key: cycles.StateKey[list[tuple[dict[str, int], np.ndarray, np.ndarray]]] = (
            cycles.StateKey("predicted-ttft/predictions")
        )
        self.p0, self.p1, self.p2 = p0 * slowdown, p1 * slowdown, p2 * slowdown
        self.d0, self.d1, self.d2 = d0 * slowdown, d1 * slowdown, d2 * slowdown
        self.chunk_tokens = chunk_tokens
        self.default_prompt_tokens = default_prompt_tokens
        self.no_room_s = no_room_s
        self.score_scale_s = score_scale_s
        self.eviction_weight = eviction_weight
        self.interference_weight = interference_weight
        self.rate_window_s = rate_window_s
        self.reuse_horizon_s = reuse_horizon_s
        self.decode_weight = decode_weight
        # Learned from completions: output tokens / max_tokens, and output tokens when max_tokens is absent.
        self._output_ratio = 1.0
        self._mean_output = default_output_tokens
        self.staleness_s = staleness_s
        self._pending: dict[str, _Pending] = {}
        self._prefix_counts: dict[int, tuple[float, float]] = {}
        # request id -> (endpoint, (sent at, tokens), predicted prefill end, endpoint's `advanced` then)
        self._requests: dict[str, list[tuple[str, tuple[float, float], float, float]]] = {}

    @classmethod
    def build(cls, name: str, parameters: plugin.Parameters, handle: plugin.Handle) -> plugin.Plugin:
        return cls(
            name,
            index=prefix.index_of(handle, owner=name, plugin_name=parameters.text("prefixPlugin", "")),
            p0=parameters.number("p0Seconds", H100_LLAMA8B_P0, minimum=0),
            p1=parameters.number("p1SecondsPerToken", H100_LLAMA8B_P1, minimum=0),
            p2=parameters.number("p2SecondsPerTokenContext", H100_LLAMA8B_P2, minimum=0),
            d0=parameters.number("d0Seconds", H100_LLAMA8B_D0, minimum=0),
            d1=parameters.number("d1SecondsPerSequence", H100_LLAMA8B_D1, minimum=0),
            d2=parameters.number("d2SecondsPerContextToken", H100_LLAMA8B_D2, minimum=0),
            chunk_tokens=parameters.integer("chunkTokens", 8192, minimum=1),
            default_prompt_tokens=parameters.number("defaultPromptTokens", 1024, minimum=0),
            no_room_s=parameters.number("noRoomSeconds", 1.0, minimum=0),
            score_scale_s=parameters.number("scoreScaleSeconds", 0.1, minimum=1e-6),
            staleness_s=parameters.number("stalenessSeconds", 0.2, minimum=0),
            eviction_weight=parameters.number("evictionWeight", 1.0, minimum=0),
            interference_weight=parameters.number("interferenceWeight", 1.0, minimum=0),
            rate_window_s=parameters.number("rateWindowSeconds", 2.0, minimum=1e-3),
            reuse_horizon_s=parameters.number("reuseHorizonSeconds", 5.0, minimum=0),
            decode_weight=parameters.number("decodeWeight", 0.3, minimum=0),
            default_output_tokens=parameters.number("defaultOutputTokens", 256, minimum=0),
            slowdown=parameters.number("slowdown", 1.0, minimum=1e-3),
        )

    def _prompt_tokens(self, request: types.Request) -> float:
        return float(request.prompt_tokens or estimates.tokens(len(request.prompt)))

    def _own_accounting(self, cycle: cycles.Cycle) -> tuple[np.ndarray, ...]:
        """Per candidate: in-flight uncached tokens and requests, tokens sent since the last scrape,
        completions per second over the last `rateWindowSeconds`, and the predicted prefill backlog."""
        n = len(cycle.candidates)
        inflight_tokens = np.zeros(n)
        inflight_requests = np.zeros(n)
        recent_tokens = np.zeros(n)
        drain_rate = np.zeros(n)
        backlog = np.zeros(n)
        if not self._pending:
            return inflight_tokens, inflight_requests, recent_tokens, drain_rate, backlog
        window_start = cycle.now - self.rate_window_s
        positions = cycle.positions()
        candidates = cycle.candidates
        stale_before = cycle.now - self.staleness_s
        idle = []
        for key, pending in self._pending.items():
            i = positions.get(key)
            if i is None:
                continue
            inflight_tokens[i] = pending.uncached_tokens
            inflight_requests[i] = pending.requests
            recent = pending.recent
            # Sends before the last scrape are in its waiting count; with stale metrics they are not read.
            scraped_at = candidates[i].metrics.updated_at
            seen_until = scraped_at if scraped_at > stale_before else stale_before
            while recent and recent[0][0] <= seen_until:
                pending.recent_tokens -= recent.popleft()[1]
            if not recent:
                pending.recent_tokens = 0.0  # no drift from float sums
            recent_tokens[i] = pending.recent_tokens
            finished = pending.finished
            while finished and finished[0] < window_start:
                finished.popleft()
            # A rate from a handful of completions is noise; an idle-looking engine is not a stuck one.
            if len(finished) >= MIN_COMPLETIONS_FOR_RATE:
                drain_rate[i] = len(finished) / self.rate_window_s
            if pending.busy_until > cycle.now:
                backlog[i] = pending.busy_until - cycle.now
            elif not (pending.requests or recent or finished):
                idle.append(key)
        for key in idle:
            del self._pending[key]
        return inflight_tokens, inflight_requests, recent_tokens, drain_rate, backlog

    def _prefix_key(self, cycle: cycles.Cycle) -> int | None:
        """The hash naming this request's longest prefix cached anywhere (None: cached nowhere)."""
        if self.index is None or not self.index.hashes(cycle):
            return None
        depth = int(self.index.matched_blocks(cycle).max(initial=0))
        return self.index.hashes(cycle)[depth - 1] if depth else None

    def _prefix_rate(self, key: int | None, now: float) -> float:
        """Requests per second recently sent with prefix `key`: a count decayed over PREFIX_RATE_TAU_S."""
        if key is None:
            return 0.0
        count, last = self._prefix_counts.get(key, (0.0, now))
        return count * math.exp(-(now - last) / PREFIX_RATE_TAU_S) / PREFIX_RATE_TAU_S

    def _count_prefix(self, key: int | None, now: float) -> None:
        if key is None:
            return
        counts = self._prefix_counts
        counts[key] = (self._prefix_rate(key, now) * PREFIX_RATE_TAU_S + 1.0, now)
        if len(counts) > PREFIX_RATE_MAX_ENTRIES:
            idle_since = now - 5 * PREFIX_RATE_TAU_S
            self._prefix_counts = {k: v for k, v in counts.items() if v[1] >= idle_since}

    def predict(self, cycle: cycles.Cycle) -> tuple[np.ndarray, np.ndarray]:
        """Per candidate: the cost in seconds (predicted TTFT plus the priced stall) and uncached tokens."""
        prompt = self._prompt_tokens(cycle.request)
        text_chars = len(cycle.request.prompt)
        if self.index is not None and text_chars and self.index.hashes(cycle):
            # Matched characters converted at this request's own characters-per-token estimate.
            matched_chars = self.index.matched_blocks(cycle) * self.index.block_size
            cached = np.minimum(matched_chars * (prompt / text_chars), prompt)
        else:
            cached = np.zeros(len(cycle.candidates))
        uncached = prompt - cached
        waiting = cycle.column("waiting")
        fresh = cycle.fresh(self.staleness_s)
        in_flight = cycle.column("in_flight")
        own_tokens, own_requests, recent_tokens, drain_rate, backlog = self._own_accounting(cycle)
        mean_uncached = np.where(
            own_requests > 0, own_tokens / np.maximum(own_requests, 1), self.default_prompt_tokens
        )
        ahead = np.where(fresh, waiting * mean_uncached + recent_tokens, own_tokens)
        running = cycle.column("running")
        batch = np.where(fresh, running, in_flight)
        # Mean context of a running sequence: its prompt plus, on average, half its answer so far.
        per_request = np.maximum(in_flight, 1)
        context = (
            cycle.column("in_flight_prompt_tokens") + cycle.column("in_flight_decode_tokens") / 2
        ) / per_request
        context = np.where(in_flight > 0, context, self.default_prompt_tokens)
        decode_step = np.where(batch > 0, self.d0 + self.d1 * batch + self.d2 * batch * context, 0.0)
        # Queue wait: the prefill work ahead, or, when the engine admits slower than that (its sequence or
        # KV limit is reached), the waiting requests over the rate it has been finishing requests (Little).
        prefill_wait = self.p1 * ahead + np.ceil(ahead / self.chunk_tokens) * decode_step
        admission_wait = np.where(fresh & (drain_rate > 0), waiting / np.maximum(drain_rate, 1e-9), 0.0)
        service = (
            self.p0
            + self.p1 * uncached
            + self.p2 * uncached * (cached + uncached / 2)
            + np.ceil(uncached / self.chunk_tokens) * decode_step
        )
        # `backlog` (own decisions) also sees prefills already admitted, which the scraped counts miss.
        cost = np.maximum(np.maximum(prefill_wait, admission_wait), backlog) + service
        if self.decode_weight:
            # Every sequence running, waiting or sent there shares each decode step with this one.
            sharing = np.maximum(np.where(fresh, running + waiting, 0.0), in_flight)
            step = self.d0 + self.d1 * (sharing + 1) + self.d2 * (sharing * context + prompt)
            cost = cost + self.decode_weight * self._expected_output(cycle.request) * step
        capacity = cycle.column("kv_capacity_tokens")
        kv = np.where(fresh, cycle.column("kv"), 0.0)
        free = np.where(capacity > 0, (1.0 - kv) * capacity, np.where(kv >= 0.98, 0.0, np.inf))
        cost = cost + np.where(uncached + ahead > free, self.no_room_s, 0.0)
        # New KV blocks on a busy cache displace other prompts' cached blocks: price their recomputation.
        cost = cost + self.eviction_weight * self.p1 * uncached * kv
        # Every sequence running or waiting there stalls while tokens are computed; only the tokens beyond
        # the least this prompt needs anywhere are a choice (a miss where another endpoint has a hit).
        excess = uncached - uncached.min() if uncached.size else uncached
        if excess.any():  # otherwise every candidate needs the same tokens and the term is zero
            others = np.where(fresh, running + waiting, in_flight)
            # A copy made now serves this prefix's next requests too: the stall is shared among them.
            reuse = 1.0 + self._prefix_rate(self._prefix_key(cycle), cycle.now) * self.reuse_horizon_s
            cost = cost + self.interference_weight * others * self.p1 * excess / reuse
        predictions = cycle.read(self.predictions_key)
        if predictions is None:
            predictions = []
            cycle.write(self.predictions_key, predictions)
        predictions.append((cycle.positions(), uncached, service))
        return cost, uncached

    def _expected_output(self, request: types.Request) -> float:
        if request.max_tokens:
            return request.max_tokens * self._output_ratio
        return self._mean_output

    def score(self, cycle: cycles.Cycle) -> np.ndarray:
        cost, _ = self.predict(cycle)
        if cost.size == 0:
            return cost
        return np.exp(-(cost - cost.min()) / self.score_scale_s)

    def _learn_output(self, request: types.Request, completion: types.Completion) -> None:
        """Answers often stop before max_tokens: learn by how much, so the decode price is not inflated."""
        tokens = completion.completion_tokens
        if completion.aborted or completion.status != 200 or not tokens:
            return
        if request.max_tokens:
            ratio = min(1.0, tokens / request.max_tokens)
            self._output_ratio += OUTPUT_LEARNING_RATE * (ratio - self._output_ratio)
        else:
            self._mean_output += OUTPUT_LEARNING_RATE * (tokens - self._mean_output)

    def _charge(self, key: str, tokens: float, service_s: float, *, now: float, request_id: str) -> None:
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending()
        # The engine prefills what it is sent one token budget at a time: a fluid queue of predicted work.
        pending.busy_until = max(pending.busy_until, now) + service_s
        pending.uncached_tokens += tokens
        pending.requests += 1
        sent = (now, tokens)
        pending.recent.append(sent)
        pending.recent_tokens += tokens
        self._requests.setdefault(request_id, []).append((key, sent, pending.busy_until, pending.advanced))

    def on_decision(self, cycle: cycles.Cycle, decision: types.Decision) -> None:
        self._count_prefix(self._prefix_key(cycle), cycle.now)
        predictions = cycle.read(self.predictions_key) or []

        def uncached_at(key: str) -> tuple[float, float]:
            for positions, uncached, service in predictions:
                i = positions.get(key)
                if i is not None:
                    return float(uncached[i]), float(service[i])
            tokens = self._prompt_tokens(cycle.request)
            return tokens, self.p0 + self.p1 * tokens

        request_id = cycle.request.request_id
        if decision.prefill is not None:
            # The prefill endpoint computes the prompt; the decode endpoint only receives its KV.
            self._charge(
                decision.prefill, *uncached_at(decision.prefill), now=cycle.now, request_id=request_id
            )
            self._charge(decision.primary, 0.0, 0.0, now=cycle.now, request_id=request_id)
        else:
            self._charge(
                decision.primary, *uncached_at(decision.primary), now=cycle.now, request_id=request_id
            )

    def on_completion(
        self, request: types.Request, decision: types.Decision, completion: types.Completion
    ) -> None:
        self._learn_output(request, completion)
        for key, sent, done_at, advanced in self._requests.pop(request.request_id, ()):
            pending = self._pending.get(key)
            if pending is None:
                continue
            # A finished request was prefilled: if that was predicted for later, so was everything queued
            # behind it, and the whole predicted backlog moves forward by the difference.
            now = sent[0] + completion.duration_s
            early = done_at - (pending.advanced - advanced) - now
            if early > 0:
                pending.busy_until -= early
                pending.advanced += early
            pending.finished.append(now)
            # A finished request is in no queue, even if no scrape has seen it yet.
            with contextlib.suppress(ValueError):
                pending.recent.remove(sent)
                pending.recent_tokens = pending.recent_tokens - sent[1] if pending.recent else 0.0
            pending.uncached_tokens = max(0.0, pending.uncached_tokens - sent[1])
            pending.requests = max(0, pending.requests - 1)
            if pending.requests == 0 and not pending.recent and not pending.finished:
                del self._pending[key]
