"""Frontier's scheduling plugins. Importing this package registers every plugin type with the framework."""

from frontier_picker.scheduling.plugins import (
    admission,
    cost,
    filters,
    pd_deciders,
    pickers,
    prefix,
    profile_handlers,
    scorers,
)

__all__ = ["admission", "cost", "filters", "pd_deciders", "pickers", "prefix", "profile_handlers", "scorers"]
