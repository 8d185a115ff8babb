"""The event loop a picker process runs on.

`uvloop` (the default) is asyncio's loop reimplemented on libuv. Every ext_proc message crosses the loop
twice (gRPC's completion wakes a future, the reply's write completes another), and in GIE's Envoy
configuration a streamed response is one message per token each way, so the loop's own cost per callback
is a large part of the picker's CPU. Measured with `bench/frontier_bench/chunk_cost.py`, uvloop lowered the
picker's CPU per message in most cells (median ratio about 0.86 over three runs, one cell the other way).
`asyncio` stays selectable, for platforms without uvloop or to compare.
"""

import asyncio
from collections.abc import Coroutine
from typing import Any, Final, TypeVar

CHOICES: Final = ("uvloop", "asyncio")

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], *, kind: str = "uvloop") -> T:
    """Run `main` to completion on a new loop of `kind` (one of CHOICES)."""
    if kind == "uvloop":
        import uvloop  # only where chosen: the asyncio choice must work without it

        return uvloop.run(main)
    if kind != "asyncio":
        raise ValueError(f"event loop {kind!r}: choose one of {', '.join(CHOICES)}")
    return asyncio.run(main)
