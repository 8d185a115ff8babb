"""The picker notices that it runs behind (its event loop lags, or requests reach it late) and says so in
its log, with the requests it refused meanwhile."""

import asyncio
import datetime
import logging
import re
import time

import pytest
from google.protobuf import struct_pb2

from frontier_picker import overload


async def test_a_stalled_loop_is_seen_as_overload_and_its_end_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="frontier_picker.overload")
    state = overload.LoopLag(limit_s=0.05)
    watcher = asyncio.create_task(overload.watch(state, heartbeat_s=0.01, log_every_s=0.05))
    try:
        await asyncio.sleep(0.05)
        assert not state.overloaded()
        time.sleep(0.2)  # one stall (a large body parsed at once) is not overload
        await asyncio.sleep(0.03)
        assert not state.overloaded()
        for _ in range(4):  # the loop is starved: every heartbeat wakes 100 ms late
            time.sleep(0.1)
            await asyncio.sleep(0.001)
        assert state.overloaded() and state.lag_s >= 0.05
        assert "ms behind" in state.refuse()
        await asyncio.sleep(0.3)  # the loop keeps up again
        assert not state.overloaded()
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0].startswith("event=overloaded")
    assert lines[-1].startswith("event=overload_ended")
    refused = [int(count) for line in lines for count in re.findall(r"refused=(\d+)", line)]
    assert sum(refused) == 1


def test_a_request_that_reaches_the_picker_late_is_overload_and_a_missing_time_is_not() -> None:
    state = overload.LoopLag(limit_s=0.5)
    attributes = struct_pb2.Struct()
    sent = datetime.datetime(2026, 12, 4, 8, 0, 0, tzinfo=datetime.UTC)
    attributes.fields[overload.REQUEST_TIME].string_value = sent.isoformat()
    assert overload.since_gateway(attributes, sent.timestamp() + 0.8) == pytest.approx(0.8)
    assert overload.since_gateway(attributes, sent.timestamp() - 3) == pytest.approx(-3)  # clocks disagree
    assert state.overloaded(0.8)
    assert "800 ms behind" in state.refuse(0.8)
    assert not state.overloaded(0.1)
    assert overload.since_gateway(None, 0.0) is None
    attributes.fields[overload.REQUEST_TIME].string_value = "yesterday"
    assert overload.since_gateway(attributes, 0.0) is None


def test_lateness_is_measured_from_the_quickest_recent_transit_so_clock_offsets_do_not_count() -> None:
    transit = overload.Transit(window_s=10)
    # The picker's clock is 3 s ahead of the gateway's: every transit reads 3 s and more.
    assert transit.late(3.002, now=0) == 0
    assert transit.late(3.001, now=1) == 0
    assert transit.late(3.9, now=2) == pytest.approx(0.899)  # this one waited 0.9 s
    # The quickest arrival is remembered for one to two windows, then forgotten.
    assert transit.late(3.9, now=12) == pytest.approx(0.899)
    assert transit.late(3.9, now=22) == 0


def test_a_zero_limit_never_refuses() -> None:
    assert not overload.LoopLag(limit_s=0, lag_s=10).overloaded(10)
