"""The engine core in model time: calibration, prefix caching, eviction, queueing, preemption, KV events,
speculative decoding, LoRA, chunked prefill. Pure and fast: no clock, no network."""

import json
import zlib
from importlib import resources

import pytest

from frontier_api import modeltier
from frontier_sim import engine, flags, timing, tokenizer
from frontier_sim import settings as settings_

CAL = timing.load("h100")
MODEL = timing.step_model(calibration=CAL)


def make(**overrides) -> engine.Engine:
    config = engine.EngineConfig(num_gpu_blocks=overrides.pop("num_gpu_blocks", 4096), **overrides)
    return engine.Engine(config, MODEL)


def prompt(tag: str, tokens: int) -> list[int]:
    """A prompt of exactly `tokens` token ids, distinct per tag."""
    return [tokenizer.output_token(zlib.crc32(tag.encode()), i) for i in range(tokens)]


MEASURED_PREFILL = {
    p["new_tokens"]: p["seconds"]
    for p in json.loads(
        resources.files("frontier_sim.calibration").joinpath("h100_llama8b.json").read_text()
    )["prefill"]
    if p["cached_tokens"] == 0
}


def run_until_first_token(core: engine.Engine, rid: str) -> float:
    """Model seconds from now until `rid` emits its first token."""
    elapsed = 0.0
    while True:
        result = core.step()
        elapsed += result.duration
        if rid in result.outputs:
            return elapsed


def drain(core: engine.Engine) -> tuple[dict[str, list[int]], list[engine.StepResult]]:
    tokens: dict[str, list[int]] = {}
    results = []
    while core.has_work():
        result = core.step()
        results.append(result)
        for rid, new in result.outputs.items():
            tokens.setdefault(rid, []).extend(new)
    return tokens, results


def prefill_fit(n: int, c: int = 0) -> float:
    return CAL.p0 + CAL.p1 * n + CAL.p2 * n * (c + n / 2)


def decode_fit(batch: int, context: int, k: int = 1) -> float:
    return CAL.d0 + CAL.d1 * batch * k + CAL.d2 * batch * context


@pytest.mark.parametrize("tokens", [256, 1024, 4096, 8192])
def test_lone_request_ttft_matches_calibration_within_10_percent(tokens):
    core = make()
    core.add_request("a", prompt("a", tokens), max_tokens=4)
    ttft = run_until_first_token(core, "a")
    assert ttft == pytest.approx(prefill_fit(tokens), rel=0.10)
    if (
        tokens >= 2048
    ):  # where the fit itself is within 10% of the measured points (p0 is eager-mode overhead)
        assert ttft == pytest.approx(MEASURED_PREFILL[tokens], rel=0.10)


def test_steady_batch_inter_token_latency_matches_decode_fit():
    core = make(num_gpu_blocks=20000)
    for i in range(64):
        core.add_request(f"r{i}", prompt(f"r{i}", 2000), max_tokens=40)
    started: set[str] = set()
    while len(started) < 64:  # until every request is prefilled (chunked under the 8192-token budget)
        started.update(core.step().outputs)
    durations = []
    for _ in range(20):
        result = core.step()
        assert len(result.outputs) == 64 and result.num_prefill_tokens == 0
        durations.append(result.duration)
    # Context per sequence during those steps: 2000 prompt + 1..21 generated.
    expected = decode_fit(64, 2011)
    assert sum(durations) / len(durations) == pytest.approx(expected, rel=0.10)
    # and the measured point (batch 64, context 2048) within 10%
    assert sum(durations) / len(durations) == pytest.approx(0.014042943954467773, rel=0.10)


def test_repeated_prompt_second_ttft_drops_by_the_cached_share():
    core = make()
    p = prompt("shared", 4096)
    core.add_request("first", p, max_tokens=1)
    first = run_until_first_token(core, "first")
    drain(core)
    core.add_request("second", p, max_tokens=2)
    second = run_until_first_token(core, "second")
    finished = [f for r in drain(core)[1] for f in r.finished]
    cached = 4096 - 16  # all full blocks but the last: at least one token is always computed
    assert core.stats.prefix_cache_hits == cached
    assert finished[0].cached_tokens == cached
    assert first == pytest.approx(prefill_fit(4096))
    assert second == pytest.approx(prefill_fit(16, cached))
    assert second < first * 0.1


def test_cache_full_evicts_least_recently_used_blocks_and_announces_it():
    core = make(num_gpu_blocks=80)  # 1280 tokens
    a, b = prompt("a", 640), prompt("b", 720)
    core.add_request("a", a, max_tokens=1)
    drain(core)
    assert core.cached_prefix_tokens(a) == 624
    core.add_request("b", b, max_tokens=1)  # 45 blocks: the 39 never used, then a's 6 last (freed tail first)
    _, results = drain(core)
    removed = [
        h for r in results for e in r.events if isinstance(e, engine.BlockRemoved) for h in e.block_hashes
    ]
    assert removed, "evicting cached blocks must be announced"
    # a's last blocks went first (freed tail first), so its prefix survives in part
    assert 0 < core.cached_prefix_tokens(a) < 624
    assert core.cached_prefix_tokens(a) == 35 * 16
    assert core.cached_prefix_tokens(b) == 704


def test_requests_queue_when_the_cache_cannot_hold_them():
    core = make(num_gpu_blocks=64)
    for name in ("a", "b", "c"):
        core.add_request(name, prompt(name, 400), max_tokens=50)  # 29 blocks each by the end
    first = core.step()
    assert core.num_running == 2 and core.num_waiting == 1
    tokens, _ = drain(core)
    for rid, new in first.outputs.items():
        tokens[rid] = new + tokens[rid]
    assert {k: len(v) for k, v in tokens.items()} == {"a": 50, "b": 50, "c": 50}


def test_preemption_under_pressure_recomputes_and_yields_the_same_tokens():
    relaxed = make(num_gpu_blocks=4096)
    tight = make(num_gpu_blocks=48)
    for core in (relaxed, tight):
        for i in range(4):
            core.add_request(f"r{i}", prompt(f"r{i}", 100), max_tokens=150)  # 16 blocks each at the end
    expected, _ = drain(relaxed)
    got, results = drain(tight)
    assert tight.stats.preemptions > 0
    assert any(r.preempted for r in results)
    assert got == expected
    assert relaxed.stats.preemptions == 0
    assert tight.kv_usage == 0.0


def test_kv_events_replayed_give_exactly_the_cached_blocks_after_every_step():
    core = make(num_gpu_blocks=60)
    announced: set[int] = set()
    ever: set[int] = set()
    shared = prompt("sys", 256)
    for i in range(12):
        core.add_request(f"r{i}", shared + prompt(f"u{i}", 200 + 30 * i), max_tokens=20 + i)
    while core.has_work():
        result = core.step()
        for event in result.events:
            if isinstance(event, engine.BlockStored):
                assert event.parent_block_hash is None or event.parent_block_hash in ever
                assert len(event.token_ids) == len(event.block_hashes) * event.block_size
                assert not announced & set(event.block_hashes)
                announced.update(event.block_hashes)
                ever.update(event.block_hashes)
            elif isinstance(event, engine.BlockRemoved):
                assert set(event.block_hashes) <= announced
                announced.difference_update(event.block_hashes)
        assert announced == set(core.pool.cached)
    assert core.stats.prefix_cache_hits > 0
    assert core.reset_prefix_cache()
    assert isinstance(core.step().events[-1], engine.AllBlocksCleared)


def test_block_hashes_are_chained_over_token_ids():
    core = make()
    p = prompt("x", 40)
    core.add_request("x", p, max_tokens=1)
    stored = [e for r in drain(core)[1] for e in r.events if isinstance(e, engine.BlockStored)]
    assert stored[0].block_hashes[0] == engine.block_hash(None, p[:16], None, 0)
    assert stored[0].block_hashes[1] == engine.block_hash(stored[0].block_hashes[0], p[16:32], None, 0)


def test_chunked_prefill_splits_long_prompts_under_the_token_budget():
    core = make(max_num_batched_tokens=4096)
    core.add_request("long", prompt("long", 10000), max_tokens=1)
    ttft = run_until_first_token(core, "long")
    expected = prefill_fit(4096) + prefill_fit(4096, 4096) + prefill_fit(1808, 8192)
    assert ttft == pytest.approx(expected)


@pytest.mark.parametrize(("rate", "per_step"), [(1.0, 5), (0.0, 1)])
def test_speculative_decoding_emits_one_plus_accepted_tokens_at_multi_token_cost(rate, per_step):
    core = make(num_speculative_tokens=4, acceptance_rate=rate)
    core.add_request("s", prompt("s", 512), max_tokens=41)
    core.step()  # prefill: first token
    result = core.step()
    assert len(result.outputs["s"]) == per_step
    assert result.duration == pytest.approx(MODEL.decode_time(batch=1, query_tokens=5, context_tokens=512))
    tokens, _ = drain(core)
    plain = make()
    plain.add_request("s", prompt("s", 512), max_tokens=41)
    expected, _ = drain(plain)
    assert result.outputs["s"] + tokens["s"] == expected["s"][1:]


@pytest.mark.parametrize("speculative", [0, 4])
def test_an_answer_ends_at_eos_before_max_tokens_and_max_tokens_still_caps_it(speculative):
    core = make(num_speculative_tokens=speculative, acceptance_rate=1.0)
    core.add_request("eos", prompt("eos", 256), max_tokens=100, eos_after=7)
    core.add_request("cap", prompt("cap", 256), max_tokens=5, eos_after=50)
    finished = {}
    while core.has_work():
        for done in core.step().finished:
            finished[done.request_id] = done
    assert (finished["eos"].finish_reason, finished["eos"].completion_tokens) == ("stop", 7)
    assert (finished["cap"].finish_reason, finished["cap"].completion_tokens) == ("length", 5)
    with pytest.raises(ValueError, match="eos_after"):
        core.add_request("bad", prompt("bad", 8), max_tokens=5, eos_after=0)


def test_lora_adapters_beyond_max_loras_wait_and_loading_costs_time():
    core = make(enable_lora=True, max_loras=1, lora_load_s=0.05)
    core.add_lora("a")
    core.add_lora("b")
    core.add_request("ra", prompt("ra", 64), max_tokens=5, lora="a")
    core.add_request("rb", prompt("rb", 64), max_tokens=5, lora="b")
    first = core.step()
    assert core.running_loras() == {"a"} and core.waiting_loras() == {"b"}
    assert first.lora_loads == 1
    assert first.duration == pytest.approx(MODEL.prefill_time([timing.PrefillChunk(new=64, cached=0)]) + 0.05)
    tokens, _ = drain(core)
    assert len(tokens["rb"]) == 5


def test_prefill_only_stops_after_one_token_and_kv_transferred_computes_only_the_last_token():
    p = prompt("pd", 2048)
    aggregated = make()
    aggregated.add_request("r", p, max_tokens=8)
    expected, _ = drain(aggregated)
    prefill = make()
    prefill.add_request("r", p, max_tokens=8, prefill_only=True)
    out, results = drain(prefill)
    assert out["r"] == expected["r"][:1]
    assert len(results[-1].finished[0].block_ids) == 128
    decode = make()
    decode.add_request("r", p, max_tokens=8, kv_transferred=True)
    first = decode.step()
    assert first.num_prefill_tokens == 1
    assert first.duration == pytest.approx(MODEL.prefill_time([timing.PrefillChunk(new=1, cached=2047)]))
    rest, _ = drain(decode)
    assert first.outputs["r"] + rest["r"] == expected["r"]


def test_abort_frees_blocks():
    core = make()
    core.add_request("a", prompt("a", 300), max_tokens=100)
    core.step()
    assert core.kv_usage > 0
    assert core.abort("a")
    assert core.kv_usage == 0.0 and core.num_running == 0


def test_requests_that_can_never_fit_are_refused():
    core = make(num_gpu_blocks=10, max_model_len=1000)
    with pytest.raises(ValueError, match="maximum context length"):
        core.add_request("a", prompt("a", 990), max_tokens=20)
    with pytest.raises(ValueError, match="KV blocks"):
        core.add_request("b", prompt("b", 200), max_tokens=1)


def test_scaling_quantization_and_tensor_parallelism_move_step_time_the_right_way():
    fp8 = timing.step_model(calibration=CAL, quantization="fp8")
    big = timing.step_model(calibration=CAL, params=70.6e9, tensor_parallel=4)

    def dec(m):
        return m.decode_time(batch=32, query_tokens=1, context_tokens=32 * 2048)

    assert dec(fp8) < dec(MODEL) / 1.3
    assert dec(big) > dec(MODEL)
    blocks = timing.num_gpu_blocks(model=MODEL, gpu="h100", gpu_memory_utilization=0.9, block_size=16)
    assert 25_000 < blocks < 30_000  # ~430k tokens of KV for an 8B bf16 model on one H100
    with pytest.raises(ValueError, match="--quantization"):
        timing.step_model(calibration=CAL, quantization="q3_k")


def test_mixed_step_prices_decodes_by_the_decode_fit_plus_each_chunks_marginal_cost():
    core = make()
    core.add_request("old", prompt("old", 1000), max_tokens=10)
    core.step()  # prefill "old"; it decodes from now on
    core.add_request("new", prompt("new", 600), max_tokens=10)
    mixed = core.step()
    assert mixed.num_decode_seqs == 1 and mixed.num_prefill_tokens == 600
    expected = (
        MODEL.decode_time(batch=1, query_tokens=1, context_tokens=1000) + CAL.p1 * 600 + CAL.p2 * 600 * 300
    )
    assert mixed.duration == pytest.approx(expected)


def test_h200_calibration_is_loaded_and_decodes_faster_at_large_batch():
    h200 = timing.step_model(calibration=timing.load("h200"))
    assert h200.decode_time(batch=64, query_tokens=1, context_tokens=64 * 2048) < MODEL.decode_time(
        batch=64, query_tokens=1, context_tokens=64 * 2048
    )
    with pytest.raises(ValueError, match="h100"):
        timing.load("a100")


def test_the_pickers_step_fit_is_the_simulators_h100_calibration():
    from frontier_api import step_fit
    from frontier_sim import timing

    calibrated = timing.load("h100")
    shared = step_fit.H100_LLAMA8B
    for name in ("p0", "p1", "p2", "d0", "d1", "d2"):
        assert getattr(shared, name) == pytest.approx(getattr(calibrated, name), rel=1e-3), name


def test_mixed_steps_cost_what_the_gpu_measured_for_a_chunk_and_decodes_in_one_pass():
    """Decodes co-scheduled with a prefill chunk wait for the whole chunk: the simulator's price of such a
    step (decode fit + the chunk's marginal prefill cost) against one-pass timings on an H200
    (`sim/calibration/mixed_step_profile.py`), the interference that disaggregation removes."""
    measured = json.loads(
        resources.files("frontier_sim.calibration").joinpath("h200_llama8b_mixed.json").read_text()
    )
    model = timing.step_model(calibration=timing.load("h200"))
    mixed = [p for p in measured["points"] if p["new_tokens"] and p["batch"]]
    assert len(mixed) == 12
    for point in mixed:
        n, batch, context = point["new_tokens"], point["batch"], point["context"]
        priced = model.step_time(
            chunks=[timing.PrefillChunk(new=n, cached=0)],
            batch=batch,
            query_tokens=1,
            context_tokens=batch * context,
        )
        if n >= 2048:
            assert priced == pytest.approx(point["seconds"], rel=0.05), point
        else:  # short chunks: the fit's p0 was measured eagerly, an upper bound (calibration README)
            assert point["seconds"] <= priced <= 1.15 * point["seconds"], point


@pytest.mark.parametrize("quantization", [q.value for q in modeltier.Quantization])
def test_every_quantization_the_crd_accepts_is_simulated(quantization):
    settings = flags.parse_serve(["m", "--quantization", quantization])
    model = timing.step_model(calibration=CAL, quantization=settings.quantization)
    step = model.decode_time(batch=32, query_tokens=1, context_tokens=32 * 2048)
    # No 8- or 4-bit weight format reads more bytes than bf16; none makes a bf16 decode step 3x faster.
    assert MODEL.decode_time(batch=32, query_tokens=1, context_tokens=32 * 2048) / 3 < step
    assert model.weight_bytes_per_gpu <= MODEL.weight_bytes_per_gpu


def test_data_parallel_ranks_add_capacity_but_do_not_speed_up_a_lone_prompt():
    one = settings_.build_engine(flags.parse_serve(["m"]))
    four = settings_.build_engine(flags.parse_serve(["m", "--data-parallel-size", "4"]))
    assert four.config.num_gpu_blocks == 4 * one.config.num_gpu_blocks
    assert four.config.max_num_seqs == 4 * one.config.max_num_seqs
    lone = [timing.PrefillChunk(new=4000, cached=0)]
    assert four.model.prefill_time(lone) == pytest.approx(one.model.prefill_time(lone))
    many = [timing.PrefillChunk(new=1000, cached=0)] * 4
    assert four.model.prefill_time(many) < one.model.prefill_time(many) / 2
    # 128 sequences over 4 ranks: each rank steps 32 of them.
    assert four.model.decode_time(batch=128, query_tokens=1, context_tokens=128 * 2048) == pytest.approx(
        one.model.decode_time(batch=32, query_tokens=1, context_tokens=32 * 2048)
    )
