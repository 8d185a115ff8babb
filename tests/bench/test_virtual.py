"""Virtual-time sweeps: a tiny sweep runs every policy incl. the oracle."""

from frontier_bench import virtual, workloads


def test_tiny_virtual_sweep_reports_every_policy_at_every_load():
    source = workloads.shared_prefix(
        num_groups=2, num_prompts_per_group=4, system_prompt_len=300, question_len=20, output_len=8, seed=0
    )
    rows = virtual.sweep(
        engines=2,
        source=source,
        policies=virtual.POLICIES,
        loads=(4.0,),
        duration_s=3.0,
        warmup_s=1.0,
        model="meta-llama/Llama-3.1-8B-Instruct",
    )
    assert [r.policy for r in rows] == list(virtual.POLICIES)
    for row in rows:
        s = row.summary
        assert s["failed"] == 0 and s["requests"] > 0
        assert s["output_tokens"] == 8 * s["requests"]
        assert s["ttft_s"]["p50"] > 0 and s["prefix_hit_rate"] > 0
