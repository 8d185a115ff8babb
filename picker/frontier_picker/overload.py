"""Overload: when the picker cannot keep up, it refuses new requests and keeps serving the ones it routed.

Every ext_proc message waits in the picker's one event loop; when the process gets less CPU than its load
needs (a busy node, a CPU limit, a burst), the loop falls behind and every message waits longer, routed
requests' response chunks as much as new requests' headers. Measured in the fault suite (the picker on one
core shared with 40 busy loops, 20 req/s): latency p50 5.2 s, p99 8.7 s, nothing refused. A new request is
the one thing the picker can decline cheaply: answering its headers with 503 costs no scheduling, no body
and no response to echo, and frees the loop for the requests already on their way.

The signal is the loop's own lag: a heartbeat that asks to wake every `HEARTBEAT_S` measures how late it
wakes. While that lag exceeds the limit (`--overload-lag`), new requests get 503 (GIE's status for no
capacity, which a gateway may retry elsewhere); routed streams are never touched. Refusals are counted and
logged when overload starts and ends and at most once a second in between, not once each: under overload,
log lines are load too.
"""

import asyncio
import dataclasses
import logging
from typing import Final

log = logging.getLogger(__name__)

HEARTBEAT_S: Final = 0.05


@dataclasses.dataclass(slots=True)
class LoopLag:
    """The event loop's latest lag against the limit (0: never refuse), and refusals not yet logged."""

    limit_s: float
    lag_s: float = 0.0
    refused: int = 0

    def overloaded(self) -> bool:
        return 0 < self.limit_s < self.lag_s

    def refuse(self) -> str:
        """Count a refusal; the reason the client gets."""
        self.refused += 1
        return (
            f"the endpoint picker is overloaded (its event loop is {self.lag_s * 1000:.0f} ms behind, limit "
            f"{self.limit_s * 1000:.0f} ms); retry"
        )


async def watch(state: LoopLag, *, heartbeat_s: float = HEARTBEAT_S, log_every_s: float = 1.0) -> None:
    """Run until cancelled: measure the loop's lag every `heartbeat_s`; log when overload starts and ends,
    and at most every `log_every_s` while it lasts, with the refusals since the last line."""
    loop = asyncio.get_running_loop()
    was_overloaded = False
    logged_at = loop.time()
    while True:
        due = loop.time() + heartbeat_s
        await asyncio.sleep(heartbeat_s)
        now = loop.time()
        state.lag_s = max(0.0, now - due)
        overloaded = state.overloaded()
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
