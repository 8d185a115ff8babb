"""Profile handlers: which scheduling profiles run for a request, and how their results become the decision.

`single-profile-handler` runs one profile (the GIE default). `pd-profile-handler` adds prefill/decode
disaggregation (llm-d convention): its decode profile chooses the request's destination; then its *decider*
(a plugin found by name through the handle) says whether this request, on that endpoint, should be
prefilled elsewhere; if so the prefill profile chooses a prefill endpoint, passed on in header
x-prefiller-host-port. Short or mostly cached prompts are cheaper to prefill where they will be decoded
than to ship as KV.
"""

from collections.abc import Mapping, Sequence

from frontier_api import names
from frontier_picker import endpoints
from frontier_picker.scheduling import types
from frontier_picker.scheduling.framework import cycles, plugin
from frontier_picker.scheduling.plugins import pd_deciders


def _destination(
    profile: str, cycle: cycles.Cycle, results: Mapping[str, plugin.ProfileResult]
) -> plugin.ProfileResult:
    result = results.get(profile)
    if result is None or not result.chosen:
        raise types.Rejection(503, f"no ready endpoint serves model {cycle.request.target_model!r}")
    return result


def _decision(
    cycle: cycles.Cycle, profile: str, result: plugin.ProfileResult, prefill: endpoints.EndpointState | None
) -> types.Decision:
    cycle.chosen = {state.endpoint.key: state for state in result.chosen}
    if prefill is not None:
        cycle.chosen[prefill.endpoint.key] = prefill
    return types.Decision(
        endpoints=[state.endpoint.key for state in result.chosen],
        prefill=prefill.endpoint.key if prefill is not None else None,
        profile=profile,
        scores=result.scores,
    )


@plugin.register
class SingleProfileHandler(plugin.ProfileHandler):
    """Run one profile: its primary and fallbacks are the decision."""

    type_name = "single-profile-handler"
    formula = "run `profile` once for 1 + fallbacks endpoints"
    intent = "orchestration"
    parameter_docs = {"profile": "the profile to run (the config's only profile when there is one)"}

    def __init__(self, name: str, *, profile: str, count: int) -> None:
        super().__init__(name)
        self.profile = profile
        self.count = count

    @classmethod
    def build(cls, name: str, parameters: plugin.Parameters, handle: plugin.Handle) -> plugin.Plugin:
        names_ = handle.profile_names()
        default = names_[0] if len(names_) == 1 else ""
        profile = parameters.text("profile", default)
        if not profile:
            raise plugin.ConfigError(
                f"plugin {name!r}: the config has several profiles ({', '.join(names_)}); name the one to "
                "run in parameter 'profile'"
            )
        return cls(name, profile=profile, count=1 + handle.fallbacks)

    def profiles(self) -> Sequence[str]:
        return [self.profile]

    def pick(
        self, cycle: cycles.Cycle, results: Mapping[str, plugin.ProfileResult]
    ) -> Sequence[tuple[str, int]]:
        return [] if results else [(self.profile, self.count)]

    def process_results(
        self, cycle: cycles.Cycle, results: Mapping[str, plugin.ProfileResult]
    ) -> types.Decision:
        return _decision(cycle, self.profile, _destination(self.profile, cycle, results), None)


@plugin.register
class PDProfileHandler(plugin.ProfileHandler):
    """Choose a decode endpoint, then a prefill endpoint when the decider says to disaggregate.

    With `localProfile`, a request the decider keeps local is served where that profile chooses (a profile
    over every role, prefill endpoints included): a prefill endpoint is a whole engine (vLLM's `kv_both`), so
    traffic that is not disaggregated can use the prefill GPUs instead of leaving them idle.
    """

    type_name = "pd-profile-handler"
    formula = (
        "decode profile -> destination; decider(request, destination) -> prefill profile -> prefiller; "
        "kept local: local profile (if set) -> destination"
    )
    intent = "orchestration"
    DECODE_PROFILE = plugin.Param("decodeProfile", "decode", "profile choosing the decode endpoint")
    PREFILL_PROFILE = plugin.Param("prefillProfile", "prefill", "profile choosing the prefill endpoint")
    DECIDER = plugin.Param(
        "deciderPluginName", pd_deciders.PrefixBasedDecider.type_name, "the decider plugin"
    )
    LOCAL_PROFILE = plugin.Param(
        "localProfile", "", "profile serving a request kept local (empty: the decode profile's endpoint)"
    )
    parameter_docs = plugin.documented((DECODE_PROFILE, PREFILL_PROFILE, DECIDER, LOCAL_PROFILE))

    def __init__(
        self,
        name: str,
        *,
        decode_profile: str,
        prefill_profile: str,
        decider: pd_deciders.Decider,
        count: int,
        local_profile: str = "",
    ) -> None:
        super().__init__(name)
        self.decode_profile = decode_profile
        self.prefill_profile = prefill_profile
        self.decider = decider
        self.count = count
        self.local_profile = local_profile
        self._role_scan: tuple[Sequence[endpoints.EndpointState] | None, bool] = (None, False)

    @classmethod
    def build(cls, name: str, parameters: plugin.Parameters, handle: plugin.Handle) -> plugin.Plugin:
        decider_name = parameters.read(cls.DECIDER)
        decider = handle.plugin(decider_name)
        if not isinstance(decider, pd_deciders.Decider):
            raise plugin.ConfigError(
                f"plugin {name!r}: deciderPluginName {decider_name!r} is a {decider.kind} plugin, "
                "not a decider"
            )
        return cls(
            name,
            decode_profile=parameters.read(cls.DECODE_PROFILE),
            prefill_profile=parameters.read(cls.PREFILL_PROFILE),
            decider=decider,
            count=1 + handle.fallbacks,
            local_profile=parameters.read(cls.LOCAL_PROFILE),
        )

    def profiles(self) -> Sequence[str]:
        local = [self.local_profile] if self.local_profile else []
        return [self.decode_profile, self.prefill_profile, *local]

    def _has_prefill_endpoints(self, states: Sequence[endpoints.EndpointState]) -> bool:
        # The datastore hands out the same sequence object until the endpoint set changes; holding a
        # reference to it (not its id) makes the cached answer safe.
        if states is not self._role_scan[0]:
            self._role_scan = (states, any(state.endpoint.role == names.ROLE_PREFILL for state in states))
        return self._role_scan[1]

    def pick(
        self, cycle: cycles.Cycle, results: Mapping[str, plugin.ProfileResult]
    ) -> Sequence[tuple[str, int]]:
        if not results:
            return [(self.decode_profile, self.count)]
        if self.prefill_profile in results or self.local_profile in results:
            return []
        decode = results[self.decode_profile]
        if not decode.chosen:
            return []
        destination = decode.chosen[0]
        if destination.endpoint.role == names.ROLE_PREFILL:
            return []
        if not self._has_prefill_endpoints(cycle.snapshot.endpoints):
            return []
        if self.decider.disaggregate(cycle, destination):
            return [(self.prefill_profile, 1)]
        return [(self.local_profile, self.count)] if self.local_profile else []

    def process_results(
        self, cycle: cycles.Cycle, results: Mapping[str, plugin.ProfileResult]
    ) -> types.Decision:
        local = results.get(self.local_profile) if self.local_profile else None
        if local is not None and local.chosen:
            return _decision(cycle, self.local_profile, local, None)
        decode = _destination(self.decode_profile, cycle, results)
        prefill = results.get(self.prefill_profile)
        chosen = prefill.chosen[0] if prefill is not None and prefill.chosen else None
        return _decision(cycle, self.decode_profile, decode, chosen)
