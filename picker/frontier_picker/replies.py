"""Replies the endpoint picker sends Envoy over ext_proc: header mutations, streamed body chunks, refusals.

Pure builders of `ProcessingResponse` messages; the protocol state machine (`processor`) decides which to
send. In `FULL_DUPLEX_STREAMED` every body byte goes back as `streamed_response` chunks of at most 62,000
bytes (the GIE protocol's limit per message).
"""

from collections.abc import Sequence
from typing import Final

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.type.v3 import http_status_pb2

MAX_CHUNK: Final = 62_000  # largest streamed_response body the GIE protocol sends in one message
_OVERWRITE: Final = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def set_header(key: str, value: str) -> base_pb2.HeaderValueOption:
    """Set (overwrite) header `key` to `value`."""
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode()), append_action=_OVERWRITE
    )


def immediate(status: int, reason: str) -> ext_proc.ProcessingResponse:
    """An ImmediateResponse with a JSON error body naming `reason`."""
    body = orjson.dumps({"error": {"code": status, "message": reason, "type": "frontier_picker"}})
    return ext_proc.ProcessingResponse(
        immediate_response=ext_proc.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=ext_proc.HeaderMutation(set_headers=[set_header("content-type", "application/json")]),
            body=body,
            details=f"frontier_picker_{status}",
        )
    )


def models(model_names: Sequence[str]) -> ext_proc.ProcessingResponse:
    """An ImmediateResponse of 200 with an OpenAI `/v1/models` list of `model_names`."""
    body = orjson.dumps(
        {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "frontier"} for name in model_names
            ],
        }
    )
    return ext_proc.ProcessingResponse(
        immediate_response=ext_proc.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=200),
            headers=ext_proc.HeaderMutation(set_headers=[set_header("content-type", "application/json")]),
            body=body,
            details="frontier_picker_models",
        )
    )


def pieces(chunk: bytes) -> list[bytes]:
    """`chunk` cut into pieces of at most MAX_CHUNK bytes."""
    if len(chunk) <= MAX_CHUNK:
        return [chunk]
    return [chunk[offset : offset + MAX_CHUNK] for offset in range(0, len(chunk), MAX_CHUNK)]


def streamed(chunk: bytes, *, end: bool, response: bool) -> ext_proc.ProcessingResponse:
    """A body reply carrying `chunk` as a streamed_response (request or response path)."""
    body = ext_proc.BodyResponse(
        response=ext_proc.CommonResponse(
            body_mutation=ext_proc.BodyMutation(
                streamed_response=ext_proc.StreamedBodyResponse(body=chunk, end_of_stream=end)
            )
        )
    )
    if response:
        return ext_proc.ProcessingResponse(response_body=body)
    return ext_proc.ProcessingResponse(request_body=body)


CONTINUE_REQUEST_BODY: Final = ext_proc.ProcessingResponse(request_body=ext_proc.BodyResponse())
CONTINUE_RESPONSE_HEADERS: Final = ext_proc.ProcessingResponse(response_headers=ext_proc.HeadersResponse())
CONTINUE_RESPONSE_BODY: Final = ext_proc.ProcessingResponse(response_body=ext_proc.BodyResponse())
CONTINUE_REQUEST_TRAILERS: Final = ext_proc.ProcessingResponse(request_trailers=ext_proc.TrailersResponse())
CONTINUE_RESPONSE_TRAILERS: Final = ext_proc.ProcessingResponse(response_trailers=ext_proc.TrailersResponse())


def response_headers(set_headers: list[base_pb2.HeaderValueOption]) -> ext_proc.ProcessingResponse:
    """Let the response headers pass with `set_headers` added."""
    return ext_proc.ProcessingResponse(
        response_headers=ext_proc.HeadersResponse(
            response=ext_proc.CommonResponse(header_mutation=ext_proc.HeaderMutation(set_headers=set_headers))
        )
    )
