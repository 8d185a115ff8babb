"""The picker behind a real Envoy in its other configurations: fallbacks past a dead endpoint, the cheap
mode (response body NONE, trailers SEND), the older STREAMED and BUFFERED body modes, plaintext gRPC."""

import json
from pathlib import Path

import aiohttp
import pytest

from frontier_api import names

from . import stack

pytestmark = pytest.mark.envoy

DEAD = "127.2.0.9:9"  # nothing listens there: connections are refused


async def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers or {}) as response,
    ):
        return response.status, await response.read(), response.headers.get("x-served-by", "")


async def test_with_the_primary_down_envoy_retries_on_the_first_fallback(tmp_path: Path) -> None:
    running = stack.start(tmp_path, backends=2, dead=[DEAD], fallbacks=1)
    try:
        dead_primary = 0
        for _ in range(6):
            status, answer, served = await post(
                running.url + "/v1/completions", b'{"model":"m","prompt":"x"}'
            )
            assert status == 200, answer
            _, decision = running.scheduler.decisions[-1]
            if decision.primary == DEAD:
                dead_primary += 1
                assert served == decision.endpoints[1]
            else:
                assert served == decision.primary
        assert dead_primary == 2  # round-robin over three endpoints put the dead one first twice
        # The completion names the endpoint that served, not the dead primary.
        assert await stack.wait_for(lambda: len(running.scheduler.completions) == 6)
        assert DEAD not in {completion.endpoint for completion in running.scheduler.completions}
        assert running.store.in_flight() == 0
    finally:
        running.stop()


async def test_cheap_mode_routes_echoes_nothing_and_still_observes_completion(tmp_path: Path) -> None:
    running = stack.start(tmp_path, mode="cheap", backends=2, fallbacks=1, secure=False)
    try:
        body = b'{"model":"m","messages":[{"role":"user","content":"' + b"q" * 100_000 + b'"}]}'
        status, answer, served = await post(
            running.url + "/v1/chat/completions", body, {names.MODEL_NAME_REWRITE: "m-fp8"}
        )
        assert status == 200, answer
        assert running.backend(served).received[-1].body == body.replace(b'"m"', b'"m-fp8"', 1)
        status, answer, served = await post(
            running.url + "/v1/completions", b'{"model":"m","prompt":"x"}', {"x-test-chunks": "100"}
        )
        assert answer == stack.sse_body(100)
        assert await stack.wait_for(lambda: len(running.scheduler.completions) == 2)
        completion = running.scheduler.completions[-1]
        assert (completion.endpoint, completion.status, completion.aborted) == (served, 200, False)
        assert completion.completion_tokens is None  # the body is not seen in this mode
        # Nor is the first token: the headers' time teaches the speed learner nothing.
        assert not completion.first_token_timed
        assert running.store.in_flight() == 0
    finally:
        running.stop()


async def test_cheap_mode_client_killed_mid_stream_leaves_no_in_flight_count(tmp_path: Path) -> None:
    running = stack.start(tmp_path, mode="cheap", backends=1, fallbacks=0)
    try:
        async with aiohttp.ClientSession() as session:
            response = await session.post(
                running.url + "/v1/completions",
                data=b'{"model":"m","prompt":"x"}',
                headers={"x-test-chunks": "400", "x-test-delay": "0.01"},
            )
            await response.content.readany()
            assert running.store.in_flight() == 1
            response.close()
        assert await stack.wait_for(lambda: running.store.in_flight() == 0)
        # Without the response body the picker cannot tell an abort from an end (Stream.finished).
        assert await stack.wait_for(lambda: len(running.scheduler.completions) == 1)
    finally:
        running.stop()


@pytest.mark.parametrize("mode", ["streamed", "buffered"])
async def test_older_body_modes_route_by_model_and_keep_bodies_intact(tmp_path: Path, mode: str) -> None:
    running = stack.start(tmp_path, mode=mode, backends=2, fallbacks=1)
    try:
        body = b'{"model":"m","prompt":"' + b"p" * 150_000 + b'"}'
        status, answer, served = await post(running.url + "/v1/completions", body)
        assert status == 200, answer
        assert running.backend(served).received[-1].body == body
        request, decision = running.scheduler.decisions[-1]
        assert (request.model, decision.primary) == ("m", served)

        status, answer, served = await post(
            running.url + "/v1/completions", body, {names.MODEL_NAME_REWRITE: "m2"}
        )
        assert status == 200, answer
        received = running.backend(served).received[-1]
        assert received.body == body.replace(b'"m"', b'"m2"', 1)
        length = received.headers.get("Content-Length")
        if mode == "buffered":  # Envoy keeps the picker's content-length here (it drops it when streaming)
            assert length == str(len(received.body))
        else:
            assert length is None or int(length) == len(received.body)

        status, answer, _ = await post(running.url + "/v1/completions", b"not json")
        assert status == 400 and "not JSON" in json.loads(answer)["error"]["message"]

        status, answer, _ = await post(
            running.url + "/v1/completions", b'{"model":"m"}', {"x-test-chunks": "50"}
        )
        assert answer == stack.sse_body(50)
        assert await stack.wait_for(lambda: running.scheduler.completions[-1].completion_tokens == 50)
        assert running.store.in_flight() == 0
    finally:
        running.stop()


async def test_default_scheduler_routes_through_envoy(tmp_path: Path) -> None:
    running = stack.start(tmp_path, backends=3, fallbacks=1, profile=None)
    try:
        for index in range(6):
            prompt = f"conversation {index % 2} " * 50
            body = json.dumps({"model": "m", "prompt": prompt}).encode()
            status, answer, served = await post(running.url + "/v1/completions", body)
            assert status == 200, answer
            _, decision = running.scheduler.decisions[-1]
            assert served == decision.primary
        assert await stack.wait_for(lambda: running.store.in_flight() == 0)
    finally:
        running.stop()
