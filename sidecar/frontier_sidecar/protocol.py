"""The prefill/decode protocol the sidecar drives, as pure functions: vLLM's NixlConnector convention, as
llm-d's routing sidecar uses it.

1. The prefill endpoint gets the request with `stream: false`, no `stream_options`, `max_tokens: 1` (and
   `max_completion_tokens: 1` for chat) and `kv_transfer_params` = `names.KV_TRANSFER_PREFILL_PARAMS`
   (`do_remote_decode`): it computes the prompt's KV, keeps the blocks, and answers with
   `kv_transfer_params` naming them (`do_remote_prefill: true`, `remote_engine_id`, `remote_block_ids`,
   `remote_host`, `remote_port`, ...).
2. The local engine gets the original request with those params as its `kv_transfer_params`: it pulls the
   blocks and decodes.

Also here: which requests take that path, and which headers a proxy forwards (RFC 9110 section 7.6.1).
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import orjson

from frontier_api import names

CHAT_PATH: Final = "/v1/chat/completions"
DISAGGREGATED_PATHS: Final = frozenset({"/v1/completions", CHAT_PATH})


# Hop-by-hop headers describe one connection, so a proxy never forwards them (nor those `Connection` names).
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# The client library sets these itself for the body it sends (which the sidecar has already read in full).
_REQUEST_ONLY: Final = frozenset({"host", "content-length", "expect"})


def prefiller_of(value: str | None) -> str | None:
    """The `host:port` an `x-prefiller-host-port` value names, or None when it names none.

    A proxy may fold repeated headers into one comma-separated value; like llm-d's sidecar, take the first.
    """
    first = (value or "").split(",", 1)[0].strip()
    return first or None


def parse_request(body: bytes) -> dict[str, Any] | None:
    """The JSON object of a completion request body, or None when the body is not one."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def prefill_request(request: Mapping[str, Any], *, chat: bool) -> dict[str, Any]:
    """The prefill endpoint's body for `request`: compute the prompt's KV and one token, keep the KV."""
    # min_tokens above max_tokens is a 400 in vLLM; the prefill leg generates one token whatever was asked.
    body = {k: v for k, v in request.items() if k not in ("stream_options", "min_tokens")}
    body.update(stream=False, max_tokens=1, kv_transfer_params=dict(names.KV_TRANSFER_PREFILL_PARAMS))
    if chat:
        body["max_completion_tokens"] = 1
    return body


def transfer_params(answer: bytes) -> dict[str, Any] | None:
    """The `kv_transfer_params` of a prefill answer when they let a decoder pull the KV, else None."""
    parsed = parse_request(answer)
    params = parsed.get("kv_transfer_params") if parsed is not None else None
    return params if isinstance(params, dict) and params.get("do_remote_prefill") else None


def decode_request(request: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The body the local engine gets: the original request, decoding with the prefill endpoint's KV."""
    return {**request, "kv_transfer_params": dict(params)}


def _connection_scoped(headers: Sequence[tuple[str, str]]) -> frozenset[str]:
    listed = {
        token.strip().lower() for k, v in headers if k.lower() == "connection" for token in v.split(",")
    }
    return HOP_BY_HOP | listed


def request_headers(headers: Iterable[tuple[str, str]], *, drop: Iterable[str] = ()) -> list[tuple[str, str]]:
    """The headers of a client request to send upstream: end-to-end ones, less `drop` (names, any case)."""
    pairs = list(headers)
    skip = _connection_scoped(pairs) | _REQUEST_ONLY | {name.lower() for name in drop}
    return [(k, v) for k, v in pairs if k.lower() not in skip]


def response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers of an upstream response to send the client: the end-to-end ones, repeats kept."""
    pairs = list(headers)
    skip = _connection_scoped(pairs)
    return [(k, v) for k, v in pairs if k.lower() not in skip]


def replace_header(headers: Iterable[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    """`headers` with every `name` header (any case) replaced by one `name: value`."""
    return [(k, v) for k, v in headers if k.lower() != name.lower()] + [(name, value)]
