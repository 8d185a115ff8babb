"""One scheduling cycle: the request, the snapshot, the current candidates and state shared by plugins.

A `Cycle` is one pass of the scheduler over one request. It computes once, lazily, what several plugins read:
numeric columns of the candidates' metrics as numpy arrays, and endpoint positions. Plugins share values
derived from the request (its prefix-block hashes, the prefix match per candidate, a cost prediction)
through typed `StateKey`s: the plugin that writes a value owns its key, and readers import it from there. A
key made with `per_candidates=True` names a value that depends on the candidate set; it is dropped whenever
a filter or a new profile changes the candidates.
"""

import operator
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar, cast

import numpy as np

from frontier_picker import endpoints
from frontier_picker.scheduling import types

T = TypeVar("T")


class StateKey(Generic[T]):
    """Names one value of type T in a cycle's state; `owner` is the plugin (or module) that writes it."""

    __slots__ = ("owner", "per_candidates")

    def __init__(self, owner: str, *, per_candidates: bool = False) -> None:
        self.owner = owner
        self.per_candidates = per_candidates

    def __repr__(self) -> str:
        return f"StateKey({self.owner!r})"


_COLUMNS: dict[str, Callable[[endpoints.EndpointState], float]] = {
    "waiting": operator.attrgetter("metrics.waiting"),
    "running": operator.attrgetter("metrics.running"),
    "kv": operator.attrgetter("metrics.kv_usage"),
    "updated_at": operator.attrgetter("metrics.updated_at"),
    "in_flight": operator.attrgetter("load.in_flight"),
    "in_flight_prompt_tokens": operator.attrgetter("load.in_flight_prompt_tokens"),
    "in_flight_decode_tokens": operator.attrgetter("load.in_flight_decode_tokens"),
    "kv_capacity_tokens": lambda s: (s.metrics.num_gpu_blocks or 0) * (s.metrics.block_size or 0),
}


class Cycle:
    """One scheduling pass: the request, the snapshot, the current candidates and values derived from them.

    `chosen` maps the endpoint keys of the decision (destination, fallbacks, prefill) to their states once
    the decision is made, for plugins that learn from it.
    """

    __slots__ = (
        "_candidates",
        "_columns",
        "_positions",
        "_state",
        "chosen",
        "now",
        "request",
        "rng",
        "snapshot",
    )

    def __init__(
        self, request: types.Request, snapshot: endpoints.Snapshot, *, rng: np.random.Generator
    ) -> None:
        self.request = request
        self.snapshot = snapshot
        self.now = snapshot.now
        self.rng = rng
        self.chosen: dict[str, endpoints.EndpointState] = {}
        self._state: dict[StateKey[Any], Any] = {}
        # Never copied: label filters recognise the datastore's sequence and each other's results by identity.
        self._candidates: Sequence[endpoints.EndpointState] = snapshot.endpoints
        self._columns: dict[str, np.ndarray] = {}
        self._positions: dict[str, int] | None = None

    @property
    def candidates(self) -> Sequence[endpoints.EndpointState]:
        return self._candidates

    @candidates.setter
    def candidates(self, value: Sequence[endpoints.EndpointState]) -> None:
        self._candidates = value
        self._columns = {}
        self._positions = None
        for key in [key for key in self._state if key.per_candidates]:
            del self._state[key]

    def read(self, key: StateKey[T]) -> T | None:
        """The value under `key`, or None when no plugin wrote it in this cycle."""
        return cast("T | None", self._state.get(key))

    def write(self, key: StateKey[T], value: T) -> None:
        """Store `value` under `key` for the rest of the cycle (or until the candidates change)."""
        self._state[key] = value

    def column(self, name: str) -> np.ndarray:
        """A float64 array of one numeric field over the candidates, computed once per candidate set."""
        array = self._columns.get(name)
        if array is None:
            getter = _COLUMNS[name]
            array = np.fromiter(map(getter, self._candidates), dtype=np.float64, count=len(self._candidates))
            self._columns[name] = array
        return array

    def positions(self) -> dict[str, int]:
        """Endpoint key -> index into `candidates`."""
        if self._positions is None:
            self._positions = {state.endpoint.key: i for i, state in enumerate(self._candidates)}
        return self._positions

    def fresh(self, staleness_s: float) -> np.ndarray:
        """Boolean array: the candidate's metrics are younger than `staleness_s`."""
        return (self.now - self.column("updated_at")) < staleness_s
