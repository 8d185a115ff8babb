"""Scheduling profiles and the scheduler that runs them.

A *profile* is filters -> weighted scorers -> picker. The *scheduler* is what the director calls for every
request (in the ext_proc server and in the virtual-time cluster alike): the admitters may refuse or prepare
the request, a tier router (when configured) turns a request for a virtual model into the model tiers to
try, then the profile handler picks profiles to run until it has what it needs and turns their
results into the decision, then every plugin that learns sees the decision (the prefix index records where
the prompt went). The scheduler knows the extension points, never a concrete plugin.

Given a `timer` (the ext_proc server sets one; the virtual-time cluster does not), every plugin call is
timed under GIE's extension-point names: `Filter`, `Scorer`, `Picker`, `ProfilePicker` (the handler
choosing profiles), `ProcessProfilesResults`, `PreRequest` (learning from the decision) and
`ResponseComplete` (learning from the completion); and Frontier's own `Admission` (admitters) and
`TierRouter` (the tier plan and each tier's acceptance).
"""

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import numpy as np

from frontier_picker import endpoints
from frontier_picker.scheduling import types
from frontier_picker.scheduling.framework import cycles, flow_control, plugin

log = logging.getLogger(__name__)

ADMISSION: Final = "Admission"
TIER_ROUTER: Final = "TierRouter"
PROFILE_PICKER: Final = "ProfilePicker"
FILTER: Final = "Filter"
SCORER: Final = "Scorer"
PICKER: Final = "Picker"
PROCESS_PROFILES_RESULTS: Final = "ProcessProfilesResults"
PRE_REQUEST: Final = "PreRequest"
RESPONSE_COMPLETE: Final = "ResponseComplete"
EXTENSION_POINTS: Final = (
    ADMISSION,
    TIER_ROUTER,
    PROFILE_PICKER,
    FILTER,
    SCORER,
    PICKER,
    PROCESS_PROFILES_RESULTS,
    PRE_REQUEST,
    RESPONSE_COMPLETE,
)


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

    def run(
        self, cycle: cycles.Cycle, count: int, timer: plugin.PluginTimer | None = None
    ) -> plugin.ProfileResult:
        """The chosen endpoints (best first, at most `count`) of the whole snapshot, with their scores; each
        plugin call reported to `timer` when given."""
        clock = time.perf_counter
        cycle.candidates = cycle.snapshot.endpoints
        for stage in self.filters:
            began = clock()
            cycle.candidates = stage.filter(cycle, cycle.candidates)
            if timer is not None:
                timer.record(FILTER, stage, clock() - began)
            if not cycle.candidates:
                return plugin.ProfileResult([], {})
        total = np.zeros(len(cycle.candidates), dtype=np.float64)
        for weighted in self.scorers:
            began = clock()
            total += weighted.weight * weighted.scorer.score(cycle)
            if timer is not None:
                timer.record(SCORER, weighted.scorer, clock() - began)
        began = clock()
        picked = self.picker.pick(cycle, total, count)
        if timer is not None:
            timer.record(PICKER, self.picker, clock() - began)
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
        # Where plugin call durations go (the ext_proc server sets it); None: nothing is timed.
        self.timer: plugin.PluginTimer | None = None
        self._preparers: list[plugin.Plugin] | None = None  # found on first use: the members are final then

    def members(self) -> list[plugin.Plugin]:
        """Every plugin the scheduler calls, each once: admitters, tier router, handler, the profiles'
        members, learners."""
        found: dict[int, plugin.Plugin] = {}
        router = [self.router] if self.router is not None else []
        profiled = [member for profile in self.profiles.values() for member in profile.members()]
        learning = [*self._decision_learners, *self._completion_learners]
        for member in (*self.admitters, *router, self.handler, *profiled, *learning):
            found.setdefault(id(member), member)
        return list(found.values())

    @property
    def destination_profile(self) -> Profile:
        """The profile that chooses the request's destination (the handler's first)."""
        return self.profiles[self.handler.profiles()[0]]

    def virtual_models(self) -> list[str]:
        """The virtual model names the config's tier router answers for (none without one)."""
        return list(self.router.model_names()) if self.router is not None else []

    def _record(self, extension_point: str, member: plugin.Plugin, began: float) -> None:
        if self.timer is not None:
            self.timer.record(extension_point, member, time.perf_counter() - began)

    def preparation(self, request: types.Request) -> Callable[[], None] | None:
        """The work the scheduler's plugins need done for `request` off the event loop, as one callable
        (None: nothing to do)."""
        if self._preparers is None:
            self._preparers = [
                p for p in self.members() if type(p).preparation is not plugin.Plugin.preparation
            ]
        works = [work for p in self._preparers if (work := p.preparation(request)) is not None]
        if not works:
            return None

        def prepare() -> None:
            for work in works:
                work()

        return prepare

    def prepare(self, request: types.Request) -> None:
        """What the admitters set before flow control queues `request` (its priority)."""
        for admitter in self.admitters:
            began = time.perf_counter()
            admitter.prepare(request)
            self._record(ADMISSION, admitter, began)

    def schedule(self, request: types.Request, snapshot: endpoints.Snapshot) -> types.Decision:
        """Choose endpoints for `request`; raises `types.Rejection` to refuse it."""
        if not snapshot.endpoints:
            raise types.Rejection(503, "no ready endpoint")
        for admitter in self.admitters:
            began = time.perf_counter()
            try:
                admitter.admit(request, snapshot)
            finally:
                self._record(ADMISSION, admitter, began)
        cycle = cycles.Cycle(request, snapshot, rng=self._rng)
        plan = None
        if self.router is not None:
            began = time.perf_counter()
            plan = self.router.plan(cycle)
            self._record(TIER_ROUTER, self.router, began)
        if plan is None:
            decision = self._run(cycle)
        else:
            cycle, decision = self._run_plan(request, snapshot, plan)
        for learner in self._decision_learners:
            began = time.perf_counter()
            learner.on_decision(cycle, decision)
            self._record(PRE_REQUEST, learner, began)
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
        while True:
            began = time.perf_counter()
            runs = self.handler.pick(cycle, results)
            self._record(PROFILE_PICKER, self.handler, began)
            if not runs:
                break
            for name, count in runs:
                results[name] = self.profiles[name].run(cycle, count, self.timer)
        began = time.perf_counter()
        try:
            return self.handler.process_results(cycle, results)
        finally:
            self._record(PROCESS_PROFILES_RESULTS, self.handler, began)

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
            began = time.perf_counter()
            held = self.router.holds(cycle, decision)
            self._record(TIER_ROUTER, self.router, began)
            if held:
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
            began = time.perf_counter()
            learner.on_completion(request, decision, completion)
            self._record(RESPONSE_COMPLETE, learner, began)
