"""The knee search against synthetic goodput curves: it finds the knee to the tolerance, in few loads."""

import pytest

from frontier_bench import knee, stats


def curve(capacity: float):
    """A policy that serves everything up to `capacity` req/s, and past it collapses to half its capacity."""

    def measure(qps: float) -> knee.Point:
        good = qps if qps <= capacity else capacity / 2
        return knee.Point(qps=qps, goodput_rps=good, good_fraction=good / qps)

    return measure


@pytest.mark.parametrize("capacity", [7.0, 40.0, 61.0, 149.0])
def test_search_brackets_the_capacity_within_the_tolerance(capacity):
    ladder = knee.Ladder(start=40.0, factor=1.25, tolerance=0.05, max_loads=20)
    found = knee.search(curve(capacity), ladder)
    assert found.saturated
    assert found.knee_qps is not None and found.first_failed_qps is not None
    assert found.knee_qps <= capacity < found.first_failed_qps
    assert found.first_failed_qps / found.knee_qps <= 1.05
    assert found.peak_goodput_rps == pytest.approx(found.knee_qps)
    assert len(found.loads) <= 12


def test_ladder_rungs_are_shared_so_policies_meet_at_matched_loads():
    ladder = knee.Ladder(start=40.0)
    weak = knee.search(curve(55.0), ladder).loads
    strong = knee.search(curve(90.0), ladder).loads
    rungs = [ladder.rung(k) for k in range(3)]
    assert list(weak[:2]) == rungs[:2] and list(strong[:3]) == rungs


def test_a_search_that_never_fails_says_its_peak_is_a_lower_bound():
    found = knee.search(curve(1e9), knee.Ladder(start=10.0, max_loads=4))
    assert not found.saturated and found.first_failed_qps is None
    assert found.loads == pytest.approx((10.0, 12.5, 15.625, 19.53125))
    assert found.peak_goodput_rps == pytest.approx(19.53125)


def test_slo_attainment_below_the_floor_fails_even_when_goodput_keeps_up():
    point = knee.Point(qps=10.0, goodput_rps=9.5, good_fraction=0.85)
    assert not knee.holds(point)
    assert knee.holds(knee.Point(qps=10.0, goodput_rps=9.2, good_fraction=0.92))


def test_next_load_is_pure_and_stops_at_the_tolerance():
    ladder = knee.Ladder(start=10.0, factor=2.0, tolerance=0.1)
    held = knee.Point(qps=10.0, goodput_rps=10.0, good_fraction=1.0)
    failed = knee.Point(qps=20.0, goodput_rps=5.0, good_fraction=0.25)
    assert knee.next_load([], ladder) == 10.0
    assert knee.next_load([held], ladder) == 20.0
    assert knee.next_load([held, failed], ladder) == pytest.approx(200**0.5)
    assert knee.next_load([failed], ladder) == 10.0  # the start failed: one rung down
    near = knee.Point(qps=19.0, goodput_rps=19.0, good_fraction=1.0)
    assert knee.next_load([held, failed, near], ladder) is None


def test_spread_and_overlap():
    a = stats.spread([3.0, 1.0, 2.0])
    assert (a.median, a.low, a.high, a.n) == (2.0, 1.0, 3.0, 3)
    assert a.overlaps(stats.spread([3.0, 4.0]))  # touching ranges overlap
    assert not a.overlaps(stats.spread([3.5, 4.0]))
    assert not stats.spread([3.5]).overlaps(a)
    with pytest.raises(ValueError):
        stats.spread([])
