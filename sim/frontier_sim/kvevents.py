"""KV cache events on the wire, as vLLM publishes them for prefix-cache-aware routers (llm-d, Dynamo).

A ZMQ PUB socket sends one multipart message per engine step that changed the cache:
`[topic, 8-byte big-endian sequence number, msgpack(EventBatch)]`. The batch and its events are encoded the
way vLLM's msgspec structs (`array_like=True`, tagged) encode them:

    EventBatch       = [ts, [event, ...], data_parallel_rank]
    BlockStored      = ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id,
    medium] BlockRemoved     = ["BlockRemoved", block_hashes, medium]
    AllBlocksCleared = ["AllBlocksCleared"]

`ts` is the server's model clock (seconds since the epoch at start, advancing in model time). Events of a
step are published before the step's tokens are delivered, so a block is announced before any request can
hit it, and every eviction is announced.

`--kv-events-config '{"enable_kv_cache_events":true,"publisher":"zmq","endpoint":"tcp://*:5557",
"topic":"kv@$(POD_IP)@model"}'`: a `*` host binds the server's own address (so a fleet of engines on
distinct loopback addresses can all use port 5557), and `$(POD_IP)` in the topic becomes that address.

Replay, as vLLM's `ZmqEventPublisher` offers it when the config has a `replay_endpoint` (and keeps the last
`buffer_steps` batches, 10,000 by default): a ROUTER socket where a subscriber that saw a sequence gap asks
for the batches from a sequence number on. The request is `[b"", start (8-byte big-endian)]` from a DEALER
(`[identity, b"", start]` as the ROUTER reads it); the answer is one message `[b"", seq, payload]` per
buffered batch numbered `start` or later, then the end marker `[b"", seq -1 (8 bytes, signed), b""]`.
"""

import collections
import logging
from collections.abc import Sequence
from typing import Any, Final

import msgpack
import zmq

from frontier_sim import engine

log = logging.getLogger(__name__)

END_SEQ: Final = (-1).to_bytes(8, "big", signed=True)
"""The sequence frame that ends a replay."""
REPLAY_BUFFER_STEPS: Final = 10_000


def encode_event(event: engine.KVEvent) -> list[Any]:
    if isinstance(event, engine.BlockStored):
        return [
            "BlockStored",
            event.block_hashes,
            event.parent_block_hash,
            event.token_ids,
            event.block_size,
            event.lora_id,
            event.medium,
        ]
    if isinstance(event, engine.BlockRemoved):
        return ["BlockRemoved", event.block_hashes, event.medium]
    return ["AllBlocksCleared"]


def encode_batch(ts: float, events: Sequence[engine.KVEvent], dp_rank: int = 0) -> bytes:
    packed: bytes = msgpack.packb([ts, [encode_event(e) for e in events], dp_rank])
    return packed


def bind_endpoint(endpoint: str, host: str) -> str:
    """The endpoint to bind: `tcp://*:P` becomes `tcp://HOST:P` unless HOST is the wildcard address."""
    if "://*:" in endpoint and host not in ("", "0.0.0.0"):
        return endpoint.replace("://*:", f"://{host}:", 1)
    return endpoint


class Publisher:
    """A ZMQ PUB socket numbering its batches from 0; with `replay_endpoint`, a ROUTER socket answering
    replay requests from the last `buffer_steps` batches (`serve_replay`)."""

    def __init__(
        self,
        *,
        endpoint: str,
        topic: str,
        context: "zmq.Context[zmq.Socket[bytes]]",
        replay_endpoint: str | None = None,
        buffer_steps: int = REPLAY_BUFFER_STEPS,
    ) -> None:
        self.endpoint = endpoint
        self.topic = topic.encode()
        self.socket = context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, 100_000)
        self.socket.bind(endpoint)
        # The bound endpoint, with the port resolved when the configured one was a wildcard (`tcp://ip:*`).
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.seq = 0
        self.replay: zmq.Socket[bytes] | None = None
        self.replay_endpoint = ""
        self.buffer: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=buffer_steps)
        if replay_endpoint:
            self.replay = context.socket(zmq.ROUTER)
            self.replay.setsockopt(zmq.LINGER, 0)
            self.replay.bind(replay_endpoint)
            self.replay_endpoint = self.replay.getsockopt_string(zmq.LAST_ENDPOINT)

    def publish(self, ts: float, events: Sequence[engine.KVEvent]) -> None:
        if not events:
            return
        payload = encode_batch(ts, events)
        if self.replay is not None:
            self.buffer.append((self.seq, payload))  # before sending: a batch the PUB drops can be replayed
        try:
            self.socket.send_multipart([self.topic, self.seq.to_bytes(8, "big"), payload], flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("event=kv_events_dropped endpoint=%s seq=%d", self.endpoint, self.seq)
        self.seq += 1

    def serve_replay(self) -> int:
        """Answer every replay request waiting on the ROUTER socket; how many were answered."""
        if self.replay is None:
            return 0
        answered = 0
        while True:
            try:
                frames = self.replay.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return answered
            if len(frames) != 3 or len(frames[2]) != 8:
                log.warning(
                    "event=kv_events_replay_invalid endpoint=%s frames=%d", self.replay_endpoint, len(frames)
                )
                continue
            client, start = frames[0], int.from_bytes(frames[2], "big")
            sent = 0
            for seq, payload in self.buffer:
                if seq >= start:
                    self.replay.send_multipart([client, b"", seq.to_bytes(8, "big"), payload])
                    sent += 1
            self.replay.send_multipart([client, b"", END_SEQ, b""])
            log.info(
                "event=kv_events_replayed endpoint=%s start=%d batches=%d", self.replay_endpoint, start, sent
            )
            answered += 1

    def close(self) -> None:
        self.socket.close(linger=0)
        if self.replay is not None:
            self.replay.close(linger=0)
