"""Scheduling profiles and the scheduler that runs them.

A *profile* is filters -> weighted scorers -> picker. The *scheduler* is what the director calls for every
request (in the ext_proc server and in the virtual-time cluster alike): the admitters may refuse or prepare
the request, a tier router (when configured) turns a request for a virtual model into the model tiers to
try, then the profile handler picks profiles to run until it has what it needs and turns their
results into the decision, then every plugin that learns sees the decision (the prefix index records where
the prompt went). The scheduler knows the extension points, never a concrete plugin.
"""

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np

from frontier_picker import endpoints
from frontier_picker.scheduling import types
from frontier_picker.scheduling.framework import cycles, flow_control, plugin

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
    """The `types.Scheduler` built from an EndpointPickerConfig: admitters, an optional tier router, a
    profile handler and its profiles."""

    def __init__(
        self,
        *,
        handler: plugin.ProfileHandler,
        profiles: Mapping[str, Profile],
        admitters: Sequence[plugin.Admitter] = (),
        router: plugin.TierRouter | None = None,
        learners: Sequence[plugin.Plugin] = (),
        data_sources: Sequence[plugin.DataSource] = (),
        seed: int | None = None,
    ) -> None:
        self.handler = handler
        self.data_sources = list(data_sources)  # the server runs each as a task
        # The config's flow control (the loader sets it; the director drives it).
        self.flow: flow_control.FlowController | None = None
        self.profiles = dict(profiles)
        self.admitters = list(admitters)
        self.router = router
        # Only plugins that override a hook are called: most learn nothing, and this runs per request.
        self._decision_learners = [
            p for p in learners if type(p).on_decision is not plugin.Plugin.on_decision
        ]
        self._completion_learners = [
            p for p in learners if type(p).on_completion is not plugin.Plugin.on_completion
        ]
        self._sharers = [p for p in learners if type(p).share is not plugin.Plugin.share]
        self._sharer_names = {p.name: p for p in self._sharers}
        self.sharing = False  # the director turns it on when the picker has peers
        self._rng = np.random.default_rng(seed)

    @property
    def destination_profile(self) -> Profile:
        """The profile that chooses the request's destination (the handler's first)."""
        return self.profiles[self.handler.profiles()[0]]

    def virtual_models(self) -> list[str]:
        """The virtual model names the config's tier router answers for (none without one)."""
        return list(self.router.model_names()) if self.router is not None else []

    def prepare(self, request: types.Request) -> None:
        """What the admitters set before flow control queues `request` (its priority)."""
        for admitter in self.admitters:
            admitter.prepare(request)

    def schedule(self, request: types.Request, snapshot: endpoints.Snapshot) -> types.Decision:
        """Choose endpoints for `request`; raises `types.Rejection` to refuse it."""
        if not snapshot.endpoints:
            raise types.Rejection(503, "no ready endpoint")
        for admitter in self.admitters:
            admitter.admit(request, snapshot)
        cycle = cycles.Cycle(request, snapshot, rng=self._rng)
        plan = self.router.plan(cycle) if self.router is not None else None
        if plan is None:
            decision = self._run(cycle)
        else:
            cycle, decision = self._run_plan(request, snapshot, plan)
        for learner in self._decision_learners:
            learner.on_decision(cycle, decision)
        if self.sharing:
            learned = {}
            for sharer in self._sharers:
                data = sharer.share(cycle, decision)
                if data is not None:
                    learned[sharer.name] = data
            decision.learned = learned
        return decision

    def learn_shared(self, shared: types.SharedDecision) -> None:
        """Let each plugin learn a peer's decision from what its twin there shared (names it does not
        know, from a peer on another config, are skipped)."""
        for name, data in shared.decision.learned.items():
            sharer = self._sharer_names.get(name)
            if sharer is not None:
                sharer.learn_shared(data, shared)

    def _run(self, cycle: cycles.Cycle) -> types.Decision:
        results: dict[str, plugin.ProfileResult] = {}
        while runs := self.handler.pick(cycle, results):
            for name, count in runs:
                results[name] = self.profiles[name].run(cycle, count)
        return self.handler.process_results(cycle, results)

    def _run_plan(
        self, request: types.Request, snapshot: endpoints.Snapshot, plan: plugin.TierPlan
    ) -> tuple[cycles.Cycle, types.Decision]:
        """Run the profiles for each tier of `plan` in turn (a fresh cycle each: prefix hashes depend on the
        model) until the router accepts a decision; when it accepts none, the first tier that had one."""
        assert self.router is not None
        first: tuple[cycles.Cycle, types.Decision, plugin.TierOption] | None = None
        for index, option in enumerate(plan.options):
            request.target_model = option.model
            cycle = cycles.Cycle(request, snapshot, rng=self._rng)
            try:
                decision = self._run(cycle)
            except types.Rejection:
                continue  # no ready endpoint serves this tier: the next one may
            if first is None:
                first = (cycle, decision, option)
            if self.router.holds(cycle, decision):
                reason = option.reason if index == 0 else "spill"
                decision.tier = self._choice(plan, option.model, reason)
                return cycle, decision
        if first is None:
            raise types.Rejection(
                503, f"no ready endpoint serves any tier of virtual model {plan.virtual_model!r}"
            )
        cycle, decision, option = first
        request.target_model = option.model
        decision.tier = self._choice(plan, option.model, "all-saturated")
        return cycle, decision

    @staticmethod
    def _choice(plan: plugin.TierPlan, model: str, reason: str) -> types.TierChoice:
        return types.TierChoice(
            virtual_model=plan.virtual_model,
            model=model,
            reason=reason,
            category=plan.category,
            classify_s=plan.classify_s,
        )

    def on_completion(
        self, request: types.Request, decision: types.Decision, completion: types.Completion
    ) -> None:
        """Let every learning plugin see how the request ended."""
        for learner in self._completion_learners:
            learner.on_completion(request, decision, completion)
