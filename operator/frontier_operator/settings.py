"""Operator settings: what the operator renders that a ModelTier does not say (images, commands, tolerations).

Settings come from the command line or `FRONTIER_*` environment variables (the Helm chart sets them). The same
renderers serve real GPUs and local tests: set the engine command to `frontier-sim serve` (it accepts the
`vllm serve` arguments) and the engine image to one that carries Frontier. An `engine.type: sglang` tier gets
the SGLang image and command (`frontier-sim sglang` accepts SGLang's `launch_server` arguments).
"""

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, Final

from frontier_api import modeltier, names

FIELD_MANAGER: Final = "frontier-operator"
DEFAULT_ENGINE_IMAGE: Final = "vllm/vllm-openai:v0.11.0"
DEFAULT_SGLANG_IMAGE: Final = "lmsysorg/sglang:v0.5.5"
DEFAULT_PICKER_IMAGE: Final = "ghcr.io/frontier-dev/frontier:0.1.0"
GPU_TOLERATION: Final = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the renderers need beyond the ModelTier and its InferencePool."""

    engine_image: str = DEFAULT_ENGINE_IMAGE
    engine_command: tuple[str, ...] = ("vllm", "serve")
    sglang_image: str = DEFAULT_SGLANG_IMAGE
    sglang_command: tuple[str, ...] = ("python3", "-m", "sglang.launch_server")
    picker_image: str = DEFAULT_PICKER_IMAGE
    picker_command: tuple[str, ...] = ("frontier-picker",)
    # The decode pods' routing sidecar, from the picker's image (one image carries every entry point).
    sidecar_command: tuple[str, ...] = ("frontier-sidecar",)
    picker_replicas: int = 1
    picker_workers: int = 1  # processes per picker pod (its --workers; the pod requests a core each)
    field_manager: str = FIELD_MANAGER
    gpu_tolerations: tuple[Mapping[str, Any], ...] = (GPU_TOLERATION,)
    # The node label `accelerator.type` is matched against: GKE's, or GPU Feature Discovery's
    # `nvidia.com/gpu.product` on other clusters (one labelling scheme per cluster).
    accelerator_label: str = names.GKE_ACCELERATOR_LABEL
    # EndpointPickerConfig text for every pool's generated picker ConfigMap (None: the picker's built-in
    # `frontier` config).
    picker_config: str | None = None
    # Seconds between full resyncs (retries failed reconciles, repairs drift nobody watched).
    resync_seconds: float = 300.0

    def image_of(self, engine: modeltier.EngineType) -> str:
        """The default image of an engine type (a tier's `spec.engine.image` overrides it)."""
        return self.sglang_image if engine == modeltier.EngineType.SGLANG else self.engine_image

    def command_of(self, engine: modeltier.EngineType) -> tuple[str, ...]:
        """The container command of an engine type."""
        return self.sglang_command if engine == modeltier.EngineType.SGLANG else self.engine_command


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings with `FRONTIER_ENGINE_IMAGE`, `FRONTIER_ENGINE_COMMAND` (space-separated),
    `FRONTIER_SGLANG_IMAGE`, `FRONTIER_SGLANG_COMMAND` (space-separated),
    `FRONTIER_PICKER_IMAGE`, `FRONTIER_PICKER_COMMAND`, `FRONTIER_PICKER_REPLICAS`, `FRONTIER_PICKER_WORKERS`,
    `FRONTIER_ACCELERATOR_LABEL` and `FRONTIER_RESYNC_SECONDS` applied."""
    env = os.environ if environ is None else environ
    base = Settings()
    return dataclasses.replace(
        base,
        engine_image=env.get("FRONTIER_ENGINE_IMAGE", base.engine_image),
        engine_command=tuple(env["FRONTIER_ENGINE_COMMAND"].split())
        if env.get("FRONTIER_ENGINE_COMMAND")
        else base.engine_command,
        sglang_image=env.get("FRONTIER_SGLANG_IMAGE", base.sglang_image),
        sglang_command=tuple(env["FRONTIER_SGLANG_COMMAND"].split())
        if env.get("FRONTIER_SGLANG_COMMAND")
        else base.sglang_command,
        picker_image=env.get("FRONTIER_PICKER_IMAGE", base.picker_image),
        picker_command=tuple(env["FRONTIER_PICKER_COMMAND"].split())
        if env.get("FRONTIER_PICKER_COMMAND")
        else base.picker_command,
        picker_replicas=int(env.get("FRONTIER_PICKER_REPLICAS", base.picker_replicas)),
        picker_workers=int(env.get("FRONTIER_PICKER_WORKERS", base.picker_workers)),
        accelerator_label=env.get("FRONTIER_ACCELERATOR_LABEL") or base.accelerator_label,
        resync_seconds=float(env.get("FRONTIER_RESYNC_SECONDS", base.resync_seconds)),
    )
