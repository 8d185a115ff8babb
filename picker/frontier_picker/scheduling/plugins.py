"""The plugin framework: extension points, the registry of plugin types, and the per-request scheduling cycle.

As in the GIE endpoint picker, a scheduling profile runs *filters* (drop endpoints that must not get the
request), then *scorers* (each gives every remaining endpoint a score in [0, 1], combined by weight), then a
*picker* (turns the weighted scores into a primary endpoint and fallbacks). Each plugin type is registered
under its GIE-style type string and built from `(name, parameters)` by its class's `build`.

Plugins declare the data they consume (`consumes`) and produce (`produces`). The datastore and the scraper
always produce `metrics`, `load` and `labels`; anything else (the prefix index) must come from a configured
plugin, so a config that asks for data nobody produces fails when it is loaded, not on the first request.

A `Cycle` is one scheduling pass over one request. It holds the candidates and computes, once and lazily,
what several plugins read: numeric columns of the candidates' metrics as numpy arrays, and named derived
values (the request's prefix-block hashes, the prefix match per candidate).
"""

import dataclasses
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np

from frontier_picker import endpoints
from frontier_picker.scheduling import types

ALWAYS_PRODUCED = frozenset({"metrics", "load", "labels"})


class ConfigError(ValueError):
    """An EndpointPickerConfig that cannot be built; the message names the field and what is allowed."""


class Parameters:
    """A plugin's `parameters` mapping, read by type; keys never read are reported as unknown fields."""

    def __init__(self, owner: str, raw: Mapping[str, Any] | None) -> None:
        if raw is not None and not isinstance(raw, Mapping):
            raise ConfigError(f"plugin {owner!r}: parameters must be a mapping, got {type(raw).__name__}")
        self._owner = owner
        self._raw = dict(raw or {})
        self._read: set[str] = set()

    def _get(self, key: str, default: Any) -> Any:
        self._read.add(key)
        return self._raw.get(key, default)

    def number(self, key: str, default: float, *, minimum: float | None = None) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"plugin {self._owner!r}: parameter {key!r} must be a number, got {value!r}")
        if minimum is not None and value < minimum:
            raise ConfigError(
                f"plugin {self._owner!r}: parameter {key!r} must be >= {minimum}, got {value!r}"
            )
        return float(value)

    def integer(self, key: str, default: int, *, minimum: int | None = None) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"plugin {self._owner!r}: parameter {key!r} must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise ConfigError(
                f"plugin {self._owner!r}: parameter {key!r} must be >= {minimum}, got {value!r}"
            )
        return value

    def text(self, key: str, default: str, *, allowed: Iterable[str] | None = None) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise ConfigError(f"plugin {self._owner!r}: parameter {key!r} must be a string, got {value!r}")
        if allowed is not None and value not in set(allowed):
            choices = ", ".join(sorted(allowed))
            raise ConfigError(f"plugin {self._owner!r}: parameter {key!r} is {value!r}; allowed: {choices}")
        return value

    def raw(self, key: str, default: Any) -> Any:
        return self._get(key, default)

    def finish(self) -> None:
        """Raise for every parameter the plugin does not know."""
        unknown = sorted(set(self._raw) - self._read)
        if unknown:
            known = ", ".join(sorted(self._read)) or "none"
            raise ConfigError(f"plugin {self._owner!r}: unknown parameter {unknown[0]!r}; known: {known}")


class Plugin:
    """Base of every plugin: a type string, an instance name, and the self-description the docs table uses."""

    type_name: ClassVar[str]
    kind: ClassVar[str]  # filter | scorer | picker | handler | data
    formula: ClassVar[str]
    intent: ClassVar[str]
    consumes: ClassVar[frozenset[str]] = frozenset()
    produces: ClassVar[frozenset[str]] = frozenset()
    parameter_docs: ClassVar[Mapping[str, str]] = {}

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def build(cls, name: str, parameters: Parameters) -> "Plugin":
        parameters.finish()
        return cls(name)

    def on_decision(self, cycle: "Cycle", decision: types.Decision) -> None:
        """Learn from the decision just made (the picker's own choices); most plugins learn nothing."""

    def on_completion(
        self, request: types.Request, decision: types.Decision, completion: types.Completion
    ) -> None:
        """Learn from a finished request; most plugins learn nothing."""


class Filter(Plugin):
    kind = "filter"

    def filter(
        self, cycle: "Cycle", candidates: Sequence[endpoints.EndpointState]
    ) -> Sequence[endpoints.EndpointState]:
        """The candidates that may get the request; never mutates `candidates`."""
        raise NotImplementedError


class Scorer(Plugin):
    kind = "scorer"

    def score(self, cycle: "Cycle") -> np.ndarray:
        """One float64 in [0, 1] per candidate of `cycle`, higher is better."""
        raise NotImplementedError


class Picker(Plugin):
    kind = "picker"

    def pick(self, cycle: "Cycle", scores: np.ndarray, count: int) -> list[int]:
        """Indexes into `cycle.candidates`, primary first, at most `count`."""
        raise NotImplementedError


_REGISTRY: dict[str, type[Plugin]] = {}
P = TypeVar("P", bound=type[Plugin])


def register(cls: P) -> P:
    """Class decorator: make `cls` buildable from configs under `cls.type_name`."""
    if cls.type_name in _REGISTRY:
        raise RuntimeError(f"plugin type {cls.type_name!r} registered twice")
    _REGISTRY[cls.type_name] = cls
    return cls


def registered() -> Mapping[str, type[Plugin]]:
    return dict(_REGISTRY)


def create(type_name: str, name: str, parameters: Mapping[str, Any] | None) -> Plugin:
    cls = _REGISTRY.get(type_name)
    if cls is None:
        known = ", ".join(sorted(_REGISTRY))
        raise ConfigError(f"plugin {name!r}: unknown type {type_name!r}; known types: {known}")
    params = Parameters(name, parameters)
    plugin = cls.build(name, params)
    params.finish()
    return plugin


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
    """One scheduling pass: the request, the snapshot, the current candidates and values derived from them."""

    __slots__ = ("_candidates", "_columns", "_positions", "derived", "now", "request", "rng", "snapshot")

    def __init__(
        self, request: types.Request, snapshot: endpoints.Snapshot, *, rng: np.random.Generator
    ) -> None:
        self.request = request
        self.snapshot = snapshot
        self.now = snapshot.now
        self.rng = rng
        self.derived: dict[str, Any] = {}  # request-level values shared by plugins (prefix hashes, ...)
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
        self.derived.pop("prefix_matched", None)

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


def min_max_inverse(values: np.ndarray) -> np.ndarray:
    """(max - x) / (max - min): 1 for the smallest value, 0 for the largest, all 1 when all are equal."""
    if values.size == 0:
        return values
    low = values.min()
    high = values.max()
    if high == low:
        return np.ones_like(values)
    return (high - values) / (high - low)


@dataclasses.dataclass(frozen=True, slots=True)
class WeightedScorer:
    scorer: Scorer
    weight: float
