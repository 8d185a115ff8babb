"""Usage read from responses: SSE lines split anywhere across chunks, JSON bodies, both field spellings."""

import json

from frontier_picker import usage


def stream(usage_fields: dict[str, object]) -> bytes:
    events = [json.dumps({"choices": [{"delta": {"content": f"t{i}"}}], "usage": None}) for i in range(20)]
    events.append(json.dumps({"choices": [], "usage": usage_fields}))
    return b"".join(b"data: " + event.encode() + b"\n\n" for event in events) + b"data: [DONE]\n\n"


def test_sse_usage_is_found_wherever_the_chunks_split_the_lines() -> None:
    body = stream(
        {"prompt_tokens": 12, "completion_tokens": 20, "prompt_tokens_details": {"cached_tokens": 8}}
    )
    for size in (1, 7, 64, 1000, len(body)):
        reader = usage.SseReader()
        for offset in range(0, len(body), size):
            reader.feed(body[offset : offset + size])
        reader.finish()
        assert reader.usage == usage.Usage(prompt_tokens=12, completion_tokens=20, cached_tokens=8), size
        assert reader.events == 22


def test_sse_last_line_without_newline_counts_at_finish() -> None:
    reader = usage.SseReader()
    reader.feed(b'data: {"usage": {"prompt_tokens": 1, "completion_tokens": 2}}')
    assert reader.usage is None
    reader.finish()
    assert reader.usage == usage.Usage(prompt_tokens=1, completion_tokens=2)


def test_responses_api_usage_in_the_completed_event() -> None:
    reader = usage.SseReader()
    event = {"type": "response.completed", "response": {"usage": {"input_tokens": 5, "output_tokens": 9}}}
    reader.feed(b"event: response.completed\ndata: " + json.dumps(event).encode() + b"\n\n")
    assert reader.usage == usage.Usage(prompt_tokens=5, completion_tokens=9)


def test_json_body_usage() -> None:
    reader = usage.JsonReader()
    body = json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}).encode()
    reader.feed(body[:10])
    reader.feed(body[10:])
    reader.finish()
    assert reader.usage == usage.Usage(prompt_tokens=3, completion_tokens=4)


def test_json_body_without_usage_or_not_json_reports_none() -> None:
    for body in (b'{"choices": []}', b"<html>oops</html>"):
        reader = usage.JsonReader()
        reader.feed(body)
        reader.finish()
        assert reader.usage is None
