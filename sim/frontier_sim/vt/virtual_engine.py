"""One engine core on the virtual clock, with runs of plain decode steps taken in one go.

The virtual-time cluster drives the same `engine.Engine` the real-time server drives: `begin_step()`, advance
the clock by the step's duration, `complete_step()`. A busy engine takes a step every 8-25 model ms, so a
thousand engines take ~100,000 steps per model second; stepping each one through Python would not fit the
performance target. Most of those steps are *plain decode steps*: nothing waits, every running request is
decoding one token per step, nobody finishes. Such a stretch is fully determined by the state at its start:

- step k (from 0) of a batch of B requests with C context tokens in total costs
  `decode_time(B, C + k*B)`, linear in k (`a + b*k`), so the first n steps take `n*a + b*n*(n-1)/2`;
- request i allocates its next KV block in the step where its token count crosses a block boundary, so the
  allocations of the stretch are known in advance (and preemption cannot happen while they fit the free
  blocks);
- the stretch ends one step before the first request finishes, or before the first allocation that does not
  fit; that step, and every step that is not plain decode, runs through the engine core itself.

A *run* is such a stretch. It is applied lazily: only when it ends, when a request arrives at the engine
(the step in flight at that moment completes and the newcomer joins the next step, as on the real server),
or partly when a scrape asks what the engine looks like mid-run (waiting 0, running B, KV usage from the
allocations made so far, computed without touching the core). Applying n steps does to the core what n calls
of `step()` would do, token for token: the same generated token ids, the same blocks taken from the free
queue in the same order, the same full blocks registered, the same counters. What differs: KV events of a
run come as one batch (one `BlockRemoved` per run, not per step), and per-token timestamps inside a run are
not recorded (a request's TTFT, end and so its TPOT are exact).

Runs need no speculative decoding (its acceptance is random per step); engines with it take every step
through the core.

This module reaches into the engine core's request and block-pool state (the core has no bulk-decode entry
point); `fast_forward_eligible` is the one place that states the preconditions.
"""

import dataclasses
import enum
import math

from frontier_sim import engine, tokenizer

# A run shorter than this is not worth its bookkeeping: take the steps through the core.
MIN_RUN_STEPS = 3


class Phase(enum.Enum):
    IDLE = "idle"  # nothing to do; the next arrival starts a step
    STEP = "step"  # a core step is in flight until `busy_until`
    RUN = "run"  # a run of plain decode steps is in flight until `busy_until`
    GAP = "gap"  # between steps: the next step begins at `busy_until` (a run was cut short)


@dataclasses.dataclass(slots=True, kw_only=True)
class Run:
    """A stretch of plain decode steps: its start, step-time series and planned KV block allocations."""

    start: float
    steps: int  # planned length
    done: int  # steps already applied to the core
    a: float  # duration of step 0
    b: float  # growth of the duration per step
    alloc_steps: list[int]  # step index of every planned block allocation, sorted
    free_at_start: int
    allocs_begun: int = 0  # planned allocations whose step had begun at the last mid-run observation

    def elapsed(self, k: int) -> float:
        """Model seconds from the run's start to the end of its step k-1 (the first k steps)."""
        return k * self.a + self.b * k * (k - 1) / 2

    def end(self) -> float:
        return self.start + self.elapsed(self.steps)

    def steps_begun_by(self, t: float) -> int:
        """How many steps have begun by time `t` (the step in flight at `t` included), at most `steps`."""
        dt = t - self.start
        if dt <= 0:
            return 0
        if self.b > 0:
            half = self.b / 2
            lin = self.a - half
            k = int((-lin + math.sqrt(lin * lin + 4 * half * dt)) / (2 * half))
        else:
            k = int(dt / self.a) if self.a > 0 else self.steps
        k = max(0, min(k, self.steps))
        # Float rounding: settle on the k with elapsed(k) <= dt < elapsed(k + 1).
        while k > 0 and self.elapsed(k) > dt:
            k -= 1
        while k < self.steps and self.elapsed(k + 1) <= dt:
            k += 1
        return min(k + 1, self.steps)


def fast_forward_eligible(core: engine.Engine) -> bool:
    """True when the core's next steps are plain decode steps (see the module doc)."""
    cfg = core.config
    running = core.running
    if (
        not running
        or core.waiting
        or not core.between_steps()
        or cfg.num_speculative_tokens
        or len(running) > cfg.max_num_batched_tokens
    ):
        return False
    for seq in running:
        if seq.aborted or not seq.output_token_ids or seq.num_tokens - seq.num_computed != 1:
            return False
    return True


def plan_run(core: engine.Engine, start: float) -> Run | None:
    """The run the core can take from `start`, or None when it is too short (caller checked eligibility)."""
    cfg = core.config
    bs = cfg.block_size
    running = core.running
    steps = min(seq.tokens_left(cfg.max_model_len) for seq in running)
    steps -= 1  # the step in which the first request finishes goes through the core
    if steps < MIN_RUN_STEPS:
        return None
    allocs: list[int] = []
    for seq in running:
        nc = seq.num_computed
        last_block = -(-(nc + steps) // bs)  # blocks needed after `steps` steps
        allocs.extend(b * bs - nc for b in range(len(seq.blocks), last_block))
    allocs.sort()
    free = core.pool.num_free
    if len(allocs) > free:
        steps = allocs[free]  # stop before the first allocation that does not fit
        if steps < MIN_RUN_STEPS:
            return None
        allocs = allocs[:free]
    batch = len(running)
    context = sum(seq.num_computed for seq in running)
    model = core.model
    a = model.step_time(chunks=[], batch=batch, query_tokens=1, context_tokens=context)
    b = model.step_time(chunks=[], batch=batch, query_tokens=1, context_tokens=context + batch) - a
    return Run(start=start, steps=steps, done=0, a=a, b=b, alloc_steps=allocs, free_at_start=free)


def apply_run(core: engine.Engine, run: Run, upto: int) -> None:
    """Apply steps `run.done .. upto-1` to the core, exactly as that many `step()` calls would."""
    n = upto - run.done
    if n <= 0:
        return
    cfg = core.config
    bs = cfg.block_size
    first = run.done
    running = core.running
    # Allocations in step order, and within a step in batch order (the order `_schedule` takes them).
    wanted: list[tuple[int, int]] = []
    for i, seq in enumerate(running):
        nc = seq.num_computed
        last_block = -(-(nc + n) // bs)
        wanted.extend((first + b * bs - nc, i) for b in range(len(seq.blocks), last_block))
    if wanted:
        wanted.sort()
        taken = core.pool.allocate(len(wanted))
        for (_, i), block in zip(wanted, taken, strict=True):
            running[i].blocks.append(block)
    output_token = tokenizer.output_token
    for seq in running:
        position = seq.num_tokens
        seed = seq.seed
        seq.output_token_ids.extend([output_token(seed, position + j) for j in range(n)])
        seq.num_tokens += n
        seq.num_computed += n
        if seq.num_computed // bs > seq.num_registered:
            core.register_full_blocks(seq)
    stats = core.stats
    stats.generation_tokens += n * len(running)
    stats.steps += n
    stats.busy_s += run.elapsed(upto) - run.elapsed(first)
    run.done = upto


def kv_usage_mid_run(core: engine.Engine, run: Run, t: float) -> float:
    """The core's KV usage at `t` inside `run` (blocks of the step in flight included), core untouched.

    Observations come in time order, so the count of allocations made so far only moves forward: each
    planned allocation is passed once over the whole run, however often the engine is scraped.
    """
    allocs = run.alloc_steps
    i = run.allocs_begun
    dt = t - run.start
    a = run.a
    half_b = run.b / 2
    while i < len(allocs):
        k = allocs[i]
        if k * a + half_b * k * (k - 1) > dt:  # step k begins after t
            break
        i += 1
    run.allocs_begun = i
    return 1.0 - (run.free_at_start - i) / core.pool.num_blocks


class VirtualEngine:
    """An engine core and what it is doing on the model clock (`phase` until `busy_until`).

    The cluster keeps one heap entry per pending event; `version` changes whenever the pending event does,
    so an entry whose version no longer matches is stale and skipped.
    """

    __slots__ = ("busy_until", "core", "fast_forward", "index", "phase", "run", "scheduled", "version")

    def __init__(self, index: int, core: engine.Engine, *, fast_forward: bool = True) -> None:
        self.index = index
        self.core = core
        self.fast_forward = fast_forward  # False: every step through the core (the reference behaviour)
        self.phase = Phase.IDLE
        self.busy_until = 0.0
        self.version = 0
        self.run: Run | None = None
        self.scheduled: engine.ScheduledStep | None = None

    def add(
        self,
        t: float,
        request_id: str,
        token_ids: list[int],
        *,
        max_tokens: int,
        eos_after: int | None = None,
        prefill_only: bool = False,
        kv_transferred: bool = False,
        block_hashes: list[int] | None = None,
    ) -> tuple[bool, engine.StepResult | None]:
        """Queue a request at `t` (ValueError: it can never run here). `block_hashes`: the chained hashes
        of the prompt's full blocks under this core's block size and hash seed, if the caller has them.

        Returns whether the pending event changed (the caller schedules `busy_until`) and the result of a
        step that had to complete on the spot (an empty one), if any.
        """
        self.core.add_request(
            request_id,
            token_ids,
            max_tokens=max_tokens,
            eos_after=eos_after,
            prefill_only=prefill_only,
            kv_transferred=kv_transferred,
        )
        if block_hashes is not None:
            # The core computes these lazily into the request; the same values, computed once per prompt.
            self.core.requests[request_id].block_hashes = list(block_hashes)
        phase = self.phase
        if phase is Phase.RUN:
            run = self.run
            assert run is not None
            begun = run.steps_begun_by(t)
            apply_run(self.core, run, begun)
            self.run = None
            self.phase = Phase.GAP
            self.busy_until = run.start + run.elapsed(begun)
            self.version += 1
            return True, None
        if phase is Phase.IDLE:
            return True, self._next(t)
        return False, None

    def fire(self, t: float) -> engine.StepResult | None:
        """The pending event at `t`: finish what was in flight, begin what comes next (a core step result)."""
        result = None
        if self.phase is Phase.STEP:
            scheduled = self.scheduled
            assert scheduled is not None
            self.scheduled = None
            result = self.core.complete_step(scheduled)
        elif self.phase is Phase.RUN:
            run = self.run
            assert run is not None
            apply_run(self.core, run, run.steps)
            self.run = None
        empty = self._next(t)
        if empty is not None:
            if result is None:
                return empty
            result.finished.extend(empty.finished)
        return result

    def _next(self, t: float) -> engine.StepResult | None:
        """Begin the next step or run at `t`; go idle when there is nothing to do (an empty step's result)."""
        core = self.core
        self.version += 1
        if self.fast_forward and fast_forward_eligible(core):
            run = plan_run(core, t)
            if run is not None:
                self.run = run
                self.phase = Phase.RUN
                self.busy_until = run.end()
                return None
        if not core.has_work():
            self.phase = Phase.IDLE
            return None
        scheduled = core.begin_step()
        if not scheduled.batch:
            # Nothing can run (what waits does not fit): idle until the next arrival.
            self.phase = Phase.IDLE
            return core.complete_step(scheduled)
        self.scheduled = scheduled
        self.phase = Phase.STEP
        self.busy_until = t + scheduled.duration
        return None

    def observe(self, t: float) -> tuple[int, int, float]:
        """(waiting, running, KV usage) as the engine's /metrics would report them at `t`."""
        core = self.core
        if self.phase is Phase.RUN:
            run = self.run
            assert run is not None
            return 0, len(core.running), kv_usage_mid_run(core, run, t)
        return len(core.waiting), len(core.running), core.pool.usage
