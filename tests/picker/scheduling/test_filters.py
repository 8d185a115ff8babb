"""Filters: saturation (queue, KV, staleness; never an empty result), staleness alone, model/LoRA
availability, P/D roles."""

import numpy as np

from frontier_api import names
from frontier_picker.scheduling.framework import cycles, plugin, saturation
from frontier_picker.scheduling.plugins import filters

from . import fleet


def run(stage: plugin.Filter, states, request=None) -> list[str]:
    cycle = cycles.Cycle(request or fleet.request(), fleet.snapshot(states), rng=np.random.default_rng(0))
    return [state.endpoint.key for state in stage.filter(cycle, cycle.candidates)]


def test_saturation_filter_drops_long_queues_full_kv_and_stale_metrics():
    states = [
        fleet.state(0, waiting=4, kv=0.79),
        fleet.state(1, waiting=5),
        fleet.state(2, kv=0.8),
        fleet.state(3, age=0.2),
        fleet.state(4, age=float("inf")),  # never scraped
    ]
    assert run(filters.SaturationFilter("s"), states) == [fleet.key(0)]


def test_saturation_filter_keeps_everything_when_all_are_stale_or_saturated():
    stale = [fleet.state(i, age=5.0) for i in range(3)]
    assert run(filters.SaturationFilter("s"), stale) == [fleet.key(i) for i in range(3)]
    one_saturated = [fleet.state(0, waiting=50)]
    assert run(filters.SaturationFilter("s"), one_saturated) == [fleet.key(0)]


def test_saturation_filter_thresholds_are_configurable():
    stage = filters.SaturationFilter("s", thresholds=saturation.Thresholds(queue_depth=2, staleness_s=1.0))
    states = [fleet.state(0, waiting=2), fleet.state(1, waiting=1, age=0.5)]
    assert run(stage, states) == [fleet.key(1)]


def test_stale_filter_drops_only_stale_endpoints_and_never_empties_the_set():
    stage = filters.StaleFilter("f")
    busy = fleet.state(0, waiting=50, kv=0.99)
    stale = fleet.state(1, age=0.5)
    fresh = fleet.state(2)
    assert run(stage, [busy, stale, fresh]) == [fleet.key(0), fleet.key(2)]  # busy is the scorers' job
    all_stale = [fleet.state(0, age=9.0), fleet.state(1, age=0.3)]
    assert run(stage, all_stale) == [fleet.key(0), fleet.key(1)]
    assert run(filters.StaleFilter("f", staleness_s=1.0), all_stale) == [fleet.key(1)]


def test_model_filter_keeps_endpoints_serving_the_target_model():
    states = [
        fleet.state(0, labels={names.MODEL_LABEL: "llama"}),
        fleet.state(1, labels={names.MODEL_LABEL: "qwen"}),
        fleet.state(2),  # unlabelled: serves whatever it is asked
    ]
    assert run(filters.ModelFilter("m"), states) == [fleet.key(0), fleet.key(2)]
    rewritten = fleet.request(model="fast", target_model="qwen")
    assert run(filters.ModelFilter("m"), states, rewritten) == [fleet.key(1), fleet.key(2)]
    assert run(filters.ModelFilter("m"), states[:2], fleet.request(model="mistral")) == []


def test_model_filter_prefers_endpoints_that_can_serve_the_lora_adapter():
    states = [fleet.state(0), fleet.state(1, max_loras=2), fleet.state(2, running_loras=frozenset({"a"}))]
    assert run(filters.ModelFilter("m"), states, fleet.request(lora_adapter="a")) == [
        fleet.key(1),
        fleet.key(2),
    ]
    no_lora = [fleet.state(0), fleet.state(1)]
    assert run(filters.ModelFilter("m"), no_lora, fleet.request(lora_adapter="a")) == [
        fleet.key(0),
        fleet.key(1),
    ]


def test_role_filter_separates_destinations_from_prefill_endpoints():
    states = [
        fleet.state(0, labels=fleet.role("prefill")),
        fleet.state(1, labels=fleet.role("decode")),
        fleet.state(2, labels=fleet.role("both")),
        fleet.state(3),
    ]
    assert run(filters.RoleFilter("d", role="decode"), states) == [fleet.key(1), fleet.key(2), fleet.key(3)]
    assert run(filters.RoleFilter("p", role="prefill"), states) == [fleet.key(0)]


def test_label_filters_reuse_results_only_for_the_same_endpoint_sequence():
    stage = filters.ModelFilter("m")
    pool = (
        fleet.state(0, labels={names.MODEL_LABEL: "llama"}),
        fleet.state(1, labels={names.MODEL_LABEL: "qwen"}),
    )

    def keys(states, request):
        cycle = cycles.Cycle(request, fleet.snapshot(states), rng=np.random.default_rng(0))
        cycle.candidates = states  # the datastore's own sequence object, as the picker passes it
        return [s.endpoint.key for s in stage.filter(cycle, cycle.candidates)]

    assert keys(pool, fleet.request()) == [fleet.key(0)]
    assert keys(pool, fleet.request(model="qwen")) == [fleet.key(1)]
    assert keys(pool, fleet.request()) == [fleet.key(0)]
    relabelled = (fleet.state(0, labels={names.MODEL_LABEL: "qwen"}), pool[1])  # discovery: a new sequence
    assert keys(relabelled, fleet.request()) == []
