"""Builds the scheduler a picker runs from its EndpointPickerConfig text.

Until the plugin framework lands this knows only round-robin; `load` is the one entry point the server,
the simulator and the benchmark call, so what it returns can grow without changing them.
"""

from frontier_picker.scheduling import round_robin, types


def load(text: str | None, *, fallbacks: int = 1) -> types.Scheduler:
    """The scheduler described by an EndpointPickerConfig YAML text (None: the default)."""
    if text:
        raise ValueError("EndpointPickerConfig is not supported yet; run without --config-text/--config-file")
    return round_robin.RoundRobin(fallbacks=fallbacks)
