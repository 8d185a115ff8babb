"""The multi-process picker's pure parts: what each worker runs, the CPU limit, the merged metrics page."""

from pathlib import Path

from frontier_picker import metrics_merge, server, workers


def test_each_worker_follows_every_sibling_and_only_worker_0_scrapes(tmp_path: Path) -> None:
    base = server.Options(grpc_port=9002, peer_port=9004, metrics_auth=True, peers=("10.0.0.9:9004",))
    plans = workers.plan(base, 3, tmp_path, pod="pod-a")
    assert [p.worker for p in plans] == [0, 1, 2]
    assert [p.metrics_from_siblings for p in plans] == [False, True, True]
    for plan in plans:
        own = f"unix:{plan.peer_socket}"
        assert own not in plan.siblings
        assert len(plan.siblings) == 2
        assert {own, *plan.siblings} == {f"unix:{tmp_path}/worker-{i}.sock" for i in range(3)}
        # Shared by the pod: its ports, its pod id and the other replicas it follows.
        assert (plan.grpc_port, plan.peer_port, plan.pod, plan.peers) == (
            9002,
            9004,
            "pod-a",
            ("10.0.0.9:9004",),
        )
        # A worker's own page is loopback-only and unguarded; the supervisor guards the pod's page.
        assert (plan.metrics_address, plan.metrics_port, plan.metrics_auth) == ("127.0.0.1", 0, False)


def test_the_cpu_limit_comes_from_the_cgroup(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert workers.cpu_limit(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert workers.cpu_limit(tmp_path) == 1  # half a core still runs one worker
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert workers.cpu_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert workers.cpu_limit(v1) == 4
    assert workers.cpu_limit(tmp_path / "missing") is None


PAGE = """# HELP frontier_picker_requests_total Requests
# TYPE frontier_picker_requests_total counter
frontier_picker_requests_total{code="200"} {requests}
frontier_picker_requests_created{code="200"} {created}
# HELP frontier_picker_in_flight_requests In flight
# TYPE frontier_picker_in_flight_requests gauge
frontier_picker_in_flight_requests {in_flight}
# HELP frontier_picker_ready_endpoints Endpoints
# TYPE frontier_picker_ready_endpoints gauge
frontier_picker_ready_endpoints 3.0
# HELP frontier_picker_scheduling_duration_seconds Scheduling
# TYPE frontier_picker_scheduling_duration_seconds histogram
frontier_picker_scheduling_duration_seconds_bucket{le="0.001"} {fast}
frontier_picker_scheduling_duration_seconds_bucket{le="+Inf"} {requests}
frontier_picker_scheduling_duration_seconds_count {requests}
frontier_picker_scheduling_duration_seconds_sum 0.5
"""


def page(**values: float) -> str:
    text = PAGE
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def test_the_pod_page_adds_what_workers_count_and_takes_shared_gauges_once() -> None:
    merged = {
        sample.name + str(sorted(sample.labels.items())): sample.value
        for family in metrics_merge.merge(
            [
                page(requests=10, created=200.0, in_flight=2, fast=7),
                page(requests=5, created=100.0, in_flight=1, fast=5),
            ]
        )
        for sample in family.samples
    }
    assert merged["frontier_picker_requests_total[('code', '200')]"] == 15
    assert merged["frontier_picker_requests_created[('code', '200')]"] == 100.0  # the earliest start
    assert merged["frontier_picker_in_flight_requests[]"] == 3  # each worker's own requests
    assert merged["frontier_picker_ready_endpoints[]"] == 3  # every worker sees the same pool
    assert merged["frontier_picker_scheduling_duration_seconds_bucket[('le', '0.001')]"] == 12
    assert merged["frontier_picker_scheduling_duration_seconds_count[]"] == 15
    assert merged["frontier_picker_scheduling_duration_seconds_sum[]"] == 1.0
