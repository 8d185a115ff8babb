"""Builds the scheduler a picker runs from its EndpointPickerConfig text.

The text is GIE's EndpointPickerConfig YAML, so a config written for the reference endpoint picker reads the
same here:

    apiVersion: inference.networking.x-k8s.io/v1alpha1
    kind: EndpointPickerConfig
    plugins: [{name?, type, parameters?}]            # name defaults to type
    schedulingProfiles: [{name, plugins: [{pluginRef, weight?}]}]
    saturationDetector: {queueDepthThreshold, kvCacheUtilThreshold, metricsStalenessThreshold}

Every field is checked when the text is loaded: an unknown field, plugin type or parameter, a `pluginRef` that
names no plugin, or a plugin consuming data that no configured plugin produces is an error naming it.

`load` is the one entry point of the server, the simulator and the benchmark. Without text it builds the
built-in `frontier` config; `profile` selects one of the built-in configs (`frontier`, `gie-default`,
`round-robin`) or, with text, one of its profiles.
"""

import importlib.resources
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

# Plugin modules register their types on import.
from frontier_picker.scheduling import (
    admission,
    cost,
    filters,
    handlers,
    pickers,
    plugins,
    prefix,
    profiles,
    round_robin,
    saturation,
    scorers,
    types,
)

log = logging.getLogger(__name__)

API_VERSIONS = frozenset(
    {
        "inference.networking.x-k8s.io/v1alpha1",
        "config.apix.gateway-api-inference-extension.sigs.k8s.io/v1alpha1",
    }
)
KIND = "EndpointPickerConfig"
DEFAULT_PROFILE = "frontier"
BUILTIN = ("frontier", "gie-default", "round-robin")
_TOP_FIELDS = frozenset(
    {"apiVersion", "kind", "plugins", "schedulingProfiles", "saturationDetector", "featureGates"}
)
_PLUGIN_FIELDS = frozenset({"name", "type", "parameters"})
_PROFILE_FIELDS = frozenset({"name", "plugins"})
_REF_FIELDS = frozenset({"pluginRef", "weight"})
_MODULES = (admission, cost, filters, handlers, pickers, prefix, scorers)  # registered plugin types


def builtin_text(name: str) -> str:
    """The YAML of a built-in config (`frontier`, `gie-default`)."""
    return (
        importlib.resources.files("frontier_picker.scheduling").joinpath(f"configs/{name}.yaml").read_text()
    )


def load(
    text: str | None, *, fallbacks: int = 1, profile: str | None = None, seed: int | None = None
) -> types.Scheduler:
    """The scheduler described by an EndpointPickerConfig YAML text (None: the built-in `frontier`)."""
    if not text:
        name = profile or DEFAULT_PROFILE
        if name == "round-robin":
            return round_robin.RoundRobin(fallbacks=fallbacks)
        if name not in BUILTIN:
            raise plugins.ConfigError(f"unknown built-in profile {name!r}; built-in: {', '.join(BUILTIN)}")
        text = builtin_text(name)
    return build(parse(text), fallbacks=fallbacks, profile=profile, seed=seed)


def parse(text: str) -> Mapping[str, Any]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise plugins.ConfigError(f"EndpointPickerConfig is not valid YAML: {error}") from error
    if not isinstance(document, Mapping):
        raise plugins.ConfigError("EndpointPickerConfig must be a YAML mapping")
    _check_fields(document, _TOP_FIELDS, where="EndpointPickerConfig")
    if document.get("apiVersion") not in API_VERSIONS:
        raise plugins.ConfigError(
            f"apiVersion: {document.get('apiVersion')!r}; allowed: {', '.join(sorted(API_VERSIONS))}"
        )
    if document.get("kind") != KIND:
        raise plugins.ConfigError(f"kind: {document.get('kind')!r}; allowed: {KIND}")
    return document


def _check_fields(item: Mapping[str, Any], known: frozenset[str], *, where: str) -> None:
    unknown = sorted(str(key) for key in set(item) - known)
    if unknown:
        raise plugins.ConfigError(f"{where}: unknown field {unknown[0]!r}; known: {', '.join(sorted(known))}")


def _list(value: Any, *, where: str) -> Sequence[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise plugins.ConfigError(f"{where} must be a list, got {type(value).__name__}")
    return value


def _build_plugins(document: Mapping[str, Any]) -> dict[str, plugins.Plugin]:
    built: dict[str, plugins.Plugin] = {}
    for i, spec in enumerate(_list(document.get("plugins"), where="plugins")):
        where = f"plugins[{i}]"
        if not isinstance(spec, Mapping):
            raise plugins.ConfigError(f"{where} must be a mapping with 'type'")
        _check_fields(spec, _PLUGIN_FIELDS, where=where)
        type_name = spec.get("type")
        if not isinstance(type_name, str) or not type_name:
            raise plugins.ConfigError(f"{where}: missing field 'type'")
        name = spec.get("name") or type_name
        if name in built:
            raise plugins.ConfigError(f"{where}: plugin name {name!r} is used twice")
        built[name] = plugins.create(type_name, name, spec.get("parameters"))
    return built


def _build_profile(index: int, spec: Any, built: Mapping[str, plugins.Plugin]) -> profiles.Profile:
    where = f"schedulingProfiles[{index}]"
    if not isinstance(spec, Mapping):
        raise plugins.ConfigError(f"{where} must be a mapping with 'name' and 'plugins'")
    _check_fields(spec, _PROFILE_FIELDS, where=where)
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise plugins.ConfigError(f"{where}: missing field 'name'")
    stages: list[plugins.Filter] = []
    weighted: list[plugins.WeightedScorer] = []
    picker: plugins.Picker | None = None
    for j, ref in enumerate(_list(spec.get("plugins"), where=f"{where}.plugins")):
        at = f"{where}.plugins[{j}]"
        if not isinstance(ref, Mapping):
            raise plugins.ConfigError(f"{at} must be a mapping with 'pluginRef'")
        _check_fields(ref, _REF_FIELDS, where=at)
        plugin_name = ref.get("pluginRef")
        if not plugin_name:
            raise plugins.ConfigError(f"{at}: missing field 'pluginRef'")
        plugin = built.get(plugin_name)
        if plugin is None:
            known = ", ".join(sorted(built)) or "none"
            raise plugins.ConfigError(f"{at}: pluginRef {plugin_name!r} names no plugin; plugins: {known}")
        weight = ref.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise plugins.ConfigError(f"{at}: weight must be a number >= 0, got {weight!r}")
        if isinstance(plugin, plugins.Filter):
            stages.append(plugin)
        elif isinstance(plugin, plugins.Scorer):
            weighted.append(plugins.WeightedScorer(plugin, float(weight)))
        elif isinstance(plugin, plugins.Picker):
            if picker is not None:
                raise plugins.ConfigError(f"{at}: profile {name!r} has a second picker {plugin_name!r}")
            picker = plugin
        else:
            raise plugins.ConfigError(
                f"{at}: {plugin_name!r} is a {plugin.kind} plugin; list it under plugins only, "
                "not in a profile"
            )
    # GIE adds a max-score picker to a profile that names none.
    return profiles.Profile(
        name=name,
        filters=stages,
        scorers=weighted,
        picker=picker or pickers.MaxScorePicker(f"{name}/max-score-picker"),
    )


def _bind_producers(
    selected: Sequence[profiles.Profile], built: Mapping[str, plugins.Plugin]
) -> list[plugins.Plugin]:
    """Check consumed data has producers and wire cost scorers to their prefix index; the producers used."""
    prefix_plugins = [plugin for plugin in built.values() if isinstance(plugin, prefix.PrefixCacheScorer)]
    producers: list[plugins.Plugin] = []
    for profile in selected:
        in_profile = [plugin for plugin in profile.members() if isinstance(plugin, prefix.PrefixCacheScorer)]
        for plugin in profile.members():
            missing = plugin.consumes - plugins.ALWAYS_PRODUCED
            for data in sorted(missing):
                if not any(data in other.produces for other in built.values()):
                    raise plugins.ConfigError(
                        f"plugin {plugin.name!r} ({plugin.type_name}) consumes {data!r}, which no "
                        "configured plugin produces; add a plugin of type prefix-cache-scorer"
                    )
            if isinstance(plugin, cost.PredictedTTFTScorer):
                source = _prefix_source(plugin, in_profile or prefix_plugins, built)
                plugin.index = source.index
                producers.append(source)
    return producers


def _prefix_source(
    plugin: cost.PredictedTTFTScorer,
    candidates: Sequence[prefix.PrefixCacheScorer],
    built: Mapping[str, plugins.Plugin],
) -> prefix.PrefixCacheScorer:
    if plugin.prefix_plugin:
        named = built.get(plugin.prefix_plugin)
        if not isinstance(named, prefix.PrefixCacheScorer):
            raise plugins.ConfigError(
                f"plugin {plugin.name!r}: prefixPlugin {plugin.prefix_plugin!r} is not a "
                "prefix-cache-scorer plugin"
            )
        return named
    return candidates[0]


def build(
    document: Mapping[str, Any], *, fallbacks: int = 1, profile: str | None = None, seed: int | None = None
) -> profiles.ProfileScheduler:
    """The scheduler for a parsed EndpointPickerConfig document."""
    built = _build_plugins(document)
    specs = _list(document.get("schedulingProfiles"), where="schedulingProfiles")
    if not specs:
        raise plugins.ConfigError("schedulingProfiles: at least one profile is required")
    by_name: dict[str, profiles.Profile] = {}
    for i, spec in enumerate(specs):
        built_profile = _build_profile(i, spec, built)
        if built_profile.name in by_name:
            raise plugins.ConfigError(
                f"schedulingProfiles[{i}]: profile name {built_profile.name!r} is used twice"
            )
        by_name[built_profile.name] = built_profile
    thresholds = saturation.from_config(document.get("saturationDetector"))
    for plugin in built.values():
        if isinstance(plugin, filters.SaturationFilter) and not plugin.explicit:
            plugin.thresholds = thresholds
        if isinstance(plugin, filters.StaleFilter) and not plugin.explicit:
            plugin.staleness_s = thresholds.staleness_s
    pd = next((p for p in built.values() if isinstance(p, handlers.PDProfileHandler)), None)
    prefill_names = {pd.prefill_profile} if pd else set()
    name = profile or _default_profile(by_name, prefill_names)
    selected = by_name.get(name)
    if selected is None:
        raise plugins.ConfigError(
            f"profile {name!r} is not in schedulingProfiles; profiles: {', '.join(by_name)}"
        )
    disaggregation = None
    chosen_profiles = [selected]
    if pd is not None and pd.decode_profile == selected.name:
        prefill_profile = by_name.get(pd.prefill_profile)
        if prefill_profile is None:
            raise plugins.ConfigError(
                f"plugin {pd.name!r}: prefillProfile {pd.prefill_profile!r} is not in schedulingProfiles"
            )
        chosen_profiles.append(prefill_profile)
    _bind_producers(list(by_name.values()), built)  # every profile must be valid, selected or not
    producers = _bind_producers(chosen_profiles, built)
    if len(chosen_profiles) == 2:
        pd_index = next(
            (p.index for p in [*selected.members(), *producers] if isinstance(p, prefix.PrefixCacheScorer)),
            None,
        )
        assert pd is not None
        disaggregation = profiles.Disaggregation(
            profile=chosen_profiles[1], threshold=pd.threshold, index=pd_index
        )
    objectives = next((p for p in built.values() if isinstance(p, admission.InferenceObjectives)), None)
    scheduler = profiles.ProfileScheduler(
        profile=selected,
        disaggregation=disaggregation,
        thresholds=thresholds,
        objectives=objectives,
        fallbacks=fallbacks,
        seed=seed,
        learners=producers,
    )
    log.info(
        "event=scheduler_loaded profile=%s prefill_profile=%s plugins=%s fallbacks=%d",
        selected.name,
        disaggregation.profile.name if disaggregation else "-",
        ",".join(plugin.name for plugin in selected.members()),
        fallbacks,
    )
    return scheduler


def _default_profile(by_name: Mapping[str, profiles.Profile], prefill_names: set[str]) -> str:
    if DEFAULT_PROFILE in by_name:
        return DEFAULT_PROFILE
    destinations = [name for name in by_name if name not in prefill_names]
    if len(destinations) == 1:
        return destinations[0]
    raise plugins.ConfigError(
        f"schedulingProfiles has several profiles ({', '.join(by_name)}) and none is named "
        f"{DEFAULT_PROFILE!r}; select one by name"
    )
