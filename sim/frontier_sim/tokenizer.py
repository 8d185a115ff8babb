"""A deterministic stand-in tokenizer: about four characters per token, the same ids for the same text.

Encoding and the chat template are `frontier_api.standin_tokenizer`'s (4-character pieces, hashed), shared
with the picker so its precise prefix scorer tokenizes as the simulated engines do. Generated tokens decode
to 4-character words from a fixed list, so output text has a predictable length.
"""

from collections.abc import Iterable, Sequence
from typing import Final

import xxhash

from frontier_api import standin_tokenizer

VOCAB_SIZE: Final = standin_tokenizer.VOCAB_SIZE
CHARS_PER_TOKEN: Final = standin_tokenizer.CHARS_PER_TOKEN
encode = standin_tokenizer.encode
apply_chat_template = standin_tokenizer.apply_chat_template
_WORDS: Final = tuple(
    f"{w} "
    for w in (
        "the", "and", "for", "but", "not", "you", "all", "any", "can", "had", "her", "was", "one", "our",
        "out", "day", "get", "has", "him", "his", "how", "man", "new", "now", "old", "see", "two", "way",
        "who", "boy", "did", "its", "let", "put", "say", "she", "too", "use",
    )
)  # fmt: skip


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
