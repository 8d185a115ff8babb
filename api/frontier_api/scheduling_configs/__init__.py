"""Frontier's built-in EndpointPickerConfig texts, as data: the picker loads them, and the operator renders
the default one into every picker's ConfigMap without importing the picker.

`frontier` is the default; `gie-default` is the reference GIE endpoint picker's default scheduling;
`round-robin` is a baseline.
"""

import importlib.resources

DEFAULT = "frontier"
BUILTIN = ("frontier", "gie-default", "round-robin")


def text(name: str) -> str:
    """The YAML of built-in config `name`; ValueError naming the built-in configs when there is none."""
    if name not in BUILTIN:
        raise ValueError(f"unknown built-in config {name!r}; built-in: {', '.join(BUILTIN)}")
    return importlib.resources.files(__name__).joinpath(f"{name}.yaml").read_text()
