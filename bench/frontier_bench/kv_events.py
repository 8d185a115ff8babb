"""Costs of precise prefix routing: the KV block index's memory, event ingestion rate, and scoring time.

- *Memory*: `kv_events.BlockIndex` filled through its real ingestion path (msgpack `BlockStored` batches of
  64 blocks, as the simulator encodes them) to `--blocks` blocks per endpoint (default 27,255: the simulated
  H100's KV cache for the 8B model at 0.9 GPU memory utilization, the most an engine can report), at
  `--endpoints` endpoints. Two sharing cases: every block distinct (the worst case), and a quarter of each
  endpoint's blocks being some of 256 system prompts of 1,024 tokens shared across the pool. The resident-set
  growth of a process filling the whole of it, and tracemalloc's requested bytes at a tenth of the endpoints.
- *Ingestion*: a full index at steady state, batches that store k blocks and remove k others (k = 1: a
  decode step finishing one block; k = 32: a 512-token prefill chunk), decoded and applied; blocks/s and
  batches/s of one core (thread CPU time). And the same through real ZMQ sockets: a publisher process
  sends as fast as it can to the picker's `Subscriber`; received batches/s and the gaps it saw.
- *Scoring*: tokenization (the stand-in tokenizer), block keys and the match over the candidates, per
  request, for prompts of 2k, 16k and 128k tokens at 100 and 1,000 endpoints (each holding 16 prompts, a
  tenth of them the request's prefix); thread CPU time, p50/p99. And what a model's tokenizer costs instead:
  a 32,000-merge BPE (Hugging Face `tokenizers`, trained here on generated words) encoding the same sizes.
- *Chat tokenization* (`--sections chat`): what `precise-prefix-cache-scorer` does per chat request with a
  model's tokenizer (`frontier_picker.tokenization.FileTokenizer`): render a Llama-3-style chat template
  and encode the text with the same BPE, at 1k, 8k and 32k tokens; thread CPU p50/p99. And what it
  does to the event loop: the longest gap a 1 ms ticker task saw while 20 such requests were tokenized
  inline on the loop, against in a worker thread (`run_in_executor`, as the ext_proc stream does above
  `offLoopChars`).

Every figure comes from a fresh process. Run:
  python -m frontier_bench.kv_events --out bench/results [--endpoints 1000 --blocks 27255]
"""

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import multiprocessing
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from frontier_api import standin_tokenizer
from frontier_picker import endpoints, kv_events, kv_subscriber, tokenization
from frontier_picker.scheduling import types
from frontier_picker.scheduling.framework import cycles
from frontier_picker.scheduling.plugins import precise_prefix

BLOCK = 16
RUN = 64  # blocks per BlockStored event when filling
H100_8B_BLOCKS = 27_255


def _frames(seq: int, events: list[Any]) -> list[bytes]:
    return [b"kv", seq.to_bytes(8, "big"), msgpack.packb([0.0, events, 0])]


def _stored(hashes: list[int], parent: int | None, tokens: list[int]) -> list[Any]:
    return ["BlockStored", hashes, parent, tokens, BLOCK, None, "GPU"]


def _tokens(rng: random.Random, count: int) -> list[int]:
    ids: list[int] = np.random.default_rng(rng.getrandbits(64)).integers(1, 128_000, size=count).tolist()
    return ids


def fill(index: kv_events.BlockIndex, *, endpoints_n: int, blocks: int, shared: bool, seed: int) -> None:
    """Fill every endpoint to `blocks` blocks through `ingest` (a quarter shared system prompts if shared)."""
    rng = random.Random(seed)
    systems = [_tokens(rng, RUN * BLOCK) for _ in range(256)] if shared else []
    next_hash = 1
    for e in range(endpoints_n):
        key = f"10.{e // 250}.{e % 250}.1:8000"
        seq = 0
        held = 0
        if shared:
            for s in rng.sample(range(len(systems)), k=min(len(systems), max(1, blocks // 4 // RUN))):
                hashes = list(range(next_hash, next_hash + RUN))
                next_hash += RUN
                index.ingest(key, _frames(seq, [_stored(hashes, None, systems[s])]))
                seq += 1
                held += RUN
        while held < blocks:
            n = min(RUN, blocks - held)
            hashes = list(range(next_hash, next_hash + n))
            next_hash += n
            index.ingest(key, _frames(seq, [_stored(hashes, None, _tokens(rng, n * BLOCK))]))
            seq += 1
            held += n


def memory(endpoints_n: int, blocks: int, *, shared: bool, traced: bool) -> dict[str, Any]:
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if traced:
        tracemalloc.start()
    index = kv_events.BlockIndex(block_size=BLOCK)
    fill(index, endpoints_n=endpoints_n, blocks=blocks, shared=shared, seed=1)
    if traced:
        size, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    else:
        size = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    entries = index.entries()
    return {
        "endpoints": endpoints_n,
        "blocks_per_endpoint": blocks,
        "shared": shared,
        "measured_by": "tracemalloc" if traced else "RSS growth",
        "entries": entries,
        "keys": index.keys(),
        "bytes": size,
        "bytes_per_entry": round(size / entries, 1),
    }


def ingestion(k: int, *, blocks: int = H100_8B_BLOCKS, batches: int = 20_000) -> dict[str, Any]:
    """Steady state on one full endpoint: each batch stores k new blocks (one chained run) and removes k."""
    index = kv_events.BlockIndex(block_size=BLOCK)
    fill(index, endpoints_n=1, blocks=blocks, shared=False, seed=2)
    key = "10.0.0.1:8000"
    rng = random.Random(3)
    held = collections.deque(range(1, blocks + 1))  # the fill's engine hashes, oldest first
    fresh = 10_000_000
    seq = -(-blocks // RUN)  # the fill's batches
    messages = []
    for _ in range(batches):
        hashes = list(range(fresh, fresh + k))
        fresh += k
        held.extend(hashes)
        removed = [held.popleft() for _ in range(k)]
        events = [_stored(hashes, None, _tokens(rng, k * BLOCK)), ["BlockRemoved", removed, "GPU"]]
        messages.append(_frames(seq, events))
        seq += 1
    gc.collect()
    started = time.thread_time()
    for message in messages:
        index.ingest(key, message)
    spent = time.thread_time() - started
    assert index.size(key) == blocks
    return {
        "blocks_per_batch": k,
        "batches": batches,
        "batches_per_s": round(batches / spent),
        "stored_blocks_per_s": round(batches * k / spent),
        "events_per_s": round(2 * batches / spent),
    }


def _publish(address: str, k: int, batches: int, ready: Any, began: Any) -> None:
    import zmq

    context = zmq.Context()
    socket = context.socket(zmq.PUB)
    socket.setsockopt(zmq.SNDHWM, 1_000_000)
    socket.bind(address)
    ready.wait()
    time.sleep(0.5)  # slow joiner
    rng = random.Random(4)
    payloads = []
    for b in range(batches):
        hashes = list(range(b * k + 1, b * k + k + 1))
        removed = list(range(b * k - 4 * k + 1, b * k - 3 * k + 1)) if b >= 4 else []
        events = [_stored(hashes, None, _tokens(rng, k * BLOCK)), ["BlockRemoved", removed, "GPU"]]
        payloads.append(msgpack.packb([0.0, events, 0]))
    began.value = time.monotonic()  # CLOCK_MONOTONIC: the same clock in the subscriber's process
    for seq, payload in enumerate(payloads):
        socket.send_multipart([b"kv", seq.to_bytes(8, "big"), payload])
    time.sleep(2)
    socket.close(linger=1000)
    context.term()


def zmq_ingestion(k: int, *, batches: int = 40_000) -> dict[str, Any]:
    """Batches/s the subscriber keeps up with through real sockets, and the gaps it saw."""
    address = f"tcp://127.0.0.1:{20000 + random.Random().randrange(20000)}"
    endpoint = endpoints.Endpoint(
        name="e",
        address="127.0.0.1",
        port=8000,
        labels={"inference.frontier.dev/kv-events-port": address.rsplit(":", 1)[1]},
    )
    state = endpoints.EndpointState(endpoint=endpoint)
    ready = multiprocessing.Event()
    began = multiprocessing.Value("d", 0.0)
    publisher = multiprocessing.Process(target=_publish, args=(address, k, batches, ready, began))
    publisher.start()

    async def consume() -> dict[str, Any]:
        index = kv_events.BlockIndex(block_size=BLOCK)
        subscriber = kv_subscriber.Subscriber(index, lambda: [state], reconcile_s=0.05)
        task = asyncio.get_running_loop().create_task(subscriber.run())
        await asyncio.sleep(0.2)
        ready.set()
        done = time.monotonic()
        deadline = done + 120
        last = -1
        while time.monotonic() < deadline and subscriber.batches < batches:
            await asyncio.sleep(0.01)
            if subscriber.batches != last:
                last, done = subscriber.batches, time.monotonic()
            elif began.value and done - began.value > 0 and time.monotonic() - done > 3:
                break  # nothing more arrives: the rest was dropped
        elapsed = done - began.value
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return {
            "blocks_per_batch": k,
            "sent": batches,
            "received": subscriber.batches,
            "gaps": subscriber.gaps,
            "batches_per_s": round(subscriber.batches / max(elapsed, 1e-9)),
        }

    result = asyncio.run(consume())
    publisher.join(10)
    return result


def scoring(endpoints_n: int, tokens: int, *, requests: int = 50) -> dict[str, Any]:
    """Tokenization + block keys + match per request, thread CPU time."""
    rng = random.Random(5)
    text = "".join(f"{rng.randrange(16**4):04x}" for _ in range(tokens))  # one stand-in token per 4 chars
    ids = standin_tokenizer.encode(text)
    index = kv_events.BlockIndex(block_size=BLOCK)
    states = []
    for e in range(endpoints_n):
        key = f"10.{e // 250}.{e % 250}.1"
        states.append(endpoints.EndpointState(endpoint=endpoints.Endpoint(name=key, address=key, port=8000)))
        seq = 0
        if e % 10 == 0:  # a tenth hold the request's prefix (all of it, or half)
            held = ids[: (tokens if e % 20 == 0 else tokens // 2) // BLOCK * BLOCK]
            index.ingest(f"{key}:8000", _frames(seq, [_stored(list(range(len(held) // BLOCK)), None, held)]))
            seq += 1
        for p in range(16):
            other = _tokens(rng, 2048)
            index.ingest(
                f"{key}:8000", _frames(seq, [_stored([10**6 + p * 200 + i for i in range(128)], None, other)])
            )
            seq += 1
    scorer = precise_prefix.PrecisePrefixCacheScorer("s", index=index, max_blocks=0)
    snapshot = endpoints.Snapshot(now=0.0, endpoints=states)
    rng_np = np.random.default_rng(0)
    micros = []
    for r in range(requests):
        request = types.Request(request_id=f"r{r}", model="m", target_model="m", prompt=text)
        cycle = cycles.Cycle(request, snapshot, rng=rng_np)
        started = time.thread_time_ns()
        scores = scorer.score(cycle)
        micros.append((time.thread_time_ns() - started) / 1000)
    assert scores.max() == 1.0
    tokenize = []
    for _ in range(min(requests, 20)):
        started = time.thread_time_ns()
        standin_tokenizer.encode(text)
        tokenize.append((time.thread_time_ns() - started) / 1000)
    return {
        "endpoints": endpoints_n,
        "prompt_tokens": tokens,
        "score_p50_us": round(float(np.percentile(micros, 50)), 1),
        "score_p99_us": round(float(np.percentile(micros, 99)), 1),
        "tokenize_p50_us": round(float(np.percentile(tokenize, 50)), 1),
    }


LLAMA3_STYLE_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim "
    "+ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def _bpe(rng: random.Random) -> tuple[Any, list[str]]:
    """A 32,000-merge BPE trained here on generated words (no hub), and its vocabulary of words."""
    import tokenizers

    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "xe", "zu", "an", "el", "or", "um", "is"]
    vocabulary = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(50_000)]
    corpus = [" ".join(rng.choices(vocabulary, k=200)) for _ in range(2_000)]
    model = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="[UNK]"))
    model.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    special = ["[UNK]", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    model.train_from_iterator(
        corpus, tokenizers.trainers.BpeTrainer(vocab_size=32_000, special_tokens=special)
    )
    return model, vocabulary


def hf_tokenization(tokens: int, *, repeats: int = 10) -> dict[str, Any]:
    """A model-sized BPE tokenizer (32,000 merges trained here on generated words: no hub) encoding a prompt
    of about `tokens` tokens, as `precise-prefix-cache-scorer` does with `tokenizer: <tokenizer.json>`."""
    model, vocabulary = _bpe(random.Random(6))
    rng = random.Random(6)
    words = []
    count = 0
    while count < tokens:
        word = rng.choice(vocabulary)
        words.append(word)
        count += len(model.encode(word, add_special_tokens=False).ids)
    text = " ".join(words)
    micros = []
    for _ in range(repeats):
        started = time.thread_time_ns()
        ids = model.encode(text, add_special_tokens=True).ids
        micros.append((time.thread_time_ns() - started) / 1000)
    return {
        "prompt_tokens": len(ids),
        "characters": len(text),
        "encode_p50_us": round(float(np.percentile(micros, 50)), 1),
        "encode_max_us": round(max(micros), 1),
    }


def chat_tokenization(tokens: int, *, repeats: int = 20) -> dict[str, Any]:
    """`FileTokenizer.token_ids` of a chat of about `tokens` tokens (a long system prompt and a question):
    template render, and render + encode, thread CPU; and the event loop's longest gap while 20 of them are
    tokenized inline against in a worker thread."""
    rng = random.Random(7)
    model, vocabulary = _bpe(rng)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tokenizer.json"
        model.save(str(path))
        template = tokenization.ChatTemplate(
            LLAMA3_STYLE_TEMPLATE, special_tokens={"bos_token": "<|begin_of_text|>"}, origin="bench"
        )
        tokenizer = tokenization.FileTokenizer(path, chat_template=template)
    words: list[str] = []
    count = 0
    while count < tokens:
        word = rng.choice(vocabulary)
        words.append(word)
        count += len(model.encode(word, add_special_tokens=False).ids)
    system, question = " ".join(words[: len(words) * 9 // 10]), " ".join(words[len(words) * 9 // 10 :])
    request = types.Request(
        request_id="r",
        model="m",
        target_model="m",
        messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
    )
    assert request.messages is not None
    render_us, total_us = [], []
    ids: list[int] = []
    for _ in range(repeats):
        started = time.thread_time_ns()
        template.render(request.messages)
        render_us.append((time.thread_time_ns() - started) / 1000)
        started = time.thread_time_ns()
        ids = tokenizer.token_ids(request) or []
        total_us.append((time.thread_time_ns() - started) / 1000)

    async def longest_gap(off_loop: bool) -> float:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: None)  # the pool's thread exists before timing
        gaps: list[float] = []
        stop = False

        async def ticker() -> None:
            last = time.perf_counter()
            while not stop:
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        for _ in range(20):
            if off_loop:
                await loop.run_in_executor(None, tokenizer.token_ids, request)
            else:
                tokenizer.token_ids(request)
                await asyncio.sleep(0)
        stop = True
        await task
        return max(gaps) * 1000

    def pct(values: list[float], q: float) -> float:
        return round(float(np.percentile(values, q)), 1)

    return {
        "prompt_tokens": len(ids),
        "characters": len(system) + len(question),
        "render_p50_us": pct(render_us, 50),
        "total_p50_us": pct(total_us, 50),
        "total_p99_us": pct(total_us, 99),
        "loop_gap_inline_ms": round(asyncio.run(longest_gap(False)), 2),
        "loop_gap_worker_ms": round(asyncio.run(longest_gap(True)), 2),
    }


def worker(spec: str) -> dict[str, Any]:
    kind, *rest = spec.split(":")
    if kind in ("memory", "rss"):
        return memory(int(rest[0]), int(rest[1]), shared=rest[2] == "shared", traced=kind == "memory")
    if kind == "ingest":
        return ingestion(int(rest[0]))
    if kind == "zmq":
        return zmq_ingestion(int(rest[0]))
    if kind == "hf":
        return hf_tokenization(int(rest[0]))
    if kind == "score":
        return scoring(int(rest[0]), int(rest[1]))
    if kind == "chat":
        return chat_tokenization(int(rest[0]))
    raise ValueError(f"unknown measurement {spec!r}")


def run(spec: str) -> dict[str, Any]:
    """`spec` measured in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-m", "frontier_bench.kv_events", "--worker", spec], capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"{spec}: exit {done.returncode}\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(spec, result, file=sys.stderr, flush=True)
    return result


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    def shown(value: Any) -> str:
        return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(shown(v) for v in row) + " |" for row in rows]


MEMORY_HEADERS = (
    "endpoints,blocks/endpoint,shared system prompts,measured by,entries,distinct keys,MiB,B/entry"
)
INGEST_HEADERS = "blocks per batch (k),batches/s,stored blocks/s,events/s"
ZMQ_HEADERS = "blocks per batch (k),sent,received,gaps,batches/s received"
HF_HEADERS = "prompt tokens,characters,encode p50 µs,encode max µs"
SCORE_HEADERS = "endpoints,prompt tokens,score p50 µs,score p99 µs,of which tokenization p50 µs"
CHAT_HEADERS = (
    "prompt tokens,characters,template render p50 µs,render + encode p50 µs,render + encode p99 µs,"
    "longest loop gap inline ms,longest loop gap in a worker thread ms"
)
CHAT_FIELDS = [
    "prompt_tokens",
    "characters",
    "render_p50_us",
    "total_p50_us",
    "total_p99_us",
    "loop_gap_inline_ms",
    "loop_gap_worker_ms",
]


def report(results: dict[str, Any]) -> str:
    """The results page: each measured section as a table."""
    mib = 2**20
    memory_fields = ["endpoints", "blocks_per_endpoint", "shared", "measured_by", "entries", "keys"]
    ingest_fields = ["blocks_per_batch", "batches_per_s", "stored_blocks_per_s", "events_per_s"]
    zmq_fields = ["blocks_per_batch", "sent", "received", "gaps", "batches_per_s"]
    hf_fields = ["prompt_tokens", "characters", "encode_p50_us", "encode_max_us"]
    score_fields = ["endpoints", "prompt_tokens", "score_p50_us", "score_p99_us", "tokenize_p50_us"]
    sections: list[tuple[str, str, str, Callable[[dict[str, Any]], list[Any]]]] = [
        (
            "memory",
            "Index memory (tracemalloc: bytes requested; RSS growth: the peak of a separate run)",
            MEMORY_HEADERS,
            lambda r: [*(r[f] for f in memory_fields), round(r["bytes"] / mib), r["bytes_per_entry"]],
        ),
        (
            "ingest",
            "Ingestion on one core: decode + apply at steady state (k blocks stored, k removed)",
            INGEST_HEADERS,
            lambda r: [r[f] for f in ingest_fields],
        ),
        (
            "zmq",
            "Ingestion through ZMQ: a publisher process sending flat out to the picker's Subscriber",
            ZMQ_HEADERS,
            lambda r: [r[f] for f in zmq_fields],
        ),
        (
            "score",
            "Scoring per request: stand-in tokenization + block keys + match, thread CPU",
            SCORE_HEADERS,
            lambda r: [r[f] for f in score_fields],
        ),
        (
            "hf",
            "A model's tokenizer instead: Hugging Face `tokenizers`, a 32,000-merge BPE, thread CPU",
            HF_HEADERS,
            lambda r: [r[f] for f in hf_fields],
        ),
        (
            "chat",
            "Chat requests with a model's tokenizer: chat template render + BPE encode, thread CPU; "
            "the event loop's longest gap over 20 requests",
            CHAT_HEADERS,
            lambda r: [r[f] for f in CHAT_FIELDS],
        ),
    ]
    lines = [
        "# Precise prefix routing: index memory, event ingestion, scoring cost",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}",
    ]
    for key, title, headers, row in sections:
        if results.get(key):
            lines += ["", f"## {title}", "", *_table(headers.split(","), [row(r) for r in results[key]])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--blocks", type=int, default=H100_8B_BLOCKS)
    parser.add_argument("--name", default="kv_events", help="results file stem")
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=["memory", "ingest", "zmq", "score", "hf", "chat"],
        help="measure only these (default: all but chat)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return
    # RSS growth with every endpoint's cache full; tracemalloc at a tenth of the endpoints (its own records
    # cost as much again). The most wanted first: the results are written after every measurement, so a
    # run cut short keeps what it measured.
    plan = [
        ("memory", f"rss:{args.endpoints}:{args.blocks}:distinct"),
        *(("ingest", f"ingest:{k}") for k in (1, 32)),
        *(("zmq", f"zmq:{k}") for k in (1, 32)),
        *(("score", f"score:{n}:{t}") for n in (100, 1000) for t in (2048, 16384, 131072)),
        *(("hf", f"hf:{t}") for t in (2048, 16384, 131072)),
        ("memory", f"rss:{args.endpoints}:{args.blocks}:shared"),
        *(
            ("memory", f"memory:{args.endpoints // 10}:{args.blocks}:{case}")
            for case in ("distinct", "shared")
        ),
        *(("chat", f"chat:{t}") for t in (1024, 8192, 32768)),
    ]
    wanted = set(args.sections or ["memory", "ingest", "zmq", "score", "hf"])
    plan = [(section, spec) for section, spec in plan if section in wanted]
    results: dict[str, Any] = {
        "command": "python -m frontier_bench.kv_events "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for section, spec in plan:
        results.setdefault(section, []).append(run(spec))
        (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / f"{args.name}.md").write_text(report(results))


if __name__ == "__main__":
    main()
