"""The datastore: the ready endpoints of the pool and the picker's live state about each.

Discovery (a file or a Kubernetes InferencePool) replaces the endpoint set; an endpoint that stays keeps its
`EndpointState` object, so scraped metrics and load accounting survive a reload. The metrics scraper reads
`states()` each cycle and assigns `state.metrics`; the protocol layer charges `state.load` when it sends a
request (`charge`) and refunds exactly that charge when the request completes (`refund`), even if the
endpoint left the pool in between, so in-flight counts never leak and never go negative.
"""

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

from frontier_picker import endpoints
from frontier_picker.scheduling import types

log = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True, kw_only=True)
class Charge:
    """What one scheduled request added to its primary endpoint's load."""

    state: endpoints.EndpointState
    prompt_tokens: int
    decode_tokens: int
    refunded: bool = False


class Datastore:
    """The endpoint set and its states, keyed by endpoint key (`ip:port`)."""

    def __init__(self) -> None:
        self._states: dict[str, endpoints.EndpointState] = {}
        self._ordered: tuple[endpoints.EndpointState, ...] = ()
        self._listeners: list[Callable[[], None]] = []
        self.synced = False  # True once discovery delivered its first endpoint set
        # InferenceObjective name -> priority, from the cluster (Kubernetes discovery); empty in file mode.
        self.objectives: Mapping[str, int] = {}
        self.adapters: frozenset[str] = frozenset()  # every LoRA adapter some endpoint serves

    def states(self) -> Sequence[endpoints.EndpointState]:
        """The live state objects of the current endpoints, in discovery order."""
        return self._ordered

    def get(self, key: str) -> endpoints.EndpointState | None:
        return self._states.get(key)

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every change of the endpoint set."""
        self._listeners.append(listener)

    def replace_objectives(self, priorities: Mapping[str, int]) -> None:
        """Make `priorities` the InferenceObjectives' priorities (by objective name)."""
        if dict(priorities) != dict(self.objectives):
            log.info(
                "event=objectives_changed objectives=%s",
                ",".join(f"{name}:{priority}" for name, priority in sorted(priorities.items())) or "-",
            )
        self.objectives = dict(priorities)

    def replace(self, discovered: Iterable[endpoints.Endpoint]) -> None:
        """Make `discovered` the endpoint set; unchanged keys keep their state objects."""
        fresh: dict[str, endpoints.EndpointState] = {}
        for endpoint in discovered:
            state = self._states.get(endpoint.key)
            if state is None:
                state = endpoints.EndpointState(endpoint=endpoint)
            elif state.endpoint != endpoint:
                state.endpoint = endpoint
            fresh[endpoint.key] = state
        added = fresh.keys() - self._states.keys()
        removed = self._states.keys() - fresh.keys()
        self._states = fresh
        self._ordered = tuple(fresh.values())
        self.adapters = frozenset(a for state in self._ordered for a in state.endpoint.adapters)
        first = not self.synced
        self.synced = True
        if added or removed or first:
            log.info(
                "event=endpoints_changed ready=%d added=%s removed=%s",
                len(fresh),
                ",".join(sorted(added)) or "-",
                ",".join(sorted(removed)) or "-",
            )
        for listener in self._listeners:
            listener()

    def charge(self, request: types.Request, decision: types.Decision) -> Charge | None:
        """Count `request` as in flight on its primary endpoint."""
        state = self._states.get(decision.primary)
        if state is None:
            return None
        charge = Charge(
            state=state, prompt_tokens=request.prompt_tokens, decode_tokens=request.max_tokens or 0
        )
        state.load.in_flight += 1
        state.load.in_flight_prompt_tokens += charge.prompt_tokens
        state.load.in_flight_decode_tokens += charge.decode_tokens
        return charge

    @staticmethod
    def refund(charge: Charge | None) -> None:
        """Undo `charge` (once; later calls do nothing)."""
        if charge is None or charge.refunded:
            return
        charge.refunded = True
        load = charge.state.load
        load.in_flight -= 1
        load.in_flight_prompt_tokens -= charge.prompt_tokens
        load.in_flight_decode_tokens -= charge.decode_tokens

    def in_flight(self) -> int:
        """Requests in flight over all current endpoints."""
        return sum(state.load.in_flight for state in self._ordered)
