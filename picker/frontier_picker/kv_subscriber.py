"""The I/O shell around the KV block index: one ZMQ SUB socket per endpoint, feeding `kv_events.BlockIndex`.

An endpoint publishes KV events when discovery gave it the `inference.frontier.dev/kv-events-port` label
(pool discovery copies the pod annotation of that name, which the operator writes for tiers with
`engine.kvEvents.enabled`; an endpoints file sets the label directly), or when the subscriber is configured
with a port for every endpoint. It subscribes to `tcp://<endpoint address>:<port>`, every topic. The
endpoint set is read again every `reconcile_s`: sockets open for endpoints that joined, and close, with the
endpoint's entries forgotten, for those that left. Each socket has its own receive task; the decoding and
the index (pure, `frontier_picker.kv_events`) run in the event loop that schedules, so the index never
changes during a scheduling pass.

A sequence gap (the PUB socket dropped batches) is closed by a replay when the endpoint has a replay socket
(label `inference.frontier.dev/kv-events-replay-port`, or `default_replay_port`): the subscriber asks it
for the batches it missed (vLLM's protocol, `frontier_sim.kvevents`: a DEALER sends the first missing
sequence number; the ROUTER answers each buffered batch from there on, then an end marker) and applies them
in order before the batch that revealed the gap. When the replay cannot close the gap (no answer within
`replay_timeout_s`, or the engine no longer buffers the first missing batch), the endpoint's entries are
dropped and rebuilt from the events that follow, as without a replay socket.

One log line per meaningful event: subscribed, unsubscribed, a sequence gap (entries dropped, rebuilt from
the events that follow), a replay (how many batches were missing and how many came back), a cache reset, a
batch that does not decode, stores past the per-endpoint bound.
"""

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence

import zmq
import zmq.asyncio

from frontier_api import names
from frontier_picker import endpoints, kv_events

log = logging.getLogger(__name__)

YIELD_EVERY = 16
"""Batches applied between yields to the event loop (measured in bench/results/kv_events.md)."""
StatesFn = Callable[[], Sequence[endpoints.EndpointState]]


def events_address(
    endpoint: endpoints.Endpoint, *, default_port: int = 0, label: str = names.KV_EVENTS_PORT_ANNOTATION
) -> str | None:
    """The ZMQ endpoint `endpoint`'s engine publishes KV events on (with `label` the replay port's: where it
    answers replay requests), or None when it has none."""
    raw = endpoint.labels.get(label, "")
    port = int(raw) if raw.isdigit() and 0 < int(raw) < 65536 else default_port
    if not port:
        return None
    host = f"[{endpoint.address}]" if ":" in endpoint.address else endpoint.address
    return f"tcp://{host}:{port}"


@dataclasses.dataclass(slots=True)
class _Subscription:
    address: str
    replay: str | None
    socket: zmq.asyncio.Socket
    task: "asyncio.Task[None]"


class Subscriber:
    """Keeps one SUB socket per publishing endpoint of `states()` and applies what arrives to `index`."""

    def __init__(
        self,
        index: kv_events.BlockIndex,
        states: StatesFn,
        *,
        default_port: int = 0,
        default_replay_port: int = 0,
        reconcile_s: float = 1.0,
        replay_timeout_s: float = 1.0,
    ) -> None:
        self.index = index
        self.states = states
        self.default_port = default_port
        self.default_replay_port = default_replay_port
        self.reconcile_s = reconcile_s
        self.replay_timeout_s = replay_timeout_s
        self._context = zmq.asyncio.Context()
        self._subscriptions: dict[str, _Subscription] = {}
        self.batches = 0  # applied, over all endpoints
        self.gaps = 0  # gaps that dropped an endpoint's entries
        self.replayed = 0  # batches a replay brought back

    async def run(self) -> None:
        """Reconcile the sockets with the endpoint set every `reconcile_s`, until cancelled."""
        try:
            while True:
                self.reconcile()
                await asyncio.sleep(self.reconcile_s)
        finally:
            for key in list(self._subscriptions):
                await self._close(key)
            self._context.destroy(linger=0)

    def subscribed(self) -> dict[str, str]:
        """Endpoint key -> the ZMQ address subscribed to, for every endpoint with a live socket."""
        return {key: sub.address for key, sub in self._subscriptions.items() if not sub.task.done()}

    def reconcile(self) -> None:
        """Open sockets for endpoints that publish and have none, close those of endpoints gone."""
        wanted: dict[str, str] = {}
        replays: dict[str, str | None] = {}
        for state in self.states():
            address = events_address(state.endpoint, default_port=self.default_port)
            if address is not None:
                wanted[state.endpoint.key] = address
                replays[state.endpoint.key] = events_address(
                    state.endpoint,
                    default_port=self.default_replay_port,
                    label=names.KV_EVENTS_REPLAY_PORT_ANNOTATION,
                )
        for key in [
            key
            for key, sub in self._subscriptions.items()
            if (wanted.get(key), replays.get(key)) != (sub.address, sub.replay)
        ]:
            self._subscriptions.pop(key).task.cancel()  # its task closes the socket
            self.index.forget(key)
            log.info("event=kv_events_unsubscribed endpoint=%s", key)
        for key, address in wanted.items():
            current = self._subscriptions.get(key)
            if current is not None and not current.task.done():
                continue
            socket = self._context.socket(zmq.SUB)
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.RCVHWM, 100_000)
            socket.setsockopt(zmq.SUBSCRIBE, b"")
            socket.connect(address)
            replay = replays[key]
            task = asyncio.get_running_loop().create_task(
                self._receive(key, socket, replay), name=f"kv-events-{key}"
            )
            self._subscriptions[key] = _Subscription(address=address, replay=replay, socket=socket, task=task)
            log.info(
                "event=kv_events_subscribed endpoint=%s address=%s replay=%s restarted=%s",
                key,
                address,
                replay or "-",
                current is not None,
            )

    async def _replay(self, key: str, address: str, *, missing: range) -> None:
        """Ask `address` for the `missing` batches of endpoint `key` and apply those that continue its
        sequence; stops at the end marker, at the first batch past `missing`, or after `replay_timeout_s`."""
        dealer = self._context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(address)
        replayed = 0
        try:
            await dealer.send_multipart([b"", missing.start.to_bytes(8, "big")])
            async with asyncio.timeout(self.replay_timeout_s):
                while True:
                    frames = await dealer.recv_multipart()
                    if len(frames) < 2:
                        break
                    seq_frame, payload = frames[-2], frames[-1]  # after the DEALER's empty delimiter
                    seq = int.from_bytes(seq_frame, "big", signed=True)
                    if seq < 0 or not payload or seq >= missing.stop:
                        break  # the end marker, or past what is missing (the SUB socket has it)
                    last = self.index.last_seq(key)
                    if last is not None and seq <= last:
                        continue
                    if last is not None and seq != last + 1:
                        break  # the engine no longer buffers the first missing batch
                    self.index.apply(key, kv_events.decode([b"", seq_frame, payload]))
                    replayed += 1
        except TimeoutError:
            pass
        except kv_events.DecodeError as error:
            log.warning("event=kv_events_replay_invalid endpoint=%s error=%r", key, str(error))
        finally:
            dealer.close(linger=0)
        self.replayed += replayed
        log.info(
            "event=kv_events_replay endpoint=%s address=%s missing=%d replayed=%d",
            key,
            address,
            len(missing),
            replayed,
        )

    async def _close(self, key: str) -> None:
        subscription = self._subscriptions.pop(key)
        subscription.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await subscription.task

    async def _receive(self, key: str, socket: zmq.asyncio.Socket, replay: str | None) -> None:
        received = 0
        try:
            while True:
                frames = await socket.recv_multipart()
                received += 1
                if received % YIELD_EVERY == 0:
                    # A queued message is returned without suspending: yield so a burst of events does
                    # not hold the loop that answers requests.
                    await asyncio.sleep(0)
                try:
                    batch = kv_events.decode(frames)
                except kv_events.DecodeError as error:
                    self.index.drop(key)  # it may have carried removals
                    log.warning(
                        "event=kv_events_invalid endpoint=%s error=%r entries_dropped=true", key, str(error)
                    )
                    continue
                last = self.index.last_seq(key)
                if replay is not None and last is not None and batch.seq > last + 1:
                    await self._replay(key, replay, missing=range(last + 1, batch.seq))
                applied = self.index.apply(key, batch)
                self.batches += 1
                if applied.gap:
                    self.gaps += 1
                    log.warning(
                        "event=kv_events_gap endpoint=%s lost_batches=%d entries_dropped=true",
                        key,
                        applied.gap,
                    )
                if applied.cleared:
                    log.info("event=kv_events_cleared endpoint=%s", key)
                if applied.overflow:
                    log.warning(
                        "event=kv_events_overflow endpoint=%s ignored_blocks=%d bound=%d",
                        key,
                        applied.overflow,
                        self.index.max_blocks_per_endpoint,
                    )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event=kv_events_receive_failed endpoint=%s", key)  # reopened at the next reconcile
        finally:
            socket.close(linger=0)
