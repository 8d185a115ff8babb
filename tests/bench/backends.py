"""Tiny streaming OpenAI-style HTTP backends with exact, known timing, for testing the load generator and
the Envoy baselines.

Limits (why this is not the simulator): no batching, no KV cache, no metrics; each request gets
`first_token_s` of delay, then `tokens` SSE chunks `itl_s` apart, then a usage chunk reporting
`cached_tokens` = `cached`, and `[DONE]`. They exist so that what the client measures can be compared with
what the server did; the smoke test of the whole benchmark runs on the real simulator.
"""

import asyncio
import dataclasses
import json

from aiohttp import web


@dataclasses.dataclass
class Backend:
    name: str
    first_token_s: float = 0.0
    itl_s: float = 0.0
    cached: int = 0
    served: int = 0
    runner: web.AppRunner | None = None
    port: int = 0

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.served += 1
        tokens = int(body.get("max_tokens", 1))
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "x-backend": self.name})
        await response.prepare(request)
        await asyncio.sleep(self.first_token_s)
        for i in range(tokens):
            if i:
                await asyncio.sleep(self.itl_s)
            chunk = {"choices": [{"index": 0, "text": f"t{i} "}], "usage": None}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        usage = {
            "prompt_tokens": len(str(body.get("prompt", "")).split()),
            "completion_tokens": tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached},
        }
        await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def start(self, address: str) -> None:
        app = web.Application()
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/health", self.health)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, address, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()
