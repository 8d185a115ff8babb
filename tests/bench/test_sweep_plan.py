"""What a real-time sweep runs: each picker once per Envoy mode, the other front doors once, every load in
every round; rounds draw their own arrivals, named by their shape."""

from frontier_bench import report, sweep, workloads


def test_pickers_run_in_every_envoy_mode_and_the_other_front_doors_once() -> None:
    plan = sweep.Plan(
        workload=workloads.no_sharing(prompt_len=100, output_len=10, seed=0),
        policies=("round-robin", "frontier", "sglang-cache-aware", "gie-default"),
        loads=(10.0, 20.0),
        duration_s=5.0,
        envoy_modes=("cheap", "gie"),
        rounds=2,
    )
    assert plan.doors() == [
        ("round-robin", report.NO_PICKER),
        ("frontier", "cheap"),
        ("frontier", "gie"),
        ("sglang-cache-aware", report.NO_PICKER),
        ("gie-default", "cheap"),
        ("gie-default", "gie"),
    ]
    assert plan.runs() == 6 * 2 * 2


def test_arrival_shapes_are_named_for_the_results() -> None:
    assert workloads.arrival_label(1.0) == "poisson"
    assert workloads.arrival_label(3.0) == "gamma-cv3"
    assert workloads.arrival_label(2.5) == "gamma-cv2.5"
