"""The simulator's stand-in tokenizer, shared so the picker can tokenize exactly as simulated engines do.

Encoding cuts the text into 4-character pieces (the last may be shorter) and maps each piece to
`1 + xxh32(piece, seed=0) mod (VOCAB_SIZE - 1)`, so a shared text prefix gives a shared token prefix (what
prefix caching and prefix-aware routing need) and the count matches the ~4 chars/token rule of thumb the
picker uses. Id 0 is never produced by encoding. The chat template renders each message as
`<|role|>\\ncontent\\n` in order, then `<|assistant|>\\n`.

The simulated engine (`frontier_sim.tokenizer`) encodes every prompt with it; the picker's
`precise-prefix-cache-scorer` uses it when configured with `tokenizer: standin`, so precise prefix routing
is testable end to end against simulated engines without a model's tokenizer file.
"""

from collections.abc import Mapping, Sequence
from typing import Any, Final

import xxhash

from frontier_api import estimates

VOCAB_SIZE: Final = 128256
CHARS_PER_TOKEN: Final = estimates.CHARS_PER_TOKEN


def encode(text: str) -> list[int]:
    """Token ids of `text` (4-character pieces, hashed)."""
    step = CHARS_PER_TOKEN
    digest = xxhash.xxh32_intdigest
    modulus = VOCAB_SIZE - 1
    data = text.encode()
    if len(data) == len(text):  # ASCII: a character is a byte, so slice the bytes once encoded
        return [1 + digest(data[i : i + step]) % modulus for i in range(0, len(data), step)]
    return [1 + digest(text[i : i + step].encode()) % modulus for i in range(0, len(text), step)]


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text parts in order
        return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
    return ""


def apply_chat_template(messages: Sequence[Mapping[str, Any]]) -> str:
    """The prompt text of a chat: every message in order, then the assistant turn opener."""
    parts = [f"<|{m.get('role', 'user')}|>\n{_content_text(m.get('content'))}\n" for m in messages]
    return "".join(parts) + "<|assistant|>\n"
