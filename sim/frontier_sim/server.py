"""A simulated vLLM server: the OpenAI-compatible HTTP surface of vLLM around one engine core, in real time.

A driver task steps the core: `begin_step()` schedules a batch, the driver sleeps the step's model duration
times `time_scale` (deadline-based, so small timer delays do not accumulate), then `complete_step()` delivers
the step's tokens to the waiting HTTP handlers and publishes its KV events. Everything the server reports
(metrics, usage, logs, event timestamps) is in model time: wall time divided by `time_scale`.

Endpoints: `/v1/completions` and `/v1/chat/completions` (SSE streaming or not, `usage` with
`prompt_tokens_details.cached_tokens`, `stream_options.include_usage`), `/v1/models`, `/health`, `/metrics`,
`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`, `/reset_prefix_cache`, plus SGLang's `/get_model_info`
and `/get_server_info` so SGLang's router accepts the simulator as a worker.

Prefill/decode disaggregation speaks vLLM's NixlConnector protocol, as llm-d uses it: a request carrying
`kv_transfer_params.do_remote_decode` is prefilled only and answered with `kv_transfer_params` naming its KV
blocks (`do_remote_prefill`, `remote_block_ids`, `remote_engine_id`, `remote_host`, `remote_port`); a request
carrying those params back (`do_remote_prefill: true`) is decoded with the prompt's KV pulled from the prefill
endpoint: it waits the KV transfer time (uncached prompt KV bytes per GPU over `--sim-kv-link-gbps`), then
computes only the last prompt token. `frontier-sidecar` drives that protocol in front of this server or vLLM.
Without a sidecar, a request with header `x-prefiller-host-port` makes this server play the sidecar itself:
it sends the prefill endpoint the request (`max_tokens=1`, `stream=false`, `do_remote_decode=true`), then
decodes through the same path with the params it got back. TTFT counts all of it.

A client that disconnects aborts its request, which frees its KV blocks.
"""

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
import uuid
from typing import Any

import aiohttp
import orjson
import zmq
from aiohttp import web

from frontier_api import names
from frontier_sim import engine, kvevents, metrics, settings, tokenizer

log = logging.getLogger(__name__)

# Behind schedule by more than this, the driver stops trying to catch up (keeps steps spaced, avoids bursts).
MAX_CATCH_UP_S = 0.05
SHUTDOWN_GRACE_S = 1.0
REPLAY_POLL_S = 0.01  # how often KV event replay requests are answered


class RequestError(Exception):
    """An error answered in vLLM's error shape; `status` is the HTTP status."""

    def __init__(self, status: int, message: str, kind: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


def _remote_kv(transfer: dict[str, Any]) -> dict[str, Any] | None:
    """`transfer` if it asks to decode with the prompt KV of a remote prefill (vLLM's NixlConnector fields).

    Like vLLM, params that do not name the remote blocks leave the request to be prefilled locally.
    """
    pull = transfer.get("do_remote_prefill") and isinstance(transfer.get("remote_block_ids"), list)
    return transfer if pull else None


def error_response(err: RequestError) -> web.Response:
    body = {"object": "error", "message": err.message, "type": err.kind, "param": None, "code": err.status}
    return web.Response(status=err.status, body=orjson.dumps(body), content_type="application/json")


@dataclasses.dataclass(slots=True, kw_only=True)
class _Stream:
    """One request's progress as its HTTP handler sees it (times in wall seconds of the event loop)."""

    arrival: float
    queue: asyncio.Queue[list[int] | engine.FinishedRequest]
    first_token_at: float | None = None
    last_token_at: float | None = None
    explicit_max_tokens: bool = True


@dataclasses.dataclass(slots=True, kw_only=True)
class _Parsed:
    """A completion request, decoded."""

    chat: bool
    model: str
    lora: str | None
    prompt_ids: list[int]
    max_tokens: int
    explicit_max_tokens: bool
    eos_after: int | None  # `names.SIM_OUTPUT_TOKENS` unless ignore_eos: where the simulated answer ends
    stream: bool
    include_usage: bool
    prefill_only: bool
    # kv_transfer_params naming prompt KV to pull from a prefill endpoint (None: prefill here).
    remote_kv: dict[str, Any] | None
    body: dict[str, Any]


class Server:
    """One simulated vLLM server (engine core + driver + HTTP app)."""

    def __init__(
        self, config: settings.Settings, *, zmq_context: "zmq.Context[zmq.Socket[bytes]] | None" = None
    ) -> None:
        self.settings = config
        self.core = settings.build_engine(config)
        self.metrics = metrics.ServerMetrics()
        self.engine_id = config.engine_id or f"sim-{uuid.uuid4().hex[:12]}"
        self._streams: dict[str, _Stream] = {}
        self._wake = asyncio.Event()
        self._driver: asyncio.Task[None] | None = None
        self._t0 = 0.0
        self._epoch = time.time()
        self._ids = itertools.count()
        self._session: aiohttp.ClientSession | None = None
        self._zmq_context = zmq_context
        self.publisher: kvevents.Publisher | None = None
        self._replayer: asyncio.Task[None] | None = None
        self.address = config.host
        self.port = config.port

    # --- clock ----------------------------------------------------------------------------------------------
    def model_time(self, wall: float | None = None) -> float:
        """Model seconds since start (wall seconds of the loop divided by the time scale)."""
        now = asyncio.get_running_loop().time() if wall is None else wall
        return (now - self._t0) / self.settings.time_scale

    # --- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the driver and, if configured, the KV event publisher (call once the port is known)."""
        self._t0 = asyncio.get_running_loop().time()
        if self.settings.kv_events_enabled:
            cfg = self.settings.kv_events_config or {}
            endpoint = kvevents.bind_endpoint(
                cfg.get("endpoint", names.KV_EVENTS_DEFAULT_ENDPOINT), self.address
            )
            topic = str(cfg.get("topic", "")).replace("$(POD_IP)", self.address)
            context = self._zmq_context or zmq.Context.instance()
            replay = cfg.get("replay_endpoint")
            self.publisher = kvevents.Publisher(
                endpoint=endpoint,
                topic=topic,
                context=context,
                replay_endpoint=kvevents.bind_endpoint(str(replay), self.address) if replay else None,
                buffer_steps=int(cfg.get("buffer_steps", kvevents.REPLAY_BUFFER_STEPS)),
            )
            if self.publisher.replay is not None:
                self._replayer = asyncio.create_task(
                    self._serve_replay(), name=f"sim-replay-{self.engine_id}"
                )
        self._driver = asyncio.create_task(self._drive(), name=f"sim-driver-{self.engine_id}")

    async def _serve_replay(self) -> None:
        """Answer KV event replay requests (polled: the publisher's sockets are not asyncio's)."""
        while self.publisher is not None:
            self.publisher.serve_replay()
            await asyncio.sleep(REPLAY_POLL_S)

    async def stop(self) -> None:
        if self._replayer is not None:
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replayer
            self._replayer = None
        if self._driver is not None:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver
            self._driver = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.publisher is not None:
            self.publisher.close()
            self.publisher = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/load_lora_adapter", self._load_lora)
        app.router.add_post("/v1/unload_lora_adapter", self._unload_lora)
        app.router.add_post("/reset_prefix_cache", self._reset_prefix_cache)
        app.router.add_get("/get_model_info", self._model_info)
        app.router.add_get("/get_server_info", self._server_info)
        app.router.add_get("/version", self._version)
        return app

    # --- driver ---------------------------------------------------------------------------------------------
    async def _drive(self) -> None:
        loop = asyncio.get_running_loop()
        scale = self.settings.time_scale
        deadline = loop.time()
        while True:
            if not self.core.has_work():
                self._wake.clear()
                await self._wake.wait()
                deadline = loop.time()
            scheduled = self.core.begin_step()
            if scheduled.duration > 0:
                deadline = max(deadline, loop.time() - MAX_CATCH_UP_S) + scheduled.duration * scale
                delay = deadline - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            result = self.core.complete_step(scheduled)
            self._deliver(result, loop.time())
            if not scheduled.batch and not result.finished:
                # Work exists but none could be scheduled: wait for a new request, an abort or a LoRA load.
                self._wake.clear()
                await self._wake.wait()

    def _deliver(self, result: engine.StepResult, now: float) -> None:
        if self.publisher is not None and result.events:
            self.publisher.publish(self._epoch + self.model_time(now), result.events)
        scale = self.settings.time_scale
        for rid, tokens in result.outputs.items():
            stream = self._streams.get(rid)
            if stream is None:
                continue
            if stream.first_token_at is None:
                stream.first_token_at = now
                self.metrics.ttft.observe((now - stream.arrival) / scale)
            elif stream.last_token_at is not None:
                self.metrics.itl.observe((now - stream.last_token_at) / scale)
            stream.last_token_at = now
            stream.queue.put_nowait(tokens)
        for done in result.finished:
            stream = self._streams.pop(done.request_id, None)
            reason = done.finish_reason
            if stream is not None and reason == "length" and not stream.explicit_max_tokens:
                reason = "stop"  # no max_tokens: the simulated model "ends its answer" at the default length
            self.metrics.success[reason] = self.metrics.success.get(reason, 0) + 1
            if stream is not None:
                self.metrics.e2e.observe((now - stream.arrival) / scale)
                stream.queue.put_nowait(dataclasses.replace(done, finish_reason=reason))
            if done.num_preemptions:
                log.debug(
                    "event=request_preempted request_id=%s times=%d", done.request_id, done.num_preemptions
                )

    # --- request parsing ------------------------------------------------------------------------------------
    def _parse(self, body: Any, *, chat: bool) -> _Parsed:
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object")
        model = body.get("model") or self.settings.served_model_name
        lora = None
        if model not in (
            self.settings.served_model_name,
            *self.settings.served_model_names,
            self.settings.model,
        ):
            if model in self.core.lora_ids:
                lora = model
            else:
                raise RequestError(404, f"The model `{model}` does not exist.", "NotFoundError")
        if chat:
            messages = body.get("messages")
            if (
                not isinstance(messages, list)
                or not messages
                or not all(isinstance(m, dict) for m in messages)
            ):
                raise RequestError(400, "messages: a non-empty list of chat messages is required")
            prompt_ids = tokenizer.encode(tokenizer.apply_chat_template(messages))
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if isinstance(prompt, str):
                prompt_ids = tokenizer.encode(prompt)
            elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
                prompt_ids = list(prompt)
            else:
                raise RequestError(400, "prompt: a string or a list of token ids is required (one prompt)")
        if body.get("n", 1) not in (1, None):
            raise RequestError(400, "n: only n=1 is simulated")
        max_tokens = body.get("max_completion_tokens") if chat else None
        max_tokens = max_tokens if max_tokens is not None else body.get("max_tokens")
        explicit = max_tokens is not None
        if max_tokens is None:
            room = self.core.config.max_model_len - len(prompt_ids)
            max_tokens = min(16 if not chat else self.settings.default_max_tokens, max(room, 1))
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise RequestError(400, f"max_tokens={max_tokens!r}: must be a positive integer")
        eos_after = body.get(names.SIM_OUTPUT_TOKENS)
        if eos_after is not None and (
            not isinstance(eos_after, int) or isinstance(eos_after, bool) or eos_after < 1
        ):
            raise RequestError(400, f"{names.SIM_OUTPUT_TOKENS}={eos_after!r}: must be a positive integer")
        if body.get("ignore_eos"):
            eos_after = None
        stream = bool(body.get("stream", False))
        options = body.get("stream_options") or {}
        transfer = body.get("kv_transfer_params")
        transfer = transfer if isinstance(transfer, dict) else {}
        prefill_only = bool(transfer.get("do_remote_decode"))
        return _Parsed(
            chat=chat,
            model=model,
            lora=lora,
            prompt_ids=prompt_ids,
            max_tokens=max_tokens,
            explicit_max_tokens=explicit,
            eos_after=eos_after,
            stream=stream,
            include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
            prefill_only=prefill_only,
            remote_kv=None if prefill_only else _remote_kv(transfer),
            body=body,
        )

    # --- completions ----------------------------------------------------------------------------------------
    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    async def _serve(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        arrival = loop.time()
        try:
            try:
                body = orjson.loads(await request.read())
            except orjson.JSONDecodeError as e:
                raise RequestError(400, f"the request body is not valid JSON: {e}") from None
            parsed = self._parse(body, chat=chat)
            prefiller = request.headers.get(names.PREFILLER_HOST_PORT)
            if prefiller and not parsed.prefill_only and parsed.remote_kv is None:
                parsed.remote_kv = await self._remote_prefill(request.path, parsed, prefiller)
            if parsed.remote_kv is not None:
                await self._pull_kv(parsed, parsed.remote_kv)
        except RequestError as err:
            return error_response(err)
        prefix = "chatcmpl" if chat else "cmpl"
        rid = f"{prefix}-{request.headers.get(names.REQUEST_ID) or uuid.uuid4().hex}-{next(self._ids)}"
        stream = _Stream(
            arrival=arrival, queue=asyncio.Queue(), explicit_max_tokens=parsed.explicit_max_tokens
        )
        try:
            self.core.add_request(
                rid,
                parsed.prompt_ids,
                max_tokens=parsed.max_tokens,
                eos_after=parsed.eos_after,
                lora=parsed.lora,
                prefill_only=parsed.prefill_only,
                kv_transferred=parsed.remote_kv is not None,
            )
        except ValueError as e:
            return error_response(RequestError(400, str(e)))
        self._streams[rid] = stream
        self._wake.set()
        finished = False
        try:
            if parsed.stream:
                response = await self._respond_stream(request, rid, parsed, stream)
            else:
                response = await self._respond_whole(rid, parsed, stream)
            finished = True
            return response
        finally:
            if not finished:
                self._streams.pop(rid, None)
                if self.core.abort(rid):
                    log.debug("event=request_aborted request_id=%s", rid)
                    self._wake.set()

    def _usage(self, done: engine.FinishedRequest) -> dict[str, Any]:
        return {
            "prompt_tokens": done.prompt_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens,
            "completion_tokens": done.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": done.cached_tokens},
        }

    def _transfer_params(self, done: engine.FinishedRequest) -> dict[str, Any]:
        return {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_block_ids": done.block_ids,
            "remote_engine_id": self.engine_id,
            "remote_host": self.address,
            "remote_port": self.port,
            "tp_size": self.settings.tensor_parallel_size,
        }

    async def _respond_whole(self, rid: str, parsed: _Parsed, stream: _Stream) -> web.Response:
        tokens: list[int] = []
        while True:
            item = await stream.queue.get()
            if isinstance(item, engine.FinishedRequest):
                done = item
                break
            tokens.extend(item)
        text = tokenizer.decode(tokens)
        choice: dict[str, Any]
        if parsed.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": done.finish_reason,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": done.finish_reason}
        body: dict[str, Any] = {
            "id": rid,
            "object": "chat.completion" if parsed.chat else "text_completion",
            "created": int(time.time()),
            "model": parsed.model,
            "choices": [choice],
            "usage": self._usage(done),
        }
        if parsed.prefill_only:
            body["kv_transfer_params"] = self._transfer_params(done)
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _respond_stream(
        self, request: web.Request, rid: str, parsed: _Parsed, stream: _Stream
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        created = int(time.time())
        obj = "chat.completion.chunk" if parsed.chat else "text_completion"

        def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
            data: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": parsed.model}
            data["choices"] = choices
            if usage is not None:
                data["usage"] = usage
            return b"data: " + orjson.dumps(data) + b"\n\n"

        if parsed.chat:
            first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
            await response.write(chunk([{**first, "finish_reason": None}]))
        while True:
            item = await stream.queue.get()
            if isinstance(item, engine.FinishedRequest):
                done = item
                break
            text = tokenizer.decode(item)
            if parsed.chat:
                choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": None}
            await response.write(chunk([choice]))
        if parsed.chat:
            last = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": done.finish_reason}
        else:
            last = {"index": 0, "text": "", "logprobs": None, "finish_reason": done.finish_reason}
        await response.write(chunk([last]))
        if parsed.include_usage:
            await response.write(chunk([], self._usage(done)))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    # --- prefill/decode -------------------------------------------------------------------------------------
    async def _remote_prefill(self, path: str, parsed: _Parsed, prefiller: str) -> dict[str, Any]:
        """Play llm-d's routing sidecar: prefill on `prefiller`; returns the kv_transfer_params it answers."""
        body = dict(parsed.body)
        body.pop("stream_options", None)
        body.update(stream=False, max_tokens=1)
        if parsed.chat:
            body["max_completion_tokens"] = 1
        body["kv_transfer_params"] = dict(names.KV_TRANSFER_PREFILL_PARAMS)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        url = f"http://{prefiller}{path}"
        try:
            async with self._session.post(url, data=orjson.dumps(body)) as reply:
                payload = await reply.read()
                if reply.status != 200:
                    raise RequestError(
                        502, f"prefill endpoint {prefiller} answered {reply.status}: {payload[:200]!r}"
                    )
        except aiohttp.ClientError as e:
            raise RequestError(502, f"prefill endpoint {prefiller} failed: {e}", "BadGatewayError") from None
        params = orjson.loads(payload).get("kv_transfer_params")
        remote_kv = _remote_kv(params) if isinstance(params, dict) else None
        if remote_kv is None:
            raise RequestError(502, f"prefill endpoint {prefiller} returned no kv_transfer_params")
        return remote_kv

    async def _pull_kv(self, parsed: _Parsed, remote_kv: dict[str, Any]) -> None:
        """The decode side of a remote prefill: wait while the prompt KV this engine lacks is transferred."""
        local = self.core.cached_prefix_tokens(parsed.prompt_ids, parsed.lora)
        pulled = max(len(parsed.prompt_ids) - local, 0)
        transfer_s = pulled * self.core.model.kv_bytes_per_token_per_gpu / self.settings.kv_link_bytes_per_s
        log.debug(
            "event=kv_transfer remote_engine=%s remote_host=%s remote_port=%s tokens=%d model_seconds=%.6f",
            remote_kv.get("remote_engine_id"),
            remote_kv.get("remote_host"),
            remote_kv.get("remote_port"),
            pulled,
            transfer_s,
        )
        await asyncio.sleep(transfer_s * self.settings.time_scale)

    # --- the rest of the surface ----------------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        created = int(self._epoch)
        served = self.settings.served_model_name
        data = [
            {
                "id": served,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": self.settings.model,
                "parent": None,
                "max_model_len": self.core.config.max_model_len,
            }
        ]
        data += [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": name,
                "parent": served,
            }
            for name in self.core.lora_ids
        ]
        return web.Response(
            body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
        )

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _metrics(self, request: web.Request) -> web.Response:
        render = metrics.render_sglang if self.settings.engine_type == "sglang" else metrics.render
        text = render(
            core=self.core,
            server=self.metrics,
            model_name=self.settings.served_model_name,
            gpu_memory_utilization=self.settings.gpu_memory_utilization,
            lora_timestamp=self._epoch + self.model_time(),
        )
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def _load_lora(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
            name = body["lora_name"]
            self.core.add_lora(str(name))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return error_response(RequestError(400, "lora_name is required"))
        except ValueError as e:
            return error_response(RequestError(400, str(e)))
        log.info("event=lora_loaded engine=%s lora=%s", self.engine_id, name)
        self._wake.set()
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload_lora(self, request: web.Request) -> web.Response:
        try:
            name = str(orjson.loads(await request.read())["lora_name"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return error_response(RequestError(400, "lora_name is required"))
        if not self.core.remove_lora(name):
            return error_response(
                RequestError(404, f"LoRA adapter {name!r} is not loaded or in use", "NotFoundError")
            )
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    async def _reset_prefix_cache(self, request: web.Request) -> web.Response:
        if not self.core.reset_prefix_cache():
            return error_response(
                RequestError(409, "the prefix cache is in use; retry when idle", "ConflictError")
            )
        self._wake.set()  # publish AllBlocksCleared
        log.info("event=prefix_cache_reset engine=%s", self.engine_id)
        return web.Response(status=200)

    async def _model_info(self, request: web.Request) -> web.Response:
        info = {"model_path": self.settings.model, "tokenizer_path": None, "is_generation": True}
        return web.Response(body=orjson.dumps(info), content_type="application/json")

    async def _server_info(self, request: web.Request) -> web.Response:
        info = {
            "model_path": self.settings.model,
            "served_model_name": self.settings.served_model_name,
            "max_total_num_tokens": self.core.config.num_gpu_blocks * self.core.config.block_size,
            "page_size": self.core.config.block_size,
        }
        return web.Response(body=orjson.dumps(info), content_type="application/json")

    async def _version(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({"version": "frontier-sim"}), content_type="application/json")


@contextlib.asynccontextmanager
async def serving(
    config: settings.Settings, *, zmq_context: "zmq.Context[zmq.Socket[bytes]] | None" = None
) -> Any:
    """Run one server on `config.host:config.port` (port 0: the OS picks); yields the started `Server`."""
    server = Server(config, zmq_context=zmq_context)
    # On exit, requests still open get SHUTDOWN_GRACE_S to finish, then are cancelled (aborted in the engine).
    runner = web.AppRunner(
        server.app(), handler_cancellation=True, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
    await site.start()
    bound = runner.addresses
    if bound:
        server.port = int(bound[0][1])
    await server.start()
    log.info(
        "event=engine_started engine=%s address=%s port=%d model=%s blocks=%d block_size=%d time_scale=%g",
        server.engine_id,
        server.address,
        server.port,
        config.served_model_name,
        server.core.config.num_gpu_blocks,
        server.core.config.block_size,
        config.time_scale,
    )
    try:
        yield server
    finally:
        await runner.cleanup()
        await server.stop()
        log.info("event=engine_stopped engine=%s", server.engine_id)
