"""The `vllm serve` command line the simulator accepts, so that manifests rendered for vLLM run unchanged.

Every flag the Frontier operator renders is accepted and modelled (sim/README.md lists them); a few common
vLLM flags that change nothing the simulator models (`--dtype`, `--trust-remote-code`, `--enforce-eager`, ...)
are accepted and ignored. Anything else is rejected with an error that names the flag, because a silently
ignored typo in a manifest would make the simulated fleet differ from the real one without anyone noticing.
So is what vLLM 0.11 refuses, by its flag table (`frontier_api.vllm_flags`): `--model` (the model is the
positional argument), a value outside a flag's choices, a `--max-lora-rank` outside its set, a
`--quantization` it does not know, a speculative method it does not run.
Simulator-only flags start with `--sim-`.

`frontier-sim sglang` accepts instead the `python3 -m sglang.launch_server` flags the operator renders for an
`engine.type: sglang` tier (`parse_sglang`), runs the same engine model, and names its metrics as SGLang does.
"""

import argparse
from collections.abc import Sequence

from frontier_api import vllm_flags
from frontier_sim import settings as settings_

ACCEPTED_IGNORED_VALUE = (
    "--dtype",
    "--tokenizer",
    "--revision",
    "--download-dir",
    "--load-format",
    "--uvicorn-log-level",
    "--lora-dtype",
    "--pipeline-parallel-size",
    "--swap-space",
    "--api-key",
    "--chat-template",
    "--distributed-executor-backend",
    "--long-prefill-token-threshold",
    "--max-cpu-loras",
)
ACCEPTED_IGNORED_SWITCH = (
    "--trust-remote-code",
    "--enforce-eager",
    "--disable-log-requests",
    "--disable-log-stats",
    "--enable-chunked-prefill",
    "--disable-frontend-multiprocessing",
    "--enable-log-requests",
)


class FlagError(ValueError):
    """A command line the simulator refuses; the message names the flag."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise FlagError(f"{self.prog}: {message}")


def add_engine_flags(parser: argparse.ArgumentParser, *, model_required: bool) -> None:
    """The vLLM and --sim-* flags of one engine (shared by `serve` and `fleet`)."""
    if model_required:
        parser.add_argument("model_tag", nargs="?", help="model name (vLLM's positional MODEL)")
    parser.add_argument("--served-model-name", nargs="+")
    parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    parser.add_argument("--data-parallel-size", "-dp", type=int, default=1)
    parser.add_argument("--max-model-len", type=int)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--quantization", "-q")
    parser.add_argument("--kv-cache-dtype", default="auto")
    parser.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--prefix-caching-hash-algo", default="sha256")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--num-gpu-blocks-override", type=int)
    parser.add_argument("--speculative-config")
    parser.add_argument("--enable-lora", action="store_true")
    parser.add_argument("--max-loras", type=int, default=1)
    parser.add_argument("--lora-modules", nargs="+", default=[])
    parser.add_argument("--kv-transfer-config")
    parser.add_argument("--kv-events-config")
    parser.add_argument("--seed", type=int, default=0)
    table = vllm_flags.table()
    parser.add_argument("--max-lora-rank", type=int, choices=table.max_lora_ranks, help=argparse.SUPPRESS)
    for flag in ACCEPTED_IGNORED_VALUE:
        parser.add_argument(flag, help=argparse.SUPPRESS)
    for flag in ACCEPTED_IGNORED_SWITCH:
        parser.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    # vLLM's own choices on the flags both have: a value vLLM refuses must not start a simulated engine.
    for action in parser._actions:
        option = next(filter(None, map(table.option, action.option_strings)), None)
        if option is not None and option.choices is not None:
            convert = action.type if callable(action.type) else str
            action.choices = [convert(choice) for choice in option.choices]
    add_sim_flags(parser)


def add_sim_flags(parser: argparse.ArgumentParser) -> None:
    """The simulator's own --sim-* engine flags (every engine command line)."""
    parser.add_argument("--sim-gpu", default="h100", choices=["h100", "h200"])
    parser.add_argument(
        "--sim-params", help="parameter count, e.g. 8e9 or 70B (default: from the model name)"
    )
    parser.add_argument("--sim-acceptance-rate", type=float, default=0.7)
    parser.add_argument("--sim-kv-link-gbps", type=float, default=200.0, help="KV transfer link, Gbit/s")
    parser.add_argument("--sim-lora-load-ms", type=float, default=20.0)
    parser.add_argument("--sim-default-max-tokens", type=int, default=256)


def serve_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="frontier-sim serve",
        description="a simulated vLLM server (vllm serve flags)",
        allow_abbrev=False,
    )
    add_engine_flags(parser, model_required=True)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--sim-time-scale", type=float, default=1.0, help="wall seconds per model second")
    return parser


# SGLang 0.5's `--kv-cache-dtype` and `--quantization` choices that the simulator models (the operator renders
# no others).
SGLANG_KV_CACHE_DTYPES = ("auto", "fp8_e4m3", "fp8_e5m2")
SGLANG_QUANTIZATION = ("fp8", "modelopt", "awq", "awq_marlin", "gptq", "gptq_marlin", "bitsandbytes", "gguf",
                       "mxfp4")  # fmt: skip
SGLANG_IGNORED_VALUE = ("--dtype", "--tokenizer-path", "--revision", "--download-dir", "--load-format",
                        "--chunked-prefill-size", "--log-level", "--api-key", "--chat-template")  # fmt: skip
SGLANG_IGNORED_SWITCH = (
    "--trust-remote-code",
    "--disable-cuda-graph",
    "--enable-metrics",
    "--skip-server-warmup",
)


def sglang_parser() -> argparse.ArgumentParser:
    """`frontier-sim sglang`: SGLang's `launch_server` flags (the same spellings SGLang 0.5 accepts)."""
    parser = _Parser(
        prog="frontier-sim sglang",
        description="a simulated SGLang server (python3 -m sglang.launch_server flags)",
        allow_abbrev=False,
    )
    parser.add_argument("--model-path", "--model", required=True)
    parser.add_argument("--served-model-name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--tp-size", "--tensor-parallel-size", "--tp", type=int, default=1)
    parser.add_argument("--context-length", type=int)
    parser.add_argument("--max-running-requests", type=int, default=256)
    parser.add_argument("--mem-fraction-static", type=float, default=0.9)
    parser.add_argument("--kv-cache-dtype", default="auto", choices=SGLANG_KV_CACHE_DTYPES)
    parser.add_argument("--quantization", choices=SGLANG_QUANTIZATION)
    parser.add_argument("--disable-radix-cache", action="store_true")
    parser.add_argument("--random-seed", type=int, default=0)
    # Data and pipeline replicas inside one server: the simulator models one engine per endpoint.
    for flag in ("--dp-size", "--data-parallel-size", "--dp", "--pp-size", "--pipeline-parallel-size"):
        parser.add_argument(flag, type=int, help=argparse.SUPPRESS)
    for flag in SGLANG_IGNORED_VALUE:
        parser.add_argument(flag, help=argparse.SUPPRESS)
    for flag in SGLANG_IGNORED_SWITCH:
        parser.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    add_sim_flags(parser)
    parser.add_argument("--sim-time-scale", type=float, default=1.0, help="wall seconds per model second")
    return parser


def parse_sglang(argv: Sequence[str]) -> settings_.Settings:
    """`frontier-sim sglang` arguments to Settings of an engine that reports SGLang's metric names; FlagError
    on unknown or invalid flags."""
    parser = sglang_parser()
    args, unknown = parser.parse_known_args(list(argv))
    if unknown:
        raise FlagError(
            f"frontier-sim sglang: unknown flag(s) {' '.join(unknown)}; the simulator accepts the "
            "sglang.launch_server flags Frontier renders and --sim-* (see frontier-sim sglang --help)"
        )
    if not 0.0 <= args.sim_acceptance_rate <= 1.0:
        raise FlagError(f"--sim-acceptance-rate={args.sim_acceptance_rate}; must be in [0, 1]")
    return settings_.Settings(
        model=args.model_path,
        served_model_names=[args.served_model_name] if args.served_model_name else [],
        host=args.host,
        port=args.port,
        tensor_parallel_size=args.tp_size,
        max_model_len=args.context_length,
        max_num_seqs=args.max_running_requests,
        gpu_memory_utilization=args.mem_fraction_static,
        quantization=args.quantization,
        kv_cache_dtype=args.kv_cache_dtype,
        enable_prefix_caching=not args.disable_radix_cache,
        seed=args.random_seed,
        gpu=args.sim_gpu,
        params=parse_params(args.sim_params),
        acceptance_rate=args.sim_acceptance_rate,
        kv_link_bytes_per_s=args.sim_kv_link_gbps * 1e9 / 8,
        lora_load_s=args.sim_lora_load_ms / 1000,
        default_max_tokens=args.sim_default_max_tokens,
        time_scale=args.sim_time_scale,
        engine_type="sglang",
    )


def parse_params(value: str | None) -> float | None:
    if value is None:
        return None
    text = value.strip()
    units = {"b": 1e9, "m": 1e6}
    try:
        if text[-1:].lower() in units:
            return float(text[:-1]) * units[text[-1].lower()]
        return float(text)
    except ValueError:
        raise FlagError(f"--sim-params={value!r}: expected a number like 8e9 or 70B") from None


def settings_from(args: argparse.Namespace, *, model: str | None = None) -> settings_.Settings:
    """Settings from parsed engine flags (ValueError/FlagError naming the bad flag)."""
    served = args.served_model_name or [None]
    name = model or getattr(args, "model_tag", None) or served[0]
    if not name:
        raise FlagError("a model is required: frontier-sim serve MODEL")
    try:
        spec, transfer, events = (
            settings_.parse_json_flag(flag, value) if value else None
            for flag, value in (
                ("--speculative-config", args.speculative_config),
                ("--kv-transfer-config", args.kv_transfer_config),
                ("--kv-events-config", args.kv_events_config),
            )
        )
    except ValueError as e:
        raise FlagError(str(e)) from None
    table = vllm_flags.table()
    if args.quantization is not None and args.quantization not in table.quantization_methods:
        raise FlagError(f"--quantization={args.quantization!r} is refused by vLLM {table.version}")
    method = settings_.speculative_method(spec) if spec is not None else None
    if method is not None and method not in table.speculative_methods:
        raise FlagError(
            f"--speculative-config: method {method!r} is refused by vLLM {table.version};"
            f" it runs: {', '.join(table.speculative_methods)}"
        )
    if not 0.0 <= args.sim_acceptance_rate <= 1.0:
        raise FlagError(f"--sim-acceptance-rate={args.sim_acceptance_rate}; must be in [0, 1]")
    return settings_.Settings(
        model=name,
        served_model_names=list(args.served_model_name or []),
        tensor_parallel_size=args.tensor_parallel_size,
        data_parallel_size=args.data_parallel_size,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        gpu_memory_utilization=args.gpu_memory_utilization,
        quantization=args.quantization,
        kv_cache_dtype=args.kv_cache_dtype,
        enable_prefix_caching=args.enable_prefix_caching,
        prefix_caching_hash_algo=args.prefix_caching_hash_algo,
        block_size=args.block_size,
        num_gpu_blocks_override=args.num_gpu_blocks_override,
        speculative_config=spec,
        enable_lora=args.enable_lora,
        max_loras=args.max_loras,
        lora_modules=list(args.lora_modules),
        kv_transfer_config=transfer,
        kv_events_config=events,
        seed=args.seed,
        gpu=args.sim_gpu,
        params=parse_params(args.sim_params),
        acceptance_rate=args.sim_acceptance_rate,
        kv_link_bytes_per_s=args.sim_kv_link_gbps * 1e9 / 8,
        lora_load_s=args.sim_lora_load_ms / 1000,
        default_max_tokens=args.sim_default_max_tokens,
    )


def parse_serve(argv: Sequence[str]) -> settings_.Settings:
    """`frontier-sim serve` arguments to Settings; FlagError on unknown, refused or invalid flags."""
    if any(arg.partition("=")[0] == "--model" for arg in argv):
        raise FlagError(
            "frontier-sim serve: --model is refused, as vllm serve 0.11 refuses it; give the model as the"
            " positional argument: frontier-sim serve MODEL [flags]"
        )
    parser = serve_parser()
    args, unknown = parser.parse_known_args(list(argv))
    if unknown:
        raise FlagError(
            f"frontier-sim serve: unknown flag(s) {' '.join(unknown)}; the simulator accepts the vllm serve "
            "flags Frontier renders and --sim-* (see frontier-sim serve --help)"
        )
    result = settings_from(args)
    result.host = args.host
    result.port = args.port
    result.time_scale = args.sim_time_scale
    return result
