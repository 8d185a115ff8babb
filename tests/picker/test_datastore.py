"""The datastore keeps endpoint state across reloads and accounts load exactly; subset hints narrow it."""

import pytest
from google.protobuf import struct_pb2

from frontier_api import names
from frontier_picker import datastore, endpoints, subsets
from frontier_picker.scheduling import types


def endpoint(address: str, port: int = 8000, role: str | None = None) -> endpoints.Endpoint:
    labels = {names.ROLE_LABEL: role} if role else {}
    return endpoints.Endpoint(name=address, address=address, port=port, labels=labels)


def request(tokens: int = 10, max_tokens: int | None = 5) -> types.Request:
    return types.Request(
        request_id="r", model="m", target_model="m", prompt_tokens=tokens, max_tokens=max_tokens
    )


def test_reload_keeps_state_objects_of_endpoints_that_stay() -> None:
    store = datastore.Datastore()
    store.replace([endpoint("10.0.0.1"), endpoint("10.0.0.2")])
    kept = store.get("10.0.0.1:8000")
    assert kept is not None
    kept.metrics.waiting = 3
    store.replace([endpoint("10.0.0.1", role="decode"), endpoint("10.0.0.3")])
    assert store.get("10.0.0.1:8000") is kept
    assert kept.metrics.waiting == 3 and kept.endpoint.role == "decode"
    assert [state.endpoint.key for state in store.states()] == ["10.0.0.1:8000", "10.0.0.3:8000"]


def test_charge_and_refund_balance_even_after_the_endpoint_left() -> None:
    store = datastore.Datastore()
    store.replace([endpoint("10.0.0.1")])
    decision = types.Decision(endpoints=["10.0.0.1:8000"])
    charge = store.charge(request(), decision)
    state = store.get("10.0.0.1:8000")
    assert state is not None
    assert (state.load.in_flight, state.load.in_flight_prompt_tokens, state.load.in_flight_decode_tokens) == (
        1,
        10,
        5,
    )
    store.replace([])
    store.refund(charge)
    store.refund(charge)  # a second refund does nothing
    assert (state.load.in_flight, state.load.in_flight_prompt_tokens, state.load.in_flight_decode_tokens) == (
        0,
        0,
        0,
    )


def test_listeners_hear_every_change() -> None:
    store = datastore.Datastore()
    heard: list[int] = []
    store.subscribe(lambda: heard.append(len(store.states())))
    store.replace([endpoint("10.0.0.1")])
    store.replace([endpoint("10.0.0.1"), endpoint("10.0.0.2")])
    assert heard == [1, 2] and store.synced


def hint_struct(value: object) -> struct_pb2.Struct:
    namespace = struct_pb2.Struct()
    namespace.update({names.DESTINATION_SUBSET: value})
    return namespace


def test_subset_hint_as_list_or_comma_string() -> None:
    assert subsets.hint(hint_struct(["10.0.0.1:8000", "10.0.0.2"])) == ["10.0.0.1:8000", "10.0.0.2"]
    assert subsets.hint(hint_struct("10.0.0.1:8000, 10.0.0.2")) == ["10.0.0.1:8000", "10.0.0.2"]
    assert subsets.hint(hint_struct([])) == []
    assert subsets.hint(struct_pb2.Struct()) is None
    assert subsets.hint(None) is None


def test_subset_restrict_matches_ip_on_any_port_or_exact_ip_port() -> None:
    store = datastore.Datastore()
    store.replace([endpoint("10.0.0.1", 8000), endpoint("10.0.0.1", 8001), endpoint("10.0.0.2", 8000)])
    keys = [s.endpoint.key for s in subsets.restrict(store.states(), ["10.0.0.1"])]
    assert keys == ["10.0.0.1:8000", "10.0.0.1:8001"]
    keys = [s.endpoint.key for s in subsets.restrict(store.states(), ["10.0.0.2:8000", "10.0.0.9:1"])]
    assert keys == ["10.0.0.2:8000"]
    assert subsets.restrict(store.states(), []) == []


def test_the_director_gives_a_request_its_inference_objectives_priority() -> None:
    from frontier_picker import director
    from frontier_picker.scheduling import config, types

    store = datastore.Datastore()
    store.replace([endpoints.Endpoint(name="e0", address="127.9.0.1", port=8000)])
    store.replace_objectives({"batch": -1})
    routed = director.Director(scheduler=config.load(builtin="round-robin"), store=store, log_decisions=False)
    store.states()[0].metrics.updated_at = 0.0  # fresh and idle: nothing is saturated
    named = types.Request(request_id="a", model="m", target_model="m", objective="batch")
    routed.decide(named, now=0.0)
    unknown = types.Request(request_id="b", model="m", target_model="m", objective="nobody")
    routed.decide(unknown, now=0.0)
    assert (named.priority, unknown.priority) == (-1, 0)
    store.states()[0].metrics.waiting = 50  # saturated: the sheddable objective is refused, the other is not
    with pytest.raises(types.Rejection) as shed:
        routed.decide(types.Request(request_id="c", model="m", target_model="m", objective="batch"), now=0.0)
    assert shed.value.status == 429
    routed.decide(types.Request(request_id="d", model="m", target_model="m", objective="nobody"), now=0.0)
