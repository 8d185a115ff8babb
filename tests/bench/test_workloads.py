"""Workload generators: reproducible by seed, shaped as their parameters say."""

import itertools

import numpy as np
import pytest

from frontier_bench import workloads


def tokens(text: str) -> int:
    return len(text.split())


def test_shared_prefix_is_identical_for_the_same_seed_and_differs_for_another():
    a = workloads.shared_prefix(
        num_groups=3, num_prompts_per_group=4, system_prompt_len=50, question_len=10, output_len=7, seed=1
    )
    b = workloads.shared_prefix(
        num_groups=3, num_prompts_per_group=4, system_prompt_len=50, question_len=10, output_len=7, seed=1
    )
    c = workloads.shared_prefix(
        num_groups=3, num_prompts_per_group=4, system_prompt_len=50, question_len=10, output_len=7, seed=2
    )
    assert a.prompts == b.prompts
    assert [p.prompt for p in a.prompts] != [p.prompt for p in c.prompts]


def test_shared_prefix_prompts_share_exactly_their_groups_system_prompt():
    w = workloads.shared_prefix(
        num_groups=3, num_prompts_per_group=4, system_prompt_len=50, question_len=10, output_len=7, seed=0
    )
    assert len(w.prompts) == 12
    by_group: dict[str, list[str]] = {}
    for p in w.prompts:
        assert tokens(p.prompt) == 60
        assert len(p.prompt) == 60 * 4 - 1  # four characters per token
        assert p.max_tokens == 7
        by_group.setdefault(p.group, []).append(p.prompt)
    assert sorted(by_group) == ["g0", "g1", "g2"]
    systems = {g: {" ".join(t.split()[:50]) for t in texts} for g, texts in by_group.items()}
    assert all(len(s) == 1 for s in systems.values())
    assert len({next(iter(s)) for s in systems.values()}) == 3
    # questions differ inside a group
    assert all(len(set(texts)) == 4 for texts in by_group.values())


def test_shared_prefix_order_is_shuffled_and_cycled():
    w = workloads.shared_prefix(
        num_groups=5, num_prompts_per_group=5, system_prompt_len=5, question_len=5, output_len=1, seed=3
    )
    groups = [p.group for p in w.prompts]
    assert groups != sorted(groups)
    assert w.prompt_for(0) == w.prompt_for(25) == w.prompts[0]


def test_llmd_study_keeps_the_shape_and_scales_groups_with_the_fleet():
    w = workloads.llmd_study(engines=2, seed=0)
    assert (
        w.params["num_groups"]
        == workloads.llmd_groups(2)
        == round(150 * 2 / workloads.LLMD_REFERENCE_ENGINES)
    )
    assert w.params["num_prompts_per_group"] == 5
    assert tokens(w.prompts[0].prompt) == 7200
    assert w.prompts[0].max_tokens == 1000
    assert workloads.llmd_groups(workloads.LLMD_REFERENCE_ENGINES) == 150


def test_multi_turn_chat_resends_the_conversation_in_order():
    w = workloads.multi_turn_chat(
        num_sessions=4, turns=3, system_prompt_len=20, user_len=5, output_len=6, seed=0
    )
    assert len(w.prompts) == 12
    seen: dict[str, list[workloads.Prompt]] = {}
    for p in w.prompts:
        assert p.api == "chat"
        seen.setdefault(p.group, []).append(p)
    for turns in seen.values():
        assert [len(p.messages) for p in turns] == [2, 4, 6]  # system + (user, assistant) pairs
        for earlier, later in itertools.pairwise(turns):
            assert later.messages[: len(earlier.messages)] == earlier.messages
        assert [role for role, _ in turns[-1].messages] == [
            "system",
            "user",
            "assistant",
            "user",
            "assistant",
            "user",
        ]
    again = workloads.multi_turn_chat(
        num_sessions=4, turns=3, system_prompt_len=20, user_len=5, output_len=6, seed=0
    )
    assert again.prompts == w.prompts


def test_long_documents_prefers_the_first_documents():
    w = workloads.long_documents(
        num_documents=5, document_len=30, num_questions=400, question_len=3, output_len=2, zipf_s=1.0, seed=0
    )
    counts = {g: sum(p.group == g for p in w.prompts) for g in ("d0", "d4")}
    assert counts["d0"] > 2 * counts["d4"] > 0
    assert all(tokens(p.prompt) == 33 for p in w.prompts)


def test_no_sharing_prompts_are_unique_from_the_first_block():
    w = workloads.no_sharing(num_prompts=50, prompt_len=40, output_len=3, seed=0)
    assert len({p.prompt[:64] for p in w.prompts}) == 50


def test_mixed_lengths_are_unique_log_normal_and_clipped():
    w = workloads.mixed_lengths(num_prompts=2000, median_prompt_len=300, median_output_len=50, seed=1)
    prompt_lens = np.array([tokens(p.prompt) for p in w.prompts])
    output_lens = np.array([p.max_tokens for p in w.prompts])
    assert len({p.prompt[:64] for p in w.prompts}) == 2000
    assert 270 < np.median(prompt_lens) < 330 and 45 <= np.median(output_lens) <= 55
    assert prompt_lens.max() > 5 * 300 and prompt_lens.min() >= 10  # a long tail, and the clip at median/30
    assert output_lens.max() <= 1000
    again = workloads.mixed_lengths(num_prompts=2000, median_prompt_len=300, median_output_len=50, seed=1)
    assert again.prompts == w.prompts


def test_body_streams_with_usage_and_fixed_length():
    p = workloads.Prompt(prompt="abc def", max_tokens=5, group="")
    body = p.body(model="m")
    assert body == {
        "model": "m",
        "prompt": "abc def",
        "max_tokens": 5,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chat = workloads.Prompt(messages=(("user", "hi"),), max_tokens=1, group="")
    assert chat.body(model="m", stream=False)["messages"] == [{"role": "user", "content": "hi"}]


def test_poisson_schedule_is_reproducible_and_has_the_offered_rate():
    a = workloads.poisson_schedule(qps=20.0, duration_s=100.0, seed=5)
    b = workloads.poisson_schedule(qps=20.0, duration_s=100.0, seed=5)
    np.testing.assert_array_equal(a.offsets_s, b.offsets_s)
    assert 1800 < len(a) < 2200
    assert np.all(np.diff(a.offsets_s) > 0) and a.offsets_s[-1] < 100.0
    gaps = np.diff(a.offsets_s)
    assert abs(np.std(gaps) / np.mean(gaps) - 1.0) < 0.1  # exponential gaps: coefficient of variation 1


def test_invalid_parameters_name_the_field():
    with pytest.raises(ValueError, match="num_groups"):
        workloads.shared_prefix(
            num_groups=0, num_prompts_per_group=1, system_prompt_len=1, question_len=1, output_len=1
        )
    with pytest.raises(ValueError, match="qps"):
        workloads.poisson_schedule(qps=0, duration_s=1, seed=0)
