"""Builds a scheduler from a parsed EndpointPickerConfig, knowing no concrete plugin.

    apiVersion: inference.networking.x-k8s.io/v1alpha1
    kind: EndpointPickerConfig
    plugins: [{name?, type, parameters?}]            # name defaults to type
    schedulingProfiles: [{name, plugins: [{pluginRef, weight?}]}]
    saturationDetector: {queueDepthThreshold, kvCacheUtilThreshold, metricsStalenessThreshold}
    flowControl: {maxRequests, maxBytes, defaultRequestTTL, sheddableRequestTTL, maxInFlightPerEndpoint}

Every field is checked: an unknown field, plugin type or parameter, a `pluginRef` that names no plugin, or
a plugin consuming data that no configured plugin produces is an error naming it. Plugins are built on
demand, so a plugin may ask the handle for one listed after it; a cycle of such requests is an error. At
most one profile handler and one tier router may be listed.

What a config leaves out comes from `Defaults` (type strings the caller chooses): the picker of a profile
that names none, the profile handler when none is configured, and admitters that always run.
"""

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from frontier_picker.scheduling.framework import flow_control, saturation, scheduler
from frontier_picker.scheduling.framework import plugin as plugin_api
from frontier_picker.scheduling.framework.errors import ConfigError

log = logging.getLogger(__name__)

API_VERSIONS = frozenset(
    {
        "inference.networking.x-k8s.io/v1alpha1",
        "config.apix.gateway-api-inference-extension.sigs.k8s.io/v1alpha1",
    }
)
KIND = "EndpointPickerConfig"
_TOP_FIELDS = frozenset(
    {
        "apiVersion",
        "kind",
        "plugins",
        "schedulingProfiles",
        "saturationDetector",
        "flowControl",
        "featureGates",
    }
)
_PLUGIN_FIELDS = frozenset({"name", "type", "parameters"})
_PROFILE_FIELDS = frozenset({"name", "plugins"})
_REF_FIELDS = frozenset({"pluginRef", "weight"})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Defaults:
    """Plugin types filling what a config leaves out (GIE adds a max-score picker and a single-profile
    handler the same way)."""

    picker: str
    handler: str
    admitters: Sequence[str] = ()


def check_document(document: Any) -> Mapping[str, Any]:
    """`document` if it is an EndpointPickerConfig mapping with known top-level fields; else ConfigError."""
    if not isinstance(document, Mapping):
        raise ConfigError("EndpointPickerConfig must be a YAML mapping")
    _check_fields(document, _TOP_FIELDS, where="EndpointPickerConfig")
    if document.get("apiVersion") not in API_VERSIONS:
        raise ConfigError(
            f"apiVersion: {document.get('apiVersion')!r}; allowed: {', '.join(sorted(API_VERSIONS))}"
        )
    if document.get("kind") != KIND:
        raise ConfigError(f"kind: {document.get('kind')!r}; allowed: {KIND}")
    return document


def _check_fields(item: Mapping[str, Any], known: frozenset[str], *, where: str) -> None:
    unknown = sorted(str(key) for key in set(item) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}; known: {', '.join(sorted(known))}")


def _list(value: Any, *, where: str) -> Sequence[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a list, got {type(value).__name__}")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class _Spec:
    type_name: str
    parameters: Any


class _Handle:
    """The `plugin_api.Handle` of one config being loaded: builds listed plugins on first request."""

    def __init__(
        self,
        specs: Mapping[str, _Spec],
        *,
        thresholds: saturation.Thresholds,
        fallbacks: int,
        profile_names: Sequence[str],
    ) -> None:
        self._specs = specs
        self._thresholds = thresholds
        self._fallbacks = fallbacks
        self._profile_names = list(profile_names)
        self.built: dict[str, plugin_api.Plugin] = {}
        self.requested: list[plugin_api.Plugin] = []  # asked for by other plugins: they are in use
        self._building: list[str] = []

    @property
    def saturation(self) -> saturation.Thresholds:
        return self._thresholds

    @property
    def fallbacks(self) -> int:
        return self._fallbacks

    def profile_names(self) -> Sequence[str]:
        return list(self._profile_names)

    def has(self, name: str) -> bool:
        """Whether the config lists a plugin named `name`."""
        return name in self._specs

    def names(self) -> list[str]:
        """The listed plugins' names, sorted."""
        return sorted(self._specs)

    def build(self, name: str) -> plugin_api.Plugin:
        """Plugin `name` of the config, built once."""
        found = self.built.get(name)
        if found is not None:
            return found
        spec = self._specs.get(name)
        if spec is None:
            raise ConfigError(f"no plugin named {name!r}; plugins: {', '.join(self.names()) or 'none'}")
        if name in self._building:
            chain = " -> ".join([*self._building[self._building.index(name) :], name])
            raise ConfigError(f"plugins refer to each other in a cycle: {chain}")
        self._building.append(name)
        try:
            built = plugin_api.create(spec.type_name, name, spec.parameters, self)
        finally:
            self._building.pop()
        self.built[name] = built
        return built

    def plugin(self, name: str) -> plugin_api.Plugin:
        found = self.build(name)
        self.requested.append(found)
        return found

    def producer(self, data: str) -> plugin_api.Plugin | None:
        for name, spec in self._specs.items():
            if data in plugin_api.plugin_class(spec.type_name, name=name).produces:
                return self.plugin(name)
        return None

    def create(
        self, type_name: str, name: str, parameters: Mapping[str, Any] | None = None
    ) -> plugin_api.Plugin:
        created = plugin_api.create(type_name, name, parameters, self)
        self.requested.append(created)
        return created


def _specs(document: Mapping[str, Any]) -> dict[str, _Spec]:
    specs: dict[str, _Spec] = {}
    for i, raw in enumerate(_list(document.get("plugins"), where="plugins")):
        where = f"plugins[{i}]"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} must be a mapping with 'type'")
        _check_fields(raw, _PLUGIN_FIELDS, where=where)
        type_name = raw.get("type")
        if not isinstance(type_name, str) or not type_name:
            raise ConfigError(f"{where}: missing field 'type'")
        name = raw.get("name") or type_name
        if name in specs:
            raise ConfigError(f"{where}: plugin name {name!r} is used twice")
        plugin_api.plugin_class(type_name, name=name)
        specs[name] = _Spec(type_name, raw.get("parameters"))
    return specs


def _profile(index: int, raw: Any, handle: _Handle, defaults: Defaults) -> scheduler.Profile:
    where = f"schedulingProfiles[{index}]"
    name = raw["name"]
    filters: list[plugin_api.Filter] = []
    weighted: list[scheduler.WeightedScorer] = []
    picker: plugin_api.Picker | None = None
    for j, ref in enumerate(_list(raw.get("plugins"), where=f"{where}.plugins")):
        at = f"{where}.plugins[{j}]"
        if not isinstance(ref, Mapping):
            raise ConfigError(f"{at} must be a mapping with 'pluginRef'")
        _check_fields(ref, _REF_FIELDS, where=at)
        plugin_name = ref.get("pluginRef")
        if not plugin_name:
            raise ConfigError(f"{at}: missing field 'pluginRef'")
        if not handle.has(plugin_name):
            known = ", ".join(handle.names()) or "none"
            raise ConfigError(f"{at}: pluginRef {plugin_name!r} names no plugin; plugins: {known}")
        member = handle.build(plugin_name)
        weight = ref.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise ConfigError(f"{at}: weight must be a number >= 0, got {weight!r}")
        if isinstance(member, plugin_api.Filter):
            filters.append(member)
        elif isinstance(member, plugin_api.Scorer):
            weighted.append(scheduler.WeightedScorer(member, float(weight)))
        elif isinstance(member, plugin_api.Picker):
            if picker is not None:
                raise ConfigError(f"{at}: profile {name!r} has a second picker {plugin_name!r}")
            picker = member
        else:
            raise ConfigError(
                f"{at}: {plugin_name!r} is a {member.kind} plugin; list it under plugins only, "
                "not in a profile"
            )
    if picker is None:
        created = handle.create(defaults.picker, f"{name}/{defaults.picker}")
        assert isinstance(created, plugin_api.Picker), f"default picker {defaults.picker} is not a picker"
        picker = created
    return scheduler.Profile(name=name, filters=filters, scorers=weighted, picker=picker)


def _profile_specs(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    specs = _list(document.get("schedulingProfiles"), where="schedulingProfiles")
    if not specs:
        raise ConfigError("schedulingProfiles: at least one profile is required")
    seen: set[str] = set()
    for i, raw in enumerate(specs):
        where = f"schedulingProfiles[{i}]"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} must be a mapping with 'name' and 'plugins'")
        _check_fields(raw, _PROFILE_FIELDS, where=where)
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: missing field 'name'")
        if name in seen:
            raise ConfigError(f"{where}: profile name {name!r} is used twice")
        seen.add(name)
    return list(specs)


def _configured(
    kind: type[plugin_api.Plugin], handle: _Handle, specs: Mapping[str, _Spec]
) -> list[plugin_api.Plugin]:
    return [
        handle.build(name)
        for name, spec in specs.items()
        if issubclass(plugin_api.plugin_class(spec.type_name, name=name), kind)
    ]


def _check_consumed(used: Sequence[plugin_api.Plugin], specs: Mapping[str, _Spec]) -> None:
    produced: set[str] = set(plugin_api.ALWAYS_PRODUCED)
    for name, spec in specs.items():
        produced |= plugin_api.plugin_class(spec.type_name, name=name).produces
    for member in used:
        for data in sorted(member.consumes - produced):
            producers = sorted(
                cls.type_name for cls in plugin_api.registered().values() if data in cls.produces
            )
            raise ConfigError(
                f"plugin {member.name!r} ({member.type_name}) consumes {data!r}, which no configured plugin "
                f"produces; add a plugin of type {' or '.join(producers) or '(none registered)'}"
            )


def _handler(
    handle: _Handle, specs: Mapping[str, _Spec], profiles: Mapping[str, Any], defaults: Defaults
) -> plugin_api.ProfileHandler:
    handlers = _configured(plugin_api.ProfileHandler, handle, specs)
    if len(handlers) > 1:
        raise ConfigError(f"plugins: one profile handler allowed, got {', '.join(h.name for h in handlers)}")
    handler = handlers[0] if handlers else handle.create(defaults.handler, defaults.handler)
    assert isinstance(handler, plugin_api.ProfileHandler), f"default handler {defaults.handler} is not one"
    for name in handler.profiles():
        if name not in profiles:
            raise ConfigError(
                f"plugin {handler.name!r}: profile {name!r} is not in schedulingProfiles; "
                f"profiles: {', '.join(profiles)}"
            )
    return handler


def _admitters(handle: _Handle, specs: Mapping[str, _Spec], defaults: Defaults) -> list[plugin_api.Admitter]:
    """The configured admitters in config order, then each default type the config does not list."""
    admitters = _configured(plugin_api.Admitter, handle, specs)
    listed = {member.type_name for member in admitters}
    admitters += [handle.create(t, t) for t in defaults.admitters if t not in listed]
    return [a for a in admitters if isinstance(a, plugin_api.Admitter)]


def _router(handle: _Handle, specs: Mapping[str, _Spec]) -> plugin_api.TierRouter | None:
    routers = [
        r for r in _configured(plugin_api.TierRouter, handle, specs) if isinstance(r, plugin_api.TierRouter)
    ]
    if len(routers) > 1:
        raise ConfigError(f"plugins: one tier router allowed, got {', '.join(r.name for r in routers)}")
    return routers[0] if routers else None


def build(
    document: Mapping[str, Any], *, defaults: Defaults, fallbacks: int = 1, seed: int | None = None
) -> scheduler.Scheduler:
    """The scheduler for a checked EndpointPickerConfig document (see `check_document`)."""
    specs = _specs(document)
    raw_profiles = document.get("schedulingProfiles")
    names = [
        raw["name"]
        for raw in (raw_profiles if isinstance(raw_profiles, list) else [])
        if isinstance(raw, Mapping) and isinstance(raw.get("name"), str)
    ]
    thresholds = saturation.from_config(document.get("saturationDetector"))
    flow_settings = flow_control.from_config(document.get("flowControl"))
    handle = _Handle(
        specs,
        thresholds=thresholds,
        fallbacks=fallbacks,
        profile_names=names,
    )
    for name in specs:
        handle.build(name)  # every listed plugin must build, used or not
    profile_specs = _profile_specs(document)
    profiles = {raw["name"]: _profile(i, raw, handle, defaults) for i, raw in enumerate(profile_specs)}
    handler = _handler(handle, specs, profiles, defaults)
    admitters = _admitters(handle, specs, defaults)
    router = _router(handle, specs)
    routing = [router] if router is not None else []
    members = [member for profile in profiles.values() for member in profile.members()]
    _check_consumed([*members, *handle.requested, handler, *admitters, *routing], specs)
    # Learners: members of the profiles the handler runs, then the collaborators plugins asked for.
    learners: dict[int, plugin_api.Plugin] = {}
    run = [profiles[name] for name in handler.profiles()]
    for member in [*(m for p in run for m in p.members()), *handle.requested, handler, *admitters, *routing]:
        learners.setdefault(id(member), member)
    # Data sources: the listed ones, and any a plugin created for itself; each runs once.
    sources: dict[int, plugin_api.DataSource] = {}
    for member in [*handle.built.values(), *handle.requested]:
        if isinstance(member, plugin_api.DataSource):
            sources.setdefault(id(member), member)
    built = scheduler.Scheduler(
        handler=handler,
        profiles=profiles,
        admitters=admitters,
        router=router,
        learners=list(learners.values()),
        data_sources=list(sources.values()),
        seed=seed,
    )
    if flow_settings is not None:
        built.flow = flow_control.FlowController(flow_settings, thresholds, prepare=built.prepare)
    log.info(
        "event=scheduler_loaded handler=%s profiles=%s admitters=%s tier_router=%s data_sources=%s "
        "fallbacks=%d flow_control=%s",
        handler.name,
        ",".join(handler.profiles()),
        ",".join(a.name for a in admitters) or "-",
        router.name if router is not None else "-",
        ",".join(source.name for source in sources.values()) or "-",
        fallbacks,
        flow_settings if flow_settings is not None else "off",
    )
    return built
