"""Request tokenization: the token ids an engine computes for a request, as the picker's precise prefix index
needs them.

A *tokenizer* turns a request into token ids, or says it cannot (None). Two kinds:

- `StandinTokenizer`: the simulator's (`frontier_api.standin_tokenizer`), so precise routing is exact against
  simulated engines without any model file.
- `FileTokenizer`: a model's own `tokenizer.json` (Hugging Face `tokenizers`, the optional extra
  `frontier[tokenizers]`), read from a local path (a ConfigMap or volume; never fetched from a hub). A
  completion's prompt is encoded with the special tokens vLLM adds (`add_special_tokens`). A chat request is
  first rendered with the model's chat template as vLLM renders it (through transformers'
  `apply_chat_template`): Jinja2 in a sandboxed environment with `trim_blocks` and `lstrip_blocks`, the
  `loopcontrols` extension, `raise_exception`, `strftime_now` and a `tojson` filter that keeps non-ASCII
  text, the special tokens of `tokenizer_config.json` (`bos_token`, `eos_token`, ...) as variables, and
  `add_generation_prompt` true; a message whose content is a list of parts becomes its text parts joined with
  newlines (vLLM's "string" content format). The rendered text is encoded without added special tokens, as
  vLLM's chat endpoint does (the template writes them). Without a chat template, or when the template
  raises, a chat request gets None and the scorer leaves the decision to the others.

Tokenizing a long prompt takes milliseconds to hundreds of milliseconds (bench/results/tokenization.md), too
long for the ext_proc server's event loop, where every other stream waits meanwhile. `is_costly` says when a
request is large enough that the server should tokenize it in a worker thread first.
"""

import datetime
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from frontier_api import standin_tokenizer
from frontier_picker.scheduling import types

CHAT_TEMPLATE_FILE = "chat_template.jinja"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


class Tokenizer(Protocol):
    """Turns a request into the token ids its engine computes (None: it cannot say)."""

    def token_ids(self, request: types.Request) -> list[int] | None: ...


class StandinTokenizer:
    """The simulator's tokenizer: a chat is rendered with its template first, as a simulated engine does."""

    def token_ids(self, request: types.Request) -> list[int] | None:
        if request.messages is not None:
            return standin_tokenizer.encode(standin_tokenizer.apply_chat_template(request.messages))
        return standin_tokenizer.encode(request.prompt)


class TemplateError(ValueError):
    """A chat template that cannot be read or compiled; the text names the file and the problem."""


def _content_text(content: Any) -> Any:
    """A message's content as a "string" chat template sees it: text parts joined with newlines."""
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping) and part.get("type", "text") == "text" and "text" in part
        )
    return content


class ChatTemplate:
    """A model's chat template, compiled once; `render(messages)` is the prompt text vLLM would build."""

    def __init__(self, source: str, *, special_tokens: Mapping[str, str], origin: str) -> None:
        import jinja2  # an optional dependency: frontier[tokenizers]
        import jinja2.ext
        import jinja2.sandbox

        def raise_exception(message: str) -> None:
            raise jinja2.TemplateError(message)

        def tojson(
            value: Any,
            ensure_ascii: bool = False,
            indent: int | None = None,
            separators: tuple[str, str] | None = None,
            sort_keys: bool = False,
        ) -> str:
            return json.dumps(
                value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
            )

        def strftime_now(format: str) -> str:
            return datetime.datetime.now().strftime(format)

        environment = jinja2.sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[jinja2.ext.loopcontrols, _generation_extension()],
        )
        environment.filters["tojson"] = tojson
        environment.globals["raise_exception"] = raise_exception
        environment.globals["strftime_now"] = strftime_now
        try:
            self._template = environment.from_string(source)
        except jinja2.TemplateError as error:
            raise TemplateError(f"chat template {origin}: does not compile: {error}") from None
        self._error = jinja2.TemplateError
        self.special_tokens = dict(special_tokens)
        self.origin = origin

    def render(self, messages: Sequence[Mapping[str, Any]]) -> str | None:
        """The prompt text of `messages` with the generation prompt; None when the template refuses them
        (its `raise_exception`, or an error while rendering)."""
        shown = [{**m, "content": _content_text(m.get("content"))} for m in messages]
        try:
            text: str = self._template.render(
                messages=shown, add_generation_prompt=True, tools=None, documents=None, **self.special_tokens
            )
        except (self._error, TypeError, ValueError, KeyError, AttributeError):
            return None
        return text


def _generation_extension() -> type:
    import jinja2.ext
    import jinja2.nodes

    class Generation(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` (transformers marks assistant text with it for training
        masks); rendering keeps the body as it is."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body, lineno=lineno)

    return Generation


def _special_tokens(config: Mapping[str, Any]) -> dict[str, str]:
    """`bos_token`, `eos_token`, ... of a tokenizer_config.json (a string, or an added token's `content`)."""
    found = {}
    for name in SPECIAL_TOKENS:
        value = config.get(name)
        if isinstance(value, Mapping):
            value = value.get("content")
        if isinstance(value, str):
            found[name] = value
    return found


def _template_in_config(config: Mapping[str, Any]) -> str | None:
    """The `chat_template` of a tokenizer_config.json: a string, or the one named `default` of a list."""
    value = config.get("chat_template")
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, Mapping)}
        value = named.get("default")
    return value if isinstance(value, str) else None


def load_chat_template(tokenizer_path: Path, template: Path | None = None) -> ChatTemplate | None:
    """The chat template for the tokenizer at `tokenizer_path`: from `template` (a Jinja file, or a
    tokenizer_config.json holding `chat_template`) when given, else from `chat_template.jinja` or
    `tokenizer_config.json` beside the tokenizer (as a model repository ships them); None when there is none.
    Special tokens come from the tokenizer_config.json beside the tokenizer (or `template` itself)."""
    folder = tokenizer_path.parent
    config_path = folder / TOKENIZER_CONFIG_FILE
    if template is not None and template.suffix == ".json":
        config_path = template
    config: Mapping[str, Any] = {}
    if config_path.is_file():
        try:
            loaded = json.loads(config_path.read_text())
        except (OSError, ValueError) as error:
            raise TemplateError(f"chat template {config_path}: not readable JSON: {error}") from None
        config = loaded if isinstance(loaded, Mapping) else {}
    source: str | None = None
    origin = ""
    candidates = [template] if template is not None else [folder / CHAT_TEMPLATE_FILE, config_path]
    for candidate in candidates:
        if candidate.suffix == ".json":
            source, origin = _template_in_config(config), str(candidate)
        elif candidate.is_file():
            source, origin = candidate.read_text(), str(candidate)
        if source is not None:
            break
    if source is None:
        if template is not None:
            raise TemplateError(f"chat template {template}: no chat_template found there")
        return None
    return ChatTemplate(source, special_tokens=_special_tokens(config), origin=origin)


class FileTokenizer:
    """A model's own tokenizer, from its `tokenizer.json` (Hugging Face `tokenizers`; read from a local path,
    never downloaded), with its chat template for chat requests (see the module docstring)."""

    def __init__(self, path: Path, *, chat_template: ChatTemplate | None = None) -> None:
        import tokenizers  # an optional dependency: frontier[tokenizers]

        self.path = path
        self.chat_template = chat_template
        self._tokenizer = tokenizers.Tokenizer.from_file(str(path))

    def token_ids(self, request: types.Request) -> list[int] | None:
        if request.messages is not None:
            if self.chat_template is None:
                return None
            text = self.chat_template.render(request.messages)
            if text is None:
                return None
            return self._encode(text, add_special_tokens=False)
        return self._encode(request.prompt, add_special_tokens=True)

    def _encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        # `encode_batch` releases the GIL while it works and `encode` does not (measured: a worker thread
        # encoding 12k tokens with `encode` starved the event loop for its whole 17-66 ms, with
        # `encode_batch` the loop kept ticking), so off-loop tokenization only frees the loop through it.
        (encoding,) = self._tokenizer.encode_batch([text], add_special_tokens=add_special_tokens)
        ids: list[int] = encoding.ids
        return ids


def request_chars(request: types.Request) -> int:
    """The characters a tokenizer reads for `request` (its prompt, or its messages' text)."""
    if request.messages is None:
        return len(request.prompt)
    return sum(len(str(_content_text(m.get("content")) or "")) for m in request.messages)
