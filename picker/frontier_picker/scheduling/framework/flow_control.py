"""Flow control: hold requests in the picker while the pool is saturated, release them by priority and fairly
across tenants as capacity frees, and refuse what cannot wait. GIE's EPP flow-control layer, in short:

- A request goes at once when the pool has capacity and nothing of its priority or higher waits; otherwise it
  joins its priority band. Bands dispatch strictly by priority, highest first.
- Within a band, *flows* (one per `x-gateway-inference-fairness-id`) take turns, one request per turn: a
  tenant sending three times the rate gets no more than its share while both are backlogged.
- *Capacity* (`Gate`): the pool has room when some endpoint's engine reports room (fresh metrics, KV cache
  under the threshold, reported queue plus the requests sent to it since that report under the queue
  threshold: the count since the report stops one scrape's worth of room from releasing the whole queue at
  once) and, with in-flight limits, the pool's in-flight requests are under the sum of its endpoints'
  limits. When every endpoint's metrics are stale the engine side counts as room: a metrics outage must not
  become a traffic outage.
- *Concurrency limits* (`ConcurrencyLimits`, with `tpotTarget` and/or `ttftTarget`): an engine's time per
  output token grows with its batch, and with chunked prefill its time to first token grows with the
  prompts it admits at once, while its waiting queue stays short: GIE's thresholds see neither. Each
  endpoint gets an in-flight limit learned from what its completions show (TPOT, and TTFT less the time
  the request waited in flow control): additive increase while the limit binds and both meet their
  targets, a multiplicative cut from the in-flight count on a miss by a request decided after the
  previous cut. The picker learns it from what it observes; it is never told the fleet's speed.
  `maxInFlightPerEndpoint` caps it (or is a fixed limit without targets).
- *Limits*: requests and bytes over all bands; a request that does not fit is refused (429).
- *TTL*: a request waits at most `ttl_s`; sheddable ones (priority < 0) at most `sheddable_ttl_s`, and never
  past their TTFT SLO (waiting longer can only miss it). Expiry answers 429 for sheddable requests, 503 for
  the others. A sheddable request whose predicted wait (requests ahead / recent dispatch rate) already
  exceeds its SLO is refused at once.
- A request whose client went away leaves its queue at once (`cancel`).

The controller is pure bookkeeping over a caller's clock: the ext_proc server and the virtual-time cluster
drive it the same way (`submit`, `pump` when capacity may have freed, `cancel`), and it answers through the
ticket's callbacks, synchronously inside `pump`, so a dispatched request is charged before the gate is
asked again.
"""

import dataclasses
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from frontier_picker import endpoints
from frontier_picker.scheduling import types
from frontier_picker.scheduling.framework import saturation
from frontier_picker.scheduling.framework.errors import ConfigError

# GIE's outcome names, the `outcome` label of inference_extension_flow_control_request_queue_duration_seconds.
DISPATCHED: Final = "Dispatched"
REJECTED_CAPACITY: Final = "RejectedCapacity"
REJECTED_SLO: Final = "RejectedSLO"
EVICTED_TTL: Final = "EvictedTTL"
EVICTED_CANCELLED: Final = "EvictedContextCancelled"
NO_FAIRNESS_ID: Final = "default"
_RATE_HALF_LIFE_S: Final = 2.0  # dispatch-rate memory for the wait prediction


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The `flowControl` section of an EndpointPickerConfig."""

    max_requests: int = 5000
    max_bytes: int = 1 << 30
    ttl_s: float = 25.0  # under the ext_proc message timeout of the bootstrap (30 s)
    sheddable_ttl_s: float = 5.0
    max_in_flight_per_endpoint: int | None = None
    tpot_target_s: float | None = None
    ttft_target_s: float | None = None
    lifo_after_s: float | None = None


_FIELDS: Final = {
    "maxRequests": "max_requests",
    "maxBytes": "max_bytes",
    "defaultRequestTTL": "ttl_s",
    "sheddableRequestTTL": "sheddable_ttl_s",
    "maxInFlightPerEndpoint": "max_in_flight_per_endpoint",
    "tpotTarget": "tpot_target_s",
    "ttftTarget": "ttft_target_s",
    "lifoAfter": "lifo_after_s",
}


def from_config(raw: Mapping[str, Any] | None) -> Settings | None:
    """Settings from a `flowControl` section; None (flow control off) when the section is absent."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError("flowControl must be a mapping")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"flowControl: unknown field {unknown[0]!r}; known: {', '.join(sorted(_FIELDS))}")
    values: dict[str, Any] = {}
    for field, attribute in _FIELDS.items():
        if field not in raw:
            continue
        value = raw[field]
        if attribute.endswith("_s"):
            values[attribute] = saturation.duration_seconds(value, field=f"flowControl.{field}")
            if values[attribute] <= 0:
                raise ConfigError(f"flowControl.{field} must be positive, got {value!r}")
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"flowControl.{field} must be an integer >= 1, got {value!r}")
        values[attribute] = value
    return Settings(**values)


class Refused(types.Rejection):
    """A 429 from `FlowController.submit`; `outcome` is its GIE outcome name (the metrics' label)."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(429, reason)
        self.outcome = outcome


@dataclasses.dataclass(slots=True, eq=False, kw_only=True)
class Ticket:
    """A request held by flow control until `on_dispatch(now)` or `on_reject(rejection)` is called."""

    request: types.Request
    size: int  # body bytes it holds while queued
    flow: str
    enqueued_at: float
    deadline: float
    on_dispatch: Callable[[float], None]
    on_reject: Callable[[types.Rejection], None]
    outcome: str = ""  # set when it leaves the queue

    @property
    def queued(self) -> bool:
        return not self.outcome

    @property
    def sheddable(self) -> bool:
        return self.request.priority < 0


_BACKOFF: Final = 0.9  # the smallest cut on a miss
_MAX_CUT: Final = 0.25  # the largest
_ADAPTIVE_CEILING: Final = 1024  # the limit's start and cap when tpotTarget is set without a cap


@dataclasses.dataclass(slots=True)
class _Limit:
    value: float
    # When the limit was last cut: completions of requests decided before then show the batch that missed,
    # not the cut one, so they cannot cut it again (the controller's lag, compensated exactly).
    cut_at: float = float("-inf")


class ConcurrencyLimits:
    """In-flight limits per endpoint: fixed, or learned from completions' latencies (see the module
    docstring)."""

    def __init__(
        self, *, ceiling: int | None, tpot_target_s: float | None, ttft_target_s: float | None = None
    ) -> None:
        self.tpot_target_s = tpot_target_s
        self.ttft_target_s = ttft_target_s
        adaptive = tpot_target_s is not None or ttft_target_s is not None
        self.ceiling = ceiling if ceiling is not None or not adaptive else _ADAPTIVE_CEILING
        self._limits: dict[str, _Limit] = {}

    def limit(self, key: str) -> float | None:
        """The in-flight limit of endpoint `key` (None: unlimited)."""
        if self.ceiling is None:
            return None
        found = self._limits.get(key)
        return found.value if found is not None else float(self.ceiling)

    def learn(
        self,
        state: endpoints.EndpointState,
        completion: types.Completion,
        *,
        queued_s: float,
        decided_at: float,
        now: float,
    ) -> None:
        """Adjust the limit of the endpoint a request completed on (after its charge was refunded); it was
        decided at `decided_at` after waiting `queued_s` in flow control."""
        if (
            completion.aborted
            or completion.status != 200
            or completion.ttft_s is None
            or self.ceiling is None
        ):
            return
        # Observed / target per signal: > 1 is a miss. Latencies grow about linearly with what the engine
        # takes on at once, so the worst ratio says how far to cut.
        ratios = []
        if self.ttft_target_s is not None:
            ratios.append((completion.ttft_s - queued_s) / self.ttft_target_s)
        tokens = completion.completion_tokens or 0
        if self.tpot_target_s is not None and tokens > 1:
            ratios.append((completion.duration_s - completion.ttft_s) / (tokens - 1) / self.tpot_target_s)
        if not ratios:
            return
        worst = max(ratios)
        limit = self._limits.setdefault(state.endpoint.key, _Limit(float(self.ceiling)))
        in_flight = state.load.in_flight + 1  # counting the one that just completed
        if worst > 1.0:
            if decided_at >= limit.cut_at:
                step = min(_BACKOFF, max(_MAX_CUT, 1.0 / worst))
                limit.value = max(1.0, min(limit.value, in_flight) * step)
                limit.cut_at = now
        elif in_flight >= limit.value - 1:
            # Room under the targets: grow by the share of it left, up to one request per completion.
            limit.value = min(float(self.ceiling), limit.value + 1.0 - worst)


class Gate:
    """Whether the pool has room for one more request now (see the module docstring)."""

    def __init__(self, thresholds: saturation.Thresholds, limits: ConcurrencyLimits) -> None:
        self.thresholds = thresholds
        self.limits = limits
        self._sent: dict[str, tuple[float, int]] = {}  # key -> (report time, requests sent since it)

    def note_sent(self, state: endpoints.EndpointState) -> None:
        """Count a request sent to `state` since its last metrics report."""
        key = state.endpoint.key
        reported = state.metrics.updated_at
        since = self._sent.get(key)
        count = since[1] + 1 if since is not None and since[0] == reported else 1
        self._sent[key] = (reported, count)

    def _since_report(self, state: endpoints.EndpointState) -> int:
        since = self._sent.get(state.endpoint.key)
        return since[1] if since is not None and since[0] == state.metrics.updated_at else 0

    def has_room(self, state: endpoints.EndpointState, now: float) -> bool:
        """`state`'s engine reports room for one more request (GIE's saturation thresholds)."""
        return not self.thresholds.is_saturated(state, now, unreported=self._since_report(state))

    def saturation(self, states: Sequence[endpoints.EndpointState], now: float) -> float:
        """The share of endpoints with no room (1.0 for an empty pool)."""
        if not states:
            return 1.0
        full = sum(1 for state in states if not self.has_room(state, now) or not self._within_limit(state))
        return full / len(states)

    def open(self, states: Sequence[endpoints.EndpointState], now: float) -> bool:
        """The pool is within its in-flight budget and some engine reports room, or none has fresh metrics
        to tell (fail open on a metrics outage)."""
        if not states:
            return True  # the director answers 503 for an empty pool; nothing to wait for
        if not self._within_budget(states):
            return False
        if any(self.has_room(state, now) for state in states):
            return True
        return all(self.thresholds.is_stale(state, now) for state in states)

    def _within_limit(self, state: endpoints.EndpointState) -> bool:
        limit = self.limits.limit(state.endpoint.key)
        return limit is None or state.load.in_flight < limit

    def _within_budget(self, states: Sequence[endpoints.EndpointState]) -> bool:
        """The pool's in-flight count is under the sum of its endpoints' limits. A pool budget, not a
        per-endpoint gate: the scheduler keeps choosing by prefix affinity and load, and an endpoint it
        favours beyond its share shows it in its latencies, which cut its limit and so the budget."""
        if self.limits.ceiling is None:
            return True
        budget = 0.0
        in_flight = 0
        for state in states:
            limit = self.limits.limit(state.endpoint.key)
            assert limit is not None
            budget += limit
            in_flight += state.load.in_flight
        return in_flight < budget


class _Band:
    """The queued requests of one priority: a FIFO per flow, flows served round robin."""

    def __init__(self) -> None:
        self.flows: dict[str, deque[Ticket]] = {}  # insertion order is the round-robin order
        self.count = 0
        self.bytes = 0

    def push(self, ticket: Ticket) -> None:
        self.flows.setdefault(ticket.flow, deque()).append(ticket)
        self.count += 1
        self.bytes += ticket.size

    def take(self, ticket: Ticket) -> None:
        """Uncount `ticket` (it left the queue; its deque entry is dropped lazily)."""
        self.count -= 1
        self.bytes -= ticket.size

    def next(self, now: float, lifo_after_s: float | None) -> Ticket | None:
        """The next ticket in round-robin order across flows (the flow served moves to the back): a flow's
        oldest, or its newest once the oldest has waited `lifo_after_s` (adaptive LIFO: in a standing
        queue the oldest will miss its SLO anyway, and serving the newest keeps the served ones on time)."""
        while self.flows:
            flow, queue = next(iter(self.flows.items()))
            del self.flows[flow]
            while queue and not queue[0].queued:
                queue.popleft()
            while queue and not queue[-1].queued:
                queue.pop()
            if not queue:
                continue
            standing = lifo_after_s is not None and now - queue[0].enqueued_at > lifo_after_s
            ticket = queue.pop() if standing else queue.popleft()
            if queue:
                self.flows[flow] = queue
            return ticket
        return None


class FlowController:
    """The priority bands, their limits and the gate; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        thresholds: saturation.Thresholds,
        *,
        prepare: Callable[[types.Request], None] | None = None,
        observe: Callable[[Ticket, float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.prepare = prepare  # the scheduler's admitters set the priority (file-mode objectives)
        self.gate = Gate(
            thresholds,
            ConcurrencyLimits(
                ceiling=settings.max_in_flight_per_endpoint,
                tpot_target_s=settings.tpot_target_s,
                ttft_target_s=settings.ttft_target_s,
            ),
        )
        self.observe = observe  # called once per ticket as it leaves the queue (metrics)
        self._bands: dict[int, _Band] = {}
        self._order: list[int] = []  # priorities, highest first
        self._deadlines: list[tuple[float, int, Ticket]] = []  # a heap; left tickets are skipped lazily
        self._seq = itertools.count()
        self.count = 0
        self.bytes = 0
        self._rate = 0.0  # dispatches per second, exponentially decayed
        self._rate_at = 0.0

    # --- the caller's three calls ----------------------------------------------------------------------
    def submit(
        self,
        request: types.Request,
        *,
        size: int,
        now: float,
        states: Sequence[endpoints.EndpointState],
        on_dispatch: Callable[[float], None],
        on_reject: Callable[[types.Rejection], None],
    ) -> Ticket | None:
        """None when `request` may go now; else its queued ticket. Raises `Refused` (429) when the queues
        are full or a sheddable request is predicted to miss its TTFT SLO."""
        if self.prepare is not None:
            self.prepare(request)
        priority = request.priority
        if not self._waiting_at_or_above(priority) and self.gate.open(states, now):
            self._count_dispatch(now)
            return None
        if self.count + 1 > self.settings.max_requests or self.bytes + size > self.settings.max_bytes:
            raise Refused(
                REJECTED_CAPACITY,
                f"flow control queues are full ({self.count} requests, {self.bytes} bytes queued; limits "
                f"{self.settings.max_requests} requests, {self.settings.max_bytes} bytes)",
            )
        slo = request.ttft_slo_s
        if request.priority < 0 and slo is not None:
            wait = self.predicted_wait(priority, now)
            if wait > slo:
                raise Refused(
                    REJECTED_SLO,
                    f"sheddable request would wait ~{wait:.2f} s in flow control, past its TTFT SLO of "
                    f"{slo:g} s",
                )
        ttl = self.settings.sheddable_ttl_s if priority < 0 else self.settings.ttl_s
        if slo is not None and priority < 0:
            ttl = min(ttl, slo)
        ticket = Ticket(
            request=request,
            size=size,
            flow=request.fairness_id or NO_FAIRNESS_ID,
            enqueued_at=now,
            deadline=now + ttl,
            on_dispatch=on_dispatch,
            on_reject=on_reject,
        )
        self._band(priority).push(ticket)
        heapq.heappush(self._deadlines, (ticket.deadline, next(self._seq), ticket))
        self.count += 1
        self.bytes += size
        return ticket

    def pump(self, now: float, states: Sequence[endpoints.EndpointState]) -> None:
        """Refuse expired requests, then dispatch by priority and fairness while the gate is open."""
        if not self.count:
            self._deadlines.clear()  # only left tickets remain there
            return
        deadlines = self._deadlines
        while deadlines and (deadlines[0][0] <= now or not deadlines[0][2].queued):
            ticket = heapq.heappop(deadlines)[2]
            if not ticket.queued:
                continue
            self._leave(ticket, ticket.request.priority, EVICTED_TTL, now)
            waited = now - ticket.enqueued_at
            ticket.on_reject(
                types.Rejection(
                    429 if ticket.sheddable else 503,
                    f"waited {waited:.2f} s in flow control for capacity (its TTL)",
                )
            )
        while self.count and self.gate.open(states, now):
            found = self._next(now)
            if found is None:
                break
            chosen, priority = found
            self._leave(chosen, priority, DISPATCHED, now)
            chosen.request.queued_s = now - chosen.enqueued_at
            self._count_dispatch(now)
            chosen.on_dispatch(now)

    def cancel(self, ticket: Ticket, now: float) -> None:
        """The client went away: drop `ticket` from its queue (nothing when it already left)."""
        if ticket.queued:
            self._leave(ticket, ticket.request.priority, EVICTED_CANCELLED, now)

    # --- reading ---------------------------------------------------------------------------------------
    def queued(self) -> dict[tuple[int, str], tuple[int, int]]:
        """Requests and bytes queued per (priority, flow)."""
        out: dict[tuple[int, str], tuple[int, int]] = {}
        for priority, band in self._bands.items():
            for flow, queue in band.flows.items():
                live = [ticket.size for ticket in queue if ticket.queued]
                if live:
                    out[(priority, flow)] = (len(live), sum(live))
        return out

    def predicted_wait(self, priority: int, now: float) -> float:
        """Seconds a request of `priority` queued now would wait: those ahead over the dispatch rate."""
        ahead = sum(self._bands[p].count for p in self._order if p >= priority)
        rate = self._decayed_rate(now)
        if not ahead:
            return 0.0
        return ahead / rate if rate > 0 else float("inf")

    # --- internals -------------------------------------------------------------------------------------
    def _band(self, priority: int) -> _Band:
        band = self._bands.get(priority)
        if band is None:
            band = self._bands[priority] = _Band()
            self._order = sorted(self._bands, reverse=True)
        return band

    def _waiting_at_or_above(self, priority: int) -> bool:
        return any(self._bands[p].count for p in self._order if p >= priority)

    def _next(self, now: float) -> tuple[Ticket, int] | None:
        for priority in self._order:
            band = self._bands[priority]
            if band.count:
                ticket = band.next(now, self.settings.lifo_after_s)
                if ticket is not None:
                    return ticket, priority
        return None

    def _leave(self, ticket: Ticket, priority: int, outcome: str, now: float) -> None:
        ticket.outcome = outcome
        self._bands[priority].take(ticket)
        self.count -= 1
        self.bytes -= ticket.size
        if self.observe is not None:
            self.observe(ticket, now)

    def _decayed_rate(self, now: float) -> float:
        elapsed = max(0.0, now - self._rate_at)
        return float(self._rate * 0.5 ** (elapsed / _RATE_HALF_LIFE_S))

    def _count_dispatch(self, now: float) -> None:
        # An exponentially decayed count, normalised to requests per second.
        self._rate = self._decayed_rate(now) + 0.693 / _RATE_HALF_LIFE_S
        self._rate_at = now
