"""Many simulated vLLM servers in one process: one asyncio loop, one aiohttp site per engine.

Sixteen engines fit on two CPU cores this way (one interpreter instead of sixteen). Each engine binds its own
loopback address (127.x.y.z) and port, with its own role (`both`, `prefill`, `decode`), model, tier and
vLLM flags, and the fleet writes an endpoints file the picker's no-Kubernetes discovery reads:

    endpoints:
    - {name: sim-0, address: 127.3.0.1, port: 8000, labels: {inference.frontier.dev/role: both,
       inference.frontier.dev/model: M, inference.frontier.dev/tier: T,
       inference.networking.k8s.io/engine-type: vllm}}

A fleet comes from a YAML file (`frontier-sim fleet --config fleet.yaml`):

    time_scale: 10            # wall seconds per model second, for every engine
    base_address: 127.3.0.1   # engines get consecutive addresses from here
    port: 8000                # the same port on every address (0: the OS picks one per engine)
    endpoints_file: out/endpoints.yaml
    engines:
    - name: small             # engines small-0, small-1, ...
      replicas: 4
      model: meta-llama/Llama-3.2-1B-Instruct
      tier: small
      role: both
      args: ["--max-num-seqs", "128", "--enable-prefix-caching"]

or from flags (`--engines N --model M --base-address A ...` plus any `vllm serve` / `--sim-*` flag, applied to
every engine). In-process: `async with fleet.run(spec) as running:` yields the started engines.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import ipaddress
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import yaml
import zmq

from frontier_api import names
from frontier_sim import flags, server, settings

log = logging.getLogger(__name__)

ROLES = (names.ROLE_BOTH, names.ROLE_PREFILL, names.ROLE_DECODE)


@dataclasses.dataclass(slots=True, kw_only=True)
class EngineSpec:
    """One engine of a fleet: its name, role, tier and server settings (address and port included)."""

    name: str
    role: str
    tier: str
    config: settings.Settings

    @property
    def labels(self) -> dict[str, str]:
        return {
            names.ROLE_LABEL: self.role,
            names.MODEL_LABEL: self.config.served_model_name,
            names.TIER_LABEL: self.tier,
            names.ENGINE_TYPE_LABEL: names.ENGINE_VLLM,
        }


@dataclasses.dataclass(slots=True, kw_only=True)
class FleetSpec:
    engines: list[EngineSpec]
    endpoints_file: Path | None = None


@dataclasses.dataclass(slots=True, kw_only=True)
class RunningEngine:
    name: str
    role: str
    tier: str
    labels: dict[str, str]
    server: server.Server

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"


@dataclasses.dataclass(slots=True, kw_only=True)
class RunningFleet:
    engines: list[RunningEngine]

    def endpoints_document(self) -> dict[str, Any]:
        return {
            "endpoints": [
                {"name": e.name, "address": e.address, "port": e.port, "labels": e.labels}
                for e in self.engines
            ]
        }


def _engine_parser(prog: str) -> argparse.ArgumentParser:
    parser = flags._Parser(prog=prog, allow_abbrev=False)
    flags.add_engine_flags(parser, model_required=False)
    return parser


def _settings_from_args(args: Sequence[str], *, model: str | None, prog: str) -> settings.Settings:
    parsed, unknown = _engine_parser(prog).parse_known_args(list(args))
    if unknown:
        raise flags.FlagError(f"{prog}: unknown flag(s) {' '.join(unknown)}")
    return flags.settings_from(parsed, model=model)


def _addresses(base: str, count: int) -> list[str]:
    start = ipaddress.IPv4Address(base)
    return [str(start + i) for i in range(count)]


def spec_from_yaml(path: Path) -> FleetSpec:
    """A fleet from its YAML description (see module doc); FlagError names the bad field."""
    doc = yaml.safe_load(path.read_text()) or {}
    if not isinstance(doc, dict) or not isinstance(doc.get("engines"), list):
        raise flags.FlagError(f"{path}: expected a mapping with an `engines` list")
    time_scale = float(doc.get("time_scale", 1.0))
    port = int(doc.get("port", 8000))
    groups: list[tuple[str, dict[str, Any]]] = []
    for i, group in enumerate(doc["engines"]):
        if not isinstance(group, dict) or "model" not in group:
            raise flags.FlagError(f"{path}: engines[{i}] needs at least `model`")
        role = group.get("role", names.ROLE_BOTH)
        if role not in ROLES:
            raise flags.FlagError(f"{path}: engines[{i}].role={role!r}; allowed: {', '.join(ROLES)}")
        base = group.get("name", f"sim{i}")
        replicas = int(group.get("replicas", 1))
        for r in range(replicas):
            groups.append((f"{base}-{r}" if replicas > 1 or "name" not in group else base, group))
    addresses = _addresses(str(doc.get("base_address", "127.0.0.1")), len(groups))
    engines = []
    for (name, group), address in zip(groups, addresses, strict=True):
        args = [str(a) for a in group.get("args", [])]
        config = _settings_from_args(args, model=str(group["model"]), prog=f"{path}: {name}")
        if "served_model_name" in group:
            config.served_model_names = [str(group["served_model_name"])]
        config.host = str(group.get("address", address))
        config.port = int(group.get("port", port))
        config.time_scale = float(group.get("time_scale", time_scale))
        config.engine_id = name
        tier = str(group.get("tier", config.served_model_name))
        engines.append(
            EngineSpec(name=name, role=group.get("role", names.ROLE_BOTH), tier=tier, config=config)
        )
    endpoints = doc.get("endpoints_file")
    return FleetSpec(engines=engines, endpoints_file=Path(endpoints) if endpoints else None)


def fleet_parser() -> argparse.ArgumentParser:
    parser = flags._Parser(prog="frontier-sim fleet", allow_abbrev=False)
    parser.add_argument(
        "--config", type=Path, help="fleet YAML (see the module doc); other flags are then ignored"
    )
    parser.add_argument("--engines", type=int, default=1)
    parser.add_argument("--model", help="the model every engine serves (vLLM's positional MODEL)")
    parser.add_argument(
        "--prefill-engines", type=int, default=0, help="the first K engines are prefill, rest decode"
    )
    parser.add_argument("--base-address", default=None, help="first engine's address, e.g. 127.3.0.1")
    parser.add_argument("--address-prefix", default=None, help="engines get PREFIX.1, PREFIX.2, ...")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--time-scale", "--sim-time-scale", dest="time_scale", type=float, default=1.0)
    parser.add_argument("--tier", default=None)
    parser.add_argument("--name-prefix", default="sim")
    parser.add_argument("--endpoints-file", type=Path)
    return parser


def parse_args(argv: Sequence[str]) -> FleetSpec:
    """`frontier-sim fleet` arguments to a FleetSpec (engine flags are the `serve` ones, for every engine)."""
    parser = fleet_parser()
    args, rest = parser.parse_known_args(list(argv))
    if args.config is not None:
        spec = spec_from_yaml(args.config)
        if args.endpoints_file is not None:
            spec.endpoints_file = args.endpoints_file
        return spec
    if args.engines < 1 or args.prefill_engines < 0 or 0 < args.engines <= args.prefill_engines:
        raise flags.FlagError(
            f"--engines={args.engines} --prefill-engines={args.prefill_engines}: invalid counts"
        )
    base = f"{args.address_prefix}.1" if args.address_prefix else args.base_address or "127.0.0.1"
    template = _settings_from_args(rest, model=args.model, prog="frontier-sim fleet")
    engines = []
    for i, address in enumerate(_addresses(base, args.engines)):
        config = dataclasses.replace(template, served_model_names=list(template.served_model_names))
        config.host = address
        config.port = args.port
        config.time_scale = args.time_scale
        name = f"{args.name_prefix}-{i}"
        config.engine_id = name
        role = names.ROLE_BOTH
        if args.prefill_engines:
            role = names.ROLE_PREFILL if i < args.prefill_engines else names.ROLE_DECODE
        engines.append(
            EngineSpec(name=name, role=role, tier=args.tier or config.served_model_name, config=config)
        )
    return FleetSpec(engines=engines, endpoints_file=args.endpoints_file)


def write_endpoints(path: Path, running: RunningFleet) -> None:
    """Write the endpoints file atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(running.endpoints_document(), sort_keys=False))
    tmp.replace(path)


@contextlib.asynccontextmanager
async def run(spec: FleetSpec, *, freeze_gc: bool = True) -> AsyncIterator[RunningFleet]:
    """Start every engine of `spec` in this event loop; stop them all on exit.

    `freeze_gc` moves everything allocated so far (above all the engines' block tables, large containers
    that live as long as the fleet) out of the cyclic garbage collector's reach: without it a full
    collection walks every block of every engine and stalls the event loop for tens of milliseconds.
    """
    context = zmq.Context()
    running = RunningFleet(engines=[])
    async with contextlib.AsyncExitStack() as stack:
        for engine_spec in spec.engines:
            started = await stack.enter_async_context(server.serving(engine_spec.config, zmq_context=context))
            running.engines.append(
                RunningEngine(
                    name=engine_spec.name,
                    role=engine_spec.role,
                    tier=engine_spec.tier,
                    labels=engine_spec.labels,
                    server=started,
                )
            )
        if freeze_gc:
            gc.collect()
            gc.freeze()
        if spec.endpoints_file is not None:
            write_endpoints(spec.endpoints_file, running)
        log.info(
            "event=fleet_started engines=%d endpoints_file=%s", len(running.engines), spec.endpoints_file
        )
        try:
            yield running
        finally:
            log.info("event=fleet_stopping engines=%d", len(running.engines))
    context.term()


async def serve_forever(spec: FleetSpec, stop: asyncio.Event) -> None:
    async with run(spec):
        await stop.wait()
