"""The `vllm serve` command line of the vLLM the chart runs, as data, and a reader of argument lists by it.

`vllm_flags_<version>.json` is generated from that vLLM's own argument parser by `hack/vllm_flags.py`: every
option with all its spellings (`--tensor-parallel-size`, `-tp`), whether it takes values (argparse's nargs)
and its choices, the flags `vllm serve` refuses before parsing (`--model`), and values vLLM refuses when it
starts (speculative methods without a V1 proposer, LoRA ranks outside its set, unknown quantization methods).

`parse` reads an argument list the way vLLM 0.11 does: underscores in a long flag's name are dashes
(`--tensor_parallel_size`), a value may follow `=`, `--speculative-config.method ngram` sets one key of a JSON
flag, `-O3` is `-O` with value 3. What vLLM would accept only by argparse's prefix matching (`--max-num-seq`)
is refused here, naming the full flag: a manifest should say what it means.
"""

import dataclasses
import functools
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

VERSION: Final = "0.11.0"
"""The vLLM the chart deploys by default; the operator checks engine arguments against its table."""

_NEGATIVE_NUMBER: Final = re.compile(r"^-\d+$|^-\d*\.\d+$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Option:
    """One argparse option of `vllm serve`."""

    flags: tuple[str, ...]
    """Every spelling argparse registers, the long name first (`--tensor-parallel-size`, `-tp`)."""
    dest: str
    nargs: int | str | None
    """argparse's nargs: None one value, 0 a switch, `?`, `*`, `+` or a count."""
    choices: tuple[str, ...] | None

    @property
    def name(self) -> str:
        """The long name, as messages and conflict checks spell the option."""
        return self.flags[0]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Table:
    """The facts of one vLLM release's `vllm serve` command line."""

    version: str
    options: tuple[Option, ...]
    refused: Mapping[str, str]
    """Flags `vllm serve` refuses although argparse knows them, with vLLM's message."""
    speculative_methods: tuple[str, ...]
    """`--speculative-config` methods this release runs (its V1 engine has a proposer for each)."""
    max_lora_ranks: tuple[int, ...]
    """The `--max-lora-rank` values this release accepts."""
    quantization_methods: tuple[str, ...]
    """The `--quantization` values this release knows (argparse itself has no choices for it)."""

    def option(self, flag: str) -> Option | None:
        """The option `flag` (any registered spelling) names, or None."""
        return self._by_flag.get(flag)

    @functools.cached_property
    def _by_flag(self) -> dict[str, Option]:
        return {flag: option for option in self.options for flag in option.flags}


@functools.cache
def table(version: str = VERSION) -> Table:
    """The committed table of vLLM `version` (FileNotFoundError when none is committed)."""
    path = Path(__file__).with_name(f"vllm_flags_{version.replace('.', '_')}.json")
    doc = json.loads(path.read_text())
    return Table(
        version=doc["vllm"],
        options=tuple(
            Option(
                flags=tuple(o["flags"]),
                dest=o["dest"],
                nargs=o["nargs"],
                choices=None if o["choices"] is None else tuple(o["choices"]),
            )
            for o in doc["options"]
        ),
        refused=dict(doc["refused"]),
        speculative_methods=tuple(doc["speculative_methods"]),
        max_lora_ranks=tuple(doc["max_lora_ranks"]),
        quantization_methods=tuple(doc["quantization_methods"]),
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Arg:
    """One option in an argument list, with the values it took."""

    index: int
    """Where the option stands in the list."""
    written: str
    """The option as written, `=value` left out."""
    option: Option
    values: tuple[str, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Parsed:
    """An argument list read by a table: its options and its positional arguments (index, text)."""

    args: tuple[Arg, ...]
    positionals: tuple[tuple[int, str], ...]


class ArgError(ValueError):
    """An argument vLLM would refuse (or accept only as an abbreviation); `index` is its position."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


def _looks_like_flag(token: str) -> bool:
    return token.startswith("-") and token != "-" and not _NEGATIVE_NUMBER.match(token)


def _spelling(token: str) -> tuple[str, str | None, bool]:
    """(flag, value after `=` or None, whether a `.key` of a JSON flag is set) as vLLM rewrites `token`."""
    key, eq, value = token.partition("=")
    base, dot, _ = key.partition(".")
    explicit = value if eq else None
    if token.startswith("--"):
        return "--" + base[2:].replace("_", "-"), explicit, bool(dot)
    if base.startswith("-O") and len(base) > 2:  # -O3: the optimisation level without a space
        return "-O", base[2:], False
    return base, explicit, bool(dot)


def _unknown(flags: Table, index: int, flag: str) -> ArgError:
    if flag.startswith("--"):
        matches = {o.name for o in flags.options if any(f.startswith(flag) for f in o.flags if f[:2] == "--")}
        if len(matches) == 1:
            return ArgError(index, f"{flag} abbreviates {matches.pop()}; write the flag in full")
    return ArgError(index, f"{flag} is not a flag of vllm serve {flags.version}")


def parse(argv: Sequence[str], flags: Table) -> Parsed:
    """Options and positionals of `argv` (the arguments after `vllm serve`); ArgError on what vLLM refuses."""
    args: list[Arg] = []
    positionals: list[tuple[int, str]] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if not _looks_like_flag(token):
            positionals.append((i, token))
            i += 1
            continue
        flag, explicit, dotted = _spelling(token)
        if flag in flags.refused:
            raise ArgError(i, f"{flag}: vllm serve {flags.version} refuses it: {flags.refused[flag]}")
        option = flags.option(flag)
        if option is None:
            raise _unknown(flags, i, flag)
        start, i = i, i + 1
        if explicit is not None:
            if option.nargs == 0:
                raise ArgError(start, f"{flag} is a switch and takes no value")
            values: tuple[str, ...] = (explicit,)
        else:
            wanted = 1 if dotted or option.nargs is None else option.nargs
            taken: list[str] = []
            while i < len(argv) and not _looks_like_flag(argv[i]):
                if isinstance(wanted, int) and len(taken) == wanted:
                    break
                taken.append(argv[i])
                i += 1
                if wanted == "?":
                    break
            if (isinstance(wanted, int) and len(taken) < wanted) or (wanted == "+" and not taken):
                raise ArgError(start, f"{flag} needs a value")
            values = tuple(taken)
        if option.choices is not None and not dotted:
            for value in values:
                if value not in option.choices:
                    raise ArgError(
                        start,
                        f"{flag} {value!r} is refused by vLLM {flags.version}; allowed: "
                        + ", ".join(option.choices),
                    )
        args.append(Arg(index=start, written=token.partition("=")[0], option=option, values=values))
    return Parsed(args=tuple(args), positionals=tuple(positionals))
