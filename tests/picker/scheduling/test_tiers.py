"""Tier routing users rely on: a request for a virtual model goes to the cheapest tier good enough for it,
rules and the classifier decide what is good enough, a saturated tier spills to the next, a conversation
stays on the tier holding its context, and a model nothing serves is a clear 404."""

import json

import pytest
import yaml

from frontier_api import names
from frontier_picker.scheduling import config, types
from frontier_picker.scheduling.plugins import classifier

from . import fleet

SMALL = "meta-llama/Llama-3.1-8B-Instruct"
LARGE = "meta-llama/Llama-3.1-70B-Instruct"


def tier_config(**router: object) -> str:
    parameters = {
        "virtualModels": {
            "auto": [
                {"model": SMALL, "rank": 0, "relativeCost": 1, "maxPromptTokens": 2000, "fallback": True},
                {"model": LARGE, "rank": 1, "relativeCost": 8, "keywords": ["prove", "theorem"]},
            ]
        },
        **router,
    }
    document = {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": [
            {"type": "model-filter"},
            {"type": "queue-scorer"},
            {"type": "prefix-cache-scorer"},
            {"type": "tier-router", "parameters": parameters},
        ],
        "schedulingProfiles": [
            {
                "name": "default",
                "plugins": [
                    {"pluginRef": "model-filter"},
                    {"pluginRef": "queue-scorer"},
                    {"pluginRef": "prefix-cache-scorer", "weight": 3},
                ],
            }
        ],
    }
    return yaml.safe_dump(document)


def fleet_states(*, small_waiting: int = 0, large_waiting: int = 0) -> list:
    return [
        fleet.state(0, waiting=small_waiting, labels={names.MODEL_LABEL: SMALL}),
        fleet.state(1, waiting=small_waiting, labels={names.MODEL_LABEL: SMALL}),
        fleet.state(2, waiting=large_waiting, labels={names.MODEL_LABEL: LARGE}),
    ]


def route(scheduler, prompt: str, *, states=None, **fields) -> tuple[types.Request, types.Decision]:
    request = fleet.request(prompt, model=fields.pop("model", "auto"), **fields)
    decision = scheduler.schedule(request, fleet.snapshot(states or fleet_states()))
    return request, decision


def test_category_header_picks_the_cheapest_tier_of_the_rank_it_needs():
    scheduler = config.load(tier_config())
    request, decision = route(scheduler, "hello there", headers={names.CATEGORY_HEADER: "chit-chat"})
    assert request.target_model == SMALL and decision.primary in {fleet.key(0), fleet.key(1)}
    assert decision.tier == types.TierChoice(
        virtual_model="auto", model=SMALL, reason="header", category="chit-chat"
    )
    request, decision = route(scheduler, "fix my parser", headers={names.CATEGORY_HEADER: "code"})
    assert request.target_model == LARGE and decision.primary == fleet.key(2)
    assert decision.tier is not None and decision.tier.reason == "header"


def test_keyword_and_prompt_length_rules_choose_the_large_tier():
    scheduler = config.load(tier_config())
    request, decision = route(scheduler, "Prove that the square root of two is irrational.")
    assert (request.target_model, decision.tier and decision.tier.reason) == (LARGE, "rule")
    long_prompt = "tell me more about the weather " * 400  # ~3,000 tokens: over the small tier's bound
    request, decision = route(scheduler, long_prompt)
    assert (request.target_model, decision.tier and decision.tier.reason) == (LARGE, "rule")


def test_without_rule_or_classifier_the_fallback_tier_serves():
    scheduler = config.load(tier_config())
    request, decision = route(scheduler, "what should I cook tonight?")
    assert (request.target_model, decision.tier and decision.tier.reason) == (SMALL, "fallback")


def test_a_saturated_tier_spills_to_the_next_and_without_spill_it_does_not():
    busy = fleet_states(small_waiting=9)
    request, decision = route(config.load(tier_config()), "what should I cook tonight?", states=busy)
    assert (request.target_model, decision.tier and decision.tier.reason) == (LARGE, "spill")
    request, decision = route(config.load(tier_config(spill=False)), "what to cook?", states=busy)
    assert (request.target_model, decision.tier and decision.tier.reason) == (SMALL, "fallback")


def test_spill_down_reaches_only_fallback_tiers_and_everything_busy_stays_on_the_first():
    scheduler = config.load(tier_config())
    busy_large = fleet_states(large_waiting=9)
    request, decision = route(scheduler, "prove it", states=busy_large)  # needs rank 1; small is fallback
    assert (request.target_model, decision.tier and decision.tier.reason) == (SMALL, "spill")
    all_busy = fleet_states(small_waiting=9, large_waiting=9)
    request, decision = route(scheduler, "prove it", states=all_busy)
    assert (request.target_model, decision.tier and decision.tier.reason) == (LARGE, "all-saturated")


def test_a_tier_with_no_ready_endpoint_is_skipped():
    only_large = fleet_states()[2:]
    request, decision = route(config.load(tier_config()), "what to cook?", states=only_large)
    assert request.target_model == LARGE and decision.tier is not None and decision.tier.reason == "spill"


def test_a_conversation_stays_on_the_tier_that_holds_its_context():
    scheduler = config.load(tier_config())
    history = "".join(f"earlier turn {i} of a long conversation ".ljust(64, ".") for i in range(16))
    first, decision = route(scheduler, history, headers={names.CATEGORY_HEADER: "code"})
    assert first.target_model == LARGE
    # A follow-up that alone would go to the cheap tier keeps the context where it is cached.
    request, decision = route(
        scheduler, history + " thanks!", headers={names.CATEGORY_HEADER: "chit-chat"}, request_id="r2"
    )
    assert (request.target_model, decision.tier and decision.tier.reason) == (LARGE, "affinity")


def test_served_models_route_as_named_and_unknown_models_get_404():
    scheduler = config.load(tier_config())
    request, decision = route(scheduler, "hello", model=SMALL)
    assert decision.tier is None and request.target_model == SMALL
    with pytest.raises(types.Rejection) as refused:
        route(scheduler, "hello", model="gpt-9")
    assert refused.value.status == 404 and "gpt-9" in refused.value.reason and "auto" in refused.value.reason


def test_a_gateway_rewrite_header_wins_over_the_virtual_model():
    scheduler = config.load(tier_config())
    request, decision = route(scheduler, "prove it", target_model=SMALL)
    assert request.target_model == SMALL and decision.tier is None


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("examples") / "examples.jsonl"
    lines = [
        *({"category": "code", "prompt": f"fix the python function bug {i} in my script"} for i in range(20)),
        *({"category": "chit-chat", "prompt": f"hi how are you doing today friend {i}"} for i in range(20)),
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines))
    return str(path)


def test_the_classifier_decides_when_no_rule_does(examples):
    text = tier_config(classifier="classify", categoryRanks={"code": 1, "chit-chat": 0})
    document = yaml.safe_load(text)
    document["plugins"].append(
        {"name": "classify", "type": "prompt-classifier", "parameters": {"examples": examples}}
    )
    scheduler = config.load(yaml.safe_dump(document))
    request, decision = route(scheduler, "there is a bug in this python function")
    assert request.target_model == LARGE
    assert decision.tier is not None and (decision.tier.reason, decision.tier.category) == (
        "classifier",
        "code",
    )
    assert decision.tier.classify_s > 0
    request, decision = route(scheduler, "hey friend, how are you?")
    assert request.target_model == SMALL and decision.tier is not None
    assert decision.tier.category == "chit-chat"


@pytest.mark.parametrize(
    ("router", "message"),
    [
        ({"virtualModels": {"auto": [{"model": SMALL, "price": 1}]}}, "unknown field 'price'"),
        ({"virtualModels": {"auto": []}}, "non-empty list"),
        ({"virtualModels": {"auto": [{"model": SMALL}, {"model": SMALL}]}}, "listed twice"),
        ({"classifier": "model-filter"}, "is not a prompt-classifier"),
        ({"categoryRanks": {"code": -1}}, "integers >= 0"),
    ],
)
def test_bad_router_parameters_are_refused_naming_the_field(router, message):
    document = yaml.safe_load(tier_config())
    document["plugins"][3]["parameters"].update(router)
    with pytest.raises(config.ConfigError, match=message):
        config.load(yaml.safe_dump(document))


def test_a_classifier_category_without_a_rank_is_refused(examples):
    document = yaml.safe_load(tier_config(classifier="classify", categoryRanks={"code": 1}))
    document["plugins"].append(
        {"name": "classify", "type": "prompt-classifier", "parameters": {"examples": examples}}
    )
    with pytest.raises(config.ConfigError, match="no rank for chit-chat"):
        config.load(yaml.safe_dump(document))


def test_training_is_deterministic_and_reads_a_bounded_window(examples):
    from frontier_api import prompt_categories

    loaded = prompt_categories.load(examples)
    first = classifier.train(loaded, max_chars=40)
    second = classifier.train(loaded, max_chars=40)
    assert (first.weights == second.weights).all()
    # Only the head and tail are read: what sits in the middle of a long prompt cannot change the answer.
    head, tail = "fix the python function bug ", " in my script please"
    padded = [head + filler * 200 + tail for filler in ("hi friend ", "how are you ")]
    assert first.classify(padded[0]).probability == pytest.approx(first.classify(padded[1]).probability)


def test_an_unsure_classifier_buys_quality_when_told_to(examples):
    def scheduler(confidence: float):
        document = yaml.safe_load(
            tier_config(
                classifier="classify", categoryRanks={"code": 1, "chit-chat": 0}, minConfidence=confidence
            )
        )
        document["plugins"].append(
            {"name": "classify", "type": "prompt-classifier", "parameters": {"examples": examples}}
        )
        return config.load(yaml.safe_dump(document))

    vague = "how was your week"
    router = scheduler(0.0).router
    assert router is not None and router.classifier is not None
    sure = router.classifier.classify(fleet.request(vague)).probability  # below 1: a softmax never is
    request, decision = route(scheduler(sure - 1e-6), vague)
    assert (
        decision.tier is not None and decision.tier.category == "chit-chat" and request.target_model == SMALL
    )
    request, decision = route(scheduler(sure + 1e-6), vague)
    assert (
        decision.tier is not None and decision.tier.category == "chit-chat" and request.target_model == LARGE
    )


def test_a_lora_adapter_name_routes_to_the_endpoints_declaring_it():
    from frontier_picker import datastore, director, endpoints

    store = datastore.Datastore()
    store.replace(
        endpoints.Endpoint(
            name=f"e{i}",
            address=f"127.5.1.{i + 1}",
            port=8000,
            labels={names.MODEL_LABEL: SMALL},
            adapters=frozenset({"sql-lora"}) if i == 2 else frozenset(),
        )
        for i in range(3)
    )
    for state in store.states():
        state.metrics.updated_at = fleet.NOW
    routed = director.Director(scheduler=config.load(tier_config()), store=store, log_decisions=False)
    request = fleet.request("select the top customers", model="sql-lora")
    decision = routed.decide(request, now=fleet.NOW).decision
    assert request.lora_adapter == "sql-lora" and decision.primary == "127.5.1.3:8000"
    with pytest.raises(types.Rejection) as unknown:
        routed.decide(fleet.request("x", model="no-such-lora", request_id="r2"), now=fleet.NOW)
    assert unknown.value.status == 404
