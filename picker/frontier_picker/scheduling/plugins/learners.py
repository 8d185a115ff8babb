"""What the `frontier` cost model learns from traffic besides the pending ledger: how often a prefix is
requested, how long answers are, and how fast each endpoint's engine runs.

- `PrefixRate`: requests per second recently sent with a given prefix (a count decayed with time constant
  `TAU_S`), so a new copy of a hot prefix is priced as serving its next requests too.
- `OutputLength`: answers often stop before `max_tokens`; the share of `max_tokens` that completed answers
  used (and their mean length when `max_tokens` is absent), learned as running means.
- `EngineSpeed`: per endpoint, how many times slower than the calibrated prior fit its prefill and its decode
  steps run (the *ratio*; 1 = as the prior says, 2 = twice as slow), learned from completions: a TTFT
  observed against the prefill the cost model predicted for it, a TPOT against the decode step it predicted
  (less the prefill of requests sent there after it, whose chunks ran between its decode steps: without
  that, decode on the calibrated fleet read ~1.2x slow).
  Each ratio is an exponentially weighted mean of log(observed / predicted), each observation clipped to
  within `CLIP`x of the current estimate (one outlier, a request stuck behind a preemption, moves it little;
  a fleet 3x slower than the prior is still learned in a few completions). An endpoint with few samples
  borrows its group's ratio (endpoints with the same pool role, tier, model and GPU labels run the same
  engine), weighted by samples: `log ratio = (n x own + SHRINK x group) / (n + SHRINK)`; a group's ratio
  is pulled towards the prior (log ratio 0) by one pseudo-sample only (`PRIOR_SAMPLES`): the prior is a
  guess about an engine nobody described, and a slow fleet mispriced while the ratio crawls up queues.
"""

import dataclasses
import math
import operator
import typing
from collections.abc import Iterator, Sequence

import numpy as np

from frontier_api import names
from frontier_picker import endpoints
from frontier_picker.scheduling import types

# Weight of each completion in the running means of output length (about the last 50 count).
OUTPUT_LEARNING_RATE = 0.02


class PrefixRate:
    """Decayed request counts per prefix hash; pruned of prefixes idle for several time constants."""

    TAU_S = 10.0
    MAX_ENTRIES = 65_536

    def __init__(self) -> None:
        self._counts: dict[int, tuple[float, float]] = {}

    def rate(self, key: int | None, now: float) -> float:
        """Requests per second recently sent with prefix `key` (0 for None: cached nowhere)."""
        if key is None:
            return 0.0
        count, last = self._counts.get(key, (0.0, now))
        return count * math.exp(-(now - last) / self.TAU_S) / self.TAU_S

    def count(self, key: int | None, now: float) -> None:
        """One more request with prefix `key` at `now`."""
        if key is None:
            return
        counts = self._counts
        counts[key] = (self.rate(key, now) * self.TAU_S + 1.0, now)
        if len(counts) > self.MAX_ENTRIES:
            idle_since = now - 5 * self.TAU_S
            self._counts = {k: v for k, v in counts.items() if v[1] >= idle_since}


class OutputLength:
    """Expected output tokens of a request, learned from completed answers."""

    def __init__(self, *, default_tokens: float) -> None:
        self._ratio = 1.0  # output tokens / max_tokens
        self._mean = default_tokens  # output tokens when max_tokens is absent

    def expected(self, request: types.Request) -> float:
        """`max_tokens` times the learned share, or the learned mean without `max_tokens`."""
        if request.max_tokens:
            return request.max_tokens * self._ratio
        return self._mean

    def learn(self, request: types.Request, completion: types.Completion) -> None:
        """Learn from a completed answer (aborted, failed or empty answers teach nothing)."""
        tokens = completion.completion_tokens
        if completion.aborted or completion.status != 200 or not tokens:
            return
        if request.max_tokens:
            ratio = min(1.0, tokens / request.max_tokens)
            self._ratio += OUTPUT_LEARNING_RATE * (ratio - self._ratio)
        else:
            self._mean += OUTPUT_LEARNING_RATE * (tokens - self._mean)


PHASES = ("prefill", "decode")
_KEY = operator.attrgetter("endpoint.key")
_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)


@dataclasses.dataclass(slots=True)
class _Ratio:
    """An exponentially weighted mean of log(observed / predicted) and the samples it has seen."""

    log: float = 0.0
    samples: int = 0

    def learn(self, log_ratio: float, rate: float) -> None:
        self.samples += 1
        # The first samples average evenly (no pull towards the starting 0), later ones at `rate`.
        self.log += max(rate, 1.0 / self.samples) * (log_ratio - self.log)


def _pooled(own: _Ratio, prior: float, shrink: float) -> float:
    return (own.samples * own.log + shrink * prior) / (own.samples + shrink)


class EngineSpeed:
    """Per endpoint and phase (`PHASES`), the engine's step-time ratio to the prior fit (see module doc)."""

    CLIP = 4.0
    SHRINK = 4.0
    PRIOR_SAMPLES = 1.0
    GROUP_TOLERANCE = 0.01

    def __init__(self, *, rate: float) -> None:
        self.rate = rate  # 0: learn nothing, every ratio stays 1 (the prior)
        self._own: dict[tuple[str, str], _Ratio] = {}  # (endpoint key, phase)
        self._groups: dict[tuple[str, str], _Ratio] = {}  # (group, phase)
        self._group_of: dict[str, str] = {}
        # Per endpoint key: (prefill ratio, decode ratio), computed when a cycle first needs it and dropped
        # when its own fit moves, or its group's moves by more than `GROUP_TOLERANCE` (log) since last.
        self._ratios: dict[str, tuple[float, float]] = {}
        self._members: dict[str, set[str]] = {}  # group -> endpoint keys with a cached ratio
        self._group_cached: dict[tuple[str, str], float] = {}  # (group, phase) -> its log at last drop
        self._sent: dict[str, float] = {}  # endpoint key -> prefill work sent there so far (prior seconds)

    def sent(self, key: str, prefill_s: float) -> None:
        """Count prefill work (seconds at the prior fit) sent to endpoint `key`: the chunks of it that run
        between another request's decode steps lengthen that request's TPOT, and are not its decode."""
        self._sent[key] = self._sent.get(key, 0.0) + prefill_s

    def sent_total(self, key: str) -> float:
        """Prefill work sent to `key` so far (a running total: two readings bound a window)."""
        return self._sent.get(key, 0.0)

    def _log_ratio(self, key: str, group: str, phase: str) -> float:
        group_fit = self._groups.get((group, phase))
        shared = _pooled(group_fit, 0.0, self.PRIOR_SAMPLES) if group_fit else 0.0
        own = self._own.get((key, phase))
        return _pooled(own, shared, self.SHRINK) if own else shared

    def ratio(self, key: str, group: str, phase: str) -> float:
        """The endpoint's step-time ratio to the prior in `phase` (its group's while it has few samples)."""
        return math.exp(self._log_ratio(key, group, phase))

    def ratios(self, candidates: Sequence[endpoints.EndpointState]) -> tuple[np.ndarray, np.ndarray]:
        """Per candidate: (prefill ratio, decode ratio); ones until something was learned. Runs on every
        scheduling pass: C-level maps over the candidates, Python only for endpoints not seen since their
        ratio last moved."""
        n = len(candidates)
        if not self._groups:
            return np.ones(n), np.ones(n)
        known = self._ratios
        cached = list(map(known.get, map(_KEY, candidates)))
        found: list[tuple[float, float]] = (
            [pair or self._cache(state.endpoint) for pair, state in zip(cached, candidates, strict=True)]
            if None in cached
            else typing.cast(list[tuple[float, float]], cached)
        )
        prefill = np.fromiter(map(_FIRST, found), dtype=np.float64, count=n)
        decode = np.fromiter(map(_SECOND, found), dtype=np.float64, count=n)
        return prefill, decode

    def _cache(self, endpoint: endpoints.Endpoint) -> tuple[float, float]:
        key = endpoint.key
        group = self._group_of.setdefault(key, group_of(endpoint))
        self._members.setdefault(group, set()).add(key)
        found = self._ratios[key] = (self.ratio(key, group, "prefill"), self.ratio(key, group, "decode"))
        return found

    def learn(self, key: str, group: str, phase: str, *, predicted_s: float, observed_s: float) -> None:
        """One observation: the endpoint took `observed_s` where the prior fit predicted `predicted_s`."""
        if self.rate <= 0 or predicted_s <= 0 or not math.isfinite(observed_s):
            return
        self._group_of[key] = group
        bound = math.log(self.CLIP)
        current = self._log_ratio(key, group, phase)
        observed = math.log(max(observed_s, 1e-9) / predicted_s)
        clipped = min(max(observed, current - bound), current + bound)
        for table, name in ((self._own, key), (self._groups, group)):
            fit = table.get((name, phase))
            if fit is None:
                fit = table[(name, phase)] = _Ratio()
            fit.learn(clipped, self.rate)
        self._ratios.pop(key, None)
        # The group's change moves every endpoint that borrows from it: recomputed lazily, when it matters.
        group_log = self._groups[(group, phase)].log
        if abs(group_log - self._group_cached.get((group, phase), 0.0)) > self.GROUP_TOLERANCE:
            self._group_cached[(group, phase)] = group_log
            for member in self._members.pop(group, ()):
                self._ratios.pop(member, None)

    def learned(self) -> Iterator[tuple[str, str, float, int]]:
        """(endpoint key, phase, ratio, own samples) of every endpoint that has learned something."""
        for (key, phase), fit in list(self._own.items()):
            yield key, phase, self.ratio(key, self._group_of.get(key, ""), phase), fit.samples


def group_of(endpoint: endpoints.Endpoint) -> str:
    """The endpoints that run the same engine: same role, tier, model and accelerator labels."""
    labels = endpoint.labels
    return "/".join(
        labels.get(label, "")
        for label in (names.ROLE_LABEL, names.TIER_LABEL, names.MODEL_LABEL, names.GKE_ACCELERATOR_LABEL)
    )
