"""The approximate prefix-cache index and the prefix-cache scorer (GIE's hashing defaults).

A prompt is cut into blocks of `block_size` characters (64: 16 tokens of ~4 characters); a trailing partial
block is ignored and at most `max_blocks` (256) blocks are used. Block hashes are chained: each is the
xxhash64 of the block's bytes followed by the previous hash (8 bytes, little-endian), and the chain starts
from the xxhash64 of the target model's name, so equal text under different models never matches. A hash
therefore names a whole prefix: an endpoint holding block i's hash has (approximately) cached the prompt
up to block i. The index keeps each hash's low 60 bits (the chain itself uses all 64): a smaller int object,
and with 31 M entries the chance of any collision at all is about 1 in 2,400.

The index is learned only from the picker's own decisions: after each decision the request's hashes are
recorded for the chosen endpoint (and its prefill endpoint). Each endpoint keeps at most `lru_capacity`
hashes (31,250), or, when its engine reports `cache_config_info`, as many as its KV cache holds (blocks x
block size / 16 tokens per hash), evicting the least recently learned first (approximately, see below).

Layout, chosen for memory (at 1,000 endpoints x 31,250 hashes the index holds 31 M entries; the earlier
per-endpoint `OrderedDict` LRUs cost ~211 B per entry, 6.5 GiB in all; bench/results/scheduling_cost.md):

- One global dict maps a hash to its holders. Matching a request against every endpoint is then a walk over
  the request's blocks with big-integer ANDs of holder bitmasks, independent of the number of endpoints
  until the chain breaks. A hash with one holder (the common case) stores a negative *holder code*
  `~(number * 16 + stamp)`: the endpoint's number and the generation (modulo 16) in which it last learned
  the hash. Codes are prebuilt int objects per endpoint, so a single-holder entry costs no value object;
  the hash int itself is the same object as the one in the endpoint's queue.
- A hash with several holders stores their bitmask (bit = endpoint number); each holder then keeps that
  hash's stamp in its own small `shared` dict. Sharing is the minority of entries (shared prefixes, and
  the decode + prefill pair of a disaggregated request).
- Per endpoint, a `deque` of the hashes in the order learned (8 B per entry, freed as it drains), cut
  into generations of a quarter of the capacity. Learning a hash it holds from an older generation
  appends it again with the current stamp (its old slot becomes *stale*); learning one held in the current
  generation changes nothing. Eviction pops the oldest slot: a stale slot (its stamp differs from the hash's
  current one) is dropped, otherwise the endpoint's holding of that hash ends, so an evicted hash never
  matches again and an endpoint never holds more than `capacity`. A hash is kept at least until three
  quarters of the capacity in other hashes have been learned since it was last learned, and 14 generations
  of learning since (stamps are modulo 16, so at most 15 generations stay live). Exact LRU would keep the
  last `capacity`; GIE's own index is approximate too.

Measured (bench/results/scheduling_cost.md, 3.1 M distinct single-holder entries, tracemalloc): ~94 B per
entry (the 60-bit hash int 32 B, its global dict slot ~54 B at that fill, its queue slot 8 B) against
~211 B for the earlier per-endpoint `OrderedDict` LRUs, which also paid an `OrderedDict` node and a fresh
holder int per entry; learning is faster too (no `move_to_end`, no allocation per entry but the hash's).
What remains is one Python int and one dict slot per hash; going below needs a table of plain machine
words (numpy open addressing), not built.
"""

import collections
import dataclasses
import struct
from collections.abc import Sequence

import numpy as np
import xxhash

from frontier_picker import endpoints
from frontier_picker.scheduling import plugins, types

CHARS_PER_TOKEN = 4
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


STAMPS = 16
"""Generation numbers are kept modulo 16: the low 4 bits of a holder code."""
_STAMP_BITS = 4
GENERATIONS = 4
"""An endpoint's capacity is learned in generations of a quarter of it."""
SLOTS_PER_CAPACITY = 2
"""An endpoint's queue holds at most twice its capacity in slots, stale ones included."""


@dataclasses.dataclass(slots=True, kw_only=True)
class Holdings:
    """What one endpoint holds: its hashes in learning order, by generation, and its shared-hash stamps."""

    number: int
    codes: tuple[int, ...]  # the endpoint's holder code for each stamp, shared by all its entries
    queue: collections.deque[int] = dataclasses.field(default_factory=collections.deque)
    # slots per older generation, oldest first
    older: collections.deque[int] = dataclasses.field(default_factory=collections.deque)
    filled: int = 0  # slots of the current generation (the newest in the queue)
    generation: int = 0
    stale: int = 0  # queue slots of hashes learned again later (not held twice)
    shared: dict[int, int] = dataclasses.field(default_factory=dict)  # hash -> stamp, for multi-holder hashes

    def size(self) -> int:
        return len(self.queue) - self.stale


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
        self.tokens_per_block = max(1, block_size // CHARS_PER_TOKEN)
        self._holders: dict[int, int] = {}
        self._holdings: dict[str, Holdings] = {}
        self._by_number: list[Holdings] = []
        self._key_of_number: list[str] = []

    def hashes(self, cycle: plugins.Cycle) -> list[int]:
        """The request's block hashes, computed once per cycle and shared by every plugin using this index."""
        key = f"prefix_hashes:{id(self)}"
        cached: list[int] | None = cycle.derived.get(key)
        if cached is None:
            request = cycle.request
            cached = block_hashes(
                request.prompt,
                model=request.target_model,
                block_size=self.block_size,
                max_blocks=self.max_blocks,
            )
            cycle.derived[key] = cached
        return cached

    def matched_blocks(self, cycle: plugins.Cycle) -> np.ndarray:
        """Per candidate of `cycle`: how many leading blocks of the request the endpoint holds."""
        per_index = cycle.derived.setdefault("prefix_matched", {})
        matched: np.ndarray | None = per_index.get(id(self))
        if matched is None:
            matched = self._match(self.hashes(cycle), cycle)
            per_index[id(self)] = matched
        return matched

    def _match(self, hashes: Sequence[int], cycle: plugins.Cycle) -> np.ndarray:
        counts = np.zeros(len(cycle.candidates), dtype=np.float64)
        if not hashes or not self._holders:
            return counts
        holders = self._holders
        positions = cycle.positions()
        keys = self._key_of_number
        get = holders.get
        held = get(hashes[0], 0)
        alive = 1 << (~held >> _STAMP_BITS) if held < 0 else held
        depth = 1
        while alive and depth < len(hashes):
            held = get(hashes[depth], 0)
            still = alive & (1 << (~held >> _STAMP_BITS) if held < 0 else held)
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
        codes = tuple(~(number << _STAMP_BITS | stamp) for stamp in range(STAMPS))
        holdings = self._holdings[key] = Holdings(number=number, codes=codes)
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
        holders = self._holders
        get = holders.get
        shared = holdings.shared
        queue = holdings.queue
        append = queue.append
        popleft = queue.popleft
        older = holdings.older
        codes = holdings.codes
        generation_size = max(1, capacity // GENERATIONS)
        generation = holdings.generation
        stamp = generation % STAMPS
        code = codes[stamp]
        own_lowest, own_highest = codes[-1], codes[0]  # this endpoint's codes, whatever their stamp
        filled = holdings.filled
        stale = holdings.stale
        slots = len(queue)
        size = slots - stale
        slot_limit = limit = SLOTS_PER_CAPACITY * capacity
        most_older = STAMPS - 2  # so that at most STAMPS - 1 generations are live
        if len(older) > most_older:  # only after the capacity grew: drop the oldest generation now
            limit = slots - older[0]
        oldest_stamp = (generation - len(older)) % STAMPS  # of the oldest slot in the queue
        oldest_code = codes[oldest_stamp]
        for value in hashes:
            held = get(value)
            if held is None:
                holders[value] = code
                size += 1
            elif held < 0:
                if held == code:
                    continue
                if own_lowest <= held <= own_highest:  # held from an older generation: renew it
                    holders[value] = code
                    stale += 1
                else:
                    other = ~held // STAMPS
                    self._by_number[other].shared[value] = ~held % STAMPS
                    shared[value] = stamp
                    holders[value] = (1 << other) | bit
                    size += 1
            elif held & bit:
                if shared[value] == stamp:
                    continue
                shared[value] = stamp
                stale += 1
            else:
                shared[value] = stamp
                holders[value] = held | bit
                size += 1
            append(value)
            slots += 1
            filled += 1
            if filled >= generation_size:
                older.append(filled)
                filled = 0
                generation += 1
                stamp = generation % STAMPS
                code = codes[stamp]
                if len(older) > most_older:
                    limit = slots - older[0]
                oldest_stamp = (generation - len(older)) % STAMPS
                oldest_code = codes[oldest_stamp]
            # Over a limit, an older generation exists: the current one holds under generation_size.
            while size > capacity or slots > limit:
                evicted = popleft()
                slots -= 1
                held = holders[evicted]
                if held == oldest_code:
                    del holders[evicted]
                    size -= 1
                elif held < 0:  # renewed since: this was its old slot
                    stale -= 1
                elif self._release(holdings, evicted, stamp=oldest_stamp):
                    size -= 1
                else:
                    stale -= 1
                left = older[0] - 1
                if left:
                    older[0] = left
                else:
                    older.popleft()
                    limit = slot_limit
                    oldest_stamp = (generation - len(older)) % STAMPS
                    oldest_code = codes[oldest_stamp]
        holdings.generation = generation
        holdings.filled = filled
        holdings.stale = stale

    def _release(self, holdings: Holdings, value: int, *, stamp: int) -> bool:
        """End `holdings`' share of multi-holder hash `value` if last learned in generation `stamp`."""
        shared = holdings.shared
        if shared[value] != stamp:
            return False
        del shared[value]
        rest = self._holders[value] & ~(1 << holdings.number)
        if rest & (rest - 1):
            self._holders[value] = rest
        else:  # one holder left: back to its compact code
            other = self._by_number[rest.bit_length() - 1]
            self._holders[value] = other.codes[other.shared.pop(value)]
        return True

    def holds(self, key: str, value: int) -> bool:
        """Whether endpoint `key` holds block hash `value`."""
        holdings = self._holdings.get(key)
        if holdings is None:
            return False
        held = self._holders.get(value, 0)
        return ~held >> _STAMP_BITS == holdings.number if held < 0 else bool(held >> holdings.number & 1)

    def size(self, key: str) -> int:
        holdings = self._holdings.get(key)
        return holdings.size() if holdings is not None else 0

    def entries(self) -> int:
        """Hashes held over all endpoints (an entry per endpoint per hash)."""
        return sum(holdings.size() for holdings in self._by_number)

    def learn(self, cycle: plugins.Cycle, decision: types.Decision) -> None:
        """Record the request's blocks on the endpoints the decision sends it to (destination and prefill)."""
        hashes = self.hashes(cycle)
        if not hashes:
            return
        chosen: dict[str, endpoints.EndpointState] = cycle.derived.get("chosen_states", {})
        for key in (decision.primary, decision.prefill):
            if key is not None:
                self.add(key, hashes, capacity=self.capacity(chosen.get(key)))


@plugins.register
class PrefixCacheScorer(plugins.Scorer):
    """Prefer endpoints that already hold the request's prompt prefix in their KV cache (approximately).

    Learned from the picker's own decisions (see the module doc); the same index feeds predicted-ttft-scorer.
    """

    type_name = "prefix-cache-scorer"
    formula = "score = matched leading blocks / request blocks (0 when the prompt is under one block)"
    intent = "affinity"
    consumes = frozenset({"metrics"})
    produces = frozenset({"prefix-index"})
    parameter_docs = {
        "blockSize": "characters per block (64)",
        "maxPrefixBlocksToMatch": "blocks hashed per request (256)",
        "lruCapacityPerServer": "hashes kept per endpoint when its KV size is unknown (31250)",
        "autoTune": "size each endpoint's LRU from cache_config_info when reported (true)",
    }

    def __init__(self, name: str, *, index: Index) -> None:
        super().__init__(name)
        self.index = index

    @classmethod
    def build(cls, name: str, parameters: plugins.Parameters) -> plugins.Plugin:
        auto = parameters.raw("autoTune", True)
        if not isinstance(auto, bool):
            raise plugins.ConfigError(
                f"plugin {name!r}: parameter 'autoTune' must be true or false, got {auto!r}"
            )
        index = Index(
            block_size=parameters.integer("blockSize", 64, minimum=1),
            max_blocks=parameters.integer("maxPrefixBlocksToMatch", 256, minimum=1),
            lru_capacity=parameters.integer("lruCapacityPerServer", 31_250, minimum=1),
            auto_tune=auto,
        )
        return cls(name, index=index)

    def score(self, cycle: plugins.Cycle) -> np.ndarray:
        total = len(self.index.hashes(cycle))
        if total == 0:
            return np.zeros(len(cycle.candidates), dtype=np.float64)
        return self.index.matched_blocks(cycle) / total

    def on_decision(self, cycle: plugins.Cycle, decision: types.Decision) -> None:
        self.index.learn(cycle, decision)
