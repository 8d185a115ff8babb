"""What the `frontier` cost model learns from traffic besides the pending ledger: how often a prefix is
requested, and how long answers are.

- `PrefixRate`: requests per second recently sent with a given prefix (a count decayed with time constant
  `TAU_S`), so a new copy of a hot prefix is priced as serving its next requests too.
- `OutputLength`: answers often stop before `max_tokens`; the share of `max_tokens` that completed answers
  used (and their mean length when `max_tokens` is absent), learned as running means.
"""

import math

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
