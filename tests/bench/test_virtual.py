"""Virtual-time sweeps: lazy workloads keep their shape; a tiny sweep runs every policy incl. the oracle."""

from frontier_bench import virtual, workloads


def test_lazy_shared_prefix_is_deterministic_and_shares_exactly_the_group_prefix():
    a = virtual.LazySharedPrefix(
        num_groups=3, num_prompts_per_group=2, system_prompt_len=30, question_len=5, output_len=4, seed=7
    )
    b = virtual.LazySharedPrefix(
        num_groups=3, num_prompts_per_group=2, system_prompt_len=30, question_len=5, output_len=4, seed=7
    )
    prompts = [a.prompt_for(i) for i in range(6)]
    assert prompts == [b.prompt_for(i) for i in range(6)]
    assert a.prompt_for(6) == prompts[0]  # cycles
    assert sorted(p.group for p in prompts) == ["g0", "g0", "g1", "g1", "g2", "g2"]
    for p in prompts:
        assert len(p.prompt.split()) == 35 and p.max_tokens == 4
        mates = [q for q in prompts if q.group == p.group]
        assert mates[0].prompt.split()[:30] == mates[1].prompt.split()[:30]
        assert mates[0].prompt != mates[1].prompt


def test_llmd_study_scales_groups_with_engines():
    assert virtual.llmd_study(engines=1024).num_groups == workloads.llmd_groups(1024) == 19200


def test_tiny_virtual_sweep_reports_every_policy_at_every_load():
    source = virtual.LazySharedPrefix(
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
