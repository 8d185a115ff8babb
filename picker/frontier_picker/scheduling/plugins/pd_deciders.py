"""P/D deciders: whether a request should be prefilled on a prefill endpoint before it decodes.

The pd-profile-handler asks its decider once the decode endpoint is chosen. `prefix-based-pd-decider`
disaggregates when the prompt tokens that endpoint would have to compute (not already in its prefix cache)
exceed `nonCachedTokens` (llm-d's parameter; Dynamo uses 2048, vllm-router 256), or the threshold
`nonCachedTokensByModel` names for the request's target model (the operator renders each disaggregated
ModelTier's `spec.disaggregation.nonCachedTokens` there). `load-aware-pd-decider` adds the load: it keeps a
long prompt local when the decode endpoint is idle or every prefill endpoint is backed up. Deciders implement
`disaggregate(cycle, destination)`.
"""

from collections.abc import Mapping
from typing import Any

from frontier_api import names
from frontier_picker import endpoints
from frontier_picker.scheduling.framework import cycles, plugin
from frontier_picker.scheduling.plugins import prefix


class Decider(plugin.Plugin):
    """Decides whether to disaggregate one request whose decode endpoint is chosen."""

    kind = "decider"

    def disaggregate(self, cycle: cycles.Cycle, destination: endpoints.EndpointState) -> bool:
        """True to prefill the request on a prefill endpoint; `cycle.candidates` are the decode profile's."""
        raise NotImplementedError


@plugin.register
class PrefixBasedDecider(Decider):
    """Disaggregate when the uncached prompt on the decode endpoint is long."""

    type_name = "prefix-based-pd-decider"
    formula = "disaggregate iff prompt_tokens - cached_tokens(decode endpoint) > nonCachedTokens"
    intent = "orchestration"
    NON_CACHED = plugin.Param(
        "nonCachedTokens", 2048, "uncached prompt tokens above which prefill is disaggregated", 0
    )
    PREFIX_PLUGIN = plugin.Param(
        "prefixPlugin", "", "prefix-cache-scorer whose index gives cached tokens (first one configured)"
    )
    parameter_docs = {
        **plugin.documented((NON_CACHED, PREFIX_PLUGIN)),
        "nonCachedTokensByModel": "per target model: {served name: threshold} (none)",
    }

    def __init__(
        self,
        name: str,
        *,
        threshold: int,
        index: prefix.Index | None,
        by_model: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(name)
        self.threshold = threshold
        self.by_model = dict(by_model or {})
        self.index = index  # None: nothing is known to be cached

    @classmethod
    def build(cls, name: str, parameters: plugin.Parameters, handle: plugin.Handle) -> plugin.Plugin:
        threshold = parameters.read(cls.NON_CACHED)
        index = prefix.index_of(handle, owner=name, plugin_name=parameters.read(cls.PREFIX_PLUGIN))
        raw: Any = parameters.raw("nonCachedTokensByModel", {})
        if not isinstance(raw, Mapping) or not all(
            isinstance(model, str)
            and isinstance(tokens, int)
            and not isinstance(tokens, bool)
            and tokens >= 0
            for model, tokens in raw.items()
        ):
            raise plugin.ConfigError(
                f"plugin {name!r}: parameter 'nonCachedTokensByModel' must map model names to integers >= 0,"
                f" got {raw!r}"
            )
        return cls(name, threshold=threshold, index=index, by_model=raw)

    def disaggregate(self, cycle: cycles.Cycle, destination: endpoints.EndpointState) -> bool:
        request = cycle.request
        threshold = self.by_model.get(request.target_model, self.threshold)
        prompt_tokens = request.token_count()
        if prompt_tokens <= threshold:
            return False
        cached = 0.0
        if self.index is not None and self.index.hashes(cycle):
            position = cycle.positions()[destination.endpoint.key]
            cached = float(self.index.matched_blocks(cycle)[position]) * self.index.tokens_per_block
        return prompt_tokens - cached > threshold


@plugin.register
class LoadAwareDecider(PrefixBasedDecider):
    """Disaggregate a long uncached prompt only when it pays: the decode endpoint is busy (its own prefill
    would stall the sequences it is decoding) and some prefill endpoint is not backed up.

    Dynamo's conditional disaggregation is the model: an idle decode endpoint prefills faster itself (no KV
    transfer, no second queue), and a backed-up prefill pool would make the request wait longer than a
    local prefill. Backlog is what the picker knows best: the prompt tokens it sent each prefill endpoint
    and has not seen finish, plus the endpoint's scraped queue (a waiting request counts one threshold).
    """

    type_name = "load-aware-pd-decider"
    formula = (
        "disaggregate iff uncached > nonCachedTokens and decode endpoint busy (running + waiting + in-flight"
        " > 0) and min over prefill endpoints (in-flight prompt tokens + waiting x nonCachedTokens)"
        " <= maxPrefillBacklog"
    )
    MAX_BACKLOG = plugin.Param(
        "maxPrefillBacklog",
        32768,
        "prompt tokens queued on the least loaded prefill endpoint above which the request prefills locally",
        0,
    )
    parameter_docs = {**PrefixBasedDecider.parameter_docs, **plugin.documented((MAX_BACKLOG,))}

    def __init__(self, name: str, *, max_backlog: int, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.max_backlog = max_backlog

    @classmethod
    def build(cls, name: str, parameters: plugin.Parameters, handle: plugin.Handle) -> plugin.Plugin:
        base = PrefixBasedDecider.build(name, parameters, handle)
        assert isinstance(base, PrefixBasedDecider)
        return cls(
            name,
            max_backlog=parameters.read(cls.MAX_BACKLOG),
            threshold=base.threshold,
            index=base.index,
            by_model=base.by_model,
        )

    def disaggregate(self, cycle: cycles.Cycle, destination: endpoints.EndpointState) -> bool:
        if not super().disaggregate(cycle, destination):
            return False
        local = destination.metrics.running + destination.metrics.waiting + destination.load.in_flight
        if local == 0:
            return False  # nothing to stall there: prefilling locally skips the transfer
        threshold = self.by_model.get(cycle.request.target_model, self.threshold)
        backlogs = [
            state.load.in_flight_prompt_tokens + state.metrics.waiting * threshold
            for state in cycle.snapshot.endpoints
            if state.endpoint.role == names.ROLE_PREFILL
        ]
        return bool(backlogs) and min(backlogs) <= self.max_backlog
