"""Peer pickers over Frontier's own gRPC API (`frontier.picker.v1.Peering`): each learns the others'
decisions, so load and the prefix index cover the pool's traffic; a lost peer costs only its own flights.

Real pickers in this loop (real ext_proc streams, real peering streams over TCP), endpoints from a file."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

from frontier_api import names
from frontier_picker import director, peer_deltas, server
from frontier_picker.proto.v1 import picker_pb2 as wire
from frontier_picker.proto.v1 import picker_pb2_grpc as wire_grpc
from frontier_picker.scheduling import types

ADDRESS = "127.2.0.110"
ENGINES = ("127.2.0.11", "127.2.0.12", "127.2.0.13")


def endpoints_file(tmp_path: Path) -> Path:
    path = tmp_path / "endpoints.yaml"
    lines = [f"  - {{address: {address}, port: 8000}}" for address in ENGINES]
    path.write_text("endpoints:\n" + "\n".join(lines) + "\n")
    return path


def options(tmp_path: Path, **overrides: Any) -> server.Options:
    chosen: dict[str, Any] = {
        "address": ADDRESS,
        "grpc_port": 0,
        "grpc_health_port": 0,
        "metrics_port": 0,
        "secure_serving": False,
        "endpoints_file": endpoints_file(tmp_path),
        "refresh_metrics_interval_s": 0,  # no engines behind the addresses: load is the pickers' accounting
        "peer_port": 0,
    }
    return server.Options(**(chosen | overrides))


async def started(opts: server.Options) -> server.Picker:
    picker = await server.start(opts)
    assert await eventually(lambda: len(picker.store.states()) == len(ENGINES))
    return picker


async def eventually(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return bool(predicate())


def in_flight(picker: server.Picker) -> dict[str, int]:
    return {
        state.endpoint.key: state.load.in_flight for state in picker.store.states() if state.load.in_flight
    }


def peer_address(picker: server.Picker) -> str:
    return f"{ADDRESS}:{picker.peer_port}"


def headers(pairs: dict[str, str], *, response: bool, end: bool) -> ext_proc.ProcessingRequest:
    header_map = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
    )
    message = ext_proc.HttpHeaders(headers=header_map, end_of_stream=end)
    if response:
        return ext_proc.ProcessingRequest(response_headers=message)
    return ext_proc.ProcessingRequest(request_headers=message)


class Routed:
    """One request routed by a picker over a real ext_proc stream, held open until `finish`."""

    def __init__(self, stream: Any, endpoint: str) -> None:
        self.stream = stream
        self.endpoint = endpoint

    async def finish(self) -> None:
        await self.stream.write(headers({":status": "200"}, response=True, end=True))
        await self.stream.read()
        await self.stream.done_writing()


async def route(picker: server.Picker, prompt: str) -> Routed:
    channel = grpc.aio.insecure_channel(f"{ADDRESS}:{picker.grpc_port}")
    stream = ext_proc_grpc.ExternalProcessorStub(channel).Process()
    body = orjson.dumps({"model": "m", "prompt": prompt, "max_tokens": 8})
    await stream.write(
        headers(
            {":path": "/v1/completions", ":method": "POST", "content-type": "application/json"},
            response=False,
            end=False,
        )
    )
    await stream.write(
        ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=body, end_of_stream=True))
    )
    endpoint = ""
    while not endpoint:
        reply = await stream.read()
        for mutation in (reply.request_headers, reply.request_body):
            for header in mutation.response.header_mutation.set_headers:
                if header.header.key == names.DESTINATION_ENDPOINT:
                    endpoint = header.header.raw_value.decode().split(",")[0]  # then fallbacks
    return Routed(stream, endpoint)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[server.Picker, server.Picker]]:
    """Two pickers that follow each other."""
    first = await started(options(tmp_path))
    second = await started(options(tmp_path, peers=(peer_address(first),)))
    assert first.peers is not None
    first.peers.follow([peer_address(second)])
    try:
        yield first, second
    finally:
        await second.stop()
        await first.stop()


async def test_a_peers_routed_request_counts_as_load_here_until_it_completes(
    pair: tuple[server.Picker, server.Picker],
) -> None:
    first, second = pair
    routed = await route(first, "hello " * 50)
    assert await eventually(lambda: in_flight(second) == {routed.endpoint: 1})
    # The second picker's next choice sees that load: a different endpoint for an unrelated prompt.
    other = await route(second, "unrelated " * 50)
    assert other.endpoint != routed.endpoint
    assert await eventually(
        lambda: in_flight(first) == in_flight(second) == {routed.endpoint: 1, other.endpoint: 1}
    )
    await routed.finish()
    await other.finish()
    assert await eventually(lambda: in_flight(first) == in_flight(second) == {})


async def test_the_prefix_index_learns_a_peers_decisions(pair: tuple[server.Picker, server.Picker]) -> None:
    first, second = pair
    for n in range(6):
        document = f"document {n}: " + "lorem ipsum dolor sit amet " * 60
        routed = await route(first, document + "first question?")
        assert await eventually(lambda routed=routed: in_flight(second) == {routed.endpoint: 1})
        await routed.finish()
        assert await eventually(lambda: in_flight(second) == {})
        # Same long prefix, a new question, asked of the other picker: it goes where the prefix is cached.
        follow_up = await route(second, document + "a second, different question?")
        assert follow_up.endpoint == routed.endpoint
        await follow_up.finish()


async def test_a_new_peer_learns_open_flights_from_the_snapshot_and_forgets_them_when_the_peer_goes(
    tmp_path: Path,
) -> None:
    first = await started(options(tmp_path))
    routed = [await route(first, f"request {n} " * 40) for n in range(3)]
    second = await started(options(tmp_path, peers=(peer_address(first),)))
    try:
        expected = in_flight(first)
        assert sum(expected.values()) == 3
        assert await eventually(lambda: in_flight(second) == expected)
        async with grpc.aio.insecure_channel(peer_address(second)) as channel:
            listed = await wire_grpc.AdminStub(channel).ListEndpoints(wire.ListEndpointsRequest())
        assert {e.endpoint: e.in_flight for e in listed.endpoints if e.in_flight} == expected
        assert list(listed.peer_flights.values()) == [3]
        await first.stop()  # its streams are cut; the second picker drops what it learned from it
        assert await eventually(lambda: in_flight(second) == {})
    finally:
        await second.stop()
    del routed


async def test_a_peer_list_that_names_this_picker_is_not_double_counted(tmp_path: Path) -> None:
    picker = await started(options(tmp_path))
    try:
        assert picker.peers is not None
        picker.peers.follow([peer_address(picker)])
        routed = await route(picker, "self " * 40)
        await asyncio.sleep(0.3)
        assert in_flight(picker) == {routed.endpoint: 1}
        assert picker.store.in_flight() == 1
        await routed.finish()
    finally:
        await picker.stop()


async def test_a_replica_learns_every_worker_of_another_pod_through_any_one_of_them(tmp_path: Path) -> None:
    """Pod A: two workers on one peer port, siblings over Unix sockets. Replica B follows A's peer port once
    and learns both workers' flights (the worker it reached relays its sibling's); A's workers learn B's."""
    sockets = [tmp_path / "a0.sock", tmp_path / "a1.sock"]
    a0 = await started(
        options(tmp_path, pod="pod-a", peer_socket=sockets[0], siblings=(f"unix:{sockets[1]}",))
    )
    a1 = await started(
        options(
            tmp_path,
            pod="pod-a",
            peer_port=a0.peer_port,  # the pod's shared peer port (SO_REUSEPORT)
            peer_socket=sockets[1],
            siblings=(f"unix:{sockets[0]}",),
            metrics_from_siblings=True,
        )
    )
    b = await started(options(tmp_path, peers=(peer_address(a0),)))
    try:
        assert a0.peers is not None and a1.peers is not None
        for worker in (a0, a1):
            worker.peers.follow([peer_address(b), peer_address(a0)])  # the pod's own address: recognised
        first = await route(a0, "from worker zero " * 30)
        second = await route(a1, "from worker one " * 30)
        third = await route(b, "from replica b " * 30)
        everything = [first.endpoint, second.endpoint, third.endpoint]
        expected = {key: everything.count(key) for key in everything}
        for picker in (a0, a1, b):
            assert await eventually(lambda picker=picker: in_flight(picker) == expected), in_flight(picker)
        # Worker a1 vanishes without a word (its peering stops; its request never completes): a0 forgets its
        # flight, and so does B, which learned it only through a0's relay.
        assert a1._peer_server is not None
        await a1._peer_server.stop(grace=0)
        await a1.peers.stop()
        without = [first.endpoint, third.endpoint]
        expected = {key: without.count(key) for key in without}
        for picker in (a0, b):
            assert await eventually(lambda picker=picker: in_flight(picker) == expected), in_flight(picker)
        for routed in (first, second, third):
            await routed.finish()
        for picker in (a0, b):
            assert await eventually(lambda picker=picker: in_flight(picker) == {}), in_flight(picker)
    finally:
        for picker in (b, a1, a0):
            await picker.stop()


@pytest.mark.parametrize("timed", [True, False])
def test_a_completion_reaches_peers_with_what_its_first_token_time_means(timed: bool) -> None:
    # Peers learn engine speed from each other's completions: a headers-time TTFT must stay marked as one.
    flight = director.Flight(
        request=types.Request(request_id="r", model="m", target_model="m"),
        decision=types.Decision(endpoints=["10.0.0.1:8000"]),
        charge=None,
        flight_id="f1",
    )
    sent = types.Completion(
        endpoint="10.0.0.1:8000", status=200, ttft_s=0.25, first_token_timed=timed, duration_s=1.5
    )
    delta = wire.Delta.FromString(peer_deltas.completed(flight, sent).SerializeToString())
    assert peer_deltas.completion(delta.completed, "10.0.0.1:8000") == sent
