"""The simulated vLLM server over real HTTP and real ZMQ: calibrated latencies as clients see them, usage,
metrics that agree with the engine, KV events on the wire, prefill/decode, aborts, and the API surface."""

import asyncio
import contextlib

import aiohttp
import msgpack
import orjson
import pytest
import zmq
import zmq.asyncio

from frontier_api import names
from frontier_sim import server, settings, timing

CAL = timing.load("h100")
MODEL = "sim/llama-8b"


def text(tag: str, tokens: int) -> str:
    """Prompt text of exactly `tokens` distinct 4-character pieces (one token each)."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"

    def b36(i: int) -> str:
        return digits[i // 1296 % 36] + digits[i // 36 % 36] + digits[i % 36]

    return "".join(tag[0] + b36(i) for i in range(tokens))


def config(address: str, **overrides) -> settings.Settings:
    base = {"model": MODEL, "host": address, "port": 0, "params": timing.CALIBRATED_PARAMS}
    base.update(overrides)
    return settings.Settings(**base)


@contextlib.asynccontextmanager
async def running(cfg: settings.Settings):
    async with server.serving(cfg) as srv, aiohttp.ClientSession() as session:
        yield srv, session, f"http://{srv.address}:{srv.port}"


async def complete(session, url, *, prompt: str, max_tokens: int | None = 8, headers=None, **extra):
    body = {"model": MODEL, "prompt": prompt, **extra}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    async with session.post(f"{url}/v1/completions", json=body, headers=headers or {}) as response:
        return response.status, await response.json()


async def stream(session, url, *, prompt: str, max_tokens: int, headers=None):
    """Stream a completion; returns (seconds to first text, text, usage)."""
    loop = asyncio.get_running_loop()
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    start = loop.time()
    first = None
    parts = []
    usage = None
    async with session.post(f"{url}/v1/completions", json=body, headers=headers or {}) as response:
        assert response.status == 200
        async for line in response.content:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            data = orjson.loads(line[6:])
            if data["choices"] and data["choices"][0]["text"]:
                first = first or loop.time() - start
                parts.append(data["choices"][0]["text"])
            if data.get("usage"):
                usage = data["usage"]
    return first, "".join(parts), usage


def parse_metrics(page: str) -> dict[str, float]:
    values = {}
    for line in page.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[key.split("{")[0] if "_bucket" not in key else key] = float(value)
    return values


async def scrape(session, url) -> dict[str, float]:
    async with session.get(f"{url}/metrics") as response:
        return parse_metrics(await response.text())


async def test_lone_request_ttft_over_http_matches_the_prefill_fit(subnet):
    async with running(config(f"{subnet}.1", time_scale=4.0)) as (_, session, url):
        status, body = await complete(session, url, prompt=text("a", 8192), max_tokens=1)
        assert status == 200 and body["usage"]["prompt_tokens"] == 8192
        m = await scrape(session, url)
    ttft = m["vllm:time_to_first_token_seconds_sum"]
    assert ttft == pytest.approx(CAL.p0 + CAL.p1 * 8192 + CAL.p2 * 8192 * 4096, rel=0.10)


async def test_steady_batch_inter_token_latency_over_http_matches_the_decode_fit(subnet):
    async with running(config(f"{subnet}.1", time_scale=3.0)) as (_, session, url):
        await asyncio.gather(
            *(stream(session, url, prompt=text(str(i), 512), max_tokens=48) for i in range(16))
        )
        m = await scrape(session, url)
    itl = m["vllm:inter_token_latency_seconds_sum"] / m["vllm:inter_token_latency_seconds_count"]
    assert m["vllm:inter_token_latency_seconds_count"] == 16 * 47
    assert itl == pytest.approx(CAL.d0 + CAL.d1 * 16 + CAL.d2 * 16 * (512 + 24), rel=0.10)


async def test_repeated_prompt_reports_cached_tokens_and_a_shorter_ttft(subnet):
    async with running(config(f"{subnet}.1")) as (_, session, url):
        p = text("r", 4096)
        first_ttft, first_text, first_usage = await stream(session, url, prompt=p, max_tokens=4)
        second_ttft, second_text, second_usage = await stream(session, url, prompt=p, max_tokens=4)
    assert first_usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert second_usage["prompt_tokens_details"]["cached_tokens"] == 4080
    assert first_text == second_text
    # 4080 of 4096 tokens cached: the model time drops ~15x; wall time adds HTTP and tokenizing on both.
    assert second_ttft < first_ttft / 3


async def test_metrics_agree_with_engine_state_at_every_scrape(subnet):
    cfg = config(f"{subnet}.1", time_scale=20.0, max_num_seqs=2, num_gpu_blocks_override=200)
    async with running(cfg) as (srv, session, url):
        core = srv.core

        def state():
            s = core.stats
            return (core.num_running, core.num_waiting, core.kv_usage, s.prefix_cache_queries,
                    s.prefix_cache_hits, s.generation_tokens, s.prompt_tokens)  # fmt: skip

        shared = text("s", 320)
        tasks = [
            asyncio.create_task(stream(session, url, prompt=shared + text(str(i), 100), max_tokens=6))
            for i in range(4)
        ]
        checked = 0
        saw_waiting = False
        while not all(t.done() for t in tasks):
            before = state()
            m = await scrape(session, url)
            if state() != before:
                continue  # a step ended during the scrape; try again
            names_ = ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc",
                      "prefix_cache_queries_total", "prefix_cache_hits_total", "generation_tokens_total",
                      "prompt_tokens_total")  # fmt: skip
            seen = tuple(m[f"vllm:{n}"] for n in names_)
            assert seen == pytest.approx(before)
            saw_waiting |= before[1] > 0
            checked += 1
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)
        m = await scrape(session, url)
        async with session.get(f"{url}/metrics") as response:
            page = await response.text()
    assert checked > 5 and saw_waiting
    assert m["vllm:generation_tokens_total"] == 24
    assert m["vllm:prefix_cache_hits_total"] > 0
    assert m["vllm:num_requests_running"] == 0 and m["vllm:kv_cache_usage_perc"] == 0.0
    assert 'block_size="16"' in page and 'num_gpu_blocks="200"' in page


async def test_kv_events_on_zmq_replay_to_exactly_the_engine_cache(subnet):
    address = f"{subnet}.1"
    events_cfg = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": "tcp://*:*",
                  "topic": "kv@$(POD_IP)@" + MODEL}  # fmt: skip
    cfg = config(address, kv_events_config=events_cfg, num_gpu_blocks_override=80)
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        async with running(cfg) as (srv, session, url):
            assert srv.publisher is not None
            sub.connect(srv.publisher.endpoint)
            await asyncio.sleep(0.3)  # ZMQ slow joiner: let the subscription reach the publisher
            shared = text("s", 400)
            for i in range(6):
                await complete(session, url, prompt=shared + text(str(i), 300), max_tokens=4)
            cached = set(srv.core.pool.cached)
            messages = []
            while await sub.poll(timeout=300):
                messages.append(await sub.recv_multipart())
    finally:
        sub.close(linger=0)
        ctx.term()
    assert [m[0] for m in messages] == [f"kv@{address}@{MODEL}".encode()] * len(messages)
    assert [int.from_bytes(m[1], "big") for m in messages] == list(range(len(messages)))
    replayed: set[int] = set()
    kinds = set()
    for _, _, payload in messages:
        ts, events, dp_rank = msgpack.unpackb(payload)
        assert ts > 1e9 and dp_rank == 0
        for event in events:
            kinds.add(event[0])
            if event[0] == "BlockStored":
                _, hashes, _parent, token_ids, block_size, lora_id, medium = event
                assert len(token_ids) == len(hashes) * block_size == len(hashes) * 16
                assert medium == "GPU" and lora_id is None
                replayed.update(hashes)
            elif event[0] == "BlockRemoved":
                replayed.difference_update(event[1])
    assert kinds == {"BlockStored", "BlockRemoved"}
    assert replayed == cached


async def test_prefill_decode_gives_the_same_tokens_and_usage_with_transfer_time_in_ttft(subnet):
    # Time scale 5: wall-clock noise of a loaded machine (HTTP hops, scheduling) shrinks 5x in model time.
    configs = [config(f"{subnet}.{i}", engine_id=f"e{i}", time_scale=5.0) for i in (1, 2, 3)]
    async with contextlib.AsyncExitStack() as stack:
        aggregated, prefill, decode = [await stack.enter_async_context(server.serving(c)) for c in configs]
        session = await stack.enter_async_context(aiohttp.ClientSession())

        def url(s):
            return f"http://{s.address}:{s.port}"

        p = text("p", 4096)
        agg_ttft, agg_text, agg_usage = await stream(session, url(aggregated), prompt=p, max_tokens=8)
        header = {names.PREFILLER_HOST_PORT: f"{prefill.address}:{prefill.port}"}
        pd_ttft, pd_text, pd_usage = await stream(
            session, url(decode), prompt=p, max_tokens=8, headers=header
        )
        decode_metrics = await scrape(session, url(decode))
        prefill_metrics = await scrape(session, url(prefill))
        # The prefill endpoint answers a do_remote_decode request with its blocks.
        status, body = await complete(
            session, url(prefill), prompt=text("q", 100), kv_transfer_params={"do_remote_decode": True}
        )
    assert (pd_text, pd_usage) == (agg_text, agg_usage)
    transfer = 4096 * 131072 / 25e9  # bytes of KV per token (8B bf16) over 200 Gbit/s
    assert decode_metrics["vllm:time_to_first_token_seconds_sum"] == pytest.approx(
        CAL.p0
        + CAL.p1 * 4096
        + CAL.p2 * 4096 * 2048  # prefill on the peer
        + transfer
        + CAL.p0
        + CAL.p1
        + CAL.p2 * 4095,  # the decode endpoint computes the last prompt token
        rel=0.10,
    )
    assert pd_ttft - agg_ttft > 5.0 * transfer * 0.8  # client wall clock: 5 wall seconds per model second
    assert prefill_metrics["vllm:generation_tokens_total"] == 1
    assert decode_metrics["vllm:generation_tokens_total"] == 8
    assert status == 200
    params = body["kv_transfer_params"]
    assert params["do_remote_prefill"] is True and params["remote_engine_id"] == "e2"
    assert len(params["remote_block_ids"]) == 7 and body["usage"]["completion_tokens"] == 1


async def test_client_disconnect_aborts_the_request_and_frees_its_blocks(subnet):
    async with running(config(f"{subnet}.1")) as (srv, session, url):
        body = {"model": MODEL, "prompt": text("d", 600), "max_tokens": 2000, "stream": True}
        async with session.post(f"{url}/v1/completions", json=body) as response:
            await response.content.readline()
            assert srv.core.num_running == 1 and srv.core.kv_usage > 0
        for _ in range(100):
            if srv.core.num_running == 0:
                break
            await asyncio.sleep(0.02)
    assert srv.core.num_running == 0 and srv.core.kv_usage == 0.0
    assert srv.metrics.success.get("abort") == 1
    assert srv.core.stats.generation_tokens < 2000


async def test_chat_models_health_and_errors(subnet):
    async with running(config(f"{subnet}.1", served_model_names=["chat-model"], default_max_tokens=32)) as (
        _,
        session,
        url,
    ):
        async with session.get(f"{url}/health") as response:
            assert response.status == 200
        async with session.get(f"{url}/v1/models") as response:
            assert (await response.json())["data"][0]["id"] == "chat-model"
        chat = {"model": "chat-model", "messages": [{"role": "system", "content": "be brief"},
                                                     {"role": "user", "content": "hello"}]}  # fmt: skip
        async with session.post(f"{url}/v1/chat/completions", json=chat) as response:
            reply = await response.json()
        assert reply["object"] == "chat.completion" and reply["choices"][0]["finish_reason"] == "stop"
        assert reply["usage"]["completion_tokens"] == 32  # --sim-default-max-tokens when none is given
        swapped = {**chat, "messages": list(reversed(chat["messages"])), "max_tokens": 1}
        async with session.post(f"{url}/v1/chat/completions", json=swapped) as response:
            assert (await response.json())["usage"]["prompt_tokens"] == reply["usage"]["prompt_tokens"]
        async with session.post(f"{url}/v1/chat/completions", json={**chat, "model": "nope"}) as response:
            assert response.status == 404 and "nope" in (await response.json())["message"]
        async with session.post(f"{url}/v1/completions", data=b"{not json") as response:
            assert response.status == 400
        # A workload's answer length: EOS there (finish_reason "stop"), unless ignore_eos.
        ends = {"model": "chat-model", "prompt": "why", "max_tokens": 20, names.SIM_OUTPUT_TOKENS: 3}
        async with session.post(f"{url}/v1/completions", json=ends) as response:
            reply = await response.json()
        assert reply["choices"][0]["finish_reason"] == "stop" and reply["usage"]["completion_tokens"] == 3
        async with session.post(f"{url}/v1/completions", json={**ends, "ignore_eos": True}) as response:
            reply = await response.json()
        assert reply["choices"][0]["finish_reason"] == "length" and reply["usage"]["completion_tokens"] == 20
        zero = {**ends, names.SIM_OUTPUT_TOKENS: 0}
        async with session.post(f"{url}/v1/completions", json=zero) as response:
            assert response.status == 400 and names.SIM_OUTPUT_TOKENS in (await response.json())["message"]
        too_long = {"model": "chat-model", "prompt": "x" * 4 * 200_000, "max_tokens": 1}
        async with session.post(f"{url}/v1/completions", json=too_long) as response:
            assert response.status == 400 and "maximum context length" in (await response.json())["message"]


async def test_lora_adapters_load_and_show_in_metrics(subnet):
    cfg = config(f"{subnet}.1", enable_lora=True, max_loras=2, time_scale=20.0)
    async with running(cfg) as (_, session, url):
        async with session.post(
            f"{url}/v1/load_lora_adapter", json={"lora_name": "sql", "lora_path": "/x"}
        ) as r:
            assert r.status == 200
        task = asyncio.create_task(complete(session, url, prompt=text("l", 64), max_tokens=3, model="sql"))
        await asyncio.sleep(0.2)
        async with session.get(f"{url}/metrics") as response:
            page = await response.text()
        status, body = await task
    assert 'running_lora_adapters="sql"' in page and 'max_lora="2"' in page
    assert status == 200 and body["model"] == "sql"


async def test_shutdown_with_open_streams_is_prompt(subnet):
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        async with server.serving(config(f"{subnet}.1")) as srv:
            url = f"http://{srv.address}:{srv.port}"
            task = asyncio.create_task(stream(session, url, prompt=text("x", 100), max_tokens=5000))
            while srv.core.num_running == 0:
                await asyncio.sleep(0.01)
            started = loop.time()
        assert loop.time() - started < server.SHUTDOWN_GRACE_S + 2.0
        with contextlib.suppress(aiohttp.ClientError, AssertionError):
            await task
