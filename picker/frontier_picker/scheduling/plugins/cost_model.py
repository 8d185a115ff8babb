"""The `frontier` profile's cost: predicted time to first token plus what the choice costs everyone else.

A pure function of column arrays (`predict`); the scorer plugin (`cost.py`) gathers the columns from the
cycle, the pending ledger (`pending.py`) and the learners (`learners.py`).

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
running a Llama-3.1-8B-shaped model (`frontier_api.step_fit`, pinned to the simulator's calibration), the
prior. Every term is in seconds of the clock the picker lives on, so a wrong speed skews the fluid queue
first: it drains on the picker's clock (measured: engines running 2x slower than the fit, unique 7,200-token
prompts, TTFT p90 33% above round-robin's). So each candidate's p terms are multiplied by its learned
`prefill_ratio` and its d terms by its `decode_ratio` (`learners.EngineSpeed`, taught by completions against
the `Prediction` parts made here); both are 1 until something is learned, or with learning off.

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

import dataclasses
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from frontier_api import step_fit
from frontier_picker.scheduling.plugins import pending

Tokens = TypeVar("Tokens", float, np.ndarray)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Prices:
    """The step-time fit of the pool's engines and the weights of the cost (seconds, tokens; see the module
    doc)."""

    fit: step_fit.StepFit
    chunk_tokens: int
    default_prompt_tokens: float
    no_room_s: float
    eviction_weight: float
    interference_weight: float
    reuse_horizon_s: float
    decode_weight: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Columns:
    """Per candidate endpoint: scraped metrics (`fresh` says which are recent enough to use) and the
    picker's own in-flight accounting."""

    fresh: np.ndarray
    waiting: np.ndarray
    running: np.ndarray
    kv: np.ndarray
    kv_capacity_tokens: np.ndarray
    in_flight: np.ndarray
    in_flight_prompt_tokens: np.ndarray
    in_flight_decode_tokens: np.ndarray


@dataclasses.dataclass(frozen=True, slots=True)
class Prediction:
    """Per candidate: the cost (seconds), the uncached prompt tokens, the predicted prefill service time, and
    what the speed learner compares with the request's completion: the predicted queue wait, the prefill's
    own time at the prior fit (ratio 1; without p0 beside running decodes, as a mixed step reads the
    weights once), its decode part (steps interleaved with the chunks,
    plus half a step: on average the request arrives mid-step), and the decode step once it joins the batch
    at the prior fit."""

    cost: np.ndarray
    uncached: np.ndarray
    service: np.ndarray
    wait: np.ndarray
    prefill_prior: np.ndarray
    interleaved: np.ndarray
    step_prior: np.ndarray


def chunk_s(fit: step_fit.StepFit, uncached: Tokens, cached: Tokens) -> Tokens:
    """Prefill of `uncached` new tokens over `cached` ones at `fit`, without the fixed p0: what it adds to
    a step that runs anyway."""
    return fit.p1 * uncached + fit.p2 * uncached * (cached + uncached / 2)


def predict(
    prices: Prices,
    columns: Columns,
    own: pending.OwnLoad,
    *,
    prompt: float,
    cached: np.ndarray,
    expected_output: float,
    prefix_rate: Callable[[], float],
    prefill_ratio: np.ndarray | float = 1.0,
    decode_ratio: np.ndarray | float = 1.0,
) -> Prediction:
    """Per candidate: the cost in seconds and its parts (`Prediction`). `prefill_ratio` and `decode_ratio`
    scale the p and d terms per candidate (the learned speed of its engine). `prefix_rate` is called only
    when the interference term needs it."""
    fit = prices.fit
    p1 = fit.p1 * prefill_ratio
    uncached = prompt - cached
    waiting = columns.waiting
    fresh = columns.fresh
    in_flight = columns.in_flight
    mean_uncached = np.where(
        own.requests > 0, own.tokens / np.maximum(own.requests, 1), prices.default_prompt_tokens
    )
    ahead = np.where(fresh, waiting * mean_uncached + own.recent_tokens, own.tokens)
    running = columns.running
    batch = np.where(fresh, running, in_flight)
    # Mean context of a running sequence: its prompt plus, on average, half its answer so far.
    per_request = np.maximum(in_flight, 1)
    context = (columns.in_flight_prompt_tokens + columns.in_flight_decode_tokens / 2) / per_request
    context = np.where(in_flight > 0, context, prices.default_prompt_tokens)
    decode_step = np.where(
        batch > 0, (fit.d0 + fit.d1 * batch + fit.d2 * batch * context) * decode_ratio, 0.0
    )
    # Queue wait: the prefill work ahead, or, when the engine admits slower than that (its sequence or
    # KV limit is reached), the waiting requests over the rate it has been finishing requests (Little).
    prefill_wait = p1 * ahead + np.ceil(ahead / prices.chunk_tokens) * decode_step
    drain_rate = own.drain_rate
    admission_wait = np.where(fresh & (drain_rate > 0), waiting / np.maximum(drain_rate, 1e-9), 0.0)
    prefill_prior = fit.p0 + chunk_s(fit, uncached, cached)
    chunks = np.ceil(uncached / prices.chunk_tokens)
    service = prefill_prior * prefill_ratio + chunks * decode_step
    # `backlog` (own decisions) also sees prefills already admitted, which the scraped counts miss.
    wait = np.maximum(np.maximum(prefill_wait, admission_wait), own.backlog)
    cost = wait + service
    # Every sequence running, waiting or sent there shares each decode step with this one.
    sharing = np.maximum(np.where(fresh, running + waiting, 0.0), in_flight)
    step_prior = fit.d0 + fit.d1 * (sharing + 1) + fit.d2 * (sharing * context + prompt)
    if prices.decode_weight:
        cost = cost + prices.decode_weight * expected_output * step_prior * decode_ratio
    capacity = columns.kv_capacity_tokens
    kv = np.where(fresh, columns.kv, 0.0)
    free = np.where(capacity > 0, (1.0 - kv) * capacity, np.where(kv >= 0.98, 0.0, np.inf))
    cost = cost + np.where(uncached + ahead > free, prices.no_room_s, 0.0)
    # New KV blocks on a busy cache displace other prompts' cached blocks: price their recomputation.
    cost = cost + prices.eviction_weight * p1 * uncached * kv
    # Every sequence running or waiting there stalls while tokens are computed; only the tokens beyond
    # the least this prompt needs anywhere are a choice (a miss where another endpoint has a hit).
    excess = uncached - uncached.min() if uncached.size else uncached
    if excess.any():  # otherwise every candidate needs the same tokens and the term is zero
        others = np.where(fresh, running + waiting, in_flight)
        # A copy made now serves this prefix's next requests too: the stall is shared among them.
        reuse = 1.0 + prefix_rate() * prices.reuse_horizon_s
        cost = cost + prices.interference_weight * others * p1 * excess / reuse
    interleaved = (chunks + 0.5) * decode_step
    return Prediction(
        cost=cost,
        uncached=uncached,
        service=service,
        wait=wait,
        prefill_prior=np.where(batch > 0, prefill_prior - fit.p0, prefill_prior),
        interleaved=interleaved,
        step_prior=step_prior,
    )
