"""The response-chunk fast path reads and writes exactly what protobuf would."""

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc

from frontier_picker import replies, wire

BODIES = [b"", b"data: {}\n\n", b"x" * 127, b"y" * 128, b"z" * 70_000]


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("end", [False, True])
def test_a_plain_response_chunk_is_read_from_the_wire(body: bytes, end: bool) -> None:
    raw = ext_proc.ProcessingRequest(
        response_body=ext_proc.HttpBody(body=body, end_of_stream=end)
    ).SerializeToString()
    assert wire.response_chunk(raw) == (body, end)


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("end", [False, True])
def test_the_streamed_reply_is_byte_for_byte_protobufs_own(body: bytes, end: bool) -> None:
    expected = replies.streamed(body, end=end, response=True).SerializeToString()
    assert wire.streamed_response_chunk(body, end=end) == expected


def test_anything_but_a_plain_response_chunk_takes_the_full_parse() -> None:
    others = [
        ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=b"{}", end_of_stream=True)),
        ext_proc.ProcessingRequest(
            response_headers=ext_proc.HttpHeaders(
                headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=":status", raw_value=b"200")])
            )
        ),
        # a chunk that also carries metadata, or a gRPC body's flag the fast path does not read
        ext_proc.ProcessingRequest(
            response_body=ext_proc.HttpBody(body=b"a"),
            metadata_context=base_pb2.Metadata(filter_metadata={"x": {}}),
        ),
        ext_proc.ProcessingRequest(
            response_body=ext_proc.HttpBody(body=b"a", end_of_stream_without_message=True)
        ),
    ]
    for message in others:
        assert wire.response_chunk(message.SerializeToString()) is None
    whole = ext_proc.ProcessingRequest(response_body=ext_proc.HttpBody(body=b"abcdef")).SerializeToString()
    assert wire.response_chunk(whole[:-2]) is None  # truncated
