"""Envoy bootstraps that put the picker in front of model servers, as a GIE gateway does.

The shape is the one every GIE gateway builds: a listener whose HTTP connection manager runs the `ext_proc`
filter (a gRPC cluster on h2 to the picker) and then the router. The router sends each request to the
endpoint the picker named in `x-gateway-destination-endpoint`:

- with no `endpoints` given, to an `ORIGINAL_DST` cluster that reads the address from that header (what the
  GIE guides configure for plain Envoy). Envoy's original-destination load balancer understands one address
  only, so fallbacks cannot be honoured there: run the picker with `--fallbacks 0` behind it;
- with `endpoints` given, to a STATIC cluster of those endpoints under Envoy's `override_host` load-balancing
  policy, which reads the same header (or the `envoy.lb` metadata), tries the addresses in order and moves to
  the next one on each retry: the protocol's primary-then-fallbacks contract.

Modes (which messages the picker sees):

- `gie`: request and response headers `SEND`, bodies `FULL_DUPLEX_STREAMED`, trailers `SEND`: what GKE, Istio
  and llm-d configure. The picker sees and echoes every body chunk both ways.
- `cheap`: the request body `FULL_DUPLEX_STREAMED`, the response body `NONE` with response trailers `SEND`,
  for Envoys Frontier configures itself: the ext_proc stream stays open until the response ends, so the picker
  observes completion without a message per response chunk (usage then comes from the model server).
- `streamed` and `buffered`: the older body modes, kept so the picker's support for them is tested.

Only the OpenAI-compatible inference paths (and `/v1/models`) are routed; any other path gets 404 from Envoy
itself, so clients cannot reach an engine's admin paths (`/reset_prefix_cache`, `/metrics`) through the
gateway. Every mode also first removes a client's copies of the headers the picker owns
(`x-gateway-destination-endpoint`, its `-served` twin, `x-prefiller-host-port`), before ext_proc runs: with
`ORIGINAL_DST` and a picker that fails open, a forged destination would otherwise choose the upstream.

The picker cluster holds every picker replica given (`pickers`, a list of `host:port`) and health-checks
each over gRPC for its `readiness` service every `PICKER_HEALTH_INTERVAL_S`: Envoy opens each request's stream
to a replica that answers SERVING, so a draining replica (readiness NOT_SERVING from SIGTERM on, while it
still takes streams for its drain delay) stops getting new ones before it refuses them. When no replica is
ready (one replica, draining or without endpoints yet), Envoy's panic mode asks them all anyway: the picker's
own answer (503 with a reason) beats Envoy failing the request without asking. Keep the picker's
`--drain-delay` above the interval plus the check's timeout.

Everything here is a pure function returning the bootstrap as a dict (write it as JSON or YAML).
"""

from collections.abc import Sequence
from typing import Any, Final

from frontier_api import names

MODES: Final = ("gie", "cheap", "streamed", "buffered")
ROUTED_PATHS: Final = (*sorted(names.INFERENCE_PATHS), names.MODELS_PATH)
OWNED_HEADERS: Final = (
    names.DESTINATION_ENDPOINT,
    names.DESTINATION_ENDPOINT_SERVED,
    names.PREFILLER_HOST_PORT,
)

READY_PATH: Final = "/ready"

_PICKER_CLUSTER: Final = "frontier_picker"
_ENDPOINTS_CLUSTER: Final = "inference_pool"
# Streams Envoy multiplexes over one connection to the picker before it opens another: the workers of a
# picker pod share its port per connection (`frontier_picker.workers`), so a busy gateway must open several.
PICKER_STREAMS_PER_CONNECTION: Final = 16
PICKER_RETRIES: Final = 2  # other replicas an ext_proc stream is tried on when its replica refuses it
_ROUND_ROBIN_TYPE: Final = (
    "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin"
)
_NO_LIMIT: Final = {"max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000}
# Active health checking of the picker replicas: every 0.5 s (below the picker's default 1 s drain delay), one
# failed or NOT_SERVING answer marks a replica unready, one SERVING answer ready again.
PICKER_HEALTH_INTERVAL_S: Final = 0.5
PICKER_HEALTH_TIMEOUT_S: Final = 0.25
PICKER_HEALTH_SERVICE: Final = "readiness"


def processing_mode(mode: str) -> dict[str, str]:
    """The ext_proc `processing_mode` of one of `MODES`."""
    if mode == "gie":
        return {
            "request_header_mode": "SEND",
            "response_header_mode": "SEND",
            "request_body_mode": "FULL_DUPLEX_STREAMED",
            "response_body_mode": "FULL_DUPLEX_STREAMED",
            "request_trailer_mode": "SEND",
            "response_trailer_mode": "SEND",
        }
    if mode == "cheap":
        return {
            "request_header_mode": "SEND",
            "response_header_mode": "SEND",
            "request_body_mode": "FULL_DUPLEX_STREAMED",
            "response_body_mode": "NONE",
            "request_trailer_mode": "SEND",
            "response_trailer_mode": "SEND",
        }
    if mode in ("streamed", "buffered"):
        return {
            "request_header_mode": "SEND",
            "response_header_mode": "SEND",
            "request_body_mode": mode.upper(),
            "response_body_mode": mode.upper(),
            "request_trailer_mode": "SKIP",
            "response_trailer_mode": "SEND",
        }
    raise ValueError(f"mode {mode!r} is not an Envoy configuration the picker supports; allowed: {MODES}")


def bootstrap(
    *,
    listen_address: str,
    listen_port: int,
    pickers: Sequence[str],
    mode: str = "gie",
    picker_tls: bool = True,
    endpoints: Sequence[tuple[str, int]] | None = None,
    retries: int = 1,
    admin_port: int | None = None,
    ready_port: int | None = None,
    subset_from_header: bool = False,
    message_timeout_s: float = 30.0,
    request_timeout_s: float = 0.0,
    connect_timeout_s: float = 1.0,
) -> dict[str, Any]:
    """The bootstrap of an Envoy that asks the picker where each request goes.

    `pickers` are the picker replicas as `host:port` (one or more; each request's stream goes to a ready one).
    `endpoints` (address, port) switches from `ORIGINAL_DST` to a static cluster that honours fallbacks;
    `retries` is how many times the router retries a failed connection or reset (one per fallback).
    `subset_from_header` copies a client's `x-gateway-destination-endpoint-subset` header into the
    `envoy.lb.subset_hint` metadata the picker reads, standing in for a gateway that computes the subset.
    `request_timeout_s` 0 means no route timeout (long streams); `message_timeout_s` bounds each ext_proc
    reply. `ready_port` adds a listener answering `GET /ready` with 200 while Envoy runs and is not
    draining (a pod's readiness probe; the admin port, which can stop Envoy, stays on loopback or off).
    """
    http_filters: list[dict[str, Any]] = [_strip_owned_headers()]
    if subset_from_header:
        http_filters.append(_subset_hint_filter())
    http_filters.append(_ext_proc_filter(mode=mode, message_timeout_s=message_timeout_s))
    http_filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }
    )
    route: dict[str, Any] = {"cluster": _ENDPOINTS_CLUSTER, "timeout": f"{request_timeout_s}s"}
    if retries > 0:
        route["retry_policy"] = {
            "retry_on": "connect-failure,refused-stream,reset-before-request",
            "num_retries": retries,
        }
    manager = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
            ".HttpConnectionManager",
            "stat_prefix": "ingress",
            "codec_type": "AUTO",
            "stream_idle_timeout": "0s",
            "route_config": {
                "name": "inference",
                "virtual_hosts": [
                    {
                        "name": "inference",
                        "domains": ["*"],
                        "routes": _routes(route),
                    }
                ],
            },
            "http_filters": http_filters,
        },
    }
    config: dict[str, Any] = {
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": {"socket_address": {"address": listen_address, "port_value": listen_port}},
                    "filter_chains": [{"filters": [manager]}],
                }
            ],
            "clusters": [
                _picker_cluster(
                    pickers=pickers,
                    tls=picker_tls,
                    connect_timeout_s=connect_timeout_s,
                ),
                _endpoints_cluster(endpoints=endpoints, connect_timeout_s=connect_timeout_s),
            ],
        }
    }
    if ready_port is not None:
        config["static_resources"]["listeners"].append(_ready_listener(listen_address, ready_port))
    if admin_port is not None:
        config["admin"] = {
            "address": {"socket_address": {"address": listen_address, "port_value": admin_port}}
        }
    return config


def _ready_listener(address: str, port: int) -> dict[str, Any]:
    """A listener that only answers `GET /ready` (Envoy's health-check filter, not passed through)."""
    manager = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
            ".HttpConnectionManager",
            "stat_prefix": "ready",
            "route_config": {"name": "ready", "virtual_hosts": [{"name": "ready", "domains": ["*"]}]},
            "http_filters": [
                {
                    "name": "envoy.filters.http.health_check",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.health_check.v3"
                        ".HealthCheck",
                        "pass_through_mode": False,
                        "headers": [{"name": ":path", "string_match": {"exact": READY_PATH}}],
                    },
                },
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    },
                },
            ],
        },
    }
    return {
        "name": "ready",
        "address": {"socket_address": {"address": address, "port_value": port}},
        "filter_chains": [{"filters": [manager]}],
    }


def _ext_proc_filter(*, mode: str, message_timeout_s: float) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {
                "envoy_grpc": {"cluster_name": _PICKER_CLUSTER},
                # A replica that died since its last health check refuses the connection: open the stream on
                # another one (nothing was processed yet) instead of failing the request.
                "retry_policy": {
                    "retry_on": "connect-failure,refused-stream,reset-before-request",
                    "num_retries": PICKER_RETRIES,
                    "retry_host_predicate": [
                        {
                            "name": "envoy.retry_host_predicates.previous_hosts",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3"
                                ".PreviousHostsPredicate"
                            },
                        }
                    ],
                },
            },
            "failure_mode_allow": False,
            "message_timeout": f"{message_timeout_s}s",
            "processing_mode": processing_mode(mode),
            # STREAMED: let the picker see the body before it answers the headers, so it can choose by model.
            "send_body_without_waiting_for_header_response": mode == "streamed",
            "metadata_options": {
                "forwarding_namespaces": {"untyped": [names.SUBSET_HINT_NAMESPACE, names.LB_NAMESPACE]},
                "receiving_namespaces": {"untyped": [names.LB_NAMESPACE]},
            },
            # The endpoint that actually served the request (after retries), reported on the response path.
            "response_attributes": ["upstream.address"],
            # When the gateway got the request: the picker refuses new requests that reach it too late.
            "request_attributes": [names.REQUEST_TIME_ATTRIBUTE],
        },
    }


def _subset_hint_filter() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.header_to_metadata",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config",
            "request_rules": [
                {
                    "header": names.DESTINATION_SUBSET,
                    "on_header_present": {
                        "metadata_namespace": names.SUBSET_HINT_NAMESPACE,
                        "key": names.DESTINATION_SUBSET,
                        "type": "STRING",
                    },
                    "remove": True,
                }
            ],
        },
    }


def _picker_cluster(*, pickers: Sequence[str], tls: bool, connect_timeout_s: float) -> dict[str, Any]:
    if not pickers:
        raise ValueError("pickers is empty; give at least one picker replica as host:port")
    replicas = []
    for picker in pickers:
        host, _, port = picker.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"picker {picker!r} is not host:port")
        replicas.append(_lb_endpoint(host.strip("[]"), int(port)))
    cluster: dict[str, Any] = {
        "name": _PICKER_CLUSTER,
        "type": "STATIC",
        "connect_timeout": f"{connect_timeout_s}s",
        "circuit_breakers": {"thresholds": [_NO_LIMIT]},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {"max_concurrent_streams": PICKER_STREAMS_PER_CONNECTION}
                },
            }
        },
        "load_assignment": {
            "cluster_name": _PICKER_CLUSTER,
            "endpoints": [{"lb_endpoints": replicas}],
        },
        "health_checks": [
            {
                "timeout": f"{PICKER_HEALTH_TIMEOUT_S}s",
                "interval": f"{PICKER_HEALTH_INTERVAL_S}s",
                # Envoy checks a cluster that has carried no traffic only once a minute by default: a replica
                # that restarts while the other takes every stream must be seen ready again promptly.
                "no_traffic_interval": f"{PICKER_HEALTH_INTERVAL_S}s",
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": PICKER_HEALTH_SERVICE},
            }
        ],
    }
    if tls:
        # The picker serves a self-signed certificate by default; like the GIE gateways, do not verify it.
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {"alpn_protocols": ["h2"]},
            },
        }
    return cluster


def _endpoints_cluster(
    *, endpoints: Sequence[tuple[str, int]] | None, connect_timeout_s: float
) -> dict[str, Any]:
    if endpoints is None:
        return {
            "name": _ENDPOINTS_CLUSTER,
            "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED",
            "connect_timeout": f"{connect_timeout_s}s",
            "circuit_breakers": {"thresholds": [_NO_LIMIT]},
            "original_dst_lb_config": {
                "use_http_header": True,
                "http_header_name": names.DESTINATION_ENDPOINT,
            },
        }
    override_host = {
        "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost",
        "override_host_sources": [
            {"header": names.DESTINATION_ENDPOINT},
            {"metadata": {"key": names.LB_NAMESPACE, "path": [{"key": names.DESTINATION_ENDPOINT}]}},
        ],
        "fallback_policy": {
            "policies": [
                {
                    "typed_extension_config": {
                        "name": "envoy.load_balancing_policies.round_robin",
                        "typed_config": {"@type": _ROUND_ROBIN_TYPE},
                    }
                }
            ]
        },
    }
    return {
        "name": _ENDPOINTS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": f"{connect_timeout_s}s",
        "circuit_breakers": {"thresholds": [_NO_LIMIT]},
        "load_balancing_policy": {
            "policies": [
                {
                    "typed_extension_config": {
                        "name": "envoy.load_balancing_policies.override_host",
                        "typed_config": override_host,
                    }
                }
            ]
        },
        "load_assignment": {
            "cluster_name": _ENDPOINTS_CLUSTER,
            "endpoints": [{"lb_endpoints": [_lb_endpoint(address, port) for address, port in endpoints]}],
        },
    }


def _lb_endpoint(address: str, port: int) -> dict[str, Any]:
    return {"endpoint": {"address": {"socket_address": {"address": address, "port_value": port}}}}


def _strip_owned_headers() -> dict[str, Any]:
    """An HTTP filter removing client-sent copies of the headers only the picker may set."""
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": [{"remove": header} for header in OWNED_HEADERS]},
        },
    }


def _routes(route: dict[str, Any]) -> list[dict[str, Any]]:
    """The inference paths to the endpoints (query strings allowed), anything else answered 404 by Envoy."""
    routed = [{"match": {"path": path}, "route": route} for path in ROUTED_PATHS]
    refused = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 404, "body": {"inline_string": "not an inference API path\n"}},
        # Not even the picker is asked: nothing is scheduled or charged for a refused path.
        "typed_per_filter_config": {
            "envoy.filters.http.ext_proc": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
                "disabled": True,
            }
        },
    }
    return [*routed, refused]
