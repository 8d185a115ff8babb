"""Inference request bodies: the model a client asked for, the prompt text, and the model-name rewrite.

An OpenAI-style body is a JSON object with a top-level `"model"` string. The picker parses it once (orjson)
to read the model and the prompt, and never re-encodes it: when the model must be rewritten (header
`x-gateway-model-name-rewrite`), only the bytes of the top-level `"model"` value are replaced, so everything
else reaches the model server byte-for-byte as the client sent it.

Finding that value needs the JSON's structure, not a text search: `"model"` may also appear as a key deeper
down (tool schemas) or inside a string. `tokens` walks the body's strings and brackets only, skipping each
string with one `bytes.find`, so a 4 MB prompt is one step, and the walk stops at the top-level key.
"""

import re
from collections.abc import Iterator
from typing import Any, Final

import orjson

from frontier_api import estimates, names

# A quote or a structural character; strings are then skipped with `bytes.find` (memchr speed), so a 4 MB
# prompt costs one search, and a string the body cuts off is recognised without scanning it twice.
_STRUCTURE: Final = re.compile(rb'[{}\[\]:"]')
_QUOTE: Final = 0x22
_BACKSLASH: Final = 0x5C
_CLOSERS: Final = {0x7B: b"}", 0x5B: b"]"}
CUT_OFF: Final = -1  # the end offset of a string token that the data cuts off


class BodyError(ValueError):
    """The body cannot be served; `status` is the HTTP status the client gets (400 or 413)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def is_models_listing(method: str, path: str) -> bool:
    """Whether the request is `GET /v1/models` (query string allowed)."""
    return method == "GET" and path.split("?", 1)[0] == names.MODELS_PATH


def is_inference_path(path: str) -> bool:
    """Whether `path` (query string allowed) is one of the APIs whose body must name a model."""
    return path.split("?", 1)[0] in names.INFERENCE_PATHS


def parse(body: bytes) -> dict[str, Any]:
    """The body as a JSON object that names a model; `BodyError(400)` naming what is wrong otherwise."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BodyError(400, f"request body is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise BodyError(400, f"request body must be a JSON object, got {type(document).__name__}")
    model = document.get("model")
    if not isinstance(model, str) or not model:
        raise BodyError(400, 'request body has no "model" string naming the model to serve')
    return document


def prompt_text(document: dict[str, Any]) -> str:
    """The text a prefix cache would see, in order: completions `prompt`, chat `messages`, responses and
    embeddings `input`. Structured parts contribute their text; anything else is ignored."""
    parts: list[str] = []
    for field in ("prompt", "messages", "input"):
        if field in document:
            _collect_text(document[field], parts)
    return "".join(parts)


def _collect_text(value: Any, parts: list[str]) -> None:
    if isinstance(value, str):
        parts.append(value)
    elif isinstance(value, list):
        for item in value:
            _collect_text(item, parts)
    elif isinstance(value, dict):
        role = value.get("role")
        if isinstance(role, str):
            parts.append(role)
            parts.append(":")
        for key in ("content", "text"):
            if key in value:
                _collect_text(value[key], parts)


def _string_end(data: bytes, start: int) -> int:
    """Offset just past the string whose opening quote is at `start - 1`, or CUT_OFF."""
    position = start
    while True:
        quote = data.find(b'"', position)
        if quote < 0:
            return CUT_OFF
        before = quote - 1
        while before >= start and data[before] == _BACKSLASH:
            before -= 1
        if (quote - 1 - before) % 2 == 0:  # an even run of backslashes: the quote is not escaped
            return quote + 1
        position = quote + 1


def tokens(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(first byte, start, end) of each string and structural character of JSON `data`, in order; a string
    the data cuts off comes last, with end CUT_OFF. Numbers, literals, commas and blanks are skipped."""
    position = 0
    search = _STRUCTURE.search
    while True:
        match = search(data, position)
        if match is None:
            return
        start = match.start()
        first = data[start]
        if first == _QUOTE:
            end = _string_end(data, start + 1)
            yield first, start, end
            if end == CUT_OFF:
                return
            position = end
        else:
            yield first, start, start + 1
            position = start + 1


def model_value_span(body: bytes) -> tuple[int, int] | None:
    """Byte offsets `[start, end)` of the top-level `"model"` value (quotes included), or None."""
    depth = 0
    expect_value = False
    previous_key = False
    for first, start, end in tokens(body):
        if first == _QUOTE:
            if expect_value:
                return (start, end) if end != CUT_OFF else None
            previous_key = depth == 1 and body[start:end] == b'"model"'
            continue
        if first in (0x7B, 0x5B):  # '{' '['
            depth += 1
        elif first in (0x7D, 0x5D):  # '}' ']'
            depth -= 1
        elif first == 0x3A and previous_key:  # ':'
            expect_value = True
            continue
        previous_key = False
        if expect_value:
            return None
    return None


def _model_keys(body: bytes) -> int:
    """How many top-level `"model"` keys `body` has (a string at depth 1 followed by ':')."""
    depth = 0
    count = 0
    candidate = False
    for first, start, end in tokens(body):
        if first == 0x3A and candidate:  # ':'
            count += 1
        candidate = first == _QUOTE and depth == 1 and body[start:end] == b'"model"'
        if first in (0x7B, 0x5B):  # '{' '['
            depth += 1
        elif first in (0x7D, 0x5D):  # '}' ']'
            depth -= 1
    return count


def rewrite_model(body: bytes, model: str) -> bytes:
    """`body` with its top-level `"model"` value replaced by `model`; every other byte unchanged.

    A body naming `"model"` twice is refused: the splice would change the first while JSON parsers (the
    picker's and the engine's) read the last, so the engine would serve the model the client wrote."""
    span = model_value_span(body)
    if span is None:
        raise BodyError(400, 'request body has no top-level "model" string to rewrite')
    if _model_keys(body) > 1:
        raise BodyError(400, 'request body has the top-level key "model" more than once')
    start, end = span
    return b"".join((body[:start], orjson.dumps(model), body[end:]))


def parse_prefix(prefix: bytes) -> dict[str, Any] | None:
    """The document a body *prefix* starts, as far as it goes: the cut-off string closed, open arrays and
    objects closed. None when that is not a JSON object naming its model in full (the model value must be
    complete in `prefix`), e.g. when the prefix ends between a key and its value; more body will tell.

    Lets the picker decide before the last body byte: a prefix cache keys on a long prompt's first part.
    """
    open_brackets: list[int] = []
    cut = len(prefix)
    in_string = False
    for first, start, end in tokens(prefix):
        if first == _QUOTE:
            if end == CUT_OFF:
                in_string, cut = True, start
        elif first in _CLOSERS:
            open_brackets.append(first)
        elif first != 0x3A and open_brackets:
            open_brackets.pop()
    head = prefix[:cut] if in_string else prefix.rstrip(b" \t\r\n,")
    tail = b"".join(_CLOSERS[bracket] for bracket in reversed(open_brackets))
    if in_string:
        text = prefix[cut:]
        if (len(text) - len(text.rstrip(b"\\"))) % 2:
            text = text[:-1]  # a cut-off escape
        head = head + text + b'"'
    try:
        document = orjson.loads(head + tail)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("model"), str):
        return None
    span = model_value_span(prefix)
    if span is None or orjson.loads(prefix[span[0] : span[1]]) != document["model"]:
        return None
    return document


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate of the tokens in `text` (about 4 characters per token)."""
    return estimate_tokens_of(len(text))


def estimate_tokens_of(characters: int) -> int:
    """The estimate for a text of `characters` characters."""
    return estimates.tokens(characters)
