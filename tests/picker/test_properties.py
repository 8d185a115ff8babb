"""Property-based tests (Hypothesis) of what parses client and engine input: whatever bytes arrive, the
parsers answer with their own error or a sane value, never another exception; the model rewrite changes
nothing but the model; any chunking of a body gives the same decision and returns every charged byte."""

import math

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frontier_api import names
from frontier_picker import bodies, scraper
from frontier_picker.scheduling import types

from .test_processor import body, headers, stream

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FAMILIES = [b"vllm:num_requests_waiting", b"vllm:num_requests_running", b"vllm:kv_cache_usage_perc"]
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(lambda v: repr(v).encode()),
    st.sampled_from([b"NaN", b"+Inf", b"-Inf", b"1e400", b"-0", b"", b"x", b"0.5", b"3"]),
)
LINE = st.one_of(
    st.tuples(st.sampled_from(FAMILIES), st.binary(max_size=20), VALUES).map(
        lambda t: t[0] + b"{" + t[1] + b"} " + t[2]
    ),
    st.tuples(st.sampled_from(FAMILIES), VALUES).map(lambda t: t[0] + b" " + t[1]),
    st.binary(max_size=60),
)


@FAST
@given(st.lists(LINE, max_size=12).map(b"\n".join))
def test_any_metrics_page_is_read_sanely_or_refused_with_a_scrape_error(page: bytes) -> None:
    try:
        metrics = scraper.parse(page, names.ENGINE_VLLM, now=1.0)
    except scraper.ScrapeError:
        return
    assert metrics.waiting >= 0 and metrics.running >= 0
    assert 0.0 <= metrics.kv_usage <= 1.0 and math.isfinite(metrics.kv_usage)


@FAST
@given(st.binary(max_size=300))
def test_any_body_is_parsed_or_refused_with_400(data: bytes) -> None:
    try:
        document = bodies.parse(data)
    except bodies.BodyError as error:
        assert error.status == 400
        return
    assert isinstance(document["model"], str) and document["model"]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@FAST
@given(
    st.dictionaries(st.text(max_size=8).filter(lambda k: k != "model"), JSON_VALUES, max_size=5),
    st.text(min_size=1, max_size=20),
    st.text(min_size=1, max_size=20),
    st.integers(min_value=0, max_value=5),
)
def test_the_model_rewrite_changes_the_model_and_nothing_else(
    fields: dict, model: str, target: str, position: int
) -> None:
    items = list(fields.items())
    items.insert(min(position, len(items)), ("model", model))
    original = orjson.dumps(dict(items))
    rewritten = bodies.rewrite_model(original, target)
    assert orjson.loads(rewritten) == {**dict(items), "model": target}


@FAST
@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=8))
def test_any_chunking_of_a_body_gives_one_decision_and_frees_every_buffered_byte(cuts: list[int]) -> None:
    data = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 120}]})
    handler, _ = stream(types.Decision(endpoints=["10.0.0.1:8000"]))
    handler.on_message(headers([(":path", "/v1/chat/completions")]))
    start = 0
    replies = []
    for size in cuts:
        piece = data[start : start + size]
        start += size
        if not piece:
            break
        replies += handler.on_message(body(piece, end=False))
    replies += handler.on_message(body(data[start:], end=True))
    decided = [r for r in replies if r.HasField("request_headers")]
    assert len(decided) == 1
    streamed = b"".join(
        r.request_body.response.body_mutation.streamed_response.body
        for r in replies
        if r.HasField("request_body")
    )
    assert streamed == data  # every byte goes on, in order, unchanged
    assert handler.ctx.budget.used == 0
    assert handler.flight is not None and handler.flight.request.model == "m"


def _message(kind: str, payload: bytes, end: bool) -> ext_proc.ProcessingRequest:
    if kind == "request_headers":
        return headers([(":path", "/v1/completions"), ("content-length", str(len(payload)))], end=end)
    if kind == "request_body":
        return body(payload, end=end)
    if kind == "response_headers":
        header_map = base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=":status", raw_value=b"200")])
        return ext_proc.ProcessingRequest(
            response_headers=ext_proc.HttpHeaders(headers=header_map, end_of_stream=end)
        )
    if kind == "response_body":
        return ext_proc.ProcessingRequest(response_body=ext_proc.HttpBody(body=payload, end_of_stream=end))
    if kind == "request_trailers":
        return ext_proc.ProcessingRequest(request_trailers=ext_proc.HttpTrailers())
    return ext_proc.ProcessingRequest(response_trailers=ext_proc.HttpTrailers())


BOOLS = st.booleans()
KINDS = st.sampled_from(
    [
        "request_headers",
        "request_body",
        "request_trailers",
        "response_headers",
        "response_body",
        "response_trailers",
    ]
)


@FAST
@given(
    st.lists(
        st.tuples(
            KINDS,
            st.sampled_from([b'{"model":"m","prompt":"hi"}', b"{", b"", b"data: {}\n\n"]),
            st.booleans(),
        ),
        max_size=10,
    ),
    st.booleans(),
)
def test_any_message_order_or_reset_leaves_no_charge_and_no_buffered_byte(
    messages: list[tuple[str, bytes, bool]], reset: bool
) -> None:
    handler, _ = stream(types.Decision(endpoints=["10.0.0.1:8000"]))
    for kind, payload, end in messages:
        handler.on_message(_message(kind, payload, end))  # a protocol error answers; it never raises
        if handler.closed:
            break
    # The servicer's `finally`: whatever happened, the stream gives back its body bytes and its charge.
    handler.release_body()
    handler.complete(aborted=reset or not handler.finished())
    assert handler.ctx.budget.used == 0
    assert handler.ctx.director.store.in_flight() == 0
