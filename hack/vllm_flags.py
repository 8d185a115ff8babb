"""Writes the `vllm serve` flag table of the installed vLLM: api/frontier_api/vllm_flags_<version>.json.

Run it with the Python of a throwaway virtual environment holding that vLLM and its dependencies; nothing of
it is committed but the table:

    python3.11 -m venv /tmp/vllm-0.11.0 && /tmp/vllm-0.11.0/bin/pip install vllm==0.11.0
    /tmp/vllm-0.11.0/bin/python hack/vllm_flags.py api/frontier_api/

It imports vLLM and builds the parser `vllm serve` builds, rather than reading the source statically, because
vLLM derives most flags at run time from its config dataclasses' fields and type hints (Literal types become
choices, booleans `--x/--no-x`, plus hand-made aliases such as `-tp`): a static reading would re-implement
that and could drift from it. No GPU is needed: without one, vLLM cannot infer a device and building its
defaults fails, so the CPU platform is selected; no platform changes the parser (`pre_register_and_update`
is a no-op in every platform of 0.11.0), only defaults, which the table leaves out.

Besides argparse's facts (every option's spellings, nargs, choices), the table records what vLLM refuses
outside argparse:
- `refused`: flags `vllm serve` rejects before parsing (0.11.0: `--model`), found by parsing each flag
  with vLLM's own top-level parser and keeping the ValueErrors that name the flag;
- `max_lora_ranks`: the ranks `LoRAConfig` accepts, found by constructing it with every rank up to 4096;
- `quantization_methods`: vLLM's registry of `--quantization` values (argparse has no choices for it);
- `speculative_methods`: the members of `SpeculativeMethod` the V1 engine (the only engine of 0.11.0) runs:
  it refuses some in `EngineArgs._is_v1_supported_oracle` (`draft_model`) and builds a proposer only for
  the methods `GPUModelRunner.__init__` names (ngram, medusa, and eagle/eagle3/mtp through `use_eagle`;
  model-specific MTP types are renamed `mtp` first). Those two are read from the source with `ast`, since
  calling them needs a loaded model.
"""

import argparse
import ast
import contextlib
import importlib.util
import inspect
import io
import json
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

import vllm.platforms

# Without a GPU vLLM detects no platform and cannot build its config defaults; see the module doc.
vllm.platforms.builtin_platform_plugins["cpu"] = lambda: "vllm.platforms.cpu.CpuPlatform"

import vllm  # noqa: E402
from vllm.config.lora import LoRAConfig  # noqa: E402
from vllm.config.speculative import MTP_MODEL_TYPES, SpeculativeConfig, SpeculativeMethod  # noqa: E402
from vllm.engine.arg_utils import EngineArgs  # noqa: E402
from vllm.entrypoints.cli.serve import ServeSubcommand  # noqa: E402
from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS  # noqa: E402
from vllm.utils import FlexibleArgumentParser  # noqa: E402


def parsers() -> tuple[FlexibleArgumentParser, argparse.ArgumentParser]:
    """vLLM's top-level CLI parser with its `serve` subcommand, and that subcommand's parser."""
    top = FlexibleArgumentParser()
    serve = ServeSubcommand().subparser_init(top.add_subparsers(dest="subparser"))
    return top, serve


def option_row(action: argparse.Action) -> dict[str, Any]:
    """One option: long spellings first (argparse keeps the order they were declared in)."""
    flags = sorted(action.option_strings, key=lambda f: not f.startswith("--"))
    choices = None if action.choices is None else [str(c) for c in action.choices]
    return {"flags": flags, "dest": action.dest, "nargs": action.nargs, "choices": choices}


def refused_flags(top: FlexibleArgumentParser, options: list[dict[str, Any]]) -> dict[str, str]:
    """Flags `vllm serve` rejects before argparse sees them, with vLLM's message."""
    refused = {}
    for row in options:
        for flag in row["flags"]:
            if row["dest"] in ("help", "config"):  # help exits; --config reads the file it names
                continue
            with contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(SystemExit, Exception):
                try:
                    top.parse_args(["serve", flag])
                except ValueError as e:
                    if f"`{flag}`" in str(e):
                        refused[flag] = str(e)
    return refused


def max_lora_ranks() -> list[int]:
    """The `max_lora_rank` values LoRAConfig accepts."""
    accepted = []
    for rank in range(1, 4097):
        with contextlib.suppress(ValueError):
            LoRAConfig(max_lora_rank=rank)
            accepted.append(rank)
    return accepted


def _tree(function: Any) -> ast.AST:
    return ast.parse(textwrap.dedent(inspect.getsource(function)))


def _compared_strings(tree: ast.AST, name: str) -> set[str]:
    """String constants `<...>.name == "x"` or `name in ("x", ...)` compares with."""
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare) or len(node.comparators) != 1:
            continue
        left = node.left
        if not (isinstance(left, ast.Name) and left.id == name) and not (
            isinstance(left, ast.Attribute) and left.attr == name
        ):
            continue
        right = node.comparators[0]
        if isinstance(node.ops[0], ast.Eq) and isinstance(right, ast.Constant):
            found.add(right.value)
        elif isinstance(node.ops[0], ast.In) and isinstance(right, ast.Tuple):
            found |= {e.value for e in right.elts if isinstance(e, ast.Constant)}
    return found


def _refused_by_oracle() -> set[str]:
    """Methods `_is_v1_supported_oracle` raises on: an `if method == "x":` whose body raises."""
    refused = set()
    for node in ast.walk(_tree(EngineArgs._is_v1_supported_oracle)):
        if isinstance(node, ast.If) and any(isinstance(s, ast.Raise) for s in node.body):
            refused |= _compared_strings(node.test, "method")
    return refused


def _built_by_runner() -> set[str]:
    """Methods the V1 GPU model runner builds a proposer for (read from its file: importing it needs CUDA)."""
    spec = importlib.util.find_spec("vllm.v1.worker.gpu_model_runner")
    assert spec is not None and spec.origin is not None
    module = ast.parse(Path(spec.origin).read_text())
    init = next(
        f
        for c in ast.walk(module)
        if isinstance(c, ast.ClassDef) and c.name == "GPUModelRunner"
        for f in c.body
        if isinstance(f, ast.FunctionDef) and f.name == "__init__"
    )
    built = _compared_strings(init, "method")
    if "use_eagle" in ast.unparse(init):
        built |= _compared_strings(_tree(SpeculativeConfig.use_eagle), "method")
    return built


def speculative_methods() -> list[str]:
    """`SpeculativeMethod` members the V1 engine runs, in vLLM's order."""
    refused, built = _refused_by_oracle(), _built_by_runner()
    assert refused and built, "the oracle or the runner no longer reads as this script expects"
    runs = []
    for method in typing.get_args(SpeculativeMethod):
        effective = "mtp" if method in MTP_MODEL_TYPES else method
        if method not in refused and effective in built:
            runs.append(method)
    return runs


def table() -> dict[str, Any]:
    """The whole table of the installed vLLM."""
    top, serve = parsers()
    options = sorted((option_row(a) for a in serve._actions if a.option_strings), key=lambda r: r["flags"][0])
    return {
        "vllm": vllm.__version__,
        "generator": "hack/vllm_flags.py",
        "options": options,
        "refused": refused_flags(top, options),
        "speculative_methods": speculative_methods(),
        "max_lora_ranks": max_lora_ranks(),
        "quantization_methods": list(QUANTIZATION_METHODS),
    }


def main() -> None:
    """Write the table into the folder given as the only argument."""
    doc = table()
    out = Path(sys.argv[1]) / f"vllm_flags_{doc['vllm'].replace('.', '_')}.json"
    # One option a line: a new vLLM release reads as a short diff.
    fields = [
        f'  "{key}": [\n' + ",\n".join(f"    {json.dumps(o)}" for o in value) + "\n  ]"
        if key == "options"
        else f"  {json.dumps(key)}: {json.dumps(value)}"
        for key, value in doc.items()
    ]
    out.write_text("{\n" + ",\n".join(fields) + "\n}\n")
    print(f"{out}: {len(doc['options'])} options")


if __name__ == "__main__":
    main()
