"""The picker gives freed request-body memory back to the system: it trims glibc's heap once bodies have
passed through (many bytes, or any and then a quiet interval), and never while no body comes."""

import asyncio
import logging

import pytest

from frontier_picker import memory


async def test_the_heap_is_trimmed_after_bodies_pass_and_never_while_none_come(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="frontier_picker.memory")
    seen = 0
    trimmer = asyncio.create_task(memory.trim_after_bodies(lambda: seen, interval_s=0.01, after_bytes=1000))

    def trims() -> int:
        return sum("event=memory_trimmed" in record.getMessage() for record in caplog.records)

    try:
        await asyncio.sleep(0.1)
        assert trims() == 0  # no body, no trim
        seen += 10  # a small body, then quiet: trimmed once
        await asyncio.sleep(0.1)
        assert trims() == 1
        for _ in range(5):  # a steady stream of large bodies: trimmed as they pass
            seen += 1000
            await asyncio.sleep(0.015)
        assert trims() >= 3
    finally:
        trimmer.cancel()
        await asyncio.gather(trimmer, return_exceptions=True)
