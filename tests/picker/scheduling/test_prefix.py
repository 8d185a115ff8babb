"""The approximate prefix index: GIE hashing (64-char blocks, chained xxhash64 seeded by model, at most 256
blocks), per-endpoint LRU, matching, and the prefix-cache scorer."""

import numpy as np
import xxhash

from frontier_picker.scheduling import plugins, prefix, types

from . import fleet


def cycle(states, prompt: str) -> plugins.Cycle:
    return plugins.Cycle(fleet.request(prompt), fleet.snapshot(states), rng=np.random.default_rng(0))


def text(n_blocks: int, tag: str = "a") -> str:
    return "".join(f"{tag}{i:05d}".ljust(64, ".") for i in range(n_blocks))


def test_hashes_follow_the_gie_chain():
    prompt = text(2) + "tail shorter than a block"
    hashes = prefix.block_hashes(prompt, model="llama")
    seed = xxhash.xxh64_intdigest(b"llama")
    first = xxhash.xxh64_intdigest(prompt[:64].encode() + seed.to_bytes(8, "little"))
    second = xxhash.xxh64_intdigest(prompt[64:128].encode() + first.to_bytes(8, "little"))
    assert hashes == [first, second]


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
