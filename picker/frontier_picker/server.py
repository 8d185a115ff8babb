"""The running picker: the ext_proc gRPC server, the gRPC health server, the metrics endpoint and discovery.

`start(options, ...)` brings everything up inside the caller's asyncio loop and returns a `Picker` with the
bound ports (any port may be 0: the OS picks one, and the log line `event=listening` names it); `serve`
runs until cancelled. Tests and benchmarks start it in-process; `frontier-picker` (main.py) wraps `serve`.

Health follows the GIE EPP: services `liveness`, `readiness`, `envoy.service.ext_proc.v3.ExternalProcessor`
and `inference-extension` (what GIE's manifests probe) on the health port (plaintext) and on the ext_proc
port; `readiness` and `inference-extension` turn SERVING once discovery has delivered its first endpoint set.
"""

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from frontier_api import names
from frontier_picker import (
    datastore,
    director,
    file_discovery,
    memory,
    metrics,
    metrics_auth,
    overload,
    peering,
    pool_discovery,
    processor,
    scraper,
    tls,
)
from frontier_picker.proto.v1 import picker_pb2_grpc as wire_grpc
from frontier_picker.scheduling import config, types
from frontier_picker.scheduling.framework import plugin
from frontier_picker.scheduling.framework import scheduler as framework
from frontier_picker.scheduling.plugins import cost, prefix

log = logging.getLogger(__name__)

LIVENESS = "liveness"
READINESS = "readiness"
# What GIE's own manifests probe (liveness and readiness) on the health port; it follows readiness here.
GIE_PROBE_SERVICE = "inference-extension"
READINESS_SERVICES = (READINESS, GIE_PROBE_SERVICE)
# The HTTP/2 window of each ext_proc stream: request-body bytes Envoy may send ahead of what the picker read.
STREAM_WINDOW_BYTES = 1024 * 1024
# How often flow control looks again without a completion to prompt it (metrics refresh every 50 ms).
PUMP_INTERVAL_S = 0.01


@dataclasses.dataclass(slots=True, kw_only=True)
class Options:
    """Everything the command line sets; defaults are the GIE EPP's."""

    address: str = "0.0.0.0"
    metrics_address: str | None = None  # None: `address`
    grpc_port: int = names.EXT_PROC_PORT
    grpc_health_port: int = names.HEALTH_PORT
    metrics_port: int = names.METRICS_PORT
    secure_serving: bool = True
    cert_path: Path | None = None
    client_ca_cert: Path | None = None  # mutual TLS: only clients with a certificate this CA signed
    config_text: str | None = None
    builtin_config: str | None = None
    fallbacks: int = 1
    max_body_bytes: int = 16 * 1024 * 1024
    max_buffered_body_bytes: int = 256 * 1024 * 1024
    stream_idle_timeout_s: float = 300.0
    max_streams_per_peer: int = 4096
    # HTTP/2 streams one ext_proc connection may carry (0: gRPC's default, no limit). Workers share the port
    # per connection, so a limit makes a busy gateway open several connections that spread over them.
    max_streams_per_connection: int = 0
    overload_lag_s: float = 5.0  # new requests get 503 while the picker runs this far behind (0: never)
    event_loop: str = "uvloop"  # what each worker process runs on (`event_loop`)
    early_decision_prompt_chars: int = 65_536
    endpoints_file: Path | None = None
    endpoints_poll_s: float = 1.0
    refresh_metrics_interval_s: float = 0.05  # 0: no scraping, schedule on in-flight accounting only
    pool_name: str | None = None
    pool_namespace: str = "default"
    kubeconfig: Path | None = None
    # /metrics only for bearer tokens the API server accepts and authorizes (`metrics_auth`).
    metrics_auth: bool = False
    # SIGTERM: readiness turns NOT_SERVING and new streams are still taken for `drain_delay_s` (while
    # proxies and Service endpoints move traffic away), then in-flight streams get up to `drain_timeout_s`.
    drain_delay_s: float = 1.0
    drain_timeout_s: float = 30.0
    # Peering (`peering`): where this picker publishes its flights, and the peers it follows.
    peer_port: int | None = None  # TCP, for replicas; None: not served over TCP
    peer_socket: Path | None = None  # a Unix socket, for the workers of one pod
    peers: tuple[str, ...] = ()  # other pods' pickers to follow (host:port); this one may be listed too
    peer_service: str | None = None  # host:port whose DNS names every replica (a headless Service)
    siblings: tuple[str, ...] = ()  # the other workers of this pod (unix:path)
    metrics_from_siblings: bool = False  # do not scrape: use what a sibling worker scraped
    peer_id: str | None = None
    pod: str | None = None  # shared by the workers of one pod (None: this process is the pod)
    worker: int = 0  # this process's index among the pod's workers (`workers`)


@dataclasses.dataclass(slots=True, kw_only=True)
class Picker:
    """A started picker and what it bound."""

    grpc_port: int
    grpc_health_port: int
    metrics_port: int
    store: datastore.Datastore
    metrics: metrics.Metrics
    scheduler: types.Scheduler
    _ext_proc_server: grpc.aio.Server
    _health_server: grpc.aio.Server
    _health: health.aio.HealthServicer
    _tasks: list["asyncio.Task[None]"]
    _metrics_server: Any
    peers: peering.Peering | None = None
    peer_port: int | None = None
    _peer_server: grpc.aio.Server | None = None

    async def stop(self, *, drain_delay_s: float = 0.0, drain_timeout_s: float = 0.5) -> None:
        """Drain, then stop: readiness NOT_SERVING at once, new streams still taken for `drain_delay_s`,
        then no new streams while those in flight finish, for up to `drain_timeout_s` in all."""
        began = time.monotonic()
        for service in (*READINESS_SERVICES, "", names.EXT_PROC_SERVICE):
            await self._health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        in_flight = self.store.in_flight()
        log.info(
            "event=draining in_flight=%d drain_delay_s=%g drain_timeout_s=%g",
            in_flight,
            drain_delay_s,
            drain_timeout_s,
        )
        if drain_delay_s > 0:
            await asyncio.sleep(drain_delay_s)
        grace = max(0.0, drain_timeout_s - (time.monotonic() - began))
        # Refuses new streams and lets routed ones finish; those still open when the grace ends are cut, so
        # they are counted then (once cut, their completions have already refunded them).
        stopping = asyncio.ensure_future(self._ext_proc_server.stop(grace=grace))
        done, _ = await asyncio.wait({stopping}, timeout=grace)
        cut = 0 if done else self.store.in_flight()
        await stopping
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.peers is not None:
            await self.peers.stop()
        if self._peer_server is not None:
            await self._peer_server.stop(grace=0)
        await self._health_server.stop(grace=0)
        self._metrics_server.shutdown()
        self._metrics_server.server_close()
        log.info("event=stopped drained_s=%.2f cut_in_flight=%d", time.monotonic() - began, cut)


def observe_plugins(scheduler: types.Scheduler, own_metrics: metrics.Metrics) -> None:
    """GIE's per-plugin metrics for a scheduler built from an EndpointPickerConfig: each plugin call's
    duration, the size of every prefix index its plugins keep, and the engine speeds its cost scorers
    learned (another scheduler has no plugins)."""
    if not isinstance(scheduler, framework.Scheduler):
        return
    timer = metrics.PluginDurations()
    scheduler.timer = timer
    own_metrics.registry.register(timer)
    indexes = {
        id(member.index): member.index
        for member in scheduler.members()
        if isinstance(member, prefix.PrefixCacheScorer)
    }
    if indexes:
        own_metrics.registry.register(
            metrics.PrefixIndexCollector(lambda: sum(index.entries() for index in indexes.values()))
        )
    speeds = [member.speed for member in scheduler.members() if isinstance(member, cost.PredictedTTFTScorer)]
    if speeds:
        own_metrics.registry.register(
            metrics.EngineSpeedCollector(lambda: (row for speed in speeds for row in speed.learned()))
        )


async def start(
    options: Options,
    *,
    scheduler: types.Scheduler | None = None,
    store: datastore.Datastore | None = None,
) -> Picker:
    """Start the picker in the running loop; `scheduler`/`store` override the ones built from `options`."""
    if scheduler is None:
        scheduler = config.load(
            options.config_text, builtin=options.builtin_config, fallbacks=options.fallbacks
        )
    if store is None:
        store = datastore.Datastore()
    own_metrics = metrics.create()
    observe_plugins(scheduler, own_metrics)
    flow = director.flow_of(scheduler)
    context = processor.Context(
        director=director.Director(scheduler=scheduler, store=store, metrics=own_metrics, flow=flow),
        metrics=own_metrics,
        settings=processor.Settings(
            max_body_bytes=options.max_body_bytes,
            max_buffered_body_bytes=options.max_buffered_body_bytes,
            stream_idle_timeout_s=options.stream_idle_timeout_s,
            max_streams_per_peer=options.max_streams_per_peer,
            overload_lag_s=options.overload_lag_s,
            early_decision_prompt_chars=options.early_decision_prompt_chars,
        ),
    )
    health_servicer = health.aio.HealthServicer()
    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ("", LIVENESS, names.EXT_PROC_SERVICE):
        await health_servicer.set(service, serving)
    for service in READINESS_SERVICES:
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)

    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    def on_change() -> None:
        ready = len(store.states())
        own_metrics.ready_endpoints.set(ready)
        # Ready once discovery has spoken and there is somewhere to route: with no endpoint every
        # request would get 503, and another replica (or the proxy's failure mode) does better.
        status = serving if store.synced and ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in READINESS_SERVICES:
            task = loop.create_task(health_servicer.set(service, status))
            pending.add(task)
            task.add_done_callback(pending.discard)

    store.subscribe(on_change)
    on_change()
    metrics.watch_pool(own_metrics, options.pool_name or "endpoints-file", store.states)
    if options.pool_name:
        own_metrics.namespace = options.pool_namespace
    if flow is not None:
        own_metrics.registry.register(
            metrics.FlowCollector(
                own_metrics,
                flow.queued,
                lambda: flow.gate.saturation(store.states(), context.clock()),
            )
        )

    server_options = [
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        # Envoy sends request bodies as fast as the picker's HTTP/2 window lets it; gRPC's bandwidth
        # probing would grow that window to megabytes per stream, buffered here faster than Python
        # reads it (10 concurrent 15 MB uploads: +150 MB resident). A fixed window per stream bounds it.
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", STREAM_WINDOW_BYTES),
    ]
    if options.max_streams_per_connection > 0:
        server_options.append(("grpc.max_concurrent_streams", options.max_streams_per_connection))
    ext_proc_server = grpc.aio.server(options=server_options)
    ext_proc_server.add_generic_rpc_handlers((processor.Processor(context).rpc_handler(),))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, ext_proc_server)
    bind = f"{options.address}:{options.grpc_port}"
    if options.secure_serving:
        grpc_port = ext_proc_server.add_secure_port(
            bind, tls.server_credentials(options.cert_path, client_ca=options.client_ca_cert)
        )
    else:
        grpc_port = ext_proc_server.add_insecure_port(bind)
    health_server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
    health_port = health_server.add_insecure_port(f"{options.address}:{options.grpc_health_port}")
    await ext_proc_server.start()
    await health_server.start()
    metrics_port, _thread, metrics_server = metrics.serve(
        own_metrics.registry,
        address=options.metrics_address or options.address,
        port=options.metrics_port,
        gate=metrics_auth.kube_gate(options.kubeconfig) if options.metrics_auth else None,
    )
    tasks: list[asyncio.Task[None]] = []
    if options.endpoints_file is not None:
        watcher = file_discovery.watch(options.endpoints_file, store, interval_s=options.endpoints_poll_s)
        tasks.append(loop.create_task(watcher))
    elif options.pool_name is not None:
        tasks.append(
            loop.create_task(
                pool_discovery.watch(
                    name=options.pool_name,
                    namespace=options.pool_namespace,
                    store=store,
                    kubeconfig=options.kubeconfig,
                )
            )
        )
    if flow is not None:
        tasks.append(loop.create_task(_pump(context.director, context.clock)))
    tasks.append(loop.create_task(memory.trim_after_bodies(lambda: context.body_bytes)))
    tasks.append(loop.create_task(overload.watch(context.loop_lag)))
    for source in data_sources_of(scheduler):
        tasks.append(loop.create_task(source.run(store.states), name=f"data-source-{source.name}"))
    peers, peer_server, peer_port = await _start_peering(options, context, store, tasks)
    if options.refresh_metrics_interval_s > 0 and not options.metrics_from_siblings:
        engine_scraper = scraper.Scraper(store.states, interval_s=options.refresh_metrics_interval_s)
        tasks.append(loop.create_task(engine_scraper.run()))
    log.info(
        "event=listening address=%s grpc_port=%d grpc_health_port=%d metrics_port=%d secure_serving=%s "
        "metrics_auth=%s discovery=%s fallbacks=%d",
        options.address,
        grpc_port,
        health_port,
        metrics_port,
        options.secure_serving,
        options.metrics_auth,
        "file" if options.endpoints_file else ("kubernetes" if options.pool_name else "none"),
        options.fallbacks,
    )
    return Picker(
        grpc_port=grpc_port,
        grpc_health_port=health_port,
        metrics_port=metrics_port,
        store=store,
        metrics=own_metrics,
        scheduler=scheduler,
        _ext_proc_server=ext_proc_server,
        _health_server=health_server,
        _health=health_servicer,
        _tasks=tasks,
        _metrics_server=metrics_server,
        peers=peers,
        peer_port=peer_port,
        _peer_server=peer_server,
    )


def data_sources_of(scheduler: types.Scheduler) -> list[plugin.DataSource]:
    """The data-source plugins of `scheduler`'s EndpointPickerConfig (none for any other scheduler)."""
    sources = getattr(scheduler, "data_sources", None)
    return [source for source in sources or () if isinstance(source, plugin.DataSource)]


async def _start_peering(
    options: Options,
    context: processor.Context,
    store: datastore.Datastore,
    tasks: list["asyncio.Task[None]"],
) -> tuple[peering.Peering | None, grpc.aio.Server | None, int | None]:
    """The peering server and the tasks that follow peers, when `options` ask for any."""
    listens = options.peer_port is not None or options.peer_socket is not None
    if not (listens or options.peers or options.peer_service or options.siblings):
        return None, None, None
    peers = peering.Peering(
        decider=context.director,
        store=store,
        clock=context.clock,
        peer_id=options.peer_id,
        pod=options.pod,
        scrapes=not options.metrics_from_siblings,
        metrics_interval_s=options.refresh_metrics_interval_s or 0.05,
    )
    server = grpc.aio.server(options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
    wire_grpc.add_PeeringServicer_to_server(peers, server)  # type: ignore[no-untyped-call]
    admin = peering.Admin(store=store, decider=context.director, clock=context.clock)
    wire_grpc.add_AdminServicer_to_server(admin, server)  # type: ignore[no-untyped-call]
    port = None
    if options.peer_port is not None:
        port = server.add_insecure_port(f"{options.address}:{options.peer_port}")
    if options.peer_socket is not None:
        server.add_insecure_port(f"unix:{options.peer_socket}")
    await server.start()
    peers.follow(options.siblings, siblings=True)
    peers.follow(options.peers)
    if options.peer_service:
        tasks.append(asyncio.get_running_loop().create_task(peers.follow_service(options.peer_service)))
    log.info(
        "event=peering peer_id=%s pod=%s peer_port=%s peer_socket=%s siblings=%d peers=%s peer_service=%s "
        "scrapes=%s",
        peers.peer_id,
        peers.pod,
        port if port is not None else "-",
        options.peer_socket or "-",
        len(options.siblings),
        ",".join(options.peers) or "-",
        options.peer_service or "-",
        peers.scrapes,
    )
    return peers, server, port


async def _pump(decider: director.Director, clock: Callable[[], float]) -> None:
    """Let flow control see fresh metrics and expired TTLs between completions."""
    while True:
        await asyncio.sleep(PUMP_INTERVAL_S)
        try:
            decider.pump(clock())
        except Exception:
            log.exception("event=flow_pump_failed")


async def serve(options: Options) -> None:
    """Run the picker until cancelled."""
    picker = await start(options)
    try:
        await asyncio.Event().wait()
    finally:
        await picker.stop(drain_delay_s=options.drain_delay_s, drain_timeout_s=options.drain_timeout_s)
