"""Envoy bootstraps for the plain load-balancing baselines: one listener, one STATIC cluster of the engines.

These are what a gateway without an endpoint picker does: Envoy's own `lb_policy` over the same engines the
picker routes to — `ROUND_ROBIN`, `LEAST_REQUEST` (Envoy's default power-of-two-choices on active requests)
and `RANDOM`. Timeouts are off on the route (streams of 1,000 tokens on a slowed-down fleet run for minutes)
and retries are off, so a baseline never gets a second chance the picker would not get.
"""

from collections.abc import Sequence
from typing import Any, Final

LB_POLICIES: Final = {"round-robin": "ROUND_ROBIN", "least-request": "LEAST_REQUEST", "random": "RANDOM"}


def bootstrap(
    *,
    policy: str,
    listen_address: str,
    listen_port: int,
    engines: Sequence[tuple[str, int]],
    admin_port: int | None = None,
) -> dict[str, Any]:
    """The bootstrap of an Envoy that spreads requests over `engines` (address, port) by `policy`."""
    if policy not in LB_POLICIES:
        raise ValueError(f"policy {policy!r} is not an Envoy baseline; allowed: {sorted(LB_POLICIES)}")
    if not engines:
        raise ValueError("engines is empty: an Envoy baseline needs at least one engine to route to")
    config: dict[str, Any] = {
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": {"socket_address": {"address": listen_address, "port_value": listen_port}},
                    "filter_chains": [{"filters": [_http_connection_manager()]}],
                }
            ],
            "clusters": [
                {
                    "name": "engines",
                    "type": "STATIC",
                    "connect_timeout": "5s",
                    "lb_policy": LB_POLICIES[policy],
                    # Default circuit breakers cap a cluster at 1,024 pending/active requests; an open-loop
                    # run past saturation exceeds that, and the engines, not Envoy, must do the queueing.
                    "circuit_breakers": {
                        "thresholds": [
                            {
                                "max_connections": 100000,
                                "max_pending_requests": 100000,
                                "max_requests": 100000,
                            }
                        ]
                    },
                    "load_assignment": {
                        "cluster_name": "engines",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {"address": host, "port_value": port}
                                            }
                                        }
                                    }
                                    for host, port in engines
                                ]
                            }
                        ],
                    },
                }
            ],
        }
    }
    if admin_port is not None:
        config["admin"] = {
            "address": {"socket_address": {"address": listen_address, "port_value": admin_port}}
        }
    return config


def _http_connection_manager() -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
            ".HttpConnectionManager",
            "stat_prefix": "ingress",
            "stream_idle_timeout": "0s",
            "route_config": {
                "name": "all",
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [
                            {"match": {"prefix": "/"}, "route": {"cluster": "engines", "timeout": "0s"}}
                        ],
                    }
                ],
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    },
                }
            ],
        },
    }
