"""The one tokenizer-free token estimate Frontier uses: about 4 characters per token.

The picker estimates prompt tokens from text with it (it never runs a tokenizer on the hot path), its prefix
index converts 64-character blocks to 16 tokens with it, and the simulated engine's tokenizer maps each
4-character piece to one token so the estimate is exact against the simulator.
"""

from typing import Final

CHARS_PER_TOKEN: Final = 4


def tokens(characters: int) -> int:
    """Tokens in a text of `characters` characters (rounded up)."""
    return (max(0, characters) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN
