"""A control plane never outlives the Python process that started it, even one killed without any chance to
clean up (SIGKILL), so a crashed or interrupted test run leaves no etcd or API server behind."""

import os
import pathlib
import select
import signal
import subprocess
import sys
import time

import pytest
from kubernetes import client as k8s_client

from frontier_testkit import controlplane

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def children_of(parent: int) -> set[int]:
    pids = set()
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            pids.add(int(stat.parent.name))
    return pids


def is_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def read_line(stream, *, timeout_s: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout_s)
    assert ready, f"no output within {timeout_s}s"
    return stream.readline().decode().strip()


def test_components_die_with_the_process_that_started_them(
    control_plane: controlplane.ControlPlane, tmp_path: pathlib.Path
):
    cache = control_plane.assets.kwok_stages.parents[1]
    argv = [sys.executable, "-m", "frontier_testkit.controlplane", "up"]
    argv += ["--dir", str(tmp_path / "cp"), "--cache", str(cache)]
    with (tmp_path / "up.log").open("wb") as log:
        up = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log)
    try:
        assert up.stdout is not None
        kubeconfig = read_line(up.stdout, timeout_s=180)
        assert pathlib.Path(kubeconfig).is_file(), (tmp_path / "up.log").read_text()
        components = children_of(up.pid)
        assert len(components) == 5  # etcd, kube-apiserver, controller-manager, scheduler, kwok

        os.kill(up.pid, signal.SIGKILL)
        up.wait()

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(is_running(pid) for pid in components):
            time.sleep(0.1)
        assert not [pid for pid in components if is_running(pid)]
    finally:
        up.kill()
        up.wait()


def test_starting_twice_in_one_folder_replaces_the_running_control_plane(tmp_path):
    assets = controlplane.Assets.discover()
    pools = [pool for pool in controlplane.DEFAULT_NODE_POOLS if pool.accelerator is None]
    first = controlplane.ControlPlane(tmp_path, assets=assets, node_pools=pools)
    first.start()
    try:
        old = [component.process.pid for component in first.components]
        first_core = first.api_client()
        k8s_client.CoreV1Api(first_core).create_namespace({"metadata": {"name": "left-over"}})
        with controlplane.ControlPlane(tmp_path, assets=assets, node_pools=pools) as second:
            assert not any(is_running(pid) for pid in old)  # the first one was stopped, not doubled
            core = k8s_client.CoreV1Api(second.api_client())
            assert [node.metadata.name for node in core.list_node().items]  # node pools created again: no 409
            names = {ns.metadata.name for ns in core.list_namespace().items}
            assert "left-over" not in names  # a fresh cluster, not the old etcd data
    finally:
        first.stop()
