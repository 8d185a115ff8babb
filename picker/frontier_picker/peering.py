"""Peering: pickers of one pool that learn each other's decisions, over `frontier.picker.v1.Peering`.

Every picker process (a worker of a multi-process picker pod, or a replica of the pool's picker) publishes
its flights: each decision, with what its plugins learned from it (prefix block hashes, cost-ledger
charges), and each completion. Peers subscribe to each other and apply what they hear through their
director (`learn_peer_decision` / `learn_peer_completion`), so in-flight accounting, the prefix index and
the cost ledger cover the whole pool's traffic, not one process's share.

- *Siblings* are the worker processes of one pod; they follow each other directly (Unix sockets). A
  replica in another pod follows any one worker of each other pod (the pods' shared peer port) and asks for
  its siblings' flights too: that worker relays them, each marked with the worker that decided it (its
  *origin*). Every flight is thus learned exactly once everywhere, with no loops: a relay forwards only
  siblings' flights, and only to subscribers from other pods.
- A subscription starts with a snapshot of the publisher's open flights (and its siblings' when asked), so a
  peer that starts or restarts converges at once on the load; the learned prefix index fills from the
  decisions that follow.
- When a subscription ends (the peer stopped, crashed, or fell too far behind), the subscriber drops every
  flight it learned through it (`forget_peer` for each origin) and subscribes again with backoff: a lost peer
  costs nothing but its own in-flight requests, and a peer that restarted is a new origin.
- A publisher keeps a bounded backlog per subscriber; a subscriber that falls behind it is cut off and
  resubscribes (a fresh snapshot) instead of growing the publisher's memory. A worker that loses a sibling
  cuts its subscribers from other pods the same way, so they forget the flights it relayed for that sibling.
- The workers of a pod share one scraper: the worker that scrapes also publishes the endpoint metrics it
  scraped (never metrics it was sent) to subscribers that ask for them.

`Admin.ListEndpoints` answers what this picker knows of each endpoint (tests and operators read it).
"""

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence

import grpc

from frontier_picker import datastore, director, peer_deltas
from frontier_picker.proto.v1 import picker_pb2 as wire
from frontier_picker.proto.v1 import picker_pb2_grpc as wire_grpc
from frontier_picker.scheduling import types

log = logging.getLogger(__name__)

BACKLOG_LIMIT = 50_000  # deltas queued for one subscriber before it is cut off to resubscribe
SNAPSHOT_BATCH = 1_000  # flights per snapshot batch
BATCH_WINDOW_S = 0.005  # deltas gathered into one message
RETRY_S = (0.1, 2.0)  # resubscribe backoff: first delay, cap


def new_peer_id() -> str:
    """A peer id unique per process lifetime: host, pid and a random tail (a restart is a new peer)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclasses.dataclass(slots=True, eq=False)
class _Subscriber:
    name: str
    wants_metrics: bool
    wants_siblings: bool
    pending: list[wire.Delta] = dataclasses.field(default_factory=list)
    ready: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    resync: str = ""  # why the subscriber must start again from a snapshot ("": it need not)


class Peering(wire_grpc.PeeringServicer):
    """One picker's side of peering: publisher to its subscribers, subscriber to its peers."""

    def __init__(
        self,
        *,
        decider: director.Director,
        store: datastore.Datastore,
        clock: Callable[[], float],
        peer_id: str | None = None,
        pod: str | None = None,
        scrapes: bool = True,
        metrics_interval_s: float = 0.05,
    ) -> None:
        self.peer_id = peer_id or new_peer_id()
        self.pod = pod or self.peer_id  # a single-process picker is its own pod
        self.director = decider
        self.store = store
        self.clock = clock
        self.scrapes = scrapes  # False: this worker's endpoint metrics come from a sibling that scrapes
        self.metrics_interval_s = metrics_interval_s
        self._subscribers: set[_Subscriber] = set()
        self._following: dict[tuple[str, bool], asyncio.Task[None]] = {}  # (address, sibling) -> task
        self._sibling_origins: set[str] = set()
        decider.share_with(self)

    # Publisher: what this picker decided (and its siblings, for other pods), to every subscriber.

    def decided(self, flight: director.Flight) -> None:
        if self._subscribers:
            self._publish(peer_deltas.decided(flight, now=self.clock()), relayed=False)

    def completed(self, flight: director.Flight, completion: types.Completion) -> None:
        if self._subscribers:
            self._publish(peer_deltas.completed(flight, completion), relayed=False)

    def _publish(self, delta: wire.Delta, *, relayed: bool) -> None:
        for subscriber in self._subscribers:
            if relayed and not subscriber.wants_siblings:
                continue
            if len(subscriber.pending) >= BACKLOG_LIMIT:
                subscriber.resync = f"backlog over {BACKLOG_LIMIT} deltas"
            else:
                subscriber.pending.append(delta)
            subscriber.ready.set()

    async def Subscribe(
        self, request: wire.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[wire.DeltaBatch]:
        """The open flights, then every delta as it happens (see the module doc)."""
        subscriber = _Subscriber(
            name=request.subscriber or context.peer(),
            wants_metrics=request.endpoint_metrics and self.scrapes,
            wants_siblings=request.siblings,
        )
        self._subscribers.add(subscriber)
        try:
            snapshot = self._snapshot(subscriber)
            log.info("event=peer_subscribed subscriber=%s snapshot=%d", subscriber.name, len(snapshot))
            for start in range(0, max(len(snapshot), 1), SNAPSHOT_BATCH):
                yield self._batch(
                    snapshot[start : start + SNAPSHOT_BATCH],
                    snapshot_done=start + SNAPSHOT_BATCH >= len(snapshot),
                )
            async for batch in self._batches(subscriber):
                yield batch
        finally:
            self._subscribers.discard(subscriber)
            log.info("event=peer_unsubscribed subscriber=%s", subscriber.name)

    def _batch(self, deltas: Iterable[wire.Delta], *, snapshot_done: bool = False) -> wire.DeltaBatch:
        return wire.DeltaBatch(
            publisher=self.peer_id, pod=self.pod, deltas=deltas, snapshot_done=snapshot_done
        )

    def _snapshot(self, subscriber: _Subscriber) -> list[wire.Delta]:
        now = self.clock()
        snapshot = [peer_deltas.decided(flight, now=now) for flight in self.director.open_flights()]
        if subscriber.wants_siblings:
            for origin in self._sibling_origins:
                for flight in self.director.peer_flights_of(origin):
                    snapshot.append(peer_deltas.decided(flight, now=now, origin=origin))
        if subscriber.wants_metrics:
            snapshot.extend(self._metrics_deltas())
        return snapshot

    async def _batches(self, subscriber: _Subscriber) -> AsyncIterator[wire.DeltaBatch]:
        timeout = self.metrics_interval_s if subscriber.wants_metrics else None
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await subscriber.ready.wait()
            # Each message costs both peers a gRPC write and read: let the deltas of a few milliseconds share
            # one (peers learn a decision that much later, far below a request's lifetime).
            await asyncio.sleep(BATCH_WINDOW_S)
            subscriber.ready.clear()
            if subscriber.resync:
                log.warning("event=peer_resync subscriber=%s reason=%r", subscriber.name, subscriber.resync)
                return  # it resubscribes and starts again from a snapshot
            deltas, subscriber.pending = subscriber.pending, []
            if subscriber.wants_metrics:
                deltas.extend(self._metrics_deltas())
            if deltas:
                yield self._batch(deltas)

    def _metrics_deltas(self) -> list[wire.Delta]:
        now = self.clock()
        found = (peer_deltas.endpoint_metrics(state, now=now) for state in self.store.states())
        return [wire.Delta(endpoint_metrics=metrics) for metrics in found if metrics is not None]

    # Subscriber: every peer's decisions, applied here.

    def follow(self, addresses: Sequence[str], *, siblings: bool = False) -> None:
        """Follow exactly `addresses` (gRPC targets: `host:port`, `unix:path`) of one kind, the sibling
        workers of this pod or the replicas of other pods: new ones start, ones no longer listed stop."""
        wanted = {(address, siblings) for address in addresses}
        for key in [key for key in self._following if key[1] == siblings and key not in wanted]:
            self._following.pop(key).cancel()
        loop = asyncio.get_running_loop()
        for key in sorted(wanted - self._following.keys()):
            self._following[key] = loop.create_task(self._follow(*key), name=f"peer {key[0]}")

    async def follow_service(self, target: str, *, interval_s: float = 5.0) -> None:
        """Follow every address `target` (`host:port`, a headless Service's name) resolves to, looked up
        again every `interval_s` (this pod's own address among them is recognised and left)."""
        host, _, port = target.rpartition(":")
        loop = asyncio.get_running_loop()
        known: list[str] = []
        while True:
            try:
                found = await loop.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            except OSError as error:
                log.warning("event=peer_lookup_failed target=%s error=%r", target, error)
            else:
                addresses = sorted({f"{info[4][0]}:{info[4][1]}" for info in found})
                if addresses != known:
                    log.info("event=peers_resolved target=%s peers=%s", target, ",".join(addresses) or "-")
                    known = addresses
                self.follow(addresses)
            await asyncio.sleep(interval_s)

    async def stop(self) -> None:
        """Stop following every peer."""
        tasks = list(self._following.values())
        self._following.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow(self, address: str, sibling: bool) -> None:
        delay = RETRY_S[0]
        while True:
            origins: set[str] = set()
            try:
                async with grpc.aio.insecure_channel(address) as channel:
                    request = wire.SubscribeRequest(
                        subscriber=self.peer_id,
                        endpoint_metrics=sibling and not self.scrapes,
                        siblings=not sibling,
                    )
                    stub = wire_grpc.PeeringStub(channel)  # type: ignore[no-untyped-call]
                    async for batch in stub.Subscribe(request):
                        if not origins:  # the first batch: who answered (one process per stream)
                            if not self._accepts(address, batch, sibling):
                                return
                            log.info("event=peer_followed address=%s peer=%s", address, batch.publisher)
                        self.apply(batch, origins, sibling=sibling)
                        delay = RETRY_S[0]
            except grpc.aio.AioRpcError as error:
                if origins or delay >= RETRY_S[1]:
                    log.warning("event=peer_unreachable address=%s code=%s", address, error.code().name)
            finally:
                self._lost(address, origins, "stream ended")
            await asyncio.sleep(delay)
            delay = min(RETRY_S[1], delay * 2)

    def _accepts(self, address: str, batch: wire.DeltaBatch, sibling: bool) -> bool:
        """Whether to follow the publisher of `batch`: not this pod through a replica address (a peer
        list or a Service that names this pod too), whose workers are followed as siblings."""
        if batch.publisher == self.peer_id or (not sibling and batch.pod == self.pod):
            log.info("event=peer_is_self address=%s", address)
            return False
        return True

    def _lost(self, address: str, origins: set[str], why: str) -> None:
        if origins & self._sibling_origins:
            # Other pods learned this sibling's flights through this worker, and no delta says "forget":
            # their streams end, and they resubscribe to a snapshot without it.
            for subscriber in self._subscribers:
                if subscriber.wants_siblings:
                    subscriber.resync = "a sibling worker was lost"
                    subscriber.ready.set()
        for origin in origins:
            dropped = self.director.forget_peer(origin)
            self._sibling_origins.discard(origin)
            log.info(
                "event=peer_lost address=%s peer=%s reason=%r dropped_flights=%d",
                address,
                origin,
                why,
                dropped,
            )
        origins.clear()

    def apply(self, batch: wire.DeltaBatch, origins: set[str], *, sibling: bool) -> None:
        """Apply one batch through the director, noting in `origins` every peer it named; a sibling's
        flights are relayed to subscribers from other pods."""
        now = self.clock()
        origins.add(batch.publisher)
        if sibling:
            self._sibling_origins.add(batch.publisher)
        for delta in batch.deltas:
            change = delta.WhichOneof("change")
            if change == "decided":
                message = delta.decided
                origin = message.origin or batch.publisher
                origins.add(origin)
                request, decision = peer_deltas.peer_request(origin, message)
                self.director.learn_peer_decision(
                    origin, message.flight_id, request, decision, now=now - message.age_s
                )
                if sibling:
                    self._publish(peer_deltas.relayed(delta, origin), relayed=True)
            elif change == "completed":
                done = delta.completed
                origin = done.origin or batch.publisher
                flight = self.director.peer_flight(origin, done.flight_id)
                if flight is not None:
                    completion = peer_deltas.completion(done, flight.decision.primary)
                    self.director.learn_peer_completion(origin, done.flight_id, completion)
                if sibling:
                    self._publish(peer_deltas.relayed(delta, origin), relayed=True)
            elif change == "endpoint_metrics" and sibling and not self.scrapes:
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
