"""precise-prefix-cache-scorer and kv-events-subscriber as configured plugins: wiring, and scores read from
an index fed with the engines' events (no sockets here; the end-to-end test has them)."""

from pathlib import Path

import msgpack
import pytest

from frontier_api import standin_tokenizer
from frontier_picker.scheduling import config, types
from frontier_picker.scheduling.framework import cycles
from frontier_picker.scheduling.framework.errors import ConfigError
from frontier_picker.scheduling.plugins import precise_prefix

from . import fleet

HEAD = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
"""
PROFILE = """
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: precise-prefix-cache-scorer
"""


def test_the_scorer_needs_a_subscriber_and_the_subscriber_is_a_data_source_of_the_scheduler():
    with pytest.raises(ConfigError, match=r"kv-block-index.*kv-events-subscriber"):
        config.load(HEAD + "plugins:\n- type: precise-prefix-cache-scorer\n" + PROFILE)
    plugins = (
        "plugins:\n- type: kv-events-subscriber\n  parameters: {port: 5557}\n"
        "- type: precise-prefix-cache-scorer\n"
    )
    scheduler = config.load(HEAD + plugins + PROFILE)
    assert [source.type_name for source in scheduler.data_sources] == ["kv-events-subscriber"]
    with pytest.raises(ConfigError, match=r"'gpt2', which is not a file; give 'standin' or the path"):
        config.load(HEAD + plugins.replace("scorer\n", "scorer\n  parameters: {tokenizer: gpt2}\n") + PROFILE)


def stored(seq: int, engine_hashes: list[int], token_ids: list[int]) -> list[bytes]:
    event = ["BlockStored", engine_hashes, None, token_ids, 16, None, "GPU"]
    return [b"t", seq.to_bytes(8, "big"), msgpack.packb([0.0, [event], 0])]


def test_chat_and_completion_prompts_score_by_the_blocks_each_engine_holds():
    scheduler = config.load(
        HEAD + "plugins:\n- type: kv-events-subscriber\n- type: precise-prefix-cache-scorer\n" + PROFILE
    )
    source = scheduler.data_sources[0]
    assert isinstance(source, precise_prefix.KvEventsSubscriber)
    scorer = scheduler.destination_profile.scorers[0].scorer
    messages = [{"role": "system", "content": "policy " * 60}, {"role": "user", "content": "hi " * 30}]
    chat_ids = standin_tokenizer.encode(standin_tokenizer.apply_chat_template(messages))
    blocks = len(chat_ids) // 16
    states = [fleet.state(0), fleet.state(1), fleet.state(2)]
    # Endpoint 0 holds the whole chat prompt, endpoint 1 its first 3 blocks, endpoint 2 nothing.
    source.index.ingest(fleet.key(0), stored(0, list(range(100, 100 + blocks)), chat_ids[: blocks * 16]))
    source.index.ingest(fleet.key(1), stored(0, [1, 2, 3], chat_ids[:48]))
    request = fleet.request("ignored: the messages are tokenized", messages=messages)
    cycle = cycles.Cycle(request, fleet.snapshot(states), rng=None)  # type: ignore[arg-type]
    assert scorer.score(cycle).tolist() == [1.0, 3 / blocks, 0.0]
    # A completion's prompt text is tokenized as it is.
    text = standin_tokenizer.apply_chat_template(messages)
    cycle = cycles.Cycle(fleet.request(text), fleet.snapshot(states), rng=None)  # type: ignore[arg-type]
    assert scorer.score(cycle).tolist() == [1.0, 3 / blocks, 0.0]
    assert scheduler.schedule(fleet.request(text), fleet.snapshot(states)).primary == fleet.key(0)


def test_a_models_tokenizer_json_gives_the_token_ids_the_index_is_matched_on(tmp_path: Path):
    tokenizers = pytest.importorskip("tokenizers")
    words = [f"w{i}" for i in range(200)]
    vocab = {"[UNK]": 0, "<s>": 1, **{word: i + 2 for i, word in enumerate(words)}}
    built = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    built.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    built.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    path = tmp_path / "tokenizer.json"
    built.save(str(path))
    text = f"""
- type: kv-events-subscriber
- type: precise-prefix-cache-scorer
  parameters: {{tokenizer: {path}}}
"""
    scheduler = config.load(HEAD + "plugins:" + text + PROFILE)
    source = scheduler.data_sources[0]
    assert isinstance(source, precise_prefix.KvEventsSubscriber)
    scorer = scheduler.destination_profile.scorers[0].scorer
    prompt = " ".join(words[:63])  # 63 words + the <s> the model's post-processor adds: 4 blocks of 16
    ids = [1, *(vocab[word] for word in words[:63])]
    source.index.ingest(fleet.key(1), stored(0, [7, 8, 9, 10], ids))
    states = [fleet.state(0), fleet.state(1)]
    cycle = cycles.Cycle(fleet.request(prompt), fleet.snapshot(states), rng=None)  # type: ignore[arg-type]
    assert scorer.score(cycle).tolist() == [0.0, 1.0]
    # Chat requests are not tokenized with a model's tokenizer yet (no chat template): no preference.
    chat = fleet.request(prompt, messages=[{"role": "user", "content": prompt}])
    cycle = cycles.Cycle(chat, fleet.snapshot(states), rng=None)  # type: ignore[arg-type]
    assert scorer.score(cycle).tolist() == [0.0, 0.0]
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    with pytest.raises(ConfigError, match="does not load"):
        config.load(HEAD + "plugins:" + text.replace(str(path), str(broken)) + PROFILE)


def test_a_peers_decision_becomes_a_speculative_entry_here():
    text = HEAD + "plugins:\n- type: kv-events-subscriber\n- type: precise-prefix-cache-scorer\n" + PROFILE
    here, peer = config.load(text, seed=0), config.load(text, seed=1)
    states = [fleet.state(0), fleet.state(1)]
    prompt = standin_tokenizer.apply_chat_template([{"role": "user", "content": "shared " * 80}])
    decision = types.Decision(endpoints=[fleet.key(1)])
    peer_scorer = peer.destination_profile.scorers[0].scorer
    cycle = cycles.Cycle(fleet.request(prompt), fleet.snapshot(states), rng=None)  # type: ignore[arg-type]
    data = peer_scorer.share(cycle, decision)
    assert data is not None
    scorer = here.destination_profile.scorers[0].scorer
    request = fleet.request(prompt)
    scorer.learn_shared(
        data, types.SharedDecision(request=request, decision=decision, now=fleet.NOW, state=lambda key: None)
    )
    cycle = cycles.Cycle(request, fleet.snapshot(states), rng=None)  # type: ignore[arg-type]
    assert scorer.score(cycle).tolist() == [0.0, 1.0]
    later = cycles.Cycle(request, fleet.snapshot(states, now=fleet.NOW + 2.0), rng=None)  # type: ignore[arg-type]
    assert scorer.score(later).tolist() == [0.0, 0.0]  # speculativeTtlSeconds (2 s) passed unconfirmed
