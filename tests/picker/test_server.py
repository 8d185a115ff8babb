"""The picker process: GIE's command line, bound ports logged, gRPC health services, TLS by default with a
self-signed certificate, file discovery driving readiness, Prometheus metrics."""

import asyncio
import logging
import re
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from frontier_api import names
from frontier_picker import main, server, tls

ADDRESS = "127.2.0.100"


@pytest.fixture
def picker_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, int], Path]]:
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text("endpoints: []\n")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "frontier_picker.main",
            "--address",
            ADDRESS,
            "--grpc-port",
            "0",
            "--grpc-health-port",
            "0",
            "--metrics-port",
            "0",
            "--endpoints-file",
            str(endpoints),
            "--endpoints-poll-interval",
            "0.05",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    ports: dict[str, int] = {}
    deadline = time.monotonic() + 20
    assert process.stderr is not None
    while time.monotonic() < deadline and not ports:
        line = process.stderr.readline()
        if "event=listening" in line:
            ports = {key: int(value) for key, value in re.findall(r"(\w+_port)=(\d+)", line)}
    assert ports, "the picker did not log event=listening"
    yield process, ports, endpoints
    process.terminate()
    assert process.wait(10) == 0  # SIGTERM stops the picker cleanly
    assert "event=stopped" in process.stderr.read()  # and the buffered log lines were written out


def health_status(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def test_cli_serves_health_tls_and_readiness_follows_discovery(
    picker_process: tuple[subprocess.Popen[str], dict[str, int], Path],
) -> None:
    _, ports, endpoints = picker_process
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    with grpc.insecure_channel(f"{ADDRESS}:{ports['grpc_health_port']}") as channel:
        assert health_status(channel, "liveness") == serving
        assert health_status(channel, names.EXT_PROC_SERVICE) == serving
        # The file was read, but it lists no endpoint: nothing to route to, so not ready.
        assert health_status(channel, "readiness") == not_serving
        assert health_status(channel, "inference-extension") == not_serving  # GIE manifests probe this
        endpoints.write_text("endpoints: [{address: 127.2.0.1, port: 8000}]\n")
        deadline = time.monotonic() + 5
        while health_status(channel, "readiness") != serving:
            assert time.monotonic() < deadline, "readiness did not follow discovery"
            time.sleep(0.05)
        assert health_status(channel, "inference-extension") == serving
    # The ext_proc port speaks TLS with a self-signed certificate: trust exactly that one.
    certificate = ssl.get_server_certificate((ADDRESS, ports["grpc_port"]))
    credentials = grpc.ssl_channel_credentials(root_certificates=certificate.encode())
    options = [("grpc.ssl_target_name_override", "frontier-picker")]
    with grpc.secure_channel(f"{ADDRESS}:{ports['grpc_port']}", credentials, options=options) as channel:
        assert health_status(channel, "readiness") == serving
    metrics_url = f"http://{ADDRESS}:{ports['metrics_port']}/metrics"
    assert "frontier_picker_ready_endpoints 1.0" in fetch(metrics_url)
    # A half-written (empty) file keeps the previous endpoints instead of emptying the pool.
    endpoints.write_text("")
    time.sleep(0.3)  # several polls of the file at 0.05 s
    assert "frontier_picker_ready_endpoints 1.0" in fetch(metrics_url)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def test_command_line_mirrors_the_gie_flags() -> None:
    arguments = main.parser().parse_args(
        [
            "--pool-name",
            "chat",
            "--pool-namespace",
            "serving",
            "--secure-serving",
            "false",
            "--fallbacks",
            "2",
        ]
    )
    options = main.options(arguments)
    assert (options.grpc_port, options.grpc_health_port, options.metrics_port) == (9002, 9003, 9090)
    assert (options.pool_name, options.pool_namespace, options.secure_serving, options.fallbacks) == (
        "chat",
        "serving",
        False,
        2,
    )
    assert main.options(main.parser().parse_args(["--pool-name", "a"])).secure_serving is True
    with pytest.raises(SystemExit):
        main.options(main.parser().parse_args(["--pool-name", "a", "--endpoints-file", "x.yaml"]))
    with pytest.raises(SystemExit, match="no endpoint discovery"):
        main.options(main.parser().parse_args([]))  # it would start and refuse every request


def local_options(endpoints_file: Path, **overrides: Any) -> server.Options:
    """A plaintext picker on ADDRESS with OS-chosen ports, discovering from `endpoints_file`."""
    return server.Options(
        address=ADDRESS,
        grpc_port=0,
        grpc_health_port=0,
        metrics_port=0,
        secure_serving=False,
        endpoints_file=endpoints_file,
        **overrides,
    )


async def test_not_ready_until_discovery_delivers_endpoints(tmp_path: Path) -> None:
    missing = tmp_path / "endpoints.yaml"
    picker = await server.start(local_options(missing, endpoints_poll_s=0.02))
    try:
        async with grpc.aio.insecure_channel(f"{ADDRESS}:{picker.grpc_health_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="readiness")
            assert (await stub.Check(request)).status == health_pb2.HealthCheckResponse.NOT_SERVING
            missing.write_text("endpoints: [{address: 127.2.0.1, port: 8000}]\n")
            for _ in range(200):
                if (await stub.Check(request)).status == health_pb2.HealthCheckResponse.SERVING:
                    break
                await asyncio.sleep(0.01)
            assert (await stub.Check(request)).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await picker.stop()


def _headers_message(pairs: dict[str, str], *, response: bool) -> ext_proc.ProcessingRequest:
    header_map = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
    )
    headers = ext_proc.HttpHeaders(headers=header_map, end_of_stream=True)
    if response:
        return ext_proc.ProcessingRequest(response_headers=headers)
    return ext_proc.ProcessingRequest(request_headers=headers)


async def test_sigterm_drain_turns_readiness_off_and_lets_a_routed_stream_finish(tmp_path: Path) -> None:
    endpoints_file = tmp_path / "endpoints.yaml"
    endpoints_file.write_text("endpoints: [{address: 127.2.0.1, port: 8000}]\n")
    options = local_options(endpoints_file, refresh_metrics_interval_s=0, builtin_config="round-robin")
    picker = await server.start(options)
    ext_proc_address = f"{ADDRESS}:{picker.grpc_port}"
    async with (
        grpc.aio.insecure_channel(ext_proc_address) as channel,
        grpc.aio.insecure_channel(f"{ADDRESS}:{picker.grpc_health_port}") as health_channel,
    ):
        health_stub = health_pb2_grpc.HealthStub(health_channel)
        readiness = health_pb2.HealthCheckRequest(service="readiness")
        for _ in range(200):
            if (await health_stub.Check(readiness)).status == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.01)
        stream = ext_proc_grpc.ExternalProcessorStub(channel).Process()
        await stream.write(_headers_message({":path": "/v1/completions", ":method": "GET"}, response=False))
        decided = await stream.read()
        assert decided.request_headers.response.header_mutation.set_headers  # routed
        assert picker.store.in_flight() == 1
        stopping = asyncio.create_task(picker.stop(drain_delay_s=0.3, drain_timeout_s=10))
        await asyncio.sleep(0.1)
        # Draining: probes see NOT_SERVING at once, while the routed stream is still open.
        assert (await health_stub.Check(readiness)).status == health_pb2.HealthCheckResponse.NOT_SERVING
        await asyncio.sleep(0.4)  # past the drain delay: new streams are refused now
        with pytest.raises(grpc.aio.AioRpcError):
            refused = ext_proc_grpc.ExternalProcessorStub(channel).Process()
            await refused.write(_headers_message({":path": "/v1/models"}, response=False))
            await refused.read()
        # The routed request's response still arrives and completes it.
        await stream.write(_headers_message({":status": "200"}, response=True))
        assert (await stream.read()).HasField("response_headers")
        await stream.done_writing()
        assert await stream.code() == grpc.StatusCode.OK
        began = time.monotonic()
        await stopping
        assert time.monotonic() - began < 5  # it stopped when the stream ended, not at the timeout
        assert picker.store.in_flight() == 0


async def test_with_a_client_ca_only_clients_holding_a_certificate_it_signed_may_connect(
    tmp_path: Path,
) -> None:
    gateway_key, gateway_cert = tls.self_signed("gateway")
    (tmp_path / "ca.pem").write_bytes(gateway_cert)  # the gateway's self-signed certificate is its own CA
    endpoints_file = tmp_path / "endpoints.yaml"
    endpoints_file.write_text("endpoints: [{address: 127.2.0.1, port: 8000}]\n")
    options = local_options(endpoints_file, refresh_metrics_interval_s=0)
    options.secure_serving = True
    options.client_ca_cert = tmp_path / "ca.pem"
    picker = await server.start(options)
    try:
        server_cert = ssl.get_server_certificate((ADDRESS, picker.grpc_port)).encode()
        overrides = [("grpc.ssl_target_name_override", "frontier-picker")]
        target = f"{ADDRESS}:{picker.grpc_port}"
        request = health_pb2.HealthCheckRequest(service="liveness")
        anonymous = grpc.ssl_channel_credentials(root_certificates=server_cert)
        async with grpc.aio.secure_channel(target, anonymous, options=overrides) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
        gateway = grpc.ssl_channel_credentials(
            root_certificates=server_cert, private_key=gateway_key, certificate_chain=gateway_cert
        )
        async with grpc.aio.secure_channel(target, gateway, options=overrides) as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await picker.stop()


async def test_a_stream_still_open_when_the_drain_times_out_is_counted_as_cut(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="frontier_picker.server")
    endpoints_file = tmp_path / "endpoints.yaml"
    endpoints_file.write_text("endpoints: [{address: 127.2.0.1, port: 8000}]\n")
    options = local_options(endpoints_file, refresh_metrics_interval_s=0, builtin_config="round-robin")
    picker = await server.start(options)
    async with grpc.aio.insecure_channel(f"{ADDRESS}:{picker.grpc_port}") as channel:
        for _ in range(200):
            if picker.store.states():
                break
            await asyncio.sleep(0.01)
        stream = ext_proc_grpc.ExternalProcessorStub(channel).Process()
        await stream.write(_headers_message({":path": "/v1/completions", ":method": "GET"}, response=False))
        await stream.read()
        await picker.stop(drain_delay_s=0, drain_timeout_s=0.3)  # the response never comes
    assert "cut_in_flight=1" in caplog.text
    assert picker.store.in_flight() == 0  # and the cut stream's charge was refunded


async def _routed_stream(channel: grpc.aio.Channel) -> Any:
    """An ext_proc stream whose GET request the picker has routed (and charged to an endpoint)."""
    stream = ext_proc_grpc.ExternalProcessorStub(channel).Process()
    await stream.write(_headers_message({":path": "/v1/completions", ":method": "GET"}, response=False))
    decided = await stream.read()
    assert decided.request_headers.response.header_mutation.set_headers
    return stream


async def _started(options: server.Options) -> server.Picker:
    picker = await server.start(options)
    for _ in range(200):
        if picker.store.states():
            break
        await asyncio.sleep(0.01)
    return picker


async def test_a_stream_silent_for_the_idle_timeout_is_closed_and_its_charge_refunded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="frontier_picker.processor")
    endpoints_file = tmp_path / "endpoints.yaml"
    endpoints_file.write_text("endpoints: [{address: 127.2.0.1, port: 8000}]\n")
    options = local_options(
        endpoints_file, refresh_metrics_interval_s=0, builtin_config="round-robin", stream_idle_timeout_s=1.0
    )
    picker = await _started(options)
    try:
        async with grpc.aio.insecure_channel(f"{ADDRESS}:{picker.grpc_port}") as channel:
            idle = await _routed_stream(channel)
            # A stream whose messages keep coming within the timeout lives past it.
            active = await _routed_stream(channel)
            assert picker.store.in_flight() == 2
            await asyncio.sleep(0.6)
            response_headers = _headers_message({":status": "200"}, response=True)
            response_headers.response_headers.end_of_stream = False  # the body follows
            await active.write(response_headers)
            await active.read()
            assert await idle.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert picker.store.in_flight() == 1  # the idle stream's charge went back
            await asyncio.sleep(0.3)  # past the first timeout, well within the second
            body = ext_proc.HttpBody(body=b"{}", end_of_stream=True)
            await active.write(ext_proc.ProcessingRequest(response_body=body))
            await active.read()
            await active.done_writing()
            assert await active.code() == grpc.StatusCode.OK
            assert picker.store.in_flight() == 0
    finally:
        await picker.stop()
    assert re.search(
        r"event=stream_idle_timeout peer=ipv4:127\.0\.0\.1 request_id=\S+ routed=True", caplog.text
    )


async def test_a_peer_past_its_stream_cap_is_refused_with_resource_exhausted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="frontier_picker.processor")
    endpoints_file = tmp_path / "endpoints.yaml"
    endpoints_file.write_text("endpoints: [{address: 127.2.0.1, port: 8000}]\n")
    options = local_options(
        endpoints_file, refresh_metrics_interval_s=0, builtin_config="round-robin", max_streams_per_peer=2
    )
    picker = await _started(options)
    try:
        async with (
            grpc.aio.insecure_channel(f"{ADDRESS}:{picker.grpc_port}") as channel,
            grpc.aio.insecure_channel(f"{ADDRESS}:{picker.grpc_port}") as second_connection,
        ):
            held = [await _routed_stream(channel), await _routed_stream(channel)]
            # Another connection from the same host is the same peer.
            refused = ext_proc_grpc.ExternalProcessorStub(second_connection).Process()
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await refused.write(_headers_message({":path": "/v1/models"}, response=False))
                await refused.read()
            assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert picker.store.in_flight() == 2
            await held[0].done_writing()
            assert await held[0].code() == grpc.StatusCode.OK
            await _routed_stream(second_connection)  # a freed slot is taken again
    finally:
        await picker.stop()
    assert "event=stream_refused peer=ipv4:127.0.0.1 reason=peer_stream_cap" in caplog.text
