"""The pending ledger's fluid prefill queue: a request's first token, not its end, corrects the predicted
backlog behind it, in both directions."""

import numpy as np
import pytest

from frontier_picker.scheduling.framework import cycles
from frontier_picker.scheduling.plugins import pending

from . import fleet


def backlog(ledger: pending.Ledger, now: float) -> float:
    cycle = cycles.Cycle(
        fleet.request(), fleet.snapshot([fleet.state(0)], now=now), rng=np.random.default_rng(0)
    )
    return float(ledger.own_load(cycle).backlog[0])


def queued_pair() -> pending.Ledger:
    """Two requests sent at once, each predicted to prefill in 1 s: the queue ends 2 s later."""
    ledger = pending.Ledger(staleness_s=0.2, rate_window_s=10.0)
    for rid in ("first", "second"):
        ledger.charge(fleet.key(0), 1000.0, 1.0, now=fleet.NOW, request_id=rid)
    assert backlog(ledger, fleet.NOW) == pytest.approx(2.0)
    return ledger


def test_a_first_token_later_than_predicted_pushes_the_queue_behind_it_back() -> None:
    ledger = queued_pair()
    # The engine is twice as slow: the first request's first token at 2 s, its end much later.
    ledger.settle("first", 2.0, 30.0)
    assert backlog(ledger, fleet.NOW + 2.0) == pytest.approx(1.0)  # the second is now predicted at 3 s


def test_a_first_token_earlier_than_predicted_pulls_the_queue_in_and_the_end_does_not_count() -> None:
    ledger = queued_pair()
    # First token after 0.5 s; the answer streams for 30 s, which says nothing about the prefill queue.
    ledger.settle("first", 0.5, 30.0)
    assert backlog(ledger, fleet.NOW + 0.5) == pytest.approx(1.0)  # the second is now predicted at 1.5 s
