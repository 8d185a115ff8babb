"""The parts of a GIE InferencePool (`inference.networking.k8s.io/v1`) the operator renders from.

The pool is GIE's resource, not ours: we read `spec.selector.matchLabels` (the labels every tier pod must
carry), `spec.targetPorts[0].number` (where the engine listens) and `spec.endpointPickerRef` (the name and
port of the picker Service the gateway calls). Its schema is never copied or extended.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any, Final

from frontier_api import names

# Annotation on the pool naming a ConfigMap (key config.yaml) that replaces the generated picker config.
PICKER_CONFIG_ANNOTATION: Final = "inference.frontier.dev/picker-config"
# Annotation on the pool, "true" or "false": whether its picker runs standalone (with an Envoy sidecar that
# serves clients itself), overriding the operator's default (`--picker-standalone`).
STANDALONE_ANNOTATION: Final = "inference.frontier.dev/standalone"
# The pool annotations the operator renders from: a change to one re-renders the pool's picker.
ANNOTATIONS: Final = (PICKER_CONFIG_ANNOTATION, STANDALONE_ANNOTATION)
DEFAULT_PICKER_PORT: Final = names.EXT_PROC_PORT


class PoolError(ValueError):
    """The pool cannot be served; the message names the field."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Pool:
    """An InferencePool as the renderers see it."""

    name: str
    namespace: str
    uid: str
    selector: Mapping[str, str]
    target_port: int
    picker_name: str
    picker_port: int
    picker_config_override: str | None = None
    standalone: bool | None = None  # the pool's annotation; None: the operator's default


def from_object(obj: Mapping[str, Any]) -> Pool:
    """A Pool from the API object; raises PoolError for pools the operator cannot serve."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    name = str(meta.get("name", ""))
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    if not selector:
        raise PoolError(f"InferencePool {name}: spec.selector.matchLabels is empty")
    ports = spec.get("targetPorts") or []
    if not ports or "number" not in ports[0]:
        raise PoolError(f"InferencePool {name}: spec.targetPorts[0].number is missing")
    ref = spec.get("endpointPickerRef") or {}
    if not ref.get("name"):
        raise PoolError(f"InferencePool {name}: spec.endpointPickerRef.name is missing")
    kind = ref.get("kind", "Service")
    if kind != "Service" or ref.get("group", "") not in ("", "core"):
        raise PoolError(f"InferencePool {name}: spec.endpointPickerRef must name a core Service, got {kind}")
    port = (ref.get("port") or {}).get("number", DEFAULT_PICKER_PORT)
    annotations = meta.get("annotations") or {}
    standalone = annotations.get(STANDALONE_ANNOTATION)
    if standalone is not None and standalone not in ("true", "false"):
        raise PoolError(
            f"InferencePool {name}: annotation {STANDALONE_ANNOTATION} is {standalone!r};"
            " allowed: true, false"
        )
    return Pool(
        name=name,
        namespace=str(meta.get("namespace", "")),
        uid=str(meta.get("uid", "")),
        selector={str(k): str(v) for k, v in selector.items()},
        target_port=int(ports[0]["number"]),
        picker_name=str(ref["name"]),
        picker_port=int(port),
        picker_config_override=annotations.get(PICKER_CONFIG_ANNOTATION),
        standalone=None if standalone is None else standalone == "true",
    )
