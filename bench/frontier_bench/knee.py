"""Peak goodput by search: raise the offered load until the policy saturates, then narrow the knee.

A load *holds* when goodput is at least `floor` (90%) of the offered load and at least `floor` of the
requests meet the SLO; otherwise the policy is saturated there. The search climbs a geometric ladder
(`start`, `start x factor`, ...) until the first load that does not hold, then bisects (geometrically)
between the highest load that held below it and that load until they are within `tolerance` of each other.
If the start already fails it steps down the ladder instead. The result names the peak goodput (the best
over every load tried), the knee (the highest load that held) and the first load that did not; a search that
ran out of loads before any failure says so (`saturated` false: its peak is only a lower bound).

The ladder's rungs are the same for every policy and seed, so policies meet at matched loads up to their
own knees; only the bisection points are a policy's own.

`next_load` is pure: the loads tried so far in, the next load (or None: done) out; `search` drives it with
the one impure step, `measure`, which runs a load.
"""

import dataclasses
import math
from collections.abc import Callable, Sequence


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Point:
    """One measured load: offered `qps`, `goodput_rps` within the SLO, and the fraction of requests good."""

    qps: float
    goodput_rps: float
    good_fraction: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Ladder:
    """How the search moves: the first load, the ladder's ratio, when the bracket is narrow enough, and the
    most loads one search may run."""

    start: float
    factor: float = 1.25
    tolerance: float = 0.05
    max_loads: int = 12
    floor: float = 0.9

    def __post_init__(self) -> None:
        if self.start <= 0 or self.factor <= 1 or self.tolerance <= 0 or self.max_loads < 1:
            raise ValueError(f"invalid ladder {self}")

    def rung(self, k: int) -> float:
        """The k-th load of the ladder (k may be negative: below the start)."""
        return self.start * self.factor**k


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Knee:
    """A search's outcome; `knee_qps` is None when even the lowest load tried failed, `first_failed_qps`
    None when no load failed (then `saturated` is false and the peak is a lower bound)."""

    peak_goodput_rps: float
    peak_qps: float
    knee_qps: float | None
    first_failed_qps: float | None
    saturated: bool
    loads: tuple[float, ...]


def holds(point: Point, *, floor: float = 0.9) -> bool:
    """Whether the load is sustained: goodput >= floor x offered and SLO attainment >= floor."""
    return point.goodput_rps >= floor * point.qps and point.good_fraction >= floor


def _bracket(points: Sequence[Point], floor: float) -> tuple[float | None, float | None]:
    """(highest load that held below the lowest that failed, lowest that failed)."""
    failed = [p.qps for p in points if not holds(p, floor=floor)]
    high = min(failed) if failed else None
    held = [p.qps for p in points if holds(p, floor=floor) and (high is None or p.qps < high)]
    return (max(held) if held else None), high


def next_load(points: Sequence[Point], ladder: Ladder) -> float | None:
    """The next load to run given the points measured so far, or None when the search is done."""
    if not points:
        return ladder.start
    if len(points) >= ladder.max_loads:
        return None
    low, high = _bracket(points, ladder.floor)
    rungs = [round(math.log(p.qps / ladder.start, ladder.factor)) for p in points]
    if high is None:  # nothing failed yet: one rung up
        return ladder.rung(max(rungs) + 1)
    if low is None:  # the lowest load failed: one rung down
        return ladder.rung(min(rungs) - 1)
    if high / low <= 1 + ladder.tolerance:
        return None
    return math.sqrt(low * high)


def result(points: Sequence[Point], *, floor: float = 0.9) -> Knee:
    """The peak, the knee and the first failure over the points of a search."""
    if not points:
        raise ValueError("no points")
    best = max(points, key=lambda p: p.goodput_rps)
    low, high = _bracket(points, floor)
    return Knee(
        peak_goodput_rps=best.goodput_rps,
        peak_qps=best.qps,
        knee_qps=low,
        first_failed_qps=high,
        saturated=high is not None,
        loads=tuple(p.qps for p in points),
    )


def search(measure: Callable[[float], Point], ladder: Ladder) -> Knee:
    """Run `measure` at the loads `next_load` picks until it is done; the search's result."""
    points: list[Point] = []
    while (load := next_load(points, ladder)) is not None:
        points.append(measure(load))
    return result(points, floor=ladder.floor)
