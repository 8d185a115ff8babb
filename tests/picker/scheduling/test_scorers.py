"""Scorer formulas, including the edge cases: no metrics, all equal, one endpoint."""

import base64

import numpy as np
import pytest

from frontier_picker.scheduling.framework import cycles
from frontier_picker.scheduling.plugins import scorers

from . import fleet


def cycle(states, request=None) -> cycles.Cycle:
    return cycles.Cycle(request or fleet.request(), fleet.snapshot(states), rng=np.random.default_rng(0))


def test_queue_scorer_is_min_max_normalised_inverse_waiting():
    states = [fleet.state(0, waiting=0), fleet.state(1, waiting=2), fleet.state(2, waiting=4)]
    assert scorers.QueueScorer("q").score(cycle(states)).tolist() == [1.0, 0.5, 0.0]


@pytest.mark.parametrize(
    "scorer", [scorers.QueueScorer("q"), scorers.RunningRequestsScorer("r"), scorers.InflightLoadScorer("i")]
)
def test_load_scorers_give_one_to_all_when_all_equal_or_alone(scorer):
    equal = [fleet.state(i, waiting=3, running=3, in_flight=3) for i in range(3)]
    assert scorer.score(cycle(equal)).tolist() == [1.0, 1.0, 1.0]
    assert scorer.score(cycle([fleet.state(0, waiting=9, running=9, in_flight=9)])).tolist() == [1.0]


def test_running_and_inflight_scorers_prefer_the_smaller_load():
    states = [fleet.state(0, running=8, in_flight=1), fleet.state(1, running=4, in_flight=3)]
    assert scorers.RunningRequestsScorer("r").score(cycle(states)).tolist() == [0.0, 1.0]
    assert scorers.InflightLoadScorer("i").score(cycle(states)).tolist() == [1.0, 0.0]


def test_kv_scorer_is_one_minus_usage_and_one_without_metrics():
    states = [fleet.state(0, kv=0.25), fleet.state(1, kv=1.0)]
    assert scorers.KVCacheUtilizationScorer("kv").score(cycle(states)).tolist() == [0.75, 0.0]
    no_metrics = [fleet.state(0, age=float("inf"))]
    assert scorers.KVCacheUtilizationScorer("kv").score(cycle(no_metrics)).tolist() == [1.0]


def test_lora_affinity_prefers_running_then_queued_then_free_slot():
    states = [
        fleet.state(0, running_loras=frozenset({"a"}), max_loras=1),
        fleet.state(1, waiting_loras=frozenset({"a"}), max_loras=1),
        fleet.state(2, running_loras=frozenset({"b"}), max_loras=2),
        fleet.state(3, running_loras=frozenset({"b"}), max_loras=1),
        fleet.state(4),
    ]
    scores = scorers.LoraAffinityScorer("l").score(cycle(states, fleet.request(lora_adapter="a")))
    assert scores.tolist() == [1.0, 0.8, 0.6, 0.0, 0.0]


def test_lora_affinity_is_neutral_without_an_adapter():
    states = [fleet.state(0, running_loras=frozenset({"a"})), fleet.state(1)]
    assert scorers.LoraAffinityScorer("l").score(cycle(states)).tolist() == [1.0, 1.0]


def test_session_affinity_reads_base64_endpoint_tokens():
    states = [fleet.state(i) for i in range(3)]
    token = base64.b64encode(fleet.key(2).encode()).decode()
    scores = scorers.SessionAffinityScorer("s").score(cycle(states, fleet.request(session_token=token)))
    assert scores.tolist() == [0.0, 0.0, 1.0]


def test_session_affinity_is_zero_for_unknown_sessions_and_requests_without_one():
    states = [fleet.state(i) for i in range(2)]
    scorer = scorers.SessionAffinityScorer("s")
    assert scorer.score(cycle(states, fleet.request(session_token="not-seen-@"))).tolist() == [0.0, 0.0]
    assert scorer.score(cycle(states)).tolist() == [0.0, 0.0]
