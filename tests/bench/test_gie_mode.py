"""The gie-mode benchmark's setup, with real parts: the local control plane, simulated engines, real Envoy in
GIE's full-duplex mode, the real GIE EPP (built by `make epp`) and frontier-picker. Every picker finds the
engines through the same InferencePool (Pods whose status this module writes) and routes through Envoy."""

from pathlib import Path

import pytest
from kubernetes import client as k8s_client

from frontier_bench import fleet, gie_mode, processes
from frontier_testkit import controlplane

pytestmark = [pytest.mark.cluster, pytest.mark.envoy, pytest.mark.slow]


@pytest.mark.parametrize("policy", [gie_mode.EPP_POLICY, "frontier-2-workers"])
async def test_each_picker_finds_the_pools_engines_and_routes_in_gie_mode(
    policy: str, control_plane: controlplane.ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if policy == gie_mode.EPP_POLICY and not (controlplane.default_cache_dir() / "bin" / "epp").exists():
        pytest.skip("the GIE EPP is not built (make epp)")
    monkeypatch.setattr(gie_mode, "FRONT_DOOR_ADDRESS", "127.4.14.100")
    api = control_plane.api_client()
    cluster = gie_mode.pool_cluster(control_plane, "gie-mode")
    namespace = cluster.namespace
    with processes.Group(tmp_path / "logs") as group:
        running = await fleet.start(
            group,
            engines=2,
            address_prefix="127.4.14",
            time_scale=1.0,
            model="bench-model",
            run_dir=tmp_path,
        )
        gie_mode.publish_engines(k8s_client.CoreV1Api(api), namespace, running.engines)
        door = await gie_mode.start_door(
            policy, group=group, cluster=cluster, running=running, run_dir=tmp_path / "runs"
        )
        before = await fleet.metrics(running)
        await gie_mode.wait_answering(door, model=running.model)
        after = await fleet.metrics(running)
        served = sum(
            after[name].get("vllm:request_success_total", 0.0)
            - before[name].get("vllm:request_success_total", 0.0)
            for name in after
        )
        assert served >= 1  # the answer came from one of the pool's engines
        assert door.picker.process.poll() is None and door.envoy.process.poll() is None
