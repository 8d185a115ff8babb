"""Flow control's bookkeeping, without servers: who waits, who goes first, who is refused and why, and the
in-flight limits it learns from completions."""

import pytest

from frontier_picker import datastore, director
from frontier_picker.scheduling import config, types
from frontier_picker.scheduling.framework import flow_control, saturation
from frontier_picker.scheduling.framework.errors import ConfigError

from .fleet import NOW, request, state


class Log:
    """Records what flow control did with each request, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, int]] = []

    def submit(
        self, flow: flow_control.FlowController, rid: str, states: list, *, now: float = NOW, **fields: object
    ) -> flow_control.Ticket | None:
        req = request(request_id=rid, **fields)
        return flow.submit(
            req,
            size=10,
            now=now,
            states=states,
            on_dispatch=lambda _now: self.events.append(("dispatched", rid, 0)),
            on_reject=lambda refusal: self.events.append(("rejected", rid, refusal.status)),
        )

    def dispatched(self) -> list[str]:
        return [rid for kind, rid, _ in self.events if kind == "dispatched"]


def controller(**settings: object) -> flow_control.FlowController:
    return flow_control.FlowController(flow_control.Settings(**settings), saturation.Thresholds())  # type: ignore[arg-type]


def test_config_section_is_parsed_with_durations_and_unknown_fields_are_named() -> None:
    settings = flow_control.from_config(
        {"maxRequests": 10, "defaultRequestTTL": "2s", "sheddableRequestTTL": "250ms", "tpotTarget": "40ms"}
    )
    assert settings == flow_control.Settings(
        max_requests=10, ttl_s=2.0, sheddable_ttl_s=0.25, tpot_target_s=0.04
    )
    assert flow_control.from_config(None) is None
    with pytest.raises(ConfigError, match="unknown field 'maxQueue'"):
        flow_control.from_config({"maxQueue": 1})
    with pytest.raises(ConfigError, match=r"flowControl\.maxRequests must be an integer >= 1"):
        flow_control.from_config({"maxRequests": 0})
    with pytest.raises(ConfigError, match=r"flowControl\.defaultRequestTTL"):
        flow_control.from_config({"defaultRequestTTL": "soon"})


def test_a_config_with_flow_control_gives_the_scheduler_a_controller() -> None:
    text = config.builtin_text("round-robin") + "flowControl:\n  maxRequests: 7\n"
    flow = config.load(text).flow
    assert flow is not None and flow.settings.max_requests == 7
    assert config.load(builtin="round-robin").flow is None


def test_requests_go_at_once_while_an_endpoint_has_room() -> None:
    flow, log = controller(), Log()
    assert log.submit(flow, "a", [state(0, waiting=4)]) is None
    assert flow.count == 0


def test_saturated_pool_queues_and_dispatches_higher_priority_first() -> None:
    flow, log = controller(), Log()
    full = [state(0, waiting=5)]
    for rid, priority in (("low", -1), ("mid", 0), ("high", 10), ("mid2", 0)):
        assert log.submit(flow, rid, full, priority=priority) is not None
    assert flow.count == 4
    flow.pump(NOW, full)
    assert log.dispatched() == []
    roomy = [state(0)]
    flow.pump(NOW, roomy)
    assert log.dispatched() == ["high", "mid", "mid2", "low"]
    assert flow.count == 0


def test_a_lower_priority_request_queues_behind_waiting_higher_ones_even_with_room() -> None:
    flow, log = controller(), Log()
    assert log.submit(flow, "high", [state(0, waiting=5)], priority=10) is not None
    assert log.submit(flow, "low", [state(0)], priority=0) is not None  # room, but "high" waits
    assert log.submit(flow, "higher", [state(0)], priority=20) is None  # nothing at or above 20 waits


def test_flows_of_one_band_take_turns() -> None:
    flow, log = controller(), Log()
    full = [state(0, waiting=5)]
    for i in range(6):
        log.submit(flow, f"a{i}", full, fairness_id="tenant-a")
    for i in range(2):
        log.submit(flow, f"b{i}", full, fairness_id="tenant-b")
    flow.pump(NOW, [state(0)])
    assert log.dispatched()[:4] == ["a0", "b0", "a1", "b1"]
    assert log.dispatched()[4:] == ["a2", "a3", "a4", "a5"]


def test_each_metrics_report_admits_at_most_the_queue_threshold() -> None:
    flow = controller()
    empty = state(0)
    sent: list[int] = []
    for i in range(8):

        def send(_now: float, i: int = i) -> None:
            sent.append(i)
            flow.gate.note_sent(empty)  # what the director does when it decides

        flow.submit(
            request(request_id=f"r{i}"),
            size=0,
            now=NOW,
            states=[state(0, waiting=5)],
            on_dispatch=send,
            on_reject=lambda _r: None,
        )
    # The engine reported an empty queue; five sends since that report fill the threshold, and the rest
    # wait for a report that includes them.
    flow.pump(NOW, [empty])
    assert sent == [0, 1, 2, 3, 4]
    empty.metrics.updated_at = NOW + 0.05
    flow.pump(NOW + 0.05, [empty])
    assert sent == list(range(8))


def test_queue_limits_refuse_with_429() -> None:
    flow, log = controller(max_requests=2), Log()
    full = [state(0, waiting=5)]
    log.submit(flow, "a", full)
    log.submit(flow, "b", full)
    with pytest.raises(types.Rejection) as refused:
        log.submit(flow, "c", full)
    assert refused.value.status == 429 and "queues are full" in refused.value.reason
    small = controller(max_bytes=15)
    log.submit(small, "a", full)
    with pytest.raises(types.Rejection):
        log.submit(small, "b", full)  # 10 + 10 bytes > 15


def test_expired_requests_are_refused_429_when_sheddable_and_503_otherwise() -> None:
    flow, log = controller(ttl_s=2.0, sheddable_ttl_s=0.5), Log()
    full = [state(0, waiting=5, age=0.0)]
    log.submit(flow, "shed", full, priority=-1)
    log.submit(flow, "std", full, priority=0)
    full[0].metrics.updated_at = NOW + 0.6
    flow.pump(NOW + 0.6, full)
    assert log.events == [("rejected", "shed", 429)]
    full[0].metrics.updated_at = NOW + 2.1
    flow.pump(NOW + 2.1, full)
    assert log.events[-1] == ("rejected", "std", 503)
    assert flow.count == 0


def test_sheddable_request_waits_no_longer_than_its_ttft_slo() -> None:
    flow, log = controller(sheddable_ttl_s=5.0), Log()
    full = [state(0, waiting=5, age=0.0)]
    log.submit(flow, "r", full, priority=-1, ttft_slo_s=0.2)
    full[0].metrics.updated_at = NOW + 0.25
    flow.pump(NOW + 0.25, full)
    assert log.events == [("rejected", "r", 429)]


def test_sheddable_request_predicted_to_miss_its_slo_is_refused_at_once() -> None:
    flow, log = controller(), Log()
    roomy = [state(0)]
    for i in range(20):  # a dispatch history: about 10 requests per second
        log.submit(flow, f"past{i}", roomy, now=NOW - 2 + i * 0.1)
    full = [state(0, waiting=5)]
    for i in range(10):
        log.submit(flow, f"queued{i}", full)
    with pytest.raises(types.Rejection) as refused:
        log.submit(flow, "late", full, priority=-1, ttft_slo_s=0.2)
    assert refused.value.status == 429 and "TTFT SLO" in refused.value.reason
    assert log.submit(flow, "patient", full, priority=-1, ttft_slo_s=60.0) is not None


def test_cancelled_request_leaves_the_queue_and_is_never_dispatched() -> None:
    outcomes: list[str] = []
    flow = flow_control.FlowController(
        flow_control.Settings(), saturation.Thresholds(), observe=lambda t, _now: outcomes.append(t.outcome)
    )
    log = Log()
    ticket = log.submit(flow, "gone", [state(0, waiting=5)])
    assert ticket is not None
    flow.cancel(ticket, NOW)
    assert flow.count == 0 and flow.bytes == 0
    flow.pump(NOW, [state(0)])
    assert log.events == [] and outcomes == [flow_control.EVICTED_CANCELLED]


def test_a_standing_queue_serves_its_newest_request_first_with_lifo_after() -> None:
    flow, log = controller(lifo_after_s=1.0), Log()
    full = [state(0, waiting=5)]
    for i in range(3):
        log.submit(flow, f"r{i}", full, now=NOW + i)
    flow.pump(NOW + 2.5, [state(0, age=-2.49)])  # r0 has waited 2.5 s: past lifoAfter
    assert log.dispatched()[0] == "r2"


def test_metrics_outage_fails_open_but_the_in_flight_budget_still_holds() -> None:
    gate = controller().gate
    stale = [state(0, age=5.0, waiting=50), state(1, age=5.0, waiting=50)]
    assert gate.open(stale, NOW)
    fresh_full = [state(0, waiting=50), state(1, age=5.0)]
    assert not gate.open(fresh_full, NOW)
    budget = controller(max_in_flight_per_endpoint=2).gate
    assert budget.open([state(0, age=5.0, in_flight=1), state(1, age=5.0, in_flight=2)], NOW)
    assert not budget.open([state(0, age=5.0, in_flight=2), state(1, age=5.0, in_flight=2)], NOW)


def completion(*, ttft: float = 0.1, tpot: float, tokens: int = 101) -> types.Completion:
    return types.Completion(
        endpoint="e", status=200, completion_tokens=tokens, ttft_s=ttft, duration_s=ttft + tpot * (tokens - 1)
    )


def test_limits_are_cut_by_a_miss_once_per_decision_after_the_cut_and_grow_while_they_bind() -> None:
    limits = flow_control.ConcurrencyLimits(ceiling=None, tpot_target_s=0.04)
    busy = state(0, in_flight=79)  # 80 in flight counting the completing request
    assert limits.limit(busy.endpoint.key) == 1024
    limits.learn(busy, completion(tpot=0.08), queued_s=0.0, decided_at=NOW - 5, now=NOW)
    assert limits.limit(busy.endpoint.key) == pytest.approx(40.0)  # 80 x 0.04 / 0.08
    # Requests decided before the cut ran in the batch that missed: they cannot cut again.
    limits.learn(busy, completion(tpot=0.08), queued_s=0.0, decided_at=NOW - 1, now=NOW + 1)
    assert limits.limit(busy.endpoint.key) == pytest.approx(40.0)
    at_limit = state(0, in_flight=39)
    limits.learn(at_limit, completion(tpot=0.02), queued_s=0.0, decided_at=NOW + 1, now=NOW + 5)
    assert limits.limit(busy.endpoint.key) == pytest.approx(40.5)  # + (1 - 0.02 / 0.04)
    idle = state(0, in_flight=3)
    limits.learn(idle, completion(tpot=0.02), queued_s=0.0, decided_at=NOW + 2, now=NOW + 6)
    assert limits.limit(busy.endpoint.key) == pytest.approx(40.5)  # not binding: no evidence to grow


def test_ttft_target_discounts_the_time_spent_queued() -> None:
    limits = flow_control.ConcurrencyLimits(ceiling=100, tpot_target_s=None, ttft_target_s=0.5)
    s = state(0, in_flight=99)
    limits.learn(s, completion(ttft=2.4, tpot=0.01), queued_s=2.0, decided_at=NOW, now=NOW + 3)
    assert limits.limit(s.endpoint.key) == 100  # 0.4 s at the engine: within the target
    limits.learn(s, completion(ttft=2.6, tpot=0.01), queued_s=1.6, decided_at=NOW, now=NOW + 3)
    assert limits.limit(s.endpoint.key) == pytest.approx(50.0)  # 1.0 s: twice the target


_OBJECTIVES = """plugins:
- type: inference-objectives
  parameters:
    objectives: [{name: critical, priority: 100}, {name: standard, priority: 0}, {name: batch, priority: -1}]
"""


def test_director_queues_by_the_configs_objectives_and_decides_on_dispatch() -> None:
    text = config.builtin_text("round-robin").replace("plugins:\n", _OBJECTIVES, 1)
    scheduler = config.load(text + "flowControl:\n  maxInFlightPerEndpoint: 1\n")
    store = datastore.Datastore()
    store.replace([state(0).endpoint])
    store.states()[0].metrics.updated_at = NOW
    decider = director.Director(scheduler=scheduler, store=store, flow=director.flow_of(scheduler))
    flights: dict[str, director.Flight] = {}

    def admit(rid: str, objective: str) -> flow_control.Ticket | None:
        req = request(request_id=rid, objective=objective)

        def go(now: float) -> None:
            flights[rid] = decider.decide(req, now=now)

        ticket = decider.admit(req, now=NOW, on_dispatch=go, on_reject=lambda _refusal: None)
        if ticket is None:
            go(NOW)
        return ticket

    assert admit("first", "standard") is None
    assert admit("batch", "batch") is not None  # the one endpoint is at its limit of 1
    assert admit("urgent", "critical") is not None
    assert list(flights) == ["first"]
    first = flights["first"]
    decider.complete(first, types.Completion(endpoint=first.decision.primary, status=200), now=NOW + 1)
    assert list(flights) == ["first", "urgent"]  # the critical request went ahead of the sheddable one
    assert flights["urgent"].request.queued_s == pytest.approx(1.0)
