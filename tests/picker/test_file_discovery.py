"""File discovery: the endpoints file is parsed strictly, reloaded on change, and a bad edit keeps the
previous endpoint set."""

import asyncio
from pathlib import Path

import pytest

from frontier_picker import datastore, file_discovery


def test_parse_yaml_and_json_forms() -> None:
    yaml_text = """
endpoints:
  - {name: a, address: 10.0.0.1, port: 8000, labels: {inference.frontier.dev/role: decode}}
  - {address: 10.0.0.2, port: 8001}
"""
    found = file_discovery.parse(yaml_text)
    assert [(e.name, e.key, e.role) for e in found] == [
        ("a", "10.0.0.1:8000", "decode"),
        ("10.0.0.2:8001", "10.0.0.2:8001", "both"),
    ]
    json_text = '{"endpoints": [{"name": "b", "address": "10.0.0.3", "port": 9}]}'
    assert [e.key for e in file_discovery.parse(json_text)] == ["10.0.0.3:9"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("endpoints: [{address: 10.0.0.1, port: 0}]", r"endpoints\[0\].port"),
        ("endpoints: [{port: 80}]", r"endpoints\[0\].address"),
        ("endpoints: [{address: a, port: 1}, {address: a, port: 1}]", "listed twice"),
        ("endpoints: {a: 1}", "list under 'endpoints'"),
    ],
)
def test_parse_errors_name_the_field(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        file_discovery.parse(text)


async def test_watch_reloads_on_change_and_survives_a_bad_edit(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yaml"
    path.write_text("endpoints: [{address: 10.0.0.1, port: 8000}]\n")
    store = datastore.Datastore()
    task = asyncio.create_task(file_discovery.watch(path, store, interval_s=0.02))
    try:
        await wait_until(lambda: [s.endpoint.key for s in store.states()] == ["10.0.0.1:8000"])
        path.write_text("endpoints: [{address: 10.0.0.1, port: 8000}, {address: 10.0.0.2, port: 8000}]\n")
        await wait_until(lambda: len(store.states()) == 2)
        path.write_text("endpoints: [{address: 10.0.0.1, port: 8000}, {address: 10.0.0.2, port: no}]\n")
        await asyncio.sleep(0.1)
        assert len(store.states()) == 2
        path.write_text("endpoints: []\n")
        await wait_until(lambda: len(store.states()) == 0)
    finally:
        task.cancel()


async def wait_until(predicate: object, timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)
