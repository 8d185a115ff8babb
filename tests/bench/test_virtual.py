"""Virtual-time sweeps: a tiny sweep runs every policy incl. the oracle; a tiny knee search finds a knee."""

from frontier_bench import knee, virtual, workloads

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def setup(question_len: int = 20) -> virtual.Setup:
    source = workloads.shared_prefix(
        num_groups=2,
        num_prompts_per_group=4,
        system_prompt_len=300,
        question_len=question_len,
        output_len=8,
        seed=0,
    )
    return virtual.Setup(engines=2, source=source, duration_s=3.0, warmup_s=1.0, model=MODEL)


def test_tiny_virtual_sweep_reports_every_policy_at_every_load_and_draw():
    rows = virtual.sweep(setup(), policies=virtual.POLICIES, loads=(4.0,), seeds=(0, 1))
    assert [(r.policy, r.seed) for r in rows] == [(p, s) for s in (0, 1) for p in virtual.POLICIES]
    for row in rows:
        s = row.summary
        assert s["failed"] == 0 and s["requests"] > 0
        assert s["output_tokens"] == 8 * s["requests"]
        assert s["ttft_s"]["p50"] > 0 and s["prefix_hit_rate"] > 0
    # the same draw gives every policy the same arrivals; another draw others
    assert len({r.summary["requests"] for r in rows if r.seed == 0}) == 1
    assert virtual.arrival_seed(0, 4.0) != virtual.arrival_seed(1, 4.0)


def test_tiny_knee_search_climbs_until_the_slo_fails():
    ladder = knee.Ladder(start=8.0, factor=4.0, tolerance=1.0, max_loads=4)
    # 4,000-token fresh questions: two engines' prefill saturates at tens of requests/s
    rows, found = virtual.knee_search(setup(question_len=4000), policies=("round-robin",), ladder=ladder)
    [result] = found
    assert result["policy"] == "round-robin" and result["seed"] == 0
    assert [r.qps for r in rows] == list(result["loads"])
    assert result["saturated"] and result["first_failed_qps"] > result["knee_qps"]
