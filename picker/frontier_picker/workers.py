"""Worker processes: one picker pod serving ext_proc from several processes on the same ports.

One Python process runs one request's code at a time, so a picker pod with N cores runs N workers
(`--workers`, by default the pod's CPU limit). This module is the supervisor, the `frontier-picker`
process itself when there is more than one worker:

- Every worker is a whole picker (`server.start`) binding the ext_proc, health and peer ports with
  SO_REUSEPORT (gRPC's default on Linux): the kernel spreads incoming *connections* over the workers. A
  gateway multiplexes its ext_proc streams over few HTTP/2 connections (Envoy: one per worker thread), so
  the gateway should cap the streams per connection to its picker cluster (Frontier's Envoy bootstrap sets
  `max_concurrent_streams`; `envoy_bootstrap.PICKER_STREAMS_PER_CONNECTION`) and a busy one opens several.
  The picker can advertise a cap itself (`--max-streams-per-connection`), but a gateway that sends a burst
  before it reads the picker's HTTP/2 settings then sees streams refused, which Envoy's ext_proc client does
  not retry: it is off by default.
- The workers are siblings (`peering`): each follows the others over a Unix socket in a private directory, so
  every worker's in-flight accounting, prefix index and cost ledger cover the whole pod's traffic. Worker 0
  scrapes the endpoints' metrics and the others use its scrapes (one scraper per pod).
- Each worker serves its own metrics page on a loopback port; the supervisor serves the pod's page on the
  metrics port, the workers' pages merged (`metrics_merge`), behind the same authentication.
- A worker that dies is started again (logged with its exit code); its siblings drop its flights when its
  stream ends. SIGTERM (or SIGINT) goes to every worker, each drains as a single picker does, and the
  supervisor exits once all have.

`plan` (pure) says what each worker runs; `supervise` does the process work.
"""

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import socket
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from prometheus_client import metrics_core as prometheus_metrics_core
from prometheus_client import registry as prometheus_registry

from frontier_picker import event_loop, logs, metrics, metrics_auth, metrics_merge, peering, server

log = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0  # before a dead worker is started again
PAGE_TIMEOUT_S = 2.0  # for one worker's metrics page


def cpu_limit(cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The container's CPU limit in whole cores (at least 1), from cgroup v2 `cpu.max` or v1's CFS quota;
    None when there is none (or it cannot be read)."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    try:
        return max(1, int(quota) // int(period))
    except (ValueError, ZeroDivisionError):
        return None


def default_count() -> int:
    """Workers when `--workers` is not given: the CPU limit, else 1 (without a limit the machine's core
    count says nothing about the pod's share of it)."""
    return cpu_limit() or 1


def plan(options: server.Options, count: int, run_dir: Path, pod: str) -> list[server.Options]:
    """What each of `count` workers runs: `options` with the pod's shared ports already resolved, a peer
    socket each in `run_dir`, the others as siblings, a loopback metrics port, and scraping by worker 0."""
    sockets = [run_dir / f"worker-{index}.sock" for index in range(count)]
    return [
        dataclasses.replace(
            options,
            metrics_address="127.0.0.1",
            metrics_port=0,
            metrics_auth=False,  # the pod's page (the supervisor's) is the guarded one
            peer_socket=sockets[index],
            siblings=tuple(f"unix:{path}" for path in sockets if path != sockets[index]),
            metrics_from_siblings=index > 0,
            pod=pod,
            worker=index,
        )
        for index in range(count)
    ]


@contextlib.contextmanager
def reserved_ports(options: server.Options) -> Iterator[server.Options]:
    """`options` with every port given as 0 replaced by a free one, held (bound with SO_REUSEPORT, not
    listening, so connections go only to the workers) until the block ends: every worker must bind the
    same port."""
    held: list[socket.socket] = []

    def reserve(port: int) -> int:
        if port != 0:
            return port
        family = socket.AF_INET6 if ":" in options.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((options.address, 0))
        held.append(sock)
        return int(sock.getsockname()[1])

    try:
        yield dataclasses.replace(
            options,
            grpc_port=reserve(options.grpc_port),
            grpc_health_port=reserve(options.grpc_health_port),
            peer_port=None if options.peer_port is None else reserve(options.peer_port),
        )
    finally:
        for sock in held:
            sock.close()


class _PodPage(prometheus_registry.Collector):
    """The workers' metrics pages, merged, for every scrape of the pod's page."""

    def __init__(self, ports: dict[int, int]) -> None:
        self.ports = ports  # worker index -> its loopback metrics port

    def collect(self) -> Iterator[prometheus_metrics_core.Metric]:
        pages = []
        for index, port in sorted(self.ports.items()):
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/metrics", timeout=PAGE_TIMEOUT_S
                ) as page:
                    pages.append(page.read().decode())
            except OSError as error:
                log.warning("event=worker_metrics_failed worker=%d error=%r", index, error)
        yield from metrics_merge.merge(pages)


def _worker(options: server.Options, level: str, ports: "multiprocessing.Queue[tuple[int, int]]") -> None:
    """A worker process: one picker until SIGTERM, its metrics port reported to the supervisor."""
    handler = logs.configure(level, tag=f"worker={options.worker}")

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        # A terminal's Ctrl-C (or `timeout`) signals the whole process group, and the supervisor passes the
        # signal on too: the first one starts the drain, the others are the same request.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        flusher = loop.create_task(logs.flush_periodically(handler))
        picker = await server.start(options)
        ports.put((options.worker, picker.metrics_port))
        log.info("event=worker_ready worker=%d pid=%d", options.worker, os.getpid())
        try:
            await stopping.wait()
        finally:
            await picker.stop(drain_delay_s=options.drain_delay_s, drain_timeout_s=options.drain_timeout_s)
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)

    try:
        event_loop.run(run(), kind=options.event_loop)
    finally:
        handler.flush_now()


def supervise(options: server.Options, count: int, level: str, handler: logs.BatchedStreamHandler) -> None:
    """Run `count` workers of `options` until SIGTERM or SIGINT; restart any that dies. `handler` is the
    supervisor's own log handler (flushed as it goes)."""
    context = multiprocessing.get_context("spawn")  # no forked gRPC state
    ports: multiprocessing.Queue[tuple[int, int]] = context.Queue()
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        log.info("event=workers_stopping signal=%s", signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with tempfile.TemporaryDirectory(prefix="frontier-picker-") as run_dir, reserved_ports(options) as shared:
        plans = plan(shared, count, Path(run_dir), pod=peering.new_peer_id())
        page_ports: dict[int, int] = {}
        registry = prometheus_registry.CollectorRegistry()
        registry.register(_PodPage(page_ports))
        gate = metrics_auth.kube_gate(options.kubeconfig) if options.metrics_auth else None
        metrics_port, _thread, page_server = metrics.serve(
            registry, address=options.metrics_address or options.address, port=options.metrics_port, gate=gate
        )
        processes = {index: _start(context, plans[index], level, ports) for index in range(count)}
        log.info(
            "event=workers_started workers=%d grpc_port=%d grpc_health_port=%d metrics_port=%d peer_port=%s",
            count,
            shared.grpc_port,
            shared.grpc_health_port,
            metrics_port,
            shared.peer_port if shared.peer_port is not None else "-",
        )
        try:
            while not stopping:
                handler.flush_now()
                _collect_ports(ports, page_ports)
                sentinels = [process.sentinel for process in processes.values()]
                multiprocessing.connection.wait(sentinels, timeout=0.2)
                for index, process in list(processes.items()):
                    if process.exitcode is not None and not stopping:
                        log.error("event=worker_died worker=%d exit_code=%s", index, process.exitcode)
                        page_ports.pop(index, None)
                        time.sleep(RESTART_DELAY_S)
                        processes[index] = _start(context, plans[index], level, ports)
        finally:
            _stop_all(processes, grace_s=options.drain_timeout_s + options.drain_delay_s + 5.0)
            page_server.shutdown()
            page_server.server_close()
    log.info("event=workers_stopped")


def _start(
    context: multiprocessing.context.SpawnContext,
    options: server.Options,
    level: str,
    ports: "multiprocessing.Queue[tuple[int, int]]",
) -> BaseProcess:
    process = context.Process(
        target=_worker, args=(options, level, ports), name=f"picker-worker-{options.worker}", daemon=False
    )
    process.start()
    log.info("event=worker_started worker=%d pid=%s", options.worker, process.pid)
    return process


def _collect_ports(ports: "multiprocessing.Queue[tuple[int, int]]", page_ports: dict[int, int]) -> None:
    with contextlib.suppress(queue.Empty):
        while True:
            index, port = ports.get_nowait()
            page_ports[index] = port


def _stop_all(processes: dict[int, BaseProcess], *, grace_s: float) -> None:
    """SIGTERM every worker (each drains), wait up to `grace_s`, then kill what is left."""
    for process in processes.values():
        if process.exitcode is None and process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes.values():
        process.join(max(0.0, deadline - time.monotonic()))
        if process.exitcode is None:
            log.error("event=worker_killed worker_pid=%s", process.pid)
            process.kill()
            process.join()
