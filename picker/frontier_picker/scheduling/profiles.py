"""Scheduling profiles and the scheduler that runs them.

A *profile* is filters -> weighted scorers -> picker. The *scheduler* is what the protocol layer and the
virtual-time simulator call: it admits or sheds the request by priority, runs the selected profile for the
destination (primary and fallbacks), optionally a prefill profile (prefill/decode disaggregation), then lets
every plugin learn from the decision (the prefix index records where the prompt went).
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

from frontier_api import names
from frontier_picker import endpoints
from frontier_picker.scheduling import admission, plugins, prefix, saturation, types


@dataclasses.dataclass(slots=True, kw_only=True)
class Profile:
    """One named pipeline of filters, weighted scorers and a picker."""

    name: str
    filters: Sequence[plugins.Filter]
    scorers: Sequence[plugins.WeightedScorer]
    picker: plugins.Picker

    def members(self) -> list[plugins.Plugin]:
        return [*self.filters, *(weighted.scorer for weighted in self.scorers), self.picker]

    def run(self, cycle: plugins.Cycle, count: int) -> tuple[list[endpoints.EndpointState], dict[str, float]]:
        """The chosen endpoints (best first, at most `count`) and their weighted scores."""
        for stage in self.filters:
            cycle.candidates = stage.filter(cycle, cycle.candidates)
            if not cycle.candidates:
                return [], {}
        total = np.zeros(len(cycle.candidates), dtype=np.float64)
        for weighted in self.scorers:
            total += weighted.weight * weighted.scorer.score(cycle)
        picked = self.picker.pick(cycle, total, count)
        chosen = [cycle.candidates[i] for i in picked]
        return chosen, {cycle.candidates[i].endpoint.key: float(total[i]) for i in picked}


@dataclasses.dataclass(slots=True, kw_only=True)
class Disaggregation:
    """How prefill endpoints are chosen for long uncached prompts (see handlers.PDProfileHandler)."""

    profile: Profile
    threshold: int
    index: prefix.Index | None  # gives the cached tokens on the decode endpoint; None: nothing is cached


class ProfileScheduler:
    """The `types.Scheduler` built from an EndpointPickerConfig."""

    def __init__(
        self,
        *,
        profile: Profile,
        disaggregation: Disaggregation | None = None,
        thresholds: saturation.Thresholds = saturation.DEFAULT,
        objectives: admission.InferenceObjectives | None = None,
        fallbacks: int = 1,
        seed: int | None = None,
        learners: Sequence[plugins.Plugin] = (),
    ) -> None:
        self.profile = profile
        self.disaggregation = disaggregation
        self.thresholds = thresholds
        self.objectives = objectives
        self.fallbacks = fallbacks
        self._rng = np.random.default_rng(seed)
        # Every plugin that learns from decisions, once even if several profiles share it; `learners` adds
        # producers outside the profiles (the prefix index a cost scorer reads).
        unique: dict[int, plugins.Plugin] = {}
        for plugin in [
            *profile.members(),
            *(disaggregation.profile.members() if disaggregation else []),
            *learners,
        ]:
            unique.setdefault(id(plugin), plugin)
        self._learners = list(unique.values())
        self._role_scan: tuple[Sequence[endpoints.EndpointState] | None, bool] = (None, False)

    def _priority(self, request: types.Request) -> int:
        return self.objectives.priority(request) if self.objectives else request.priority

    def schedule(self, request: types.Request, snapshot: endpoints.Snapshot) -> types.Decision:
        if not snapshot.endpoints:
            raise types.Rejection(503, "no ready endpoint")
        if self._priority(request) < 0 and self.thresholds.all_saturated(snapshot.endpoints, snapshot.now):
            raise types.Rejection(429, "pool saturated; request priority is sheddable (< 0)")
        cycle = plugins.Cycle(request, snapshot, rng=self._rng)
        chosen, scores = self.profile.run(cycle, 1 + self.fallbacks)
        if not chosen:
            raise types.Rejection(503, f"no ready endpoint serves model {request.target_model!r}")
        chosen_states = {state.endpoint.key: state for state in chosen}
        prefill = self._prefill(cycle, chosen[0])
        if prefill is not None:
            chosen_states[prefill.endpoint.key] = prefill
        decision = types.Decision(
            endpoints=[state.endpoint.key for state in chosen],
            prefill=prefill.endpoint.key if prefill is not None else None,
            profile=self.profile.name,
            scores=scores,
        )
        cycle.derived["chosen_states"] = chosen_states
        for plugin in self._learners:
            plugin.on_decision(cycle, decision)
        return decision

    def _has_prefill_endpoints(self, states: Sequence[endpoints.EndpointState]) -> bool:
        # The datastore hands out the same sequence object until the endpoint set changes; holding a
        # reference to it (not its id) makes the cached answer safe.
        if states is not self._role_scan[0]:
            self._role_scan = (states, any(state.endpoint.role == names.ROLE_PREFILL for state in states))
        return self._role_scan[1]

    def _prefill(
        self, cycle: plugins.Cycle, destination: endpoints.EndpointState
    ) -> endpoints.EndpointState | None:
        pd = self.disaggregation
        if pd is None or destination.endpoint.role == names.ROLE_PREFILL:
            return None
        if not self._has_prefill_endpoints(cycle.snapshot.endpoints):
            return None
        request = cycle.request
        prompt_tokens = request.prompt_tokens or len(request.prompt) // prefix.CHARS_PER_TOKEN
        if prompt_tokens <= pd.threshold:
            return None
        cached = 0.0
        if pd.index is not None and pd.index.hashes(cycle):
            position = cycle.positions()[destination.endpoint.key]
            cached = float(pd.index.matched_blocks(cycle)[position]) * pd.index.tokens_per_block
        if prompt_tokens - cached <= pd.threshold:
            return None
        cycle.candidates = cycle.snapshot.endpoints
        chosen, _ = pd.profile.run(cycle, 1)
        return chosen[0] if chosen else None

    def on_completion(
        self, request: types.Request, decision: types.Decision, completion: types.Completion
    ) -> None:
        for plugin in self._learners:
            plugin.on_completion(request, decision, completion)
