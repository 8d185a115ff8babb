"""The sidecar over real HTTP, in front of simulated engines: a transparent streaming proxy without the
prefiller header; the NixlConnector protocol with it, giving the tokens aggregated serving gives; local
prefill when the prefill endpoint fails; aborts that reach the engine when the client goes away."""

import asyncio
import contextlib
import logging
import socket

import aiohttp
import orjson
import pytest
from aiohttp import web

from frontier_api import names

from .harness import MODEL, engine, scrape, sidecar, stub, text, url


def spy_add_request(monkeypatch, srv) -> list[dict]:
    """Record the keyword arguments of every request the engine core admits."""
    calls: list[dict] = []
    real = srv.core.add_request

    def add_request(request_id, prompt_ids, **kwargs):
        calls.append(kwargs)
        return real(request_id, prompt_ids, **kwargs)

    monkeypatch.setattr(srv.core, "add_request", add_request)
    return calls


def fallbacks(side, reason: str) -> float | None:
    return side.metrics.registry.get_sample_value(
        "frontier_sidecar_prefill_fallbacks_total", {"reason": reason}
    )


async def post(session, base, path, body, headers=None):
    async with session.post(f"{base}{path}", json=body, headers=headers or {}) as response:
        return response.status, response.headers, await response.read()


async def stream_text(session, base, body, headers=None) -> tuple[list[bytes], str, dict | None]:
    """Stream a completion; returns the chunks as they arrived, the generated text and the usage."""
    chunks = []
    async with session.post(f"{base}/v1/completions", json=body, headers=headers or {}) as response:
        assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
        async for chunk in response.content.iter_any():
            chunks.append(chunk)
    parts, usage = [], None
    for event in b"".join(chunks).split(b"\n\n"):
        if event.startswith(b"data: {"):
            data = orjson.loads(event[6:])
            parts += [choice["text"] for choice in data["choices"]]
            usage = data.get("usage") or usage
    return chunks, "".join(parts), usage


async def wait_until(condition, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition() and loop.time() < deadline:
        await asyncio.sleep(0.01)


def free_port(address: str) -> int:
    """A port nothing listens on at `address` (bound by the OS, then released)."""
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


async def test_without_the_header_answers_are_the_engines_own(subnet, session):
    async with contextlib.AsyncExitStack() as stack:
        # Twin engines: one asked directly, one behind the sidecar (same id and request id give the same ids).
        # Time scale 3: tokens ~20 ms apart, so a busy event loop cannot merge their SSE events.
        direct = await stack.enter_async_context(engine(f"{subnet}.1", engine_id="twin", time_scale=3.0))
        behind = await stack.enter_async_context(engine(f"{subnet}.2", engine_id="twin", time_scale=3.0))
        _, side = await stack.enter_async_context(sidecar(f"{subnet}.9", url(behind)))
        body = {"model": MODEL, "prompt": text("a", 300), "max_tokens": 12}
        headers = {names.REQUEST_ID: "same"}
        # `created` counts whole seconds: a second boundary between the two asks changes it, so try again.
        for _ in range(3):
            want = await post(session, url(direct), "/v1/completions", body, headers)
            got = await post(session, side, "/v1/completions", body, headers)
            if got[2] == want[2]:
                break
        assert got[0] == want[0] == 200 and got[2] == want[2]
        for name in ("Content-Type", "Content-Length"):
            assert got[1][name] == want[1][name]

        for path in ("/v1/models", "/health"):
            async with session.get(f"{url(behind)}{path}") as a, session.get(f"{side}{path}") as b:
                assert (b.status, await b.read()) == (a.status, await a.read())
        engine_page = await scrape(session, side)  # the engine's /metrics, not shadowed
        assert engine_page["vllm:num_requests_running"] == 0 and "vllm:generation_tokens_total" in engine_page

        streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
        chunks, via, usage = await stream_text(session, side, streamed)
        _, direct_text, direct_usage = await stream_text(session, url(direct), streamed)
    assert len(chunks) >= 6  # about one SSE event per decode step as it happens, not one buffered body
    assert (via, usage) == (direct_text, direct_usage) and usage["completion_tokens"] == 12


async def test_passthrough_keeps_status_headers_method_and_query_and_drops_hop_by_hop(subnet, session):
    seen: dict = {}

    async def anything(request: web.Request) -> web.Response:
        seen.update(method=request.method, path_qs=request.path_qs, body=await request.read())
        seen["headers"] = {k.lower(): v for k, v in request.headers.items()}
        headers = [
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
            ("X-Engine", "sim"),
            ("Keep-Alive", "timeout=9"),
        ]
        return web.Response(status=418, body=b"teapot", headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    async with (
        stub(f"{subnet}.5", app) as upstream,
        sidecar(f"{subnet}.9", f"http://{upstream}") as (_, side),
    ):
        headers = {
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "1",
            "X-Keep": "k",
            names.PREFILLER_HOST_PORT: "10.0.0.1:8000",  # not a completion: no prefill, header not forwarded
        }
        async with session.patch(f"{side}/v1/any/path?q=a%20b&r=1", data=b"raw", headers=headers) as response:
            status, answer = response.status, await response.read()
            cookies = response.headers.getall("Set-Cookie")
            answer_headers = {k.lower() for k in response.headers}
    assert (status, answer, cookies) == (418, b"teapot", ["a=1", "b=2"])
    assert "x-engine" in answer_headers and "keep-alive" not in answer_headers
    assert (seen["method"], seen["path_qs"], seen["body"]) == ("PATCH", "/v1/any/path?q=a%20b&r=1", b"raw")
    assert seen["headers"]["x-keep"] == "k"
    assert "x-hop" not in seen["headers"] and names.PREFILLER_HOST_PORT not in seen["headers"]


async def test_a_prefiller_header_runs_the_nixl_protocol_and_gives_the_aggregated_tokens(
    subnet, session, monkeypatch, caplog
):
    # set_level also sets the capturing handler's level: the lowest one last.
    caplog.set_level(logging.INFO, logger="frontier_sidecar.proxy")
    caplog.set_level(logging.DEBUG, logger="frontier_sim.server")
    async with contextlib.AsyncExitStack() as stack:
        aggregated, prefill, decode = [
            await stack.enter_async_context(engine(f"{subnet}.{i}", engine_id=name, time_scale=3.0))
            for i, name in ((1, "agg"), (2, "pre"), (3, "dec"))
        ]
        side_obj, side = await stack.enter_async_context(sidecar(f"{subnet}.9", url(decode)))
        prefill_calls = spy_add_request(monkeypatch, prefill)
        decode_calls = spy_add_request(monkeypatch, decode)
        header = {names.PREFILLER_HOST_PORT: f"{prefill.address}:{prefill.port}"}

        body = {"model": MODEL, "prompt": text("p", 2048), "max_tokens": 10, "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        _, agg_text, agg_usage = await stream_text(session, url(aggregated), body)
        chunks, pd_text, pd_usage = await stream_text(session, side, body, header)

        chat = {"model": MODEL, "messages": [{"role": "user", "content": text("c", 700)}], "max_tokens": 6}
        _, _, agg_chat = await post(session, url(aggregated), "/v1/chat/completions", chat)
        status, _, pd_chat = await post(session, side, "/v1/chat/completions", chat, header)

        prefill_page = await scrape(session, url(prefill))
        decode_page = await scrape(session, url(decode))
    assert (pd_text, pd_usage) == (agg_text, agg_usage) and len(chunks) >= 6
    assert status == 200
    want, got = orjson.loads(agg_chat), orjson.loads(pd_chat)
    assert (got["choices"], got["usage"]) == (want["choices"], want["usage"])
    # The prefill endpoint ran prefill-only, one-token requests; the decode endpoint decoded pulled KV.
    assert [(c["max_tokens"], c["prefill_only"]) for c in prefill_calls] == [(1, True), (1, True)]
    assert prefill_page["vllm:generation_tokens_total"] == 2
    assert [(c["max_tokens"], c["kv_transferred"]) for c in decode_calls] == [(10, True), (6, True)]
    assert decode_page["vllm:generation_tokens_total"] == 16
    transfers = [r.getMessage() for r in caplog.records if "event=kv_transfer " in r.getMessage()]
    assert len(transfers) == 2
    assert all(
        f"remote_engine=pre remote_host={prefill.address} remote_port={prefill.port}" in t for t in transfers
    )
    assert side_obj.metrics.registry.get_sample_value("frontier_sidecar_remote_prefills_total") == 2
    logged = [r.getMessage() for r in caplog.records if r.name == "frontier_sidecar.proxy"]
    assert sum("event=remote_prefill " in line and "remote_engine=pre" in line for line in logged) == 2


async def _answer_500(request: web.Request) -> web.Response:
    return web.Response(status=500, text="boom")


async def _answer_without_params(request: web.Request) -> web.Response:
    return web.json_response({"choices": [{"text": "x"}]})


async def _answer_late(request: web.Request) -> web.Response:
    await asyncio.sleep(30)
    return web.json_response({})


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (None, "connection_error"),
        (_answer_500, "status"),
        (_answer_without_params, "no_kv_transfer_params"),
        (_answer_late, "timeout"),
    ],
)
async def test_a_failing_prefiller_falls_back_to_local_prefill(
    subnet, session, monkeypatch, caplog, handler, reason
):
    caplog.set_level(logging.INFO, logger="frontier_sidecar.proxy")
    async with contextlib.AsyncExitStack() as stack:
        aggregated = await stack.enter_async_context(engine(f"{subnet}.1"))
        decode = await stack.enter_async_context(engine(f"{subnet}.3"))
        side_obj, side = await stack.enter_async_context(
            sidecar(f"{subnet}.9", url(decode), prefill_timeout_s=0.3, metrics_port=0)
        )
        if handler is None:
            prefiller = f"{subnet}.2:{free_port(f'{subnet}.2')}"  # nothing listening
        else:
            app = web.Application()
            app.router.add_post("/v1/completions", handler)
            prefiller = await stack.enter_async_context(stub(f"{subnet}.2", app))
        decode_calls = spy_add_request(monkeypatch, decode)
        body = {"model": MODEL, "prompt": text("f", 500), "max_tokens": 5}
        _, _, want = await post(session, url(aggregated), "/v1/completions", body)
        status, _, got = await post(
            session, side, "/v1/completions", body, {names.PREFILLER_HOST_PORT: prefiller}
        )
        counters = await scrape(session, f"http://{subnet}.9:{side_obj.metrics_port}")
    assert status == 200
    assert orjson.loads(got)["choices"] == orjson.loads(want)["choices"]
    assert [c["kv_transferred"] for c in decode_calls] == [False]  # prefilled locally, unchanged
    lines = [r.getMessage() for r in caplog.records if "event=prefill_fallback" in r.getMessage()]
    assert len(lines) == 1 and f"prefiller={prefiller} reason={reason} " in lines[0]
    assert fallbacks(side_obj, reason) == 1
    assert counters["frontier_sidecar_prefill_fallbacks_total"] == 1
    assert counters["frontier_sidecar_remote_prefills_total"] == 0


async def test_a_body_that_is_not_json_goes_to_the_engine_which_answers_the_error(subnet, session):
    async with engine(f"{subnet}.3") as decode, sidecar(f"{subnet}.9", url(decode)) as (side_obj, side):
        headers = {names.PREFILLER_HOST_PORT: f"{subnet}.2:1", "Content-Type": "application/json"}
        async with session.post(f"{side}/v1/completions", data=b"{nope", headers=headers) as response:
            assert response.status == 400 and "not valid JSON" in (await response.json())["message"]
    assert fallbacks(side_obj, "invalid_body") == 1


@pytest.mark.parametrize("disaggregated", [False, True])
async def test_a_client_gone_mid_stream_aborts_the_engine_request(subnet, session, disaggregated):
    async with contextlib.AsyncExitStack() as stack:
        prefill = await stack.enter_async_context(engine(f"{subnet}.2"))
        decode = await stack.enter_async_context(engine(f"{subnet}.3"))
        _, side = await stack.enter_async_context(sidecar(f"{subnet}.9", url(decode)))
        headers = {names.PREFILLER_HOST_PORT: f"{prefill.address}:{prefill.port}"} if disaggregated else {}
        body = {"model": MODEL, "prompt": text("d", 600), "max_tokens": 2000, "stream": True}
        async with session.post(f"{side}/v1/completions", json=body, headers=headers) as response:
            await response.content.readline()
            assert decode.core.num_running == 1 and decode.core.kv_usage > 0
        await wait_until(lambda: decode.core.num_running == 0)
    assert decode.core.num_running == 0 and decode.core.kv_usage == 0.0
    assert decode.metrics.success.get("abort") == 1 and decode.core.stats.generation_tokens < 2000


async def test_a_client_gone_during_the_prefill_leg_aborts_the_prefill(subnet, session, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="frontier_sidecar.proxy")
    async with contextlib.AsyncExitStack() as stack:
        # A slow prefill (10 wall seconds per model second) in short chunks: an abort lands at a step's end.
        prefill = await stack.enter_async_context(
            engine(f"{subnet}.2", time_scale=10.0, max_num_batched_tokens=256)
        )
        decode = await stack.enter_async_context(engine(f"{subnet}.3"))
        _, side = await stack.enter_async_context(sidecar(f"{subnet}.9", url(decode)))
        decode_calls = spy_add_request(monkeypatch, decode)
        header = {names.PREFILLER_HOST_PORT: f"{prefill.address}:{prefill.port}"}
        body = {"model": MODEL, "prompt": text("g", 8192), "max_tokens": 4}
        client = asyncio.create_task(post(session, side, "/v1/completions", body, header))
        await wait_until(lambda: prefill.core.num_running == 1)
        assert prefill.core.num_running == 1
        client.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await client
        await wait_until(lambda: prefill.core.num_running == 0)
    assert prefill.core.num_running == 0 and prefill.metrics.success.get("abort") == 1
    assert decode_calls == []
    assert any("event=request_cancelled" in r.getMessage() for r in caplog.records)


async def test_an_unreachable_engine_is_a_502_in_vllms_error_shape(subnet, session, caplog):
    caplog.set_level(logging.INFO, logger="frontier_sidecar.proxy")
    nowhere = f"http://{subnet}.3:{free_port(f'{subnet}.3')}"
    async with sidecar(f"{subnet}.9", nowhere) as (_, side):
        status, _, body = await post(session, side, "/v1/completions", {"model": MODEL, "prompt": "x"})
    assert status == 502 and orjson.loads(body)["object"] == "error"
    assert any("event=engine_unreachable" in r.getMessage() for r in caplog.records)


async def test_an_engine_answer_cut_short_reaches_the_client_cut_short(subnet, session, caplog):
    caplog.set_level(logging.INFO, logger="frontier_sidecar.proxy")

    async def breaks_off(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: {}\n\n")
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()  # the engine dies mid-answer
        return response

    app = web.Application()
    app.router.add_post("/v1/completions", breaks_off)
    async with (
        stub(f"{subnet}.3", app) as upstream,
        sidecar(f"{subnet}.9", f"http://{upstream}") as (_, side),
        session.post(f"{side}/v1/completions", json={"stream": True}) as response,
    ):
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):  # not a clean end of the stream
            await response.read()
    assert any("event=engine_stream_broken" in r.getMessage() for r in caplog.records)
