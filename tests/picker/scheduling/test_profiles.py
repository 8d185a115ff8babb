"""Profile behaviour users rely on: load avoidance, prefix stickiness until saturation, no herding,
serving on in-flight accounting when metrics are stale, shedding by priority, prefill/decode choice."""

import collections
import textwrap

import pytest
import yaml

from frontier_picker.scheduling import config, types
from frontier_picker.scheduling.plugins import cost

from . import fleet

SHARED = "".join(f"system prompt block {i:04d} ".ljust(64, "~") for i in range(64))  # 4 KB shared prefix


def prompt(i: int) -> str:
    return SHARED + f"user question number {i} " * 20


def complete(scheduler, request, decision) -> None:
    scheduler.on_completion(request, decision, types.Completion(endpoint=decision.primary, status=200))


@pytest.mark.parametrize("profile", ["frontier", "gie-default"])
def test_long_queue_is_avoided(profile):
    scheduler = config.load(builtin=profile, seed=1)
    states = [fleet.state(0, waiting=4, running=30), fleet.state(1, waiting=0, running=30)]
    for i in range(20):
        request = fleet.request(f"unrelated prompt {i} " * 40, request_id=str(i))
        decision = scheduler.schedule(request, fleet.snapshot(states))
        assert decision.primary == fleet.key(1)
        complete(scheduler, request, decision)


def test_gie_default_scores_are_2_queue_plus_2_kv_plus_3_prefix():
    scheduler = config.load(builtin="gie-default", seed=1, fallbacks=2)
    states = [fleet.state(0, waiting=2, kv=0.5), fleet.state(1, waiting=4, kv=0.1), fleet.state(2, kv=0.9)]
    first = fleet.request(prompt(0), request_id="a")
    decision = scheduler.schedule(first, fleet.snapshot(states))
    # queue (1, 0.5, 0) x2 vs (0.5, 0, 1) by waiting (2, 4, 0): e0 = 1 + 1 = 2, e1 = 0 + 1.8, e2 = 2 + 0.2
    assert decision.scores == pytest.approx({fleet.key(2): 2.2, fleet.key(0): 2.0, fleet.key(1): 1.8})
    second = fleet.request(SHARED, request_id="b")  # every block of it is now held by e2
    assert scheduler.schedule(second, fleet.snapshot(states)).scores[fleet.key(2)] == pytest.approx(5.2)


@pytest.mark.parametrize("profile", ["frontier", "gie-default"])
def test_shared_prefix_sticks_to_one_endpoint(profile):
    scheduler = config.load(builtin=profile, seed=3)
    states = [fleet.state(i) for i in range(4)]
    chosen = set()
    for i in range(12):
        request = fleet.request(prompt(i), request_id=str(i))
        decision = scheduler.schedule(request, fleet.snapshot(states))
        chosen.add(decision.primary)
        complete(scheduler, request, decision)
    assert len(chosen) == 1


def test_shared_prefix_sticks_to_one_endpoint_until_saturated():
    scheduler = config.load(seed=3)
    states = [fleet.state(i) for i in range(4)]
    first = scheduler.schedule(fleet.request(prompt(0), request_id="0"), fleet.snapshot(states)).primary
    hot = next(state for state in states if state.endpoint.key == first)
    hot.metrics.waiting = 5  # the engine now reports a full queue: saturated
    moved = set()
    for i in range(1, 8):
        request = fleet.request(prompt(i), request_id=str(i))
        decision = scheduler.schedule(request, fleet.snapshot(states))
        moved.add(decision.primary)
        complete(scheduler, request, decision)
    assert first not in moved
    assert len(moved) == 1  # and the prefix sticks again, to its new endpoint


def test_frontier_spreads_a_burst_instead_of_herding_onto_the_prefix_holder():
    scheduler = config.load(seed=5)
    states = [fleet.state(i) for i in range(4)]
    counts = collections.Counter(
        scheduler.schedule(fleet.request(prompt(i), request_id=str(i)), fleet.snapshot(states)).primary
        for i in range(40)
    )  # no completions and no new scrape: only the picker's own accounting sees the burst
    assert len(counts) == 4
    assert max(counts.values()) < 20


def _second_long_prompt_joins_the_first(scheduler, *, scraped_after: float, sent_after: float) -> bool:
    """Send an 8,000-token prompt to one of two endpoints running 6 sequences; a scrape `scraped_after` s
    later shows it running (not waiting) there, with one sequence fewer than the other endpoint; another
    long prompt comes `sent_after` s after the first. Whether it went to the first one's endpoint."""
    states = [fleet.state(0, running=6), fleet.state(1, running=6)]
    first = scheduler.schedule(
        fleet.request("first document " * 2130, request_id="a"), fleet.snapshot(states)
    )
    for state in states:
        state.metrics.updated_at = fleet.NOW + scraped_after
        state.metrics.running = 5 if state.endpoint.key == first.primary else 6
    second = fleet.request("second document " * 2000, request_id="b")
    return (
        scheduler.schedule(second, fleet.snapshot(states, now=fleet.NOW + sent_after)).primary
        == first.primary
    )


def test_a_prompt_still_prefilling_keeps_its_endpoint_busy_after_a_scrape_shows_it_running():
    # The first prompt's prefill (~0.25 s) is still under way 60 ms later, although the scrape no longer
    # counts it as waiting and its endpoint runs fewer sequences: the second prompt goes elsewhere.
    scheduler = config.load(seed=1)
    assert not _second_long_prompt_joins_the_first(scheduler, scraped_after=0.05, sent_after=0.06)


@pytest.mark.parametrize(("slowdown", "joins"), [(1, True), (2, False)])
def test_a_pool_told_slower_fits_is_predicted_slower(slowdown, joins):
    # 0.35 s later, on an H100 the first prefill (~0.25 s) is over and its endpoint, which runs one sequence
    # fewer, is the better choice. On engines whose fits say twice as slow it is still prefilling.
    fit = cost.H100
    scheduler = config.load(
        _frontier(
            p0Seconds=fit.p0 * slowdown,
            p1SecondsPerToken=fit.p1 * slowdown,
            p2SecondsPerTokenContext=fit.p2 * slowdown,
            d0Seconds=fit.d0 * slowdown,
            d1SecondsPerSequence=fit.d1 * slowdown,
            d2SecondsPerContextToken=fit.d2 * slowdown,
        ),
        seed=1,
    )
    assert _second_long_prompt_joins_the_first(scheduler, scraped_after=0.3, sent_after=0.35) is joins


def test_frontier_returns_to_the_prefix_holder_once_its_requests_complete():
    scheduler = config.load(seed=5)
    states = [fleet.state(i) for i in range(3)]
    sent = [(fleet.request(prompt(i), request_id=str(i)),) for i in range(12)]
    decisions = [scheduler.schedule(request, fleet.snapshot(states)) for (request,) in sent]
    holder = decisions[0].primary
    for (request,), decision in zip(sent, decisions, strict=True):
        complete(scheduler, request, decision)
    after = scheduler.schedule(fleet.request(prompt(99), request_id="99"), fleet.snapshot(states))
    assert after.primary == holder


def _holder_of_shared_prefix(scheduler, states, *, warm: int = 3) -> str:
    """Send `warm` prompts with the shared prefix, completing each; all go to one endpoint: its key."""
    decisions = []
    for i in range(warm):
        request = fleet.request(prompt(i), request_id=f"warm{i}")
        decision = scheduler.schedule(request, fleet.snapshot(states))
        complete(scheduler, request, decision)
        decisions.append(decision.primary)
    assert len(set(decisions)) == 1
    return decisions[0]


def _frontier(**parameters: float) -> str:
    given = ", ".join(f"{key}: {value}" for key, value in parameters.items())
    return config.builtin_text("frontier").replace(
        "- type: predicted-ttft-scorer", "- type: predicted-ttft-scorer\n  parameters: {" + given + "}"
    )


@pytest.mark.parametrize(("weight", "expected"), [(None, "holder"), (0.0, "other")])
def test_busy_fleet_keeps_a_prompt_on_its_prefix_rather_than_recomputing_it(weight, expected):
    # The other endpoint's queue is shorter, so its predicted TTFT alone is lower; but recomputing the 4 KB
    # prefix there stalls its 40 running sequences. Without that price (weight 0) the prompt would move.
    text = _frontier() if weight is None else _frontier(interferenceWeight=weight)
    scheduler = config.load(text, seed=2)
    states = [fleet.state(0), fleet.state(1)]
    holder = _holder_of_shared_prefix(scheduler, states)
    other = next(s.endpoint.key for s in states if s.endpoint.key != holder)
    for state in states:
        state.metrics.running = 40
        state.metrics.waiting = 2 if state.endpoint.key == holder else 0
    decision = scheduler.schedule(fleet.request(prompt(50), request_id="50"), fleet.snapshot(states))
    assert decision.primary == (holder if expected == "holder" else other)


def test_idle_endpoint_takes_the_overflow_of_a_busy_prefix_holder():
    scheduler = config.load(seed=2)
    states = [fleet.state(0), fleet.state(1)]
    holder = _holder_of_shared_prefix(scheduler, states)
    for state in states:
        if state.endpoint.key == holder:
            state.metrics.running, state.metrics.waiting = 40, 6
    decision = scheduler.schedule(fleet.request(prompt(50), request_id="50"), fleet.snapshot(states))
    assert decision.primary != holder  # recomputing the prefix on an idle endpoint stalls nobody


@pytest.mark.parametrize(("holder_waiting", "moves"), [(40, True), (0, False)])
def test_holder_whose_queue_stopped_moving_sheds_to_a_busy_endpoint(holder_waiting, moves):
    # The holder runs 256 sequences (its limit) and reports requests waiting: its queue drains only as fast as
    # it finishes requests. The picker saw it finish the 10 warm-up requests in the last 2 s (5/s), so 40
    # waiting mean ~8 s there, worse than recomputing the prefix on a busy endpoint that still admits (its
    # 200 running sequences stall ~28 ms each: ~5.5 s in all).
    # With nothing waiting the holder keeps the prompt.
    scheduler = config.load(seed=2)
    states = [fleet.state(0), fleet.state(1)]
    holder = _holder_of_shared_prefix(scheduler, states, warm=10)
    for state in states:
        is_holder = state.endpoint.key == holder
        state.metrics.running, state.metrics.waiting = (256, holder_waiting) if is_holder else (200, 0)
    decision = scheduler.schedule(fleet.request(prompt(50), request_id="50"), fleet.snapshot(states))
    assert (decision.primary != holder) is moves


@pytest.mark.parametrize(("horizon", "moves"), [(None, True), (0.0, False)])
def test_hot_prefix_gets_a_second_copy_a_cold_one_would_not(horizon, moves):
    # 40 requests with this prefix in the last seconds: a copy on the other endpoint will serve many of the
    # next ones, so the stall of making it (its 100 running sequences wait ~28 ms each) is shared among
    # them, and the holder's 12 waiting requests tip the choice. Priced as a one-off (horizon 0), it stays.
    text = _frontier() if horizon is None else _frontier(reuseHorizonSeconds=horizon)
    scheduler = config.load(text, seed=2)
    states = [fleet.state(0), fleet.state(1)]
    holder = _holder_of_shared_prefix(scheduler, states, warm=40)
    for state in states:
        state.metrics.running = 100
        state.metrics.waiting = 12 if state.endpoint.key == holder else 0
    decision = scheduler.schedule(fleet.request(prompt(50), request_id="50"), fleet.snapshot(states))
    assert (decision.primary != holder) is moves


@pytest.mark.parametrize(
    ("max_tokens", "weight", "moves"), [(1000, None, True), (10, None, False), (1000, 0.0, False)]
)
def test_a_long_answer_leaves_a_holder_decoding_a_large_batch(max_tokens, weight, moves):
    # The holder decodes 250 sequences, the other endpoint 30: each token of a 1,000-token answer would take
    # ~12 ms longer on the holder, which outweighs recomputing the 4 KB prefix (its 30 sequences stall
    # ~28 ms each). A 10-token answer stays with its prefix; so does a long one without the decode price.
    text = _frontier() if weight is None else _frontier(decodeWeight=weight)
    scheduler = config.load(text, seed=2)
    states = [fleet.state(0), fleet.state(1)]
    holder = _holder_of_shared_prefix(scheduler, states)
    for state in states:
        state.metrics.running = 250 if state.endpoint.key == holder else 30
    request = fleet.request(prompt(50), request_id="50", max_tokens=max_tokens)
    decision = scheduler.schedule(request, fleet.snapshot(states))
    assert (decision.primary != holder) is moves


def test_answers_shorter_than_max_tokens_lower_the_decode_price():
    # As above with a 1,000-token max_tokens, but the last 200 answers used 1% of theirs: the picker expects
    # ~10 tokens, and the request stays with its prefix.
    scheduler = config.load(seed=2)
    states = [fleet.state(0), fleet.state(1)]
    holder = _holder_of_shared_prefix(scheduler, states)
    for i in range(200):
        request = fleet.request("short " * 50, request_id=f"s{i}", max_tokens=1000)
        decision = scheduler.schedule(request, fleet.snapshot(states))
        scheduler.on_completion(
            request, decision, types.Completion(endpoint=decision.primary, status=200, completion_tokens=10)
        )
    for state in states:
        state.metrics.running = 250 if state.endpoint.key == holder else 30
    request = fleet.request(prompt(50), request_id="50", max_tokens=1000)
    assert scheduler.schedule(request, fleet.snapshot(states)).primary == holder


def test_all_stale_metrics_fall_back_on_in_flight_accounting():
    scheduler = config.load(seed=1)
    # Stale metrics claim e1 is idle, but the picker itself has 6 requests in flight there.
    states = [
        fleet.state(0, age=9.0, waiting=3, in_flight=1),
        fleet.state(1, age=9.0, in_flight=6),
        fleet.state(2, age=9.0, waiting=3, in_flight=2),
    ]
    decision = scheduler.schedule(fleet.request("q " * 100), fleet.snapshot(states))
    assert decision.primary == fleet.key(0)


def test_stale_endpoint_is_routed_around_when_others_are_fresh():
    for profile in ("frontier",):
        scheduler = config.load(builtin=profile, seed=1)
        states = [fleet.state(0, age=0.5), fleet.state(1, waiting=3, running=20)]
        for i in range(10):
            assert scheduler.schedule(
                fleet.request(request_id=str(i)), fleet.snapshot(states)
            ).primary == fleet.key(1)


def test_sheddable_requests_get_429_only_when_every_endpoint_is_saturated():
    scheduler = config.load(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
        + textwrap.dedent(
            """
            plugins:
            - type: queue-scorer
            - type: inference-objectives
              parameters:
                objectives: [{name: batch, priority: -1}, {name: chat, priority: 10}]
            schedulingProfiles:
            - name: default
              plugins: [{pluginRef: queue-scorer}]
            """
        )
    )
    full = [fleet.state(0, waiting=9), fleet.state(1, kv=0.95)]
    with pytest.raises(types.Rejection) as rejected:
        scheduler.schedule(fleet.request(objective="batch"), fleet.snapshot(full))
    assert rejected.value.status == 429
    with pytest.raises(types.Rejection):
        scheduler.schedule(fleet.request(priority=-2), fleet.snapshot(full))
    assert scheduler.schedule(fleet.request(objective="chat"), fleet.snapshot(full)).primary
    assert scheduler.schedule(fleet.request(), fleet.snapshot(full)).primary
    one_free = [fleet.state(0, waiting=9), fleet.state(1)]
    assert scheduler.schedule(
        fleet.request(objective="batch"), fleet.snapshot(one_free)
    ).primary == fleet.key(1)


def test_no_endpoint_is_503_and_a_model_the_pool_does_not_serve_is_404():
    scheduler = config.load()
    with pytest.raises(types.Rejection) as empty:
        scheduler.schedule(fleet.request(), fleet.snapshot([]))
    assert empty.value.status == 503
    other_model = [fleet.state(0, labels={"inference.frontier.dev/model": "qwen"})]
    with pytest.raises(types.Rejection, match=r"'llama'.*qwen") as wrong:
        scheduler.schedule(fleet.request(), fleet.snapshot(other_model))
    assert wrong.value.status == 404  # the frontier config's tier router knows what the pool serves


def test_prefill_endpoint_is_chosen_only_for_long_uncached_prompts():
    scheduler = config.load(seed=2)
    states = [
        fleet.state(0, labels=fleet.role("prefill"), waiting=1),
        fleet.state(1, labels=fleet.role("prefill")),
        fleet.state(2, labels=fleet.role("decode")),
    ]
    long_prompt = "".join(f"document {i} ".ljust(64, "#") for i in range(160))  # 10 KB, ~2,560 tokens
    first = scheduler.schedule(fleet.request(long_prompt, request_id="a"), fleet.snapshot(states))
    assert (first.primary, first.prefill) == (fleet.key(2), fleet.key(1))
    short = scheduler.schedule(fleet.request("hello " * 50, request_id="b"), fleet.snapshot(states))
    assert (short.primary, short.prefill) == (fleet.key(2), None)
    # The decode endpoint now holds the long prompt's KV: resending it leaves too little uncached to ship.
    again = scheduler.schedule(fleet.request(long_prompt + "more", request_id="c"), fleet.snapshot(states))
    assert (again.primary, again.prefill) == (fleet.key(2), None)


def test_a_tier_threshold_for_its_model_decides_disaggregation_for_that_model_only():
    text = config.builtin_text("frontier").replace(
        "parameters: {nonCachedTokens: 2048}",
        "parameters: {nonCachedTokens: 2048, nonCachedTokensByModel: {small: 100}}",
    )
    scheduler = config.load(text, seed=2)
    states = [fleet.state(0, labels=fleet.role("prefill")), fleet.state(1, labels=fleet.role("decode"))]
    prompt = "".join(f"question {i} ".ljust(64, "?") for i in range(20))  # 1,280 characters, ~320 tokens
    small = scheduler.schedule(fleet.request(prompt, request_id="s", model="small"), fleet.snapshot(states))
    assert small.prefill == fleet.key(0)  # 320 uncached tokens > 100
    other = scheduler.schedule(fleet.request(prompt, request_id="o", model="big"), fleet.snapshot(states))
    assert other.prefill is None  # 320 <= 2048, the config's own threshold


def test_fallbacks_follow_the_primary():
    scheduler = config.load(fallbacks=2, seed=1)
    states = [fleet.state(0, waiting=3), fleet.state(1), fleet.state(2, waiting=1)]
    decision = scheduler.schedule(fleet.request("x" * 400), fleet.snapshot(states))
    assert decision.endpoints == [fleet.key(1), fleet.key(2), fleet.key(0)]


def test_session_requests_stay_on_their_endpoint():
    scheduler = config.load(seed=4)
    states = [fleet.state(i) for i in range(4)]
    first = scheduler.schedule(
        fleet.request("a" * 300, request_id="1", session_token="s1"), fleet.snapshot(states)
    )
    for i in range(2, 10):
        request = fleet.request(f"turn {i} unrelated text " * 10, request_id=str(i), session_token="s1")
        assert scheduler.schedule(request, fleet.snapshot(states)).primary == first.primary


def test_the_load_aware_decider_prefills_locally_when_that_is_sooner():
    text = (
        config.builtin_text("frontier")
        .replace(
            "type: prefix-based-pd-decider\n  parameters: {nonCachedTokens: 2048}",
            "type: load-aware-pd-decider\n  parameters: {nonCachedTokens: 2048, maxPrefillBacklog: 8192}",
        )
        .replace(
            "parameters: {decodeProfile: frontier, prefillProfile: frontier-prefill}",
            "parameters: {decodeProfile: frontier, prefillProfile: frontier-prefill, "
            "deciderPluginName: load-aware-pd-decider}",
        )
    )
    long_prompt = "".join(f"document {i} ".ljust(64, "#") for i in range(160))  # ~2,560 tokens

    def decide(decode_running: int, prefill_waiting: int, request_id: str):
        scheduler = config.load(text, seed=2)
        states = [
            fleet.state(0, labels=fleet.role("prefill"), waiting=prefill_waiting),
            fleet.state(1, labels=fleet.role("decode"), running=decode_running),
        ]
        return scheduler.schedule(fleet.request(long_prompt, request_id=request_id), fleet.snapshot(states))

    assert decide(decode_running=8, prefill_waiting=0, request_id="busy").prefill == fleet.key(0)
    assert decide(decode_running=0, prefill_waiting=0, request_id="idle").prefill is None  # no one to stall
    assert (
        decide(decode_running=8, prefill_waiting=5, request_id="backed-up").prefill is None
    )  # 5 x 2048 > 8192


def _with_local_profile(text: str) -> str:
    """The `frontier` config whose P/D handler serves requests it keeps local on any role's endpoint."""
    document = yaml.safe_load(text)
    any_role = {"name": "any-role-filter", "type": "role-filter", "parameters": {"role": "any"}}
    document["plugins"].append(any_role)
    for item in document["plugins"]:
        if item["type"] == "pd-profile-handler":
            item["parameters"]["localProfile"] = "frontier-local"
    decode = next(p for p in document["schedulingProfiles"] if p["name"] == "frontier")
    local = [
        {"pluginRef": "any-role-filter"} if ref["pluginRef"] == "decode-filter" else ref
        for ref in decode["plugins"]
    ]
    document["schedulingProfiles"].append({"name": "frontier-local", "plugins": local})
    return yaml.safe_dump(document)


def test_a_local_profile_serves_requests_kept_local_on_idle_prefill_endpoints_too():
    scheduler = config.load(_with_local_profile(config.builtin_text("frontier")), seed=2)
    states = [
        fleet.state(0, labels=fleet.role("prefill")),
        fleet.state(1, labels=fleet.role("decode"), running=40, waiting=3),
    ]
    short = scheduler.schedule(fleet.request("hello " * 50, request_id="s"), fleet.snapshot(states))
    assert (short.primary, short.prefill) == (fleet.key(0), None)  # the idle prefill engine serves it whole
    long_prompt = "".join(f"document {i} ".ljust(64, "#") for i in range(160))  # ~2,560 tokens
    long = scheduler.schedule(fleet.request(long_prompt, request_id="l"), fleet.snapshot(states))
    assert (long.primary, long.prefill) == (fleet.key(1), fleet.key(0))  # disaggregated as before


def test_without_a_local_profile_requests_kept_local_stay_on_decode_endpoints():
    scheduler = config.load(seed=2)
    states = [
        fleet.state(0, labels=fleet.role("prefill")),
        fleet.state(1, labels=fleet.role("decode"), running=40, waiting=3),
    ]
    short = scheduler.schedule(fleet.request("hello " * 50, request_id="s"), fleet.snapshot(states))
    assert (short.primary, short.prefill) == (fleet.key(1), None)
