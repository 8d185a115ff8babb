"""Admission: which requests may be refused when the pool is full.

A request's priority comes from its InferenceObjective (header x-gateway-inference-objective names it). In
file mode the `inference-objectives` admitter carries the table and sets `Request.priority` from it. A
request with priority below zero is *sheddable*: `priority-shedding` refuses it with 429 when every endpoint
is saturated (the config's `saturationDetector`), and only then. The built-in assembly adds
`priority-shedding` to every config, after the configured admitters.
"""

from collections.abc import Mapping
from typing import Any

from frontier_picker import endpoints
from frontier_picker.scheduling import types
from frontier_picker.scheduling.framework import plugin, saturation


@plugin.register
class InferenceObjectives(plugin.Admitter):
    """Priorities of named InferenceObjectives for file mode (no Kubernetes to read them from).

    parameters.objectives is a list of {name, priority}, the InferenceObjective spec's fields.
    """

    type_name = "inference-objectives"
    formula = "priority = objectives[x-gateway-inference-objective] else request priority; < 0 sheddable"
    intent = "admission"
    parameter_docs = {"objectives": "list of {name, priority}"}

    def __init__(self, name: str, *, priorities: Mapping[str, int]) -> None:
        super().__init__(name)
        self.priorities = dict(priorities)

    @classmethod
    def build(cls, name: str, parameters: plugin.Parameters, handle: plugin.Handle) -> plugin.Plugin:
        raw: Any = parameters.raw("objectives", [])
        if not isinstance(raw, list):
            raise plugin.ConfigError(
                f"plugin {name!r}: parameter 'objectives' must be a list of {{name, priority}}"
            )
        priorities: dict[str, int] = {}
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping) or set(item) - {"name", "priority"} or "name" not in item:
                raise plugin.ConfigError(
                    f"plugin {name!r}: objectives[{i}] must be a mapping with 'name' and 'priority', "
                    f"got {item!r}"
                )
            priority = item.get("priority", 0)
            if isinstance(priority, bool) or not isinstance(priority, int):
                raise plugin.ConfigError(f"plugin {name!r}: objectives[{i}].priority must be an integer")
            priorities[str(item["name"])] = priority
        return cls(name, priorities=priorities)

    def admit(self, request: types.Request, snapshot: endpoints.Snapshot) -> None:
        self.prepare(request)

    def prepare(self, request: types.Request) -> None:
        if request.objective is not None:
            request.priority = self.priorities.get(request.objective, request.priority)


@plugin.register
class PriorityShedding(plugin.Admitter):
    """Refuse sheddable requests (priority < 0) with 429 while every endpoint is saturated."""

    type_name = "priority-shedding"
    formula = "429 iff priority < 0 and every endpoint has waiting >= q or kv >= k or stale metrics"
    intent = "admission"
    consumes = frozenset({"metrics"})

    def __init__(self, name: str, *, thresholds: saturation.Thresholds) -> None:
        super().__init__(name)
        self.thresholds = thresholds

    @classmethod
    def build(cls, name: str, parameters: plugin.Parameters, handle: plugin.Handle) -> plugin.Plugin:
        return cls(name, thresholds=handle.saturation)

    def admit(self, request: types.Request, snapshot: endpoints.Snapshot) -> None:
        if request.priority < 0 and self.thresholds.all_saturated(snapshot.endpoints, snapshot.now):
            raise types.Rejection(429, "pool saturated; request priority is sheddable (< 0)")
