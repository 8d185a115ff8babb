"""Checks of a ModelTier that its CRD schema cannot express; a failure becomes `ConfigValid=False`.

The API server already enforces types, enums and the CEL rules. What is left needs more than the object
itself (the referenced InferencePool must exist and be servable) or is too costly for CEL (scanning free-form
`extraArgs` for flags a typed field owns). A failed check names the field and what is allowed, and the
operator then touches no children.
"""

import dataclasses

from frontier_api import modeltier
from frontier_operator import render_args


@dataclasses.dataclass(frozen=True, kw_only=True)
class Invalid:
    """Why a ModelTier cannot be rendered: a CamelCase reason and a message naming the field."""

    reason: str
    message: str


def check_spec(spec: modeltier.ModelTierSpec) -> Invalid | None:
    """Problems of the spec alone (None when it can be rendered)."""
    if spec.engine.type != modeltier.EngineType.VLLM:
        return Invalid(
            reason="EngineUnsupported",
            message=f"spec.engine.type {spec.engine.type.value!r} cannot be rendered yet; allowed: vllm",
        )
    for i, arg in enumerate(spec.engine.extra_args):
        flag = arg.split("=", 1)[0]
        if flag in render_args.TYPED_FLAGS:
            return Invalid(
                reason="ExtraArgConflict",
                message=f"spec.engine.extraArgs[{i}] repeats {flag}; set the typed field instead",
            )
    if not spec.roles():
        return Invalid(reason="NoRoles", message="spec has no role: set serving, or prefill and decode")
    return None
