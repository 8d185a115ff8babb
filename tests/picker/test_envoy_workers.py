"""A multi-process picker behind the real Envoy (GIE's full-duplex mode): `frontier-picker --workers 3`
serves one port from three processes that share their decisions; a worker killed under load is started
again and costs at most its own streams.

Envoy and the picker are real processes; the backends are stand-ins on loopback addresses (stack.py)."""

import asyncio
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from frontier_api import envoy_bootstrap

from . import stack

pytestmark = [pytest.mark.envoy, pytest.mark.slow, pytest.mark.timeout(120)]

FRONT = "127.2.0.140"


class Pod:
    """`frontier-picker --workers 3` as a process, with its log."""

    def __init__(self, tmp: Path, endpoints_file: Path) -> None:
        self.grpc_port = stack.free_port(FRONT)
        self.metrics_port = stack.free_port(FRONT)
        self.log_path = tmp / "picker.log"
        argv = [
            *(sys.executable, "-m", "frontier_picker.main", "--workers", "3"),
            *("--endpoints-file", str(endpoints_file), "--secure-serving", "false", "--address", FRONT),
            *("--grpc-port", str(self.grpc_port), "--grpc-health-port", str(stack.free_port(FRONT))),
            *("--metrics-port", str(self.metrics_port), "--refresh-metrics-interval", "0"),
            *("--drain-delay", "0", "--drain-timeout", "2", "--builtin-config", "frontier"),
        ]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self.log_path.open("wb"))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready_workers(self) -> int:
        return len(set(re.findall(r"worker=(\d+) event=worker_ready", self.log())))

    def worker_pids(self) -> dict[int, int]:
        return {
            int(w): int(p) for w, p in re.findall(r"event=worker_started worker=(\d+) pid=(\d+)", self.log())
        }

    def decisions_by_worker(self) -> Counter[str]:
        return Counter(re.findall(r"worker=(\d+) event=decision ", self.log()))

    def page(self) -> str:
        with urllib.request.urlopen(f"http://{FRONT}:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def pod_stack(tmp_path: Path) -> Iterator[tuple[Pod, str, list[stack.Backend], stack.LoopThread]]:
    loop = stack.LoopThread()
    backends = [stack.Backend(address=f"127.2.0.{41 + i}") for i in range(3)]
    for backend in backends:
        loop.run(backend.start())
    endpoints_file = tmp_path / "endpoints.yaml"
    endpoints_file.write_text(
        "endpoints:\n" + "".join(f"  - {{address: {b.address}, port: {b.port}}}\n" for b in backends)
    )
    pod = Pod(tmp_path, endpoints_file)
    listen_port, admin_port = stack.free_port(FRONT), stack.free_port(FRONT)
    bootstrap = envoy_bootstrap.bootstrap(
        listen_address=FRONT,
        listen_port=listen_port,
        pickers=[f"{FRONT}:{pod.grpc_port}"],
        picker_tls=False,
        mode="gie",
        endpoints=[(b.address, b.port) for b in backends],
        admin_port=admin_port,
    )
    envoy, envoy_log = stack.launch_envoy(bootstrap, tmp=tmp_path, name="envoy-workers")
    try:
        deadline = time.monotonic() + 30
        while pod.ready_workers() < 3:
            assert pod.process.poll() is None, pod.log()
            assert time.monotonic() < deadline, pod.log()
            time.sleep(0.1)
        loop.run(stack.wait_ready(f"http://{FRONT}:{admin_port}/ready", envoy, envoy_log))
        yield pod, f"http://{FRONT}:{listen_port}", backends, loop
    finally:
        stack.stop_envoy(envoy)
        pod.stop()
        for backend in backends:
            if backend.runner is not None:
                loop.run(backend.runner.cleanup())
        loop.close()


def test_three_workers_serve_one_port_and_the_pod_page_counts_every_request(
    pod_stack: tuple[Pod, str, list[stack.Backend], stack.LoopThread],
) -> None:
    pod, url, backends, _loop = pod_stack
    prompts = [f"request {n}: " + "some words to route " * 20 for n in range(240)]
    # ~0.1 s streamed answers, 96 at a time: each Envoy thread needs several connections (16 streams each),
    # which the kernel spreads over the workers (all on one worker: 3 x (1/3)^6, about 0.4%).
    streamed = {"x-test-chunks": "5", "x-test-delay": "0.02"}
    statuses = asyncio.run(stack.completions(url, prompts, concurrency=96, headers=streamed))
    assert Counter(statuses) == {200: 240}
    assert sum(len(b.received) for b in backends) == 240
    time.sleep(1.0)  # the workers' logs are flushed every 0.5 s
    by_worker = pod.decisions_by_worker()
    assert sum(by_worker.values()) == 240
    assert len(by_worker) >= 2, f"one worker took every stream: {by_worker}"
    counted = re.findall(r'^frontier_picker_requests_total\{code="200",.*\} (\S+)$', pod.page(), re.M)
    assert sum(float(value) for value in counted) == 240


def test_a_worker_killed_under_load_is_started_again_and_costs_at_most_its_own_streams(
    pod_stack: tuple[Pod, str, list[stack.Backend], stack.LoopThread],
) -> None:
    pod, url, _backends, _loop = pod_stack
    victim = pod.worker_pids()[1]

    async def load_and_kill() -> list[int]:
        prompts = [f"request {n}: " + "words " * 40 for n in range(300)]
        streamed = {"x-test-chunks": "5", "x-test-delay": "0.02"}  # ~0.1 s answers: requests overlap the kill
        sending = asyncio.ensure_future(stack.completions(url, prompts, concurrency=24, headers=streamed))
        await asyncio.sleep(0.5)
        subprocess.run(["kill", "-KILL", str(victim)], check=True)
        return await sending

    statuses = asyncio.run(load_and_kill())
    failed = len([s for s in statuses if s != 200])
    assert failed <= 24, f"{failed} failed: more than the killed worker's share of the streams"
    deadline = time.monotonic() + 20
    while len(pod.worker_pids()) < 3 or pod.worker_pids()[1] == victim:
        assert time.monotonic() < deadline, pod.log()
        time.sleep(0.1)
    assert "event=worker_died worker=1" in pod.log()
    # After the restart every request is served again.
    statuses = asyncio.run(
        stack.completions(url, [f"after {n}: " + "words " * 40 for n in range(60)], concurrency=12)
    )
    assert Counter(statuses) == {200: 60}
