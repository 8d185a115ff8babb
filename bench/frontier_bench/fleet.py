"""The simulated fleet a benchmark routes over: started with `frontier-sim fleet`, read back from its
endpoints file, observed through each engine's vLLM metrics, and emptied between runs.

The engines run `time_scale` times slower than the model clock they report in, so that a 2-core machine
is not itself the bottleneck; the benchmark sends its schedule stretched by the same factor and reports model
time. Per-engine work (generated tokens) comes from the engines' own `vllm:generation_tokens_total`
counters, read before and after a run, so load imbalance is measured the same way for every policy.
"""

import asyncio
import dataclasses
import re
import sys
from pathlib import Path

import aiohttp
import yaml

from frontier_bench import processes

_SAMPLE = re.compile(rb"^(vllm:[a-z_]+)(?:\{[^}]*\})? ([0-9.eE+-]+)$", re.MULTILINE)


@dataclasses.dataclass(slots=True, kw_only=True)
class Engine:
    name: str
    address: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"


@dataclasses.dataclass(slots=True, kw_only=True)
class Fleet:
    """A running fleet: its engines, the file that lists them (picker discovery), its model and clock."""

    engines: list[Engine]
    endpoints_file: Path
    model: str
    time_scale: float
    child: processes.Child

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(e.address, e.port) for e in self.engines]


def read_endpoints(path: Path) -> list[Engine]:
    """Engines from an endpoints file `endpoints: [{name, address, port, labels}]`."""
    data = yaml.safe_load(path.read_text()) or {}
    return [
        Engine(name=e["name"], address=e["address"], port=int(e["port"])) for e in data.get("endpoints", [])
    ]


async def start(
    group: processes.Group,
    *,
    engines: int,
    address_prefix: str,
    time_scale: float,
    model: str,
    run_dir: Path,
    extra_args: tuple[str, ...] = (),
    ready_timeout_s: float = 60.0,
) -> Fleet:
    """Start `engines` simulated engines on `address_prefix`.1, .2, ... and wait until all are healthy."""
    run_dir.mkdir(parents=True, exist_ok=True)
    endpoints_file = run_dir / "endpoints.yaml"
    endpoints_file.unlink(missing_ok=True)
    child = group.start(
        "fleet",
        [
            sys.executable,
            "-m",
            "frontier_sim.main",
            "fleet",
            "--engines",
            str(engines),
            "--address-prefix",
            address_prefix,
            "--time-scale",
            str(time_scale),
            "--served-model-name",
            model,
            "--endpoints-file",
            str(endpoints_file),
            *extra_args,
        ],
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ready_timeout_s
    while not endpoints_file.exists() or len(read_endpoints(endpoints_file)) < engines:
        child.check_alive()
        if loop.time() > deadline:
            raise TimeoutError(
                f"fleet did not write {endpoints_file} in {ready_timeout_s:.0f}s:\n{child.tail()}"
            )
        await asyncio.sleep(0.1)
    found = read_endpoints(endpoints_file)
    for engine in found:
        await processes.wait_http(f"{engine.url}/health", child=child, timeout_s=ready_timeout_s)
    return Fleet(
        engines=found, endpoints_file=endpoints_file, model=model, time_scale=time_scale, child=child
    )


def parse_metrics(text: bytes) -> dict[str, float]:
    """The unlabelled-or-single-series vLLM samples of a metrics page, summed per family name."""
    values: dict[str, float] = {}
    for name, value in _SAMPLE.findall(text):
        key = name.decode()
        values[key] = values.get(key, 0.0) + float(value)
    return values


async def metrics(fleet: Fleet) -> dict[str, dict[str, float]]:
    """Each engine's vLLM metrics, by engine name."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10.0)) as session:

        async def one(engine: Engine) -> tuple[str, dict[str, float]]:
            async with session.get(f"{engine.url}/metrics") as response:
                return engine.name, parse_metrics(await response.read())

        return dict(await asyncio.gather(*(one(e) for e in fleet.engines)))


def generated_tokens(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, float]:
    """Tokens each engine generated between two metric readings."""
    key = "vllm:generation_tokens_total"
    return {name: after[name].get(key, 0.0) - before.get(name, {}).get(key, 0.0) for name in after}


async def wait_idle(fleet: Fleet, *, timeout_s: float = 120.0) -> None:
    """Wait until no engine has running or waiting requests (e.g. after a run's cancelled stragglers)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        readings = await metrics(fleet)
        busy = sum(
            m.get("vllm:num_requests_running", 0) + m.get("vllm:num_requests_waiting", 0)
            for m in readings.values()
        )
        if busy == 0:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"fleet still busy after {timeout_s:.0f}s")


async def reset_prefix_caches(fleet: Fleet) -> bool:
    """Empty every engine's prefix cache (vLLM's POST /reset_prefix_cache); False if an engine refused."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10.0)) as session:

        async def one(engine: Engine) -> bool:
            try:
                async with session.post(f"{engine.url}/reset_prefix_cache") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        return all(await asyncio.gather(*(one(e) for e in fleet.engines)))
