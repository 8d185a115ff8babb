"""Profile handlers: which scheduling profiles run for a request.

`single-profile-handler` runs the one selected profile (the GIE default). `pd-profile-handler` adds
prefill/decode disaggregation (llm-d convention): the selected profile chooses the decode endpoint (the
request's destination); when the request's uncached prompt tokens on that endpoint exceed `threshold`, the
prefill profile chooses a prefill endpoint, passed on in header x-prefiller-host-port. Short or mostly
cached prompts are cheaper to prefill where they will be decoded than to ship as KV.
"""

from frontier_picker.scheduling import plugins


@plugins.register
class SingleProfileHandler(plugins.Plugin):
    """Run the selected profile only."""

    type_name = "single-profile-handler"
    kind = "handler"
    formula = "run the selected profile"
    intent = "orchestration"


@plugins.register
class PDProfileHandler(plugins.Plugin):
    """Disaggregate prefill when the uncached prompt is long (see module doc)."""

    type_name = "pd-profile-handler"
    kind = "handler"
    formula = "prefill endpoint chosen iff prompt_tokens - cached_tokens(decode endpoint) > threshold"
    intent = "orchestration"
    parameter_docs = {
        "threshold": "uncached prompt tokens above which prefill is disaggregated (2048)",
        "decodeProfile": "profile choosing the decode endpoint (frontier)",
        "prefillProfile": "profile choosing the prefill endpoint (frontier-prefill)",
    }

    def __init__(self, name: str, *, threshold: int, decode_profile: str, prefill_profile: str) -> None:
        super().__init__(name)
        self.threshold = threshold
        self.decode_profile = decode_profile
        self.prefill_profile = prefill_profile

    @classmethod
    def build(cls, name: str, parameters: plugins.Parameters) -> plugins.Plugin:
        return cls(
            name,
            threshold=parameters.integer("threshold", 2048, minimum=0),
            decode_profile=parameters.text("decodeProfile", "frontier"),
            prefill_profile=parameters.text("prefillProfile", "frontier-prefill"),
        )
