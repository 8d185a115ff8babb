"""Builds the scheduler a picker runs from its EndpointPickerConfig text, or from a built-in config.

The text is GIE's EndpointPickerConfig YAML, so a config written for the reference endpoint picker reads the
same here (fields and checks: `framework.loader`). Built-in configs are data in
`frontier_api.scheduling_configs`: `frontier` (the default), `gie-default` (the reference EPP's default
scheduling) and `round-robin`.

This module is where the framework meets Frontier's plugins: it imports the plugin package (which registers
every type) and names the plugin types that fill what a config leaves out, as GIE's EPP does.

`load` is the one entry point of the server, the simulator and the benchmark.
"""

from collections.abc import Mapping
from typing import Any

import yaml

from frontier_api import scheduling_configs
from frontier_picker.scheduling import plugins
from frontier_picker.scheduling.framework import loader, scheduler
from frontier_picker.scheduling.framework.errors import ConfigError

DEFAULT_CONFIG = scheduling_configs.DEFAULT
BUILTIN = scheduling_configs.BUILTIN
DEFAULTS = loader.Defaults(
    picker="max-score-picker",
    handler="single-profile-handler",
    admitters=("priority-shedding",),
)
assert plugins.__all__  # imported for its side effect: every plugin type is registered


def builtin_text(name: str) -> str:
    """The YAML of a built-in config (`frontier`, `gie-default`, `round-robin`)."""
    try:
        return scheduling_configs.text(name)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def parse(text: str) -> Mapping[str, Any]:
    """The checked document of an EndpointPickerConfig YAML text; ConfigError naming what is wrong."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"EndpointPickerConfig is not valid YAML: {error}") from error
    return loader.check_document(document)


def load(
    text: str | None = None, *, builtin: str | None = None, fallbacks: int = 1, seed: int | None = None
) -> scheduler.Scheduler:
    """The scheduler described by an EndpointPickerConfig YAML text, else by built-in config `builtin`
    (default `frontier`)."""
    if text and builtin:
        raise ConfigError("give a config text or a built-in config name, not both")
    document = parse(text or builtin_text(builtin or DEFAULT_CONFIG))
    return loader.build(document, defaults=DEFAULTS, fallbacks=fallbacks, seed=seed)
