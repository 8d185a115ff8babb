"""Frontier's labelled prompt set: the examples the default prompt classifier learns from, as data.

One JSON Lines file per category (`{"category": ..., "prompt": ...}` per line), written by hand for this
project: code, math, reasoning, chit-chat, summarisation, extraction. `split` cuts a fixed held-out fifth
by a hash of each prompt's text, so the shipped classifier never sees the examples its accuracy is measured
on, and the split does not move when examples are added elsewhere.
"""

import dataclasses
import importlib.resources
import pathlib

import orjson
import xxhash

HELD_OUT_SHARE = 5  # one example in five is held out


@dataclasses.dataclass(frozen=True, slots=True)
class Example:
    """One labelled prompt."""

    category: str
    prompt: str


def _parse(text: str, *, where: str) -> list[Example]:
    examples = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise ValueError(f"{where}:{number}: not JSON: {error}") from None
        if not isinstance(item, dict) or not isinstance(item.get("category"), str):
            raise ValueError(f"{where}:{number}: expected {{category, prompt}}")
        if not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
            raise ValueError(f"{where}:{number}: prompt must be a non-empty string")
        examples.append(Example(item["category"], item["prompt"]))
    return examples


def load(path: str = "") -> list[Example]:
    """The examples in `path` (a .jsonl file, or a directory of them); the packaged set when empty."""
    if not path:
        root = importlib.resources.files(__name__)
        files = sorted((f for f in root.iterdir() if f.name.endswith(".jsonl")), key=lambda f: f.name)
        return [e for f in files for e in _parse(f.read_text(encoding="utf-8"), where=f.name)]
    source = pathlib.Path(path)
    listed = sorted(source.glob("*.jsonl")) if source.is_dir() else [source]
    if not listed:
        raise ValueError(f"{path}: no .jsonl files")
    return [e for f in listed for e in _parse(f.read_text(encoding="utf-8"), where=str(f))]


def held_out(example: Example) -> bool:
    """Whether `example` belongs to the held-out split (fixed by its text)."""
    return xxhash.xxh64_intdigest(example.prompt.encode()) % HELD_OUT_SHARE == 0


def split(examples: list[Example]) -> tuple[list[Example], list[Example]]:
    """(training, held-out) examples."""
    return [e for e in examples if not held_out(e)], [e for e in examples if held_out(e)]
