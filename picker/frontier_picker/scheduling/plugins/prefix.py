"""The approximate prefix-cache index and the prefix-cache scorer (GIE's hashing defaults).

A prompt is cut into blocks of `block_size` characters (64: 16 tokens of ~4 characters); a trailing partial
block is ignored and at most `max_blocks` (256) blocks are used. Block hashes are chained: each is the
xxhash64 of the block's bytes followed by the previous hash (8 bytes, little-endian), and the chain starts
from the xxhash64 of the target model's name, so equal text under different models never matches. A hash
therefore names a whole prefix: an endpoint holding block i's hash has (approximately) cached the prompt
up to block i. The index keeps each hash's low 60 bits (the chain itself uses all 64): a smaller int object,
and with 31 M entries the chance of any collision at all is about 1 in 2,400.

The index is learned only from decisions, the picker's own and its peers' (their block hashes come with
each shared decision): after each decision the request's hashes are recorded for the chosen endpoint (and
its prefill endpoint). Each endpoint keeps at most `lru_capacity`
hashes (31,250), or, when its engine reports `cache_config_info`, as many as its KV cache holds (blocks x
block size / 16 tokens per hash), evicting the least recently learned first (approximately, see below).

Layout, chosen for memory (at 1,000 endpoints x 31,250 hashes the index holds 31 M entries; the earlier
per-endpoint `OrderedDict` LRUs cost ~211 B per entry, 6.5 GiB in all; bench/results/scheduling_cost.md):

- One global dict maps a hash to its holders. Matching a request against every endpoint is then a walk over
  the request's blocks with big-integer ANDs of holder bitmasks, independent of the number of endpoints
  until the chain breaks. A hash with one holder (the common case) stores a negative *holder code*
  `~(generation << 20 | number)`: the endpoint's number and the generation in which it last learned the
  hash. An endpoint makes one code object per generation and every hash it learns then shares it, so a
  single-holder entry costs no value object; the hash int itself is the same object as in its queue.
- A hash with several holders stores their bitmask (bit = endpoint number); each holder keeps the hash's
  generation in its own `shared` dict. Sharing is the minority of entries (shared prefixes, and the
  decode + prefill pair of a disaggregated request).
- Per endpoint, learning is cut into generations of a quarter of its capacity (hashes learned or renewed),
  each with a `deque` of the hashes that joined in it: one slot per held hash, 8 B, freed as it drains.
  Learning a held hash again only renews its generation in the holders map (no queue work, so a hot
  prefix costs a dict store per request); learning one of the current generation changes nothing.
  Eviction, once the prompt is queued and while the endpoint holds more than `capacity`, pops the oldest
  slot: a hash renewed since it joined moves to the queue of its renewed generation (the lazy promotion of
  a segmented LRU), any other is evicted, so an evicted hash never matches again and an endpoint never
  keeps more than `capacity`. A hash is evicted only when its generation is the oldest live one, so at
  least three quarters of the capacity in other hashes were learned after it (exact LRU: all of it). GIE's
  own index is approximate too. When renewals alone keep more than 16 generations live (queues that
  eviction does not reach), the oldest is drained two slots per hash learned: its hashes not renewed in
  the 15 generations since (3.75 x capacity learning steps) are evicted.

Measured (bench/results/scheduling_cost.md, 3.1 M distinct single-holder entries, tracemalloc): ~94 B per
entry (the 60-bit hash int 32 B, its global dict slot ~54 B at that fill, its queue slot 8 B) against
~211 B for the earlier per-endpoint `OrderedDict` LRUs, which also paid an `OrderedDict` node and a fresh
holder int per entry. Learning new hashes is cheaper too (no per-entry allocation but the hash's); a prompt
whose every block is renewed costs about twice the `move_to_end` of the `OrderedDict` (same file). Tried:
renewing by queueing the hash again (exact order, stale slots) cost ~5x `move_to_end` on such prompts.
What remains is one Python int and one dict slot per hash; going below needs a table of plain machine
words (numpy open addressing), not built.
"""

import collections
import dataclasses
import struct
from collections.abc import Sequence

import numpy as np
import xxhash

from frontier_api import estimates
from frontier_picker import endpoints
from frontier_picker.scheduling import types
from frontier_picker.scheduling.framework import cycles, plugin

_LITTLE_ENDIAN_U64 = struct.Struct("<Q")
_LOW_60_BITS = (1 << 60) - 1  # a Python int below 2**60 takes 2 digits: 32 B, not 36 (48 allocated)


def block_hashes(prompt: str, *, model: str, block_size: int = 64, max_blocks: int = 256) -> list[int]:
    """The chained block hashes of `prompt`, each kept to its low 60 bits (empty under one block)."""
    data = prompt.encode()
    usable = min(len(data) // block_size, max_blocks) * block_size
    digest = xxhash.xxh64_intdigest
    pack = _LITTLE_ENDIAN_U64.pack
    previous = digest(model.encode())
    hashes = []
    for start in range(0, usable, block_size):
        previous = digest(data[start : start + block_size] + pack(previous))
        hashes.append(previous & _LOW_60_BITS)
    return hashes


GENERATIONS = 4
"""An endpoint's learning is cut into generations of a quarter of its capacity (hashes learned or renewed)."""
MAX_GENERATIONS = 16
"""Live generations per endpoint; past that the oldest is drained, two slots per hash learned (only when
learning is mostly renewals, which fill generations but no queue)."""
_NUMBER_BITS = 20
_NUMBER_MASK = (1 << _NUMBER_BITS) - 1  # endpoint numbers below 2**20


def holder_code(number: int, generation: int) -> int:
    """The `holders` value of a hash that only endpoint `number` holds, last learned in `generation`."""
    return ~(generation << _NUMBER_BITS | number)


@dataclasses.dataclass(slots=True, kw_only=True)
class Holdings:
    """What one endpoint holds: one queue of hashes per live generation, and its shared-hash generations."""

    number: int
    code: int  # holder_code(number, generation): shared by every single-holder hash learned now
    generation: int = 0
    # Oldest first; a hash's slot is in the queue of its generation or, if renewed since, an older one.
    queues: collections.deque[collections.deque[int]] = dataclasses.field(
        default_factory=lambda: collections.deque([collections.deque()])
    )
    filled: int = 0  # hashes learned or renewed in the current generation
    size: int = 0
    shared: dict[int, int] = dataclasses.field(default_factory=dict)  # hash -> generation, multi-holder


class Index:
    """Which endpoint (approximately) holds which prefix block: hash -> holders, per-endpoint queues."""

    def __init__(
        self,
        *,
        block_size: int = 64,
        max_blocks: int = 256,
        lru_capacity: int = 31_250,
        auto_tune: bool = True,
    ) -> None:
        self.block_size = block_size
        self.max_blocks = max_blocks
        self.lru_capacity = lru_capacity
        self.auto_tune = auto_tune
        self.tokens_per_block = max(1, block_size // estimates.CHARS_PER_TOKEN)
        self._holders: dict[int, int] = {}
        self._holdings: dict[str, Holdings] = {}
        self._by_number: list[Holdings] = []
        self._key_of_number: list[str] = []
        # Owned by this index: the request's hashes, and the match per candidate (per candidate set).
        self.hashes_key: cycles.StateKey[list[int]] = cycles.StateKey("prefix-index/hashes")
        self.matched_key: cycles.StateKey[np.ndarray] = cycles.StateKey(
            "prefix-index/matched", per_candidates=True
        )

    def hashes(self, cycle: cycles.Cycle) -> list[int]:
        """The request's block hashes, computed once per cycle and shared by every plugin using this index."""
        cached = cycle.read(self.hashes_key)
        if cached is None:
            request = cycle.request
            cached = block_hashes(
                request.prompt,
                model=request.target_model,
                block_size=self.block_size,
                max_blocks=self.max_blocks,
            )
            cycle.write(self.hashes_key, cached)
        return cached

    def matched_blocks(self, cycle: cycles.Cycle) -> np.ndarray:
        """Per candidate of `cycle`: how many leading blocks of the request the endpoint holds."""
        matched = cycle.read(self.matched_key)
        if matched is None:
            matched = self._match(self.hashes(cycle), cycle)
            cycle.write(self.matched_key, matched)
        return matched

    def _match(self, hashes: Sequence[int], cycle: cycles.Cycle) -> np.ndarray:
        counts = np.zeros(len(cycle.candidates), dtype=np.float64)
        if not hashes or not self._holders:
            return counts
        holders = self._holders
        positions = cycle.positions()
        keys = self._key_of_number
        get = holders.get
        held = get(hashes[0], 0)
        alive = 1 << (~held & _NUMBER_MASK) if held < 0 else held
        depth = 1
        while alive and depth < len(hashes):
            held = get(hashes[depth], 0)
            still = alive & (1 << (~held & _NUMBER_MASK) if held < 0 else held)
            dropped = alive & ~still
            while dropped:
                low = dropped & -dropped
                position = positions.get(keys[low.bit_length() - 1])
                if position is not None:
                    counts[position] = depth
                dropped ^= low
            alive = still
            depth += 1
        while alive:
            low = alive & -alive
            position = positions.get(keys[low.bit_length() - 1])
            if position is not None:
                counts[position] = depth
            alive ^= low
        return counts

    def capacity(self, state: endpoints.EndpointState | None) -> int:
        """Hashes kept for an endpoint: from its KV cache size when known and auto-tuning, else default."""
        if self.auto_tune and state is not None:
            metrics = state.metrics
            if metrics.num_gpu_blocks and metrics.block_size:
                return max(1, metrics.num_gpu_blocks * metrics.block_size // self.tokens_per_block)
        return self.lru_capacity

    def _register(self, key: str) -> Holdings:
        number = len(self._by_number)
        if number > _NUMBER_MASK:
            raise ValueError(f"prefix index: at most {_NUMBER_MASK + 1} endpoints, {key!r} would be one more")
        holdings = self._holdings[key] = Holdings(number=number, code=holder_code(number, 0))
        self._by_number.append(holdings)
        self._key_of_number.append(key)
        return holdings

    def add(self, key: str, hashes: Sequence[int], *, capacity: int) -> None:
        """Record that endpoint `key` now holds `hashes` (most recently learned), at most `capacity` kept."""
        if not hashes:
            return
        holdings = self._holdings.get(key) or self._register(key)
        # Hot path (every decision, 256 hashes): state in locals, written back at the end.
        number = holdings.number
        bit = 1 << number
        mask = _NUMBER_MASK
        holders = self._holders
        get = holders.get
        shared = holdings.shared
        queues = holdings.queues
        append = queues[-1].append
        generation_size = max(1, capacity // GENERATIONS)
        generation = holdings.generation
        code = holdings.code
        filled = holdings.filled
        size = holdings.size
        for value in hashes:
            held = get(value)
            if held is None:
                holders[value] = code
                append(value)
                size += 1
            elif held < 0:
                if held == code:
                    continue
                if ~held & mask == number:  # renewed: its slot moves up when the eviction reaches it
                    holders[value] = code
                else:
                    other = self._by_number[~held & mask]
                    learned = ~held >> _NUMBER_BITS
                    other.shared[value] = other.generation if learned == other.generation else learned
                    shared[value] = generation
                    holders[value] = (1 << (~held & mask)) | bit
                    append(value)
                    size += 1
            elif held & bit:
                if shared[value] == generation:
                    continue
                shared[value] = generation
            else:
                shared[value] = generation
                holders[value] = held | bit
                append(value)
                size += 1
            filled += 1
            if filled >= generation_size:
                generation += 1
                code = holder_code(number, generation)
                filled = 0
                current: collections.deque[int] = collections.deque()
                queues.append(current)
                append = current.append
        # Evict once the whole prompt is queued (the same hashes go as hash by hash, the batch being newest).
        # Past MAX_GENERATIONS, also drain the oldest queue, at most two slots per hash learned.
        front = generation - len(queues) + 1  # the oldest live generation
        front_code = holder_code(number, front)
        oldest = queues[0]
        drain = 2 * len(hashes) if len(queues) > MAX_GENERATIONS else 0
        while size > capacity or drain > 0:
            drain -= 1
            if not oldest:
                queues.popleft()
                front += 1
                front_code = holder_code(number, front)
                oldest = queues[0]
                if len(queues) <= MAX_GENERATIONS:
                    drain = 0
                continue
            evicted = oldest.popleft()
            held = holders[evicted]
            if held == front_code:
                del holders[evicted]
                size -= 1
            elif held < 0:  # renewed since its slot was queued: to its generation's queue
                queues[(~held >> _NUMBER_BITS) - front].append(evicted)
            else:
                learned = shared[evicted]
                if learned == front:
                    self._release(holdings, evicted)
                    size -= 1
                else:
                    queues[learned - front].append(evicted)
        holdings.generation = generation
        holdings.code = code
        holdings.filled = filled
        holdings.size = size

    def _release(self, holdings: Holdings, value: int) -> None:
        """End `holdings`' share of multi-holder hash `value`."""
        del holdings.shared[value]
        rest = self._holders[value] & ~(1 << holdings.number)
        if rest & (rest - 1):
            self._holders[value] = rest
        else:  # one holder left: back to its compact code
            other = self._by_number[rest.bit_length() - 1]
            learned = other.shared.pop(value)
            self._holders[value] = (
                other.code if learned == other.generation else holder_code(other.number, learned)
            )

    def holds(self, key: str, value: int) -> bool:
        """Whether endpoint `key` holds block hash `value`."""
        holdings = self._holdings.get(key)
        if holdings is None:
            return False
        held = self._holders.get(value, 0)
        return ~held & _NUMBER_MASK == holdings.number if held < 0 else bool(held >> holdings.number & 1)

    def size(self, key: str) -> int:
        holdings = self._holdings.get(key)
        return holdings.size if holdings is not None else 0

    def entries(self) -> int:
        """Hashes held over all endpoints (an entry per endpoint per hash)."""
        return sum(holdings.size for holdings in self._by_number)

    def learn(self, cycle: cycles.Cycle, decision: types.Decision) -> None:
        """Record the request's blocks on the endpoints the decision sends it to (destination and prefill)."""
        hashes = self.hashes(cycle)
        if not hashes:
            return
        for key in (decision.primary, decision.prefill):
            if key is not None:
                self.add(key, hashes, capacity=self.capacity(cycle.chosen.get(key)))


@plugin.register
class PrefixCacheScorer(plugin.Scorer):
    """Prefer endpoints that already hold the request's prompt prefix in their KV cache (approximately).

    Learned from the picker's own decisions (see the module doc). Other plugins (predicted-ttft-scorer, the
    prefix-based P/D decider) read the same index: they find this plugin as the producer of `prefix-index`.
    """

    type_name = "prefix-cache-scorer"
    formula = "score = matched leading blocks / request blocks (0 when the prompt is under one block)"
    intent = "affinity"
    consumes = frozenset({"metrics"})
    produces = frozenset({"prefix-index"})
    BLOCK_SIZE = plugin.Param("blockSize", 64, "characters per block", 1)
    MAX_BLOCKS = plugin.Param("maxPrefixBlocksToMatch", 256, "blocks hashed per request", 1)
    LRU_CAPACITY = plugin.Param(
        "lruCapacityPerServer", 31_250, "hashes kept per endpoint when its KV size is unknown", 1
    )
    AUTO_TUNE = plugin.Param(
        "autoTune", True, "size each endpoint's LRU from cache_config_info when reported"
    )
    parameter_docs = plugin.documented((BLOCK_SIZE, MAX_BLOCKS, LRU_CAPACITY, AUTO_TUNE))

    def __init__(self, name: str, *, index: Index) -> None:
        super().__init__(name)
        self.index = index

    @classmethod
    def build(cls, name: str, parameters: plugin.Parameters, handle: plugin.Handle) -> plugin.Plugin:
        index = Index(
            block_size=parameters.read(cls.BLOCK_SIZE),
            max_blocks=parameters.read(cls.MAX_BLOCKS),
            lru_capacity=parameters.read(cls.LRU_CAPACITY),
            auto_tune=parameters.read(cls.AUTO_TUNE),
        )
        return cls(name, index=index)

    def score(self, cycle: cycles.Cycle) -> np.ndarray:
        total = len(self.index.hashes(cycle))
        if total == 0:
            return np.zeros(len(cycle.candidates), dtype=np.float64)
        return self.index.matched_blocks(cycle) / total

    def on_decision(self, cycle: cycles.Cycle, decision: types.Decision) -> None:
        self.index.learn(cycle, decision)

    def share(self, cycle: cycles.Cycle, decision: types.Decision) -> bytes | None:
        hashes = self.index.hashes(cycle)
        return np.asarray(hashes, dtype="<u8").tobytes() if hashes else None

    def learn_shared(self, data: bytes, shared: types.SharedDecision) -> None:
        hashes = np.frombuffer(data, dtype="<u8").tolist()
        decision = shared.decision
        for key in (decision.primary, decision.prefill):
            if key is not None:
                self.index.add(key, hashes, capacity=self.index.capacity(shared.state(key)))


def index_of(handle: plugin.Handle, *, owner: str, plugin_name: str) -> Index | None:
    """The index of prefix-cache-scorer `plugin_name`, or of the first plugin producing `prefix-index` when
    the name is empty; None when the config has none. For plugins that read the index another one learns."""
    source = handle.plugin(plugin_name) if plugin_name else handle.producer("prefix-index")
    if source is None:
        return None
    if not isinstance(source, PrefixCacheScorer):
        raise plugin.ConfigError(
            f"plugin {owner!r}: prefixPlugin {plugin_name!r} is not a prefix-cache-scorer plugin"
        )
    return source.index
