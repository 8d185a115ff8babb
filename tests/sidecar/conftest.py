"""Fixtures for the sidecar's tests: loopback addresses from the sidecar's own range (127.6.0.0/16)."""

import itertools
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest

# A fresh /24 per test (offset by the process id), so parallel runs rarely share an address; ports are always
# chosen by the OS (port 0), so even a shared address cannot collide.
_SUBNETS = itertools.count(os.getpid() % 256)


@pytest.fixture
def subnet() -> str:
    """A prefix `127.6.N` whose addresses `127.6.N.1`..`127.6.N.254` this test may bind."""
    return f"127.6.{next(_SUBNETS) % 256}"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client
