"""Token usage a model server reports, read from the response as it passes through the picker.

Streamed responses (`text/event-stream`) carry usage in an SSE `data:` line, normally the last one before
`data: [DONE]` (vLLM with `stream_options.include_usage`). Envoy hands the body over in arbitrary chunks, so a
line can be split across two chunks: the reader keeps the unfinished tail and only looks at complete lines,
and only at lines whose `"usage"` is not null, so the per-chunk cost is a search, not a parse.
Non-streamed responses carry `usage` in the JSON body, parsed once when it ends.

Chat/completions name the fields `prompt_tokens`/`completion_tokens`; the Responses API `input_tokens`/
`output_tokens`; cached prompt tokens sit under `prompt_tokens_details`/`input_tokens_details`.
"""

import dataclasses
from typing import Any, Final

import orjson

_USAGE: Final = b'"usage"'
# OpenAI-style streams with `include_usage` put `"usage": null` in every chunk but the last.
_NULL_USAGE: Final = (b'"usage":null', b'"usage": null')
_MAX_JSON_BYTES: Final = 16 * 1024 * 1024  # larger JSON responses are not parsed for usage


@dataclasses.dataclass(slots=True)
class Usage:
    """Token counts, None where the model server did not report them."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None


def from_object(usage: Any) -> Usage | None:
    """`Usage` from the value of a `"usage"` field; None if it is not an object."""
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    return Usage(
        prompt_tokens=prompt if isinstance(prompt, int) else None,
        completion_tokens=completion if isinstance(completion, int) else None,
        cached_tokens=cached if isinstance(cached, int) else None,
    )


class SseReader:
    """Finds the usage in an SSE stream fed chunk by chunk; also counts `data:` events."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.events = 0
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk if self._tail else chunk
        cut = data.rfind(b"\n") + 1
        self._tail = data[cut:]
        if cut == 0:
            return
        complete = data[:cut] if cut < len(data) else data
        self.events += complete.count(b"data:")
        if _USAGE in complete and _names_usage(complete):
            self._read_usage(complete)

    def finish(self) -> None:
        """The stream ended: a last line without its newline still counts."""
        if self._tail:
            self.feed(b"\n")

    def _read_usage(self, lines: bytes) -> None:
        for line in lines.split(b"\n"):
            if _USAGE not in line or not line.startswith(b"data:"):
                continue
            try:
                event = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict):
                found = from_object(event.get("usage"))
                if found is None and isinstance(event.get("response"), dict):
                    found = from_object(event["response"].get("usage"))  # Responses API completed event
                if found is not None:
                    self.usage = found


def _names_usage(lines: bytes) -> bool:
    """Whether `lines` hold a `"usage"` that is not null: only those are worth parsing."""
    return lines.count(_USAGE) > sum(lines.count(null) for null in _NULL_USAGE)


class JsonReader:
    """Collects a JSON response body and reads its `usage` when it ends."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self._chunks: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= _MAX_JSON_BYTES:
            self._chunks.append(chunk)

    def finish(self) -> None:
        if self._size > _MAX_JSON_BYTES or not self._chunks:
            return
        body = b"".join(self._chunks)
        self._chunks = []
        if _USAGE not in body:
            return
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        if isinstance(document, dict):
            self.usage = from_object(document.get("usage"))
