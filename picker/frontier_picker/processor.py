"""The GIE endpoint-picker protocol: one Envoy ext_proc stream per HTTP request.

Envoy opens `ExternalProcessor/Process` for every request and sends, as configured, the request headers,
body chunks and trailers, then the response's. The picker answers each in order (headers → body → trailers):

- **Decision.** Once the model is known (the body is complete, or the request has no body) it builds a
  `types.Request` (`request_view`) and hands it to the director (`director.Director.decide`: subset hint,
  scheduler, load charge, decision log), and answers the request headers with
  `x-gateway-destination-endpoint: primary,fallback...`, the same string in `envoy.lb` dynamic metadata,
  and `clear_route_cache`.
- **Body.** In `FULL_DUPLEX_STREAMED` (GKE, Istio, llm-d) every body byte goes back as `streamed_response`
  chunks of at most 62,000 bytes: the original chunks when nothing changed (no copy, no re-encoding), the
  spliced body with a new `content-length` when the model name was rewritten. `STREAMED` (with Envoy's
  `send_body_without_waiting_for_header_response`) and `BUFFERED` put the decision on the body reply instead.
- **Flow control.** When the config enables it, the director may queue the request instead of deciding
  (`director.Director.admit`); the stream then holds Envoy's message unanswered until flow control
  dispatches it (the decision replies go out then) or refuses it, and a client that goes away while queued
  leaves the queue at once.
- **`GET /v1/models`** is answered by the picker itself: the pool's served models, LoRA adapters and
  virtual models (one engine would list only its own).
- **Refusals** are `ImmediateResponse`s with a JSON body naming the reason: 400 (bad body), 413 (too large),
  503 (no endpoint, empty subset, waited past its TTL), 429 (shed by the scheduler or flow control).
- **Response path.** Usage comes from SSE `data:` lines or the JSON body; the served endpoint from Envoy's
  `upstream.address` attribute or `envoy.lb`/`x-gateway-destination-endpoint-served` metadata. Completion is
  recorded exactly once (`director.Director.complete`): at the end of the response, or when the stream ends
  or is reset (client gone). Reply messages are built by `replies`.
- **Overload.** When a new request reaches the picker more than `overload_lag_s` after the gateway got it
  (Envoy's `request.time` attribute), or the event loop runs that far behind, it is refused with 503 at its
  headers, before any work; routed ones go on (`overload`).
- **Stream limits.** A stream whose client stays silent for `stream_idle_timeout_s` ends with
  `DEADLINE_EXCEEDED` (its charge refunded), and one peer host may hold at most `max_streams_per_peer`
  streams (more get `RESOURCE_EXHAUSTED`): idle streams from whoever reaches the port cannot pin load.

The message handlers are synchronous and return the replies to send, so the per-message cost is Python only
where it must be; the servicer just moves messages between them and gRPC.
"""

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, TypeAlias

import grpc
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from google.protobuf import struct_pb2

from frontier_api import names
from frontier_picker import bodies, director, metrics, overload, replies, request_view, subsets, usage, wire
from frontier_picker.scheduling import types
from frontier_picker.scheduling.framework import flow_control

log = logging.getLogger(__name__)

EXT_PROC_ATTRIBUTES: Final = "envoy.filters.http.ext_proc"
UPSTREAM_ADDRESS: Final = "upstream.address"

_FULL_DUPLEX: Final = processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED
_STREAMED: Final = processing_mode_pb2.ProcessingMode.STREAMED
_BUFFERED: Final = processing_mode_pb2.ProcessingMode.BUFFERED
_NONE: Final = processing_mode_pb2.ProcessingMode.NONE
_REQUEST_KINDS: Final = frozenset({"request_headers", "request_body", "request_trailers"})

# A reply to Envoy: a message, or one already serialized (the response-chunk path, `wire`).
Reply: TypeAlias = ext_proc.ProcessingResponse | bytes


@dataclasses.dataclass(slots=True, kw_only=True)
class Settings:
    """What the protocol layer needs besides the scheduler and the datastore."""

    max_body_bytes: int = 16 * 1024 * 1024
    # Decide before the last body byte once this many prompt characters are in (0: never). It must cover the
    # prefix scorer's horizon (blocks to match x 64 characters: GIE's 256 -> 16,384; the built-in `frontier`
    # profile's 1,024 -> 65,536), so that the scheduler sees all of the prompt it would have used.
    early_decision_prompt_chars: int = 65_536
    # A chunked body (no content-length) is decided on its first part only once this much of it is in: up to
    # here the picker sees the whole size it schedules by (1 MiB, about 260k tokens, past most models'
    # context), and past it holds no more of the body than this while it streams through.
    chunked_decision_bytes: int = 1024 * 1024
    # Request-body bytes all streams together may hold before their decision; past it a new chunk is refused
    # with 503 (the picker's memory stays bounded under many concurrent large uploads).
    max_buffered_body_bytes: int = 256 * 1024 * 1024
    # A stream that sends nothing for this long while the picker waits on it is closed (0: never). Envoy's
    # own default stream idle timeout, so a request Envoy keeps waiting for is never cut here first.
    stream_idle_timeout_s: float = 300.0
    # Streams one peer host may hold open at once (0: no cap); keep it above a gateway replica's concurrent
    # requests, queued ones included (each is one stream).
    max_streams_per_peer: int = 4096
    # New requests get 503 while the picker runs this far behind (0: never); routed ones go on.
    overload_lag_s: float = 5.0


@dataclasses.dataclass(slots=True)
class BodyBudget:
    """Request-body bytes buffered by every stream of one picker, against one limit."""

    limit: int
    used: int = 0

    def reserve(self, size: int) -> bool:
        """Count `size` more bytes; False (counting nothing) when that would pass the limit."""
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def release(self, size: int) -> None:
        self.used -= size


@dataclasses.dataclass(slots=True, kw_only=True)
class Context:
    """Shared by every stream of one picker."""

    director: director.Director
    metrics: metrics.Metrics
    settings: Settings
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time  # to compare with the gateway's `request.time`
    budget: BodyBudget = dataclasses.field(init=False)
    loop_lag: overload.LoopLag = dataclasses.field(init=False)
    transit: overload.Transit = dataclasses.field(default_factory=overload.Transit)
    body_bytes: int = 0  # request-body bytes every stream has received, a running count (`memory`)

    def __post_init__(self) -> None:
        self.budget = BodyBudget(self.settings.max_buffered_body_bytes)
        self.loop_lag = overload.LoopLag(self.settings.overload_lag_s)


def _headers(message: ext_proc.HttpHeaders) -> dict[str, str]:
    return {
        header.key: header.raw_value.decode("latin-1") if header.raw_value else header.value
        for header in message.headers.headers
    }


class Stream:
    """The state of one request's ext_proc stream; `on_message` returns the replies to send, in order."""

    def __init__(self, context: Context) -> None:
        self.ctx = context
        self.started = context.clock()
        self.request_mode = _FULL_DUPLEX
        self.response_mode = _FULL_DUPLEX
        self.body_before_headers = True  # Envoy sends body chunks before we answer the headers
        self.headers: dict[str, str] = {}
        self.headers_seen = False
        self.subset: list[str] | None = None
        self.request_id = ""
        self.request_id_generated = False
        self.chunks: list[bytes] = []
        self.body_size = 0
        self.buffered = 0  # bytes of `chunks` counted in the picker's body budget
        self.declared_length: int | None = None
        # First try with a quarter to spare for the JSON around the prompt, then at each doubling of the body.
        self.next_early_attempt = context.settings.early_decision_prompt_chars * 5 // 4
        self.early = False  # decided before the whole body was in
        self.headers_answered = False
        self.request: types.Request | None = None
        self.flight: director.Flight | None = None
        self.status = 0
        self.served: str | None = None
        self.reader: usage.SseReader | usage.JsonReader | None = None
        self.first_byte_at: float | None = None
        self.first_token_timed = False  # first_byte_at will be the first token's time (`Completion`)
        self.response_size = 0
        self.response_ended = False
        self.completed = False
        self.closed = False  # an immediate response was sent; nothing more to do
        self.ticket: flow_control.Ticket | None = None  # set while flow control holds the request
        self.parked: list[Reply] = []  # replies made when it left the queue
        self.wake: Callable[[], None] | None = None  # the servicer's, while it waits for `parked`
        # Set while the request waits for work the servicer runs in a worker thread (a long prompt's
        # tokenization), then `resume` goes on to flow control and scheduling.
        self.preparing: Callable[[], None] | None = None
        self._resume: Callable[[], list[Reply]] | None = None

    # --- dispatch --------------------------------------------------------------------------------------
    def on_message(self, message: ext_proc.ProcessingRequest) -> list[Reply]:
        kind = message.WhichOneof("request")
        try:
            if not self.headers_seen and kind != "request_headers" and kind in _REQUEST_KINDS:
                raise types.Rejection(400, f"ext_proc protocol: {kind} before the request headers")
            if kind == "request_body":
                return self._on_request_body(message.request_body)
            if kind == "response_body":
                return self._on_response_body(message.response_body)
            if kind == "request_headers":
                return self._on_request_headers(message)
            if kind == "response_headers":
                return self._on_response_headers(message)
            if kind == "request_trailers":
                return self._on_request_trailers()
            if kind == "response_trailers":
                self._end_response()
                return [replies.CONTINUE_RESPONSE_TRAILERS]
        except types.Rejection as refusal:
            return [self._refuse(refusal.status, refusal.reason)]
        except Exception:
            if self.flight is not None or kind not in _REQUEST_KINDS:
                raise
            # A bug must not look like the client's fault, nor hang the request: answer 500 and say so.
            log.exception("event=internal_error request_id=%s", self.request_id or "-")
            return [self._refuse(500, "internal error in the endpoint picker")]
        return []

    # --- request path ----------------------------------------------------------------------------------
    def _on_request_headers(self, message: ext_proc.ProcessingRequest) -> list[Reply]:
        if self.headers_seen:
            # Envoy sends them once per stream; a second set (a hostile client of the ext_proc port) would
            # schedule, and charge an endpoint, twice for one request.
            raise types.Rejection(400, "ext_proc protocol: request headers sent twice on one stream")
        self.headers_seen = True
        transit_s = overload.since_gateway(message.attributes.get(EXT_PROC_ATTRIBUTES), self.ctx.wall_clock())
        late_s = 0.0 if transit_s is None else self.ctx.transit.late(transit_s, self.ctx.clock())
        if self.ctx.loop_lag.overloaded(late_s):
            # Before any work: no scheduling, no body, no response to echo; logged in aggregate (`overload`).
            return [self._refuse(503, self.ctx.loop_lag.refuse(late_s), logged=False)]
        if message.HasField("protocol_config"):
            config = message.protocol_config
            self.request_mode = config.request_body_mode
            self.response_mode = config.response_body_mode
            self.body_before_headers = self.request_mode == _FULL_DUPLEX or (
                self.request_mode == _STREAMED and config.send_body_without_waiting_for_header_response
            )
        self.headers = _headers(message.request_headers)
        hint_namespace = message.metadata_context.filter_metadata.get(names.SUBSET_HINT_NAMESPACE)
        self.subset = subsets.hint(hint_namespace)
        self.request_id = self.headers.get(names.REQUEST_ID, "")
        if not self.request_id:
            self.request_id = uuid.uuid4().hex
            self.request_id_generated = True
        if bodies.is_models_listing(self.headers.get(":method", ""), self.headers.get(":path", "")):
            self.closed = True
            listed = self.ctx.director.models()
            log.info("event=models_listed request_id=%s models=%d", self.request_id, len(listed))
            return [replies.models(listed)]
        if message.request_headers.end_of_stream:
            return self._gated(lambda: [self._decide(b"", header_phase=True)[0]])
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit():
            self.declared_length = int(declared)
            if self.declared_length > self.ctx.settings.max_body_bytes:
                raise types.Rejection(413, self._too_large(self.declared_length))
        elif self.next_early_attempt > 0:
            self.next_early_attempt = max(self.next_early_attempt, self.ctx.settings.chunked_decision_bytes)
        if self.body_before_headers:
            return []
        # BUFFERED, or STREAMED without early body: headers go on now; the decision rides on the body reply.
        self.headers_answered = True
        if self.request_mode == _STREAMED:
            log.warning(
                "event=streamed_without_early_body request_id=%s detail=%s",
                self.request_id,
                "enable send_body_without_waiting_for_header_response to route by the body's model",
            )
            return self._gated(lambda: [self._decide(b"", header_phase=True)[0]])
        return [ext_proc.ProcessingResponse(request_headers=ext_proc.HeadersResponse())]

    def _too_large(self, size: int) -> str:
        return f"request body of {size} bytes exceeds the limit of {self.ctx.settings.max_body_bytes} bytes"

    def _on_request_body(self, body: ext_proc.HttpBody) -> list[Reply]:
        chunk = body.body
        self.ctx.body_bytes += len(chunk)
        if self.flight is not None:
            # Body after the decision (STREAMED without early body): pass it on unchanged.
            if self.request_mode == _FULL_DUPLEX:
                return [
                    replies.streamed(piece, end=body.end_of_stream, response=False)
                    for piece in replies.pieces(chunk)
                ]
            return [replies.CONTINUE_REQUEST_BODY]
        self.body_size += len(chunk)
        if self.body_size > self.ctx.settings.max_body_bytes:
            raise types.Rejection(413, self._too_large(self.body_size))
        if not self.ctx.budget.reserve(len(chunk)):
            raise types.Rejection(
                503,
                "the endpoint picker is buffering its limit of "
                f"{self.ctx.budget.limit} request-body bytes; retry",
            )
        self.buffered += len(chunk)
        self.chunks.append(chunk)
        if body.end_of_stream:
            return self._finish_request_body(end_of_stream=True)
        if self.body_size >= self.next_early_attempt > 0 and self._may_decide_early():
            self.next_early_attempt = 2 * self.body_size  # each try parses the prefix: keep the total linear
            return self._decide_early()
        return []

    def _may_decide_early(self) -> bool:
        return (
            self.request_mode == _FULL_DUPLEX
            and not self.headers_answered
            and bodies.is_inference_path(self.headers.get(":path", ""))
        )

    def _decide_early(self) -> list[Reply]:
        """Decide on a body prefix holding the whole model value and enough of the prompt, then let the
        rest of the body stream through; [] when the prefix does not tell yet. A chunked body's size is
        then only known to be at least what came so far."""
        prefix = b"".join(self.chunks)
        document = bodies.parse_prefix(prefix)
        if document is None:
            return []
        prompt = bodies.prompt_text(document)
        if len(prompt) < self.ctx.settings.early_decision_prompt_chars:
            return []
        model: str = document["model"]
        declared = self.declared_length or self.body_size
        self.request = request_view.build(
            request_id=self.request_id,
            model=model,
            target=request_view.target_model(self.headers, model),
            document=document,
            headers=self.headers,
            body_bytes=declared,
            parsed_bytes=len(prefix),
        )
        self.early = True
        return self._gated(lambda: self._early_replies(prefix))

    def _early_replies(self, prefix: bytes) -> list[Reply]:
        reply, prefix, changed = self._decide(prefix, header_phase=True, length=self.declared_length)
        out = [reply]
        source = [prefix] if changed else self.chunks
        out.extend(
            replies.streamed(piece, end=False, response=False)
            for chunk in source
            for piece in replies.pieces(chunk)
        )
        self.release_body()
        return out

    def _on_request_trailers(self) -> list[Reply]:
        if self.flight is None:
            return self._finish_request_body(end_of_stream=False, trailers=True)
        return [replies.CONTINUE_REQUEST_TRAILERS]

    def release_body(self) -> None:
        """Hand the buffered body back to the budget (its bytes are on their way to Envoy, or the stream
        is over)."""
        self.ctx.budget.release(self.buffered)
        self.buffered = 0
        self.chunks = []

    def _finish_request_body(self, *, end_of_stream: bool, trailers: bool = False) -> list[Reply]:
        original = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        try:
            self.request = self._parsed_request(original)  # a bad body is refused before any queueing
        except types.Rejection:
            self.release_body()
            raise

        def decide() -> list[Reply]:
            try:
                out = self._body_replies(original, end_of_stream=end_of_stream)
            finally:
                self.release_body()
            return [*out, replies.CONTINUE_REQUEST_TRAILERS] if trailers else out

        return self._gated(decide)

    def _body_replies(self, original: bytes, *, end_of_stream: bool) -> list[Reply]:
        decision_reply, body, changed = self._decide(original, header_phase=not self.headers_answered)
        if self.request_mode == _FULL_DUPLEX:
            source = [body] if changed else self.chunks
            pieces = [piece for chunk in source for piece in replies.pieces(chunk)] or [b""]
            out = [decision_reply]
            last = len(pieces) - 1
            out.extend(
                replies.streamed(piece, end=end_of_stream and index == last, response=False)
                for index, piece in enumerate(pieces)
            )
            return out
        if self.request_mode == _BUFFERED:
            return [decision_reply]
        # STREAMED with early body: one reply per received chunk; a changed body replaces the first.
        out = [decision_reply]
        for index in range(len(self.chunks)):
            if not changed:
                out.append(replies.CONTINUE_REQUEST_BODY)
                continue
            mutation = (
                ext_proc.BodyMutation(body=body) if index == 0 else ext_proc.BodyMutation(clear_body=True)
            )
            out.append(
                ext_proc.ProcessingResponse(
                    request_body=ext_proc.BodyResponse(
                        response=ext_proc.CommonResponse(body_mutation=mutation)
                    )
                )
            )
        return out

    def _parsed_request(self, original: bytes) -> types.Request:
        """The scheduler's view of the request whose whole body is `original`."""
        path = self.headers.get(":path", "")
        if not original or not bodies.is_inference_path(path):
            return self._request(model="", target_model="", document=None)
        try:
            document = bodies.parse(original)
        except bodies.BodyError as error:
            raise types.Rejection(error.status, error.reason) from None
        model: str = document["model"]
        return self._request(
            model=model, target_model=request_view.target_model(self.headers, model), document=document
        )

    def _request(self, *, model: str, target_model: str, document: dict[str, Any] | None) -> types.Request:
        return request_view.build(
            request_id=self.request_id,
            model=model,
            target=target_model,
            document=document,
            headers=self.headers,
        )

    # --- flow control ----------------------------------------------------------------------------------
    def _gated(self, decide: Callable[[], list[Reply]]) -> list[Reply]:
        """`decide()` now, or [] with the request queued: its replies are then `parked` when flow control
        dispatches (or refuses) it, and `wake` tells the servicer. Or [] with `preparing` set, when the
        scheduler needs work done off the event loop first: the servicer runs it, then `resume`."""
        if self.request is None:
            self.request = self._request(model="", target_model="", document=None)
        work = self.ctx.director.preparation(self.request)
        if work is not None:
            self.preparing = work
            self._resume = lambda: self._admitted(decide)
            return []
        return self._admitted(decide)

    def resume(self) -> list[Reply]:
        """The replies once `preparing` has run: flow control and scheduling go on as `_gated` would have."""
        resume, self._resume, self.preparing = self._resume, None, None
        if resume is None:
            return []
        try:
            return resume()
        except types.Rejection as refusal:
            self.release_body()
            return [self._refuse(refusal.status, refusal.reason)]
        except Exception:
            self.release_body()
            log.exception("event=internal_error request_id=%s", self.request_id or "-")
            return [self._refuse(500, "internal error in the endpoint picker")]

    def _admitted(self, decide: Callable[[], list[Reply]]) -> list[Reply]:
        assert self.request is not None
        ticket = self.ctx.director.admit(
            self.request,
            now=self.ctx.clock(),
            size=self.buffered,
            on_dispatch=lambda _now: self._leave_queue(decide),
            on_reject=self._rejected_while_queued,
        )
        if ticket is None:
            return decide()
        self.ticket = ticket
        return []

    def _leave_queue(self, decide: Callable[[], list[Reply]]) -> None:
        try:
            out = decide()
        except types.Rejection as refusal:
            out = [self._refuse(refusal.status, refusal.reason)]
        except Exception:
            log.exception("event=internal_error request_id=%s", self.request_id or "-")
            out = [self._refuse(500, "internal error in the endpoint picker")]
        self._park(out)

    def _rejected_while_queued(self, refusal: types.Rejection) -> None:
        self.release_body()
        self._park([self._refuse(refusal.status, refusal.reason)])

    def _park(self, out: list[Reply]) -> None:
        self.ticket = None
        self.parked.extend(out)
        if self.wake is not None:
            self.wake()

    def take_parked(self) -> list[Reply]:
        """The replies made when the request left flow control's queue (once)."""
        out, self.parked = self.parked, []
        return out

    def _decide(
        self, body: bytes, *, header_phase: bool, length: int | None = None
    ) -> tuple[ext_proc.ProcessingResponse, bytes, bool]:
        """Schedule the request and build the reply that carries the decision; `body` is the whole body
        unless `self.early`, when it is the start of a body of `length` bytes (None: chunked, not known).
        Returns the reply, the body to send on (its model rewritten when the decision's target model
        differs from the client's) and whether it changed."""
        if self.flight is not None:
            raise types.Rejection(400, "ext_proc protocol: the request was already routed on this stream")
        request = self.request
        assert request is not None, "_gated builds the request before deciding"
        if not self.early:
            length = len(body)
        self.flight = self.ctx.director.decide(
            request,
            now=self.ctx.clock(),
            subset=self.subset,
            detail=f"body_bytes={'-' if length is None else length} early={self.early}",
        )
        original_size = len(body)
        body_changed = bool(request.model) and request.target_model != request.model
        if body_changed:
            try:
                body = bodies.rewrite_model(body, request.target_model)
            except bodies.BodyError as error:
                self.complete(aborted=True)  # refund the charge: the request never leaves
                raise types.Rejection(error.status, error.reason) from None
        if length is not None:
            length += len(body) - original_size
        decision = self.flight.decision
        destination = ",".join(decision.endpoints)
        set_headers = [replies.set_header(names.DESTINATION_ENDPOINT, destination)]
        if decision.prefill:
            set_headers.append(replies.set_header(names.PREFILLER_HOST_PORT, decision.prefill))
        if body_changed and length is not None:  # a chunked body stays chunked: no length to correct
            set_headers.append(replies.set_header("content-length", str(length)))
        if self.request_id_generated:
            set_headers.append(replies.set_header(names.REQUEST_ID, self.request_id))
        # A client's own copy of a header the picker owns never passes: a forged prefiller address would
        # have the decode side send the prompt wherever the client chose.
        forged = not decision.prefill and names.PREFILLER_HOST_PORT in self.headers
        removed = [names.PREFILLER_HOST_PORT] if forged else []
        common = ext_proc.CommonResponse(
            header_mutation=ext_proc.HeaderMutation(set_headers=set_headers, remove_headers=removed),
            clear_route_cache=True,
        )
        if not header_phase and body_changed:
            common.body_mutation.body = body  # BUFFERED: the body reply carries the new body
        metadata = struct_pb2.Struct()
        metadata.fields[names.LB_NAMESPACE].struct_value.fields[
            names.DESTINATION_ENDPOINT
        ].string_value = destination
        if header_phase:
            self.headers_answered = True
            reply = ext_proc.ProcessingResponse(
                request_headers=ext_proc.HeadersResponse(response=common), dynamic_metadata=metadata
            )
        else:
            reply = ext_proc.ProcessingResponse(
                request_body=ext_proc.BodyResponse(response=common), dynamic_metadata=metadata
            )
        return reply, body, body_changed

    def _refuse(self, status: int, reason: str, *, logged: bool = True) -> ext_proc.ProcessingResponse:
        """The refusal reply, counted in the metrics; logged unless the caller logs in aggregate."""
        self.closed = True
        self.ctx.metrics.child(self.ctx.metrics.errors, str(status)).inc()
        request = self.request
        labels = self.ctx.metrics.model_label
        models = (labels(request.model), labels(request.target_model)) if request is not None else ("", "")
        self.ctx.metrics.child(self.ctx.metrics.requests, *models, str(status)).inc()
        self.ctx.metrics.child(self.ctx.metrics.gie.request_errors, *models, str(status)).inc()
        if logged:
            log.info(
                "event=refused request_id=%s status=%d reason=%r", self.request_id or "-", status, reason
            )
        return replies.immediate(status, reason)

    # --- response path ---------------------------------------------------------------------------------
    def _on_response_headers(self, message: ext_proc.ProcessingRequest) -> list[Reply]:
        headers = _headers(message.response_headers)
        status = headers.get(":status", "0")
        self.status = int(status) if status.isdigit() else 0
        self.served = self._served(message)
        streamed = headers.get("content-type", "").startswith("text/event-stream")
        if self.response_mode != _NONE:
            self.reader = usage.SseReader() if streamed else usage.JsonReader()
        if not streamed or self.response_mode == _NONE:
            self.first_byte_at = self.ctx.clock()  # else at the first event: the first token's time
        else:
            self.first_token_timed = True
        if message.response_headers.end_of_stream:
            self._end_response()
        tier = self.flight.decision.tier if self.flight is not None else None
        if tier is None:
            return [replies.CONTINUE_RESPONSE_HEADERS]
        # The client asked for a virtual model: say which tier served it and why.
        return [
            replies.response_headers(
                [
                    replies.set_header(names.TIER_HEADER, tier.model),
                    replies.set_header(names.TIER_REASON_HEADER, tier.reason),
                ]
            )
        ]

    def _served(self, message: ext_proc.ProcessingRequest) -> str | None:
        lb = message.metadata_context.filter_metadata.get(names.LB_NAMESPACE)
        if lb is not None and names.DESTINATION_ENDPOINT_SERVED in lb.fields:
            return str(lb.fields[names.DESTINATION_ENDPOINT_SERVED].string_value)
        attributes = message.attributes.get(EXT_PROC_ATTRIBUTES)
        if attributes is not None and UPSTREAM_ADDRESS in attributes.fields:
            return str(attributes.fields[UPSTREAM_ADDRESS].string_value)
        return None

    def _on_response_body(self, body: ext_proc.HttpBody) -> list[Reply]:
        return self.on_response_chunk(body.body, end=body.end_of_stream)

    def on_response_chunk(self, chunk: bytes, *, end: bool) -> list[Reply]:
        """Account a response body chunk (first byte, usage, end) and pass it on: in full duplex as
        streamed chunks already in wire format, the hot path of a streamed response."""
        self.response_size += len(chunk)
        if self.first_byte_at is None and chunk:
            self.first_byte_at = self.ctx.clock()
        if self.reader is not None:
            self.reader.feed(chunk)
        if end:
            self._end_response()
        if self.response_mode == _FULL_DUPLEX:
            return [wire.streamed_response_chunk(piece, end=end) for piece in replies.pieces(chunk)]
        return [replies.CONTINUE_RESPONSE_BODY]

    def finished(self) -> bool:
        """Whether the response is known to have ended, judged when the stream closes.

        Envoy 1.40 ends the stream the same way (a half-close, sometimes a reset) whether the client went
        away or a response ended without trailers, so only a seen end (last body chunk, trailers) proves
        completion. Without the response body (mode NONE) there is no such sign: a stream that got as far
        as the response headers then counts as finished.
        """
        return self.response_ended or (self.response_mode == _NONE and self.status != 0)

    def _end_response(self) -> None:
        self.response_ended = True
        self.complete(aborted=False)

    # --- completion ------------------------------------------------------------------------------------
    def complete(self, *, aborted: bool) -> None:
        """Record how the request ended (once): the director refunds the load and tells the scheduler."""
        if self.completed or self.flight is None:
            return
        self.completed = True
        now = self.ctx.clock()
        reported = None
        if self.reader is not None:
            self.reader.finish()
            reported = self.reader.usage
        completion = types.Completion(
            endpoint=self.served or self.flight.decision.primary,
            status=self.status,
            prompt_tokens=reported.prompt_tokens if reported else None,
            completion_tokens=reported.completion_tokens if reported else None,
            cached_tokens=reported.cached_tokens if reported else None,
            ttft_s=(self.first_byte_at - self.started) if self.first_byte_at is not None else None,
            first_token_timed=self.first_token_timed,
            duration_s=now - self.started,
            aborted=aborted,
            request_bytes=self.declared_length or self.body_size,
            response_bytes=None if self.response_mode == _NONE else self.response_size,
        )
        self.ctx.director.complete(self.flight, completion, now=now)
        log.debug(
            "event=completed request_id=%s endpoint=%s status=%d aborted=%s prompt_tokens=%s "
            "completion_tokens=%s duration_s=%.4f",
            self.request_id,
            completion.endpoint,
            completion.status,
            aborted,
            completion.prompt_tokens,
            completion.completion_tokens,
            completion.duration_s,
        )


def peer_host(peer: str) -> str:
    """The host of a gRPC peer string (`ipv4:10.0.0.7:51234` -> `ipv4:10.0.0.7`): a client's every
    connection and port count as one peer."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        return f"{kind}:{rest.rpartition(':')[0]}"
    return peer


# A peer refused again and again is logged once at first, then at most once per this many seconds.
REFUSAL_LOG_INTERVAL_S: Final = 10.0


@dataclasses.dataclass(slots=True)
class PeerStreams:
    """The streams each peer host holds open, against a cap (0: none), and its refusals not yet logged."""

    cap: int
    open: dict[str, int] = dataclasses.field(default_factory=dict)
    _refused: dict[str, tuple[int, float]] = dataclasses.field(default_factory=dict)

    def enter(self, peer: str) -> bool:
        """Count one more stream of `peer`; False (counting nothing) when it holds its cap already."""
        held = self.open.get(peer, 0)
        if 0 < self.cap <= held:
            return False
        self.open[peer] = held + 1
        return True

    def leave(self, peer: str) -> None:
        held = self.open[peer] - 1
        if held:
            self.open[peer] = held
        else:  # forget the peer: peers come and go, the table must not grow with them
            del self.open[peer]
            self._refused.pop(peer, None)

    def refused(self, peer: str, now: float) -> int:
        """Count a refusal of `peer`; the refusals to log now (0: stay quiet, one was logged recently)."""
        pending, logged_at = self._refused.get(peer, (0, -REFUSAL_LOG_INTERVAL_S))
        pending += 1
        if now - logged_at < REFUSAL_LOG_INTERVAL_S:
            self._refused[peer] = (pending, logged_at)
            return 0
        self._refused[peer] = (0, now)
        return pending


class IdleWatch:
    """Cancels the task serving a stream once no message came for `limit` seconds (0: never).

    One timer per stream, moved only when it fires; a message just notes the time. Re-arming a timer on
    every message cost a few microseconds each and left a cancelled handle in the loop's heap per chunk.
    """

    def __init__(self, limit: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.limit = limit
        self.task = asyncio.current_task()
        self.last = self.loop.time()
        self.paused = False  # while the picker itself holds the request: that time is not the client's
        self.expired = False
        self.handle = self.loop.call_at(self.last + limit, self._check) if limit > 0 else None

    def touch(self) -> None:
        """A message came."""
        self.last = self.loop.time()

    async def excluding(self, waiting: Awaitable[None]) -> None:
        """Await `waiting` (the picker's own work or queue) with the silence clock stopped."""
        self.paused = True
        try:
            await waiting
        finally:
            self.paused = False
            self.touch()

    def _check(self) -> None:
        due = (self.loop.time() if self.paused else self.last) + self.limit
        if self.loop.time() < due:
            self.handle = self.loop.call_at(due, self._check)
            return
        self.expired = True
        if self.task is not None:
            self.task.cancel()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()


def _serialize(reply: Reply) -> bytes:
    return reply if isinstance(reply, bytes) else reply.SerializeToString()


SERVICE: Final = ext_proc.DESCRIPTOR.services_by_name["ExternalProcessor"].full_name


class Processor:
    """The gRPC servicer: moves messages between Envoy and one `Stream` per request, closing streams idle
    past the idle timeout and refusing a peer's streams past its cap.

    Requests arrive unparsed: a plain response chunk is read from the wire (`wire`), anything else parsed.
    """

    def __init__(self, context: Context) -> None:
        self.ctx = context
        self.peers = PeerStreams(context.settings.max_streams_per_peer)

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        """`ExternalProcessor/Process`, taking raw requests and replies that may be serialized already."""
        method = grpc.stream_stream_rpc_method_handler(self.Process, response_serializer=_serialize)
        return grpc.method_handlers_generic_handler(SERVICE, {"Process": method})

    async def Process(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> None:
        peer = peer_host(context.peer())
        if not self.peers.enter(peer):
            refusals = self.peers.refused(peer, self.ctx.clock())
            if refusals:
                log.warning(
                    "event=stream_refused peer=%s reason=peer_stream_cap max_streams_per_peer=%d refused=%d",
                    peer,
                    self.peers.cap,
                    refusals,
                )
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"peer {peer} holds {self.peers.cap} ext_proc streams, the most one peer may",
            )
        stream = Stream(self.ctx)
        try:
            if await self._serve(stream, request_iterator, context):
                log.warning(
                    "event=stream_idle_timeout peer=%s request_id=%s routed=%s idle_timeout_s=%g",
                    peer,
                    stream.request_id or "-",
                    stream.flight is not None,
                    self.ctx.settings.stream_idle_timeout_s,
                )
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no message for {self.ctx.settings.stream_idle_timeout_s:g}s",
                )
        finally:
            self.peers.leave(peer)
            if stream.ticket is not None:  # the client went away while queued
                self.ctx.director.cancel(stream.ticket, self.ctx.clock())
            stream.release_body()  # a client gone mid-body leaves nothing counted
            stream.complete(aborted=not stream.finished())

    async def _serve(
        self, stream: Stream, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> bool:
        """Answer `stream`'s messages until the client ends; True when instead it stayed silent for the
        idle timeout (time its request waits in flow control's queue is the picker's, and does not count)."""
        idle = IdleWatch(self.ctx.settings.stream_idle_timeout_s)
        try:
            async for raw in request_iterator:
                idle.touch()
                chunk = wire.response_chunk(raw) if stream.reader is not None else None
                if chunk is not None:
                    out = stream.on_response_chunk(chunk.body, end=chunk.end)
                else:
                    out = stream.on_message(ext_proc.ProcessingRequest.FromString(raw))
                for reply in out:
                    await context.write(reply)
                if stream.preparing is not None:
                    await idle.excluding(self._prepare(stream))
                    for reply in stream.resume():
                        await context.write(reply)
                if stream.ticket is not None:
                    await idle.excluding(self._queued(stream))
                for reply in stream.take_parked():
                    await context.write(reply)
                if stream.closed:
                    break
        except asyncio.CancelledError:
            if not idle.expired:
                raise
            if idle.task is not None:
                idle.task.uncancel()
            return True
        finally:
            idle.close()
        return False

    @staticmethod
    async def _prepare(stream: Stream) -> None:
        """Run `stream`'s preparation in a worker thread. A failure there is logged and left to scheduling,
        which computes what was not prepared inline."""
        work = stream.preparing
        if work is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(None, work)
        except Exception:
            log.exception("event=preparation_failed request_id=%s", stream.request_id or "-")

    @staticmethod
    async def _queued(stream: Stream) -> None:
        """Wait until flow control dispatches or refuses `stream`'s request."""
        woken = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not woken.done():
                woken.set_result(None)

        stream.wake = wake
        try:
            await woken
        finally:
            stream.wake = None
