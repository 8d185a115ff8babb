"""The extension points of the scheduling framework, and the registry that builds plugins by type.

As in the GIE endpoint picker, a scheduling *profile* runs *filters* (drop endpoints that must not get the
request), then *scorers* (each gives every remaining endpoint a score in [0, 1], combined by weight), then a
*picker* (turns the weighted scores into a primary endpoint and fallbacks). A *profile handler* decides
which profiles run for a request and turns their results into the decision (one profile; or decode, then
prefill when disaggregating). *Admitters* run before any profile and may refuse the request or fill in what
the scheduler reads (its priority). A *tier router* turns a request for a virtual model into the model tiers
to try, best first. A *data source* feeds other plugins from outside the request path (the engines' KV
events): the server runs it as a task for as long as it serves. Any plugin may learn from decisions and
completions, and share what it learned from a decision with the same plugin in peer pickers (`share` /
`learn_shared`: workers of one pod, replicas of one pool), so every peer's index and ledger cover the whole
pool's traffic.

Each plugin type is registered under its GIE-style type string and built by its class's `build(name,
parameters, handle)`. The *handle* is how a plugin finds its collaborators: another plugin by name, the
plugin that produces some data (`producer("prefix-index")`), or a new plugin of a type it knows. The
framework itself names no concrete plugin type.

Plugins declare the data they consume (`consumes`) and produce (`produces`). The datastore and the scraper
always produce `metrics`, `load` and `labels`; anything else (the prefix index) must come from a configured
plugin, so a config that asks for data nobody produces fails when it is loaded, not on the first request.
"""

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import numpy as np

from frontier_picker import endpoints
from frontier_picker.scheduling import types
from frontier_picker.scheduling.framework import saturation
from frontier_picker.scheduling.framework.errors import ConfigError as ConfigError  # re-exported for plugins

if TYPE_CHECKING:
    from frontier_picker.scheduling.framework import cycles

ALWAYS_PRODUCED = frozenset({"metrics", "load", "labels"})


@dataclasses.dataclass(frozen=True, slots=True)
class Param:
    """One plugin parameter, declared once: its config key, default (whose type is the parameter's type),
    what it means, and its lower bound. The parser (`Parameters.read`) and the docs table both use it."""

    key: str
    default: bool | float | int | str
    doc: str
    minimum: float | None = None
    allowed: tuple[str, ...] = ()  # for a text parameter: its only values (empty: any)


def documented(params: Iterable[Param]) -> dict[str, str]:
    """`parameter_docs` of a plugin from its declared parameters: doc and default."""
    return {param.key: f"{param.doc}{_shown(param.default)}" for param in params}


def _shown(value: bool | float | int | str) -> str:
    if value == "":
        return ""  # an empty default (a name to look up) says nothing
    return f" ({str(value).lower() if isinstance(value, bool) else value})"


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
        return int(value)

    def text(self, key: str, default: str, *, allowed: Iterable[str] | None = None) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise ConfigError(f"plugin {self._owner!r}: parameter {key!r} must be a string, got {value!r}")
        if allowed is not None and value not in set(allowed):
            choices = ", ".join(sorted(allowed))
            raise ConfigError(f"plugin {self._owner!r}: parameter {key!r} is {value!r}; allowed: {choices}")
        return value

    def read(self, param: Param) -> Any:
        """The value of declared parameter `param`, checked against its default's type and its minimum."""
        if isinstance(param.default, bool):
            value = self._get(param.key, param.default)
            if not isinstance(value, bool):
                raise ConfigError(
                    f"plugin {self._owner!r}: parameter {param.key!r} must be true or false, got {value!r}"
                )
            return value
        if isinstance(param.default, str):
            return self.text(param.key, param.default, allowed=param.allowed or None)
        if isinstance(param.default, int) and not isinstance(param.default, bool):
            minimum = None if param.minimum is None else int(param.minimum)
            return self.integer(param.key, param.default, minimum=minimum)
        return self.number(param.key, float(param.default), minimum=param.minimum)

    def raw(self, key: str, default: Any) -> Any:
        return self._get(key, default)

    def finish(self) -> None:
        """Raise for every parameter the plugin does not know."""
        unknown = sorted(set(self._raw) - self._read)
        if unknown:
            known = ", ".join(sorted(self._read)) or "none"
            raise ConfigError(f"plugin {self._owner!r}: unknown parameter {unknown[0]!r}; known: {known}")


class Handle(Protocol):
    """What a plugin's factory may ask of the config being loaded."""

    @property
    def saturation(self) -> saturation.Thresholds:
        """The config's `saturationDetector` (GIE defaults when absent)."""
        ...

    @property
    def fallbacks(self) -> int:
        """Endpoints the destination profile returns after the primary."""
        ...

    def plugin(self, name: str) -> "Plugin":
        """The configured plugin named `name` (built now if it was not yet); ConfigError if none."""
        ...

    def producer(self, data: str) -> "Plugin | None":
        """The first configured plugin that produces `data`, or None when none does."""
        ...

    def create(self, type_name: str, name: str, parameters: Mapping[str, Any] | None = None) -> "Plugin":
        """A new plugin of a registered type that the config does not list (a plugin's own helper)."""
        ...

    def profile_names(self) -> Sequence[str]:
        """The config's scheduling profiles, in order."""
        ...


class Plugin:
    """Base of every plugin: a type string, an instance name, and the self-description the docs table uses."""

    type_name: ClassVar[str]
    kind: ClassVar[str]  # filter | scorer | picker | handler | decider | admission | tier-router | ...
    formula: ClassVar[str]
    intent: ClassVar[str]
    consumes: ClassVar[frozenset[str]] = frozenset()
    produces: ClassVar[frozenset[str]] = frozenset()
    parameter_docs: ClassVar[Mapping[str, str]] = {}

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def build(cls, name: str, parameters: Parameters, handle: Handle) -> "Plugin":
        """The plugin for one config entry; reads its parameters, and its collaborators through `handle`."""
        return cls(name)

    def preparation(self, request: types.Request) -> Callable[[], None] | None:
        """Work for `request` too costly for the event loop (a long prompt's tokenization), which the
        ext_proc server runs in a worker thread before scheduling; None when there is none. The work keeps
        its result in `request.prepared` under the plugin's name; scheduling without it (the virtual-time
        cluster) must compute the same inline."""
        return None

    def on_decision(self, cycle: "cycles.Cycle", decision: types.Decision) -> None:
        """Learn from the decision just made (the picker's own choices); most plugins learn nothing."""

    def on_completion(
        self, request: types.Request, decision: types.Decision, completion: types.Completion
    ) -> None:
        """Learn from a finished request; most plugins learn nothing."""

    def share(self, cycle: "cycles.Cycle", decision: types.Decision) -> bytes | None:
        """What a peer picker needs to learn `decision` as `on_decision` just did, in this plugin's own
        encoding (None: nothing). Peers run the same config, so the same-named plugin there reads it."""
        return None

    def learn_shared(self, data: bytes, shared: "types.SharedDecision") -> None:
        """Learn a peer's decision from what this plugin's twin there `share`d."""


class PluginTimer(Protocol):
    """Where the scheduler reports how long each plugin call took (the picker's
    `inference_extension_plugin_duration_seconds`); a scheduler without one times nothing."""

    def record(self, extension_point: str, plugin: Plugin, seconds: float) -> None:
        """One call of `plugin` at `extension_point` (GIE's names: `Filter`, `Scorer`, ...) took `seconds`."""
        ...


class Filter(Plugin):
    """Drops candidates that must not get the request."""

    kind = "filter"

    def filter(
        self, cycle: "cycles.Cycle", candidates: Sequence[endpoints.EndpointState]
    ) -> Sequence[endpoints.EndpointState]:
        """The candidates that may get the request; never mutates `candidates`."""
        raise NotImplementedError


class Scorer(Plugin):
    """Scores every candidate in [0, 1]."""

    kind = "scorer"

    def score(self, cycle: "cycles.Cycle") -> np.ndarray:
        """One float64 in [0, 1] per candidate of `cycle`, higher is better."""
        raise NotImplementedError


class Picker(Plugin):
    """Turns weighted scores into a primary endpoint and fallbacks."""

    kind = "picker"

    def pick(self, cycle: "cycles.Cycle", scores: np.ndarray, count: int) -> list[int]:
        """Indexes into `cycle.candidates`, primary first, at most `count`."""
        raise NotImplementedError


class ProfileHandler(Plugin):
    """Chooses which profiles run for a request and makes their results the decision (GIE's `Pick` and
    `ProcessResults`)."""

    kind = "handler"

    def profiles(self) -> Sequence[str]:
        """The profiles this handler may run (checked against the config when it is loaded)."""
        raise NotImplementedError

    def pick(
        self, cycle: "cycles.Cycle", results: Mapping[str, "ProfileResult"]
    ) -> Sequence[tuple[str, int]]:
        """The profiles to run next, each with how many endpoints it should return; empty when done."""
        raise NotImplementedError

    def process_results(
        self, cycle: "cycles.Cycle", results: Mapping[str, "ProfileResult"]
    ) -> types.Decision:
        """The decision from the profiles' results; raise `types.Rejection` when there is none."""
        raise NotImplementedError


class Admitter(Plugin):
    """Runs before any profile: refuses the request (raise `types.Rejection`) or prepares it."""

    kind = "admission"

    def admit(self, request: types.Request, snapshot: endpoints.Snapshot) -> None:
        """Raise `types.Rejection` to refuse `request`; may set fields the scheduler reads (priority)."""
        raise NotImplementedError

    def prepare(self, request: types.Request) -> None:
        """Set the fields flow control reads (priority) before the request is queued; most set none."""


class DataSource(Plugin):
    """Produces data from outside the request path (engine events) that other plugins read."""

    kind = "data-source"

    async def run(self, states: Callable[[], Sequence[endpoints.EndpointState]]) -> None:
        """Feed the plugin's data until cancelled; `states()` is the pool's current endpoints. I/O lives
        here (sockets, tasks); what it feeds is the plugin's pure state."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True, slots=True)
class TierOption:
    """One tier to try for a request: the served model it stands for and why it is in the plan."""

    model: str
    reason: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TierPlan:
    """The tiers to try for a request naming `virtual_model`, best first, and what the classifier said."""

    virtual_model: str
    options: Sequence[TierOption]
    category: str = ""
    classify_s: float = 0.0


class TierRouter(Plugin):
    """Runs before the profiles for a request naming a *virtual model* (a set of model tiers): says which
    tiers to try, best first; the scheduler runs the profiles once per tier until `holds` accepts one."""

    kind = "tier-router"

    def plan(self, cycle: "cycles.Cycle") -> TierPlan | None:
        """The tiers to try; None when the request names a served model (it routes as it is). Raise
        `types.Rejection` for a model nothing serves."""
        raise NotImplementedError

    def holds(self, cycle: "cycles.Cycle", decision: types.Decision) -> bool:
        """Whether `decision`, made for the tier now in `cycle.request.target_model`, stands; False spills
        the request to the plan's next tier."""
        raise NotImplementedError

    def model_names(self) -> Sequence[str]:
        """The virtual model names this router answers for (listed in `GET /v1/models`)."""
        raise NotImplementedError


class ProfileResult:
    """What one profile chose: endpoints best first, with their weighted scores."""

    __slots__ = ("chosen", "scores")

    def __init__(self, chosen: list[endpoints.EndpointState], scores: dict[str, float]) -> None:
        self.chosen = chosen
        self.scores = scores


_REGISTRY: dict[str, type[Plugin]] = {}
P = TypeVar("P", bound=type[Plugin])


def register(cls: P) -> P:
    """Class decorator: make `cls` buildable from configs under `cls.type_name`."""
    if cls.type_name in _REGISTRY:
        raise RuntimeError(f"plugin type {cls.type_name!r} registered twice")
    _REGISTRY[cls.type_name] = cls
    return cls


def registered() -> Mapping[str, type[Plugin]]:
    """Every registered plugin type, by type string."""
    return dict(_REGISTRY)


def plugin_class(type_name: str, *, name: str) -> type[Plugin]:
    """The class registered as `type_name`; ConfigError naming plugin `name` and the known types."""
    cls = _REGISTRY.get(type_name)
    if cls is None:
        known = ", ".join(sorted(_REGISTRY))
        raise ConfigError(f"plugin {name!r}: unknown type {type_name!r}; known types: {known}")
    return cls


def create(type_name: str, name: str, parameters: Mapping[str, Any] | None, handle: Handle) -> Plugin:
    """Build plugin `name` of `type_name`; every parameter must be one the plugin reads."""
    cls = plugin_class(type_name, name=name)
    params = Parameters(name, parameters)
    plugin = cls.build(name, params, handle)
    params.finish()
    return plugin
