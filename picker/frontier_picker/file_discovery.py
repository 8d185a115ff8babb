"""Endpoint discovery from a file, for running the picker without Kubernetes (demo, benchmarks, tests).

The file is YAML or JSON (YAML is a superset): `endpoints: [{name, address, port, labels, adapters}]`
(`adapters`: the LoRA adapter names the endpoint serves, optional). It is re-read
whenever its modification time or size changes; a file that does not parse or names an invalid endpoint is
reported and the previous endpoint set stays, so a half-written edit never empties the pool.
"""

import asyncio
import logging
from pathlib import Path
from typing import Any

import yaml

from frontier_picker import datastore, endpoints

log = logging.getLogger(__name__)


def parse(text: str, *, source: str = "endpoints file") -> list[endpoints.Endpoint]:
    """The endpoints a file's text describes; `ValueError` naming the field and value otherwise."""
    document = yaml.safe_load(text)
    if document is None:
        # The first state of a non-atomic rewrite: never read as "no endpoints".
        raise ValueError(f"{source}: empty; an empty pool is written `endpoints: []`")
    if not isinstance(document, dict) or not isinstance(document.get("endpoints"), list):
        raise ValueError(f"{source}: expected a mapping with a list under 'endpoints'")
    found: list[endpoints.Endpoint] = []
    for index, entry in enumerate(document.get("endpoints") or []):
        found.append(_endpoint(entry, where=f"{source}: endpoints[{index}]"))
    keys = [endpoint.key for endpoint in found]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ValueError(f"{source}: endpoints listed twice: {', '.join(duplicates)}")
    return found


def _endpoint(entry: Any, *, where: str) -> endpoints.Endpoint:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping with name, address, port, labels")
    address = entry.get("address")
    if not isinstance(address, str) or not address:
        raise ValueError(f"{where}.address: expected an IP address string, got {address!r}")
    port = entry.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(f"{where}.port: expected an integer 1..65535, got {port!r}")
    labels = entry.get("labels") or {}
    if not isinstance(labels, dict):
        raise ValueError(f"{where}.labels: expected a mapping of strings, got {labels!r}")
    adapters = entry.get("adapters") or []
    if not isinstance(adapters, list) or not all(isinstance(a, str) and a for a in adapters):
        raise ValueError(f"{where}.adapters: expected a list of LoRA adapter names, got {adapters!r}")
    name = entry.get("name") or f"{address}:{port}"
    return endpoints.Endpoint(
        name=str(name),
        address=address,
        port=port,
        labels={str(k): str(v) for k, v in labels.items()},
        adapters=frozenset(adapters),
    )


def load(path: Path, store: datastore.Datastore) -> bool:
    """Read `path` into `store`; False (and a log line) when the file is missing or invalid."""
    try:
        found = parse(path.read_text(), source=str(path))
    except (OSError, ValueError, yaml.YAMLError) as error:
        log.warning("event=endpoints_file_invalid path=%s error=%r", path, str(error))
        return False
    store.replace(found)
    return True


async def watch(path: Path, store: datastore.Datastore, *, interval_s: float = 1.0) -> None:
    """Load `path` now and again whenever it changes, until cancelled."""
    seen: tuple[int, int] | None = None
    warned = False
    while True:
        try:
            stat = path.stat()
            signature: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            signature = None
        if signature is None:
            if not warned:
                log.warning("event=endpoints_file_missing path=%s", path)
                warned = True
        elif signature != seen:
            load(path, store)  # an invalid file is retried on its next change
            seen = signature
            warned = False
        await asyncio.sleep(interval_s)
