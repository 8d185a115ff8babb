"""`frontier-sidecar`: the decode pod's routing sidecar, on the InferencePool's target port.

    frontier-sidecar --port 8000 --engine-url http://127.0.0.1:8200 [--prefill-timeout 60]
                     [--metrics-port 9091] [--address 0.0.0.0] [--log-level info]

SIGINT/SIGTERM stop it: open streams get a grace period to finish.
"""

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from frontier_sidecar import logs, proxy


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: must be a positive number of seconds")
    return value


def _http_url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{text}: must be an http:// or https:// URL")
    return text


def parser() -> argparse.ArgumentParser:
    """The command line."""
    defaults = proxy.Settings()
    p = argparse.ArgumentParser(
        prog="frontier-sidecar",
        description="Prefill/decode routing sidecar in front of a vLLM (or frontier-sim) decode engine.",
        allow_abbrev=False,
    )
    p.add_argument("--port", type=int, default=defaults.port, help="listen port (the pool's target port)")
    p.add_argument("--address", default=defaults.address, help="listen address")
    p.add_argument("--engine-url", type=_http_url, default=defaults.engine_url, help="the local engine")
    p.add_argument(
        "--prefill-timeout",
        type=_positive,
        default=defaults.prefill_timeout_s,
        help="seconds the prefill leg may take before the request is prefilled locally",
    )
    p.add_argument(
        "--metrics-port", type=int, default=None, help="serve the sidecar's own counters here (default: off)"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def settings_from(args: argparse.Namespace) -> proxy.Settings:
    """The sidecar settings the parsed flags describe."""
    return proxy.Settings(
        engine_url=args.engine_url,
        address=args.address,
        port=args.port,
        metrics_port=args.metrics_port,
        prefill_timeout_s=args.prefill_timeout,
    )


async def _run(config: proxy.Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with proxy.serving(config):
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags and serve until SIGINT/SIGTERM; returns the exit status."""
    args = parser().parse_args(argv)
    logs.configure(args.log_level)
    asyncio.run(_run(settings_from(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
