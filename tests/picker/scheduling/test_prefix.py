"""The approximate prefix index: GIE hashing (64-char blocks, chained xxhash64 seeded by model, at most 256
blocks), per-endpoint LRU, matching, and the prefix-cache scorer."""

import numpy as np
import xxhash

from frontier_picker.scheduling import types
from frontier_picker.scheduling.framework import cycles
from frontier_picker.scheduling.plugins import prefix

from . import fleet


def cycle(states, prompt: str) -> cycles.Cycle:
    return cycles.Cycle(fleet.request(prompt), fleet.snapshot(states), rng=np.random.default_rng(0))


def text(n_blocks: int, tag: str = "a") -> str:
    return "".join(f"{tag}{i:05d}".ljust(64, ".") for i in range(n_blocks))


def test_hashes_follow_the_gie_chain():
    prompt = text(2) + "tail shorter than a block"
    hashes = prefix.block_hashes(prompt, model="llama")
    seed = xxhash.xxh64_intdigest(b"llama")
    first = xxhash.xxh64_intdigest(prompt[:64].encode() + seed.to_bytes(8, "little"))
    second = xxhash.xxh64_intdigest(prompt[64:128].encode() + first.to_bytes(8, "little"))
    assert hashes == [first % 2**60, second % 2**60]  # chained on all 64 bits, kept to the low 60


def test_hashes_depend_on_model_and_position_and_stop_at_256_blocks():
    block = "x" * 64
    hashes = prefix.block_hashes(block * 300, model="llama")
    assert len(hashes) == 256
    assert len(set(hashes)) == 256  # equal blocks at different positions differ (chained)
    assert prefix.block_hashes(block, model="qwen") != prefix.block_hashes(block, model="llama")
    assert prefix.block_hashes("x" * 63, model="llama") == []


def test_index_matches_the_longest_held_prefix_per_endpoint():
    index = prefix.Index()
    shared = text(10)
    index.add(fleet.key(0), prefix.block_hashes(shared + text(5, "b"), model="llama"), capacity=1000)
    index.add(fleet.key(1), prefix.block_hashes(shared[:256], model="llama"), capacity=1000)
    states = [fleet.state(i) for i in range(3)]
    matched = index.matched_blocks(cycle(states, shared + text(5, "c")))
    assert matched.tolist() == [10.0, 4.0, 0.0]


def test_lru_evicts_oldest_blocks_so_the_chain_breaks():
    index = prefix.Index()
    hashes = prefix.block_hashes(text(10), model="llama")
    index.add(fleet.key(0), hashes, capacity=5)
    assert index.size(fleet.key(0)) == 5
    assert index.matched_blocks(cycle([fleet.state(0)], text(10))).tolist() == [0.0]
    index.add(fleet.key(0), hashes[:3], capacity=5)  # re-used blocks become most recent
    assert index.matched_blocks(cycle([fleet.state(0)], text(10))).tolist() == [3.0]


def test_lru_capacity_comes_from_cache_config_when_known():
    index = prefix.Index(lru_capacity=31_250)
    assert index.capacity(fleet.state(0)) == 31_250
    assert index.capacity(fleet.state(0, block_size=16, num_gpu_blocks=100)) == 100
    assert prefix.Index(auto_tune=False).capacity(fleet.state(0, block_size=16, num_gpu_blocks=100)) == 31_250


def test_prefix_scorer_is_matched_over_total_and_learns_from_decisions():
    scorer = prefix.PrefixCacheScorer("p", index=prefix.Index())
    states = [fleet.state(0), fleet.state(1)]
    first = cycle(states, text(8))
    assert scorer.score(first).tolist() == [0.0, 0.0]
    scorer.on_decision(first, types.Decision(endpoints=[fleet.key(1)]))
    assert scorer.score(cycle(states, text(4) + text(4, "z"))).tolist() == [0.0, 0.5]
    assert scorer.score(cycle(states, "short")).tolist() == [0.0, 0.0]


def test_prefix_scorer_records_the_prefill_endpoint_too():
    scorer = prefix.PrefixCacheScorer("p", index=prefix.Index())
    states = [fleet.state(0), fleet.state(1)]
    scorer.on_decision(cycle(states, text(4)), types.Decision(endpoints=[fleet.key(0)], prefill=fleet.key(1)))
    assert scorer.score(cycle(states, text(4))).tolist() == [1.0, 1.0]


def test_many_holders_of_one_prefix_are_matched_and_forgotten_one_by_one():
    index = prefix.Index()
    shared = prefix.block_hashes(text(6), model="llama")
    states = [fleet.state(i) for i in range(130)]  # past 64 and 128 bits
    for state in states:
        index.add(state.endpoint.key, shared, capacity=6)
    assert index.matched_blocks(cycle(states, text(6))).tolist() == [6.0] * 130
    for state in states[:-1]:  # a new prompt evicts the shared blocks everywhere but on the last endpoint
        index.add(state.endpoint.key, prefix.block_hashes(text(6, "z"), model="llama"), capacity=6)
    assert index.matched_blocks(cycle(states, text(6))).tolist() == [0.0] * 129 + [6.0]
    index.add(states[-1].endpoint.key, prefix.block_hashes(text(6, "y"), model="llama"), capacity=6)
    assert index.matched_blocks(cycle(states, text(6))).tolist() == [0.0] * 130
    assert index.matched_blocks(cycle(states, text(6, "z"))).tolist() == [6.0] * 129 + [0.0]


def distinct(count: int, start: int) -> list[int]:
    """`count` made-up block hashes, distinct from those of any other `start`."""
    return [xxhash.xxh64_intdigest(f"{start}:{i}".encode()) for i in range(count)]


def test_an_endpoint_keeps_exactly_its_capacity_of_distinct_hashes():
    index = prefix.Index()
    learned = []
    for batch in range(40):
        hashes = distinct(37, batch)
        learned += hashes
        index.add(fleet.key(0), hashes, capacity=400)
        assert index.size(fleet.key(0)) == min(len(learned), 400)
    assert index.entries() == 400
    held = [value for value in learned if index.holds(fleet.key(0), value)]
    assert held == learned[-400:]  # without renewals the index is first in, first out


def test_a_prefix_relearned_within_three_quarters_of_capacity_survives_any_churn():
    index = prefix.Index()
    hot = prefix.block_hashes(text(8, "hot"), model="llama")
    states = [fleet.state(0)]
    for batch in range(200):  # 200 x 60 new hashes: 30 x the capacity
        index.add(fleet.key(0), hot, capacity=400)
        index.add(fleet.key(0), distinct(60, batch), capacity=400)
        assert index.matched_blocks(cycle(states, text(8, "hot"))).tolist() == [8.0]
        assert index.size(fleet.key(0)) <= 400


def test_a_prefix_not_relearned_is_evicted_and_no_longer_matches():
    index = prefix.Index()
    index.add(fleet.key(0), prefix.block_hashes(text(8, "old"), model="llama"), capacity=400)
    for batch in range(7):  # 420 new hashes: more than the capacity
        index.add(fleet.key(0), distinct(60, batch), capacity=400)
    assert index.matched_blocks(cycle([fleet.state(0)], text(8, "old"))).tolist() == [0.0]
    assert index.size(fleet.key(0)) == 400


def test_shared_holders_stay_right_as_endpoints_evict_one_by_one():
    index = prefix.Index()
    states = [fleet.state(i) for i in range(3)]
    shared = prefix.block_hashes(text(8, "s"), model="llama")
    index.add(fleet.key(2), distinct(60, 99), capacity=100)  # endpoint 2 learns it in a later generation
    for i in range(3):
        index.add(fleet.key(i), shared, capacity=100)

    def matched() -> list[float]:
        return index.matched_blocks(cycle(states, text(8, "s"))).tolist()

    assert matched() == [8.0, 8.0, 8.0]
    index.add(fleet.key(0), distinct(100, 0), capacity=100)  # endpoint 0 evicts everything it had
    assert matched() == [0.0, 8.0, 8.0]
    index.add(fleet.key(1), distinct(100, 1), capacity=100)  # then endpoint 1: endpoint 2 holds it alone
    assert matched() == [0.0, 0.0, 8.0]
    index.add(fleet.key(2), distinct(60, 2), capacity=100)  # learned 60 hashes ago: kept
    assert matched() == [0.0, 0.0, 8.0]
    index.add(fleet.key(2), distinct(60, 3), capacity=100)  # 120 ago, over the capacity: evicted
    assert matched() == [0.0, 0.0, 0.0]
    index.add(fleet.key(0), shared, capacity=100)
    assert matched() == [8.0, 0.0, 0.0]
    assert [index.size(fleet.key(i)) for i in range(3)] == [100, 100, 100]


def test_random_learning_never_invents_blocks_and_keeps_the_recent_ones():
    """Against an exact LRU per endpoint: the index holds only hashes sent to the endpoint, at most
    `capacity` of them, and every one of the last three quarters of `capacity` distinct hashes learned."""
    rng = np.random.default_rng(7)
    capacity = 40
    pool = distinct(150, 0)
    index = prefix.Index()
    exact: dict[str, dict[int, None]] = {fleet.key(i): {} for i in range(3)}
    sent: dict[str, set[int]] = {fleet.key(i): set() for i in range(3)}
    for _ in range(600):
        key = fleet.key(int(rng.integers(3)))
        hashes = [pool[int(i)] for i in rng.choice(len(pool), size=int(rng.integers(1, 12)), replace=False)]
        index.add(key, hashes, capacity=capacity)
        sent[key].update(hashes)
        for value in hashes:
            exact[key].pop(value, None)
            exact[key][value] = None
        for other, recent in exact.items():
            held = {value for value in pool if index.holds(other, value)}
            assert held <= sent[other]
            assert set(list(recent)[-(capacity * 3 // 4) :]) <= held
            assert index.size(other) == len(held) <= capacity
    assert index.entries() == sum(index.size(key) for key in exact)


def test_a_shrinking_capacity_drops_the_oldest_hashes_at_the_next_learning():
    """Auto-tuned capacity changes when an engine reports a smaller KV cache."""
    index = prefix.Index()
    learned = distinct(300, 0)
    index.add(fleet.key(0), learned, capacity=400)
    newest = distinct(10, 1)
    index.add(fleet.key(0), newest, capacity=50)
    assert index.size(fleet.key(0)) == 50
    held = [value for value in learned + newest if index.holds(fleet.key(0), value)]
    assert held == (learned + newest)[-50:]
    index.add(fleet.key(0), distinct(5, 2), capacity=3)  # below one generation of what is queued
    assert index.size(fleet.key(0)) == 3


def test_learning_only_renewals_keeps_the_hot_hashes_and_drops_those_unlearned_for_15_generations():
    index = prefix.Index()
    cold = distinct(10, 0)
    hot = [distinct(10, 1), distinct(10, 2), distinct(10, 3)]
    for prompt in [cold, *hot]:  # generations of 10 hashes learned or renewed: 4 so far
        index.add(fleet.key(0), prompt, capacity=40)
    for turn in range(60):  # each turn renews one hot prompt: a generation, and no queue grows
        index.add(fleet.key(0), hot[turn % 3], capacity=40)
        assert all(index.holds(fleet.key(0), value) for prompt in hot for value in prompt)
        if turn < 11:  # the cold prompt's generation is dropped when it is 15 generations old
            assert all(index.holds(fleet.key(0), value) for value in cold)
    assert not any(index.holds(fleet.key(0), value) for value in cold)
    assert index.size(fleet.key(0)) == 30
