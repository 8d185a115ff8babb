"""`frontier-sim`: run simulated vLLM (or SGLang) servers.

    frontier-sim serve MODEL [vllm serve flags] [--sim-* flags]   one server, like `vllm serve`
    frontier-sim sglang --model-path MODEL [flags] [--sim-* flags]  one server, like SGLang's launch_server
    frontier-sim fleet --config fleet.yaml                        many servers in one process
    frontier-sim fleet --engines 16 --model M --base-address 127.3.0.1 --port 8000 --time-scale 10 \\
        --endpoints-file out/endpoints.yaml [vllm serve flags for every engine]

Unknown flags are an error (exit status 2) naming the flag. SIGINT/SIGTERM stop cleanly.
"""

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from frontier_sim import flags, fleet, server, settings

USAGE = __doc__ or ""


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _serve(config: settings.Settings) -> None:
    stop = _stop_event()
    async with server.serving(config):
        await stop.wait()


async def _fleet(spec: fleet.FleetSpec) -> None:
    await fleet.serve_forever(spec, _stop_event())


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    try:
        if command == "serve":
            if "-h" in rest or "--help" in rest:
                flags.serve_parser().print_help()
                return 0
            asyncio.run(_serve(flags.parse_serve(rest)))
        elif command == "sglang":
            if "-h" in rest or "--help" in rest:
                flags.sglang_parser().print_help()
                return 0
            asyncio.run(_serve(flags.parse_sglang(rest)))
        elif command == "fleet":
            if "-h" in rest or "--help" in rest:
                fleet.fleet_parser().print_help()
                return 0
            asyncio.run(_fleet(fleet.parse_args(rest)))
        else:
            print(
                f"frontier-sim: unknown command {command!r}; expected serve, sglang or fleet\n\n{USAGE}",
                file=sys.stderr,
            )
            return 2
    except (flags.FlagError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
