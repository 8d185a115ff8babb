"""The pending ledger of the `frontier` cost: what this picker sent each endpoint and has not seen finish.

Scraped metrics lag and miss work the engine already admitted; the picker's own decisions do not. Per
endpoint the ledger keeps the uncached prompt tokens and requests in flight, the sends since the last scrape
(not yet in its waiting count), completions in the last `rate_window_s` (the drain rate), and a *fluid prefill
queue*: each send adds its predicted prefill time after the predicted end of the previous one
(`busy_until`); a request whose first token comes before its predicted prefill end pulls the whole queue
forward, and one whose first token comes after it pushes the queue back (the engine is slower than
predicted: what was sent after it is late too).
"""

import collections
import contextlib
import dataclasses

import numpy as np

from frontier_picker.scheduling.framework import cycles

# Fewer completions than this in the window give no drain rate: a rate from a handful is noise.
MIN_COMPLETIONS_FOR_RATE = 8


@dataclasses.dataclass(slots=True)
class _Pending:
    """The prefill work this picker sent to one endpoint and has not seen finish."""

    uncached_tokens: float = 0.0
    requests: int = 0
    recent: collections.deque[tuple[float, float]] = dataclasses.field(default_factory=collections.deque)
    recent_tokens: float = 0.0  # sum of the tokens in `recent`
    busy_until: float = 0.0  # when the prefills this picker sent there are predicted to be done
    advanced: float = 0.0  # net time `busy_until` was pulled in (negative: pushed back) by settled requests
    finished: collections.deque[float] = dataclasses.field(default_factory=collections.deque)


@dataclasses.dataclass(frozen=True, slots=True)
class OwnLoad:
    """Per candidate, from the ledger: in-flight uncached tokens and requests, tokens sent since the last
    scrape, completions per second over the window, and the predicted prefill backlog (seconds)."""

    tokens: np.ndarray
    requests: np.ndarray
    recent_tokens: np.ndarray
    drain_rate: np.ndarray
    backlog: np.ndarray


class Ledger:
    """Pending prefill work per endpoint key, charged at decisions and settled at completions."""

    def __init__(self, *, staleness_s: float, rate_window_s: float) -> None:
        self.staleness_s = staleness_s
        self.rate_window_s = rate_window_s
        self._pending: dict[str, _Pending] = {}
        # request id -> (endpoint, (sent at, tokens), predicted prefill end, endpoint's `advanced` then)
        self._requests: dict[str, list[tuple[str, tuple[float, float], float, float]]] = {}

    def own_load(self, cycle: cycles.Cycle) -> OwnLoad:
        """The ledger's columns over `cycle`'s candidates (dropping endpoints with nothing left to track)."""
        n = len(cycle.candidates)
        inflight_tokens = np.zeros(n)
        inflight_requests = np.zeros(n)
        recent_tokens = np.zeros(n)
        drain_rate = np.zeros(n)
        backlog = np.zeros(n)
        if not self._pending:
            return OwnLoad(inflight_tokens, inflight_requests, recent_tokens, drain_rate, backlog)
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
        return OwnLoad(inflight_tokens, inflight_requests, recent_tokens, drain_rate, backlog)

    def charge(self, key: str, tokens: float, service_s: float, *, now: float, request_id: str) -> None:
        """Record a send of `tokens` uncached tokens predicted to take `service_s` to prefill at `key`."""
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

    def settle(self, request_id: str, prefilled_s: float, duration_s: float) -> None:
        """The request's first token came `prefilled_s` and its end `duration_s` after it was sent: correct
        the prefill queue by it and take it out of every queue it was in."""
        for key, sent, done_at, advanced in self._requests.pop(request_id, ()):
            pending = self._pending.get(key)
            if pending is None:
                continue
            # Its first token marks its prefill's end: everything queued behind it was predicted relative to
            # that, so the whole predicted backlog moves by the difference, forward or back.
            early = done_at - (pending.advanced - advanced) - (sent[0] + prefilled_s)
            pending.busy_until -= early
            pending.advanced += early
            now = sent[0] + duration_s
            pending.finished.append(now)
            # A finished request is in no queue, even if no scrape has seen it yet.
            with contextlib.suppress(ValueError):
                pending.recent.remove(sent)
                pending.recent_tokens = pending.recent_tokens - sent[1] if pending.recent else 0.0
            pending.uncached_tokens = max(0.0, pending.uncached_tokens - sent[1])
            pending.requests = max(0, pending.requests - 1)
            if pending.requests == 0 and not pending.recent and not pending.finished:
                del self._pending[key]
