"""Admission: which requests may be refused when the pool is full.

A request's priority comes from its InferenceObjective (header x-gateway-inference-objective names it). In
Kubernetes the protocol layer resolves objectives from the pool's InferenceObjective resources and fills
`Request.priority`; in file mode the `inference-objectives` plugin carries the table. A request with priority
below zero is *sheddable*: it is refused with 429 when every candidate endpoint is saturated, and only then.
"""

from collections.abc import Mapping
from typing import Any

from frontier_picker.scheduling import plugins, types


@plugins.register
class InferenceObjectives(plugins.Plugin):
    """Priorities of named InferenceObjectives for file mode (no Kubernetes to read them from).

    parameters.objectives is a list of {name, priority}, the InferenceObjective spec's fields.
    """

    type_name = "inference-objectives"
    kind = "admission"
    formula = "priority = objectives[x-gateway-inference-objective] else request priority; < 0 sheddable"
    intent = "admission"
    parameter_docs = {"objectives": "list of {name, priority}"}

    def __init__(self, name: str, *, priorities: Mapping[str, int]) -> None:
        super().__init__(name)
        self.priorities = dict(priorities)

    @classmethod
    def build(cls, name: str, parameters: plugins.Parameters) -> plugins.Plugin:
        raw: Any = parameters.raw("objectives", [])
        if not isinstance(raw, list):
            raise plugins.ConfigError(
                f"plugin {name!r}: parameter 'objectives' must be a list of {{name, priority}}"
            )
        priorities: dict[str, int] = {}
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping) or set(item) - {"name", "priority"} or "name" not in item:
                raise plugins.ConfigError(
                    f"plugin {name!r}: objectives[{i}] must be a mapping with 'name' and 'priority', "
                    f"got {item!r}"
                )
            priority = item.get("priority", 0)
            if isinstance(priority, bool) or not isinstance(priority, int):
                raise plugins.ConfigError(f"plugin {name!r}: objectives[{i}].priority must be an integer")
            priorities[str(item["name"])] = priority
        return cls(name, priorities=priorities)

    def priority(self, request: types.Request) -> int:
        if request.objective is not None:
            return self.priorities.get(request.objective, request.priority)
        return request.priority
