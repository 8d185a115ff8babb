"""Checks of a ModelTier that its CRD schema cannot express; a failure becomes `ConfigValid=False`.

The API server already enforces types, enums and the CEL rules. What is left needs more than the object
itself (the referenced InferencePool must exist and be servable) or is too costly for CEL (reading free-form
`extraArgs` as vLLM would, by the generated flag table of the vLLM the chart runs, `frontier_api.vllm_flags`),
or depends on the engine type (an SGLang tier may set only what SGLang can do).
A failed check names the field and what is allowed, and the operator then touches no children.
"""

import dataclasses

from frontier_api import modeltier, vllm_flags
from frontier_operator import render_args


@dataclasses.dataclass(frozen=True, kw_only=True)
class Invalid:
    """Why a ModelTier cannot be rendered: a CamelCase reason and a message naming the field."""

    reason: str
    message: str


def check_spec(spec: modeltier.ModelTierSpec) -> Invalid | None:
    """Problems of the spec alone (None when it can be rendered)."""
    if spec.engine.type == modeltier.EngineType.SGLANG:
        extra = check_sglang(spec)
    else:
        extra = check_extra_args(spec.engine.extra_args)
    if extra is not None:
        return extra
    if not spec.roles():
        return Invalid(reason="NoRoles", message="spec has no role: set serving, or prefill and decode")
    return None


def _sglang_unsupported(field: str, value: str) -> Invalid:
    return Invalid(
        reason="EngineUnsupported",
        message=f"{field} {value} has no SGLang equivalent in this operator;"
        " unset it or use engine.type vllm",
    )


def check_sglang(spec: modeltier.ModelTierSpec) -> Invalid | None:
    """An `engine.type: sglang` tier: every set field must have an SGLang flag of the same meaning (the rest
    is vLLM's alone, or maps onto SGLang too loosely to render silently), and `extraArgs` must not repeat a
    flag a typed field renders. SGLang's own flag table is not vendored, so other extra flags pass as
    given."""
    engine = spec.engine
    if spec.disaggregation.enabled:
        return _sglang_unsupported("spec.disaggregation.enabled", "true")
    for field, value in (
        ("spec.engine.speculative", engine.speculative),
        ("spec.engine.lora", engine.lora),
        ("spec.engine.maxNumBatchedTokens", engine.max_num_batched_tokens),
        ("spec.engine.prefixCaching.hashAlgo", engine.prefix_caching.hash_algo),
    ):
        if value is not None:
            return _sglang_unsupported(field, "(set)")
    if engine.kv_events.enabled:
        return _sglang_unsupported("spec.engine.kvEvents.enabled", "true")
    if engine.kv_cache_dtype is not None and engine.kv_cache_dtype not in render_args.SGLANG_KV_CACHE_DTYPES:
        return _sglang_unsupported("spec.engine.kvCacheDtype", repr(engine.kv_cache_dtype.value))
    if engine.quantization is not None and engine.quantization not in render_args.SGLANG_QUANTIZATION:
        return _sglang_unsupported("spec.engine.quantization", repr(engine.quantization.value))
    for index, arg in enumerate(engine.extra_args):
        typed = render_args.SGLANG_TYPED_FLAGS.get(arg.partition("=")[0])
        if typed is not None:
            return Invalid(
                reason="ExtraArgConflict",
                message=f"spec.engine.extraArgs[{index}] {arg} repeats what {typed} renders;"
                " set that field instead",
            )
    return None


def check_extra_args(extra_args: list[str]) -> Invalid | None:
    """`spec.engine.extraArgs` as vLLM reads them: no unknown flag or refused value, no positional argument
    and no flag a typed field renders, whichever spelling (`-tp`, `--tensor_parallel_size=2`)."""
    flags = vllm_flags.table()
    try:
        parsed = vllm_flags.parse(extra_args, flags)
    except vllm_flags.ArgError as e:
        return Invalid(reason="ExtraArgInvalid", message=f"spec.engine.extraArgs[{e.index}]: {e}")
    if parsed.positionals:
        index, text = parsed.positionals[0]
        return Invalid(
            reason="ExtraArgInvalid",
            message=f"spec.engine.extraArgs[{index}] {text!r} is no flag's value;"
            " the model is spec.model.source",
        )
    for arg in parsed.args:
        field = render_args.TYPED_FLAGS.get(arg.option.name)
        if field is not None:
            spelled = (
                arg.written if arg.written == arg.option.name else f"{arg.written} (= {arg.option.name})"
            )
            return Invalid(
                reason="ExtraArgConflict",
                message=f"spec.engine.extraArgs[{arg.index}] {spelled} repeats what {field} renders;"
                " set that field instead",
            )
    return None
