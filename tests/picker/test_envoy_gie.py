"""The picker behind a real Envoy configured as GKE/Istio configure the GIE filter (full-duplex bodies):
routing, fallbacks, subsets, refusals, body integrity, streamed responses and completion accounting."""

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator

import aiohttp
import multidict
import pytest

from frontier_api import names

from . import stack

pytestmark = pytest.mark.envoy


@pytest.fixture(scope="module")
def gie(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.Stack]:
    running = stack.start(tmp_path_factory.mktemp("gie"), mode="gie", backends=3, fallbacks=1)
    yield running
    running.stop()


def chat_body(size: int, *, model: str = "llama") -> bytes:
    """A chat-completions JSON body of exactly `size` bytes (the prompt pads it)."""
    head = b'{"model":%s,"messages":[{"role":"user","content":"' % json.dumps(model).encode()
    tail = b'"}],"max_tokens":8}'
    padding = size - len(head) - len(tail)
    assert padding >= 0
    return head + (b"abcdefghij" * (padding // 10 + 1))[:padding] + tail


async def post(
    url: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, bytes, multidict.CIMultiDict[str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers or {}) as response,
    ):
        return response.status, await response.read(), response.headers.copy()


def last_received(gie: stack.Stack, key: str) -> stack.Received:
    return gie.backend(key).received[-1]


async def test_each_request_reaches_exactly_the_endpoint_the_picker_chose(gie: stack.Stack) -> None:
    before = len(gie.scheduler.decisions)
    for _ in range(6):
        status, body, headers = await post(gie.url + "/v1/chat/completions", chat_body(200))
        assert status == 200, body
        _, decision = gie.scheduler.decisions[-1]
        assert headers["x-served-by"] == decision.primary
        received = last_received(gie, decision.primary)
        assert received.headers[names.DESTINATION_ENDPOINT] == ",".join(decision.endpoints)
    chosen = {decision.primary for _, decision in gie.scheduler.decisions[before:]}
    assert chosen == {backend.key for backend in gie.backends}  # round-robin visited all three


async def test_decision_carries_primary_then_fallback(gie: stack.Stack) -> None:
    await post(gie.url + "/v1/completions", b'{"model":"m","prompt":"hi"}')
    _, decision = gie.scheduler.decisions[-1]
    assert len(decision.endpoints) == 2 and decision.endpoints[0] != decision.endpoints[1]


@pytest.mark.parametrize("form", ["ip", "ip:port"])
async def test_subset_hint_restricts_the_choice(gie: stack.Stack, form: str) -> None:
    target = gie.backends[1]
    hint = target.address if form == "ip" else target.key
    for _ in range(4):
        status, _, headers = await post(
            gie.url + "/v1/completions", b'{"model":"m","prompt":"hi"}', {names.DESTINATION_SUBSET: hint}
        )
        assert status == 200
        assert headers["x-served-by"] == target.key


async def test_subset_hint_of_two_endpoints_uses_only_those(gie: stack.Stack) -> None:
    allowed = {gie.backends[0].key, gie.backends[2].key}
    served = set()
    for _ in range(6):
        status, _, headers = await post(
            gie.url + "/v1/completions",
            b'{"model":"m","prompt":"hi"}',
            {names.DESTINATION_SUBSET: ",".join(allowed)},
        )
        assert status == 200
        served.add(headers["x-served-by"])
    assert served == allowed


async def test_subset_hint_matching_nothing_gives_503_with_reason(gie: stack.Stack) -> None:
    status, body, headers = await post(
        gie.url + "/v1/completions",
        b'{"model":"m","prompt":"hi"}',
        {names.DESTINATION_SUBSET: "127.2.0.250:1"},
    )
    assert status == 503
    assert "subset hint" in json.loads(body)["error"]["message"]
    assert headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"this is not json", 400, "not JSON"),
        (b"[1, 2, 3]", 400, "must be a JSON object"),
        (b'{"prompt": "no model here"}', 400, '"model"'),
        (b'{"model": 42, "prompt": "x"}', 400, '"model"'),
    ],
)
async def test_bad_bodies_get_400_naming_the_problem(
    gie: stack.Stack, body: bytes, status: int, reason: str
) -> None:
    got, answer, _ = await post(gie.url + "/v1/completions", body)
    assert got == status
    assert reason in json.loads(answer)["error"]["message"]


async def test_body_over_the_limit_gets_413(gie: stack.Stack) -> None:
    status, answer, _ = await post(gie.url + "/v1/chat/completions", chat_body(5 * 1024 * 1024 + 1))
    assert status == 413
    assert "exceeds the limit" in json.loads(answer)["error"]["message"]


async def test_shed_request_gets_429_with_reason(gie: stack.Stack) -> None:
    status, answer, _ = await post(
        gie.url + "/v1/completions", b'{"model":"m","prompt":"x"}', {names.INFERENCE_OBJECTIVE: "sheddable"}
    )
    assert status == 429
    assert "shed" in json.loads(answer)["error"]["message"]


async def test_body_less_request_is_scheduled_among_ready_endpoints(gie: stack.Stack) -> None:
    async with aiohttp.ClientSession() as session, session.get(gie.url + "/v1/completions") as response:
        assert response.status == 200
        served = response.headers["x-served-by"]
    request, decision = gie.scheduler.decisions[-1]
    assert request.model == ""
    assert served == decision.primary


@pytest.mark.parametrize("size", [100, 61_999, 62_001, 4 * 1024 * 1024])
async def test_bodies_arrive_byte_identical(gie: stack.Stack, size: int) -> None:
    body = chat_body(size)
    status, answer, headers = await post(gie.url + "/v1/chat/completions", body)
    assert status == 200, answer
    received = last_received(gie, headers["x-served-by"])
    assert len(received.body) == size
    assert received.body == body
    request, _ = gie.scheduler.decisions[-1]
    if size > 1024 * 1024:
        # Decided on the body's first part (the prompt seen is shorter), the rest streamed through.
        assert 65_536 <= len(request.prompt) < size - 100
        assert request.prompt_tokens >= (size - 100) // 4
    else:
        assert len(request.prompt) > size - 100


@pytest.mark.parametrize("size", [100, 61_999, 62_001, 4 * 1024 * 1024])
async def test_rewritten_model_changes_only_the_model_bytes(gie: stack.Stack, size: int) -> None:
    body = chat_body(size, model="llama")
    status, answer, headers = await post(
        gie.url + "/v1/chat/completions", body, {names.MODEL_NAME_REWRITE: "llama-8b-fp8"}
    )
    assert status == 200, answer
    received = last_received(gie, headers["x-served-by"])
    assert received.body == body.replace(b'"model":"llama"', b'"model":"llama-8b-fp8"', 1)
    # Full-duplex bodies reach the backend chunked (Envoy drops content-length); a length, if sent, is right.
    length = received.headers.get("Content-Length")
    assert length is None or int(length) == len(received.body)
    request, _ = gie.scheduler.decisions[-1]
    assert (request.model, request.target_model) == ("llama", "llama-8b-fp8")


@pytest.mark.parametrize("rewrite", [False, True])
async def test_a_large_chunked_body_is_decided_on_its_first_megabyte_and_arrives_intact(
    gie: stack.Stack, rewrite: bool
) -> None:
    size = 4 * 1024 * 1024
    body = chat_body(size)

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: the body goes chunked
        for start in range(0, size, 64 * 1024):
            yield body[start : start + 64 * 1024]

    headers = {names.MODEL_NAME_REWRITE: "llama-8b-fp8"} if rewrite else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(gie.url + "/v1/chat/completions", data=chunks(), headers=headers) as response,
    ):
        assert response.status == 200, await response.read()
        served = response.headers["x-served-by"]
    received = last_received(gie, served)
    if rewrite:
        assert received.body == body.replace(b'"model":"llama"', b'"model":"llama-8b-fp8"', 1)
    else:
        assert received.body == body
    assert "Content-Length" not in received.headers
    request, _ = gie.scheduler.decisions[-1]
    # Its size unknown, the picker held the body until a megabyte was in, then let the rest stream through.
    assert 1024 * 1024 - 100 <= len(request.prompt) < 2 * 1024 * 1024
    assert request.prompt_tokens >= (1024 * 1024 - 100) // 4


async def test_streamed_response_of_2000_chunks_arrives_identical_and_usage_is_recorded(
    gie: stack.Stack,
) -> None:
    status, answer, _ = await post(
        gie.url + "/v1/chat/completions",
        chat_body(300).replace(b'"max_tokens":8', b'"stream":true'),
        {"x-test-chunks": "2000"},
    )
    assert status == 200
    assert answer == stack.sse_body(2000)
    assert await stack.wait_for(
        lambda: gie.scheduler.completions and gie.scheduler.completions[-1].completion_tokens == 2000
    )
    completion = gie.scheduler.completions[-1]
    assert (completion.prompt_tokens, completion.cached_tokens, completion.aborted) == (11, 3, False)
    assert completion.status == 200
    assert completion.ttft_s is not None and 0 < completion.ttft_s <= completion.duration_s
    assert completion.first_token_timed


async def test_json_response_usage_and_served_endpoint_are_recorded(gie: stack.Stack) -> None:
    status, _, headers = await post(gie.url + "/v1/completions", b'{"model":"m","prompt":"hi"}')
    assert status == 200
    assert await stack.wait_for(lambda: gie.scheduler.completions[-1].endpoint == headers["x-served-by"])
    completion = gie.scheduler.completions[-1]
    assert (completion.prompt_tokens, completion.completion_tokens) == (7, 5)
    assert not completion.first_token_timed  # a JSON answer's headers come with the whole answer


async def test_client_killed_mid_stream_leaves_no_in_flight_count(gie: stack.Stack) -> None:
    assert await stack.wait_for(lambda: gie.store.in_flight() == 0)
    body = b'{"model":"m","prompt":"hi","stream":true}'
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            gie.url + "/v1/completions", data=body, headers={"x-test-chunks": "400", "x-test-delay": "0.01"}
        )
        assert response.status == 200
        await response.content.readany()
        assert gie.store.in_flight() == 1
        response.close()  # drops the connection mid-stream
    assert await stack.wait_for(lambda: gie.store.in_flight() == 0)
    assert await stack.wait_for(lambda: gie.scheduler.completions[-1].aborted)
    assert all(state.load.in_flight_prompt_tokens == 0 for state in gie.store.states())


async def test_many_concurrent_requests_leave_no_in_flight_count(gie: stack.Stack) -> None:
    results = await asyncio.gather(
        *(post(gie.url + "/v1/completions", b'{"model":"m","prompt":"hi"}') for _ in range(30))
    )
    assert [status for status, _, _ in results] == [200] * 30
    assert await stack.wait_for(lambda: gie.store.in_flight() == 0)


async def test_request_id_is_generated_when_absent_and_kept_when_present(gie: stack.Stack) -> None:
    status, _, headers = await post(
        gie.url + "/v1/completions", b'{"model":"m","prompt":"hi"}', {"x-request-id": "abc-1"}
    )
    assert status == 200
    request, _ = gie.scheduler.decisions[-1]
    assert request.request_id == "abc-1"
    assert last_received(gie, headers["x-served-by"]).headers["X-Request-ID"] == "abc-1"


async def test_own_metrics_count_requests_errors_and_scheduling(gie: stack.Stack) -> None:
    await post(gie.url + "/v1/completions", b'{"model":"metered","prompt":"x"}')
    await post(gie.url + "/v1/completions", b"not json")
    assert await stack.wait_for(lambda: gie.store.in_flight() == 0)
    url = f"http://{stack.FRONT}:{gie.picker.metrics_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    labels = 'model_name="metered",target_model_name="metered"'
    assert f'frontier_picker_requests_total{{code="200",{labels}}} 1.0' in text
    assert 'frontier_picker_errors_total{code="400"}' in text
    assert "frontier_picker_ready_endpoints 3.0" in text
    assert f"frontier_picker_request_duration_seconds_count{{{labels}}} 1.0" in text
    count = re.search(r"frontier_picker_scheduling_duration_seconds_count (\S+)", text)
    assert count is not None and float(count.group(1)) >= 1


async def test_paths_other_than_the_inference_api_never_reach_an_engine(gie: stack.Stack) -> None:
    before = len(gie.scheduler.decisions)
    for path in ("/metrics", "/reset_prefix_cache", "/v1/completions/../../metrics"):
        status, _, _ = await post(gie.url + path, b'{"model":"m","prompt":"x"}')
        assert status == 404, path
    assert len(gie.scheduler.decisions) == before  # refused by Envoy before the picker was asked
    status, _, _ = await post(gie.url + "/v1/completions?stream=false", b'{"model":"m","prompt":"x"}')
    assert status == 200  # a query string does not change the path
