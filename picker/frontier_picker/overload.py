"""Overload: when the picker cannot keep up, it refuses new requests and keeps serving the ones it routed.

When the picker gets less CPU than its load needs (a busy node, a CPU limit, a burst), every ext_proc
message waits longer, routed requests' response chunks as much as new requests' headers. Measured in the
fault suite (the picker on one core shared with 40 busy loops, 20 req/s): latency p50 5.2 s, p99 8.7 s,
nothing refused. A new request is the one thing the picker can decline cheaply: answering its headers with
503 costs no scheduling, no body and no response to echo, and frees the picker for the requests already on
their way.

How far behind the picker is, two ways (the larger counts):

- how late a new request arrives: Envoy's `request.time` attribute (when the gateway got the request's
  first byte; the bootstrap asks for it) against the picker's clock, beyond the quickest arrival of the last
  minute or two (`Transit`: the clocks need not agree). Most of the wait under starvation is here, before
  Python sees the message: in the fault suite's run the event loop lagged at most 0.2 s while requests
  waited 4-7 s;
- the event loop's own lag: a heartbeat that asks to wake every `HEARTBEAT_S` measures how late it wakes,
  for gateways that do not send the attribute; the lesser of two heartbeats in a row counts, so that one
  stall (a large body parsed at once) is not taken for overload.

Past the limit (`--overload-lag`), new requests get 503 (GIE's status for no capacity); routed streams are
never touched. The default, 5 s, refuses only what already waited past any interactive SLO: below that a
slow answer beats a 503, which the gateway does not retry on another replica (in the fault suite, a 1 s
limit also refused 16 of 30 concurrent 15 MB uploads, queued behind each other's bodies). Refusals are
counted and logged when overload starts and ends and at most once a second in between, not once each:
under overload, log lines are load too.
"""

import asyncio
import dataclasses
import datetime
import logging
from typing import Final

from google.protobuf import struct_pb2

from frontier_api import names

log = logging.getLogger(__name__)

HEARTBEAT_S: Final = 0.05
REQUEST_TIME: Final = names.REQUEST_TIME_ATTRIBUTE  # when the gateway got the request's first byte


def since_gateway(attributes: struct_pb2.Struct | None, now: float) -> float | None:
    """Seconds from the gateway's `request.time` (in the ext_proc attributes) to `now`, both wall clocks
    (negative when the picker's is behind); None when the gateway did not send it or sent something else."""
    if attributes is None or REQUEST_TIME not in attributes.fields:
        return None
    try:
        sent = datetime.datetime.fromisoformat(attributes.fields[REQUEST_TIME].string_value)
    except ValueError:
        return None
    if sent.tzinfo is None:
        return None
    return now - sent.timestamp()


@dataclasses.dataclass(slots=True)
class Transit:
    """How late requests reach the picker, against the least transit seen lately: the gateway's and the
    picker's clocks may disagree (by more than the limit, on a badly synchronised node), so lateness is
    measured from the quickest arrival of the last one to two `window_s`, which is clock offset plus the
    network. A starvation longer than that becomes the new normal here (the loop lag still sees it)."""

    window_s: float = 60.0
    current: float = float("inf")
    previous: float = float("inf")
    started: float = float("-inf")

    def late(self, transit_s: float, now: float) -> float:
        """Seconds beyond the quickest recent transit that a request with `transit_s` was late (at `now`,
        a monotonic clock)."""
        if now - self.started >= self.window_s:
            self.previous, self.current, self.started = self.current, transit_s, now
        else:
            self.current = min(self.current, transit_s)
        return transit_s - min(self.current, self.previous)


@dataclasses.dataclass(slots=True)
class LoopLag:
    """The event loop's latest lag against the limit (0: never refuse), and refusals not yet logged."""

    limit_s: float
    lag_s: float = 0.0
    refused: int = 0

    def overloaded(self, late_s: float = 0.0) -> bool:
        """Whether a new request that reached the picker `late_s` after the gateway got it is refused."""
        return 0 < self.limit_s < max(self.lag_s, late_s)

    def refuse(self, late_s: float = 0.0) -> str:
        """Count a refusal; the reason the client gets."""
        self.refused += 1
        behind = max(self.lag_s, late_s)
        return (
            f"the endpoint picker is overloaded ({behind * 1000:.0f} ms behind, limit "
            f"{self.limit_s * 1000:.0f} ms); retry"
        )


async def watch(state: LoopLag, *, heartbeat_s: float = HEARTBEAT_S, log_every_s: float = 1.0) -> None:
    """Run until cancelled: measure the loop's lag every `heartbeat_s`; log when overload starts (the loop
    lags, or a request was refused) and ends (neither for `log_every_s`), and at most every `log_every_s`
    while it lasts, with the refusals since the last line."""
    loop = asyncio.get_running_loop()
    was_overloaded = False
    logged_at = refused_at = -log_every_s
    previous_s = 0.0
    while True:
        due = loop.time() + heartbeat_s
        await asyncio.sleep(heartbeat_s)
        now = loop.time()
        lag_s = max(0.0, now - due)
        state.lag_s, previous_s = min(lag_s, previous_s), lag_s
        if state.refused:
            refused_at = now
        overloaded = state.overloaded() or now - refused_at < log_every_s
        if overloaded != was_overloaded or (state.refused and now - logged_at >= log_every_s):
            log.warning(
                "event=%s loop_lag_s=%.3f overload_lag_s=%g refused=%d",
                "overloaded" if overloaded else "overload_ended",
                state.lag_s,
                state.limit_s,
                state.refused,
            )
            state.refused = 0
            logged_at = now
        was_overloaded = overloaded
