"""The response-chunk messages of ext_proc, read and written in protobuf wire format.

In GIE's Envoy configuration (bodies `FULL_DUPLEX_STREAMED`) Envoy sends every response chunk to the picker
and waits for it to come back: a streamed LLM response is one message per token each way. The picker needs
only each chunk's bytes (for the usage) and its end flag, so it reads them straight from the wire and
writes the echo as bytes, skipping the two protobuf object trees a chunk would otherwise cost. Any other
message, or a chunk message that carries anything more, returns None and takes the full parse.

Field numbers come from the generated descriptors, never typed in; `tests/picker/test_wire.py` checks
the bytes against protobuf's own encoding.
"""

from typing import Final, NamedTuple

from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc

_LEN: Final = 2  # wire type of bytes and embedded messages
_VARINT: Final = 0


def _number(message: type, field: str) -> int:
    return int(message.DESCRIPTOR.fields_by_name[field].number)  # type: ignore[attr-defined]


def _tag(number: int, wire_type: int) -> int:
    return (number << 3) | wire_type


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


_RESPONSE_BODY: Final = _tag(_number(ext_proc.ProcessingRequest, "response_body"), _LEN)
_BODY: Final = _tag(_number(ext_proc.HttpBody, "body"), _LEN)
_END: Final = _tag(_number(ext_proc.HttpBody, "end_of_stream"), _VARINT)

# The reply's envelope, outermost first: ProcessingResponse.response_body -> BodyResponse.response ->
# CommonResponse.body_mutation -> BodyMutation.streamed_response -> StreamedBodyResponse.
_ENVELOPE: Final = (
    _varint(_tag(_number(ext_proc.ProcessingResponse, "response_body"), _LEN)),
    _varint(_tag(_number(ext_proc.BodyResponse, "response"), _LEN)),
    _varint(_tag(_number(ext_proc.CommonResponse, "body_mutation"), _LEN)),
    _varint(_tag(_number(ext_proc.BodyMutation, "streamed_response"), _LEN)),
)
_STREAMED_BODY: Final = _varint(_tag(_number(ext_proc.StreamedBodyResponse, "body"), _LEN))
_STREAMED_END: Final = (
    _varint(_tag(_number(ext_proc.StreamedBodyResponse, "end_of_stream"), _VARINT)) + b"\x01"  # true
)


class Chunk(NamedTuple):
    """A response body chunk on its way back to Envoy as a streamed response."""

    body: bytes
    end: bool


def response_chunk(raw: bytes) -> Chunk | None:
    """(body, end_of_stream) of a ProcessingRequest that holds a response body chunk and nothing else;
    None for any other message (the caller parses it in full)."""
    if len(raw) < 2 or raw[0] != _RESPONSE_BODY:
        return None
    try:
        return _chunk(raw)
    except IndexError:  # truncated: let the full parse name the problem
        return None


def _chunk(raw: bytes) -> Chunk | None:
    size, start = _read_varint(raw, 1)
    stop = start + size
    if stop != len(raw):  # more fields follow (metadata, attributes): not the plain chunk
        return None
    body = b""
    end = False
    pos = start
    while pos < stop:
        tag = raw[pos]
        if tag == _BODY:
            length, pos = _read_varint(raw, pos + 1)
            body = raw[pos : pos + length]
            pos += length
        elif tag == _END:
            value, pos = _read_varint(raw, pos + 1)
            end = value != 0
        else:  # a field the fast path does not know (a gRPC body's flags): parse it in full
            return None
    return Chunk(body, end)


def streamed_response_chunk(body: bytes, *, end: bool) -> bytes:
    """The serialized ProcessingResponse that sends `body` on down the response path as a streamed chunk."""
    head = _STREAMED_BODY + _varint(len(body)) if body else b""  # proto3 leaves an empty body out
    tail = _STREAMED_END if end else b""
    size = len(head) + len(body) + len(tail)
    envelope = b""
    for tag in reversed(_ENVELOPE):  # innermost first: each length counts everything inside it
        length = _varint(size)
        envelope = tag + length + envelope
        size += len(tag) + len(length)
    return b"".join((envelope, head, body, tail))
