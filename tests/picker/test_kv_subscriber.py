"""The KV event subscriber's shell with real ZMQ sockets: it follows the endpoint set (subscribing to
endpoints that publish, forgetting those that leave) and applies what arrives to the index.

Addresses: 127.5.8.1-2 publishers, 127.5.8.3 a simulated engine (this suite's loopback range)."""

import asyncio
import contextlib

import aiohttp
import msgpack
import zmq
import zmq.asyncio

from frontier_api import names, standin_tokenizer
from frontier_picker import endpoints, kv_events, kv_subscriber
from frontier_sim import server as sim_server
from frontier_sim import settings, timing

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


async def test_a_lost_batch_is_replayed_from_the_engines_replay_socket_and_an_unbuffered_one_drops():
    events = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": "tcp://*:0",
        "replay_endpoint": "tcp://*:0",
        "topic": "kv@$(POD_IP)@m",
    }
    cfg = settings.Settings(
        model="m", host="127.5.8.3", port=0, params=timing.CALIBRATED_PARAMS, kv_events_config=events
    )
    async with sim_server.serving(cfg) as engine, aiohttp.ClientSession() as session:
        publisher = engine.publisher
        assert publisher is not None and publisher.replay is not None
        ports = {
            names.KV_EVENTS_PORT_ANNOTATION: publisher.endpoint.rsplit(":", 1)[1],
            names.KV_EVENTS_REPLAY_PORT_ANNOTATION: publisher.replay_endpoint.rsplit(":", 1)[1],
        }
        endpoint = endpoints.Endpoint(name="e", address=engine.address, port=engine.port, labels=ports)
        states = [endpoints.EndpointState(endpoint=endpoint)]
        index = kv_events.BlockIndex(block_size=16)
        subscriber = kv_subscriber.Subscriber(index, lambda: states, reconcile_s=0.05)
        task = asyncio.get_running_loop().create_task(subscriber.run())

        async def complete(prompt: str) -> None:
            body = {"model": "m", "prompt": prompt, "max_tokens": 2}
            async with session.post(
                f"http://{engine.address}:{engine.port}/v1/completions", json=body
            ) as reply:
                assert reply.status == 200, await reply.text()

        def held(prompt: str) -> bool:
            keys = kv_events.block_keys(standin_tokenizer.encode(prompt), block_size=16)
            return all(index.holds(endpoint.key, k) for k in keys)

        a, b, c, d = ("".join(f"{tag}{i:03x}" for i in range(64)) for tag in "abcd")  # 4 blocks each
        try:
            assert await stack.wait_for(lambda: bool(subscriber.subscribed()))
            await asyncio.sleep(0.3)  # ZMQ slow joiner
            await complete(a)
            assert await stack.wait_for(lambda: held(a))
            # B's batches go to a socket nobody reads: lost on the wire, still in the engine's replay buffer.
            live, lost = publisher.socket, zmq.Context.instance().socket(zmq.PUB)
            lost.bind("inproc://kv-events-lost")
            publisher.socket = lost
            await complete(b)
            publisher.socket = live
            lost.close(linger=0)
            assert not held(b)
            await complete(c)  # its batch reveals the gap; the replay brings B's back first
            assert await stack.wait_for(lambda: held(c))
            assert held(a) and held(b)
            assert subscriber.gaps == 0 and subscriber.replayed >= 1
            # Batches the engine never buffered (numbers skipped): the replay cannot close the gap, so what
            # the picker knew of the engine is dropped and rebuilt from what follows.
            publisher.seq += 3
            await complete(d)
            assert await stack.wait_for(lambda: subscriber.gaps == 1)
            assert held(d) and not held(a)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
