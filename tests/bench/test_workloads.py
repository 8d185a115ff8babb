"""Workload generators: reproducible by seed, shaped as their parameters say."""

import itertools

import numpy as np
import pytest

from frontier_api import names
from frontier_bench import workloads


def tokens(text: str) -> int:
    return len(text.split())


def shared(seed: int = 0, **overrides: int) -> workloads.SharedPrefix:
    params = {"num_groups": 3, "num_prompts_per_group": 4, "system_prompt_len": 50, "question_len": 10}
    return workloads.shared_prefix(**{**params, **overrides}, output_len=7, seed=seed)


def test_shared_prefix_is_identical_for_the_same_seed_and_differs_for_another():
    a, b, c = shared(seed=1), shared(seed=1), shared(seed=2)
    assert [a.prompt_for(i) for i in range(30)] == [b.prompt_for(i) for i in range(30)]
    assert [a.prompt_for(i).prompt for i in range(30)] != [c.prompt_for(i).prompt for i in range(30)]


def test_no_two_requests_of_a_shared_prefix_run_are_identical():
    # 2,000 requests from 12 (group, question) slots: the old cycling list repeated each prompt ~166 times.
    w = shared(seed=0, system_prompt_len=20, question_len=8)
    prompts = [w.prompt_for(i).prompt for i in range(2000)]
    assert len(set(prompts)) == 2000
    assert len({" ".join(p.split()[20:]) for p in prompts}) == 2000  # the questions themselves are fresh


def test_shared_prefix_sharing_matches_its_parameters():
    w = shared(seed=0)
    blocks = 50
    prompts = [w.prompt_for(i) for i in range(12 * blocks)]
    by_group: dict[str, list[str]] = {}
    for p in prompts:
        assert tokens(p.prompt) == 60
        assert len(p.prompt) == 60 * 4 - 1  # four characters per token
        assert p.max_tokens == 7
        by_group.setdefault(p.group, []).append(p.prompt)
    assert sorted(by_group) == ["g0", "g1", "g2"]
    # every block of groups x prompts-per-group requests sends each group's prefix exactly that often
    for block in range(blocks):
        groups = [p.group for p in prompts[12 * block : 12 * (block + 1)]]
        assert sorted(groups) == sorted(["g0", "g1", "g2"] * 4)
    # the shared length is exactly the system prompt: the group's requests share 50 tokens, and no more
    for texts in by_group.values():
        split = [t.split() for t in texts]
        assert len({tuple(t[:50]) for t in split}) == 1
        assert len({tuple(t[50:52]) for t in split}) == len(split)  # questions differ from their start
    assert len({texts[0].split()[0] for texts in by_group.values()}) == 3


def test_shared_prefix_order_is_shuffled_afresh_every_block():
    w = shared(seed=3, num_groups=5, num_prompts_per_group=5)
    first = [w.prompt_for(i).group for i in range(25)]
    second = [w.prompt_for(i).group for i in range(25, 50)]
    assert first != sorted(first) and first != second


def test_a_trace_repeats_by_definition():
    prompts = [workloads.Prompt(prompt=text, max_tokens=1, group="") for text in ("abc", "def")]
    trace = workloads.Trace(name="trace", params={}, prompts=prompts)
    assert [trace.prompt_for(i).prompt for i in range(4)] == ["abc", "def", "abc", "def"]


def test_llmd_study_keeps_the_shape_and_scales_groups_with_the_fleet():
    w = workloads.llmd_study(engines=2, seed=0)
    assert w.name == "llmd-study"
    assert (
        w.params["num_groups"]
        == workloads.llmd_groups(2)
        == round(150 * 2 / workloads.LLMD_REFERENCE_ENGINES)
    )
    assert w.params["num_prompts_per_group"] == 5
    assert tokens(w.prompt_for(0).prompt) == 7200
    assert w.prompt_for(0).max_tokens == 1000
    assert workloads.llmd_groups(workloads.LLMD_REFERENCE_ENGINES) == 150
    assert workloads.llmd_study(engines=1024).num_groups == 19200


def test_multi_turn_chat_grows_each_conversation_in_order():
    w = workloads.multi_turn_chat(
        num_sessions=4, turns=3, system_prompt_len=20, user_len=5, output_len=6, seed=0
    )
    prompts = [w.prompt_for(i) for i in range(36)]  # three blocks of 12
    seen: dict[str, list[workloads.Prompt]] = {}
    for p in prompts:
        assert p.api == "chat"
        seen.setdefault(p.group, []).append(p)
    assert len(seen) == 12  # every block brings fresh sessions
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
    assert len({p.messages for p in prompts}) == 36
    assert len({p.messages[0] for p in prompts}) == 12  # a system prompt per session
    again = workloads.multi_turn_chat(
        num_sessions=4, turns=3, system_prompt_len=20, user_len=5, output_len=6, seed=0
    )
    assert [again.prompt_for(i) for i in range(36)] == prompts


def test_long_documents_prefers_the_first_documents_with_fresh_questions():
    w = workloads.long_documents(
        num_documents=5, document_len=30, question_len=3, output_len=2, zipf_s=1.0, seed=0
    )
    prompts = [w.prompt_for(i) for i in range(400)]
    counts = {g: sum(p.group == g for p in prompts) for g in ("d0", "d4")}
    assert counts["d0"] > 2 * counts["d4"] > 0
    assert all(tokens(p.prompt) == 33 for p in prompts)
    assert len({p.prompt for p in prompts}) == 400


def test_no_sharing_prompts_are_all_fresh():
    w = workloads.no_sharing(prompt_len=40, output_len=3, seed=0)
    assert len({w.prompt_for(i).prompt[:64] for i in range(500)}) == 500


def test_mixed_lengths_are_fresh_log_normal_and_clipped():
    w = workloads.mixed_lengths(median_prompt_len=300, median_output_len=50, seed=1)
    prompts = [w.prompt_for(i) for i in range(2000)]
    prompt_lens = np.array([tokens(p.prompt) for p in prompts])
    output_lens = np.array([p.max_tokens for p in prompts])
    assert len({p.prompt[:64] for p in prompts}) == 2000
    assert 270 < np.median(prompt_lens) < 330 and 45 <= np.median(output_lens) <= 55
    assert prompt_lens.max() > 5 * 300 and prompt_lens.min() >= 10  # a long tail, and the clip at median/30
    assert output_lens.max() <= 1000
    again = workloads.mixed_lengths(median_prompt_len=300, median_output_len=50, seed=1)
    assert [again.prompt_for(i) for i in range(50)] == prompts[:50]


def test_mixed_lengths_ending_at_eos_ask_one_max_tokens_and_end_at_their_own_length():
    w = workloads.mixed_lengths(median_prompt_len=300, median_output_len=50, ends_at_eos=True, seed=1)
    fixed = workloads.mixed_lengths(median_prompt_len=300, median_output_len=50, seed=1)
    prompts = [w.prompt_for(i) for i in range(500)]
    assert w.name == "mixed-lengths-eos"
    assert {p.max_tokens for p in prompts} == {1000}
    # The same draws as the fixed-length workload, carried as answer lengths instead of max_tokens.
    assert [p.output_tokens for p in prompts] == [fixed.prompt_for(i).max_tokens for i in range(500)]
    body = prompts[0].body(model="m")
    assert "ignore_eos" not in body and body[names.SIM_OUTPUT_TOKENS] == prompts[0].output_tokens


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


def test_bursty_arrivals_keep_the_offered_rate_with_the_asked_burstiness():
    bursty = workloads.schedule(qps=20.0, duration_s=500.0, seed=5, cv=3.0)
    assert 9000 < len(bursty) < 11000
    gaps = np.diff(bursty.offsets_s)
    assert abs(np.std(gaps) / np.mean(gaps) - 3.0) < 0.3
    # A CV of 1 is the Poisson schedule itself.
    poisson = workloads.poisson_schedule(qps=20.0, duration_s=50.0, seed=5)
    np.testing.assert_array_equal(
        workloads.schedule(qps=20.0, duration_s=50.0, seed=5).offsets_s, poisson.offsets_s
    )


def test_invalid_parameters_name_the_field():
    with pytest.raises(ValueError, match="num_groups"):
        workloads.shared_prefix(
            num_groups=0, num_prompts_per_group=1, system_prompt_len=1, question_len=1, output_len=1
        )
    with pytest.raises(ValueError, match="qps"):
        workloads.poisson_schedule(qps=0, duration_s=1, seed=0)


def churn(**overrides: float) -> workloads.ZipfChurn:
    params: dict[str, float] = {
        "num_prompts": 50,
        "system_prompt_len": 40,
        "question_len": 6,
        "output_len": 3,
        "zipf_s": 1.0,
        "churn_interval": 100,
        "seed": 0,
    }
    return workloads.zipf_churn(**{**params, **overrides})  # type: ignore[arg-type]


def test_zipf_churn_never_repeats_a_request_and_shares_exactly_the_system_prompt():
    w = churn()
    prompts = [w.prompt_for(i) for i in range(3000)]
    assert len({p.prompt for p in prompts}) == 3000
    assert all(tokens(p.prompt) == 46 and p.max_tokens == 3 for p in prompts)
    by_prompt: dict[str, set[tuple[str, ...]]] = {}
    for p in prompts:
        by_prompt.setdefault(p.group, set()).add(tuple(p.prompt.split()[:40]))
    assert all(len(heads) == 1 for heads in by_prompt.values())  # one system prompt per group
    assert len({next(iter(heads)) for heads in by_prompt.values()}) == len(by_prompt)


def test_zipf_churn_ranks_follow_zipf_popularity():
    w = churn(num_prompts=20, zipf_s=1.0)
    ranks = np.bincount([w.rank_of(i) for i in range(20000)], minlength=20) / 20000
    expected = 1 / np.arange(1, 21)
    expected /= expected.sum()
    assert np.allclose(ranks, expected, atol=0.01)
    assert ranks[0] > 1.8 * ranks[1] > 2.5 * ranks[3]


def test_zipf_churn_popular_set_drifts_one_new_top_prompt_per_interval():
    w = churn(num_prompts=200, churn_interval=100)
    window = 2000

    def top(start: int, k: int = 10) -> set[int]:
        counts: dict[int, int] = {}
        for i in range(start, start + window):
            counts[w.prompt_of(i)] = counts.get(w.prompt_of(i), 0) + 1
        return set(sorted(counts, key=lambda p: -counts[p])[:k])

    # within one interval the top rank is one prompt; the next interval's top prompt is a new one
    assert {w.prompt_of(i) for i in range(100) if w.rank_of(i) == 0} == {199}
    assert {w.prompt_of(i) for i in range(100, 200) if w.rank_of(i) == 0} == {200}
    # the popular set drifts: the top ten of two windows 20 intervals apart share nothing
    assert top(0).isdisjoint(top(4000))
    # a prompt is asked about ~churn_interval times over its life (here: prompts past their youth)
    lifetimes = np.bincount([w.prompt_of(i) for i in range(40000)])
    assert 80 < np.median(lifetimes[199:250]) < 110


def test_zipf_churn_window_touches_most_prompts_so_the_working_set_is_the_whole_pool():
    # 2,000 requests (20 intervals) of 400 ranks: the long tail keeps most system prompts in use
    w = churn(num_prompts=400, churn_interval=100)
    assert len({w.prompt_of(i) for i in range(5000, 7000)}) > 250


def test_zipf_churn_is_reproducible_by_seed():
    def first(seed: int) -> list[workloads.Prompt]:
        return [churn(seed=seed).prompt_for(i) for i in range(50)]

    assert first(4) == first(4)
    assert first(4) != first(5)
