"""Request bodies: model and prompt extraction, and the byte-splice model rewrite that leaves every other
byte as the client sent it."""

import json

import pytest

from frontier_picker import bodies


def test_parse_reads_the_model_and_rejects_bodies_that_name_none() -> None:
    assert bodies.parse(b'{"model": "m", "prompt": "x"}')["model"] == "m"
    with pytest.raises(bodies.BodyError, match="not JSON"):
        bodies.parse(b'{"model": ')
    with pytest.raises(bodies.BodyError, match="JSON object"):
        bodies.parse(b'"just a string"')
    with pytest.raises(bodies.BodyError, match='"model"'):
        bodies.parse(b'{"model": ""}')


@pytest.mark.parametrize(
    ("document", "prompt"),
    [
        ({"model": "m", "prompt": "once upon"}, "once upon"),
        ({"model": "m", "prompt": ["a", "b"]}, "ab"),
        (
            {
                "model": "m",
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            },
            "system:be briefuser:hi",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "look"}]}]},
            "user:look",
        ),
        ({"model": "m", "input": "embed me"}, "embed me"),
    ],
)
def test_prompt_text_follows_each_api(document: dict[str, object], prompt: str) -> None:
    assert bodies.prompt_text(document) == prompt


def test_rewrite_touches_only_the_top_level_model_value() -> None:
    body = (
        b'{"tools":[{"type":"function","function":{"parameters":{"model":{"type":"string"}}}}],'
        b'"messages":[{"role":"user","content":"say \\"model\\": \\"x\\" {[ please"}],'
        b' "model" :  "llama" ,"stream":true}'
    )
    rewritten = bodies.rewrite_model(body, "llama-8b")
    assert rewritten == body.replace(b'"llama"', b'"llama-8b"')
    assert json.loads(rewritten)["model"] == "llama-8b"
    assert json.loads(rewritten)["tools"] == json.loads(body)["tools"]


def test_rewrite_escapes_the_new_name_as_json() -> None:
    rewritten = bodies.rewrite_model(b'{"model":"a"}', 'we"ird')
    assert json.loads(rewritten) == {"model": 'we"ird'}


def test_rewrite_refuses_a_body_without_a_top_level_model() -> None:
    with pytest.raises(bodies.BodyError):
        bodies.rewrite_model(b'{"options":{"model":"nested"}}', "x")


def test_rewrite_of_a_large_prompt_is_a_splice() -> None:
    prompt = "y" * 4_000_000
    body = json.dumps({"messages": [{"role": "user", "content": prompt}], "model": "m"}).encode()
    rewritten = bodies.rewrite_model(body, "other")
    assert len(rewritten) == len(body) + len("other") - len("m")
    assert rewritten.endswith(b'"model": "other"}')


def test_inference_paths_ignore_the_query_string() -> None:
    assert bodies.is_inference_path("/v1/chat/completions?x=1")
    assert not bodies.is_inference_path("/v1/models")


def test_parse_prefix_reads_the_model_from_any_cut_and_never_invents_one() -> None:
    document = {
        "model": "m",
        "messages": [{"role": "user", "content": 'quote " backslash \\ accent \u00e9 ' * 20}],
        "max_tokens": 5,
    }
    for text in (json.dumps(document), json.dumps(document, ensure_ascii=False)):
        full = text.encode()
        whole_prompt = bodies.prompt_text(json.loads(full))
        parsed = 0
        for cut in range(1, len(full)):
            prefix_document = bodies.parse_prefix(full[:cut])
            if prefix_document is None:
                continue
            parsed += 1
            assert prefix_document["model"] == "m"
            assert whole_prompt.startswith(bodies.prompt_text(prefix_document)[:-10])
        assert parsed > len(full) // 2


def test_parse_prefix_needs_the_whole_model_value() -> None:
    assert bodies.parse_prefix(b'{"model":"llama-3') is None
    assert bodies.parse_prefix(b'{"messages":[{"role":"user","content":"hello') is None
    assert bodies.parse_prefix(b'{"model":"llama-3","messages":[{"role":"user","content":"hel') == {
        "model": "llama-3",
        "messages": [{"role": "user", "content": "hel"}],
    }


def test_rewrite_refuses_a_body_naming_the_model_twice() -> None:
    body = b'{"model":"cheap","messages":[{"model":"x"}],"model":"expensive"}'
    with pytest.raises(bodies.BodyError, match="more than once") as refused:
        bodies.rewrite_model(body, "tier-a")
    assert refused.value.status == 400
    nested = b'{"model":"cheap","tools":[{"model":"x"}],"extra":{"model":"y"}}'
    assert bodies.rewrite_model(nested, "tier-a").startswith(b'{"model":"tier-a"')
