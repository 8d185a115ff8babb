"""Smoke run of the whole benchmark: a real simulated fleet, real Envoy, the real picker, a few seconds.

It checks the pipeline, not the policies' quality (the sweeps do that): every request of every run
succeeds through its front door, usage and cache hits are read back, the report files are written, and no
process is left behind.
"""

import json
from pathlib import Path

import pytest

from frontier_bench import harness, stats, sweep, workloads

pytestmark = [pytest.mark.envoy, pytest.mark.slow]


async def test_a_tiny_sweep_runs_end_to_end_and_stops_everything(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "FLEET_PREFIX", "127.4.10")
    monkeypatch.setattr(harness, "FRONT_DOOR_ADDRESS", "127.4.0.1")
    workload = workloads.shared_prefix(
        num_groups=2, num_prompts_per_group=3, system_prompt_len=400, question_len=40, output_len=8, seed=0
    )
    plan = sweep.Plan(
        workload=workload,
        policies=("round-robin", "frontier"),
        loads=(6.0,),
        duration_s=2.0,
        drain_timeout_s=30.0,
        slo=stats.Slo(),
    )
    rows = await harness.run_sweeps(
        [plan],
        engines=2,
        time_scale=1.0,
        model="meta-llama/Llama-3.1-8B-Instruct",
        out=tmp_path,
        name="smoke",
        command="pytest tests/bench/test_smoke.py",
        title="smoke",
        run_root=tmp_path / "runs",
    )
    assert [r.policy for r in rows] == ["round-robin", "frontier"]
    for row in rows:
        s = row.summary
        assert s["requests"] > 0 and s["failed"] == 0, s
        assert s["output_tokens"] == 8 * s["requests"]
        assert s["ttft_s"]["p50"] is not None and s["ttft_s"]["p50"] > 0
        assert s["prefix_hit_rate"] is not None and s["prefix_hit_rate"] > 0  # groups repeat: some cache hits
        assert s["imbalance"] is not None
    data = json.loads((tmp_path / "smoke.json").read_text())
    assert data["command"] == "pytest tests/bench/test_smoke.py" and len(data["runs"]) == 2
    assert (tmp_path / "smoke.png").exists() and (tmp_path / "smoke.md").exists()
    assert not listeners_on(["127.4.0.1", "127.4.10.1", "127.4.10.2"])  # fleet, Envoy, picker all stopped


def listeners_on(addresses: list[str]) -> list[str]:
    """Listening TCP sockets on `addresses`, from /proc/net/tcp (little-endian hex address:port)."""
    wanted = {"".join(f"{int(octet):02X}" for octet in reversed(a.split("."))): a for a in addresses}
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        host, port = local.split(":")
        if state == "0A" and host in wanted:
            found.append(f"{wanted[host]}:{int(port, 16)}")
    return found
