"""The approximate prefix-cache index and the prefix-cache scorer (GIE's hashing defaults).

A prompt is cut into blocks of `block_size` characters (64: 16 tokens of ~4 characters); a trailing partial
block is ignored and at most `max_blocks` (256) blocks are used. Block hashes are chained: each is the
xxhash64 of the block's bytes followed by the previous hash (8 bytes, little-endian), and the chain starts
from the xxhash64 of the target model's name, so equal text under different models never matches. A hash
therefore names a whole prefix: an endpoint holding block i's hash has (approximately) cached the prompt
up to block i.

The index is learned only from the picker's own decisions: after each decision the request's hashes are
recorded for the chosen endpoint (and its prefill endpoint). Each endpoint keeps an LRU of at most
`lru_capacity` hashes (31,250), or, when its engine reports `cache_config_info`, as many as its KV cache holds
(blocks x block size / 16 tokens per hash). A global map from hash to its holders makes the match of one
request against every endpoint a walk over the request's blocks with big-integer ANDs of holder bitmasks,
independent of the number of endpoints until the chain breaks. Most hashes have one holder; they store that
endpoint's number as a negative int (`~n`), because a bitmask with bit 999 set costs 160 bytes, `~999` 28.
"""

import collections
import struct
from collections.abc import Sequence

import numpy as np
import xxhash

from frontier_picker import endpoints
from frontier_picker.scheduling import plugins, types

CHARS_PER_TOKEN = 4
_LITTLE_ENDIAN_U64 = struct.Struct("<Q")


def block_hashes(prompt: str, *, model: str, block_size: int = 64, max_blocks: int = 256) -> list[int]:
    """The chained block hashes of `prompt` (empty when shorter than one block)."""
    data = prompt.encode()
    usable = min(len(data) // block_size, max_blocks) * block_size
    digest = xxhash.xxh64_intdigest
    pack = _LITTLE_ENDIAN_U64.pack
    previous = digest(model.encode())
    hashes = []
    for start in range(0, usable, block_size):
        previous = digest(data[start : start + block_size] + pack(previous))
        hashes.append(previous)
    return hashes


def _mask(held: int) -> int:
    """The holder bitmask of a `holders` value (a negative value is one holder's number, inverted)."""
    return 1 << ~held if held < 0 else held


def _compact(mask: int) -> int:
    """The `holders` value of a bitmask: one holder stored as its inverted number."""
    return ~(mask.bit_length() - 1) if mask & (mask - 1) == 0 else mask


class Index:
    """Which endpoint (approximately) holds which prefix block: per-endpoint LRUs, hash -> holder bitmask."""

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
        self._lru: dict[str, collections.OrderedDict[int, None]] = {}
        self._bit: dict[str, int] = {}
        self._key_of_bit: list[str] = []

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
        keys = self._key_of_bit
        get = holders.get
        held = get(hashes[0], 0)
        alive = 1 << ~held if held < 0 else held
        depth = 1
        while alive and depth < len(hashes):
            held = get(hashes[depth], 0)
            still = alive & (1 << ~held if held < 0 else held)  # _mask, inlined on the hot path
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
        """LRU size for an endpoint: from its KV cache size when known and auto-tuning, else the default."""
        if self.auto_tune and state is not None:
            metrics = state.metrics
            if metrics.num_gpu_blocks and metrics.block_size:
                return max(1, metrics.num_gpu_blocks * metrics.block_size // self.tokens_per_block)
        return self.lru_capacity

    def add(self, key: str, hashes: Sequence[int], *, capacity: int) -> None:
        """Record that endpoint `key` now holds `hashes` (most recently used)."""
        if not hashes:
            return
        lru = self._lru.get(key)
        if lru is None:
            lru = self._lru[key] = collections.OrderedDict()
            self._bit[key] = len(self._key_of_bit)
            self._key_of_bit.append(key)
        number = self._bit[key]
        holders = self._holders
        get = holders.get
        move_to_end = lru.move_to_end
        for value in hashes:
            if value in lru:
                move_to_end(value)
            else:
                lru[value] = None
                held = get(value)
                holders[value] = ~number if held is None else _compact(_mask(held) | (1 << number))
        bit = 1 << number
        while len(lru) > capacity:
            evicted, _ = lru.popitem(last=False)
            rest = _mask(holders[evicted]) & ~bit
            if rest:
                holders[evicted] = _compact(rest)
            else:
                del holders[evicted]

    def size(self, key: str) -> int:
        lru = self._lru.get(key)
        return len(lru) if lru is not None else 0

    def entries(self) -> int:
        """Hashes held over all endpoints (an entry per endpoint per hash)."""
        return sum(len(lru) for lru in self._lru.values())

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
