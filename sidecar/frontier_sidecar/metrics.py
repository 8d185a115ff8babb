"""The sidecar's own Prometheus counters, served on a port of their own.

The main port's `/metrics` stays the engine's (the picker scrapes it through the pool's target port), so the
sidecar never shadows it. Each `SidecarMetrics` has its own registry: tests run several sidecars in one
process.
"""

from typing import Final

import prometheus_client
from aiohttp import web

# Why a prefill leg was given up for local prefill (the `reason` label; a fixed set).
FALLBACK_REASONS: Final = ("invalid_body", "connection_error", "timeout", "status", "no_kv_transfer_params")


class SidecarMetrics:
    """Counters of disaggregated requests: decoded after a remote prefill, or fallen back to local prefill."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.remote_prefills = prometheus_client.Counter(
            "frontier_sidecar_remote_prefills",
            "Requests decoded locally after a prefill on the endpoint x-prefiller-host-port named.",
            registry=self.registry,
        )
        self.fallbacks = prometheus_client.Counter(
            "frontier_sidecar_prefill_fallbacks",
            "Requests naming a prefill endpoint that were prefilled locally instead, by reason.",
            ["reason"],
            registry=self.registry,
        )
        for reason in FALLBACK_REASONS:
            self.fallbacks.labels(reason)  # every reason shows from the start, at 0

    def app(self) -> web.Application:
        """An app serving these counters at `/metrics` in the Prometheus text format."""

        async def page(request: web.Request) -> web.Response:
            body = prometheus_client.generate_latest(self.registry)
            return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/metrics", page)
        return app
