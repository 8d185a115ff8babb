"""The scheduler's view of one inference request, built from its headers and parsed body.

GIE endpoint pickers read a fixed set of request headers, and llm-d spells some of them `x-llm-d-*`; both
spellings are honoured here, once, for the ext_proc server and for the virtual-time simulator alike, so the
two always hand the scheduler the same `Request` for the same HTTP request.
"""

from collections.abc import Mapping
from typing import Any

from frontier_api import names
from frontier_picker import bodies
from frontier_picker.scheduling import types

_MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of GIE header `name`, or of its llm-d alias when only that is set (empty counts as unset)."""
    value = headers.get(name)
    if value:
        return value
    for alias, canonical in names.LLMD_ALIASES.items():
        if canonical == name and headers.get(alias):
            return headers[alias]
    return None


def target_model(headers: Mapping[str, str], model: str) -> str:
    """The model the endpoint must serve: the rewrite header's value when present, else `model`."""
    return header(headers, names.MODEL_NAME_REWRITE) or model


def build(
    *,
    request_id: str,
    model: str,
    target: str,
    document: dict[str, Any] | None,
    headers: Mapping[str, str],
    body_bytes: int | None = None,
    parsed_bytes: int = 0,
) -> types.Request:
    """The `Request` a scheduler sees; `document` is the parsed body (None for a body-less request).

    `body_bytes` is the whole body's declared size when `document` was parsed from its first `parsed_bytes`
    only (an early decision): the prompt goes on past them, so its tokens are estimated from the body's
    size, less the JSON seen around the prompt so far."""
    prompt = bodies.prompt_text(document) if document is not None else ""
    prompt_tokens = bodies.estimate_tokens(prompt)
    if body_bytes is not None:
        overhead = parsed_bytes - len(prompt)
        prompt_tokens = max(prompt_tokens, bodies.estimate_tokens_of(body_bytes - overhead))
    max_tokens = None
    messages = None
    if document is not None:
        max_tokens = next((v for f in _MAX_TOKENS_FIELDS if isinstance(v := document.get(f), int)), None)
        raw = document.get("messages")
        if isinstance(raw, list) and all(isinstance(message, dict) for message in raw):
            messages = raw
    return types.Request(
        request_id=request_id,
        model=model,
        target_model=target,
        prompt=prompt,
        messages=messages,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        objective=header(headers, names.INFERENCE_OBJECTIVE),
        fairness_id=header(headers, names.FAIRNESS_ID),
        session_token=headers.get(names.SESSION_TOKEN),
        ttft_slo_s=ttft_slo(headers),
        headers=headers,
    )


def ttft_slo(headers: Mapping[str, str]) -> float | None:
    """The `x-slo-ttft-ms` header in seconds; a value that is not a positive number is the client's error."""
    raw = headers.get(names.TTFT_SLO)
    if not raw:
        return None
    try:
        milliseconds = float(raw)
    except ValueError:
        milliseconds = float("nan")
    if not 0 < milliseconds < float("inf"):
        reason = f"header {names.TTFT_SLO}: {raw[:64]!r} is not a positive number of milliseconds"
        raise types.Rejection(400, reason)
    return milliseconds / 1000.0
