"""The `frontier` cost learns how fast each endpoint's engine runs: the pure estimator (`learners.
EngineSpeed`), and the picker's scheduler learning it from the completions of simulated engines it was
told nothing about (the virtual-time cluster: real engine cores on a model clock), and the learned values
on the picker's metrics page."""

import random

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from frontier_api import names
from frontier_picker import endpoints, metrics, server
from frontier_picker.scheduling import config
from frontier_picker.scheduling.plugins import cost, learners
from frontier_sim.vt import cluster

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
GROUP = "both/tier/model/"


def _teach(speed: learners.EngineSpeed, key: str, ratio: float, samples: int, *, group: str = GROUP) -> None:
    for _ in range(samples):
        speed.learn(key, group, "prefill", predicted_s=0.1, observed_s=0.1 * ratio)


def test_an_endpoint_twice_as_slow_as_the_prior_is_learned_as_ratio_two():
    speed = learners.EngineSpeed(rate=0.05)
    _teach(speed, "a", 2.0, 30)
    assert speed.ratio("a", GROUP, "prefill") == pytest.approx(2.0, rel=0.15)
    assert speed.ratio("a", GROUP, "decode") == 1.0  # nothing learned about decode steps


def test_one_outlier_moves_the_learned_ratio_little():
    speed = learners.EngineSpeed(rate=0.05)
    _teach(speed, "a", 1.0, 50)
    speed.learn("a", GROUP, "prefill", predicted_s=0.1, observed_s=100.0)  # stuck behind a preemption
    assert speed.ratio("a", GROUP, "prefill") < 1.1


def test_a_new_endpoint_borrows_its_groups_ratio_and_another_groups_does_not():
    speed = learners.EngineSpeed(rate=0.05)
    for key in ("a", "b", "c"):
        _teach(speed, key, 2.0, 20)
    assert speed.ratio("new", GROUP, "prefill") == pytest.approx(2.0, rel=0.1)
    assert speed.ratio("new", "both/tier/other-model/", "prefill") == 1.0


def test_learning_off_keeps_the_prior():
    speed = learners.EngineSpeed(rate=0.0)
    _teach(speed, "a", 3.0, 20)
    assert speed.ratio("a", GROUP, "prefill") == 1.0
    assert list(speed.learned()) == []


def test_ratios_follow_the_candidates_and_a_groups_change():
    speed = learners.EngineSpeed(rate=0.05)
    labels = {names.ROLE_LABEL: "both", names.TIER_LABEL: "tier", names.MODEL_LABEL: "model"}
    states = [
        endpoints.EndpointState(
            endpoint=endpoints.Endpoint(name=f"e{i}", address=f"10.0.0.{i}", port=8000, labels=labels)
        )
        for i in range(2)
    ]
    group = learners.group_of(states[0].endpoint)
    prefill, decode = speed.ratios(states)
    assert list(prefill) == [1.0, 1.0] and list(decode) == [1.0, 1.0]
    _teach(speed, states[0].endpoint.key, 2.0, 40, group=group)
    prefill, _ = speed.ratios(states)
    assert prefill[0] == pytest.approx(2.0, rel=0.15)
    assert prefill[1] == pytest.approx(2.0, rel=0.15)  # the second borrows the group's


def _learned_ratios(*engine_args: str, shared_tokens: int = 0, rate: float = 8.0) -> dict[str, float]:
    """Run 300 requests of 1,500 unique prompt tokens (after `shared_tokens` of one of 20 shared prefixes)
    at `rate` req/s on 4 simulated engines with these flags through the built-in `frontier` profile (told
    nothing: learning is on by default); the learned ratio per phase, averaged over the endpoints."""
    scheduler = config.load(config.builtin_text("frontier"), seed=0)
    rng = random.Random(0)
    prefixes = [" ".join(f"s{g}x{j}" for j in range(shared_tokens // 2)) for g in range(20)]
    t = 0.0
    arrivals = []
    for i in range(300):
        t += rng.expovariate(rate)
        words = " ".join(f"w{rng.randrange(10**6):06d}" for _ in range(1500 // 2))
        prompt = f"{prefixes[i % 20]} {i} {words} "
        arrivals.append(cluster.Arrival(at=t, model=MODEL, prompt=prompt, max_tokens=60))
    engines = cluster.engines(4, args=["--model", MODEL, *engine_args])
    cluster.run(engines=engines, workload=arrivals, policy=scheduler)
    scorer = next(m for m in scheduler.members() if isinstance(m, cost.PredictedTTFTScorer))
    by_phase: dict[str, list[float]] = {}
    for _key, phase, ratio, samples in scorer.speed.learned():
        assert samples > 0
        by_phase.setdefault(phase, []).append(ratio)
    assert set(by_phase) == set(learners.PHASES)
    return {phase: sum(values) / len(values) for phase, values in by_phase.items()}


def test_the_picker_learns_that_a_fleet_it_was_not_told_about_runs_twice_as_slow():
    calibrated = _learned_ratios()
    slower = _learned_ratios("--sim-params", "16e9")  # twice the per-token work of the 8B prior
    for phase in learners.PHASES:
        assert 0.85 < calibrated[phase] < 1.15
        assert 1.7 < slower[phase] / calibrated[phase] < 2.3


def test_other_requests_prefill_between_decode_steps_is_not_read_as_slow_decode():
    # Cached 6,000-token prefixes at 30 req/s: every decode step shares its time with other requests'
    # prefill chunks. Learned against the decode prediction alone, decode read ~1.2x slow here.
    ratios = _learned_ratios(shared_tokens=6000, rate=30.0)
    assert 0.85 < ratios["decode"] < 1.15
    assert 0.85 < ratios["prefill"] < 1.2


def test_learned_speeds_are_exported_per_endpoint_and_phase():
    scheduler = config.load(config.builtin_text("frontier"), seed=0)
    own = metrics.create()
    server.observe_plugins(scheduler, own)
    scorer = next(m for m in scheduler.members() if isinstance(m, cost.PredictedTTFTScorer))
    _teach(scorer.speed, "10.0.0.1:8000", 2.0, 30)
    found = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(prometheus_client.generate_latest(own.registry).decode())
        for sample in family.samples
    }
    labels = (("endpoint", "10.0.0.1:8000"), ("phase", "prefill"))
    assert found[("frontier_picker_engine_speed_ratio", labels)] == pytest.approx(2.0, rel=0.15)
    assert found[("frontier_picker_engine_speed_samples", labels)] == 30
