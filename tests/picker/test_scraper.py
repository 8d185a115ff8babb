"""The metrics scraper: line-scanning extraction from large real-format bodies, and scraping real HTTP servers
(timeouts, failures, backoff, recovery, endpoints joining and leaving).

Servers bind port 0 on this suite's loopback range 127.5.1.0/24.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from frontier_api import names
from frontier_picker import endpoints, scraper

MODEL = 'engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"'
HISTOGRAMS = [
    "vllm:time_to_first_token_seconds",
    "vllm:time_per_output_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:request_inference_time_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:request_decode_time_seconds",
    "vllm:request_prompt_tokens",
    "vllm:request_generation_tokens",
    "vllm:iteration_tokens_total",
    "vllm:request_max_num_generation_tokens",
    "vllm:request_params_n",
    "vllm:request_params_max_tokens",
]
BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0]
BUCKETS += [40.0, 80.0, 160.0, 640.0, 2560.0, 1e4, 4e4, 1.6e5, 6.4e5, 2.56e6]


def vllm_body(
    *, waiting: int = 3, running: int = 7, kv: float = 0.42, kv_name: str = "vllm:kv_cache_usage_perc"
) -> bytes:
    """A /metrics body shaped like vLLM's: HELP/TYPE lines, process metrics, many histograms, then gauges."""
    out = [
        "# HELP python_gc_objects_collected_total Objects collected during gc",
        "# TYPE python_gc_objects_collected_total counter",
        'python_gc_objects_collected_total{generation="0"} 12345.0',
        "process_resident_memory_bytes 3.1e+09",
    ]
    for name in HISTOGRAMS:
        out += [f"# HELP {name} Histogram of {name}.", f"# TYPE {name} histogram"]
        for finish in ("stop", "length", "abort"):
            labels = f'{MODEL},finished_reason="{finish}"' if "request_" in name else MODEL
            out += [f'{name}_bucket{{{labels},le="{le}"}} {i * 17}.0' for i, le in enumerate(BUCKETS)]
            out += [f'{name}_bucket{{{labels},le="+Inf"}} 999.0', f"{name}_count{{{labels}}} 999.0"]
            out.append(f"{name}_sum{{{labels}}} 1234.5")
    out += [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{MODEL}}} {running}.0",
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{{{MODEL}}} {waiting}.0",
        f"# HELP {kv_name} KV-cache usage. 1 means 100 percent usage.",
        f"{kv_name}{{{MODEL}}} {kv}",
        "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig",
        'vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="True",'
        'gpu_memory_utilization="0.9",num_cpu_blocks="2048",num_gpu_blocks="27000",engine="0"} 1.0',
        "# HELP vllm:lora_requests_info Running stats on lora requests.",
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql,chat",'
        'waiting_lora_adapters=""} 1.7e9',
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="chat",'
        'waiting_lora_adapters="sql"} 1.7000001e9',
        f"vllm:prefix_cache_queries_total{{{MODEL}}} 1.2e+06",
    ]
    return ("\n".join(out) + "\n").encode()


def test_parse_reads_the_needed_families_from_a_large_vllm_body():
    body = vllm_body()
    assert len(body) > 50_000
    metrics = scraper.parse(body, names.ENGINE_VLLM, now=12.5)
    assert (metrics.waiting, metrics.running, metrics.kv_usage) == (3, 7, 0.42)
    assert (metrics.block_size, metrics.num_gpu_blocks) == (16, 27000)
    assert metrics.running_loras == frozenset({"chat"})  # the latest lora_requests_info line wins
    assert metrics.waiting_loras == frozenset({"sql"})
    assert metrics.max_loras == 4
    assert metrics.updated_at == 12.5


def test_parse_accepts_the_older_vllm_kv_name_and_missing_families():
    metrics = scraper.parse(vllm_body(kv_name="vllm:gpu_cache_usage_perc", kv=0.9), names.ENGINE_VLLM, now=0)
    assert metrics.kv_usage == 0.9
    only_queue = scraper.parse(b"vllm:num_requests_waiting 3\n", names.ENGINE_VLLM, now=0)
    assert (only_queue.waiting, only_queue.kv_usage, only_queue.num_gpu_blocks) == (3, 0.0, None)
    assert only_queue.max_loras is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html><body>502 Bad Gateway</body></html>", "no vllm metrics"),
        (b"# nothing here\n", "no vllm metrics"),
        (b"vllm:num_requests_waiting NaN\n", "must be finite"),
        (b"vllm:num_requests_running +Inf\n", "must be finite"),
        (b"vllm:num_requests_waiting 1e400\n", "must be finite"),
        (b"vllm:num_requests_waiting -3\n", ">= 0"),
        (b"vllm:kv_cache_usage_perc 1.5\n", r"in \[0, 1\]"),
        (b"vllm:kv_cache_usage_perc NaN\n", r"in \[0, 1\]"),
    ],
)
def test_garbage_and_non_finite_metrics_are_a_failed_scrape_not_an_idle_endpoint(body, reason):
    with pytest.raises(scraper.ScrapeError, match=reason):
        scraper.parse(body, names.ENGINE_VLLM, now=0)


def test_label_bytes_that_are_not_utf8_and_odd_label_values_are_tolerated():
    body = vllm_body() + b'vllm:cache_config_info{block_size="\xff\xfe",num_gpu_blocks="1e400"} 1\n'
    metrics = scraper.parse(body, names.ENGINE_VLLM, now=0)
    assert metrics.waiting >= 0


def test_parse_sglang_names_and_does_not_confuse_longer_names_sharing_a_prefix():
    body = (
        b"sglang:num_queue_reqs_total 99\n"
        b'sglang:num_queue_reqs{model_name="m"} 2\n'
        b'sglang:num_running_reqs{model_name="m"} 5\n'
        b'sglang:token_usage{model_name="m"} 0.25\n'
        b'sglang:cache_config_info{page_size="1",num_pages="500000"} 1\n'
    )
    metrics = scraper.parse(body, names.ENGINE_SGLANG, now=0)
    assert (metrics.waiting, metrics.running, metrics.kv_usage) == (2, 5, 0.25)
    assert (metrics.block_size, metrics.num_gpu_blocks) == (1, 500_000)


def test_parse_adds_up_several_engines_and_takes_the_fullest_kv():
    body = b'vllm:num_requests_waiting{engine="0"} 2\nvllm:num_requests_waiting{engine="1"} 3\n'
    body += b'vllm:kv_cache_usage_perc{engine="0"} 0.2\nvllm:kv_cache_usage_perc{engine="1"} 0.7\n'
    metrics = scraper.parse(body, names.ENGINE_VLLM, now=0)
    assert (metrics.waiting, metrics.kv_usage) == (5, 0.7)


class ModelServer:
    """A real aiohttp server answering /metrics with whatever the test sets."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.body = vllm_body()
        self.status = 200
        self.delay_s = 0.0
        self.hits = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return web.Response(body=self.body, status=self.status, content_type="text/plain")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.address, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def state(self) -> endpoints.EndpointState:
        return endpoints.EndpointState(
            endpoint=endpoints.Endpoint(name=self.address, address=self.address, port=self.port)
        )


@pytest.fixture
async def servers() -> AsyncIterator[list[ModelServer]]:
    started = [ModelServer(f"127.5.1.{i}") for i in (1, 2)]
    for server in started:
        await server.start()
    yield started
    for server in started:
        await server.stop()


async def until(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def running(instance: scraper.Scraper) -> asyncio.Task[None]:
    return asyncio.create_task(instance.run())


async def test_scraper_keeps_every_endpoint_fresh(servers):
    states = [server.state() for server in servers]
    task = await running(scraper.Scraper(lambda: states, interval_s=0.02))
    try:
        await until(lambda: all(state.metrics.waiting == 3 for state in states))
        assert all(time.monotonic() - state.metrics.updated_at < 0.5 for state in states)
        servers[1].body = vllm_body(waiting=11, kv=0.85)
        await until(lambda: states[1].metrics.waiting == 11)
        assert states[1].metrics.kv_usage == 0.85
        before = states[0].metrics.updated_at
        await until(lambda: states[0].metrics.updated_at > before)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_failures_are_counted_backed_off_and_metrics_age_until_recovery(servers):
    server = servers[0]
    state = server.state()
    instance = scraper.Scraper(lambda: [state], interval_s=0.02, max_backoff_s=1.0)
    task = await running(instance)
    try:
        await until(lambda: state.metrics.waiting == 3)
        server.status = 500
        await asyncio.sleep(0.05)
        last_good = state.metrics.updated_at
        hits = server.hits
        await asyncio.sleep(0.6)
        assert state.metrics.updated_at == last_good  # the old values age: the saturation filter sees it
        assert state.scrape_failures >= 2
        assert server.hits - hits <= 8  # 0.6 s at 20 ms would be 30 scrapes without backoff
        server.status = 200
        server.body = vllm_body(waiting=1)
        await until(lambda: state.metrics.waiting == 1)
        assert instance.failures == state.scrape_failures
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_hanging_endpoint_times_out_and_does_not_delay_the_others(servers):
    slow, fast = servers
    slow.delay_s = 0.6
    states = [slow.state(), fast.state()]
    task = await running(scraper.Scraper(lambda: states, interval_s=0.02, timeout_s=0.1))
    try:
        await until(lambda: states[0].scrape_failures >= 1)
        assert states[1].metrics.waiting == 3
        assert states[0].metrics.updated_at == float("-inf")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_unreachable_endpoint_counts_failures():
    state = endpoints.EndpointState(endpoint=endpoints.Endpoint(name="gone", address="127.5.1.9", port=9))
    task = await running(scraper.Scraper(lambda: [state], interval_s=0.02, timeout_s=0.2))
    try:
        await until(lambda: state.scrape_failures >= 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_endpoints_joining_and_leaving_start_and_stop_being_scraped(servers):
    first, second = servers
    current = [first.state()]
    task = await running(scraper.Scraper(lambda: current, interval_s=0.02))
    try:
        await until(lambda: current[0].metrics.waiting == 3)
        assert second.hits == 0
        joined = second.state()
        current = [joined]
        await until(lambda: joined.metrics.waiting == 3)
        await asyncio.sleep(0.1)
        hits = first.hits
        await asyncio.sleep(0.2)
        assert first.hits == hits
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_poisoned_metrics_page_makes_the_endpoint_stale_and_it_recovers_when_fixed(servers, caplog):
    caplog.set_level(logging.INFO, logger="frontier_picker.scraper")
    server = servers[0]
    state = server.state()
    instance = scraper.Scraper(lambda: [state], interval_s=0.02, max_backoff_s=0.05)
    task = await running(instance)
    try:
        await until(lambda: state.metrics.updated_at > 0)
        for poison in (b"vllm:num_requests_waiting NaN\n", b"<html>oops</html>", b"\xff\xfe{garbage"):
            server.body = poison
            failures = state.scrape_failures
            await until(lambda failures=failures: state.scrape_failures >= failures + 2)
            stamped = state.metrics.updated_at
            await asyncio.sleep(0.1)
            assert state.metrics.updated_at == stamped  # no fresh metrics from a poisoned page
        server.body = vllm_body()
        await until(lambda: state.metrics.updated_at > stamped)  # the scrape task is alive: it recovers
        assert not task.done()
        assert "event=scrape_failed" in caplog.text and "event=scrape_recovered" in caplog.text
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_after_a_long_poisoned_spell_the_endpoint_is_fresh_within_an_interval_of_sane_metrics(servers):
    server = servers[0]
    state = server.state()
    instance = scraper.Scraper(lambda: [state], interval_s=0.05, max_backoff_s=2.0)
    task = await running(instance)
    try:
        await until(lambda: state.metrics.updated_at > 0)
        server.body = b"<html>maintenance</html>"
        await asyncio.sleep(1.0)  # backing off, the scraper would now wait 0.8 s and then 1.6 s
        assert state.scrape_failures >= 10  # it kept the interval
        server.body = vllm_body(waiting=4)
        healed = time.monotonic()
        await until(lambda: state.metrics.waiting == 4)
        assert time.monotonic() - healed < 0.5
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_oversized_metrics_page_is_refused(servers):
    server = servers[0]
    server.body = vllm_body() + b"#" * 300_000 + b"\n"
    state = server.state()
    instance = scraper.Scraper(lambda: [state], interval_s=0.02, max_body_bytes=100_000)
    task = await running(instance)
    try:
        await until(lambda: state.scrape_failures >= 1)
        assert state.metrics.updated_at == float("-inf")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
