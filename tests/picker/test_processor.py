"""The per-stream protocol handler driven directly with ext_proc messages (the Envoy tests cover the wire):
paths an Envoy in these tests does not take — a request without x-request-id (Envoy always adds one), the
served endpoint reported in `envoy.lb` metadata, a chunked body over the limit, a prefill decision."""

import datetime
from collections.abc import Sequence

import prometheus_client
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from google.protobuf import struct_pb2
from prometheus_client.parser import text_string_to_metric_families

from frontier_api import names
from frontier_picker import datastore, director, endpoints, metrics, processor
from frontier_picker.scheduling import types


class Fixed:
    """A scheduler that always returns the same decision and keeps completions."""

    def __init__(self, decision: types.Decision) -> None:
        self.decision = decision
        self.completions: list[types.Completion] = []

    def schedule(self, request: types.Request, snapshot: endpoints.Snapshot) -> types.Decision:
        return self.decision

    def on_completion(
        self, request: types.Request, decision: types.Decision, completion: types.Completion
    ) -> None:
        self.completions.append(completion)


def stream(decision: types.Decision, *, max_body_bytes: int = 1 << 20) -> tuple[processor.Stream, Fixed]:
    store = datastore.Datastore()
    store.replace(
        endpoints.Endpoint(name=key, address=key.split(":")[0], port=int(key.split(":")[1]))
        for key in ("10.0.0.1:8000", "10.0.0.2:8000")
    )
    scheduler = Fixed(decision)
    own_metrics = metrics.create()
    context = processor.Context(
        director=director.Director(scheduler=scheduler, store=store, metrics=own_metrics),
        metrics=own_metrics,
        settings=processor.Settings(max_body_bytes=max_body_bytes),
    )
    return processor.Stream(context), scheduler


def headers(pairs: Sequence[tuple[str, str]], *, end: bool = False) -> ext_proc.ProcessingRequest:
    header_map = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
    )
    return ext_proc.ProcessingRequest(
        request_headers=ext_proc.HttpHeaders(headers=header_map, end_of_stream=end)
    )


def body(data: bytes, *, end: bool) -> ext_proc.ProcessingRequest:
    return ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=data, end_of_stream=end))


def set_headers(reply: ext_proc.ProcessingResponse) -> dict[str, str]:
    mutation = reply.request_headers.response.header_mutation
    return {option.header.key: option.header.raw_value.decode() for option in mutation.set_headers}


def test_missing_request_id_is_generated_and_sent_upstream() -> None:
    handler, _ = stream(types.Decision(endpoints=["10.0.0.1:8000"]))
    (reply,) = handler.on_message(headers([(":path", "/v1/completions"), (":method", "GET")], end=True))
    sent = set_headers(reply)
    assert len(sent[names.REQUEST_ID]) == 32
    assert sent[names.DESTINATION_ENDPOINT] == "10.0.0.1:8000"
    assert reply.request_headers.response.clear_route_cache
    lb = reply.dynamic_metadata.fields[names.LB_NAMESPACE].struct_value
    assert lb.fields[names.DESTINATION_ENDPOINT].string_value == "10.0.0.1:8000"


def test_prefill_decision_adds_the_prefiller_header() -> None:
    handler, _ = stream(types.Decision(endpoints=["10.0.0.2:8000", "10.0.0.1:8000"], prefill="10.0.0.1:8000"))
    handler.on_message(headers([(":path", "/v1/completions"), ("x-request-id", "r1")]))
    decision, *chunks = handler.on_message(body(b'{"model":"m","prompt":"p"}', end=True))
    sent = set_headers(decision)
    assert sent[names.DESTINATION_ENDPOINT] == "10.0.0.2:8000,10.0.0.1:8000"
    assert sent[names.PREFILLER_HOST_PORT] == "10.0.0.1:8000"
    assert names.REQUEST_ID not in sent
    assert [c.request_body.response.body_mutation.streamed_response.body for c in chunks] == [
        b'{"model":"m","prompt":"p"}'
    ]


def test_a_client_sent_prefiller_header_is_removed_and_a_decided_one_overwrites_it() -> None:
    forged = ("x-prefiller-host-port", "203.0.113.9:80")
    handler, _ = stream(types.Decision(endpoints=["10.0.0.1:8000"]))
    (reply,) = handler.on_message(headers([(":path", "/v1/models"), forged], end=True))
    mutation = reply.request_headers.response.header_mutation
    assert list(mutation.remove_headers) == [names.PREFILLER_HOST_PORT]
    assert names.PREFILLER_HOST_PORT not in set_headers(reply)
    handler, _ = stream(types.Decision(endpoints=["10.0.0.2:8000"], prefill="10.0.0.1:8000"))
    (reply,) = handler.on_message(headers([(":path", "/v1/models"), forged], end=True))
    assert set_headers(reply)[names.PREFILLER_HOST_PORT] == "10.0.0.1:8000"  # overwrite, not append


def test_chunked_body_over_the_limit_is_refused_with_413() -> None:
    handler, _ = stream(types.Decision(endpoints=["10.0.0.1:8000"]), max_body_bytes=100)
    handler.on_message(headers([(":path", "/v1/completions")]))
    assert handler.on_message(body(b"x" * 60, end=False)) == []
    (reply,) = handler.on_message(body(b"x" * 60, end=False))
    assert reply.immediate_response.status.code == 413
    assert b"exceeds the limit of 100 bytes" in reply.immediate_response.body
    assert handler.closed


def test_bodies_past_the_pickers_buffering_budget_get_503_and_a_finished_body_frees_its_share() -> None:
    first, _ = stream(types.Decision(endpoints=["10.0.0.1:8000"]))
    first.ctx.budget.limit = 100  # all streams of one picker share it
    second = processor.Stream(first.ctx)
    for handler in (first, second):
        handler.on_message(headers([(":path", "/v1/completions")]))
    assert first.on_message(body(b'{"model":"m","prompt":"' + b"x" * 40, end=False)) == []
    (refused,) = second.on_message(body(b'{"model":"m","prompt":"' + b"y" * 60, end=False))
    assert refused.immediate_response.status.code == 503
    assert b"buffering its limit of 100 request-body bytes" in refused.immediate_response.body
    decided, *_ = first.on_message(body(b'"}', end=True))
    assert set_headers(decided)[names.DESTINATION_ENDPOINT] == "10.0.0.1:8000"
    assert first.ctx.budget.used == 0
    third = processor.Stream(first.ctx)
    third.on_message(headers([(":path", "/v1/completions")]))
    decided, *_ = third.on_message(body(b'{"model":"m","prompt":"' + b"z" * 60 + b'"}', end=True))
    assert set_headers(decided)[names.DESTINATION_ENDPOINT] == "10.0.0.1:8000"


def test_a_chunked_body_is_decided_once_its_first_part_is_in_and_the_rest_passes_through() -> None:
    first, _ = stream(types.Decision(endpoints=["10.0.0.1:8000"]), max_body_bytes=1 << 22)
    first.ctx.settings.early_decision_prompt_chars = 100
    first.ctx.settings.chunked_decision_bytes = 1000
    handler = processor.Stream(first.ctx)
    handler.on_message(headers([(":path", "/v1/completions"), (names.MODEL_NAME_REWRITE, "m2")]))
    assert handler.on_message(body(b'{"model":"m","prompt":"' + b"x" * 600, end=False)) == []  # < 1000
    decided, *passed = handler.on_message(body(b"x" * 600, end=False))
    sent = set_headers(decided)
    assert sent[names.DESTINATION_ENDPOINT] == "10.0.0.1:8000"
    assert "content-length" not in sent  # the size is unknown: the body stays chunked
    echoed = b"".join(c.request_body.response.body_mutation.streamed_response.body for c in passed)
    assert echoed == b'{"model":"m2","prompt":"' + b"x" * 1200
    assert handler.ctx.budget.used == 0  # nothing held once decided
    (rest,) = handler.on_message(body(b'"}', end=True))
    assert rest.request_body.response.body_mutation.streamed_response.body == b'"}'


def test_while_overloaded_new_requests_get_503_and_a_routed_one_goes_on_to_its_completion() -> None:
    routed, scheduler = stream(types.Decision(endpoints=["10.0.0.1:8000"]))
    routed.on_message(headers([(":path", "/v1/completions"), ("x-request-id", "r1")]))
    routed.on_message(body(b'{"model":"m","prompt":"p"}', end=True))
    routed.ctx.loop_lag.lag_s = 2 * routed.ctx.loop_lag.limit_s  # the picker falls behind
    new = processor.Stream(routed.ctx)
    (refused,) = new.on_message(headers([(":path", "/v1/completions"), ("x-request-id", "r2")]))
    assert refused.immediate_response.status.code == 503
    assert b"overloaded" in refused.immediate_response.body
    assert new.closed and new.flight is None
    # The routed request's response still passes and completes it.
    response = ext_proc.ProcessingRequest(
        response_headers=ext_proc.HttpHeaders(
            headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=":status", raw_value=b"200")]),
            end_of_stream=True,
        )
    )
    assert routed.on_message(response)
    assert [(c.status, c.aborted) for c in scheduler.completions] == [(200, False)]


def test_a_request_reaching_the_picker_long_after_the_gateway_got_it_is_refused_with_503() -> None:
    first, _ = stream(types.Decision(endpoints=["10.0.0.1:8000"]))
    now = 1_800_000_000.0
    first.ctx.wall_clock = lambda: now

    def arriving(transit_s: float) -> ext_proc.ProcessingRequest:
        message = headers([(":path", "/v1/completions"), (":method", "GET")], end=True)
        sent = datetime.datetime.fromtimestamp(now - transit_s, tz=datetime.UTC).isoformat()
        message.attributes["envoy.filters.http.ext_proc"].fields["request.time"].string_value = sent
        return message

    (routed,) = first.on_message(arriving(0.01))
    assert set_headers(routed)[names.DESTINATION_ENDPOINT] == "10.0.0.1:8000"
    (refused,) = processor.Stream(first.ctx).on_message(arriving(6.0))  # past the 5 s default
    assert refused.immediate_response.status.code == 503
    assert b"overloaded" in refused.immediate_response.body


def test_served_endpoint_from_lb_metadata_names_the_completion() -> None:
    handler, scheduler = stream(types.Decision(endpoints=["10.0.0.1:8000", "10.0.0.2:8000"]))
    handler.on_message(headers([(":path", "/v1/completions"), ("x-request-id", "r2")]))
    handler.on_message(body(b'{"model":"m","prompt":"p"}', end=True))
    served = struct_pb2.Struct()
    served.update({names.DESTINATION_ENDPOINT_SERVED: "10.0.0.2:8000"})
    response = ext_proc.ProcessingRequest(
        response_headers=ext_proc.HttpHeaders(
            headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=":status", raw_value=b"200")]),
            end_of_stream=True,
        )
    )
    response.metadata_context.filter_metadata[names.LB_NAMESPACE].CopyFrom(served)
    handler.on_message(response)
    assert [(c.endpoint, c.status, c.aborted) for c in scheduler.completions] == [
        ("10.0.0.2:8000", 200, False)
    ]
    handler.complete(aborted=True)  # the stream closing later does not count it twice
    assert len(scheduler.completions) == 1
    assert handler.ctx.director.store.in_flight() == 0


def test_stream_that_ends_before_the_response_is_an_aborted_completion() -> None:
    handler, scheduler = stream(types.Decision(endpoints=["10.0.0.1:8000"]))
    handler.on_message(headers([(":path", "/v1/completions"), ("x-request-id", "r3")]))
    handler.on_message(body(b'{"model":"m","prompt":"p"}', end=True))
    assert handler.ctx.director.store.in_flight() == 1
    handler.complete(aborted=not handler.finished())
    assert scheduler.completions[0].aborted
    assert handler.ctx.director.store.in_flight() == 0


class Broken(Fixed):
    def schedule(self, request: types.Request, snapshot: endpoints.Snapshot) -> types.Decision:
        raise KeyError("a bug")


def test_a_scheduler_bug_answers_500_and_names_the_picker() -> None:
    handler, _ = stream(types.Decision(endpoints=["10.0.0.1:8000"]))
    handler.ctx.director.scheduler = Broken(types.Decision(endpoints=[]))
    handler.on_message(headers([(":path", "/v1/completions"), ("x-request-id", "r4")]))
    (reply,) = handler.on_message(body(b'{"model":"m","prompt":"p"}', end=True))
    assert reply.immediate_response.status.code == 500
    assert b"internal error in the endpoint picker" in reply.immediate_response.body
    assert handler.ctx.director.store.in_flight() == 0


def test_model_names_from_clients_are_bounded_label_values() -> None:
    own = metrics.create()
    assert own.model_label("never-served") == metrics.OTHER_MODEL  # only a 2xx answer admits a name
    assert own.model_label("x" * (metrics.MAX_LABEL_CHARS + 1), admit=True) == metrics.OTHER_MODEL
    seen = {own.model_label(f"model-{i}", admit=True) for i in range(metrics.MAX_MODEL_LABELS + 50)}
    assert len(seen) == metrics.MAX_MODEL_LABELS + 1  # the first 256, then everything else is "other"
    assert own.model_label("model-3") == "model-3"
    assert own.fairness_label("t" * (metrics.MAX_LABEL_CHARS + 1)) == metrics.OTHER_MODEL


def test_only_a_model_an_endpoint_answered_with_2xx_becomes_a_label_value() -> None:
    for status, expected in ((404, metrics.OTHER_MODEL), (200, "served-model")):
        handler, _ = stream(types.Decision(endpoints=["10.0.0.1:8000"]))
        handler.on_message(headers([(":path", "/v1/completions")]))
        handler.on_message(body(b'{"model":"served-model","prompt":"p"}', end=True))
        handler.on_message(
            ext_proc.ProcessingRequest(
                response_headers=ext_proc.HttpHeaders(
                    headers=headers([(":status", str(status))]).request_headers.headers, end_of_stream=True
                )
            )
        )
        text = prometheus_client.generate_latest(handler.ctx.metrics.registry).decode()
        assert f'frontier_picker_requests_total{{code="{status}",model_name="{expected}"' in text


def test_the_body_budget_is_shared_by_streams_refuses_past_it_and_is_returned_at_the_decision() -> None:
    first, _ = stream(types.Decision(endpoints=["10.0.0.1:8000"]))
    context = first.ctx
    context.budget = processor.BodyBudget(limit=100)
    second = processor.Stream(context)
    for handler in (first, second):
        handler.on_message(headers([(":path", "/v1/completions")]))
    assert first.on_message(body(b'{"model":"m","prompt":"' + b"x" * 40, end=False)) == []
    (refused,) = second.on_message(body(b'{"model":"m","prompt":"' + b"y" * 60, end=False))
    assert refused.immediate_response.status.code == 503
    assert b"buffering its limit of 100" in refused.immediate_response.body
    assert context.budget.used == 63  # the refused chunk took nothing
    decision, *_ = first.on_message(body(b'"}', end=True))
    assert decision.request_headers.response.header_mutation.set_headers
    assert context.budget.used == 0  # the decided body went on to Envoy: its bytes are free again
    third = processor.Stream(context)
    third.on_message(headers([(":path", "/v1/completions")]))
    assert third.on_message(body(b'{"model":"m","prompt":"' + b"z" * 60, end=False)) == []
    third.release_body()  # the stream closed before its body ended
    assert context.budget.used == 0


class Tiered(Fixed):
    """Chooses tier `big` for the virtual model `auto`, as the tier router does."""

    def schedule(self, request: types.Request, snapshot: endpoints.Snapshot) -> types.Decision:
        request.target_model = "org/big-model"
        tier = types.TierChoice(
            virtual_model="auto", model="org/big-model", reason="classifier", category="code"
        )
        return types.Decision(endpoints=["10.0.0.1:8000"], tier=tier)


def test_the_chosen_tier_is_spliced_into_the_body_and_named_on_the_response() -> None:
    handler, _ = stream(types.Decision(endpoints=[]))
    handler.ctx.director.scheduler = Tiered(types.Decision(endpoints=[]))
    handler.on_message(headers([(":path", "/v1/completions"), ("x-request-id", "r7")]))
    decision, *_ = handler.on_message(body(b'{"model": "auto", "prompt": "p"}', end=True))
    assert set_headers(decision)["content-length"] == str(len(b'{"model": "org/big-model", "prompt": "p"}'))
    (reply,) = handler.on_message(
        ext_proc.ProcessingRequest(
            response_headers=ext_proc.HttpHeaders(
                headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=":status", raw_value=b"200")])
            )
        )
    )
    mutation = reply.response_headers.response.header_mutation
    added = {option.header.key: option.header.raw_value.decode() for option in mutation.set_headers}
    assert added == {names.TIER_HEADER: "org/big-model", names.TIER_REASON_HEADER: "classifier"}


def test_a_body_the_tier_cannot_be_spliced_into_is_refused_and_its_charge_refunded() -> None:
    handler, scheduler = stream(types.Decision(endpoints=[]))
    handler.ctx.director.scheduler = Tiered(types.Decision(endpoints=[]))
    handler.on_message(headers([(":path", "/v1/completions"), ("x-request-id", "r8")]))
    (reply,) = handler.on_message(body(b'{"model":"auto","prompt":"p","model":"auto"}', end=True))
    assert reply.immediate_response.status.code == 400
    assert b"more than once" in reply.immediate_response.body
    assert handler.ctx.director.store.in_flight() == 0
    assert scheduler.completions == [] and handler.ctx.director.scheduler.completions[0].aborted


def test_gie_dashboards_find_their_metric_names() -> None:
    handler, _ = stream(types.Decision(endpoints=["10.0.0.1:8000"]))
    own = handler.ctx.metrics
    metrics.watch_pool(own, "chat", handler.ctx.director.store.states)
    handler.on_message(headers([(":path", "/v1/completions"), ("x-request-id", "r9")]))
    handler.on_message(body(b'{"model":"m","prompt":"p"}', end=True))
    flight = handler.flight
    assert flight is not None
    completion = types.Completion(
        endpoint="10.0.0.1:8000",
        status=200,
        prompt_tokens=40,
        completion_tokens=11,
        ttft_s=0.2,
        duration_s=1.2,
    )
    handler.ctx.director.complete(flight, completion)
    text = prometheus_client.generate_latest(own.registry).decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    model = (("model_name", "m"), ("target_model_name", "m"))
    assert samples[("inference_objective_request_total", (*model[:1], ("priority", "0"), *model[1:]))] == 1
    assert samples[("inference_objective_request_ttft_seconds_count", model)] == 1
    assert samples[("inference_objective_request_tpot_seconds_sum", model)] == pytest.approx(0.1)  # 1.0 / 10
    assert samples[("inference_objective_input_tokens_sum", model)] == 40
    assert samples[("inference_pool_ready_pods", (("name", "chat"),))] == 2
    assert samples[("inference_extension_scheduler_e2e_duration_seconds_count", ())] == 1


def test_a_peer_is_its_host_and_its_refusals_are_logged_once_per_interval() -> None:
    assert processor.peer_host("ipv4:10.0.0.7:51234") == "ipv4:10.0.0.7"
    assert processor.peer_host("ipv6:[::1]:51234") == "ipv6:[::1]"
    assert processor.peer_host("unix:/run/picker.sock") == "unix:/run/picker.sock"
    peers = processor.PeerStreams(cap=1)
    assert peers.enter("a") and not peers.enter("a") and peers.enter("b")
    assert peers.refused("a", now=100.0) == 1  # the first refusal is logged at once
    assert peers.refused("a", now=101.0) == 0
    assert peers.refused("a", now=102.0) == 0
    assert peers.refused("a", now=100.0 + processor.REFUSAL_LOG_INTERVAL_S) == 3  # then the count so far
    peers.leave("a")
    peers.leave("b")
    assert peers.open == {}  # peers gone leave nothing behind
    unlimited = processor.PeerStreams(cap=0)
    assert all(unlimited.enter("a") for _ in range(10_000))
