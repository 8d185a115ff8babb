"""P/D deciders: whether a request should be prefilled on a prefill endpoint before it decodes.

The pd-profile-handler asks its decider once the decode endpoint is chosen. `prefix-based-pd-decider`
disaggregates when the prompt tokens that endpoint would have to compute (not already in its prefix cache)
exceed `nonCachedTokens` (llm-d's parameter; Dynamo uses 2048, vllm-router 256), or the threshold
`nonCachedTokensByModel` names for the request's target model (the operator renders each disaggregated
ModelTier's `spec.disaggregation.nonCachedTokens` there). Other deciders (load-based) implement the same
`disaggregate(cycle, destination)`.
"""

from collections.abc import Mapping
from typing import Any

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
