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

Everything here is a pure function returning the bootstrap as a dict (write it as JSON or YAML).
"""

from collections.abc import Sequence
from typing import Any, Final

from frontier_api import names
from frontier_picker import bodies

MODES: Final = ("gie", "cheap", "streamed", "buffered")
ROUTED_PATHS: Final = (*sorted(bodies.INFERENCE_PATHS), bodies.MODELS_PATH)
OWNED_HEADERS: Final = (
    names.DESTINATION_ENDPOINT,
    names.DESTINATION_ENDPOINT_SERVED,
    names.PREFILLER_HOST_PORT,
)

_PICKER_CLUSTER: Final = "frontier_picker"
_ENDPOINTS_CLUSTER: Final = "inference_pool"
# Streams Envoy multiplexes over one connection to the picker before it opens another: the workers of a
# picker pod share its port per connection (`frontier_picker.workers`), so a busy gateway must open several.
PICKER_STREAMS_PER_CONNECTION: Final = 16
_ROUND_ROBIN_TYPE: Final = (
    "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin"
)
_NO_LIMIT: Final = {"max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000}


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
    picker_address: str,
    picker_port: int,
    mode: str = "gie",
    picker_tls: bool = True,
    endpoints: Sequence[tuple[str, int]] | None = None,
    retries: int = 1,
    admin_port: int | None = None,
    subset_from_header: bool = False,
    message_timeout_s: float = 30.0,
    request_timeout_s: float = 0.0,
    connect_timeout_s: float = 1.0,
) -> dict[str, Any]:
    """The bootstrap of an Envoy that asks the picker at `picker_address:picker_port` where each request goes.

    `endpoints` (address, port) switches from `ORIGINAL_DST` to a static cluster that honours fallbacks;
    `retries` is how many times the router retries a failed connection or reset (one per fallback).
    `subset_from_header` copies a client's `x-gateway-destination-endpoint-subset` header into the
    `envoy.lb.subset_hint` metadata the picker reads, standing in for a gateway that computes the subset.
    `request_timeout_s` 0 means no route timeout (long streams); `message_timeout_s` bounds each ext_proc
    reply.
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
                    address=picker_address,
                    port=picker_port,
                    tls=picker_tls,
                    connect_timeout_s=connect_timeout_s,
                ),
                _endpoints_cluster(endpoints=endpoints, connect_timeout_s=connect_timeout_s),
            ],
        }
    }
    if admin_port is not None:
        config["admin"] = {
            "address": {"socket_address": {"address": listen_address, "port_value": admin_port}}
        }
    return config


def _ext_proc_filter(*, mode: str, message_timeout_s: float) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": _PICKER_CLUSTER}},
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


def _picker_cluster(*, address: str, port: int, tls: bool, connect_timeout_s: float) -> dict[str, Any]:
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
            "endpoints": [{"lb_endpoints": [_lb_endpoint(address, port)]}],
        },
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
