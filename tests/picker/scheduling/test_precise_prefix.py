"""precise-prefix-cache-scorer and kv-events-subscriber as configured plugins: wiring, and scores read from
an index fed with the engines' events (no sockets here; the end-to-end test has them)."""

import json
import threading
from pathlib import Path

import msgpack
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc

from frontier_api import names, standin_tokenizer
from frontier_picker import datastore, director, endpoints, metrics, processor
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
    # Without a chat template (none configured, none beside the tokenizer) a chat is not tokenized: no
    # preference.
    chat = fleet.request(prompt, messages=[{"role": "user", "content": prompt}])
    cycle = cycles.Cycle(chat, fleet.snapshot(states), rng=None)  # type: ignore[arg-type]
    assert scorer.score(cycle).tolist() == [0.0, 0.0]
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    with pytest.raises(ConfigError, match="does not load"):
        config.load(HEAD + "plugins:" + text.replace(str(path), str(broken)) + PROFILE)


def test_a_chat_is_matched_on_its_rendered_template_and_a_long_one_is_tokenized_in_preparation(
    tmp_path: Path,
):
    tokenizers = pytest.importorskip("tokenizers")
    pytest.importorskip("jinja2")
    words = [f"w{i}" for i in range(200)]
    special = ["<s>", "<|user|>", "<|assistant|>"]
    vocab = {"[UNK]": 0, **{t: i + 1 for i, t in enumerate(special + words)}}
    built = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    built.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    built.add_special_tokens(special)
    path = tmp_path / "tokenizer.json"
    built.save(str(path))
    template = tmp_path / "template.jinja"
    template.write_text(
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    (tmp_path / "tokenizer_config.json").write_text('{"bos_token": "<s>"}')
    text = f"""
- type: kv-events-subscriber
- type: precise-prefix-cache-scorer
  parameters: {{tokenizer: {path}, chatTemplate: {template}, offLoopChars: 200}}
"""
    scheduler = config.load(HEAD + "plugins:" + text + PROFILE)
    source = scheduler.data_sources[0]
    assert isinstance(source, precise_prefix.KvEventsSubscriber)
    content = " ".join(words[:61])  # <s> <|user|> + 61 words + <|assistant|>: 64 tokens, 4 blocks
    engine_ids = [vocab["<s>"], vocab["<|user|>"], *(vocab[w] for w in words[:61]), vocab["<|assistant|>"]]
    source.index.ingest(fleet.key(1), stored(0, [7, 8, 9, 10], engine_ids))
    states = [fleet.state(0), fleet.state(1)]
    short = fleet.request(content, messages=[{"role": "user", "content": "w1 w2"}])
    assert scheduler.preparation(short) is None  # under offLoopChars: tokenized inline when scored
    request = fleet.request(content, messages=[{"role": "user", "content": content}])
    work = scheduler.preparation(request)
    assert work is not None and not request.prepared
    work()
    assert request.prepared == {"precise-prefix-cache-scorer": engine_ids}
    assert scheduler.preparation(request) is None  # prepared once
    scorer = scheduler.destination_profile.scorers[0].scorer
    cycle = cycles.Cycle(request, fleet.snapshot(states), rng=None)  # type: ignore[arg-type]
    assert scorer.score(cycle).tolist() == [0.0, 1.0]
    with pytest.raises(ConfigError, match=r"chatTemplate.*needs a model's tokenizer\.json"):
        config.load(HEAD + "plugins:" + text.replace(str(path), "standin") + PROFILE)
    with pytest.raises(ConfigError, match=r"'chatTemplate' is .*not a file"):
        config.load(HEAD + "plugins:" + text.replace(str(template), str(tmp_path / "none")) + PROFILE)


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


async def test_the_ext_proc_stream_tokenizes_a_long_prompt_in_a_worker_thread_then_routes_on_it():
    text = HEAD + (
        "plugins:\n- type: kv-events-subscriber\n- type: precise-prefix-cache-scorer\n"
        "  parameters: {offLoopChars: 1000}\n"
    )
    scheduler = config.load(text + PROFILE)
    source = scheduler.data_sources[0]
    assert isinstance(source, precise_prefix.KvEventsSubscriber)
    store = datastore.Datastore()
    store.replace(endpoints.Endpoint(name=f"e{i}", address=f"10.0.0.{i}", port=8000) for i in (1, 2))
    own_metrics = metrics.create()
    context = processor.Context(
        director=director.Director(scheduler=scheduler, store=store, metrics=own_metrics),
        metrics=own_metrics,
        settings=processor.Settings(),
    )
    prompt = "word " * 1000  # 5,000 characters: past offLoopChars
    ids = standin_tokenizer.encode(prompt)
    source.index.ingest("10.0.0.2:8000", stored(0, list(range(len(ids) // 16)), ids[: len(ids) // 16 * 16]))
    stream = processor.Stream(context)
    header_map = base_pb2.HeaderMap(
        headers=[
            base_pb2.HeaderValue(key=k, raw_value=v.encode())
            for k, v in ((":path", "/v1/completions"), ("x-request-id", "r1"))
        ]
    )
    stream.on_message(ext_proc.ProcessingRequest(request_headers=ext_proc.HttpHeaders(headers=header_map)))
    data = json.dumps({"model": "m", "prompt": prompt}).encode()
    body = ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=data, end_of_stream=True))
    assert stream.on_message(body) == []  # no decision yet: the prompt is tokenized first
    assert stream.preparing is not None and stream.flight is None
    work, threads = stream.preparing, []

    def recorded() -> None:
        threads.append(threading.get_ident())
        work()

    stream.preparing = recorded
    await processor.Processor._prepare(stream)
    assert threads and threads[0] != threading.get_ident()  # not the event loop's thread
    assert stream.request is not None and stream.request.prepared["precise-prefix-cache-scorer"] == ids
    decision, *_ = stream.resume()
    mutation = decision.request_headers.response.header_mutation
    sent = {o.header.key: o.header.raw_value.decode() for o in mutation.set_headers}
    assert sent[names.DESTINATION_ENDPOINT].split(",")[0] == "10.0.0.2:8000"
