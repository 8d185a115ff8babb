"""The protocol's pure parts: the prefill and decode bodies (vLLM NixlConnector fields), the prefiller
header, the transfer params a prefill answer must carry, and which headers a proxy forwards."""

import orjson

from frontier_sidecar import protocol

PREFILL_PARAMS = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}
RETURNED = {
    "do_remote_prefill": True,
    "do_remote_decode": False,
    "remote_block_ids": [3, 4, 5],
    "remote_engine_id": "p1",
    "remote_host": "10.0.0.1",
    "remote_port": 5600,
    "tp_size": 1,
}


def test_the_prefill_body_asks_for_one_token_unstreamed_with_the_kv_kept():
    request = {
        "model": "m",
        "prompt": "hi",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 50,
        "min_tokens": 5,
        "temperature": 0.3,
    }
    body = protocol.prefill_request(request, chat=False)
    assert body == {
        "model": "m",
        "prompt": "hi",
        "stream": False,
        "max_tokens": 1,
        "temperature": 0.3,
        "kv_transfer_params": PREFILL_PARAMS,
    }
    assert request["stream"] is True and "kv_transfer_params" not in request  # the original is untouched


def test_a_chat_prefill_also_caps_max_completion_tokens():
    body = protocol.prefill_request({"messages": [], "max_completion_tokens": 9}, chat=True)
    assert body["max_tokens"] == 1 and body["max_completion_tokens"] == 1


def test_the_decode_body_is_the_original_with_the_returned_params():
    request = {"prompt": "hi", "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 50}
    assert protocol.decode_request(request, RETURNED) == {**request, "kv_transfer_params": RETURNED}


def test_a_prefill_answer_counts_only_with_params_that_let_the_decoder_pull():
    answer = {"choices": [{"text": "x"}], "kv_transfer_params": RETURNED}
    assert protocol.transfer_params(orjson.dumps(answer)) == RETURNED
    assert protocol.transfer_params(orjson.dumps({"choices": []})) is None
    assert protocol.transfer_params(orjson.dumps({"kv_transfer_params": None})) is None
    assert (
        protocol.transfer_params(orjson.dumps({"kv_transfer_params": {"do_remote_prefill": False}})) is None
    )
    assert protocol.transfer_params(b"<html>bad gateway</html>") is None
    assert protocol.transfer_params(b"[1, 2]") is None


def test_the_prefiller_header_names_the_first_endpoint():
    assert protocol.prefiller_of("10.0.0.1:8000") == "10.0.0.1:8000"
    assert protocol.prefiller_of(" 10.0.0.1:8000 , 10.0.0.2:8000") == "10.0.0.1:8000"
    assert protocol.prefiller_of("[fd00::1]:8000") == "[fd00::1]:8000"
    assert protocol.prefiller_of("") is None and protocol.prefiller_of(None) is None
    assert protocol.prefiller_of(" ,10.0.0.2:8000") is None


def test_request_bodies_that_are_not_json_objects_are_refused():
    assert protocol.parse_request(b'{"prompt": "x"}') == {"prompt": "x"}
    assert protocol.parse_request(b"{nope") is None
    assert protocol.parse_request(b'"text"') is None


def test_hop_by_hop_headers_and_those_connection_names_stay_behind():
    incoming = [
        ("Host", "sidecar:8000"),
        ("Content-Length", "12"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Authorization", "Bearer t"),
        ("X-Prefiller-Host-Port", "10.0.0.1:8000"),
        ("Accept", "a"),
        ("Accept", "b"),
    ]
    forwarded = protocol.request_headers(incoming, drop=["x-prefiller-host-port"])
    assert forwarded == [("Authorization", "Bearer t"), ("Accept", "a"), ("Accept", "b")]
    answer = [("Content-Length", "6"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Upgrade", "h2c")]
    assert protocol.response_headers(answer) == [
        ("Content-Length", "6"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]


def test_replace_header_leaves_one_value_whatever_the_case():
    headers = [("x-request-id", "a"), ("X-Request-Id", "b"), ("Accept", "c")]
    assert protocol.replace_header(headers, "X-Request-Id", "z") == [("Accept", "c"), ("X-Request-Id", "z")]
