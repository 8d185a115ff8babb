"""`frontier-picker`: the command line, mirroring the GIE endpoint picker's flags so it can be swapped in.

GIE's spellings and defaults: `--grpc-port 9002`, `--grpc-health-port 9003`, `--metrics-port 9090`,
`--pool-name`, `--pool-namespace`, `--config-file`/`--config-text`, `--secure-serving` (true),
`--cert-path`, `--refresh-metrics-interval` (50ms), `--metrics-endpoint-auth` (true, but only with
`--pool-name`: a file-mode picker has no API server to review tokens). Every other flag of the GIE v1.5.0
EPP is accepted too: `frontier_picker.gie_flags.FLAGS` says, flag by flag, whether it maps onto a Frontier
option (`--v` and `--zap-log-level` onto `--log-level`), is ignored (logged at start) or refused (the start
fails with a message naming what to use instead). A flag unknown to both stops the start, as in GIE.
Frontier adds `--endpoints-file` (discovery without Kubernetes), `--fallbacks`, `--max-body-bytes`,
`--builtin-config`, `--stream-idle-timeout`, `--max-streams-per-peer`, `--overload-lag`, `--address`,
`--kubeconfig`, `--workers` (processes on the same ports: `workers`) and `--peer-port` / `--peers` /
`--peer-service` (replicas that learn each other's decisions: `peering`).
Every port accepts 0 (the OS picks; the log says which).
"""

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path

from frontier_api import names
from frontier_picker import event_loop, gie_flags, logs, server, workers


def parser() -> argparse.ArgumentParser:
    """The command line: Frontier's options plus every GIE EPP flag (`gie_flags.FLAGS`)."""
    # No abbreviations, as in pflag: otherwise a GIE flag could silently match a longer Frontier option.
    parse = argparse.ArgumentParser(
        prog="frontier-picker", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    parse.add_argument("--address", default="0.0.0.0", help="address every server binds")
    parse.add_argument("--grpc-port", type=int, default=names.EXT_PROC_PORT, help="ext_proc port")
    parse.add_argument("--grpc-health-port", type=int, default=names.HEALTH_PORT, help="gRPC health port")
    parse.add_argument("--metrics-port", type=int, default=names.METRICS_PORT, help="Prometheus metrics port")
    parse.add_argument("--pool-name", help="InferencePool to serve (Kubernetes discovery)")
    parse.add_argument(
        "--pool-namespace",
        default="",
        help="namespace of the InferencePool (default: the NAMESPACE environment variable, then default)",
    )
    parse.add_argument("--kubeconfig", type=Path, help="kubeconfig file (default: in-cluster, then ~/.kube)")
    parse.add_argument(
        "--endpoints-file", type=Path, help="YAML/JSON endpoints file (discovery without Kubernetes)"
    )
    configs = parse.add_mutually_exclusive_group()
    configs.add_argument("--config-file", type=Path, help="EndpointPickerConfig YAML file")
    configs.add_argument("--config-text", help="EndpointPickerConfig YAML text")
    parse.add_argument(
        "--secure-serving",
        type=gie_flags.parse_bool,
        nargs="?",
        const=True,
        default=True,
        help="serve ext_proc over TLS (default true; a self-signed certificate unless --cert-path)",
    )
    parse.add_argument(
        "--metrics-endpoint-auth",
        type=gie_flags.parse_bool,
        nargs="?",
        const=True,
        help="serve /metrics only to bearer tokens the API server authenticates and authorizes for get on "
        "/metrics (TokenReview, SubjectAccessReview); default true with --pool-name, false with "
        "--endpoints-file (no API server)",
    )
    parse.add_argument("--cert-path", type=Path, help="directory holding tls.crt and tls.key")
    parse.add_argument(
        "--client-ca-cert",
        type=Path,
        help="PEM CA file: require ext_proc clients (the gateway) to present a certificate it signed (mTLS)",
    )
    configs.add_argument(
        "--builtin-config",
        help="built-in scheduling config instead of --config-file/--config-text: "
        "frontier (default), gie-default, round-robin",
    )
    parse.add_argument("--fallbacks", type=int, default=1, help="fallback endpoints after the primary")
    parse.add_argument(
        "--drain-delay",
        type=float,
        default=1.0,
        help="on SIGTERM, seconds readiness is NOT_SERVING while new streams are still taken (default 1)",
    )
    parse.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM, seconds in all that routed streams get to finish (default 30; keep it below the "
        "pod's terminationGracePeriodSeconds)",
    )
    parse.add_argument(
        "--max-body-bytes", type=int, default=16 * 1024 * 1024, help="larger request bodies get 413"
    )
    parse.add_argument(
        "--max-buffered-body-bytes",
        type=int,
        default=256 * 1024 * 1024,
        help="request-body bytes all streams may hold before their decision; past it chunks get 503",
    )
    parse.add_argument(
        "--stream-idle-timeout",
        type=gie_flags.parse_duration,
        default=300.0,
        help="close an ext_proc stream whose client sends nothing for this long, refunding its charge: a Go "
        "duration or seconds (default 5m, Envoy's own stream idle timeout; 0: never)",
    )
    parse.add_argument(
        "--max-streams-per-peer",
        type=int,
        default=4096,
        help="ext_proc streams one peer host may hold open; more are refused with RESOURCE_EXHAUSTED "
        "(default 4096, above any one gateway replica's concurrent and queued requests; 0: no cap)",
    )
    parse.add_argument(
        "--overload-lag",
        type=gie_flags.parse_duration,
        default=5.0,
        help="refuse new requests with 503 (and keep serving routed ones) while the picker runs this far "
        "behind: requests reach it this late after the gateway got them, or its event loop lags this much; "
        "a Go duration or seconds (default 5s: past any interactive SLO, where slow beats failed; 0: never)",
    )
    parse.add_argument(
        "--early-decision-prompt-chars",
        type=int,
        default=65_536,
        help="decide before the body ends once this much prompt is in (0: wait for the whole body); keep it "
        "at least the prefix scorer's maxPrefixBlocksToMatch x 64",
    )
    parse.add_argument(
        "--endpoints-poll-interval", type=float, default=1.0, help="seconds between file checks"
    )
    parse.add_argument(
        "--refresh-metrics-interval",
        type=gie_flags.parse_duration,
        default=0.05,
        help="interval between scrapes of each endpoint's /metrics: a Go duration (50ms, the default) or "
        "seconds (0: no scraping)",
    )
    parse.add_argument(
        "--workers",
        type=int,
        help="picker processes serving the same ports (workers.py); default: the container's CPU limit "
        "in whole cores, else 1",
    )
    parse.add_argument(
        "--event-loop",
        choices=event_loop.CHOICES,
        default="uvloop",
        help="the event loop each picker process runs on (event_loop.py; default uvloop)",
    )
    parse.add_argument(
        "--max-streams-per-connection",
        type=int,
        default=0,
        help="HTTP/2 streams one ext_proc connection may carry, advertised to the gateway (default 0: no "
        "limit; a gateway that sends a burst before reading it sees streams refused: prefer a cap on the "
        "gateway's side, see workers.py)",
    )
    parse.add_argument(
        "--peer-port",
        type=int,
        help="serve Frontier's peering API (frontier.picker.v1) on this port so other replicas of the pool's "
        "picker learn this one's decisions (default: off)",
    )
    parse.add_argument(
        "--peers",
        default="",
        help="comma-separated host:port of other replicas' peer ports to follow (this one may be listed)",
    )
    parse.add_argument(
        "--peer-service",
        help="host:port of a headless Service naming every replica's peer port, looked up every 5 s",
    )
    parse.add_argument(
        "--log-level",
        help="INFO unless GIE's --v or --zap-log-level says otherwise; DEBUG logs one line per completed "
        "request too",
    )
    gie_flags.add_arguments(parse)
    return parse


def log_level(arguments: argparse.Namespace) -> str:
    """`--log-level` if given, else what GIE's `--zap-log-level` or `--v` asks for, else INFO."""
    return str(arguments.log_level or gie_flags.log_level(arguments) or "INFO")


def options(arguments: argparse.Namespace) -> server.Options:
    """Server options from parsed arguments; exits when a GIE flag Frontier refuses was given."""
    gie_flags.check(arguments)
    if arguments.pool_name and arguments.endpoints_file:
        raise SystemExit("frontier-picker: give --pool-name or --endpoints-file, not both")
    if not arguments.pool_name and not arguments.endpoints_file:
        # Without discovery every request would be refused with 503: refuse to start instead.
        raise SystemExit(
            "frontier-picker: no endpoint discovery; give --pool-name (a Kubernetes InferencePool) or "
            "--endpoints-file (a YAML/JSON list of endpoints)"
        )
    if arguments.client_ca_cert is not None and not arguments.secure_serving:
        raise SystemExit("frontier-picker: --client-ca-cert needs TLS; drop --secure-serving false")
    config_text = arguments.config_text
    if arguments.config_file is not None:
        config_text = arguments.config_file.read_text()
    return server.Options(
        address=arguments.address,
        grpc_port=arguments.grpc_port,
        grpc_health_port=arguments.grpc_health_port,
        metrics_port=arguments.metrics_port,
        secure_serving=arguments.secure_serving,
        cert_path=arguments.cert_path,
        client_ca_cert=arguments.client_ca_cert,
        config_text=config_text,
        builtin_config=arguments.builtin_config,
        fallbacks=arguments.fallbacks,
        drain_delay_s=arguments.drain_delay,
        drain_timeout_s=arguments.drain_timeout,
        max_body_bytes=arguments.max_body_bytes,
        max_buffered_body_bytes=arguments.max_buffered_body_bytes,
        stream_idle_timeout_s=arguments.stream_idle_timeout,
        max_streams_per_peer=arguments.max_streams_per_peer,
        max_streams_per_connection=arguments.max_streams_per_connection,
        overload_lag_s=arguments.overload_lag,
        event_loop=arguments.event_loop,
        early_decision_prompt_chars=arguments.early_decision_prompt_chars,
        endpoints_file=arguments.endpoints_file,
        endpoints_poll_s=arguments.endpoints_poll_interval,
        refresh_metrics_interval_s=arguments.refresh_metrics_interval,
        pool_name=arguments.pool_name,
        # GIE's resolution: the flag, else the pod's namespace from the downward API, else default.
        pool_namespace=arguments.pool_namespace or os.environ.get("NAMESPACE") or "default",
        kubeconfig=arguments.kubeconfig,
        peer_port=arguments.peer_port,
        peers=tuple(peer.strip() for peer in arguments.peers.split(",") if peer.strip()),
        peer_service=arguments.peer_service,
        metrics_auth=(
            arguments.metrics_endpoint_auth
            if arguments.metrics_endpoint_auth is not None
            else arguments.pool_name is not None
        ),
    )


async def run(arguments: argparse.Namespace, handler: logs.BatchedStreamHandler) -> None:
    """Serve until SIGTERM or SIGINT (Kubernetes stops pods with SIGTERM), then stop cleanly."""
    serving = asyncio.current_task()
    if serving is None:
        raise RuntimeError("run() must be awaited inside a task")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, serving.cancel)
    flusher = loop.create_task(logs.flush_periodically(handler))
    try:
        await server.serve(options(arguments))
    except asyncio.CancelledError:
        logging.getLogger(__name__).info("event=shutdown")
    finally:
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)


def main(argv: Sequence[str] | None = None) -> None:
    arguments = parser().parse_args(argv)
    level = log_level(arguments)
    handler = logs.configure(level)
    count = arguments.workers if arguments.workers is not None else workers.default_count()
    if count < 1:
        raise SystemExit("frontier-picker: --workers must be at least 1")
    try:
        if count > 1:
            workers.supervise(options(arguments), count, level, handler)
        else:
            event_loop.run(run(arguments, handler), kind=arguments.event_loop)
    except ValueError as error:  # configuration errors name the field and value
        raise SystemExit(f"frontier-picker: {error}") from None
    finally:
        handler.flush_now()


if __name__ == "__main__":
    main()
