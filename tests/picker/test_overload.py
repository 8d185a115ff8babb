"""The picker notices that its event loop runs behind (it lacks CPU) and says so in its log, with the
requests it refused meanwhile."""

import asyncio
import logging
import time

import pytest

from frontier_picker import overload


async def test_a_stalled_loop_is_seen_as_overload_and_its_end_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="frontier_picker.overload")
    state = overload.LoopLag(limit_s=0.05)
    watcher = asyncio.create_task(overload.watch(state, heartbeat_s=0.01))
    try:
        await asyncio.sleep(0.05)
        assert not state.overloaded()
        time.sleep(0.2)  # the loop is starved: nothing runs for 200 ms
        await asyncio.sleep(0)
        await asyncio.sleep(0.005)
        assert state.overloaded() and state.lag_s >= 0.1
        assert "ms behind" in state.refuse()
        await asyncio.sleep(0.05)  # the loop keeps up again
        assert not state.overloaded()
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    lines = [record.getMessage() for record in caplog.records]
    assert any(line.startswith("event=overloaded") for line in lines)
    assert any(line.startswith("event=overload_ended") and "refused=1" in line for line in lines)


def test_a_zero_limit_never_refuses() -> None:
    assert not overload.LoopLag(limit_s=0, lag_s=10).overloaded()
