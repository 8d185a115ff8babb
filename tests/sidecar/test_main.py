"""`frontier-sidecar`'s command line: its flags and defaults, and the installed entry point serving in front
of an engine until SIGTERM."""

import asyncio
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from frontier_sidecar import main, proxy

from .harness import engine, url

SIDECAR = Path(sys.executable).with_name("frontier-sidecar")


def test_defaults_match_the_pool_target_port_and_the_local_engine():
    config = main.settings_from(main.parser().parse_args([]))
    assert config == proxy.Settings(
        engine_url="http://127.0.0.1:8200",
        address="0.0.0.0",
        port=8000,
        metrics_port=None,
        prefill_timeout_s=60.0,
    )


def test_flags_set_every_setting():
    args = ["--port", "9000", "--address", "10.0.0.5", "--engine-url", "http://localhost:8001",
            "--prefill-timeout", "2.5", "--metrics-port", "9091", "--log-level", "debug"]  # fmt: skip
    assert main.settings_from(main.parser().parse_args(args)) == proxy.Settings(
        engine_url="http://localhost:8001",
        address="10.0.0.5",
        port=9000,
        metrics_port=9091,
        prefill_timeout_s=2.5,
    )


@pytest.mark.parametrize(
    "bad", [["--prefill-timeout", "0"], ["--engine-url", "localhost:8200"], ["--port", "x"], ["--por", "1"]]
)
def test_bad_flags_exit_with_status_2(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.parser().parse_args(bad)
    assert exit_info.value.code == 2


async def test_the_entry_point_serves_until_sigterm(subnet):
    address = f"{subnet}.9"
    with socket.socket() as sock:  # a free port for the child to bind (this address is the test's own)
        sock.bind((address, 0))
        port = sock.getsockname()[1]
    async with engine(f"{subnet}.3") as decode, aiohttp.ClientSession() as session:
        child = await asyncio.create_subprocess_exec(
            str(SIDECAR), "--address", address, "--port", str(port), "--engine-url", url(decode),
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert child.stderr is not None
            line = await asyncio.wait_for(child.stderr.readline(), timeout=20)
            assert b"event=sidecar_started" in line
            async with session.get(f"http://{address}:{port}/health") as response:
                assert response.status == 200
            child.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(child.wait(), timeout=20) == 0
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
