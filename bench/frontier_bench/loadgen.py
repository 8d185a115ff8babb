"""The open-loop load generator: sends a schedule's requests at their arrival times and traces each one.

Open loop means a request is sent at its scheduled time whatever happened to earlier ones — queueing in the
system under test shows up as latency, never as a lower offered load (a closed loop would hide it). Every
request streams (SSE, `stream_options.include_usage`); the client stamps the arrival of each `data:` chunk
that carries generated text, which gives TTFT and inter-token latency as a user sees them, and reads the
final usage chunk for prompt, completion and cached tokens.

The clock is `time.perf_counter`; on a busy machine the client's own event-loop lag is part of what it
measures, which is why sweeps compare policies side by side on the same machine and the same schedule.
"""

import asyncio
import contextlib
import time
from collections.abc import Callable

import aiohttp
import orjson

from frontier_bench import progress, stats, workloads

_DATA: bytes = b"data: "
_DONE: bytes = b"[DONE]"


async def run(
    *,
    url: str,
    model: str,
    workload: workloads.Workload,
    schedule: workloads.Schedule,
    counters: progress.Counters | None = None,
    on_tick: Callable[[], None] | None = None,
    request_timeout_s: float = 600.0,
    drain_timeout_s: float = 600.0,
    first_index: int = 0,
) -> list[stats.RequestTrace]:
    """Send request i (workload prompt `first_index + i`) at `schedule.offsets_s[i]`; trace every request.

    `url` is the base URL of the system under test (e.g. `http://127.10.0.1:8080`). Requests still running
    `drain_timeout_s` after the last one was sent are cancelled and traced as errors.
    """
    counters = counters or progress.Counters()
    counters.total, counters.sent, counters.done, counters.failed = len(schedule), 0, 0, 0
    traces: list[stats.RequestTrace] = []
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=request_timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        ticker = asyncio.create_task(_tick(on_tick)) if on_tick else None
        tasks: list[asyncio.Task[None]] = []
        start = time.perf_counter()
        try:
            for i, offset in enumerate(schedule.offsets_s):
                delay = start + float(offset) - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                prompt = workload.prompt_for(first_index + i)
                trace = stats.RequestTrace(sent=time.perf_counter())
                traces.append(trace)
                body = orjson.dumps(prompt.body(model=model))
                path = "/v1/chat/completions" if prompt.api == "chat" else "/v1/completions"
                tasks.append(asyncio.create_task(_send(session, f"{url}{path}", body, trace, counters)))
                counters.sent += 1
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=drain_timeout_s)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            if ticker:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
            if on_tick:
                on_tick()
    return traces


async def _send(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    trace: stats.RequestTrace,
    counters: progress.Counters,
) -> None:
    try:
        async with session.post(url, data=body, headers={"content-type": "application/json"}) as response:
            trace.status = response.status
            if response.status != 200:
                trace.error = (await response.text())[:200] or f"HTTP {response.status}"
                return
            async for line in response.content:
                _read_line(line, trace)
            trace.end = time.perf_counter()
    except asyncio.CancelledError:
        trace.error = "cancelled: still running at the drain timeout"
    except (aiohttp.ClientError, TimeoutError) as error:
        trace.error = f"{type(error).__name__}: {error}"[:200]
    finally:
        counters.done += 1
        if not trace.ok:
            counters.failed += 1


def _read_line(line: bytes, trace: stats.RequestTrace) -> None:
    """Account one SSE line: a token chunk stamps its arrival; the usage chunk fills the token counts."""
    if not line.startswith(_DATA):
        return
    payload = line[len(_DATA) :].strip()
    if payload == _DONE or not payload:
        return
    now = time.perf_counter()
    chunk = orjson.loads(payload)
    for choice in chunk.get("choices") or ():
        text = choice.get("text")
        if text is None:
            text = (choice.get("delta") or {}).get("content")
        if text:
            trace.token_times.append(now)
            break
    usage = chunk.get("usage")
    if usage:
        trace.prompt_tokens = usage.get("prompt_tokens")
        trace.completion_tokens = usage.get("completion_tokens")
        details = usage.get("prompt_tokens_details") or {}
        trace.cached_tokens = details.get("cached_tokens") or 0
    if "error" in chunk:
        trace.error = str(chunk["error"])[:200]


async def _tick(on_tick: Callable[[], None], every_s: float = 0.25) -> None:
    while True:
        on_tick()
        await asyncio.sleep(every_s)
