"""A deterministic stand-in tokenizer: about four characters per token, the same ids for the same text.

Encoding cuts the text into 4-character pieces (the last may be shorter) and maps each piece to
`1 + xxh32(piece, seed=0) mod (VOCAB_SIZE - 1)`, so a shared text prefix gives a shared token prefix (what
prefix caching and prefix-aware routing need) and the count matches the ~4 chars/token rule of thumb the
picker uses. Id 0 is never produced by encoding.

Generated tokens decode to 4-character words from a fixed list, so output text has a predictable length.
The chat template renders each message as `<|role|>\\ncontent\\n` in order, then `<|assistant|>\\n`.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import xxhash

from frontier_api import estimates

VOCAB_SIZE: Final = 128256
CHARS_PER_TOKEN: Final = estimates.CHARS_PER_TOKEN
_WORDS: Final = tuple(
    f"{w} "
    for w in (
        "the", "and", "for", "but", "not", "you", "all", "any", "can", "had", "her", "was", "one", "our",
        "out", "day", "get", "has", "him", "his", "how", "man", "new", "now", "old", "see", "two", "way",
        "who", "boy", "did", "its", "let", "put", "say", "she", "too", "use",
    )
)  # fmt: skip


def encode(text: str) -> list[int]:
    """Token ids of `text` (4-character pieces, hashed)."""
    step = CHARS_PER_TOKEN
    return [
        1 + xxhash.xxh32_intdigest(text[i : i + step].encode()) % (VOCAB_SIZE - 1)
        for i in range(0, len(text), step)
    ]


def decode(token_ids: Iterable[int]) -> str:
    """Text of generated token ids: one 4-character word per id."""
    return "".join(_WORDS[t % len(_WORDS)] for t in token_ids)


def output_token(seed: int, position: int) -> int:
    """The token generated at `position` of a sequence whose prompt hashes to `seed` (deterministic)."""
    return 1 + xxhash.xxh64_intdigest(position.to_bytes(8, "little"), seed=seed) % (VOCAB_SIZE - 1)


def prompt_seed(token_ids: Sequence[int]) -> int:
    """A seed that identifies a prompt, so the same prompt always generates the same tokens."""
    return xxhash.xxh64_intdigest(
        b"".join(t.to_bytes(4, "little") for t in token_ids[-64:]) + len(token_ids).to_bytes(8, "little")
    )


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
