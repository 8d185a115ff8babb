"""The virtual-time cluster: its clock, its fast-forwarded decode runs, what routers see, and the results."""

import random

import numpy as np
import pytest

from frontier_api import names
from frontier_picker import endpoints
from frontier_picker.scheduling import config, types
from frontier_picker.scheduling.plugins import cost, precise_prefix
from frontier_sim import settings, timing
from frontier_sim.vt import cluster, policies

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
WORDS = [f"{a}{b}{c}" for a in "abcdefgh" for b in "ijklmnop" for c in "qrstuvwx"]


def text(rng: random.Random, tokens: int) -> str:
    """`tokens` tokens of text (three-letter word + space = 4 characters = one token)."""
    return " ".join(rng.choice(WORDS) for _ in range(tokens)) + " "


def shared_prefix(
    *, requests: int, qps: float, groups: int, system: int = 400, question: int = 40, seed: int = 0
) -> list[cluster.Arrival]:
    rng = random.Random(seed)
    systems = [text(rng, system) for _ in range(groups)]
    t = 0.0
    out = []
    for _ in range(requests):
        t += rng.expovariate(qps)
        prompt = rng.choice(systems) + text(rng, rng.randrange(5, question))
        out.append(cluster.Arrival(at=t, model=MODEL, prompt=prompt, max_tokens=rng.randrange(1, 120)))
    return out


def small(count: int, *extra: str, prefill: int = 0) -> list:
    return cluster.engines(count, args=["--model", MODEL, *extra], prefill=prefill)


@pytest.mark.parametrize("policy", ["round-robin", "gie-default", "frontier"])
def test_fast_forwarded_decode_runs_give_exactly_what_stepping_every_step_gives(policy):
    # A small KV cache so that evictions and preemptions happen inside and around runs.
    engines = small(3, "--num-gpu-blocks-override", "150")
    workload = shared_prefix(requests=150, qps=20, groups=5)
    fast = cluster.run(engines=engines, workload=workload, policy=policy)
    slow = cluster.run(engines=engines, workload=workload, policy=policy, fast_forward=False)
    assert fast.events < slow.events / 3  # runs replaced most core steps
    assert fast.steps == slow.steps
    np.testing.assert_array_equal(fast.engine, slow.engine)
    np.testing.assert_allclose(fast.ttft, slow.ttft, rtol=0, atol=1e-9)
    np.testing.assert_allclose(fast.end, slow.end, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(fast.cached_tokens, slow.cached_tokens)
    for a, b in zip(fast.engines, slow.engines, strict=True):
        assert (a.generation_tokens, a.prefix_cache_hits, a.preemptions) == (
            b.generation_tokens,
            b.prefix_cache_hits,
            b.preemptions,
        )
    if policy == "round-robin":  # the picker avoids the pressure that makes round-robin preempt
        assert sum(e.preemptions for e in fast.engines) > 0


def test_lone_request_timing_is_the_engine_step_model():
    engines = small(1)
    prompt = text(random.Random(1), 1000)
    results = cluster.run(
        engines=engines, workload=[cluster.Arrival(at=2.0, model=MODEL, prompt=prompt, max_tokens=50)]
    )
    model = settings.step_model(engines[0].config)
    prompt_tokens = int(results.prompt_tokens[0])
    assert prompt_tokens == 1000
    # First step: the whole prompt in one chunk; then 49 decode steps over a growing context.
    ttft = model.step_time(
        chunks=[timing.PrefillChunk(new=prompt_tokens, cached=0)],
        batch=0,
        query_tokens=1,
        context_tokens=0,
    )
    decode = sum(
        model.step_time(chunks=[], batch=1, query_tokens=1, context_tokens=prompt_tokens + k)
        for k in range(49)
    )
    assert results.ttft[0] == pytest.approx(ttft, rel=1e-9)
    assert results.end[0] - results.arrival[0] == pytest.approx(ttft + decode, rel=1e-9)
    assert results.completion_tokens[0] == 50
    assert results.tpot[0] == pytest.approx(decode / 49, rel=1e-9)


def test_a_repeated_prompt_hits_the_prefix_cache_of_the_engine_it_returns_to():
    prompt = text(random.Random(2), 640)
    workload = [cluster.Arrival(at=t, model=MODEL, prompt=prompt, max_tokens=8) for t in (0.0, 5.0)]
    results = cluster.run(engines=small(1), workload=workload)
    assert results.cached_tokens.tolist() == [0, 624]  # whole blocks, the last token always computed
    model = settings.step_model(small(1)[0].config)
    second = model.step_time(
        chunks=[timing.PrefillChunk(new=16, cached=624)], batch=0, query_tokens=1, context_tokens=0
    )
    assert results.ttft[1] == pytest.approx(second, rel=1e-9)
    assert results.ttft[1] < results.ttft[0] / 3


class Recorder:
    """A round-robin policy that writes down what each decision saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, int, list[float], list[int]]] = []
        self.turn = 0

    def decide(self, request, token_ids, snapshot):
        states = snapshot.endpoints
        self.seen.append(
            (
                snapshot.now,
                sum(s.load.in_flight for s in states),
                [snapshot.now - s.metrics.updated_at for s in states],
                [s.metrics.running + s.metrics.waiting for s in states],
            )
        )
        self.turn += 1
        return types.Decision(endpoints=[states[self.turn % len(states)].endpoint.key])

    def on_completion(self, request, decision, completion):
        pass


def test_load_is_counted_at_the_decision_and_refunded_at_the_completion():
    workload = shared_prefix(requests=120, qps=30, groups=4)
    recorder = Recorder()
    results = cluster.run(engines=small(4), workload=workload, policy=recorder)
    for (now, in_flight, _, _), _arrival in zip(recorder.seen, results.arrival, strict=True):
        outstanding = int(np.sum((results.arrival < now) & (results.end > now)))
        assert in_flight == outstanding


def test_answers_end_at_eos_and_teach_the_picker_how_much_of_max_tokens_they_use():
    rng = random.Random(3)
    lengths = [rng.randrange(10, 60) for _ in range(150)]
    workload = [
        cluster.Arrival(at=i / 20, model=MODEL, prompt=text(rng, 200), max_tokens=200, output_tokens=n)
        for i, n in enumerate(lengths)
    ]
    scheduler = config.load(config.builtin_text("frontier"), seed=0)
    results = cluster.run(engines=small(2), workload=workload, policy=scheduler)
    assert list(results.completion_tokens) == lengths
    scorer = next(m for m in scheduler.members() if isinstance(m, cost.PredictedTTFTScorer))
    request = types.Request(request_id="r", model=MODEL, target_model=MODEL, prompt="x", max_tokens=200)
    # The expected output is a running mean from 200 (max_tokens) down towards the answers' mean (~35).
    assert scorer.output_length.expected(request) < 200 * 0.3


def test_metrics_are_as_stale_as_the_scrape_interval_and_lag_behind_the_load():
    workload = shared_prefix(requests=200, qps=40, groups=4)
    recorder = Recorder()
    cluster.run(engines=small(5), workload=workload, policy=recorder, scrape_interval=0.2, scrape_groups=5)
    # Every endpoint is scraped once per interval (staggered); before its first scrape its age is infinite.
    ages = np.array([age for now, _, seen, _ in recorder.seen if now >= 0.2 for age in seen])
    assert ages.min() >= 0 and ages.max() < 0.2 + 1e-9
    assert ages.max() > 0.15  # stale just before the next scrape
    # Scraped counts lag the picker's own accounting at some decisions (staleness is modelled).
    assert any(in_flight != sum(counts) for _, in_flight, _, counts in recorder.seen)


def test_prefix_aware_picker_beats_round_robin_on_hit_rate_and_ttft_and_the_oracle_bounds_it():
    # KV caches of 400 blocks (6,400 tokens) hold about four of the twelve system prompts each.
    engines = small(6, "--num-gpu-blocks-override", "400")
    workload = shared_prefix(requests=600, qps=40, groups=12, system=1200, question=80)
    summary = {
        policy: cluster.run(engines=engines, workload=workload, policy=policy).summary()
        for policy in ("round-robin", "least-request", "random", "gie-default", "frontier", "oracle")
    }
    for policy in ("gie-default", "frontier", "oracle"):
        assert summary[policy]["prefix_hit_rate"] > summary["round-robin"]["prefix_hit_rate"] + 0.2
        assert summary[policy]["ttft_p90_s"] < summary["round-robin"]["ttft_p90_s"]
    assert summary["oracle"]["ttft_mean_s"] <= 1.05 * summary["frontier"]["ttft_mean_s"]
    assert all(s["completed"] == 600 for s in summary.values())


def test_prefill_decode_disaggregation_prefills_elsewhere_and_pays_the_transfer():
    # Two prefill and two decode engines; prompts beyond the frontier profile's 2,048-token threshold.
    engines = small(4, prefill=2)
    rng = random.Random(3)
    workload = [
        cluster.Arrival(at=0.5 * i, model=MODEL, prompt=text(rng, 3000), max_tokens=20) for i in range(6)
    ]
    results = cluster.run(engines=engines, workload=workload, policy="frontier")
    roles = [e.role for e in engines]
    assert all(roles[i] == names.ROLE_DECODE for i in results.engine)
    prefill_engines = [
        e for e, role in zip(results.engines, roles, strict=True) if role == names.ROLE_PREFILL
    ]
    assert sum(e.prompt_tokens for e in prefill_engines) == 6 * 3000
    assert (results.completion_tokens == 20).all()
    # TTFT: the prefill step, the KV transfer (3000 tokens x 128 KiB over 25 GB/s ~ 16 ms), one decode step.
    model = settings.step_model(engines[0].config)
    prefill = model.step_time(
        chunks=[timing.PrefillChunk(new=3000, cached=0)], batch=0, query_tokens=1, context_tokens=0
    )
    transfer = 3000 * model.kv_bytes_per_token_per_gpu / engines[0].config.kv_link_bytes_per_s
    assert results.ttft[0] == pytest.approx(prefill + transfer + model.p0 + model.p1, rel=0.05)


def test_rejections_are_recorded_with_their_status():
    workload = [cluster.Arrival(at=0.0, model="no-such-model", prompt="hello world " * 20, max_tokens=4)]
    results = cluster.run(engines=small(2), workload=workload, policy="frontier")
    assert results.status.tolist() == [404]  # the frontier config's tier router: a model nobody serves
    assert results.summary()["completed"] == 0


def test_requests_that_cannot_fit_an_engine_fail_with_400_and_free_their_load():
    engines = small(1, "--max-model-len", "512")
    workload = [
        cluster.Arrival(at=0.0, model=MODEL, prompt="word " * 600, max_tokens=4),
        cluster.Arrival(at=0.1, model=MODEL, prompt="word " * 100, max_tokens=4),
    ]
    recorder = Recorder()
    results = cluster.run(engines=engines, workload=workload, policy=recorder)
    assert results.status.tolist() == [400, 200]
    assert recorder.seen[1][1] == 0  # the failed request's in-flight charge was refunded


def test_workload_out_of_time_order_is_refused():
    workload = [
        cluster.Arrival(at=1.0, model=MODEL, prompt="a b c d", max_tokens=2),
        cluster.Arrival(at=0.5, model=MODEL, prompt="a b c d", max_tokens=2),
    ]
    with pytest.raises(ValueError, match="sort by time"):
        cluster.run(engines=small(1), workload=workload, policy="round-robin")


def test_unknown_policy_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"random.*oracle.*frontier.*round-robin"):
        cluster.run(engines=small(1), workload=[], policy="fastest")


def test_least_request_spreads_by_in_flight_count():
    states = [
        endpoints.EndpointState(endpoint=endpoints.Endpoint(name=f"e{i}", address=f"10.9.0.{i}", port=1))
        for i in range(3)
    ]
    states[0].load.in_flight = 2
    states[1].load.in_flight = 0
    states[2].load.in_flight = 1
    policy = policies.LeastRequest(states, seed=0)
    request = types.Request(request_id="r", model=MODEL, target_model=MODEL)
    assert policy.decide(request, [], endpoints.Snapshot(0.0, states)).primary == "10.9.0.1:1"


def test_a_wall_time_limit_stops_the_run_and_says_how_far_the_model_clock_got():
    workload = shared_prefix(requests=400, qps=5, groups=4)
    results = cluster.run(engines=small(2), workload=workload, policy="round-robin", max_wall_s=0.0)
    assert results.stopped_at is not None
    assert 0 <= results.stopped_at < workload[-1].at
    assert len(results.arrival) < len(workload)
    assert results.summary()["stopped_at_s"] == results.stopped_at


def test_engines_helper_builds_a_fleet_like_the_launcher_with_prefill_engines_first():
    specs = cluster.engines(4, args=["--model", MODEL, "--max-num-seqs", "64"], prefill=1)
    assert [s.role for s in specs] == [names.ROLE_PREFILL] + [names.ROLE_DECODE] * 3
    assert len({(s.config.host, s.config.port) for s in specs}) == 4
    assert all(s.config.max_num_seqs == 64 for s in specs)


def test_oracle_picks_the_least_predicted_ttft_over_every_engine():
    specs = small(6)
    cores = [settings.build_engine(spec.config) for spec in specs]
    states = [
        endpoints.EndpointState(
            endpoint=endpoints.Endpoint(name=s.name, address=s.config.host, port=s.config.port)
        )
        for s in specs
    ]
    rng = random.Random(4)
    shared = text(rng, 800)
    cores[0].add_request("warm", [1 + i % 5000 for i in range(3200)], max_tokens=1)
    while cores[0].has_work():
        cores[0].step()
    # Every engine busy, in ways a cheap bound cannot tell apart: engine 0 decodes one very long sequence
    # (small batch, large context), engines 3-5 decode short ones, engines 1 and 2 bigger batches.
    cores[0].add_request("long", [3] * 60_000, max_tokens=1000)
    for k in range(6):
        cores[1].add_request(f"busy{k}", [7 + k] * 500, max_tokens=400)
        cores[2].add_request(f"queued{k}", [9 + k] * 3000, max_tokens=10)
    for i in (3, 4, 5):
        for k in range(i - 1):
            cores[i].add_request(f"short{k}", [11 + k] * 100, max_tokens=400)
    for core in cores:
        for _ in range(10):
            core.step()
    oracle = policies.Oracle(states, cores)
    prompts = cluster._Prompts(100)
    for k in range(20):
        ids = prompts.get(shared + text(rng, 20)) if k % 2 else [1 + i % 5000 for i in range(3200 + k)]
        hashes = oracle._hashes(cores[0], ids)
        predicted = [oracle.predict(i, ids, hashes)[0] for i in range(len(cores))]
        request = types.Request(request_id=f"r{k}", model=MODEL, target_model=MODEL)
        chosen = oracle.decide(request, ids, endpoints.Snapshot(0.0, states)).primary
        assert predicted[[s.endpoint.key for s in states].index(chosen)] == min(predicted)


def test_requests_reusing_an_x_request_id_are_kept_apart():
    headers = {names.REQUEST_ID: "same"}
    workload = [
        cluster.Arrival(at=0.0, model=MODEL, prompt="one two three " * 50, max_tokens=30, headers=headers),
        cluster.Arrival(at=0.01, model=MODEL, prompt="four five six " * 50, max_tokens=30, headers=headers),
    ]
    results = cluster.run(engines=small(1), workload=workload, policy="frontier")
    assert results.status.tolist() == [200, 200]
    assert results.completion_tokens.tolist() == [30, 30]


def test_peered_replicas_keep_the_prefix_locality_that_blind_replicas_lose():
    # Caches of 200 blocks (3,200 tokens, five of the twelve system prompts): copies of a prefix cost others.
    engines = small(4, "--num-gpu-blocks-override", "200")
    workload = shared_prefix(requests=400, qps=40, groups=12, system=600)

    def hit_rate(results: cluster.Results) -> float:
        return sum(e.prefix_cache_hits for e in results.engines) / sum(
            e.prefix_cache_queries for e in results.engines
        )

    one = cluster.run(engines=engines, workload=workload, policy="frontier")
    peered = cluster.run(engines=engines, workload=workload, policy="frontier", replicas=3)
    blind = cluster.run(engines=engines, workload=workload, policy="frontier", replicas=3, peering=False)
    for results in (one, peered, blind):
        assert (results.status == 200).all()
    # Each blind replica learns a third of the decisions: it spreads each group's prefix over more engines.
    assert hit_rate(peered) > hit_rate(blind) + 0.05
    assert hit_rate(peered) >= 0.95 * hit_rate(one)


def test_only_a_picker_runs_as_several_replicas():
    with pytest.raises(ValueError, match="replicas"):
        cluster.run(engines=small(2), workload=[], policy="least-request", replicas=2)


PRECISE = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-events-subscriber
- type: precise-prefix-cache-scorer
schedulingProfiles:
- name: precise
  plugins:
  - pluginRef: queue-scorer
  - pluginRef: precise-prefix-cache-scorer
    weight: 3
"""


def test_a_config_subscribing_to_kv_events_gets_every_engines_events_in_virtual_time():
    scheduler = config.load(PRECISE, seed=0)
    source = scheduler.data_sources[0]
    assert isinstance(source, precise_prefix.KvEventsSubscriber)
    engines = small(3, "--num-gpu-blocks-override", "150")
    workload = shared_prefix(requests=150, qps=20, groups=5)
    precise = cluster.run(engines=engines, workload=workload, policy=scheduler)
    approximate = cluster.run(engines=engines, workload=workload, policy="gie-default")
    # Every engine published, and no engine is said to hold more blocks than its cache has.
    assert len(source.index.endpoints()) == 3
    assert all(0 < source.index.size(key) <= 150 for key in source.index.endpoints())
    assert precise.cached_tokens.sum() >= 0.9 * approximate.cached_tokens.sum() > 0
