"""The director: the one decision path between a request and the scheduler, for the ext_proc server and the
virtual-time cluster alike.

`admit` resolves what the datastore knows about the request (its InferenceObjective's priority, whether
its model is a LoRA adapter) and, when the config enables flow control, either lets it go at once or queues
it (`flow_control`): a queued request's callbacks fire later from `pump`, which the caller runs when
capacity may have freed (`complete(..., now=...)` does, and the server on a short timer). `decide` narrows
the datastore's endpoints to the proxy's subset hint, asks the scheduler for a decision, times it, charges
the primary endpoint's load and logs the decision. `complete` refunds exactly that charge, lets the
scheduler's plugins learn from how the request ended, and counts it. With peers (other workers of the pod,
other replicas of the pool: `peering`), each flight is also told to an observer, and the peers' flights are
charged and learned here (`learn_peer_decision`, `learn_peer_completion`, `forget_peer`), so load and the
learned state cover the whole pool's traffic. The protocol layer only moves bytes
around these calls, so the simulator, which calls them too (its baselines wrapped as schedulers), measures
the same accounting and the same queueing the server does.
"""

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from frontier_api import names
from frontier_picker import datastore, endpoints, metrics, subsets
from frontier_picker.scheduling import types
from frontier_picker.scheduling.framework import flow_control

log = logging.getLogger(__name__)


def flow_of(scheduler: types.Scheduler) -> flow_control.FlowController | None:
    """The flow control `scheduler`'s EndpointPickerConfig enables: schedulers built from one (or wrapping
    one) carry it as `flow`; any other scheduler has none."""
    flow = getattr(scheduler, "flow", None)
    return flow if isinstance(flow, flow_control.FlowController) else None


@dataclasses.dataclass(slots=True, kw_only=True)
class Flight:
    """A decided request until it completes: what was chosen and the load it was charged."""

    request: types.Request
    decision: types.Decision
    charge: datastore.Charge | None
    decided_at: float = 0.0  # the caller's clock
    flight_id: str = ""  # unique in this director; how peers name it
    completed: bool = False
    counted: bool = False  # in GIE's request counter (deferred to completion while its model is no label)
    running_label: str = ""  # its model's label in GIE's running-requests gauge while it runs


class PeerObserver(Protocol):
    """Who tells peer pickers about this director's flights (`peering.Peering`)."""

    def decided(self, flight: Flight) -> None:
        """`flight` was just decided here."""
        ...

    def completed(self, flight: Flight, completion: types.Completion) -> None:
        """`flight`, decided here, just completed."""
        ...


class Director:
    """Decides and completes requests against one datastore and one scheduler."""

    def __init__(
        self,
        *,
        scheduler: types.Scheduler,
        store: datastore.Datastore,
        metrics: metrics.Metrics | None = None,
        flow: flow_control.FlowController | None = None,
        log_decisions: bool = True,
    ) -> None:
        self.scheduler = scheduler
        self.store = store
        self.metrics = metrics
        self.flow = flow
        self.log_decisions = log_decisions  # off in the simulator: millions of decisions per run
        if flow is not None:
            flow.observe = self._flow_outcome
        self.observer: PeerObserver | None = None
        self._flight_ids = itertools.count(1)
        self._open: dict[
            str, Flight
        ] = {}  # flights decided here, not yet completed (only while it has peers)
        self._peer_flights: dict[str, dict[str, Flight]] = {}  # peer id -> flight id -> flight

    def admit(
        self,
        request: types.Request,
        *,
        now: float,
        size: int = 0,
        on_dispatch: Callable[[float], None],
        on_reject: Callable[[types.Rejection], None],
    ) -> flow_control.Ticket | None:
        """None when `request` may be decided now; else the ticket flow control queued it under (one of its
        callbacks fires later, from `pump`). Raises `types.Rejection` (429) when flow control refuses it."""
        self._resolve(request)
        if self.flow is None:
            return None
        began = time.perf_counter()
        try:
            ticket = self.flow.submit(
                request,
                size=size,
                now=now,
                states=self.store.states(),
                on_dispatch=on_dispatch,
                on_reject=on_reject,
            )
        except flow_control.Refused as refusal:
            self._count_enqueue(request, refusal.outcome, time.perf_counter() - began)
            self._count_flow(request, refusal.outcome, 0.0)
            if self.log_decisions:
                log.info(
                    "event=flow_rejected request_id=%s priority=%d fairness_id=%s reason=%r",
                    request.request_id,
                    request.priority,
                    request.fairness_id or "-",
                    refusal.reason,
                )
            raise
        # GIE's outcome of a request flow control holds: not yet finalized.
        outcome = flow_control.DISPATCHED if ticket is None else "NotYetFinalized"
        self._count_enqueue(request, outcome, time.perf_counter() - began)
        if ticket is not None and self.log_decisions:
            log.info(
                "event=queued request_id=%s priority=%d fairness_id=%s queued=%d",
                request.request_id,
                request.priority,
                ticket.flow,
                self.flow.count,
            )
        return ticket

    def pump(self, now: float) -> None:
        """Let flow control refuse what waited too long and dispatch what now fits."""
        if self.flow is not None:
            began = time.perf_counter()
            self.flow.pump(now, self.store.states())
            if self.metrics is not None:
                self.metrics.gie.flow_control_dispatch_cycle.observe(time.perf_counter() - began)

    def cancel(self, ticket: flow_control.Ticket, now: float) -> None:
        """The client of a queued request went away: it leaves the queue."""
        if self.flow is not None:
            self.flow.cancel(ticket, now)

    def models(self) -> list[str]:
        """Every model name a request may ask for: the endpoints' served models and LoRA adapters, and the
        scheduler's virtual models (what `GET /v1/models` through the gateway lists)."""
        found: set[str] = set()
        for state in self.store.states():
            served = state.endpoint.labels.get(names.MODEL_LABEL)
            if served:
                found.add(served)
            found.update(state.endpoint.adapters)
        if isinstance(self.scheduler, types.ListsModels):
            found.update(self.scheduler.virtual_models())
        return sorted(found)

    def _flow_outcome(self, ticket: flow_control.Ticket, now: float) -> None:
        self._count_flow(ticket.request, ticket.outcome, now - ticket.enqueued_at)
        if self.log_decisions and ticket.outcome != flow_control.DISPATCHED:
            log.info(
                "event=flow_evicted request_id=%s outcome=%s priority=%d fairness_id=%s waited_s=%.3f",
                ticket.request.request_id,
                ticket.outcome,
                ticket.request.priority,
                ticket.flow,
                now - ticket.enqueued_at,
            )

    def _count_attempt(self, request: types.Request, primary: endpoints.EndpointState | None) -> None:
        """GIE's scheduler_attempts_total: `failure` with no endpoint, else `success` naming the primary."""
        if self.metrics is None:
            return
        target = self.metrics.model_label(request.target_model)
        if primary is None:
            labels = ("failure", target, "", "", "")
        else:
            endpoint = primary.endpoint
            labels = ("success", target, endpoint.name, self.metrics.namespace, str(endpoint.port))
        self.metrics.child(self.metrics.gie.scheduler_attempts, *labels).inc()

    def _count_enqueue(self, request: types.Request, outcome: str, took: float) -> None:
        if self.metrics is None:
            return
        self.metrics.child(
            self.metrics.gie.flow_control_enqueue_duration,
            self.metrics.fairness_label(request.fairness_id or flow_control.NO_FAIRNESS_ID),
            str(request.priority),
            outcome,
        ).observe(took)

    def _count_flow(self, request: types.Request, outcome: str, waited: float) -> None:
        if self.metrics is None:
            return
        label = self.metrics.model_label
        self.metrics.child(
            self.metrics.gie.flow_control_queue_duration,
            self.metrics.fairness_label(request.fairness_id or flow_control.NO_FAIRNESS_ID),
            str(request.priority),
            outcome,
            self.metrics.pool,
            label(request.model),
            label(request.target_model),
        ).observe(waited)

    def preparation(self, request: types.Request) -> Callable[[], None] | None:
        """Work the scheduler needs done for `request` off the event loop before `admit` (None: none)."""
        if isinstance(self.scheduler, types.PreparesRequests):
            return self.scheduler.preparation(request)
        return None

    def _resolve(self, request: types.Request) -> None:
        """What the datastore knows about `request`: its objective's priority, whether it names an adapter."""
        if request.objective is not None:
            # GIE's rule: the named InferenceObjective's priority; an unknown name keeps the default (0).
            request.priority = self.store.objectives.get(request.objective, request.priority)
        if request.lora_adapter is None and request.target_model in self.store.adapters:
            request.lora_adapter = request.target_model  # the client named an adapter, not a base model

    def decide(
        self,
        request: types.Request,
        *,
        now: float,
        subset: Sequence[str] | None = None,
        detail: str = "",
    ) -> Flight:
        """Schedule `request` at time `now` and charge its primary; raises `types.Rejection` to refuse it.
        `detail` is appended to the decision's log line."""
        states = self.store.states()
        if subset is not None:
            states = subsets.restrict(states, subset)
            if not states:
                raise types.Rejection(
                    503, f"no ready endpoint in the subset hint {','.join(subset) or '(empty)'}"
                )
        if not states:
            raise types.Rejection(503, "no ready endpoint in the pool")
        self._resolve(request)
        began = time.perf_counter()
        try:
            decision = self.scheduler.schedule(request, endpoints.Snapshot(now, states))
            if not decision.endpoints:
                raise types.Rejection(503, "the scheduler chose no endpoint")
        except types.Rejection:
            self._count_attempt(request, None)
            raise
        finally:
            if self.metrics is not None:
                took = time.perf_counter() - began
                self.metrics.scheduling_duration.observe(took)
                self.metrics.gie.scheduler_e2e.observe(took)
        if self.metrics is not None and decision.prefix is not None:
            metrics.record_prefix_match(self.metrics, decision.prefix)
        flight = Flight(
            request=request,
            decision=decision,
            charge=self.store.charge(request, decision),
            decided_at=now,
        )
        self._count_attempt(request, flight.charge.state if flight.charge is not None else None)
        if self.flow is not None and flight.charge is not None:
            self.flow.gate.note_sent(flight.charge.state)
        if self.observer is not None:
            flight.flight_id = str(next(self._flight_ids))
            self._open[flight.flight_id] = flight
            self.observer.decided(flight)
        if self.metrics is not None:
            self.metrics.in_flight.inc()
            flight.running_label = self.metrics.model_label(request.model)
            self.metrics.child(self.metrics.gie.running_requests, flight.running_label).inc()
            if self.metrics.admitted(request.model) and self.metrics.admitted(request.target_model):
                self._count_request(flight, admit=False)
            if decision.tier is not None:
                self._count_tier(decision.tier)
        if self.log_decisions:
            log.info(
                "event=decision request_id=%s model=%s target_model=%s endpoints=%s prefill=%s profile=%s "
                "priority=%d subset=%s tier_reason=%s category=%s%s",
                request.request_id,
                request.model or "-",
                request.target_model or "-",
                ",".join(decision.endpoints),
                decision.prefill or "-",
                decision.profile or "-",
                request.priority,
                ",".join(subset) if subset is not None else "-",
                decision.tier.reason if decision.tier is not None else "-",
                (decision.tier.category or "-") if decision.tier is not None else "-",
                f" {detail}" if detail else "",
            )
        return flight

    def _count_request(self, flight: Flight, *, admit: bool) -> None:
        """Count `flight` in GIE's request counter: at the decision when its model names are label values
        already, else at completion, when a 2xx answer admits them (an unserved name counts as `other`)."""
        assert self.metrics is not None
        flight.counted = True
        request = flight.request
        models = (
            self.metrics.model_label(request.model, admit=admit),
            self.metrics.model_label(request.target_model, admit=admit),
        )
        self.metrics.child(self.metrics.gie.requests, *models, str(request.priority)).inc()

    def _count_tier(self, tier: types.TierChoice) -> None:
        assert self.metrics is not None
        label = self.metrics.model_label
        self.metrics.child(
            self.metrics.tier_decisions,
            # Both names come from the tier config (a virtual model it declares, a model a tier serves).
            label(tier.virtual_model, admit=True),
            label(tier.model, admit=True),
            tier.reason,
            tier.category,
        ).inc()
        if tier.classify_s:
            self.metrics.classification_duration.observe(tier.classify_s)

    def complete(self, flight: Flight, completion: types.Completion, *, now: float | None = None) -> None:
        """Record how `flight` ended (once): refund its charge, let the plugins learn, count it; with `now`,
        let flow control use the room it freed."""
        if flight.completed:
            return
        flight.completed = True
        datastore.Datastore.refund(flight.charge)
        if self.flow is not None and flight.charge is not None and now is not None:
            self.flow.gate.limits.learn(
                flight.charge.state,
                completion,
                queued_s=flight.request.queued_s,
                decided_at=flight.decided_at,
                now=now,
            )
        self._learn_and_count(flight, completion)
        if self.observer is not None and self._open.pop(flight.flight_id, None) is not None:
            self.observer.completed(flight, completion)
        if now is not None:
            self.pump(now)

    def share_with(self, observer: PeerObserver) -> None:
        """Tell `observer` about every flight from now on, with what the scheduler's plugins learned from
        each decision (when the scheduler can share that)."""
        self.observer = observer
        if isinstance(self.scheduler, types.SharesLearning):
            self.scheduler.sharing = True

    def open_flights(self) -> list[Flight]:
        """The flights decided here that have not completed (what a new peer learns first)."""
        return list(self._open.values())

    def learn_peer_decision(
        self, peer: str, flight_id: str, request: types.Request, decision: types.Decision, *, now: float
    ) -> None:
        """A peer decided `request` (as far as it described it): charge its load here too and let the
        scheduler's plugins learn what the peer's learned, until the peer says it completed."""
        flights = self._peer_flights.setdefault(peer, {})
        if flight_id in flights:
            return  # a snapshot repeating a flight already learned
        flight = Flight(
            request=request,
            decision=decision,
            charge=self.store.charge(request, decision),
            decided_at=now,
            flight_id=flight_id,
        )
        flights[flight_id] = flight
        if isinstance(self.scheduler, types.SharesLearning):
            try:
                self.scheduler.learn_shared(
                    types.SharedDecision(request=request, decision=decision, now=now, state=self.store.get)
                )
            except Exception:
                log.exception("event=learn_shared_failed peer=%s flight_id=%s", peer, flight_id)

    def peer_flights_of(self, peer: str) -> list[Flight]:
        """The open flights learned from `peer`."""
        return list(self._peer_flights.get(peer, {}).values())

    def peer_flight(self, peer: str, flight_id: str) -> Flight | None:
        """The open flight `flight_id` learned from `peer`, if any."""
        return self._peer_flights.get(peer, {}).get(flight_id)

    def learn_peer_completion(self, peer: str, flight_id: str, completion: types.Completion) -> None:
        """A peer's flight completed: refund it here and let the plugins learn from how it ended."""
        flight = self._peer_flights.get(peer, {}).pop(flight_id, None)
        if flight is None:
            return
        datastore.Datastore.refund(flight.charge)
        try:
            self.scheduler.on_completion(flight.request, flight.decision, completion)
        except Exception:
            log.exception("event=on_completion_failed peer=%s flight_id=%s", peer, flight_id)

    def forget_peer(self, peer: str) -> int:
        """The peer is gone (or restarted): refund every flight learned from it; how many there were."""
        flights = self._peer_flights.pop(peer, {})
        for flight in flights.values():
            datastore.Datastore.refund(flight.charge)
        return len(flights)

    def peer_flights(self) -> dict[str, int]:
        """Open flights learned from each peer."""
        return {peer: len(flights) for peer, flights in self._peer_flights.items()}

    def _learn_and_count(self, flight: Flight, completion: types.Completion) -> None:
        try:
            self.scheduler.on_completion(flight.request, flight.decision, completion)
        except Exception:
            log.exception("event=on_completion_failed request_id=%s", flight.request.request_id)
        if self.metrics is None:
            return
        self.metrics.in_flight.dec()
        self.metrics.child(self.metrics.gie.running_requests, flight.running_label).dec()
        # A model an endpoint answered with 2xx is one the pool serves: only such names become label values.
        served = not completion.aborted and 200 <= completion.status < 300
        models = (
            self.metrics.model_label(flight.request.model, admit=served),
            self.metrics.model_label(flight.request.target_model, admit=served),
        )
        if not flight.counted:
            self._count_request(flight, admit=served)
        code = "aborted" if completion.aborted else str(completion.status)
        self.metrics.child(self.metrics.requests, *models, code).inc()
        self.metrics.child(self.metrics.request_duration, *models).observe(completion.duration_s)
        if completion.prompt_tokens:
            self.metrics.child(self.metrics.prompt_tokens, *models).inc(completion.prompt_tokens)
        if completion.completion_tokens:
            self.metrics.child(self.metrics.completion_tokens, *models).inc(completion.completion_tokens)
        self._count_gie(models, completion, code)

    def _count_gie(self, models: tuple[str, str], completion: types.Completion, code: str) -> None:
        """The same completion under GIE's family names."""
        assert self.metrics is not None
        gie = self.metrics.gie
        child = self.metrics.child
        if completion.request_bytes:
            child(gie.request_sizes, *models).observe(completion.request_bytes)
        if completion.response_bytes is not None and not completion.aborted:
            child(gie.response_sizes, *models).observe(completion.response_bytes)
        if completion.aborted or completion.status >= 400:
            child(gie.request_errors, *models, code).inc()
            return
        child(gie.request_duration, *models).observe(completion.duration_s)
        if completion.ttft_s is not None:
            child(gie.ttft, *models).observe(completion.ttft_s)
        if completion.prompt_tokens:
            child(gie.input_tokens, *models).observe(completion.prompt_tokens)
        if completion.cached_tokens:
            child(gie.cached_tokens, *models).observe(completion.cached_tokens)
        tokens = completion.completion_tokens
        if tokens:
            child(gie.output_tokens, *models).observe(tokens)
            child(gie.normalized_tpot, *models).observe(completion.duration_s / tokens)
            if tokens > 1 and completion.ttft_s is not None:
                tpot = (completion.duration_s - completion.ttft_s) / (tokens - 1)
                child(gie.tpot, *models).observe(tpot)
