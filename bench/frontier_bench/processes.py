"""Child processes of a benchmark run (fleet, picker, Envoy, sglang-router): start, wait ready, stop.

Each child runs in its own session (process group) with its output in a log file, so that stopping it stops
everything it started and a failed start can point at the log. `Group` stops its children in reverse start
order and is a context manager, so a run leaves no process behind even when it fails or is interrupted.
"""

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import aiohttp

log = logging.getLogger(__name__)


def free_port(address: str) -> int:
    """A TCP port that is free on `address` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass(slots=True, kw_only=True)
class Child:
    """One started process and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise RuntimeError(
                f"{self.name} exited with code {code}; last lines of {self.log_path}:\n{self.tail()}"
            )


class Group:
    """Children started together and stopped together (reverse order: front doors before engines)."""

    def __init__(self, log_dir: Path, *, env: dict[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.env = env or {}  # added to every child's environment
        self.children: list[Child] = []

    def start(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **self.env, **(env or {})},
            )
        child = Child(name=name, process=process, log_path=log_path)
        self.children.append(child)
        log.info("event=process_started name=%s pid=%d log=%s", name, process.pid, log_path)
        return child

    def stop(self, child: Child, *, grace_s: float = 5.0) -> None:
        """SIGTERM the child's process group, SIGKILL it after `grace_s`."""
        if child in self.children:
            self.children.remove(child)
        _signal_group(child.process, signal.SIGTERM)
        try:
            child.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(child.process, signal.SIGKILL)
            child.process.wait(timeout=grace_s)
        # Children of the child (e.g. the engines of a fleet launcher) share its process group.
        _signal_group(child.process, signal.SIGKILL)
        log.info(
            "event=process_stopped name=%s pid=%d code=%s",
            child.name,
            child.process.pid,
            child.process.returncode,
        )

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child)

    def __enter__(self) -> "Group":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop_all()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


async def wait_http(
    url: str, *, child: Child | None = None, timeout_s: float = 60.0, expect: int | None = 200
) -> None:
    """Poll `url` until it answers (with status `expect`, or any status when None), or fail with the log."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:
        while time.monotonic() < deadline:
            if child:
                child.check_alive()
            try:
                async with session.get(url) as response:
                    if expect is None or response.status == expect:
                        return
                    last = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as error:
                last = f"{type(error).__name__}"
            await asyncio.sleep(0.1)
    where = f"; last lines of {child.log_path}:\n{child.tail()}" if child else ""
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f}s ({last}){where}")


async def wait_port(address: str, port: int, *, child: Child | None = None, timeout_s: float = 30.0) -> None:
    """Wait until a TCP connection to address:port succeeds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child:
            child.check_alive()
        try:
            _, writer = await asyncio.open_connection(address, port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    where = f"; last lines of {child.log_path}:\n{child.tail()}" if child else ""
    raise TimeoutError(f"{address}:{port} not accepting connections after {timeout_s:.0f}s{where}")
