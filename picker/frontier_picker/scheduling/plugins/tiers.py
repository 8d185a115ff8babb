"""Tier routing: a request for a *virtual model* (`auto`, or any name ModelTiers declare) goes to the cheapest
model tier good enough for it, and spills to the next one while that tier is saturated.

For each virtual model the router knows its tiers (a served model name, a quality rank, a relative cost and
the ModelTier's routing hints). For one request it decides the *rank required*, first match wins:
1. the client's category header (`x-frontier-category`) through `categoryRanks`;
2. a rule: a tier whose keywords appear in the prompt requires that tier's rank (prompt-length bounds
   make tiers ineligible before anything else is decided);
3. the classifier (a `prompt-classifier` plugin found through the handle) through `categoryRanks`; when it
   is less sure than `minConfidence`, the highest rank any category requires;
4. the fallback tier's rank (the tier marked `fallback`, else rank 0).
The tiers to try are then the eligible ones at or above that rank, cheapest first; below it only tiers that
accept spill-down (`fallback`). A tier already holding the conversation's prefix goes first when it is
acceptable (the KV cache is worth more than the price difference). The scheduler runs the profiles for each
tier in turn; `holds` rejects a decision whose endpoint is saturated (waiting >= queueDepthThreshold or KV
use >= kvCacheUtilThreshold on fresh metrics), which spills the request to the next tier.

A request naming a model that no endpoint serves and no virtual model stands for is refused with 404.
"""

import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from frontier_api import names
from frontier_picker import endpoints
from frontier_picker.scheduling import types
from frontier_picker.scheduling.framework import cycles, plugin
from frontier_picker.scheduling.plugins import classifier, prefix

log = logging.getLogger(__name__)

# Categories that need a stronger model than the cheapest tier, by default.
DEFAULT_CATEGORY_RANKS = {
    "code": 1,
    "math": 1,
    "reasoning": 1,
    "chit-chat": 0,
    "summarisation": 0,
    "extraction": 0,
}
_TIER_FIELDS = frozenset(
    {"model", "rank", "relativeCost", "minPromptTokens", "maxPromptTokens", "keywords", "fallback"}
)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Tier:
    """One tier of a virtual model, as the router weighs it."""

    model: str
    rank: int = 0
    relative_cost: float = 1.0
    min_prompt_tokens: int | None = None
    max_prompt_tokens: int | None = None
    keywords: re.Pattern[str] | None = None
    fallback: bool = False

    def admits(self, tokens: int) -> bool:
        """Whether a prompt of `tokens` tokens is within this tier's bounds."""
        low = self.min_prompt_tokens
        high = self.max_prompt_tokens
        return (low is None or tokens >= low) and (high is None or tokens <= high)


def _keywords(words: Any, *, where: str) -> re.Pattern[str] | None:
    if words is None or words == []:
        return None
    if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
        raise plugin.ConfigError(f"{where}.keywords must be a list of non-empty strings")
    alternatives = "|".join(re.escape(w.strip().lower()) for w in words)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")


def _bound(raw: Mapping[str, Any], key: str, *, where: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise plugin.ConfigError(f"{where}.{key} must be an integer >= 0, got {value!r}")
    return int(value)


def parse_tier(raw: Any, *, where: str) -> Tier:
    """A `Tier` from one entry of `virtualModels.<name>`; ConfigError naming the field."""
    if not isinstance(raw, Mapping):
        raise plugin.ConfigError(f"{where} must be a mapping with 'model'")
    unknown = sorted(set(raw) - _TIER_FIELDS)
    if unknown:
        raise plugin.ConfigError(
            f"{where}: unknown field {unknown[0]!r}; known: {', '.join(sorted(_TIER_FIELDS))}"
        )
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise plugin.ConfigError(f"{where}.model must be a served model name")
    rank = raw.get("rank", 0)
    cost = raw.get("relativeCost", 1.0)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise plugin.ConfigError(f"{where}.rank must be an integer >= 0, got {rank!r}")
    if isinstance(cost, bool) or not isinstance(cost, int | float) or cost < 0:
        raise plugin.ConfigError(f"{where}.relativeCost must be a number >= 0, got {cost!r}")
    fallback = raw.get("fallback", False)
    if not isinstance(fallback, bool):
        raise plugin.ConfigError(f"{where}.fallback must be true or false")
    return Tier(
        model=model,
        rank=rank,
        relative_cost=float(cost),
        min_prompt_tokens=_bound(raw, "minPromptTokens", where=where),
        max_prompt_tokens=_bound(raw, "maxPromptTokens", where=where),
        keywords=_keywords(raw.get("keywords"), where=where),
        fallback=fallback,
    )


def parse_virtual_models(raw: Any, *, owner: str) -> dict[str, tuple[Tier, ...]]:
    """`virtualModels` (name -> list of tiers) checked; ConfigError naming the field."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise plugin.ConfigError(f"plugin {owner!r}: virtualModels must map a model name to a list of tiers")
    parsed: dict[str, tuple[Tier, ...]] = {}
    for name, tiers in raw.items():
        where = f"plugin {owner!r}: virtualModels[{name!r}]"
        if not isinstance(tiers, list) or not tiers:
            raise plugin.ConfigError(f"{where} must be a non-empty list of tiers")
        parsed[str(name)] = tuple(parse_tier(t, where=f"{where}[{i}]") for i, t in enumerate(tiers))
        models = [t.model for t in parsed[str(name)]]
        if len(set(models)) != len(models):
            raise plugin.ConfigError(f"{where}: a served model is listed twice")
    return parsed


def _category_ranks(raw: Any, *, owner: str) -> dict[str, int]:
    if raw is None:
        return dict(DEFAULT_CATEGORY_RANKS)
    if not isinstance(raw, Mapping) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in raw.values()
    ):
        raise plugin.ConfigError(f"plugin {owner!r}: categoryRanks must map categories to integers >= 0")
    return {str(k): int(v) for k, v in raw.items()}


class _Served:
    """The model names the endpoints serve (None: some endpoint serves any model), per endpoint sequence."""

    __slots__ = ("_models", "_source")

    def __init__(self) -> None:
        self._source: Sequence[endpoints.EndpointState] | None = None
        self._models: frozenset[str] | None = None

    def models(self, states: Sequence[endpoints.EndpointState]) -> frozenset[str] | None:
        if states is not self._source:
            self._source = states
            served = [state.endpoint.labels.get(names.MODEL_LABEL) for state in states]
            self._models = None if None in served else frozenset(m for m in served if m is not None)
        return self._models


@plugin.register
class TierRouter(plugin.TierRouter):
    """Chooses the model tier of requests for a virtual model; spills to the next tier when one saturates."""

    type_name = "tier-router"
    formula = (
        "rank required = header | keyword rule | classifier | fallback; try tiers with rank >= required "
        "cheapest first (prefix holder first), spill while the chosen endpoint is saturated"
    )
    intent = "cost (cheapest sufficient tier) and latency (spill-over)"
    consumes = frozenset({"metrics", "labels"})
    CLASSIFIER = plugin.Param("classifier", "", "name of a prompt-classifier plugin; none: rules only")
    SPILL = plugin.Param("spill", True, "try the next tier while the chosen endpoint is saturated")
    QUEUE = plugin.Param("queueDepthThreshold", 0, "waiting requests that spill (0: saturationDetector's)")
    KV = plugin.Param("kvCacheUtilThreshold", 0.0, "KV use that spills (0: saturationDetector's)")
    PREFIX_PLUGIN = plugin.Param("prefixPlugin", "", "prefix-cache-scorer for affinity; default: the first")
    AFFINITY = plugin.Param("affinityMinBlocks", 4, "prefix blocks a tier must hold to go first", minimum=1)
    CONFIDENCE = plugin.Param(
        "minConfidence",
        0.0,
        "below this classifier probability the highest category rank is required",
        minimum=0,
    )
    parameter_docs = {
        "virtualModels": "virtual model name -> list of {model, rank, relativeCost, minPromptTokens, "
        "maxPromptTokens, keywords, fallback}",
        "categoryRanks": "category -> rank required (default: code, math, reasoning 1; others 0)",
        **plugin.documented((CLASSIFIER, CONFIDENCE, SPILL, QUEUE, KV, PREFIX_PLUGIN, AFFINITY)),
    }

    def __init__(
        self,
        name: str,
        *,
        virtual_models: Mapping[str, Sequence[Tier]],
        category_ranks: Mapping[str, int] | None = None,
        classify: classifier.PromptClassifier | None = None,
        min_confidence: float = 0.0,
        spill: bool = True,
        queue_depth: int = 5,
        kv_utilization: float = 0.8,
        staleness_s: float = 0.2,
        index: prefix.Index | None = None,
        affinity_min_blocks: int = 4,
    ) -> None:
        super().__init__(name)
        self.virtual_models = {model: tuple(tiers) for model, tiers in virtual_models.items()}
        self.category_ranks = dict(DEFAULT_CATEGORY_RANKS if category_ranks is None else category_ranks)
        self.classifier = classify
        self.min_confidence = min_confidence
        self.spill = spill
        self.queue_depth = queue_depth
        self.kv_utilization = kv_utilization
        self.staleness_s = staleness_s
        self.index = index
        self.affinity_min_blocks = affinity_min_blocks
        self._served = _Served()

    @classmethod
    def build(cls, name: str, parameters: plugin.Parameters, handle: plugin.Handle) -> plugin.Plugin:
        virtual = parse_virtual_models(parameters.raw("virtualModels", None), owner=name)
        ranks = _category_ranks(parameters.raw("categoryRanks", None), owner=name)
        classifier_name = parameters.read(cls.CLASSIFIER)
        found = handle.plugin(classifier_name) if classifier_name else None
        if found is not None and not isinstance(found, classifier.PromptClassifier):
            raise plugin.ConfigError(
                f"plugin {name!r}: classifier {classifier_name!r} is not a prompt-classifier"
            )
        if found is not None:
            unranked = sorted(set(found.categories) - set(ranks))
            if unranked:
                raise plugin.ConfigError(
                    f"plugin {name!r}: categoryRanks has no rank for {', '.join(unranked)}"
                )
        thresholds = handle.saturation
        for model, listed in virtual.items():
            log.info(
                "event=virtual_model name=%s tiers=%s classifier=%s",
                model,
                ",".join(f"{t.model}(rank={t.rank},cost={t.relative_cost:g})" for t in listed),
                classifier_name or "-",
            )
        return cls(
            name,
            virtual_models=virtual,
            category_ranks=ranks,
            classify=found,
            min_confidence=parameters.read(cls.CONFIDENCE),
            spill=parameters.read(cls.SPILL),
            queue_depth=parameters.read(cls.QUEUE) or thresholds.queue_depth,
            kv_utilization=parameters.read(cls.KV) or thresholds.kv_utilization,
            staleness_s=thresholds.staleness_s,
            index=prefix.index_of(handle, owner=name, plugin_name=parameters.read(cls.PREFIX_PLUGIN)),
            affinity_min_blocks=parameters.read(cls.AFFINITY),
        )

    def model_names(self) -> list[str]:
        return sorted(self.virtual_models)

    def plan(self, cycle: cycles.Cycle) -> plugin.TierPlan | None:
        request = cycle.request
        tiers = self.virtual_models.get(request.model)
        if tiers is None or request.target_model != request.model:  # a gateway rewrite already chose
            self._check_served(request, cycle.snapshot.endpoints)
            return None
        tokens = request.token_count()
        eligible = [tier for tier in tiers if tier.admits(tokens)] or list(tiers)
        required, reason, category, took = self._required_rank(request, tiers, eligible)
        acceptable = (
            sorted((t for t in eligible if t.rank >= required), key=lambda t: (t.relative_cost, -t.rank))
            or sorted(eligible, key=lambda t: (-t.rank, t.relative_cost))[:1]
        )
        below = sorted(
            (t for t in eligible if t.fallback and t not in acceptable),
            key=lambda t: (-t.rank, t.relative_cost),
        )
        options = [plugin.TierOption(t.model, reason) for t in [*acceptable, *below]]
        held = self._prefix_holder(cycle, acceptable)
        if held is not None and held != options[0].model:
            options = [plugin.TierOption(held, "affinity"), *(o for o in options if o.model != held)]
        return plugin.TierPlan(
            virtual_model=request.model, options=options, category=category, classify_s=took
        )

    def _required_rank(
        self, request: types.Request, tiers: Sequence[Tier], eligible: Sequence[Tier]
    ) -> tuple[int, str, str, float]:
        """(rank required, reason, category, classification seconds) for `request`."""
        declared = request.headers.get(names.CATEGORY_HEADER)
        if declared in self.category_ranks:
            return self.category_ranks[declared], "header", declared, 0.0
        if len(eligible) < len(tiers) and len(eligible) == 1:
            return eligible[0].rank, "rule", "", 0.0  # prompt-length bounds left one tier
        text = request.prompt.lower()
        matched = [t.rank for t in eligible if t.keywords is not None and t.keywords.search(text)]
        if matched:
            return max(matched), "rule", "", 0.0
        if self.classifier is not None and request.prompt:
            found = self.classifier.classify(request)
            rank = self.category_ranks.get(found.category, 0)
            if found.probability < self.min_confidence:
                rank = max(self.category_ranks.values(), default=rank)  # unsure: buy quality
            return rank, "classifier", found.category, found.seconds
        fallback = next((t for t in eligible if t.fallback), None)
        return (fallback.rank if fallback is not None else 0), "fallback", "", 0.0

    def _prefix_holder(self, cycle: cycles.Cycle, acceptable: Sequence[Tier]) -> str | None:
        """The acceptable tier whose endpoints hold the longest prefix of the prompt (at least
        `affinityMinBlocks`); None when none does or there is no choice to make."""
        if self.index is None or len(acceptable) < 2 or not cycle.request.prompt:
            return None
        request = cycle.request
        best, best_blocks = None, self.affinity_min_blocks - 1
        for tier in acceptable:
            request.target_model = tier.model  # the index hashes per model
            probe = cycles.Cycle(request, cycle.snapshot, rng=cycle.rng)
            probe.candidates = [
                s for s in cycle.snapshot.endpoints if s.endpoint.labels.get(names.MODEL_LABEL) == tier.model
            ]
            blocks = int(self.index.matched_blocks(probe).max(initial=0))
            if blocks > best_blocks:
                best, best_blocks = tier.model, blocks
        request.target_model = request.model
        return best

    def _check_served(self, request: types.Request, states: Sequence[endpoints.EndpointState]) -> None:
        if not request.model:
            return  # body-less or not an inference call: nothing to check
        served = self._served.models(states)
        if served is None or request.target_model in served or request.lora_adapter is not None:
            return
        known = sorted([*served, *self.virtual_models])
        shown = ", ".join(known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
        raise types.Rejection(
            404, f"model {request.target_model!r} is not served by this pool; models: {shown or 'none'}"
        )

    def holds(self, cycle: cycles.Cycle, decision: types.Decision) -> bool:
        if not self.spill:
            return True
        state = cycle.chosen.get(decision.primary)
        if state is None:
            return True
        metrics = state.metrics
        if cycle.now - metrics.updated_at >= self.staleness_s:
            return True  # stale metrics say nothing about load: do not move a request on them
        return metrics.waiting < self.queue_depth and metrics.kv_usage < self.kv_utilization
