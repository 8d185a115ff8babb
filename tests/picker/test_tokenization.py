"""A model's tokenizer and chat template, built here (no hub): chat requests render as vLLM renders them
(transformers' Jinja settings, add_generation_prompt, special tokens from tokenizer_config.json), then encode
without added special tokens; completions encode with them."""

import json
from pathlib import Path
from typing import Any

import pytest

from frontier_picker import tokenization
from frontier_picker.scheduling import types

tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("jinja2")

WORDS = [f"w{i}" for i in range(50)] + ["be", "brief", "hello"]
SPECIAL = ["<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
# A Llama-like template: BOS once, a header per message, the assistant header last; refuses a late system
# message the way real templates do (raise_exception).
TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' and not loop.first %}"
    "{{ raise_exception('the system message must come first') }}{% endif %}\n"
    "<|{{ message['role'] }}|> {{ message['content'] | trim }} {{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}\n"
)


def build(folder: Path, *, config: dict[str, Any] | None = None, jinja: str | None = None) -> Path:
    """A word-level tokenizer with the special tokens above (and a <s> post-processor, as Llama's adds BOS),
    saved as tokenizer.json in `folder` with an optional tokenizer_config.json and chat_template.jinja."""
    vocab = {"[UNK]": 0, **{t: i + 1 for i, t in enumerate(SPECIAL + WORDS)}}
    built = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    built.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    built.add_special_tokens(SPECIAL)
    built.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tokenizer.json"
    built.save(str(path))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    if jinja is not None:
        (folder / "chat_template.jinja").write_text(jinja)
    return path


def ids(*tokens: str) -> list[int]:
    vocab = {t: i + 1 for i, t in enumerate(SPECIAL + WORDS)}
    return [vocab[t] for t in tokens]


def chat(*messages: tuple[str, Any]) -> types.Request:
    return types.Request(
        request_id="r",
        model="m",
        target_model="m",
        messages=[{"role": role, "content": content} for role, content in messages],
    )


CONFIG = {"chat_template": TEMPLATE, "bos_token": "<s>", "eos_token": {"content": "</s>", "lstrip": False}}


def test_a_chat_renders_with_the_models_template_and_special_tokens_then_encodes_without_added_ones(
    tmp_path: Path,
):
    tokenizer = tokenization.FileTokenizer(
        path := build(tmp_path, config=CONFIG), chat_template=tokenization.load_chat_template(path)
    )
    assert tokenizer.chat_template is not None
    rendered = tokenizer.chat_template.render([{"role": "system", "content": " be brief "}])
    # trim_blocks drops the newline after a block tag, and the generation prompt closes the text
    assert rendered == "<s><|system|> be brief </s>\n<|assistant|>"
    request = chat(("system", "be brief"), ("user", "hello w1"))
    assert tokenizer.token_ids(request) == ids(
        "<s>", "<|system|>", "be", "brief", "</s>", "<|user|>", "hello", "w1", "</s>", "<|assistant|>"
    )
    # content parts join with newlines (vLLM's string content format); non-text parts are left out
    parts = [
        {"type": "text", "text": "hello"},
        {"type": "image_url", "image_url": {}},
        {"type": "text", "text": "w2"},
    ]
    assert tokenizer.token_ids(chat(("user", parts))) == ids(
        "<s>", "<|user|>", "hello", "w2", "</s>", "<|assistant|>"
    )
    # a completion gets the special tokens the post-processor adds, as vLLM's completions endpoint encodes it
    completion = types.Request(request_id="c", model="m", target_model="m", prompt="hello w3")
    assert tokenizer.token_ids(completion) == ids("<s>", "hello", "w3")


def test_a_template_that_refuses_the_messages_or_no_template_leaves_the_chat_untokenized(tmp_path: Path):
    path = build(tmp_path / "with", config=CONFIG)
    tokenizer = tokenization.FileTokenizer(path, chat_template=tokenization.load_chat_template(path))
    assert tokenizer.token_ids(chat(("user", "hello"), ("system", "be brief"))) is None
    bare = build(tmp_path / "bare")
    assert tokenization.load_chat_template(bare) is None
    assert tokenization.FileTokenizer(bare).token_ids(chat(("user", "hello"))) is None


def test_the_template_comes_from_the_named_file_else_chat_template_jinja_else_the_config(tmp_path: Path):
    other = "{% for m in messages %}<|user|> {{ m['content'] }} {% endfor %}"
    listed = {
        "chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": other}]
    }
    path = build(tmp_path / "a", config={**CONFIG, "chat_template": "ignored"}, jinja=other)
    found = tokenization.load_chat_template(path)
    assert found is not None and found.render([{"role": "user", "content": "w1"}]) == "<|user|> w1 "
    path = build(tmp_path / "b", config={**listed, "bos_token": "<s>"})
    found = tokenization.load_chat_template(path)
    assert found is not None and found.special_tokens == {"bos_token": "<s>"}
    assert found.render([{"role": "user", "content": "w1"}]) == "<|user|> w1 "
    named = tmp_path / "mine.jinja"
    named.write_text("{{ bos_token }}{{ messages[0]['content'] }}")
    found = tokenization.load_chat_template(path, named)
    assert found is not None and found.render([{"role": "user", "content": "w1"}]) == "<s>w1"
    with pytest.raises(tokenization.TemplateError, match="does not compile"):
        named.write_text("{% for %}")
        tokenization.load_chat_template(path, named)
    with pytest.raises(tokenization.TemplateError, match="no chat_template"):
        tokenization.load_chat_template(
            path, build(tmp_path / "c", config={}).parent / "tokenizer_config.json"
        )


def test_the_template_runs_sandboxed(tmp_path: Path):
    path = build(tmp_path, config={"chat_template": "{{ messages.__class__.__mro__ }}"})
    template = tokenization.load_chat_template(path)
    assert template is not None
    assert template.render([{"role": "user", "content": "w1"}]) is None  # the sandbox refuses, no text
