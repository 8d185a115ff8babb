"""Helpers for the operator's tests on the local control plane: run `frontier-operator` as a subprocess
against the test kubeconfig, read and write objects as dicts, and wait for conditions without busy-looping."""

import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from kubernetes import dynamic
from kubernetes.dynamic import exceptions

from frontier_api import names

REPO = pathlib.Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "modeltier.yaml"
TIER_API = f"{names.FRONTIER_GROUP}/{names.FRONTIER_VERSION}"
POOL_API = f"{names.GIE_GROUP}/{names.GIE_VERSION}"


class Operator:
    """A `frontier-operator` process watching one namespace; its log is kept for write counting."""

    def __init__(self, *, kubeconfig: pathlib.Path, namespace: str, log_path: pathlib.Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "frontier_operator.main",
                "--kubeconfig",
                str(kubeconfig),
                "--namespace",
                namespace,
                "--engine-image",
                "frontier:test",
                "--engine-command",
                "frontier-sim serve",
                "--resync-seconds",
                "3600",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # SGLang tiers run on the simulator too (the settings have no command-line flags).
            env={
                **os.environ,
                "FRONTIER_SGLANG_IMAGE": "frontier:test",
                "FRONTIER_SGLANG_COMMAND": "frontier-sim sglang",
            },
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def write_lines(self) -> list[str]:
        return [line for line in self.log().splitlines() if " write verb=" in line]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()


def wait_for(what: str, check: Callable[[], Any], *, timeout_s: float = 90.0, interval_s: float = 0.5) -> Any:
    """Polls `check()` until it returns something truthy and returns that; fails naming `what`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last: {last!r}")


class Api:
    """Dict-in, dict-out access to any kind."""

    def __init__(self, api_client: Any) -> None:
        self.dyn = dynamic.DynamicClient(api_client)

    def resource(self, api_version: str, kind: str) -> Any:
        return self.dyn.resources.get(api_version=api_version, kind=kind)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        res = self.resource(obj["apiVersion"], obj["kind"])
        created: dict[str, Any] = self.dyn.create(
            res, body=obj, namespace=obj["metadata"].get("namespace")
        ).to_dict()
        return created

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.dyn.get(
                self.resource(api_version, kind), name=name, namespace=namespace
            ).to_dict()
        except exceptions.NotFoundError:
            return None
        return found

    def list(self, api_version: str, kind: str, namespace: str, **kwargs: Any) -> list[dict[str, Any]]:
        found = self.dyn.get(self.resource(api_version, kind), namespace=namespace, **kwargs)
        return [item.to_dict() for item in found.items]

    def merge_patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> None:
        self.dyn.patch(
            self.resource(api_version, kind),
            body=patch,
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
        )

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.dyn.delete(self.resource(api_version, kind), name=name, namespace=namespace)


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def delete_namespace(api: Api, namespace: str, *, timeout_s: float = 60.0) -> None:
    """Deletes a test namespace and waits until its pods are gone, so the GPUs they held on the shared KWOK
    nodes are free for the next test."""
    try:
        api.delete("v1", "Namespace", "", namespace)
    except exceptions.NotFoundError:
        return
    wait_for(f"pods of {namespace} gone", lambda: not api.list("v1", "Pod", namespace), timeout_s=timeout_s)
