"""The sidecar's HTTP server: a streaming reverse proxy to the local engine that runs the prefill leg first
for completions naming a prefill endpoint (`protocol` builds the bodies).

- No `x-prefiller-host-port` (any method, any path): the request goes to the engine as it came, and the
  answer comes back as the engine sends it, chunk by chunk (SSE streams), status and end-to-end headers kept.
- `POST /v1/completions` or `/v1/chat/completions` with the header: the prefill endpoint prefills, then the
  engine decodes with the transferred KV. A prefill leg that fails or outlasts `prefill_timeout_s` falls back
  to prefilling locally: the original request goes to the engine unchanged, logged and counted.
- The header never reaches the engine. A client that goes away cancels the handler (aiohttp's
  `handler_cancellation`), which closes the leg in flight, and the engine aborts that request.
"""

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import aiohttp
import orjson
from aiohttp import web

from frontier_api import names
from frontier_sidecar import metrics, protocol

log = logging.getLogger(__name__)

# Within Kubernetes' default 30 s termination grace, open streams get this long to finish on shutdown.
SHUTDOWN_GRACE_S: Final = 25.0
MAX_BODY_BYTES: Final = 64 * 1024**2  # long prompts; aiohttp's default (1 MiB) would refuse them
JSON: Final = "application/json"

Headers = list[tuple[str, str]]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """One sidecar's settings (the command line's flags)."""

    engine_url: str = "http://127.0.0.1:8200"
    address: str = "0.0.0.0"
    port: int = 8000
    metrics_port: int | None = None  # None: no counters served; 0: the OS picks
    prefill_timeout_s: float = 60.0


class PrefillError(Exception):
    """The prefill leg gave no usable KV; `reason` is one of `metrics.FALLBACK_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def error_response(status: int, message: str, kind: str) -> web.Response:
    """An error in vLLM's shape, so clients see the same errors with or without the sidecar."""
    body = {"object": "error", "message": message, "type": kind, "param": None, "code": status}
    return web.Response(status=status, body=orjson.dumps(body), content_type=JSON)


class Sidecar:
    """One sidecar: the proxy app, its client session to the engine and prefill endpoints, its counters."""

    def __init__(self, config: Settings) -> None:
        self.settings = config
        self.metrics = metrics.SidecarMetrics()
        self.port = config.port
        self.metrics_port = config.metrics_port
        self._engine = config.engine_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the client session (call inside the event loop that serves)."""
        self._session = aiohttp.ClientSession(
            # No connection cap: every open client stream holds one engine connection.
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None),
            # Bytes pass through as the engine encodes them, and only the client's own headers go upstream.
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "Content-Type", "User-Agent"),
        )

    async def close(self) -> None:
        """Close the client session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def app(self) -> web.Application:
        """The proxy app: every method and path."""
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    @property
    def session(self) -> aiohttp.ClientSession:
        """The client session to the engine and the prefill endpoints."""
        if self._session is None:
            raise RuntimeError("Sidecar.start() was not called")
        return self._session

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        request_id = request.headers.get(names.REQUEST_ID) or uuid.uuid4().hex
        try:
            body = await request.read()
            headers = protocol.request_headers(request.headers.items(), drop=[names.PREFILLER_HOST_PORT])
            prefiller = protocol.prefiller_of(request.headers.get(names.PREFILLER_HOST_PORT))
            if prefiller and request.method == "POST" and request.path in protocol.DISAGGREGATED_PATHS:
                return await self._disaggregate(request, body, headers, prefiller, request_id)
            return await self._forward(request, body, headers, request_id)
        except asyncio.CancelledError:  # the client went away (or shutdown outlasted its grace)
            log.info("event=request_cancelled request_id=%s path=%s", request_id, request.path)
            raise

    async def _disaggregate(
        self, request: web.Request, body: bytes, headers: Headers, prefiller: str, request_id: str
    ) -> web.StreamResponse:
        # One id on both legs, as llm-d's sidecar sends, so both engines name the request alike.
        headers = protocol.replace_header(headers, names.REQUEST_ID, request_id)
        loop = asyncio.get_running_loop()
        started = loop.time()
        original = protocol.parse_request(body)
        try:
            if original is None:
                raise PrefillError("invalid_body", "not a JSON object")
            prefill = protocol.prefill_request(original, chat=request.path == protocol.CHAT_PATH)
            params = await self._prefill(f"http://{prefiller}{request.rel_url}", prefill, headers)
        except PrefillError as e:
            self.metrics.fallbacks.labels(e.reason).inc()
            log.warning(
                "event=prefill_fallback request_id=%s prefiller=%s reason=%s detail=%s",
                request_id,
                prefiller,
                e.reason,
                e.detail,
            )
            return await self._forward(request, body, headers, request_id)
        self.metrics.remote_prefills.inc()
        log.info(
            "event=remote_prefill request_id=%s prefiller=%s remote_engine=%s seconds=%.3f",
            request_id,
            prefiller,
            params.get("remote_engine_id"),
            loop.time() - started,
        )
        decode = orjson.dumps(protocol.decode_request(original, params))
        return await self._forward(
            request, decode, protocol.replace_header(headers, "Content-Type", JSON), request_id
        )

    async def _prefill(self, url: str, body: dict[str, Any], headers: Headers) -> dict[str, Any]:
        """Run the prefill leg; returns the KV transfer params it answers, or raises PrefillError."""
        # The answer is parsed here, so it must come uncompressed.
        headers = protocol.request_headers(
            protocol.replace_header(headers, "Content-Type", JSON), drop=["Accept-Encoding"]
        )
        timeout = self.settings.prefill_timeout_s
        try:
            async with (
                asyncio.timeout(timeout),
                self.session.post(
                    url, data=orjson.dumps(body), headers=headers, allow_redirects=False
                ) as reply,
            ):
                answer = await reply.read()
        except TimeoutError:
            raise PrefillError("timeout", f"no answer within {timeout:g}s") from None
        except (aiohttp.ClientError, ValueError) as e:  # ValueError: a host:port that makes no URL
            raise PrefillError("connection_error", str(e) or type(e).__name__) from None
        if reply.status != 200:
            raise PrefillError("status", f"status={reply.status}")
        params = protocol.transfer_params(answer)
        if params is None:
            raise PrefillError("no_kv_transfer_params", "the answer names no KV to pull")
        return params

    async def _forward(
        self, request: web.Request, body: bytes, headers: Headers, request_id: str
    ) -> web.StreamResponse:
        """Send the request to the engine and stream its answer back as it comes."""
        url = f"{self._engine}{request.rel_url}"
        try:
            upstream = await self.session.request(
                request.method, url, data=body or None, headers=headers, allow_redirects=False
            )
        except aiohttp.ClientError as e:
            log.error(
                "event=engine_unreachable request_id=%s engine=%s error=%s", request_id, self._engine, e
            )
            return error_response(502, f"the engine at {self._engine} is unreachable: {e}", "BadGatewayError")
        try:
            response = web.StreamResponse(
                status=upstream.status,
                reason=upstream.reason,
                headers=protocol.response_headers(upstream.headers.items()),
            )
            await _copy(upstream, response, request, request_id)
            return response
        finally:
            # Closing an unfinished answer drops its connection, which is how the engine learns to abort.
            upstream.close()


async def _copy(
    upstream: aiohttp.ClientResponse, response: web.StreamResponse, request: web.Request, request_id: str
) -> None:
    """Copy the engine's answer to the client chunk by chunk, as each arrives."""
    try:
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
    except ConnectionResetError:  # a write to a client that went away (before aiohttp cancels the handler)
        log.info("event=client_disconnected request_id=%s path=%s", request_id, request.path)
    except aiohttp.ClientError as e:  # reading: the engine broke off its answer
        log.error("event=engine_stream_broken request_id=%s path=%s error=%s", request_id, request.path, e)
        # Status and headers are sent: only a dropped connection tells the client the answer is cut short.
        if request.transport is not None:
            request.transport.abort()


@contextlib.asynccontextmanager
async def serving(config: Settings) -> AsyncIterator[Sidecar]:
    """Run one sidecar (port 0: the OS picks; `port`/`metrics_port` then hold the bound ones)."""
    sidecar = Sidecar(config)
    await sidecar.start()
    runners: list[web.AppRunner] = []
    try:
        runner = web.AppRunner(
            sidecar.app(), handler_cancellation=True, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S
        )
        runners.append(runner)
        sidecar.port = await _listen(runner, config.address, config.port)
        if config.metrics_port is not None:
            metrics_runner = web.AppRunner(sidecar.metrics.app(), access_log=None)
            runners.append(metrics_runner)
            sidecar.metrics_port = await _listen(metrics_runner, config.address, config.metrics_port)
        log.info(
            "event=sidecar_started address=%s port=%d metrics_port=%s engine=%s prefill_timeout_s=%g",
            config.address,
            sidecar.port,
            sidecar.metrics_port,
            config.engine_url,
            config.prefill_timeout_s,
        )
        yield sidecar
    finally:
        for each in reversed(runners):
            await each.cleanup()
        await sidecar.close()
        log.info("event=sidecar_stopped port=%d", sidecar.port)


async def _listen(runner: web.AppRunner, address: str, port: int) -> int:
    await runner.setup()
    site = web.TCPSite(runner, address, port, reuse_address=True)
    await site.start()
    bound: Sequence[Any] = runner.addresses
    return int(bound[0][1]) if bound else port
