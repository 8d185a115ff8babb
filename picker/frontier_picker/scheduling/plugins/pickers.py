"""Pickers: turn the weighted scores of the candidates into a primary endpoint and its fallbacks.

The fallbacks go to the proxy after the primary (`x-gateway-destination-endpoint: a,b,c`) and are tried when
the primary fails, so they are the next best, not random.
"""

import itertools

import numpy as np

from frontier_picker.scheduling.framework import cycles, plugin

TIE = 1e-9  # scores closer than this are equal (weighted sums of floats differ in the last bits)


class _CountingPicker(plugin.Picker):
    """A picker returning `maxNumOfEndpoints` endpoints when configured, else what the scheduler asks for."""

    parameter_docs = {
        "maxNumOfEndpoints": "endpoints returned, primary included (1 + the picker's --fallbacks)"
    }

    def __init__(self, name: str, *, max_endpoints: int | None = None) -> None:
        super().__init__(name)
        self.max_endpoints = max_endpoints

    @classmethod
    def build(cls, name: str, parameters: plugin.Parameters, handle: plugin.Handle) -> plugin.Plugin:
        given = parameters.raw("maxNumOfEndpoints", None)
        count = None if given is None else parameters.integer("maxNumOfEndpoints", 1, minimum=1)
        return cls(name, max_endpoints=count)

    def wanted(self, count: int, candidates: int) -> int:
        """How many endpoints to return: `maxNumOfEndpoints` when configured, else `count`, at most all."""
        return min(self.max_endpoints or count, candidates)


@plugin.register
class MaxScorePicker(_CountingPicker):
    """Pick the highest score; equal scores are broken at random so equal endpoints share the load."""

    type_name = "max-score-picker"
    formula = "primary = argmax(score), random among ties; fallbacks = next best"
    intent = "exploitation"

    def pick(self, cycle: cycles.Cycle, scores: np.ndarray, count: int) -> list[int]:
        count = self.wanted(count, scores.size)
        if count <= 0:
            return []
        best = scores.max()
        if count == 1:
            ties = np.flatnonzero(scores >= best - TIE)
            return [int(ties[cycle.rng.integers(ties.size)]) if ties.size > 1 else int(ties[0])]
        rounded = np.round(scores / TIE) * TIE
        order = np.lexsort((cycle.rng.random(scores.size), -rounded))
        return [int(i) for i in order[:count]]


@plugin.register
class WeightedRandomPicker(_CountingPicker):
    """Pick at random with probability proportional to score (spreads load, keeps a preference)."""

    type_name = "weighted-random-picker"
    formula = "P(endpoint) = score / sum(score); all zero -> uniform; fallbacks drawn without replacement"
    intent = "exploration"

    def pick(self, cycle: cycles.Cycle, scores: np.ndarray, count: int) -> list[int]:
        count = self.wanted(count, scores.size)
        if count <= 0:
            return []
        weights = np.clip(scores, 0.0, None)
        positive = int(np.count_nonzero(weights))
        if positive == 0:
            chosen = cycle.rng.choice(scores.size, size=count, replace=False)
            return [int(i) for i in chosen]
        first = cycle.rng.choice(
            scores.size, size=min(count, positive), replace=False, p=weights / weights.sum()
        )
        picked = [int(i) for i in first]
        if len(picked) < count:
            rest = [i for i in cycle.rng.permutation(scores.size).tolist() if i not in set(picked)]
            picked.extend(rest[: count - len(picked)])
        return picked


@plugin.register
class RandomPicker(_CountingPicker):
    """Pick uniformly at random, ignoring scores (a baseline)."""

    type_name = "random-picker"
    formula = "uniform over candidates; fallbacks drawn without replacement"
    intent = "baseline"

    def pick(self, cycle: cycles.Cycle, scores: np.ndarray, count: int) -> list[int]:
        count = self.wanted(count, scores.size)
        return [int(i) for i in cycle.rng.choice(scores.size, size=count, replace=False)] if count > 0 else []


@plugin.register
class RoundRobinPicker(_CountingPicker):
    """Take the candidates in turn, per target model, ignoring scores (the round-robin baseline)."""

    type_name = "round-robin-picker"
    formula = "primary = candidates[turn % n], turn counted per target model; fallbacks = the next ones"
    intent = "baseline"

    def __init__(self, name: str, *, max_endpoints: int | None = None) -> None:
        super().__init__(name, max_endpoints=max_endpoints)
        self._turns: dict[str, itertools.count[int]] = {}

    def pick(self, cycle: cycles.Cycle, scores: np.ndarray, count: int) -> list[int]:
        size = scores.size
        count = self.wanted(count, size)
        if count <= 0:
            return []
        model = cycle.request.target_model
        turns = self._turns.get(model)
        if turns is None:
            if len(self._turns) >= 4096:  # model names come from clients: keep the table bounded
                self._turns.clear()
            turns = self._turns[model] = itertools.count()
        start = next(turns) % size
        return [(start + i) % size for i in range(count)]
