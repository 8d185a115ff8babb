"""The `frontier` profile's scorer: predicted time to first token plus the stall the choice causes others.

The formula and why each term is there: `cost_model` (a pure function of column arrays). This plugin gathers
its inputs: the candidates' columns from the cycle, the cached tokens per candidate from the prefix index
(found through the handle), the pending ledger of its own decisions (`pending`), and what it learns from
traffic (`learners`). Its parameters are declared once, in `PARAMS`.
"""

import dataclasses
import struct
from collections.abc import Sequence

import numpy as np

from frontier_api import step_fit
from frontier_picker import endpoints
from frontier_picker.scheduling import types
from frontier_picker.scheduling.framework import cycles, plugin
from frontier_picker.scheduling.plugins import cost_model, learners, pending, prefix


@dataclasses.dataclass(frozen=True, slots=True)
class _Predicted:
    """What the cost model predicted where a request was sent, for the speed learner (`cost_model.Prediction`
    names the parts); peers receive it with the decision, so every replica learns from every completion."""

    sent_s: float  # the prefill work the decision sends there (chunk time at the prior fit)
    wait: float
    prefill_prior: float
    prefill_fixed: float  # the part of `prefill_prior` that is not per token (p0, or 0 beside decodes)
    interleaved: float
    step_prior: float


@dataclasses.dataclass(frozen=True, slots=True)
class _Sample:
    """A request's prediction where it was sent, kept until its completion teaches the speed learner."""

    endpoint: str
    group: str
    predicted: _Predicted
    sent_mark: float  # the endpoint's prefill work sent so far (`EngineSpeed.sent`), this request's included


_SHARED = struct.Struct("<QB")  # what a decision taught the ledger, for peers: prefix key, charges
_CHARGE = struct.Struct("<dd")  # one charge: uncached tokens, predicted service seconds
_PREDICTED = struct.Struct("<6d")  # then, with learning on, the `_Predicted` fields in order
# Samples of requests whose completion never came (a peer gone): the oldest are dropped beyond this.
MAX_SAMPLES = 100_000

# Defaults: the calibrated H100 / Llama-3.1-8B fit (pinned to the simulator's calibration by a test).
H100 = step_fit.H100_LLAMA8B

PREFIX_PLUGIN = plugin.Param(
    "prefixPlugin", "", "prefix-cache-scorer whose index gives cached tokens (first one)"
)
P0 = plugin.Param("p0Seconds", H100.p0, "prefill: fixed cost", 0)
P1 = plugin.Param("p1SecondsPerToken", H100.p1, "prefill: per uncached token", 0)
P2 = plugin.Param("p2SecondsPerTokenContext", H100.p2, "prefill: per uncached token x context token", 0)
D0 = plugin.Param("d0Seconds", H100.d0, "decode step: fixed cost", 0)
D1 = plugin.Param("d1SecondsPerSequence", H100.d1, "decode step: per running sequence", 0)
D2 = plugin.Param("d2SecondsPerContextToken", H100.d2, "decode step: per context token of the batch", 0)
CHUNK = plugin.Param("chunkTokens", 8192, "prompt tokens per engine step, max_num_batched_tokens", 1)
DEFAULT_PROMPT = plugin.Param(
    "defaultPromptTokens", 1024.0, "uncached tokens per waiting request of unknown size", 0
)
NO_ROOM = plugin.Param(
    "noRoomSeconds", 1.0, "penalty when the uncached tokens do not fit the free KV cache", 0
)
SCALE = plugin.Param("scoreScaleSeconds", 0.1, "TTFT difference that scores 1/e", 1e-6)
STALENESS = plugin.Param(
    "stalenessSeconds", 0.2, "metrics older than this are replaced by in-flight accounting", 0
)
EVICTION = plugin.Param(
    "evictionWeight", 1.0, "price of displacing cached blocks: weight x p1 x uncached x KV use", 0
)
INTERFERENCE = plugin.Param(
    "interferenceWeight",
    1.0,
    "price of the stall extra prefill causes the endpoint's other requests:"
    " weight x (running + waiting) x p1 x (uncached - least uncached)",
    0,
)
RATE_WINDOW = plugin.Param(
    "rateWindowSeconds", 2.0, "window over which an endpoint's completion rate is measured", 1e-3
)
REUSE = plugin.Param(
    "reuseHorizonSeconds",
    5.0,
    "a new copy of a prefix is expected to serve its next requests for this long:"
    " the interference of making it is divided by 1 + prefix rate x horizon",
    0,
)
DECODE = plugin.Param(
    "decodeWeight",
    0.3,
    "price of this request's own decode time there: weight x expected output tokens x"
    " decode step once it joins the batch",
    0,
)
DEFAULT_OUTPUT = plugin.Param(
    "defaultOutputTokens",
    256.0,
    "expected output tokens of a request without max_tokens, until completions teach the mean",
    0,
)
# On by default: no real pool is the fits' H100 (nor is a benchmark fleet on a stretched clock). On the
# fleet the fits do describe, learning ties learning off (bench/results/misspecified.md, h100-prior: peak
# goodput 1.00-1.02x over 3 draws).
SPEED_RATE = plugin.Param(
    "speedLearningRate",
    0.05,
    "weight of each completion in the learned per-endpoint prefill and decode speed (ratio to the p and d"
    " fits); 0 turns learning off and the fits are used as given",
    0,
)
# A TTFT teaches the prefill speed only when the predicted queue wait and decode steps interleaved with the
# prefill are at most this share of the prefill itself: then the first token times the prefill, not parts
# the model may misjudge (a mostly cached prompt's first token is mostly decode steps of other requests).
CLEAN_SHARE = 0.5
# A TPOT from fewer output tokens than this is mostly the first step's noise.
MIN_DECODE_TOKENS = 4
PARAMS = (
    PREFIX_PLUGIN,
    P0,
    P1,
    P2,
    D0,
    D1,
    D2,
    CHUNK,
    DEFAULT_PROMPT,
    NO_ROOM,
    SCALE,
    STALENESS,
    EVICTION,
    INTERFERENCE,
    RATE_WINDOW,
    REUSE,
    DECODE,
    DEFAULT_OUTPUT,
    SPEED_RATE,
)


@plugin.register
class PredictedTTFTScorer(plugin.Scorer):
    """Prefer the endpoint with the lowest predicted time to first token for this request (see cost_model)."""

    type_name = "predicted-ttft-scorer"
    formula = (
        "score = exp(-(cost - min cost) / scale), cost = max(scraped queue, waiting / drain rate, own"
        " fluid queue) + uncached prefill + no-room + eviction + others x excess prefill"
        " + weight x output x decode step"
    )
    intent = "latency (affinity and distribution in one cost)"
    consumes = frozenset({"metrics", "load", "prefix-index"})
    parameter_docs = plugin.documented(PARAMS)

    def __init__(
        self,
        name: str,
        *,
        index: prefix.Index | None = None,
        prices: cost_model.Prices | None = None,
        score_scale_s: float = float(SCALE.default),
        staleness_s: float = float(STALENESS.default),
        rate_window_s: float = float(RATE_WINDOW.default),
        default_output_tokens: float = float(DEFAULT_OUTPUT.default),
        speed_rate: float = float(SPEED_RATE.default),
    ) -> None:
        super().__init__(name)
        self.index = index  # None: nothing is known to be cached anywhere
        self.prices = prices or prices_of({})
        self.score_scale_s = score_scale_s
        self.staleness_s = staleness_s
        self.ledger = pending.Ledger(staleness_s=staleness_s, rate_window_s=rate_window_s)
        self.prefix_rate = learners.PrefixRate()
        self.output_length = learners.OutputLength(default_tokens=default_output_tokens)
        self.speed = learners.EngineSpeed(rate=speed_rate)
        self._samples: dict[str, _Sample] = {}  # request id -> its prediction, until it completes
        # Per cycle: (positions, candidates, prediction) of each prediction, read at the decision.
        self.predictions_key: cycles.StateKey[
            list[tuple[dict[str, int], Sequence[endpoints.EndpointState], cost_model.Prediction]]
        ] = cycles.StateKey("predicted-ttft/predictions")

    @classmethod
    def build(cls, name: str, parameters: plugin.Parameters, handle: plugin.Handle) -> plugin.Plugin:
        values = {param.key: parameters.read(param) for param in PARAMS}
        return cls(
            name,
            index=prefix.index_of(handle, owner=name, plugin_name=values[PREFIX_PLUGIN.key]),
            prices=prices_of(values),
            score_scale_s=values[SCALE.key],
            staleness_s=values[STALENESS.key],
            rate_window_s=values[RATE_WINDOW.key],
            default_output_tokens=values[DEFAULT_OUTPUT.key],
            speed_rate=values[SPEED_RATE.key],
        )

    def _prefix_key(self, cycle: cycles.Cycle) -> int | None:
        """The hash naming this request's longest prefix cached anywhere (None: cached nowhere)."""
        if self.index is None or not self.index.hashes(cycle):
            return None
        depth = int(self.index.matched_blocks(cycle).max(initial=0))
        return self.index.hashes(cycle)[depth - 1] if depth else None

    def predict(self, cycle: cycles.Cycle) -> tuple[np.ndarray, np.ndarray]:
        """Per candidate: the cost in seconds (predicted TTFT plus the priced stall) and uncached tokens."""
        prompt = float(cycle.request.token_count())
        text_chars = len(cycle.request.prompt)
        if self.index is not None and text_chars and self.index.hashes(cycle):
            # Matched characters converted at this request's own characters-per-token estimate.
            matched_chars = self.index.matched_blocks(cycle) * self.index.block_size
            cached = np.minimum(matched_chars * (prompt / text_chars), prompt)
        else:
            cached = np.zeros(len(cycle.candidates))
        columns = cost_model.Columns(
            fresh=cycle.fresh(self.staleness_s),
            waiting=cycle.column("waiting"),
            running=cycle.column("running"),
            kv=cycle.column("kv"),
            kv_capacity_tokens=cycle.column("kv_capacity_tokens"),
            in_flight=cycle.column("in_flight"),
            in_flight_prompt_tokens=cycle.column("in_flight_prompt_tokens"),
            in_flight_decode_tokens=cycle.column("in_flight_decode_tokens"),
        )
        prefill_ratio, decode_ratio = self.speed.ratios(cycle.candidates)
        prediction = cost_model.predict(
            self.prices,
            columns,
            self.ledger.own_load(cycle),
            prompt=prompt,
            cached=cached,
            expected_output=self.output_length.expected(cycle.request),
            prefix_rate=lambda: self.prefix_rate.rate(self._prefix_key(cycle), cycle.now),
            prefill_ratio=prefill_ratio,
            decode_ratio=decode_ratio,
        )
        predictions = cycle.read(self.predictions_key)
        if predictions is None:
            predictions = []
            cycle.write(self.predictions_key, predictions)
        predictions.append((cycle.positions(), cycle.candidates, prediction))
        return prediction.cost, prediction.uncached

    def score(self, cycle: cycles.Cycle) -> np.ndarray:
        cost, _ = self.predict(cycle)
        if cost.size == 0:
            return cost
        scores: np.ndarray = np.exp(-(cost - cost.min()) / self.score_scale_s)
        return scores

    def on_decision(self, cycle: cycles.Cycle, decision: types.Decision) -> None:
        key = self._prefix_key(cycle)
        self.prefix_rate.count(key, cycle.now)
        for endpoint, tokens, service_s in self._charges(cycle, decision):
            self.ledger.charge(
                endpoint, tokens, service_s, now=cycle.now, request_id=cycle.request.request_id
            )
        if self.speed.rate > 0:
            found = self._prediction_at(cycle, decision.prefill or decision.primary)
            if found is not None:
                candidate, prediction, i = found
                predicted = self._predicted(cycle, prediction, i)
                self._remember(cycle.request.request_id, decision, predicted, candidate.endpoint)

    def _prediction_at(
        self, cycle: cycles.Cycle, key: str
    ) -> tuple[endpoints.EndpointState, cost_model.Prediction, int] | None:
        """Endpoint `key`'s candidate state, the prediction made for it this cycle and its position there."""
        for positions, candidates, prediction in cycle.read(self.predictions_key) or []:
            i = positions.get(key)
            if i is not None:
                return candidates[i], prediction, i
        return None

    def _predicted(self, cycle: cycles.Cycle, p: cost_model.Prediction, i: int) -> _Predicted:
        """What the speed learner keeps of candidate `i`'s prediction `p` (where the prefill went)."""
        uncached = float(p.uncached[i])
        sent_s = cost_model.chunk_s(self.prices.fit, uncached, float(cycle.request.token_count()) - uncached)
        return _Predicted(
            sent_s=sent_s,
            wait=float(p.wait[i]),
            prefill_prior=float(p.prefill_prior[i]),
            prefill_fixed=float(p.prefill_prior[i]) - sent_s,
            interleaved=float(p.interleaved[i]),
            step_prior=float(p.step_prior[i]),
        )

    def _remember(
        self,
        request_id: str,
        decision: types.Decision,
        predicted: _Predicted,
        endpoint: endpoints.Endpoint | None,
    ) -> None:
        """For the speed learner: count the prefill work the decision sends, and keep what was predicted
        where it was sent (`endpoint`, the primary; None when unknown here) until its completion teaches."""
        key = decision.prefill or decision.primary
        self.speed.sent(key, predicted.sent_s)
        if decision.prefill is not None:
            return  # a disaggregated request's first token also waits for the KV transfer: it teaches nothing
        samples = self._samples
        if len(samples) >= MAX_SAMPLES:
            del samples[next(iter(samples))]
        group = learners.group_of(endpoint) if endpoint is not None else ""
        samples[request_id] = _Sample(
            endpoint=key, group=group, predicted=predicted, sent_mark=self.speed.sent_total(key)
        )

    def _charges(self, cycle: cycles.Cycle, decision: types.Decision) -> list[tuple[str, float, float]]:
        """What the decision sends where: (endpoint, uncached tokens, predicted service seconds)."""

        def uncached_at(key: str) -> tuple[float, float]:
            found = self._prediction_at(cycle, key)
            if found is not None:
                _candidate, prediction, i = found
                return float(prediction.uncached[i]), float(prediction.service[i])
            tokens = float(cycle.request.token_count())
            return tokens, self.prices.fit.p0 + self.prices.fit.p1 * tokens

        if decision.prefill is not None:
            # The prefill endpoint computes the prompt; the decode endpoint only receives its KV.
            return [(decision.prefill, *uncached_at(decision.prefill)), (decision.primary, 0.0, 0.0)]
        return [(decision.primary, *uncached_at(decision.primary))]

    def share(self, cycle: cycles.Cycle, decision: types.Decision) -> bytes | None:
        key = self._prefix_key(cycle)
        charges = self._charges(cycle, decision)
        # The prefix key (0: none), then per charge its tokens and seconds (the endpoints are the decision's),
        # then, with learning on, the prediction where the prefill went.
        data = _SHARED.pack(key if key is not None else 0, len(charges)) + b"".join(
            _CHARGE.pack(tokens, service_s) for _endpoint, tokens, service_s in charges
        )
        if self.speed.rate <= 0:
            return data
        found = self._prediction_at(cycle, decision.prefill or decision.primary)
        if found is None:
            return data
        _candidate, prediction, i = found
        return data + _PREDICTED.pack(*dataclasses.astuple(self._predicted(cycle, prediction, i)))

    def learn_shared(self, data: bytes, shared: types.SharedDecision) -> None:
        key, count = _SHARED.unpack_from(data)
        self.prefix_rate.count(key or None, shared.now)
        decision = shared.decision
        endpoints = (
            [decision.prefill, decision.primary] if decision.prefill is not None else [decision.primary]
        )
        for i, endpoint in enumerate(endpoints[:count]):
            assert endpoint is not None
            tokens, service_s = _CHARGE.unpack_from(data, _SHARED.size + i * _CHARGE.size)
            self.ledger.charge(
                endpoint, tokens, service_s, now=shared.now, request_id=shared.request.request_id
            )
        offset = _SHARED.size + count * _CHARGE.size
        if self.speed.rate > 0 and len(data) >= offset + _PREDICTED.size:
            predicted = _Predicted(*_PREDICTED.unpack_from(data, offset))
            state = shared.state(decision.primary)
            self._remember(
                shared.request.request_id, decision, predicted, state.endpoint if state is not None else None
            )

    def on_completion(
        self, request: types.Request, decision: types.Decision, completion: types.Completion
    ) -> None:
        self.output_length.learn(request, completion)
        prefilled = completion.ttft_s if completion.ttft_s is not None else completion.duration_s
        self.ledger.settle(request.request_id, prefilled, completion.duration_s)
        sample = self._samples.pop(request.request_id, None)
        if sample is not None:
            self._learn_speed(sample, completion)

    def _learn_speed(self, sample: _Sample, completion: types.Completion) -> None:
        """Teach the speed learner what this request's completion measured against its prediction."""
        ttft = completion.ttft_s
        # Headers' time is no first token: an engine sends them before any token (streamed) or with the
        # whole answer, and learning from it read engines many times too fast or too slow.
        if completion.aborted or completion.status != 200 or ttft is None or not completion.first_token_timed:
            return
        # The prefill's own time: the first token less the predicted wait and interleaved decode steps,
        # against the prefill of the tokens the engine says it computed where it reports its cache hit
        # (the approximate prefix index's misses and false hits are not the engine's speed).
        at = sample.predicted
        prefill_s = at.prefill_prior
        prompt, cached = completion.prompt_tokens, completion.cached_tokens
        if prompt is not None and cached is not None:
            uncached = float(max(prompt - cached, 0))
            prefill_s = at.prefill_fixed + cost_model.chunk_s(self.prices.fit, uncached, float(cached))
        if at.wait + at.interleaved <= CLEAN_SHARE * prefill_s:
            self.speed.learn(
                sample.endpoint,
                sample.group,
                "prefill",
                predicted_s=prefill_s,
                observed_s=ttft - at.wait - at.interleaved,
            )
        tokens = completion.completion_tokens or 0
        if tokens < MIN_DECODE_TOKENS:
            return
        # The decode steps also ran the prefill chunks of requests sent there after this one (a mixed step
        # costs its decode plus its chunks): their predicted time, at the learned prefill speed, is not
        # this request's decode.
        others = self.speed.sent_total(sample.endpoint) - sample.sent_mark
        prefill_ratio = self.speed.ratio(sample.endpoint, sample.group, "prefill")
        decode_s = completion.duration_s - ttft - others * prefill_ratio
        if decode_s > 0:
            self.speed.learn(
                sample.endpoint,
                sample.group,
                "decode",
                predicted_s=at.step_prior,
                observed_s=decode_s / (tokens - 1),
            )


def prices_of(values: dict[str, object]) -> cost_model.Prices:
    """The cost model's prices from parameter values (declared defaults for missing keys)."""

    def get(param: plugin.Param) -> float:
        value = values.get(param.key, param.default)
        assert isinstance(value, int | float), f"{param.key} is not a number"
        return float(value)

    fit = step_fit.StepFit(p0=get(P0), p1=get(P1), p2=get(P2), d0=get(D0), d1=get(D1), d2=get(D2))
    return cost_model.Prices(
        fit=fit,
        chunk_tokens=int(get(CHUNK)),
        default_prompt_tokens=get(DEFAULT_PROMPT),
        no_room_s=get(NO_ROOM),
        eviction_weight=get(EVICTION),
        interference_weight=get(INTERFERENCE),
        reuse_horizon_s=get(REUSE),
        decode_weight=get(DECODE),
    )
