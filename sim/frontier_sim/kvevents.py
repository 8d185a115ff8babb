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
"""

import logging
from collections.abc import Sequence
from typing import Any

import msgpack
import zmq

from frontier_sim import engine

log = logging.getLogger(__name__)


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
    """A ZMQ PUB socket numbering its batches from 0."""

    def __init__(self, *, endpoint: str, topic: str, context: "zmq.Context[zmq.Socket[bytes]]") -> None:
        self.endpoint = endpoint
        self.topic = topic.encode()
        self.socket = context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, 100_000)
        self.socket.bind(endpoint)
        # The bound endpoint, with the port resolved when the configured one was a wildcard (`tcp://ip:*`).
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.seq = 0

    def publish(self, ts: float, events: Sequence[engine.KVEvent]) -> None:
        if not events:
            return
        payload = encode_batch(ts, events)
        try:
            self.socket.send_multipart([self.topic, self.seq.to_bytes(8, "big"), payload], flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("event=kv_events_dropped endpoint=%s seq=%d", self.endpoint, self.seq)
        self.seq += 1

    def close(self) -> None:
        self.socket.close(linger=0)
