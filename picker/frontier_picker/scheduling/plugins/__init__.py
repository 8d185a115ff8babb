"""Frontier's scheduling plugins. Importing this package registers every plugin type with the framework."""

from frontier_picker.scheduling.plugins import (
    admission,
    classifier,
    cost,
    filters,
    pd_deciders,
    pickers,
    precise_prefix,
    prefix,
    profile_handlers,
    scorers,
    tiers,
)

__all__ = [
    "admission",
    "classifier",
    "cost",
    "filters",
    "pd_deciders",
    "pickers",
    "precise_prefix",
    "prefix",
    "profile_handlers",
    "scorers",
    "tiers",
]
