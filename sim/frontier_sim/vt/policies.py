"""Routing policies of the virtual-time cluster besides the picker's own configs: baselines and an oracle.

The picker's configs (`frontier`, `gie-default`, `round-robin`, or any EndpointPickerConfig text) run as
`frontier_picker` schedulers through the picker's director, as in the ext_proc server. The policies here
answer `decide(request, token_ids, snapshot) -> Decision` (the oracle reads the prompt's token ids) and hear
`on_completion(...)`; `PolicyScheduler` puts one behind the same director:

- `Random`, `LeastRequest` (fewest in-flight requests by the picker datastore's accounting, ties at
  random): the plain load balancers a gateway offers without an endpoint picker;
- `Oracle`: perfect information, greedy use. It reads every engine core directly — the true cached
  prefix of this prompt, the running batch and its context — and counts the queue exactly: the uncached
  prompt tokens of the requests it sent each engine that have not produced their first token yet (it
  routes every request, so nothing else is queued). It picks the engine with the least predicted TTFT
  under that engine's own calibrated step model. Its prediction ignores arrivals after its decision and is
  therefore not always right, but it needs no learning and sees no stale metrics. It is the ceiling of
  what better *signals* can buy, not of routing: it minimises each request's own TTFT and ignores the
  prefill its choice adds for others, which under load copies prefixes until the fleet collapses
  (bench/results/virtual-6-shared-prefix.md, 80 req/s and up).

Baselines and the oracle consider only endpoints serving the request's target model (label
`inference.frontier.dev/model`) when any does, as a per-model Service would.
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from frontier_api import names
from frontier_picker import endpoints
from frontier_picker.scheduling import types
from frontier_sim import engine

# Oracle: a request that does not fit the free KV blocks waits for others to finish; priced at this much.
ORACLE_NO_ROOM_PENALTY_S = 1.0


@runtime_checkable
class Policy(Protocol):
    """What the cluster calls for every arrival and every completion."""

    def decide(
        self, request: types.Request, token_ids: Sequence[int], snapshot: endpoints.Snapshot
    ) -> types.Decision:
        """Choose the endpoint; raise `types.Rejection` to refuse."""
        ...

    def on_completion(
        self, request: types.Request, decision: types.Decision, completion: types.Completion
    ) -> None: ...


class PolicyScheduler:
    """A `Policy` as a `types.Scheduler`: the cluster sets `token_ids` to the arrival's before deciding."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.token_ids: Sequence[int] = ()

    def schedule(self, request: types.Request, snapshot: endpoints.Snapshot) -> types.Decision:
        return self.policy.decide(request, self.token_ids, snapshot)

    def on_completion(
        self, request: types.Request, decision: types.Decision, completion: types.Completion
    ) -> None:
        self.policy.on_completion(request, decision, completion)


class _ByModel:
    """Candidate positions per served model, computed once (the endpoint set of a run is fixed)."""

    def __init__(self, states: Sequence[endpoints.EndpointState]) -> None:
        by_model: dict[str, list[int]] = {}
        for i, state in enumerate(states):
            by_model.setdefault(state.endpoint.labels.get(names.MODEL_LABEL, ""), []).append(i)
        self.all = list(range(len(states)))
        self.by_model = by_model

    def candidates(self, model: str) -> list[int]:
        if len(self.by_model) <= 1:
            return self.all
        return self.by_model.get(model) or self.all


def _decision(key: str, profile: str) -> types.Decision:
    return types.Decision(endpoints=[key], profile=profile)


class Random:
    """A uniformly random endpoint (seeded)."""

    def __init__(self, states: Sequence[endpoints.EndpointState], *, seed: int) -> None:
        self._models = _ByModel(states)
        self._rng = np.random.default_rng(seed)

    def decide(
        self, request: types.Request, token_ids: Sequence[int], snapshot: endpoints.Snapshot
    ) -> types.Decision:
        positions = self._models.candidates(request.target_model)
        chosen = positions[int(self._rng.integers(len(positions)))]
        return _decision(snapshot.endpoints[chosen].endpoint.key, "random")

    def on_completion(
        self, request: types.Request, decision: types.Decision, completion: types.Completion
    ) -> None:
        return None


class LeastRequest:
    """The endpoint with the fewest requests in flight (the picker datastore's count), ties at random."""

    def __init__(self, states: Sequence[endpoints.EndpointState], *, seed: int) -> None:
        self._models = _ByModel(states)
        self._rng = np.random.default_rng(seed)

    def decide(
        self, request: types.Request, token_ids: Sequence[int], snapshot: endpoints.Snapshot
    ) -> types.Decision:
        states = snapshot.endpoints
        positions = self._models.candidates(request.target_model)
        counts = np.fromiter(
            (states[i].load.in_flight for i in positions), dtype=np.int64, count=len(positions)
        )
        best = np.flatnonzero(counts == counts.min())
        chosen = positions[int(best[int(self._rng.integers(len(best)))])]
        return _decision(states[chosen].endpoint.key, "least-request")

    def on_completion(
        self, request: types.Request, decision: types.Decision, completion: types.Completion
    ) -> None:
        return None


@dataclasses.dataclass(slots=True, kw_only=True)
class _Queued:
    """Uncached prompt tokens the oracle predicted for a request it sent and has not seen start decoding."""

    engine: int
    uncached: int


class Oracle:
    """Least predicted TTFT from the engines' true state (see the module doc).

    Exact over every candidate, but cheap at a thousand engines: engines holding the prompt's first block
    are predicted one by one; every other engine computes the whole prompt, and a vectorised lower bound
    of its TTFT (the prediction without its batch's context term) orders them, so only those whose bound
    beats the best prediction so far are predicted exactly.
    """

    def __init__(
        self,
        states: Sequence[endpoints.EndpointState],
        cores: Sequence[engine.Engine],
    ) -> None:
        self._models = _ByModel(states)
        self._cores = cores
        # Uncached prompt tokens sent to each engine and not yet prefilled.
        self._queued = np.zeros(len(cores), dtype=np.float64)
        self._sent: dict[str, _Queued] = {}
        models = [core.model for core in cores]
        idle_step = [m.decode_time(batch=0, query_tokens=1, context_tokens=0) for m in models]
        self._p0 = np.array([m.p0 for m in models])
        self._p1 = np.array([m.p1 for m in models])
        self._p2 = np.array([m.p2 for m in models])
        self._chunk = np.array([core.config.max_num_batched_tokens for core in cores], dtype=np.float64)
        self._step_fixed = np.array(idle_step)
        one_seq = [m.decode_time(batch=1, query_tokens=1, context_tokens=0) for m in models]
        self._step_per_seq = np.array(one_seq) - self._step_fixed
        self._arrays: dict[int, np.ndarray] = {}

    def _hashes(self, core: engine.Engine, token_ids: Sequence[int]) -> list[int]:
        bs = core.config.block_size
        hashes: list[int] = []
        parent: int | None = None
        for i in range((len(token_ids) - 1) // bs):
            parent = engine.block_hash(parent, token_ids[i * bs : (i + 1) * bs], None, core.config.hash_seed)
            hashes.append(parent)
        return hashes

    def predict(self, index: int, token_ids: Sequence[int], hashes: Sequence[int]) -> tuple[float, int]:
        """Predicted TTFT (model seconds) of a request with `token_ids` sent to engine `index` now, and the
        prompt tokens it would find cached there."""
        core = self._cores[index]
        cfg = core.config
        cached = 0
        if cfg.enable_prefix_caching:
            table = core.pool.cached
            for h in hashes:
                if h not in table:
                    break
                cached += 1
        cached *= cfg.block_size
        uncached = len(token_ids) - cached
        model = core.model
        ahead = float(self._queued[index])
        batch = len(core.running)
        context = sum(seq.num_computed for seq in core.running)
        steps = math.ceil((ahead + uncached) / cfg.max_num_batched_tokens)
        decode = (
            model.step_time(chunks=[], batch=batch, query_tokens=1, context_tokens=context) if batch else 0
        )
        ttft = (
            model.p0
            + model.p1 * (ahead + uncached)
            + model.p2 * uncached * (cached + uncached / 2)
            + steps * decode
        )
        needed = -(-len(token_ids) // cfg.block_size) - cached // cfg.block_size
        if needed > core.pool.num_free:
            ttft += ORACLE_NO_ROOM_PENALTY_S
        return ttft, cached

    def decide(
        self, request: types.Request, token_ids: Sequence[int], snapshot: endpoints.Snapshot
    ) -> types.Decision:
        positions = self._models.candidates(request.target_model)
        cores = self._cores
        hashes = self._hashes(cores[positions[0]], token_ids)  # every engine hashes alike (same seed)
        best, best_ttft, best_cached = positions[0], math.inf, 0
        holders: set[int] = set()
        if hashes:
            first = hashes[0]
            holders = {i for i in positions if first in cores[i].pool.cached}
            for i in sorted(holders):
                ttft, cached = self.predict(i, token_ids, hashes)
                if ttft < best_ttft:
                    best, best_ttft, best_cached = i, ttft, cached
        index = self._arrays.get(id(positions))
        if index is None:
            index = self._arrays[id(positions)] = np.array(positions, dtype=np.int64)
        n = float(len(token_ids))
        ahead = self._queued[index]
        batch = np.fromiter(
            (len(cores[i].running) for i in positions), dtype=np.float64, count=len(positions)
        )
        steps = np.ceil((ahead + n) / self._chunk[index])
        decode = np.where(batch > 0, self._step_fixed[index] + self._step_per_seq[index] * batch, 0.0)
        bound = (
            self._p0[index] + self._p1[index] * (ahead + n) + self._p2[index] * n * (n / 2) + steps * decode
        )
        for j in np.argsort(bound, kind="stable"):
            if bound[j] >= best_ttft:
                break
            i = positions[int(j)]
            if i in holders:
                continue
            ttft, cached = self.predict(i, token_ids, hashes)
            if ttft < best_ttft:
                best, best_ttft, best_cached = i, ttft, cached
        uncached = len(token_ids) - best_cached
        self._queued[best] += uncached
        self._sent[request.request_id] = _Queued(engine=best, uncached=uncached)
        return _decision(snapshot.endpoints[best].endpoint.key, "oracle")

    def started(self, request_id: str) -> None:
        """The request produced its first token: its prefill left the queue."""
        queued = self._sent.pop(request_id, None)
        if queued is not None:
            self._queued[queued.engine] -= queued.uncached

    def on_completion(
        self, request: types.Request, decision: types.Decision, completion: types.Completion
    ) -> None:
        self.started(request.request_id)


def builtin(
    name: str,
    *,
    states: Sequence[endpoints.EndpointState],
    cores: Sequence[engine.Engine],
    seed: int,
) -> Policy | None:
    """The non-picker policy called `name`, or None when `name` is not one of them."""
    if name == "random":
        return Random(states, seed=seed)
    if name == "least-request":
        return LeastRequest(states, seed=seed)
    if name == "oracle":
        return Oracle(states, cores)
    return None


BUILTIN: Mapping[str, str] = {
    "random": "a uniformly random endpoint",
    "least-request": "fewest in-flight requests (picker accounting), ties at random",
    "oracle": "least predicted TTFT from true cache contents and queues (perfect signals, greedy)",
}
