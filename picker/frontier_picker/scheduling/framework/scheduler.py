"""Scheduling profiles and the scheduler that runs them.

A *profile* is filters -> weighted scorers -> picker. The *scheduler* is what the director calls for every
request (in the ext_proc server and in the virtual-time cluster alike): the admitters may refuse or prepare
the request, then the profile handler picks profiles to run until it has what it needs and turns their
results into the decision, then every plugin that learns sees the decision (the prefix index records where
the prompt went). The scheduler knows the extension points, never a concrete plugin.
"""

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np

from frontier_picker import endpoints
from frontier_picker.scheduling import types
from frontier_picker.scheduling.framework import cycles, plugin

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class WeightedScorer:
    """A scorer and the weight of its score in its profile's total."""

    scorer: plugin.Scorer
    weight: float


@dataclasses.dataclass(slots=True, kw_only=True)
class Profile:
    """One named pipeline of filters, weighted scorers and a picker."""

    name: str
    filters: Sequence[plugin.Filter]
    scorers: Sequence[WeightedScorer]
    picker: plugin.Picker

    def members(self) -> list[plugin.Plugin]:
        """Every plugin the profile runs, in order."""
        return [*self.filters, *(weighted.scorer for weighted in self.scorers), self.picker]

    def run(self, cycle: cycles.Cycle, count: int) -> plugin.ProfileResult:
        """The chosen endpoints (best first, at most `count`) of the whole snapshot, with their scores."""
        cycle.candidates = cycle.snapshot.endpoints
        for stage in self.filters:
            cycle.candidates = stage.filter(cycle, cycle.candidates)
            if not cycle.candidates:
                return plugin.ProfileResult([], {})
        total = np.zeros(len(cycle.candidates), dtype=np.float64)
        for weighted in self.scorers:
            total += weighted.weight * weighted.scorer.score(cycle)
        picked = self.picker.pick(cycle, total, count)
        return plugin.ProfileResult(
            [cycle.candidates[i] for i in picked],
            {cycle.candidates[i].endpoint.key: float(total[i]) for i in picked},
        )


class Scheduler:
    """The `types.Scheduler` built from an EndpointPickerConfig: admitters, a profile handler, profiles."""

    def __init__(
        self,
        *,
        handler: plugin.ProfileHandler,
        profiles: Mapping[str, Profile],
        admitters: Sequence[plugin.Admitter] = (),
        learners: Sequence[plugin.Plugin] = (),
        seed: int | None = None,
    ) -> None:
        self.handler = handler
        self.profiles = dict(profiles)
        self.admitters = list(admitters)
        # Only plugins that override a hook are called: most learn nothing, and this runs per request.
        self._decision_learners = [
            p for p in learners if type(p).on_decision is not plugin.Plugin.on_decision
        ]
        self._completion_learners = [
            p for p in learners if type(p).on_completion is not plugin.Plugin.on_completion
        ]
        self._rng = np.random.default_rng(seed)

    @property
    def destination_profile(self) -> Profile:
        """The profile that chooses the request's destination (the handler's first)."""
        return self.profiles[self.handler.profiles()[0]]

    def schedule(self, request: types.Request, snapshot: endpoints.Snapshot) -> types.Decision:
        """Choose endpoints for `request`; raises `types.Rejection` to refuse it."""
        if not snapshot.endpoints:
            raise types.Rejection(503, "no ready endpoint")
        for admitter in self.admitters:
            admitter.admit(request, snapshot)
        cycle = cycles.Cycle(request, snapshot, rng=self._rng)
        results: dict[str, plugin.ProfileResult] = {}
        while runs := self.handler.pick(cycle, results):
            for name, count in runs:
                results[name] = self.profiles[name].run(cycle, count)
        decision = self.handler.process_results(cycle, results)
        for learner in self._decision_learners:
            learner.on_decision(cycle, decision)
        return decision

    def on_completion(
        self, request: types.Request, decision: types.Decision, completion: types.Completion
    ) -> None:
        """Let every learning plugin see how the request ended."""
        for learner in self._completion_learners:
            learner.on_completion(request, decision, completion)
