"""Pickers: max-score (random tie-break, fallbacks next best) and weighted-random."""

import collections

import numpy as np

from frontier_picker.scheduling.framework import cycles
from frontier_picker.scheduling.plugins import pickers

from . import fleet


def cycle(n: int, seed: int = 0) -> cycles.Cycle:
    states = [fleet.state(i) for i in range(n)]
    return cycles.Cycle(fleet.request(), fleet.snapshot(states), rng=np.random.default_rng(seed))


def test_max_score_picks_the_best_and_orders_fallbacks_by_score():
    scores = np.array([0.2, 0.9, 0.5, 0.7])
    assert pickers.MaxScorePicker("m").pick(cycle(4), scores, 3) == [1, 3, 2]
    assert pickers.MaxScorePicker("m", max_endpoints=2).pick(cycle(4), scores, 5) == [1, 3]


def test_max_score_breaks_ties_at_random():
    scores = np.array([1.0, 0.3, 1.0 - 1e-12, 1.0])
    c = cycle(4)
    seen = collections.Counter(pickers.MaxScorePicker("m").pick(c, scores, 1)[0] for _ in range(300))
    assert set(seen) == {0, 2, 3}
    assert min(seen.values()) > 60
    firsts = collections.Counter(tuple(pickers.MaxScorePicker("m").pick(c, scores, 3)) for _ in range(100))
    assert all(1 not in picked for picked in firsts)
    assert len(firsts) > 1


def test_max_score_with_one_endpoint_and_more_fallbacks_than_endpoints():
    assert pickers.MaxScorePicker("m").pick(cycle(1), np.array([0.0]), 3) == [0]


def test_weighted_random_follows_the_scores_and_never_repeats():
    c = cycle(3)
    scores = np.array([0.0, 1.0, 3.0])
    counts = collections.Counter(pickers.WeightedRandomPicker("w").pick(c, scores, 1)[0] for _ in range(4000))
    assert counts[0] == 0
    assert 0.2 < counts[1] / 4000 < 0.3
    picks = pickers.WeightedRandomPicker("w").pick(c, scores, 3)
    assert sorted(picks) == [0, 1, 2]
    assert picks[2] == 0  # the zero-score endpoint only as the last fallback


def test_weighted_random_with_all_zero_scores_is_uniform():
    c = cycle(4)
    counts = collections.Counter(
        pickers.WeightedRandomPicker("w").pick(c, np.zeros(4), 1)[0] for _ in range(2000)
    )
    assert set(counts) == {0, 1, 2, 3}
    assert min(counts.values()) > 350
