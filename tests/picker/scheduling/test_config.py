"""EndpointPickerConfig loading: the built-in profiles and errors that name what is wrong."""

import textwrap

import pytest

from frontier_picker.scheduling import config
from frontier_picker.scheduling.framework.errors import ConfigError
from frontier_picker.scheduling.framework.scheduler import Scheduler
from frontier_picker.scheduling.plugins import (
    filters,
    pd_deciders,
    pickers,
    prefix,
    profile_handlers,
    scorers,
)

HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def load(body: str, **kwargs):
    return config.load(HEAD + textwrap.dedent(body), **kwargs)


def test_default_is_the_frontier_profile_with_prefill_disaggregation():
    scheduler = config.load()
    assert isinstance(scheduler, Scheduler)
    assert scheduler.destination_profile.name == "frontier"
    handler = scheduler.handler
    assert isinstance(handler, profile_handlers.PDProfileHandler)
    assert handler.profiles() == ["frontier", "frontier-prefill"]
    assert isinstance(handler.decider, pd_deciders.PrefixBasedDecider)
    assert handler.decider.threshold == 2048
    assert handler.decider.index is not None


def test_gie_default_is_exactly_queue2_kv2_prefix3_max_score():
    scheduler = config.load(builtin="gie-default")
    assert isinstance(scheduler, Scheduler)
    profile = scheduler.destination_profile
    assert profile.filters == []
    assert [(type(w.scorer), w.weight) for w in profile.scorers] == [
        (scorers.QueueScorer, 2.0),
        (scorers.KVCacheUtilizationScorer, 2.0),
        (prefix.PrefixCacheScorer, 3.0),
    ]
    assert profile.picker.type_name == "max-score-picker"
    index = profile.scorers[2].scorer.index  # type: ignore[attr-defined]
    assert (index.block_size, index.max_blocks, index.lru_capacity) == (64, 256, 31_250)
    assert isinstance(scheduler.handler, profile_handlers.SingleProfileHandler)


def test_round_robin_is_a_builtin_and_unknown_builtins_are_refused():
    picker = config.load(builtin="round-robin", fallbacks=2).destination_profile.picker
    assert isinstance(picker, pickers.RoundRobinPicker)
    with pytest.raises(ConfigError, match=r"'fastest'.*frontier, gie-default, round-robin"):
        config.load(builtin="fastest")


def test_a_minimal_gie_config_loads_with_weights_and_default_picker():
    scheduler = load(
        """
        plugins:
        - type: queue-scorer
        - name: kv
          type: kv-cache-utilization-scorer
        schedulingProfiles:
        - name: default
          plugins:
          - pluginRef: queue-scorer
          - pluginRef: kv
            weight: 5
        """
    )
    assert isinstance(scheduler, Scheduler)
    assert [w.weight for w in scheduler.destination_profile.scorers] == [1.0, 5.0]
    assert scheduler.destination_profile.picker.type_name == "max-score-picker"


def test_saturation_detector_section_sets_the_filter_and_admission_thresholds():
    scheduler = load(
        """
        saturationDetector:
          queueDepthThreshold: 3
          kvCacheUtilThreshold: 0.9
          metricsStalenessThreshold: 100ms
        plugins:
        - type: saturation-filter
        schedulingProfiles:
        - name: default
          plugins: [{pluginRef: saturation-filter}]
        """
    )
    assert isinstance(scheduler, Scheduler)
    stage = scheduler.destination_profile.filters[0]
    assert isinstance(stage, filters.SaturationFilter)
    assert (stage.thresholds.queue_depth, stage.thresholds.kv_utilization) == (3, 0.9)
    assert stage.thresholds.staleness_s == pytest.approx(0.1)
    shedding = scheduler.admitters[0]
    assert shedding.type_name == "priority-shedding"
    assert shedding.thresholds == stage.thresholds  # type: ignore[attr-defined]


def test_stale_filter_takes_the_detector_staleness_unless_given_its_own():
    body = """
        saturationDetector: {{metricsStalenessThreshold: 1s}}
        plugins:
        - type: stale-filter
          {parameters}
        schedulingProfiles:
        - name: default
          plugins: [{{pluginRef: stale-filter}}]
        """
    for parameters, expected in (("", 1.0), ("parameters: {metricsStalenessThreshold: 300ms}", 0.3)):
        scheduler = load(body.format(parameters=parameters))
        assert isinstance(scheduler, Scheduler)
        stage = scheduler.destination_profile.filters[0]
        assert isinstance(stage, filters.StaleFilter)
        assert stage.staleness_s == pytest.approx(expected)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("plugins: []\nschedulingProfile: []\n", "unknown field 'schedulingProfile'"),
        ("plugins:\n- type: queue-scorer\n  weight: 2\n", r"plugins\[0\]: unknown field 'weight'"),
        ("plugins:\n- type: queue-scorers\n", "unknown type 'queue-scorers'"),
        (
            "plugins:\n- type: prefix-cache-scorer\n  parameters: {blockSizeTokens: 16}\n",
            "unknown parameter 'blockSizeTokens'",
        ),
        (
            "plugins:\n- type: prefix-cache-scorer\n  parameters: {blockSize: big}\n",
            "'blockSize' must be an integer",
        ),
        (
            "plugins: [{type: queue-scorer}]\nschedulingProfiles:\n- name: p\n  plugins: [{weight: 2}]\n",
            r"schedulingProfiles\[0\].plugins\[0\]: missing field 'pluginRef'",
        ),
        (
            "plugins: [{type: queue-scorer}]\nschedulingProfiles:\n- name: p\n  plugins: [{pluginRef: kv}]\n",
            "pluginRef 'kv' names no plugin; plugins: queue-scorer",
        ),
        (
            "plugins: [{type: queue-scorer}, {type: queue-scorer}]\nschedulingProfiles: []\n",
            "plugin name 'queue-scorer' is used twice",
        ),
        (
            "plugins: [{type: predicted-ttft-scorer}]\n"
            "schedulingProfiles:\n- name: p\n  plugins: [{pluginRef: predicted-ttft-scorer}]\n",
            "consumes 'prefix-index', which no configured plugin produces",
        ),
        (
            "plugins: [{type: single-profile-handler}]\n"
            "schedulingProfiles:\n- name: p\n  plugins: [{pluginRef: single-profile-handler}]\n",
            "is a handler plugin",
        ),
        (
            "plugins: [{type: queue-scorer}]\n"
            "schedulingProfiles:\n- name: p\n  plugins: [{pluginRef: queue-scorer, weight: -1}]\n",
            "weight must be a number >= 0",
        ),
        ("plugins: [{type: queue-scorer}]\nschedulingProfiles: []\n", "at least one profile"),
        (
            "saturationDetector: {queueDepth: 3}\nschedulingProfiles: [{name: p}]\n",
            "unknown field 'queueDepth'",
        ),
        (
            "saturationDetector: {metricsStalenessThreshold: soon}\nschedulingProfiles: [{name: p}]\n",
            "'soon' is not a duration",
        ),
        (
            "plugins:\n- type: stale-filter\n  parameters: {metricsStalenessThreshold: later}\n",
            "metricsStalenessThreshold: 'later' is not a duration",
        ),
    ],
)
def test_config_errors_name_the_offending_field(body, message):
    with pytest.raises(ConfigError, match=message):
        load(body)


def test_api_version_and_kind_are_checked():
    with pytest.raises(ConfigError, match="apiVersion: 'v1'"):
        config.load("apiVersion: v1\nkind: EndpointPickerConfig\n")
    with pytest.raises(ConfigError, match="kind: 'Config'"):
        config.load("apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: Config\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load("plugins: [")


def test_profile_selection_by_the_handler_parameter_and_ambiguity():
    body = """
        plugins:
        - type: queue-scorer
        {handler}
        schedulingProfiles:
        - name: a
          plugins: [{{pluginRef: queue-scorer}}]
        - name: b
          plugins: [{{pluginRef: queue-scorer}}]
        """
    handler = "- {type: single-profile-handler, parameters: {profile: %s}}"
    selected = load(body.format(handler=handler % "b"))
    assert isinstance(selected, Scheduler)
    assert selected.destination_profile.name == "b"
    with pytest.raises(ConfigError, match="several profiles"):
        load(body.format(handler=""))
    with pytest.raises(ConfigError, match="profile 'c' is not in schedulingProfiles"):
        load(body.format(handler=handler % "c"))


def test_a_plugin_finds_its_collaborator_through_the_handle_wherever_it_is_listed():
    body = """
        plugins:
        - type: predicted-ttft-scorer
          parameters: {prefixPlugin: index}
        - name: index
          type: prefix-cache-scorer
          parameters: {blockSize: 32}
        schedulingProfiles:
        - name: p
          plugins: [{pluginRef: predicted-ttft-scorer}]
        """
    scheduler = load(body)
    cost = scheduler.destination_profile.scorers[0].scorer
    assert cost.index is not None and cost.index.block_size == 32  # type: ignore[attr-defined]


def test_plugins_that_need_each_other_in_a_cycle_are_refused():
    body = """
        plugins:
        - name: a
          type: prefix-based-pd-decider
          parameters: {prefixPlugin: b}
        - name: b
          type: pd-profile-handler
          parameters: {deciderPluginName: a, decodeProfile: p, prefillProfile: p}
        schedulingProfiles:
        - name: p
          plugins: []
        """
    with pytest.raises(ConfigError, match=r"cycle: (a -> b -> a|b -> a -> b)"):
        load(body)
