"""The engine core: one vLLM server's KV cache and batch scheduler, with no clock and no I/O.

A driver calls `Engine.add_request(...)` and `Engine.step()`; each step schedules a batch, prices it with
`timing.StepModel` and returns a `StepResult`: its duration in model seconds, the tokens each request emitted,
the requests that finished and the KV events of the step. A real-time server sleeps `duration` (scaled)
between `begin_step()` and `complete_step()`; a virtual-time simulator advances its clock by `duration`.
Nothing here awaits, sleeps, or reads a clock.

What it models, following vLLM V1:
- *KV cache*: `num_gpu_blocks` blocks of `block_size` tokens. Usage = 1 - free/total, where free blocks
  include cached blocks no request holds.
- *Automatic prefix caching*: a full block is named by a chained hash
  `xxh64(parent_hash (8 bytes LE) + token ids (uint32 LE) + adapter name, seed=hash_seed)`, registered when
  its KV is computed (a `BlockStored` event) and found again by later prompts. Blocks are reference-counted;
  freed blocks keep their hash and join the tail of a free queue, allocated (and, if cached, evicted: a
  `BlockRemoved` event) from its head, so the least recently freed go first. A request frees its blocks tail
  first, so its last blocks are evicted before its shared prefix. At most `prompt_len - 1` tokens hit, so
  every request computes at least one token.
- *Continuous batching*: running requests first (decodes and unfinished prefill chunks), then the FCFS waiting
  queue while `max_num_seqs` and the `max_num_batched_tokens` budget allow; prompts longer than the budget are
  prefilled in chunks. A waiting request that does not fit blocks the queue behind it (FCFS).
- *Preemption by recompute*: when a running request needs a block and none is free, the most recently admitted
  running request loses its blocks and goes back to the head of the queue; it later recomputes prompt and
  output so far (usually hitting its own cached blocks).
- *Speculative decoding*: a decode verifies `1 + num_speculative_tokens` positions and emits 1 + accepted,
  each drafted token accepted with probability `acceptance_rate` until the first rejection (seeded RNG).
- *LoRA*: at most `max_loras` adapters among running requests; a waiting request whose adapter would exceed
  that is skipped this step; an adapter not resident on the GPU costs `lora_load_s` in the step that loads it.
- *Prefill/decode*: `prefill_only` requests stop after their first token and report their block ids;
  `kv_transferred` requests arrive with their prompt's KV already loaded (a decode endpoint after the KV
  transfer) and compute only the last prompt token.

Generated token ids depend only on the prompt and position, so the same request gives the same tokens on any
engine, aggregated or disaggregated.
"""

import array
import collections
import dataclasses
import enum
import random
from collections.abc import Sequence

import xxhash

from frontier_sim import timing, tokenizer


@dataclasses.dataclass(slots=True, kw_only=True)
class EngineConfig:
    """Engine settings, named as the `vllm serve` flags they come from."""

    num_gpu_blocks: int
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 131072
    enable_prefix_caching: bool = True
    num_speculative_tokens: int = 0
    acceptance_rate: float = 0.7
    enable_lora: bool = False
    max_loras: int = 1
    lora_load_s: float = 0.02
    seed: int = 0
    hash_seed: int = 0


# --- KV events (what vLLM publishes; the server encodes them on the wire) -----------------------------------
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BlockStored:
    """Blocks whose KV was computed and is now findable by prefix lookups."""

    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str = "GPU"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BlockRemoved:
    """Cached blocks that were evicted (reused for other tokens)."""

    block_hashes: list[int]
    medium: str = "GPU"


@dataclasses.dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    """The whole prefix cache was reset."""


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclasses.dataclass(slots=True, kw_only=True, eq=False)
class EngineRequest:
    """One request inside the engine (prompt, generated tokens, KV blocks, progress)."""

    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    eos_after: int | None  # the simulated model ends its answer (EOS) after this many tokens; None: never
    lora: str | None
    prefill_only: bool
    kv_transferred: bool
    seed: int
    output_token_ids: list[int] = dataclasses.field(default_factory=list)
    num_tokens: int = 0  # prompt + generated, kept up to date (read on every step)
    num_computed: int = 0
    num_cached_tokens: int = -1  # prefix-cache hit at first scheduling; -1 before
    blocks: list[int] = dataclasses.field(default_factory=list)
    block_hashes: list[int] = dataclasses.field(default_factory=list)  # of full blocks, computed lazily
    num_registered: int = 0  # leading blocks already in the prefix cache (hit or registered)
    status: Status = Status.WAITING
    aborted: bool = False
    num_preemptions: int = 0

    def tokens_left(self, max_model_len: int) -> int:
        """Tokens it may still emit before it ends: at max_tokens, at EOS or at the context limit."""
        done = len(self.output_token_ids)
        left = min(self.max_tokens - done, max_model_len - self.num_tokens)
        return left if self.eos_after is None else min(left, self.eos_after - done)

    def tokens(self, start: int, end: int) -> list[int]:
        p = len(self.prompt_token_ids)
        if end <= p:
            return self.prompt_token_ids[start:end]
        if start >= p:
            return self.output_token_ids[start - p : end - p]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - p]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FinishedRequest:
    """A request that left the engine, with what the API reports about it."""

    request_id: str
    finish_reason: str  # "length", "stop" (EOS) or "abort"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    block_ids: list[int]  # its KV blocks when it finished (prefill-only requests hand these to the decoder)
    num_preemptions: int


@dataclasses.dataclass(slots=True, kw_only=True)
class StepResult:
    """What one step did; `duration` is model seconds (0 when nothing was scheduled)."""

    duration: float
    outputs: dict[str, list[int]]
    finished: list[FinishedRequest]
    events: list[KVEvent]
    preempted: list[str]
    num_prefill_tokens: int
    num_decode_seqs: int
    lora_loads: int


@dataclasses.dataclass(slots=True, kw_only=True)
class EngineStats:
    """Monotonic counters since start, as vLLM's Prometheus counters report them."""

    prompt_tokens: int = 0  # prompt tokens of requests that produced their first token
    generation_tokens: int = 0  # generated tokens (counted as emitted)
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # of those, tokens found
    preemptions: int = 0
    finished_requests: int = 0
    aborted_requests: int = 0
    steps: int = 0
    busy_s: float = 0.0  # summed step durations


@dataclasses.dataclass(slots=True, kw_only=True)
class _Scheduled:
    seq: EngineRequest
    num_new: int
    decode: bool


@dataclasses.dataclass(slots=True, kw_only=True)
class ScheduledStep:
    """A step between `begin_step` and `complete_step`: the batch and its duration."""

    duration: float
    batch: list[_Scheduled]
    events: list[KVEvent]
    preempted: list[str]
    lora_loads: int


class BlockPool:
    """KV blocks: reference counts, the hash each full block holds, and the LRU free queue."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref_cnt = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.free: collections.OrderedDict[int, None] = collections.OrderedDict.fromkeys(range(num_blocks))
        self.cached: dict[int, int] = {}  # block hash -> block id
        self.events: list[KVEvent] = []

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self.free) / self.num_blocks

    def lookup(self, hashes: Sequence[int]) -> list[int]:
        """Blocks holding the longest cached prefix of `hashes`."""
        found = []
        for h in hashes:
            block = self.cached.get(h)
            if block is None:
                break
            found.append(block)
        return found

    def touch(self, blocks: Sequence[int]) -> None:
        for b in blocks:
            if self.ref_cnt[b] == 0:
                del self.free[b]
            self.ref_cnt[b] += 1

    def allocate(self, n: int) -> list[int]:
        """Take `n` blocks from the head of the free queue, evicting the cached ones (caller checked room)."""
        taken = []
        evicted = []
        for _ in range(n):
            b, _none = self.free.popitem(last=False)
            h = self.block_hash[b]
            if h is not None:
                self.block_hash[b] = None
                if self.cached.get(h) == b:
                    del self.cached[h]
                    evicted.append(h)
            self.ref_cnt[b] = 1
            taken.append(b)
        if evicted:
            self.events.append(BlockRemoved(block_hashes=evicted))
        return taken

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference to each block; unreferenced ones join the free queue tail, last block first."""
        for b in reversed(blocks):
            self.ref_cnt[b] -= 1
            if self.ref_cnt[b] == 0:
                self.free[b] = None

    def register(self, block: int, block_hash: int) -> bool:
        """Make `block` findable under `block_hash`; False if another block already holds that hash."""
        if block_hash in self.cached:
            return False
        self.block_hash[block] = block_hash
        self.cached[block_hash] = block
        return True

    def reset(self) -> bool:
        """Forget every cached hash; refused (False) while any block is in use, as vLLM does."""
        if len(self.free) != self.num_blocks:
            return False
        self.cached.clear()
        self.block_hash = [None] * self.num_blocks
        self.events.append(AllBlocksCleared())
        return True


def block_hash(parent: int | None, tokens: Sequence[int], lora: str | None, seed: int) -> int:
    """The chained hash that names a full block (see module doc)."""
    data = (parent or 0).to_bytes(8, "little") + array.array("I", tokens).tobytes()
    if lora:
        data += lora.encode()
    return xxhash.xxh64_intdigest(data, seed=seed)


class Engine:
    """One simulated vLLM engine; see the module doc for what it models."""

    def __init__(self, config: EngineConfig, model: timing.StepModel) -> None:
        if config.num_gpu_blocks <= 0 or config.block_size <= 0:
            raise ValueError("num_gpu_blocks and block_size must be positive")
        self.config = config
        self.model = model
        self.pool = BlockPool(config.num_gpu_blocks, config.block_size)
        self.waiting: collections.deque[EngineRequest] = collections.deque()
        self.running: list[EngineRequest] = []
        self.requests: dict[str, EngineRequest] = {}
        self.stats = EngineStats()
        self.lora_ids: dict[str, int] = {}
        self.resident_loras: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._lora_serial = 0
        self._rng = random.Random(config.seed)
        self._in_flight: ScheduledStep | None = None
        self._pending_finished: list[FinishedRequest] = []

    # --- state the server reports -------------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def kv_usage(self) -> float:
        return self.pool.usage

    def between_steps(self) -> bool:
        """True when no step is scheduled and unfinished, and no finished request awaits collection: the
        state in which a driver may advance the core itself (the virtual-time cluster's decode runs)."""
        return self._in_flight is None and not self._pending_finished

    def has_work(self) -> bool:
        return bool(self.running or self.waiting or self._pending_finished or self.pool.events)

    def running_loras(self) -> set[str]:
        return {s.lora for s in self.running if s.lora}

    def waiting_loras(self) -> set[str]:
        return {s.lora for s in self.waiting if s.lora}

    # --- requests -----------------------------------------------------------------------------------------
    def add_lora(self, name: str) -> int:
        """Register an adapter by name (as /v1/load_lora_adapter does); returns its integer id."""
        if not self.config.enable_lora:
            raise ValueError("LoRA adapters need --enable-lora")
        if name not in self.lora_ids:
            self._lora_serial += 1  # ids are never reused, so events never confuse two adapters
            self.lora_ids[name] = self._lora_serial
        return self.lora_ids[name]

    def remove_lora(self, name: str) -> bool:
        if name not in self.lora_ids or any(s.lora == name for s in self.requests.values()):
            return False
        del self.lora_ids[name]
        self.resident_loras.pop(name, None)
        return True

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        *,
        max_tokens: int,
        eos_after: int | None = None,
        lora: str | None = None,
        prefill_only: bool = False,
        kv_transferred: bool = False,
        seed: int | None = None,
    ) -> None:
        """Queue a request; raises ValueError (an HTTP 400) when it cannot ever run on this engine.
        `eos_after`: the answer's own length (the model emits EOS after that many tokens, unless
        `max_tokens` stops it first); None: it runs to `max_tokens`."""
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in the engine")
        prompt_len = len(prompt_token_ids)
        if prompt_len == 0:
            raise ValueError("the prompt is empty")
        if max_tokens < 1:
            raise ValueError(f"max_tokens={max_tokens}; must be >= 1")
        if eos_after is not None and eos_after < 1:
            raise ValueError(f"eos_after={eos_after}; must be >= 1")
        if prompt_len + max_tokens > self.config.max_model_len:
            raise ValueError(
                f"This model's maximum context length is {self.config.max_model_len} tokens; the request has "
                f"{prompt_len} prompt tokens and max_tokens={max_tokens}"
            )
        needed = -(-(prompt_len + max_tokens + self.config.num_speculative_tokens) // self.config.block_size)
        if needed > self.config.num_gpu_blocks:
            raise ValueError(
                f"the request needs {needed} KV blocks; the cache has {self.config.num_gpu_blocks}"
            )
        if lora is not None and lora not in self.lora_ids:
            raise ValueError(f"LoRA adapter {lora!r} is not loaded")
        seq = EngineRequest(
            request_id=request_id,
            prompt_token_ids=prompt_token_ids,
            max_tokens=1 if prefill_only else max_tokens,
            eos_after=None if prefill_only else eos_after,
            lora=lora,
            prefill_only=prefill_only,
            kv_transferred=kv_transferred,
            seed=tokenizer.prompt_seed(prompt_token_ids) if seed is None else seed,
            num_tokens=prompt_len,
        )
        self.requests[request_id] = seq
        self.waiting.append(seq)

    def abort(self, request_id: str) -> bool:
        """Stop a request and free its blocks (at the end of the step in flight, if it is in one)."""
        seq = self.requests.get(request_id)
        if seq is None or seq.aborted:
            return False
        seq.aborted = True
        if self._in_flight is None:
            self._drop_aborted()
        return True

    def cached_prefix_tokens(self, token_ids: Sequence[int], lora: str | None = None) -> int:
        """Prompt tokens a request with `token_ids` would find in the prefix cache now (no side effects)."""
        if not self.config.enable_prefix_caching:
            return 0
        bs = self.config.block_size
        parent: int | None = None
        found = 0
        for i in range((len(token_ids) - 1) // bs):
            parent = block_hash(parent, token_ids[i * bs : (i + 1) * bs], lora, self.config.hash_seed)
            if parent not in self.pool.cached:
                break
            found += 1
        return found * bs

    def reset_prefix_cache(self) -> bool:
        return self.pool.reset()

    # --- stepping -----------------------------------------------------------------------------------------
    def step(self) -> StepResult:
        """Schedule and run one step (for drivers that need no gap between the two)."""
        return self.complete_step(self.begin_step())

    def begin_step(self) -> ScheduledStep:
        """Schedule the next batch and price it; the engine state now reflects the batch running."""
        if self._in_flight is not None:
            raise RuntimeError("begin_step called twice without complete_step")
        self._drop_aborted()
        scheduled = self._schedule()
        self._in_flight = scheduled
        return scheduled

    def complete_step(self, scheduled: ScheduledStep) -> StepResult:
        """Finish the step: emit tokens, register full blocks, retire finished requests."""
        if scheduled is not self._in_flight:
            raise RuntimeError("complete_step needs the step begin_step returned")
        self._in_flight = None
        cfg = self.config
        bs = cfg.block_size
        outputs: dict[str, list[int]] = {}
        finished = self._pending_finished
        self._pending_finished = []
        prefill_tokens = 0
        decode_seqs = 0
        any_done = False
        for item in scheduled.batch:
            seq = item.seq
            if seq.aborted:
                continue
            if item.decode:
                decode_seqs += 1
                accepted = 0
                for _ in range(item.num_new - 1):
                    if self._rng.random() >= cfg.acceptance_rate:
                        break
                    accepted += 1
                emit = 1 + accepted
                seq.num_computed += emit
            else:
                prefill_tokens += item.num_new
                seq.num_computed += item.num_new
                emit = 1 if seq.num_computed >= seq.num_tokens else 0
            if emit:
                emit = min(emit, seq.tokens_left(cfg.max_model_len))
                start = seq.num_tokens
                new = [tokenizer.output_token(seq.seed, start + i) for i in range(emit)]
                if not seq.output_token_ids and not seq.num_preemptions:
                    self.stats.prompt_tokens += len(seq.prompt_token_ids)
                seq.output_token_ids.extend(new)
                seq.num_tokens += emit
                seq.num_computed = min(seq.num_computed, seq.num_tokens - 1)
                outputs[seq.request_id] = new
                self.stats.generation_tokens += emit
            if seq.num_computed // bs > seq.num_registered:
                self.register_full_blocks(seq)
            if len(seq.output_token_ids) >= seq.max_tokens or seq.num_tokens >= cfg.max_model_len:
                finished.append(self._finish(seq, "length"))
                any_done = True
            elif seq.eos_after is not None and len(seq.output_token_ids) >= seq.eos_after:
                finished.append(self._finish(seq, "stop"))
                any_done = True
        if any_done:
            self.running = [s for s in self.running if s.status is Status.RUNNING]
        self._drop_aborted(finished)
        self.stats.steps += 1 if scheduled.batch else 0
        self.stats.busy_s += scheduled.duration
        events = scheduled.events + self.pool.events
        self.pool.events = []
        return StepResult(
            duration=scheduled.duration,
            outputs=outputs,
            finished=finished,
            events=events,
            preempted=scheduled.preempted,
            num_prefill_tokens=prefill_tokens,
            num_decode_seqs=decode_seqs,
            lora_loads=scheduled.lora_loads,
        )

    # --- internals ----------------------------------------------------------------------------------------
    def _finish(self, seq: EngineRequest, reason: str) -> FinishedRequest:
        blocks = seq.blocks
        self.pool.release(blocks)
        seq.blocks = []
        seq.status = Status.FINISHED
        del self.requests[seq.request_id]
        if reason == "abort":
            self.stats.aborted_requests += 1
        else:
            self.stats.finished_requests += 1
        return FinishedRequest(
            request_id=seq.request_id,
            finish_reason=reason,
            prompt_tokens=len(seq.prompt_token_ids),
            completion_tokens=len(seq.output_token_ids),
            cached_tokens=max(seq.num_cached_tokens, 0),
            block_ids=blocks,
            num_preemptions=seq.num_preemptions,
        )

    def _drop_aborted(self, into: list[FinishedRequest] | None = None) -> None:
        out = self._pending_finished if into is None else into
        if any(s.aborted for s in self.waiting):
            for s in [s for s in self.waiting if s.aborted]:
                out.append(self._finish(s, "abort"))
            self.waiting = collections.deque(s for s in self.waiting if not s.aborted)
        if any(s.aborted for s in self.running):
            for s in [s for s in self.running if s.aborted]:
                out.append(self._finish(s, "abort"))
            self.running = [s for s in self.running if not s.aborted]

    def _hashes(self, seq: EngineRequest, full_blocks: int) -> list[int]:
        """The chained hashes of `seq`'s first `full_blocks` blocks, extending the cached list."""
        bs = self.config.block_size
        hashes = seq.block_hashes
        while len(hashes) < full_blocks:
            i = len(hashes)
            parent = hashes[-1] if hashes else None
            hashes.append(
                block_hash(parent, seq.tokens(i * bs, (i + 1) * bs), seq.lora, self.config.hash_seed)
            )
        return hashes

    def register_full_blocks(self, seq: EngineRequest) -> None:
        """Put `seq`'s newly completed KV blocks in the prefix cache (a driver that advances decoding itself
        calls this after moving `num_computed`)."""
        if not self.config.enable_prefix_caching:
            return
        bs = self.config.block_size
        full = min(seq.num_computed // bs, len(seq.blocks))
        if full <= seq.num_registered:
            return
        first = seq.num_registered
        hashes = self._hashes(seq, full)
        lora_id = self.lora_ids.get(seq.lora) if seq.lora else None
        run: list[int] = []  # consecutive newly registered blocks: one BlockStored each run
        for i in range(first, full + 1):
            if i < full and self.pool.register(seq.blocks[i], hashes[i]):
                run.append(i)
                continue
            if run:
                start, end = run[0], run[-1] + 1
                self.pool.events.append(
                    BlockStored(
                        block_hashes=hashes[start:end],
                        parent_block_hash=hashes[start - 1] if start else None,
                        token_ids=seq.tokens(start * bs, end * bs),
                        block_size=bs,
                        lora_id=lora_id,
                    )
                )
                run = []
        seq.num_registered = full

    def _preempt(self, seq: EngineRequest) -> None:
        self.pool.release(seq.blocks)
        seq.blocks = []
        seq.num_computed = 0
        seq.num_registered = 0
        seq.status = Status.WAITING
        seq.num_preemptions += 1
        self.stats.preemptions += 1
        self.waiting.appendleft(seq)

    def _schedule(self) -> ScheduledStep:
        cfg = self.config
        pool = self.pool
        budget = cfg.max_num_batched_tokens
        batch: list[_Scheduled] = []
        preempted: list[str] = []
        spec = cfg.num_speculative_tokens
        bs = cfg.block_size
        running = self.running
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            remaining = seq.num_tokens - seq.num_computed
            decode = remaining == 1 and bool(seq.output_token_ids)
            num_new = 1 + spec if decode else min(remaining, budget)
            if decode and num_new > budget:
                break
            need = -(-(seq.num_computed + num_new) // bs) - len(seq.blocks)
            while need > pool.num_free:
                victim = running.pop()
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is seq:
                    break
            if seq.status is not Status.RUNNING:
                break
            if need > 0:
                seq.blocks.extend(pool.allocate(need))
            batch.append(_Scheduled(seq=seq, num_new=num_new, decode=decode))
            budget -= num_new
            i += 1
        lora_loads = 0
        if not preempted:
            lora_loads = self._admit(batch, budget)
        chunks: list[timing.PrefillChunk] = []
        decodes = 0
        context = 0
        for item in batch:
            if item.decode:
                decodes += 1
                context += item.seq.num_computed
            else:
                chunks.append(timing.PrefillChunk(new=item.num_new, cached=item.seq.num_computed))
        duration = 0.0
        if batch:
            duration = self.model.step_time(
                chunks=chunks, batch=decodes, query_tokens=1 + spec, context_tokens=context
            )
            duration += lora_loads * cfg.lora_load_s
        events = pool.events
        pool.events = []
        return ScheduledStep(
            duration=duration, batch=batch, events=events, preempted=preempted, lora_loads=lora_loads
        )

    def _admit(self, batch: list[_Scheduled], budget: int) -> int:
        """Move waiting requests into the batch (FCFS); returns how many LoRA adapters had to be loaded."""
        cfg = self.config
        pool = self.pool
        bs = cfg.block_size
        skipped: list[EngineRequest] = []
        active_loras = self.running_loras()
        lora_loads = 0
        while self.waiting and budget > 0 and len(self.running) < cfg.max_num_seqs:
            seq = self.waiting[0]
            if seq.lora and seq.lora not in active_loras and len(active_loras) >= cfg.max_loras:
                skipped.append(self.waiting.popleft())
                continue
            hit: list[int] = []
            if cfg.enable_prefix_caching:
                lookup = (seq.num_tokens - 1) // bs
                hit = pool.lookup(self._hashes(seq, lookup)[:lookup])
            cached = len(hit) * bs
            if seq.kv_transferred and not seq.output_token_ids:
                # Decode endpoint: the prompt's KV came from the prefill endpoint; compute the last token.
                start = max(cached, seq.num_tokens - 1)
            else:
                start = cached
            num_new = min(seq.num_tokens - start, budget)
            need = -(-(start + num_new) // bs) - len(hit)
            evictable_hits = sum(1 for b in hit if pool.ref_cnt[b] == 0)
            if need > pool.num_free - evictable_hits:
                break
            self.waiting.popleft()
            pool.touch(hit)
            seq.blocks = hit + pool.allocate(need)
            seq.num_computed = start
            seq.num_registered = len(hit)
            if seq.num_cached_tokens < 0:
                seq.num_cached_tokens = cached
            self.stats.prefix_cache_queries += seq.num_tokens
            self.stats.prefix_cache_hits += cached
            if seq.lora:
                active_loras.add(seq.lora)
                if seq.lora not in self.resident_loras:
                    lora_loads += 1
                self.resident_loras[seq.lora] = None
                self.resident_loras.move_to_end(seq.lora)
                while len(self.resident_loras) > cfg.max_loras:
                    self.resident_loras.popitem(last=False)
            seq.status = Status.RUNNING
            self.running.append(seq)
            batch.append(_Scheduled(seq=seq, num_new=num_new, decode=False))
            budget -= num_new
        self.waiting.extendleft(reversed(skipped))
        return lora_loads
