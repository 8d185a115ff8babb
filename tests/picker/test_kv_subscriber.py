"""The KV event subscriber's shell with real ZMQ sockets: it follows the endpoint set (subscribing to
endpoints that publish, forgetting those that leave) and applies what arrives to the index.

Addresses: 127.5.8.1-2 publishers (this suite's loopback range)."""

import asyncio
import contextlib

import msgpack
import zmq
import zmq.asyncio

from frontier_api import names
from frontier_picker import endpoints, kv_events, kv_subscriber

from . import stack


def state(address: str, port: int | None) -> endpoints.EndpointState:
    labels = {names.KV_EVENTS_PORT_ANNOTATION: str(port)} if port else {}
    return endpoints.EndpointState(
        endpoint=endpoints.Endpoint(name=address, address=address, port=8000, labels=labels)
    )


def test_events_address_comes_from_the_label_or_the_configured_port():
    assert kv_subscriber.events_address(state("10.0.0.1", 5557).endpoint) == "tcp://10.0.0.1:5557"
    assert kv_subscriber.events_address(state("10.0.0.1", None).endpoint) is None
    assert (
        kv_subscriber.events_address(state("10.0.0.1", None).endpoint, default_port=6000)
        == "tcp://10.0.0.1:6000"
    )
    assert kv_subscriber.events_address(state("fd00::1", 5557).endpoint) == "tcp://[fd00::1]:5557"


async def test_subscriber_follows_the_endpoint_set_and_feeds_the_index():
    context = zmq.asyncio.Context()
    publishers = []
    ports = []
    for address in ("127.5.8.1", "127.5.8.2"):
        socket = context.socket(zmq.PUB)
        socket.setsockopt(zmq.LINGER, 0)
        ports.append(socket.bind_to_random_port(f"tcp://{address}"))
        publishers.append(socket)
    states = [state("127.5.8.1", ports[0]), state("127.5.8.2", ports[1])]
    index = kv_events.BlockIndex(block_size=2)
    subscriber = kv_subscriber.Subscriber(index, lambda: states, reconcile_s=0.05)
    task = asyncio.get_running_loop().create_task(subscriber.run())
    try:
        assert await stack.wait_for(lambda: len(subscriber.subscribed()) == 2)
        await asyncio.sleep(0.3)  # ZMQ slow joiner
        stored = ["BlockStored", [1, 2], None, [1, 2, 3, 4], 2, None, "GPU"]
        for seq, socket in enumerate(publishers):
            await socket.send_multipart([b"kv", seq.to_bytes(8, "big"), msgpack.packb([0.0, [stored], 0])])
        keys = [s.endpoint.key for s in states]
        assert await stack.wait_for(lambda: all(index.size(key) == 2 for key in keys))
        # Endpoint 0's batch 0 came after nothing and endpoint 1's first batch was number 1: no gap yet.
        assert subscriber.gaps == 0
        states.pop(0)  # the endpoint left the pool: its socket closes and its entries go
        assert await stack.wait_for(lambda: list(subscriber.subscribed()) == [keys[1]])
        assert index.size(keys[0]) == 0 and index.endpoints() == [keys[1]]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for socket in publishers:
            socket.close(linger=0)
        context.term()
