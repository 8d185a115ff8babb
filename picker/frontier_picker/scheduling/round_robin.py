"""Round-robin over the endpoints of the snapshot: the simplest scheduler, and a benchmark baseline."""

import itertools

from frontier_picker import endpoints
from frontier_picker.scheduling import types


class RoundRobin:
    """Cycle through endpoints in snapshot order; fallbacks are the next ones in the cycle."""

    def __init__(self, *, fallbacks: int = 1) -> None:
        self._counter = itertools.count()
        self._fallbacks = fallbacks

    def schedule(self, request: types.Request, snapshot: endpoints.Snapshot) -> types.Decision:
        states = snapshot.endpoints
        if not states:
            raise types.Rejection(503, "no ready endpoint")
        start = next(self._counter) % len(states)
        count = min(len(states), 1 + self._fallbacks)
        chosen = [states[(start + i) % len(states)].endpoint.key for i in range(count)]
        return types.Decision(endpoints=chosen, profile="round-robin")

    def on_completion(
        self, request: types.Request, decision: types.Decision, completion: types.Completion
    ) -> None:
        """Round-robin learns nothing."""
