"""Fixtures for the simulator's tests: loopback addresses from sim's own range (127.3.0.0/16)."""

import itertools
import os

import pytest

# A fresh /24 per test (offset by the process id), so parallel runs rarely share an address; ports are always
# chosen by the OS (port 0), so even a shared address cannot collide.
_SUBNETS = itertools.count(os.getpid() % 256)


@pytest.fixture
def subnet() -> str:
    """A prefix `127.3.N` whose addresses `127.3.N.1`..`127.3.N.254` this test may bind."""
    return f"127.3.{next(_SUBNETS) % 256}"
