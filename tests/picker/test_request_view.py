"""The scheduler's Request: GIE headers and their llm-d aliases read the same way everywhere."""

import pytest

from frontier_picker import request_view
from frontier_picker.scheduling import types


def test_llmd_aliases_stand_in_for_gie_headers_and_gie_spelling_wins():
    headers = {
        "x-llm-d-inference-objective": "batch",
        "x-llm-d-model-name-rewrite": "llama-fp8",
        "x-gateway-inference-fairness-id": "tenant-a",
        "x-llm-d-fairness-id": "ignored",
    }
    target = request_view.target_model(headers, "llama")
    document = {"prompt": "hi", "max_tokens": 7}
    request = request_view.build(
        request_id="r1", model="llama", target=target, document=document, headers=headers
    )
    assert request.target_model == "llama-fp8"
    assert (request.objective, request.fairness_id) == ("batch", "tenant-a")
    assert request.max_tokens == 7 and request.prompt == "hi"


def test_body_less_request_has_empty_prompt_and_keeps_the_model():
    request = request_view.build(request_id="r2", model="", target="", document=None, headers={})
    assert request.prompt == "" and request.prompt_tokens == 0 and request.max_tokens is None
    assert request_view.target_model({}, "llama") == "llama"


def test_ttft_slo_header_is_read_in_milliseconds_and_a_bad_value_is_the_clients_error():
    def build(value: str) -> types.Request:
        return request_view.build(
            request_id="r3", model="m", target="m", document=None, headers={"x-slo-ttft-ms": value}
        )

    assert build("250").ttft_slo_s == 0.25
    for bad in ("soon", "-5", "0", "inf", "nan"):
        with pytest.raises(types.Rejection) as refused:
            build(bad)
        assert refused.value.status == 400 and "x-slo-ttft-ms" in refused.value.reason
