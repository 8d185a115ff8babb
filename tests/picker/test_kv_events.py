"""The KV event decoder and block index: fed by the simulated engine's real events, encoded as it publishes
them, the index agrees with the engine's own prefix cache block for block."""

import random

import msgpack
import numpy as np
import pytest

from frontier_picker import kv_events
from frontier_sim import engine, kvevents, timing, tokenizer

MODEL = timing.step_model(calibration=timing.load("h100"))


def frames(seq: int, events: list, *, as_map: bool = False) -> list[bytes]:
    body = {"ts": 1.0, "events": events, "data_parallel_rank": 0} if as_map else [1.0, events, 0]
    return [b"kv@10.0.0.1@m", seq.to_bytes(8, "big"), msgpack.packb(body)]


def published(core: engine.Engine, seq: int) -> tuple[list[bytes], int]:
    """The next step's events as the simulator's publisher sends them."""
    result = core.step()
    payload = kvevents.encode_batch(1.0, result.events)
    return [b"t", seq.to_bytes(8, "big"), payload], seq + 1


def held_blocks(index: kv_events.BlockIndex, key: str, token_ids: list[int]) -> int:
    keys = kv_events.block_keys(token_ids, block_size=index.block_size)
    return int(index.match(keys, {key: 0}, 1)[0])


def test_index_follows_the_simulated_engine_through_stores_evictions_and_a_reset():
    core = engine.Engine(engine.EngineConfig(num_gpu_blocks=64, hash_seed=7), MODEL)
    index = kv_events.BlockIndex(block_size=16)
    rng = random.Random(1)
    shared = tokenizer.encode("system prompt " * 40)
    prompts = [shared + tokenizer.encode(f"question {i} " * rng.randint(5, 60)) for i in range(12)]
    seq = 0
    removed = 0
    for i, prompt in enumerate(prompts):
        core.add_request(f"r{i}", prompt, max_tokens=3)
        while core.has_work():
            message, seq = published(core, seq)
            removed += index.ingest("e", message).removed
        # The index holds exactly what the engine caches (evictions included) ...
        assert index.size("e") == len(core.pool.cached)
        # ... and answers a prefix lookup as the engine would.
        for probe in (prompts[0], prompt, prompts[(i + 5) % len(prompts)]):
            engine_blocks = core.cached_prefix_tokens([*probe, 1]) // 16
            assert held_blocks(index, "e", probe) == engine_blocks
    assert core.pool.events == [] and index.entries() == len(core.pool.cached) > 0
    assert removed > 0  # the cache (64 blocks) was too small for the prompts: evictions were followed
    core.reset_prefix_cache()
    index.ingest("e", [b"t", seq.to_bytes(8, "big"), kvevents.encode_batch(1.0, core.pool.events)])
    assert index.entries() == 0 and index.keys() == 0


def test_two_endpoints_share_a_prefix_and_one_evicting_it_leaves_the_other():
    index = kv_events.BlockIndex(block_size=4)
    tokens = list(range(1, 13))
    stored = ["BlockStored", [101, 102, 103], None, tokens, 4, None, "GPU"]
    index.ingest("a", frames(0, [stored]))
    index.ingest("b", frames(0, [["BlockStored", [7, 8], None, tokens[:8], 4, None, "GPU"]]))
    keys = kv_events.block_keys(tokens, block_size=4)
    positions = {"a": 0, "b": 1}
    assert index.match(keys, positions, 2).tolist() == [3, 2]
    assert index.keys() == 3 and index.entries() == 5
    index.ingest("a", frames(1, [["BlockRemoved", [101], "GPU"]]))
    assert index.match(keys, positions, 2).tolist() == [0, 2]
    assert index.holds("b", keys[0]) and not index.holds("a", keys[0])


def test_map_encoded_events_and_bytes_hashes_are_accepted():
    index = kv_events.BlockIndex(block_size=4)
    event = {"type": "BlockStored", "block_hashes": [b"\x01" * 32], "parent_block_hash": None,
             "token_ids": [5, 6, 7, 8], "block_size": 4, "lora_id": None, "medium": "GPU"}  # fmt: skip
    applied = index.ingest("a", frames(3, [event], as_map=True))
    assert applied.stored == 1
    assert index.match(kv_events.block_keys([5, 6, 7, 8], block_size=4), {"a": 0}, 1).tolist() == [1]


def test_a_sequence_gap_drops_the_endpoint_and_the_following_events_rebuild_it():
    index = kv_events.BlockIndex(block_size=4)
    root = ["BlockStored", [1], None, [1, 2, 3, 4], 4, None, "GPU"]
    index.ingest("a", frames(0, [root]))
    index.ingest("b", frames(0, [root]))
    applied = index.ingest("a", frames(3, [["BlockStored", [2], 1, [5, 6, 7, 8], 4, None, "GPU"]]))
    # Batches 1 and 2 were lost: they may have evicted block 1, so "a" forgets it; the child of an unknown
    # parent cannot be keyed and is skipped. "b" is untouched.
    assert applied.gap == 2 and applied.skipped == 1
    assert index.size("a") == 0 and index.size("b") == 1
    index.ingest("a", frames(4, [["BlockStored", [9], None, [1, 2, 3, 4], 4, None, "GPU"]]))
    assert index.size("a") == 1


def test_a_batch_that_does_not_decode_drops_the_endpoint():
    index = kv_events.BlockIndex(block_size=4)
    index.ingest("a", frames(0, [["BlockStored", [1], None, [1, 2, 3, 4], 4, None, "GPU"]]))
    with pytest.raises(kv_events.DecodeError, match="BlockStored"):
        index.ingest("a", frames(1, [["BlockStored", [2], 1, [5], 4, None, "GPU"]]))
    assert index.size("a") == 0
    with pytest.raises(kv_events.DecodeError, match="3 frames"):
        index.ingest("a", [b"t", b"x"])


def test_blocks_the_request_side_cannot_key_are_skipped():
    index = kv_events.BlockIndex(block_size=4)
    applied = index.ingest(
        "a",
        frames(0, [
            ["BlockStored", [1], None, [1, 2, 3, 4], 4, 3, "GPU"],  # a LoRA adapter's block
            ["BlockStored", [2], None, [1, 2, 3, 4], 4, None, "CPU"],  # an offloaded copy
            ["BlockStored", [3], None, [1] * 8, 8, None, "GPU"],  # another block size
            ["BlockStored", [4], 99, [1, 2, 3, 4], 4, None, "GPU"],  # parent never seen
        ]),
    )  # fmt: skip
    assert applied.skipped == 4 and index.entries() == 0


def test_memory_is_bounded_per_endpoint():
    index = kv_events.BlockIndex(block_size=1, max_blocks_per_endpoint=3)
    applied = index.ingest(
        "a", frames(0, [["BlockStored", [1, 2, 3, 4, 5], None, [1, 2, 3, 4, 5], 1, None, None]])
    )
    assert (applied.stored, applied.overflow, index.size("a")) == (3, 2, 3)


def test_a_forgotten_endpoint_releases_its_entries_and_its_number_is_reused():
    index = kv_events.BlockIndex(block_size=2)
    for key in ("a", "b"):
        index.ingest(key, frames(0, [["BlockStored", [1], None, [1, 2], 2, None, "GPU"]]))
    index.forget("a")
    assert index.endpoints() == ["b"] and index.keys() == 1
    index.ingest("c", frames(0, [["BlockStored", [5], None, [1, 2], 2, None, "GPU"]]))
    keys = kv_events.block_keys([1, 2], block_size=2)
    assert np.array_equal(index.match(keys, {"a": 0, "b": 1, "c": 2}, 3), [0, 1, 1])


def test_block_keys_ignore_a_trailing_partial_block_and_chain():
    keys = kv_events.block_keys(list(range(10)), block_size=4)
    assert len(keys) == 2
    assert kv_events.block_keys(list(range(4, 8)), block_size=4, parent=keys[0]) == keys[1:]
    assert all(0 <= key < 1 << 60 for key in keys)


def test_speculative_entries_hold_until_they_expire_or_the_engine_confirms():
    index = kv_events.BlockIndex(block_size=2)
    keys = kv_events.block_keys([1, 2, 3, 4, 5, 6], block_size=2)
    positions = {"a": 0, "b": 1}
    index.speculate("a", keys, until=10.0)
    index.speculate("b", keys[:1], until=5.0)
    assert index.match(keys, positions, 2).tolist() == [3, 1]
    index.expire(5.0)
    assert index.match(keys, positions, 2).tolist() == [3, 0]
    # The engine confirms the first two blocks: those entries are done; the third stays speculative.
    index.ingest("a", frames(0, [["BlockStored", [11, 12], None, [1, 2, 3, 4], 2, None, "GPU"]]))
    assert index.speculative_entries() == 1
    index.expire(10.0)
    assert index.speculative_entries() == 0
    assert index.match(keys, positions, 2).tolist() == [2, 0]


def test_a_renewed_speculative_entry_outlives_its_first_expiry():
    index = kv_events.BlockIndex(block_size=2)
    keys = kv_events.block_keys([1, 2], block_size=2)
    index.speculate("a", keys, until=1.0)
    index.speculate("a", keys, until=3.0)
    index.expire(2.0)
    assert index.match(keys, {"a": 0}, 1).tolist() == [1]
    index.forget("a")
    assert index.speculative_entries() == 0
