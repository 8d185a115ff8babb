"""Peering: pickers of one pool that learn each other's decisions, over `frontier.picker.v1.Peering`.

Every picker process (a worker of a multi-process picker pod, or a replica of the pool's picker) publishes
its flights: each decision, with what its plugins learned from it (prefix block hashes, cost-ledger
charges), and each completion. Every peer subscribes to every other and applies what it hears through its
director (`learn_peer_decision` / `learn_peer_completion`), so in-flight accounting, the prefix index and
the cost ledger cover the whole pool's traffic, not one process's share.

- A subscription starts with a snapshot of the publisher's open flights, so a peer that starts or restarts
  converges at once on the load; the learned prefix index fills from the decisions that follow.
- When a subscription ends (the peer stopped, crashed, or fell too far behind), the subscriber drops every
  flight it learned from that peer (`forget_peer`) and subscribes again with backoff: a lost peer costs
  nothing but its own in-flight requests, and a peer that restarted is a new publisher id.
- A publisher keeps a bounded backlog per subscriber; a subscriber that falls behind it is cut off and
  resubscribes (a fresh snapshot) instead of growing the publisher's memory.
- The workers of one pod share one scraper: the worker that scrapes also publishes the endpoint metrics it
  scraped to subscribers that ask for them.

`Admin.ListEndpoints` answers what this picker knows of each endpoint (tests and operators read it).
"""

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Sequence

import grpc

from frontier_picker import datastore, director, peer_deltas
from frontier_picker.proto.v1 import picker_pb2 as wire
from frontier_picker.proto.v1 import picker_pb2_grpc as wire_grpc
from frontier_picker.scheduling import types

log = logging.getLogger(__name__)

BACKLOG_LIMIT = 50_000  # deltas queued for one subscriber before it is cut off to resubscribe
SNAPSHOT_BATCH = 1_000  # flights per snapshot batch
RETRY_S = (0.1, 2.0)  # resubscribe backoff: first delay, cap


def new_peer_id() -> str:
    """A peer id unique per process lifetime: host, pid and a random tail (a restart is a new peer)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclasses.dataclass(slots=True, eq=False)
class _Subscriber:
    name: str
    wants_metrics: bool
    pending: list[wire.Delta] = dataclasses.field(default_factory=list)
    ready: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    overflowed: bool = False


class Peering(wire_grpc.PeeringServicer):
    """One picker's side of peering: publisher to its subscribers, subscriber to its peers."""

    def __init__(
        self,
        *,
        decider: director.Director,
        store: datastore.Datastore,
        clock: Callable[[], float],
        peer_id: str | None = None,
        metrics_from_peers: bool = False,
        metrics_interval_s: float = 0.05,
    ) -> None:
        self.peer_id = peer_id or new_peer_id()
        self.director = decider
        self.store = store
        self.clock = clock
        self.metrics_from_peers = metrics_from_peers  # this picker does not scrape: a peer's scrapes
        self.metrics_interval_s = metrics_interval_s
        self._subscribers: set[_Subscriber] = set()
        self._following: dict[str, asyncio.Task[None]] = {}
        decider.share_with(self)

    # Publisher: what this picker decided, to every subscriber.

    def decided(self, flight: director.Flight) -> None:
        if self._subscribers:
            self._publish(peer_deltas.decided(flight, now=self.clock()))

    def completed(self, flight: director.Flight, completion: types.Completion) -> None:
        if self._subscribers:
            self._publish(peer_deltas.completed(flight, completion))

    def _publish(self, delta: wire.Delta) -> None:
        for subscriber in self._subscribers:
            if len(subscriber.pending) >= BACKLOG_LIMIT:
                subscriber.overflowed = True
            else:
                subscriber.pending.append(delta)
            subscriber.ready.set()

    async def Subscribe(
        self, request: wire.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[wire.DeltaBatch]:
        """The open flights, then every delta as it happens (see the module doc)."""
        subscriber = _Subscriber(
            name=request.subscriber or context.peer(), wants_metrics=request.endpoint_metrics
        )
        self._subscribers.add(subscriber)
        flights = self.director.open_flights()
        log.info("event=peer_subscribed subscriber=%s open_flights=%d", subscriber.name, len(flights))
        try:
            now = self.clock()
            snapshot = [peer_deltas.decided(flight, now=now) for flight in flights]
            if subscriber.wants_metrics:
                snapshot.extend(self._metrics_deltas())
            for start in range(0, max(len(snapshot), 1), SNAPSHOT_BATCH):
                done = start + SNAPSHOT_BATCH >= len(snapshot)
                yield wire.DeltaBatch(
                    publisher=self.peer_id,
                    deltas=snapshot[start : start + SNAPSHOT_BATCH],
                    snapshot_done=done,
                )
            async for batch in self._batches(subscriber):
                yield batch
        finally:
            self._subscribers.discard(subscriber)
            log.info("event=peer_unsubscribed subscriber=%s", subscriber.name)

    async def _batches(self, subscriber: _Subscriber) -> AsyncIterator[wire.DeltaBatch]:
        timeout = self.metrics_interval_s if subscriber.wants_metrics else None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(subscriber.ready.wait(), timeout)
            subscriber.ready.clear()
            if subscriber.overflowed:
                log.warning(
                    "event=peer_backlog_overflow subscriber=%s limit=%d", subscriber.name, BACKLOG_LIMIT
                )
                return  # it resubscribes and starts again from a snapshot
            deltas, subscriber.pending = subscriber.pending, []
            if subscriber.wants_metrics:
                deltas.extend(self._metrics_deltas())
            if deltas:
                yield wire.DeltaBatch(publisher=self.peer_id, deltas=deltas)

    def _metrics_deltas(self) -> list[wire.Delta]:
        now = self.clock()
        found = (peer_deltas.endpoint_metrics(state, now=now) for state in self.store.states())
        return [wire.Delta(endpoint_metrics=metrics) for metrics in found if metrics is not None]

    # Subscriber: every peer's decisions, applied here.

    def follow(self, addresses: Sequence[str]) -> None:
        """Subscribe to exactly `addresses` (gRPC targets: `host:port`, `unix:path`): new ones start,
        ones no longer listed stop (and their flights are forgotten)."""
        wanted = set(addresses)
        for address in self._following.keys() - wanted:
            self._following.pop(address).cancel()
        loop = asyncio.get_running_loop()
        for address in sorted(wanted - self._following.keys()):
            self._following[address] = loop.create_task(self._follow(address), name=f"peer {address}")

    async def stop(self) -> None:
        """Stop following every peer."""
        tasks = list(self._following.values())
        self._following.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow(self, address: str) -> None:
        delay = RETRY_S[0]
        while True:
            publisher: str | None = None
            try:
                async with grpc.aio.insecure_channel(address) as channel:
                    call = wire_grpc.PeeringStub(channel).Subscribe(  # type: ignore[no-untyped-call]
                        wire.SubscribeRequest(
                            subscriber=self.peer_id, endpoint_metrics=self.metrics_from_peers
                        )
                    )
                    async for batch in call:
                        if batch.publisher == self.peer_id:
                            log.info("event=peer_is_self address=%s", address)
                            return  # a peer list that names this picker too (a headless Service's)
                        if batch.publisher != publisher:
                            if publisher is not None:
                                self._lost(address, publisher, "restarted")
                            publisher = batch.publisher
                            log.info("event=peer_followed address=%s peer=%s", address, publisher)
                        self.apply(batch.publisher, batch)
                        delay = RETRY_S[0]
            except grpc.aio.AioRpcError as error:
                if publisher is not None or delay >= RETRY_S[1]:
                    log.warning("event=peer_unreachable address=%s code=%s", address, error.code().name)
            finally:
                if publisher is not None:
                    self._lost(address, publisher, "stream ended")
            await asyncio.sleep(delay)
            delay = min(RETRY_S[1], delay * 2)

    async def follow_service(self, target: str, *, interval_s: float = 5.0) -> None:
        """Follow every address `target` (`host:port`, a headless Service's name) resolves to, looked up
        again every `interval_s` (this picker's own address among them is recognised and left)."""
        host, _, port = target.rpartition(":")
        loop = asyncio.get_running_loop()
        while True:
            try:
                found = await loop.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            except OSError as error:
                log.warning("event=peer_lookup_failed target=%s error=%r", target, error)
            else:
                addresses = sorted({f"{info[4][0]}:{info[4][1]}" for info in found})
                if set(addresses) != set(self._following):
                    log.info("event=peers_resolved target=%s peers=%s", target, ",".join(addresses) or "-")
                self.follow(addresses)
            await asyncio.sleep(interval_s)

    def _lost(self, address: str, publisher: str, why: str) -> None:
        dropped = self.director.forget_peer(publisher)
        log.info(
            "event=peer_lost address=%s peer=%s reason=%r dropped_flights=%d",
            address,
            publisher,
            why,
            dropped,
        )

    def apply(self, publisher: str, batch: wire.DeltaBatch) -> None:
        """Apply one batch from peer `publisher` through the director."""
        now = self.clock()
        for delta in batch.deltas:
            change = delta.WhichOneof("change")
            if change == "decided":
                message = delta.decided
                request, decision = peer_deltas.peer_request(publisher, message)
                self.director.learn_peer_decision(
                    publisher, message.flight_id, request, decision, now=now - message.age_s
                )
            elif change == "completed":
                done = delta.completed
                flight = self.director.peer_flight(publisher, done.flight_id)
                if flight is not None:
                    completion = peer_deltas.completion(done, flight.decision.primary)
                    self.director.learn_peer_completion(publisher, done.flight_id, completion)
            elif change == "endpoint_metrics" and self.metrics_from_peers:
                state = self.store.get(delta.endpoint_metrics.endpoint)
                if state is not None:
                    state.metrics = peer_deltas.scraped(delta.endpoint_metrics, now=now)
                    state.scrape_failures = delta.endpoint_metrics.scrape_failures


class Admin(wire_grpc.AdminServicer):
    """What this picker knows of each endpoint."""

    def __init__(
        self, *, store: datastore.Datastore, decider: director.Director, clock: Callable[[], float]
    ) -> None:
        self.store = store
        self.director = decider
        self.clock = clock

    async def ListEndpoints(
        self, request: wire.ListEndpointsRequest, context: grpc.aio.ServicerContext
    ) -> wire.ListEndpointsResponse:
        now = self.clock()
        found = []
        for state in self.store.states():
            entry = wire.EndpointState(
                endpoint=state.endpoint.key,
                name=state.endpoint.name,
                labels=dict(state.endpoint.labels),
                in_flight=state.load.in_flight,
                in_flight_prompt_tokens=state.load.in_flight_prompt_tokens,
            )
            scraped = peer_deltas.endpoint_metrics(state, now=now)
            if scraped is not None:
                entry.metrics.CopyFrom(scraped)
            found.append(entry)
        return wire.ListEndpointsResponse(endpoints=found, peer_flights=self.director.peer_flights())
