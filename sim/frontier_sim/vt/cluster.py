"""The virtual-time cluster: many simulated vLLM engines and a router on one discrete-event model clock.

It is how Frontier reasons past one machine: sweeps of 16 to 1,000+ engines and hours of traffic in minutes,
with the same engine core the real-time server runs (`engine.Engine`, priced by the calibrated step model)
and the picker's own scheduling code called in-process.

    results = cluster.run(
        engines=cluster.engines(64, args=["--model", "meta-llama/Llama-3.1-8B-Instruct"]),
        workload=[cluster.Arrival(at=0.0, model="m", prompt="...", max_tokens=128), ...],
        policy="frontier",          # a picker profile, a picker config text, a baseline, or "oracle"
    )
    results.summary()               # TTFT / TPOT / e2e percentiles, throughput, hit rate, imbalance

The clock: a heap of engine events (the end of a step, or of a run of plain decode steps taken in one go, see
`virtual_engine`), the next arrival of the workload iterator (read lazily, so a workload may be a generator
of millions of requests) and the next scrape tick.

What the router sees, as the real picker does:
- *metrics* (`EndpointState.metrics`: waiting, running, KV usage, `updated_at`) are refreshed from the
  engine's true state at scrape ticks: every `scrape_interval` (50 ms, the picker's polling period) each
  endpoint is scraped once, the endpoints spread over `scrape_groups` evenly spaced ticks so scrapes are
  staggered as independent pollers are. Between scrapes they are stale, as in production;
- *load* (`EndpointState.load`) is the picker datastore's own accounting, exact and immediate: every
  decision and completion goes through the picker's own `director.Director` (charge, refund, the plugins'
  learning), exactly as in the ext_proc server;
- the `Request` is built by the ext_proc server's own `request_view.build` (from the OpenAI body, token
  estimate, headers), and the `Snapshot` reuses the same `EndpointState` objects every time.

Prefill/decode: when a decision names a prefill endpoint, the request is prefilled there (`prefill_only`),
its uncached KV crosses the link (`kv_link_bytes_per_s` of the decode engine's settings, as the real
server's sidecar waits it), then it decodes on the destination (`kv_transferred`); TTFT counts all of it.

Results are in model seconds. Per request: arrival, TTFT, end, TPOT, prompt/completion/cached tokens, the
engine, the status (200, or the rejection's 4xx/5xx). Per engine: requests, tokens, prefix cache queries and
hits, preemptions, busy time. Not recorded: individual inter-token gaps (decode runs are taken in one go), so
ITL is reported per request as TPOT.
"""

import dataclasses
import heapq
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from frontier_api import names
from frontier_picker import datastore, director, endpoints, kv_events, peer_deltas, request_view
from frontier_picker.scheduling import config, types
from frontier_picker.scheduling.plugins import precise_prefix
from frontier_sim import engine, fleet, settings, tokenizer
from frontier_sim.vt import policies, virtual_engine

log = logging.getLogger(__name__)

SCRAPE_INTERVAL_S = 0.05
SCRAPE_GROUPS = 10
PICKER_CONFIGS = config.BUILTIN  # frontier, gie-default, round-robin (the picker's own)
# Distinct prompt texts whose token ids and block hashes are kept (workloads cycle through prompt lists).
TOKEN_CACHE_SIZE = 20_000
_INTS = tuple(range(tokenizer.VOCAB_SIZE))  # token ids share these int objects: 8 bytes a token, not 36


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Arrival:
    """One request of a workload: when it arrives (model seconds) and its OpenAI body's content."""

    at: float
    model: str
    prompt: str = ""
    messages: Sequence[Mapping[str, str]] = ()  # chat: [{"role": ..., "content": ...}, ...] in order
    max_tokens: int = 128
    # The answer's own length: the engine ends it there (EOS) unless max_tokens comes first; None: it runs
    # to max_tokens (as with ignore_eos).
    output_tokens: int | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True, kw_only=True)
class EngineResult:
    """One engine's totals over the run."""

    name: str
    key: str
    requests: int
    prompt_tokens: int
    generation_tokens: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    preemptions: int
    busy_s: float
    steps: int


@dataclasses.dataclass(slots=True, kw_only=True)
class Results:
    """Per-request columns (numpy arrays, one entry per arrival) and per-engine totals; model seconds."""

    policy: str
    arrival: np.ndarray
    ttft: np.ndarray  # NaN when no token came (rejected)
    end: np.ndarray  # NaN when not finished
    prompt_tokens: np.ndarray
    completion_tokens: np.ndarray
    cached_tokens: np.ndarray
    engine: np.ndarray  # index into `engines`, -1 when rejected
    status: np.ndarray  # 200, or the rejection status
    transfer: np.ndarray  # KV transfer time of a disaggregated request; NaN when it was prefilled locally
    engines: list[EngineResult]
    wall_s: float
    stopped_at: float | None  # model time where `max_wall_s` stopped the run; None when it ran to the end
    events: int  # engine events processed (steps and runs)
    steps: int  # engine steps simulated (run steps included)

    @property
    def tpot(self) -> np.ndarray:
        """Per request: (end - first token) / (completion tokens - 1); NaN for single-token answers."""
        with np.errstate(invalid="ignore", divide="ignore"):
            gaps = self.completion_tokens - 1
            return np.where(gaps > 0, (self.end - (self.arrival + self.ttft)) / np.maximum(gaps, 1), np.nan)

    def summary(self) -> dict[str, Any]:
        """Headline numbers: latency percentiles, throughput, prefix hit rate, load imbalance."""
        ok = self.status == 200
        done = ok & ~np.isnan(self.end)
        if not done.any():
            return {"policy": self.policy, "requests": len(self.arrival), "completed": 0}
        span = float(np.nanmax(self.end[done]) - np.min(self.arrival))
        generated = np.array([e.generation_tokens for e in self.engines], dtype=np.float64)

        def pct(values: np.ndarray, q: float) -> float:
            values = values[~np.isnan(values)]
            return float(np.percentile(values, q)) if values.size else math.nan

        ttft = self.ttft[done]
        tpot = self.tpot[done]
        e2e = (self.end - self.arrival)[done]
        prompt = float(self.prompt_tokens[done].sum())
        return {
            "policy": self.policy,
            "requests": len(self.arrival),
            "completed": int(done.sum()),
            "rejected": int((~ok).sum()),
            "ttft_p50_s": pct(ttft, 50),
            "ttft_p90_s": pct(ttft, 90),
            "ttft_p99_s": pct(ttft, 99),
            "ttft_mean_s": float(np.mean(ttft)),
            "tpot_p50_s": pct(tpot, 50),
            "tpot_p90_s": pct(tpot, 90),
            "e2e_p50_s": pct(e2e, 50),
            "e2e_p90_s": pct(e2e, 90),
            "output_tokens_per_s": float(self.completion_tokens[done].sum()) / span if span > 0 else math.nan,
            "requests_per_s": float(done.sum()) / span if span > 0 else math.nan,
            "prefix_hit_rate": float(self.cached_tokens[done].sum()) / prompt if prompt else 0.0,
            "imbalance": float(generated.max() / generated.mean()) if generated.mean() > 0 else math.nan,
            "preemptions": int(sum(e.preemptions for e in self.engines)),
            "span_s": span,
            "wall_s": self.wall_s,
            "stopped_at_s": self.stopped_at,
        }


def engines(
    count: int,
    *,
    args: Sequence[str] = (),
    base_address: str = "10.0.0.1",
    prefill: int = 0,
    tier: str | None = None,
) -> list[fleet.EngineSpec]:
    """`count` identical engines from the fleet's `--model` and `vllm serve` / `--sim-*` flags, as the fleet
    launcher builds them (`frontier-sim fleet --engines N ...`); the first `prefill` are prefill engines,
    the rest decode engines, when `prefill` > 0. Addresses are names only: nothing binds them."""
    argv = ["--engines", str(count), "--base-address", base_address, "--prefill-engines", str(prefill)]
    if tier is not None:
        argv += ["--tier", tier]
    return fleet.parse_args([*argv, *args]).engines


@dataclasses.dataclass(slots=True, kw_only=True)
class _Flight:
    """A request between its decision and its completion."""

    index: int  # row in the results
    flight: director.Flight
    engine: int
    replica: int  # the picker replica that decided it
    text: str
    token_ids: list[int]
    max_tokens: int
    eos_after: int | None
    first_token: bool = False


class _Tokens:
    """`tokenizer.encode`, memoised for workloads that repeat text (shared system prompts, cycled prompts).

    The tokenizer cuts text into 4-character pieces from the start, so the ids of a text are the ids of its
    consecutive `CHUNK_CHARS`-character chunks (a multiple of 4) joined: chunks are memoised, and within a
    new chunk each 4-character piece is. Both memos are cleared when they reach `capacity` entries.
    """

    CHUNK_CHARS = 256

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._chunks: dict[str, tuple[int, ...]] = {}
        self._pieces: dict[str, int] = {}

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        pieces = self._pieces
        if len(pieces) >= self.capacity:
            pieces.clear()
        out = []
        for i in range(0, len(chunk), tokenizer.CHARS_PER_TOKEN):
            piece = chunk[i : i + tokenizer.CHARS_PER_TOKEN]
            token = pieces.get(piece)
            if token is None:
                token = pieces[piece] = _INTS[tokenizer.encode(piece)[0]]
            out.append(token)
        return tuple(out)

    def get(self, text: str) -> list[int]:
        chunks = self._chunks
        size = self.CHUNK_CHARS
        ids: list[int] = []
        for start in range(0, len(text), size):
            chunk = text[start : start + size]
            cached = chunks.get(chunk)
            if cached is None:
                if len(chunks) >= self.capacity:
                    chunks.clear()
                cached = chunks[chunk] = self._encode_chunk(chunk)
            ids.extend(cached)
        return ids


class _Prompts:
    """Token ids and full-block hashes per prompt text, for the most recent `capacity` distinct texts.

    Workloads cycle through prompt lists, so most prompts recur; the engine core would hash every block of
    a recurring prompt again at admission (the chained hash of `engine.block_hash`). The hashes are the same
    function of the same token ids, computed here once and handed to the core with the request.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._tokens = _Tokens(capacity * 8)
        self._memo: dict[str, tuple[list[int], dict[tuple[int, int], list[int]]]] = {}

    def get(self, text: str) -> list[int]:
        found = self._memo.get(text)
        if found is None:
            if len(self._memo) >= self.capacity:
                self._memo.clear()
            found = self._memo[text] = (self._tokens.get(text), {})
        return found[0]

    def block_hashes(self, text: str, *, block_size: int, hash_seed: int) -> list[int]:
        """The chained hashes of the full blocks of `text`'s token ids (an engine's prefix-cache names)."""
        ids, by_config = self._memo.get(text) or (self.get(text), {})
        hashes = by_config.get((block_size, hash_seed))
        if hashes is None:
            hashes = []
            parent: int | None = None
            for i in range(len(ids) // block_size):
                parent = engine.block_hash(
                    parent, ids[i * block_size : (i + 1) * block_size], None, hash_seed
                )
                hashes.append(parent)
            by_config[(block_size, hash_seed)] = hashes
        return hashes


def _kv_event(event: engine.KVEvent) -> kv_events.Event:
    """An engine's KV event as the picker decodes it from the wire."""
    if isinstance(event, engine.BlockStored):
        return kv_events.BlockStored(
            block_hashes=event.block_hashes,
            parent_block_hash=event.parent_block_hash,
            token_ids=event.token_ids,
            block_size=event.block_size,
            lora_id=event.lora_id,
            medium=event.medium,
        )
    if isinstance(event, engine.BlockRemoved):
        return kv_events.BlockRemoved(block_hashes=event.block_hashes, medium=event.medium)
    return kv_events.AllBlocksCleared()


def _policy(
    policy: str | policies.Policy | types.Scheduler,
    *,
    states: Sequence[endpoints.EndpointState],
    cores: Sequence[Any],
    seed: int,
    fallbacks: int,
) -> tuple[str, types.Scheduler]:
    if isinstance(policy, str):
        baseline = policies.builtin(policy, states=states, cores=cores, seed=seed)
        if baseline is not None:
            return policy, policies.PolicyScheduler(baseline)
        if policy in PICKER_CONFIGS:
            return policy, config.load(builtin=policy, fallbacks=fallbacks, seed=seed)
        if "EndpointPickerConfig" in policy:
            return "picker-config", config.load(policy, fallbacks=fallbacks, seed=seed)
        allowed = ", ".join([*policies.BUILTIN, *PICKER_CONFIGS, "<EndpointPickerConfig text>"])
        raise ValueError(f"policy={policy!r}; allowed: {allowed}")
    if isinstance(policy, policies.Policy):
        return type(policy).__name__, policies.PolicyScheduler(policy)
    return type(policy).__name__, policy


def _request(arrival: Arrival, request_id: str) -> types.Request:
    """The scheduler's view of the arrival, built as the ext_proc server builds it from the body."""
    document: dict[str, Any] = {"model": arrival.model}
    if arrival.messages:
        document["messages"] = [dict(m) for m in arrival.messages]
    else:
        document["prompt"] = arrival.prompt
    document["max_tokens"] = arrival.max_tokens
    headers = arrival.headers
    return request_view.build(
        request_id=headers.get(names.REQUEST_ID) or request_id,
        model=arrival.model,
        target=request_view.target_model(headers, arrival.model),
        document=document,
        headers=headers,
    )


def _engine_text(arrival: Arrival) -> str:
    if arrival.messages:
        return tokenizer.apply_chat_template(arrival.messages)
    return arrival.prompt


def run(
    *,
    engines: Sequence[fleet.EngineSpec],
    workload: Iterable[Arrival],
    policy: str | policies.Policy | types.Scheduler = "frontier",
    scrape_interval: float = SCRAPE_INTERVAL_S,
    scrape_groups: int = SCRAPE_GROUPS,
    fallbacks: int = 1,
    seed: int = 0,
    token_cache: int = TOKEN_CACHE_SIZE,
    fast_forward: bool = True,
    max_wall_s: float | None = None,
    replicas: int = 1,
    peering: bool = True,
) -> Results:
    """Simulate `workload` (arrivals in time order) on `engines` routed by `policy`, until every request
    has finished. `policy`: a picker profile (`frontier`, `gie-default`), an EndpointPickerConfig text, a
    baseline (`round-robin`, `random`, `least-request`), `oracle`, or any object with `decide`/
    `on_completion` (`policies.Policy`) or `schedule`/`on_completion` (`types.Scheduler`).
    `fast_forward=False` takes every engine step through the core (slow; the reference for runs).
    `max_wall_s`: stop after this much wall time, leaving later arrivals out and requests in flight
    unfinished (`Results.stopped_at` says how far the model clock got).
    `replicas`: picker replicas (a picker profile or config only), taking arrivals in turn, each with its own
    datastore and scheduler; with `peering` each learns the others' decisions at once (the real peering's
    path through `frontier.picker.v1` messages, without its network delay), without it each is blind to the
    others'."""
    simulation = _Simulation(
        engines=engines,
        policy=policy,
        scrape_interval=scrape_interval,
        scrape_groups=scrape_groups,
        fallbacks=fallbacks,
        seed=seed,
        token_cache=token_cache,
        fast_forward=fast_forward,
        replicas=replicas,
        peering=peering,
    )
    return simulation.run(workload, max_wall_s=max_wall_s)


def _director(scheduler: types.Scheduler, store: datastore.Datastore) -> director.Director:
    """A picker replica's director over `store` (no decision logs: millions of decisions per run)."""
    return director.Director(
        scheduler=scheduler, store=store, flow=director.flow_of(scheduler), log_decisions=False
    )


class _Peers:
    """In-process peering of picker replicas: what one decides, the others learn at once, converted to and
    from the wire messages as the real peering does (`peer_deltas`)."""

    def __init__(self, origin: str, others: Sequence[director.Director]) -> None:
        self.origin = origin
        self.others = others

    def decided(self, flight: director.Flight) -> None:
        message = peer_deltas.decided(flight, now=flight.decided_at).decided
        for other in self.others:
            request, decision = peer_deltas.peer_request(self.origin, message)
            other.learn_peer_decision(
                self.origin, message.flight_id, request, decision, now=flight.decided_at
            )

    def completed(self, flight: director.Flight, completion: types.Completion) -> None:
        for other in self.others:
            other.learn_peer_completion(self.origin, flight.flight_id, completion)


@dataclasses.dataclass(slots=True)
class _Columns:
    """The per-request result columns, one row appended per arrival."""

    arrival_at: list[float] = dataclasses.field(default_factory=list)
    ttft: list[float] = dataclasses.field(default_factory=list)
    end: list[float] = dataclasses.field(default_factory=list)
    prompt_tokens: list[int] = dataclasses.field(default_factory=list)
    completion_tokens: list[int] = dataclasses.field(default_factory=list)
    cached_tokens: list[int] = dataclasses.field(default_factory=list)
    engine_of: list[int] = dataclasses.field(default_factory=list)
    status: list[int] = dataclasses.field(default_factory=list)
    transfer: list[float] = dataclasses.field(default_factory=list)

    def add(self, t: float) -> int:
        """A new row for an arrival at `t` (not finished, status 200 until told otherwise); its index."""
        self.arrival_at.append(t)
        self.ttft.append(math.nan)
        self.end.append(math.nan)
        self.prompt_tokens.append(0)
        self.completion_tokens.append(0)
        self.cached_tokens.append(0)
        self.engine_of.append(-1)
        self.status.append(200)
        self.transfer.append(math.nan)
        return len(self.arrival_at) - 1


class _Simulation:
    """One run: virtual engines, the picker's director over their endpoints, and the event heap.

    The heap holds (time, order, engine index, version) for engine events and (time, order, -1, key) for KV
    transfers under way; `order` breaks ties in insertion order, so a run is deterministic.
    """

    def __init__(
        self,
        *,
        engines: Sequence[fleet.EngineSpec],
        policy: str | policies.Policy | types.Scheduler,
        scrape_interval: float,
        scrape_groups: int,
        fallbacks: int,
        seed: int,
        token_cache: int,
        fast_forward: bool,
        replicas: int = 1,
        peering: bool = True,
    ) -> None:
        if not engines:
            raise ValueError("engines: at least one engine is required")
        if replicas < 1:
            raise ValueError(f"replicas={replicas}: at least one")
        self.store = datastore.Datastore()
        self.specs = list(engines)
        self.store.replace(
            endpoints.Endpoint(
                name=spec.name, address=spec.config.host, port=spec.config.port, labels=spec.labels
            )
            for spec in self.specs
        )
        self.states = list(self.store.states())
        if len(self.states) != len(self.specs):
            raise ValueError("engines: every engine needs its own address:port")
        self.vengines = [
            virtual_engine.VirtualEngine(i, settings.build_engine(spec.config), fast_forward=fast_forward)
            for i, spec in enumerate(self.specs)
        ]
        self.cores = [v.core for v in self.vengines]
        self._report_cache_sizes(self.states)
        self.key_index = {state.endpoint.key: i for i, state in enumerate(self.states)}
        self.name, scheduler = _policy(
            policy, states=self.states, cores=self.cores, seed=seed, fallbacks=fallbacks
        )
        self.director = _director(scheduler, self.store)
        # A config with a kv-events-subscriber gets every engine's KV events the moment its step ends (as a
        # subscriber that keeps up would), numbered per engine: its index follows the engines' caches.
        self.event_indexes = [
            source.index
            for source in getattr(scheduler, "data_sources", ())
            if isinstance(source, precise_prefix.KvEventsSubscriber)
        ]
        self.event_seq = [0] * len(self.vengines)
        self.baseline = scheduler if isinstance(scheduler, policies.PolicyScheduler) else None
        if replicas > 1 and (self.baseline is not None or not isinstance(policy, str)):
            raise ValueError("replicas: only a picker profile or config runs as several replicas")
        # Replica 0 is the director above; the others, each its own datastore (load accounting) and scheduler.
        self.directors = [self.director]
        self.replica_states = [self.states]
        for replica in range(1, replicas):
            store = datastore.Datastore()
            store.replace(state.endpoint for state in self.states)
            states = list(store.states())
            self._report_cache_sizes(states)
            _, own = _policy(
                policy, states=states, cores=self.cores, seed=seed + replica, fallbacks=fallbacks
            )
            self.directors.append(_director(own, store))
            self.replica_states.append(states)
        if replicas > 1 and peering:
            for index, own_director in enumerate(self.directors):
                others = [d for d in self.directors if d is not own_director]
                own_director.share_with(_Peers(f"replica-{index}", others))
        chosen = self.baseline.policy if self.baseline else None
        self.oracle = chosen if isinstance(chosen, policies.Oracle) else None
        self.prompts = _Prompts(token_cache)
        groups = max(1, min(scrape_groups, len(self.vengines)))
        self.groups = groups
        self.members = [list(range(g, len(self.vengines), groups)) for g in range(groups)]
        self.tick = scrape_interval / groups
        self.columns = _Columns()
        self.routed = [0] * len(self.vengines)
        self.flights: dict[str, _Flight] = {}  # by engine request id (decode / aggregated stage)
        self.prefills: dict[str, _Flight] = {}  # by engine request id of the prefill stage
        self.heap: list[tuple[float, int, int, int]] = []
        self.order = 0
        self.events = 0
        self.transfers: dict[int, _Flight] = {}  # KV transfers under way, by heap order

    def _report_cache_sizes(self, states: Sequence[endpoints.EndpointState]) -> None:
        """What the engines' `cache_config_info` tells a picker: each one's KV block size and count."""
        for state, core in zip(states, self.cores, strict=True):
            state.metrics.block_size = core.config.block_size
            state.metrics.num_gpu_blocks = core.config.num_gpu_blocks

    # --- engine events ---------------------------------------------------------------------------------
    def _push(self, v: virtual_engine.VirtualEngine) -> None:
        if v.phase is not virtual_engine.Phase.IDLE:
            self.order += 1
            heapq.heappush(self.heap, (v.busy_until, self.order, v.index, v.version))

    def _submit(
        self, flight: _Flight, v: virtual_engine.VirtualEngine, t: float, rid: str, **kind: bool
    ) -> None:
        cfg = v.core.config
        hashes = None
        if cfg.enable_prefix_caching:
            hashes = self.prompts.block_hashes(
                flight.text, block_size=cfg.block_size, hash_seed=cfg.hash_seed
            )
        try:
            changed, result = v.add(
                t,
                rid,
                flight.token_ids,
                max_tokens=flight.max_tokens,
                eos_after=flight.eos_after,
                block_hashes=hashes,
                **kind,
            )
        except ValueError as error:
            self._finish_error(flight, 400, str(error), t)
            return
        if result is not None:
            self._deliver(result, t)
        if changed:
            self._push(v)

    def _finish_error(self, flight: _Flight, code: int, reason: str, t: float) -> None:
        request = flight.flight.request
        self.flights.pop(request.request_id, None)
        self.prefills.pop(request.request_id, None)
        self.columns.status[flight.index] = code
        self.columns.end[flight.index] = math.nan
        completion = types.Completion(endpoint=flight.flight.decision.primary, status=code, duration_s=0.0)
        self.directors[flight.replica].complete(flight.flight, completion, now=t)
        log.debug(
            "event=vt_request_failed request_id=%s status=%d reason=%r",
            request.request_id,
            code,
            reason,
        )

    def _deliver(self, result: Any, t: float) -> None:
        columns = self.columns
        flights = self.flights
        prefills = self.prefills
        for rid in result.outputs:
            if rid in prefills:
                continue  # the prefill stage's token is not streamed to the client
            flight = flights.get(rid)
            if flight is not None and not flight.first_token:
                flight.first_token = True
                columns.ttft[flight.index] = t - columns.arrival_at[flight.index]
                if self.oracle is not None:
                    self.oracle.started(rid)
        for done in result.finished:
            rid = done.request_id
            prefill = prefills.pop(rid, None)
            if prefill is not None:
                self._transfer(prefill, t)
                continue
            flight = flights.pop(rid, None)
            if flight is None:
                continue
            i = flight.index
            columns.end[i] = t
            columns.prompt_tokens[i] = done.prompt_tokens
            columns.completion_tokens[i] = done.completion_tokens
            columns.cached_tokens[i] = done.cached_tokens
            completion = types.Completion(
                endpoint=flight.flight.decision.primary,
                status=200,
                prompt_tokens=done.prompt_tokens,
                completion_tokens=done.completion_tokens,
                cached_tokens=done.cached_tokens,
                ttft_s=columns.ttft[i],
                first_token_timed=True,
                duration_s=t - columns.arrival_at[i],
            )
            self.directors[flight.replica].complete(flight.flight, completion, now=t)

    def _transfer(self, prefill: _Flight, t: float) -> None:
        """Prefill stage done: the decode engine pulls the uncached KV over its link, then decodes."""
        decode = self.vengines[prefill.engine]
        local = decode.core.cached_prefix_tokens(prefill.token_ids)
        pulled = max(len(prefill.token_ids) - local, 0)
        link = self.specs[prefill.engine].config.kv_link_bytes_per_s
        transfer_s = pulled * decode.core.model.kv_bytes_per_token_per_gpu / link
        self.columns.transfer[prefill.index] = transfer_s
        self.order += 1
        self.transfers[self.order] = prefill
        heapq.heappush(self.heap, (t + transfer_s, self.order, -1, self.order))

    def _scrape(self, group: int, t: float) -> None:
        # `VirtualEngine.observe`, inlined: this runs for every endpoint 20 times a model second.
        run_phase = virtual_engine.Phase.RUN
        kv_usage_mid_run = virtual_engine.kv_usage_mid_run
        vengines = self.vengines
        for i in self.members[group]:
            v = vengines[i]
            core = v.core
            if v.phase is run_phase:
                assert v.run is not None
                waiting, kv_usage = 0, kv_usage_mid_run(core, v.run, t)
            else:
                waiting, kv_usage = len(core.waiting), core.pool.usage
            running = len(core.running)
            for states in self.replica_states:  # every replica scrapes the same engines
                metrics = states[i].metrics
                metrics.waiting = waiting
                metrics.kv_usage = kv_usage
                metrics.running = running
                metrics.updated_at = t
        for replica in self.directors:
            replica.pump(t)  # fresh metrics may show room (and TTLs may have passed)

    def _fire(self, t: float, index: int, version: int) -> None:
        if index < 0:
            flight = self.transfers.pop(version)
            self._submit(
                flight, self.vengines[flight.engine], t, flight.flight.request.request_id, kv_transferred=True
            )
            return
        v = self.vengines[index]
        if version != v.version:
            return
        self.events += 1
        result = v.fire(t)
        if result is not None:
            if result.events and self.event_indexes:
                self._publish(index, result.events, t)
            self._deliver(result, t)
        self._push(v)

    def _publish(self, index: int, events: Sequence[engine.KVEvent], t: float) -> None:
        """Hand engine `index`'s KV events to the picker's event indexes, as one batch."""
        batch = kv_events.Batch(seq=self.event_seq[index], ts=t, events=[_kv_event(e) for e in events])
        self.event_seq[index] += 1
        key = self.states[index].endpoint.key
        for event_index in self.event_indexes:
            event_index.apply(key, batch)

    def _arrive(self, arrival: Arrival) -> None:
        t = arrival.at
        row = self.columns.add(t)
        request = _request(arrival, f"vt-{row}")
        if request.request_id in self.flights or request.request_id in self.prefills:
            request.request_id = f"{request.request_id}-{row}"  # a client reused an x-request-id
        text = _engine_text(arrival)

        def reject(rejection: types.Rejection) -> None:
            self.columns.status[row] = rejection.status

        replica = row % len(self.directors)  # the gateway spreads streams over the replicas in turn

        def dispatch(now: float) -> None:
            self._dispatch(row, request, text, arrival, now, replica)

        try:
            ticket = self.directors[replica].admit(
                request, now=t, size=len(text), on_dispatch=dispatch, on_reject=reject
            )
        except types.Rejection as rejection:
            reject(rejection)
            return
        if ticket is None:
            dispatch(t)

    def _dispatch(
        self, row: int, request: types.Request, text: str, arrival: Arrival, t: float, replica: int = 0
    ) -> None:
        """Decide `request` at model time `t` (its arrival, or when flow control let it go) by picker
        replica `replica`, and submit it."""
        rid = request.request_id
        token_ids = self.prompts.get(text)
        try:
            if self.baseline is not None:
                self.baseline.token_ids = token_ids
            decided = self.directors[replica].decide(request, now=t)
        except types.Rejection as rejection:
            self.columns.status[row] = rejection.status
            return
        decision = decided.decision
        target = self.key_index[decision.primary]
        flight = _Flight(
            index=row,
            flight=decided,
            engine=target,
            text=text,
            token_ids=token_ids,
            max_tokens=arrival.max_tokens,
            eos_after=arrival.output_tokens,
            replica=replica,
        )
        self.columns.engine_of[row] = target
        self.routed[target] += 1
        self.flights[rid] = flight
        if decision.prefill is not None and decision.prefill in self.key_index:
            self.prefills[rid] = flight
            self._submit(flight, self.vengines[self.key_index[decision.prefill]], t, rid, prefill_only=True)
        else:
            self._submit(flight, self.vengines[target], t, rid)

    # --- the clock ------------------------------------------------------------------------------------------
    def run(self, workload: Iterable[Arrival], *, max_wall_s: float | None) -> Results:
        """Advance the model clock through `workload` until every request finished (or `max_wall_s`)."""
        began = time.perf_counter()
        heap = self.heap
        arrivals = iter(workload)
        upcoming = next(arrivals, None)
        next_scrape = 0.0
        scrape_group = 0
        groups = self.groups
        tick = self.tick
        inf = math.inf
        last_arrival = -inf
        stopped_at: float | None = None
        deadline = began + max_wall_s if max_wall_s is not None else inf
        iterations = 0
        while True:
            iterations += 1
            if not iterations & 0xFFF and time.perf_counter() > deadline:
                stopped_at = min(heap[0][0] if heap else inf, upcoming.at if upcoming is not None else inf)
                break
            t_engine = heap[0][0] if heap else inf
            t_arrival = upcoming.at if upcoming is not None else inf
            if t_engine == inf and t_arrival == inf:
                break
            if next_scrape <= t_engine and next_scrape <= t_arrival:
                self._scrape(scrape_group, next_scrape)
                scrape_group = (scrape_group + 1) % groups
                next_scrape += tick
                continue
            if t_engine <= t_arrival:
                t, _, index, version = heapq.heappop(heap)
                self._fire(t, index, version)
                continue
            assert upcoming is not None
            arrival = upcoming
            upcoming = next(arrivals, None)
            if arrival.at < last_arrival:
                raise ValueError(
                    f"workload: arrival at {arrival.at} comes after one at {last_arrival}; sort by time"
                )
            last_arrival = arrival.at
            self._arrive(arrival)
        return self._results(time.perf_counter() - began, stopped_at)

    def _results(self, wall: float, stopped_at: float | None) -> Results:
        columns = self.columns
        engine_results = [
            EngineResult(
                name=spec.name,
                key=state.endpoint.key,
                requests=self.routed[i],
                prompt_tokens=core.stats.prompt_tokens,
                generation_tokens=core.stats.generation_tokens,
                prefix_cache_queries=core.stats.prefix_cache_queries,
                prefix_cache_hits=core.stats.prefix_cache_hits,
                preemptions=core.stats.preemptions,
                busy_s=core.stats.busy_s,
                steps=core.stats.steps,
            )
            for i, (spec, state, core) in enumerate(zip(self.specs, self.states, self.cores, strict=True))
        ]
        results = Results(
            policy=self.name,
            arrival=np.array(columns.arrival_at, dtype=np.float64),
            ttft=np.array(columns.ttft, dtype=np.float64),
            end=np.array(columns.end, dtype=np.float64),
            prompt_tokens=np.array(columns.prompt_tokens, dtype=np.int64),
            completion_tokens=np.array(columns.completion_tokens, dtype=np.int64),
            cached_tokens=np.array(columns.cached_tokens, dtype=np.int64),
            engine=np.array(columns.engine_of, dtype=np.int64),
            status=np.array(columns.status, dtype=np.int64),
            transfer=np.array(columns.transfer, dtype=np.float64),
            engines=engine_results,
            wall_s=wall,
            stopped_at=stopped_at,
            events=self.events,
            steps=sum(e.steps for e in engine_results),
        )
        log.info(
            "event=vt_run_done policy=%s engines=%d requests=%d events=%d steps=%d wall_s=%.2f stopped_at=%s",
            self.name,
            len(self.specs),
            len(columns.arrival_at),
            self.events,
            results.steps,
            wall,
            stopped_at,
        )
        return results
