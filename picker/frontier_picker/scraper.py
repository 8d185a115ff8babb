"""The model-server metrics scraper: keeps every endpoint's `EndpointState.metrics` fresh.

Each endpoint gets its own asyncio task that GETs `http://ip:port/metrics` every `interval_s` (50 ms, as GIE
polls), with a per-request timeout and, after transport errors, error statuses or oversized bodies,
exponential backoff up to `max_backoff_s` (an untrusted but prompt body keeps the interval: it costs what a
good one does, and the endpoint is back within one interval of sane metrics). A vLLM
/metrics body is tens to hundreds of kilobytes, most of it histogram buckets the picker never reads, so the
body is not parsed: for each wanted family (engine-specific names from `frontier_api.names.ENGINE_METRICS`,
engine chosen by the endpoint's label) the scraper searches the raw bytes for lines starting with that name
and reads only those lines. A successful scrape replaces `state.metrics` with a new object stamped
`updated_at = clock()` (monotonic), so age and staleness are visible to the schedulers; a failed one leaves
the old metrics to age and counts `state.scrape_failures` (total, never reset).

A body is trusted only when it reads as the engine's metrics: it must hold at least one of the families the
picker reads (an HTML error page served with status 200 holds none), every value read must be finite and in
range (a count >= 0, KV use in [0, 1]), and it may not exceed `max_body_bytes`. Anything else is a failed
scrape (`ScrapeError`), logged with the reason, so the endpoint goes stale and is routed around until its
metrics are sane again. No error can end an endpoint's scrape task: a task that dies anyway is restarted at
the next reconcile, and that is logged too.

The endpoints come from a callable returning the datastore's live states, read again every interval, so
endpoints that join or leave the pool start or stop being scraped within one interval.
"""

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import Callable, Iterable

import aiohttp

from frontier_api import names
from frontier_picker import endpoints

log = logging.getLogger(__name__)

_LABEL = re.compile(rb'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
MAX_BODY_BYTES = 8 * 1024 * 1024  # a vLLM /metrics page is tens to hundreds of KB


class ScrapeError(ValueError):
    """A /metrics body the picker will not trust; the message says why."""


class BodyTooLarge(ScrapeError):
    """A /metrics body past the size cap: costly to fetch, so it is backed off like a transport error."""


def metrics_url(endpoint: endpoints.Endpoint) -> str:
    host = f"[{endpoint.address}]" if ":" in endpoint.address else endpoint.address
    return f"http://{host}:{endpoint.port}/metrics"


def samples(body: bytes, name: str) -> list[tuple[bytes, float]]:
    """`(labels, value)` of every sample line of metric `name`, found without parsing the rest of the body."""
    wanted = name.encode()
    needle = b"\n" + wanted
    found = []
    if body.startswith(wanted):
        start = 0
    else:
        hit = body.find(needle)
        start = hit + 1 if hit >= 0 else -1
    while start >= 0:
        after = start + len(wanted)
        end = body.find(b"\n", after)
        if end < 0:
            end = len(body)
        marker = body[after : after + 1]
        if marker in (b"{", b" "):
            line = body[after:end]
            labels = b""
            if marker == b"{":
                close = line.rfind(b"}")
                labels, line = line[1:close], line[close + 1 :]
            fields = line.split()
            if fields:
                with contextlib.suppress(ValueError):
                    found.append((labels, float(fields[0])))
        next_line = body.find(needle, end)
        start = next_line + 1 if next_line >= 0 else -1
    return found


def labels(raw: bytes) -> dict[str, str]:
    """The label pairs of one sample line (bytes that are not UTF-8 are replaced, never fatal)."""
    return {key.decode(): value.decode("utf-8", errors="replace") for key, value in _LABEL.findall(raw)}


def _count(found: list[tuple[bytes, float]], name: str) -> int:
    total = 0.0
    for _, value in found:
        if not math.isfinite(value) or value < 0:
            raise ScrapeError(f"{name} is {value!r}; a count must be finite and >= 0")
        total += value
    return int(total)


def _fraction(found: list[tuple[bytes, float]], name: str) -> float:
    values = [value for _, value in found]
    for value in values:
        if not 0.0 <= value <= 1.0:  # also false for NaN
            raise ScrapeError(f"{name} is {value!r}; KV use must be in [0, 1]")
    return max(values)


def _adapters(value: str) -> frozenset[str]:
    return frozenset(item for item in value.split(",") if item)


def parse(body: bytes, engine: str, *, now: float) -> endpoints.EndpointMetrics:
    """The metrics the picker reads from one /metrics body of an `engine` model server.

    Several sample lines of one family (one per engine process behind the endpoint) are combined: queue and
    batch counts add up, KV use takes the fullest.
    """
    family = names.ENGINE_METRICS.get(engine, names.ENGINE_METRICS[names.ENGINE_VLLM])
    waiting_found = samples(body, family.waiting)
    running_found = samples(body, family.running)
    kv = 0.0
    kv_found = False
    for kv_name in family.kv_usage:
        found = samples(body, kv_name)
        if found:
            kv, kv_found = _fraction(found, kv_name), True
            break
    if not (waiting_found or running_found or kv_found):
        raise ScrapeError(f"no {engine} metrics in the body ({len(body)} bytes starting {body[:40]!r})")
    metrics = endpoints.EndpointMetrics(
        waiting=_count(waiting_found, family.waiting),
        running=_count(running_found, family.running),
        kv_usage=kv,
        updated_at=now,
    )
    config = samples(body, family.cache_config)
    if config:
        info = labels(config[0][0])
        metrics.block_size = _positive(info.get(family.block_size_label))
        metrics.num_gpu_blocks = _positive(info.get(family.num_blocks_label))
    if family.lora:
        lora = samples(body, family.lora)
        if lora:
            # One line per change; its value is a timestamp, the latest is the current state.
            latest = labels(max(lora, key=lambda sample: sample[1])[0])
            metrics.running_loras = _adapters(latest.get("running_lora_adapters", ""))
            metrics.waiting_loras = _adapters(latest.get("waiting_lora_adapters", ""))
            metrics.max_loras = _positive(latest.get("max_lora"))
    return metrics


def _positive(text: str | None) -> int | None:
    """A label's integer value, None when absent or not a non-negative integer."""
    return int(text) if text is not None and text.isdigit() and len(text) <= 18 else None


class Scraper:
    """Scrapes every endpoint the `states` callable returns, each on its own schedule."""

    def __init__(
        self,
        states: Callable[[], Iterable[endpoints.EndpointState]],
        *,
        interval_s: float = 0.05,
        timeout_s: float = 1.0,
        max_backoff_s: float = 2.0,
        max_body_bytes: int = MAX_BODY_BYTES,
        clock: Callable[[], float] = time.monotonic,
        url: Callable[[endpoints.Endpoint], str] = metrics_url,
    ) -> None:
        self._source = states
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.max_backoff_s = max_backoff_s
        self.max_body_bytes = max_body_bytes
        self._clock = clock
        self._url = url
        self._states: dict[str, endpoints.EndpointState] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self.scrapes = 0
        self.failures = 0

    async def run(self) -> None:
        """Scrape until cancelled."""
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=1)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout_s)
        ) as session:
            self._session = session
            try:
                while True:
                    self._reconcile()
                    await asyncio.sleep(self.interval_s)
            finally:
                tasks = list(self._tasks.values())
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._tasks.clear()
                self._session = None

    def _reconcile(self) -> None:
        current = {state.endpoint.key: state for state in self._source()}
        self._states = current
        for key in self._tasks.keys() - current.keys():
            self._tasks.pop(key).cancel()
        for key, task in list(self._tasks.items()):
            if task.done() and key in current:  # cannot happen by design; if it does, say why and go on
                error = None if task.cancelled() else task.exception()
                log.error("event=scrape_task_restarted endpoint=%s error=%r", key, error)
                del self._tasks[key]
        for key in current.keys() - self._tasks.keys():
            self._tasks[key] = asyncio.create_task(self._scrape_forever(key), name=f"scrape {key}")

    async def _scrape_forever(self, key: str) -> None:
        consecutive = 0
        while True:
            state = self._states.get(key)
            if state is None:
                return
            try:
                await self.scrape(state)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # any failure is this endpoint's, never the end of its task
                consecutive += 1
                self.failures += 1
                state.scrape_failures += 1
                if consecutive == 1:
                    expected = isinstance(error, aiohttp.ClientError | TimeoutError | OSError | ScrapeError)
                    log.log(
                        logging.WARNING if expected else logging.ERROR,
                        "event=scrape_failed endpoint=%s error=%r",
                        key,
                        error,
                        exc_info=not expected,
                    )
                # A prompt answer the picker will not trust costs what a good one does: keep the interval, so
                # the endpoint is back within one interval of sane metrics. Anything else backs off.
                untrusted = isinstance(error, ScrapeError) and not isinstance(error, BodyTooLarge)
                delay = (
                    self.interval_s
                    if untrusted
                    else min(self.max_backoff_s, self.interval_s * 2**consecutive)
                )
            else:
                if consecutive:
                    log.info("event=scrape_recovered endpoint=%s failures=%d", key, consecutive)
                consecutive = 0
                delay = self.interval_s
            await asyncio.sleep(delay)

    async def scrape(self, state: endpoints.EndpointState) -> None:
        """One scrape of one endpoint; raises on a transport error or an HTTP error status."""
        if self._session is None:
            raise RuntimeError("the scraper is not running")
        async with self._session.get(self._url(state.endpoint)) as response:
            response.raise_for_status()
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise BodyTooLarge(f"/metrics body exceeds {self.max_body_bytes} bytes")
                chunks.append(chunk)
            body = b"".join(chunks)
        state.metrics = parse(body, state.endpoint.engine_type, now=self._clock())
        self.scrapes += 1
