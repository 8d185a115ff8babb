"""KV cache events from the engines, decoded, and the index of which endpoint holds which token block.

vLLM (and the simulator) publish every change of their prefix cache on a ZMQ PUB socket: one multipart
message per engine step, `[topic, 8-byte big-endian sequence number, msgpack(EventBatch)]`. A batch is
`[ts, [event, ...], data_parallel_rank]` (older vLLM, msgspec `array_like`) or a map with those fields
(`ts`, `events`, `data_parallel_rank`); an event is a tagged array (`["BlockStored", block_hashes,
parent_block_hash, token_ids, block_size, lora_id, medium, ...]`, `["BlockRemoved", block_hashes, medium]`,
`["AllBlocksCleared"]`) or a map with a `type` tag. Both forms are accepted; fields a newer vLLM appends
are ignored. Engine block hashes may be ints or bytes (vLLM's `ExternalBlockHash`): they are only compared.

The index is keyed by the picker's *own* hash of token blocks, so the engine's hash algorithm (and seed,
`--prefix-caching-hash-algo`) does not matter: a block's key is `xxh64(parent key (8 bytes LE) + its token
ids (uint32 LE))`, low 60 bits, chained from a fixed root, exactly as the request side hashes a prompt's
token ids (`block_keys`). A `BlockStored` event names the engine hash of its first block's parent; the
index keeps, per endpoint, engine hash -> key of every block it holds, which gives the parent's key and,
for `BlockRemoved`, which keys to drop. A stored block whose parent the index does not hold (published
before the picker subscribed, or lost in a gap) cannot be keyed and is skipped, as are its children in
that event; so are blocks of another block size, LoRA adapter blocks (the request side does not know the
engine's adapter ids) and blocks on another medium than the GPU (CPU offload copies).

Sequence numbers are checked per endpoint: a batch that is not the previous one's successor means batches
were lost (the PUB socket drops when the subscriber is slow), so that endpoint's entries are dropped and
rebuilt from the events that follow; the shell first asks the engine's replay socket for the missing
batches where it has one (`frontier_picker.kv_subscriber`). A malformed batch is treated the same way: it may
have carried removals.

The picker adds *speculative* entries for a request it just sent (`speculate`): the engine announces the
prompt's blocks only once it has computed them, and until then requests sharing the prefix would otherwise
see no holder and scatter, each computing the prefix again. An entry lasts until its expiry on the picker's
clock (`expire`), until the endpoint's `BlockStored` for that block confirms it, or until its
`BlockRemoved` or `AllBlocksCleared` says it is gone.

Memory is bounded: each endpoint keeps at most `max_blocks_per_endpoint` blocks (an engine holds at most
its `num_gpu_blocks`; more means its events are wrong), stores past it are counted and ignored.
Layout (measured in bench/results/kv_events.md): a global dict key -> holders, where a key one endpoint
holds maps to that endpoint's negative *holder code* `~number` (one shared int object per endpoint, so a
single-holder entry costs only its dict slot) and a shared key maps to the bitmask of its holders; per
endpoint a dict engine hash -> key (the key int object is the same one the global dict holds).

Everything here is pure: no sockets, no clock. `frontier_picker.kv_subscriber` is the I/O shell.
"""

import array
import dataclasses
import heapq
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import msgpack
import numpy as np
import xxhash

LOW_60_BITS: Final = (1 << 60) - 1
ROOT: Final = xxhash.xxh64_intdigest(b"frontier-kv-block-root") & LOW_60_BITS
"""The parent key of a sequence's first block."""
GPU_MEDIA: Final = frozenset({None, "GPU", "gpu"})


# --- decoding ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BlockStored:
    """Blocks whose KV the engine computed: engine hashes, the first one's parent, their token ids."""

    block_hashes: Sequence[Any]
    parent_block_hash: Any
    token_ids: Sequence[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BlockRemoved:
    """Blocks the engine evicted."""

    block_hashes: Sequence[Any]
    medium: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    """The engine reset its whole prefix cache."""


Event = BlockStored | BlockRemoved | AllBlocksCleared


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Batch:
    """One published message: its sequence number and events (in order)."""

    seq: int
    ts: float
    events: Sequence[Event]
    dp_rank: int = 0


class DecodeError(ValueError):
    """A message that is not a KV event batch; the text says which part and what was found."""


def decode(frames: Sequence[bytes]) -> Batch:
    """The batch in one multipart message `[topic, seq, payload]`; DecodeError when it is not one."""
    if len(frames) != 3:
        raise DecodeError(f"expected 3 frames [topic, seq, payload], got {len(frames)}")
    _topic, raw_seq, payload = frames
    if len(raw_seq) != 8:
        raise DecodeError(f"sequence frame: expected 8 bytes, got {len(raw_seq)}")
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as error:
        raise DecodeError(f"payload is not msgpack: {error}") from None
    if isinstance(body, Mapping):
        ts, events, dp_rank = body.get("ts"), body.get("events"), body.get("data_parallel_rank", 0)
    elif isinstance(body, list) and len(body) >= 2:
        ts, events = body[0], body[1]
        dp_rank = body[2] if len(body) > 2 else 0
    else:
        raise DecodeError(f"payload: expected an EventBatch array or map, got {type(body).__name__}")
    if not isinstance(events, list):
        raise DecodeError(f"payload events: expected a list, got {type(events).__name__}")
    return Batch(
        seq=int.from_bytes(raw_seq, "big"),
        ts=float(ts) if isinstance(ts, int | float) else 0.0,
        events=[_event(raw, i) for i, raw in enumerate(events)],
        dp_rank=dp_rank if isinstance(dp_rank, int) else 0,
    )


_FIELDS: Final = {
    "BlockStored": ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium"),
    "BlockRemoved": ("block_hashes", "medium"),
    "AllBlocksCleared": (),
}


def _event(raw: Any, index: int) -> Event:
    if isinstance(raw, list) and raw and isinstance(raw[0], str):
        tag = raw[0]
        fields = dict(zip(_FIELDS.get(tag, ()), raw[1:], strict=False))
    elif isinstance(raw, Mapping) and isinstance(raw.get("type"), str):
        tag = raw["type"]
        fields = {name: raw.get(name) for name in _FIELDS.get(tag, ())}
    else:
        raise DecodeError(f"events[{index}]: expected a tagged array or a map with 'type', got {raw!r:.80}")
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    hashes = fields.get("block_hashes")
    if not isinstance(hashes, list):
        raise DecodeError(f"events[{index}] ({tag}): block_hashes must be a list, got {hashes!r:.80}")
    medium = fields.get("medium")
    if tag == "BlockRemoved":
        return BlockRemoved(block_hashes=hashes, medium=medium)
    if tag != "BlockStored":
        raise DecodeError(f"events[{index}]: unknown event type {tag!r}")
    tokens = fields.get("token_ids")
    size = fields.get("block_size")
    if not isinstance(tokens, list) or not isinstance(size, int) or size <= 0:
        raise DecodeError(f"events[{index}] (BlockStored): token_ids must be a list and block_size > 0")
    if len(tokens) < len(hashes) * size:
        raise DecodeError(
            f"events[{index}] (BlockStored): {len(tokens)} token ids for {len(hashes)} blocks of {size}"
        )
    lora = fields.get("lora_id")
    return BlockStored(
        block_hashes=hashes,
        parent_block_hash=fields.get("parent_block_hash"),
        token_ids=tokens,
        block_size=size,
        lora_id=lora if isinstance(lora, int) else None,
        medium=medium,
    )


# --- the picker's block keys -------------------------------------------------------------------------------
def block_keys(token_ids: Sequence[int], *, block_size: int, parent: int = ROOT) -> list[int]:
    """The chained keys of the full blocks of `token_ids` (a request's prompt, or a stored run of blocks
    whose first parent has key `parent`)."""
    data = array.array("I", token_ids).tobytes()
    width = 4 * block_size
    usable = len(data) // width * width
    digest = xxhash.xxh64_intdigest
    keys = []
    for start in range(0, usable, width):
        parent = digest(parent.to_bytes(8, "little") + data[start : start + width]) & LOW_60_BITS
        keys.append(parent)
    return keys


# --- the index ---------------------------------------------------------------------------------------------
def _mask(entry: Mapping[int, float] | None) -> int:
    """The holders bitmask of a speculative entry (0 for none)."""
    if not entry:
        return 0
    mask = 0
    for number in entry:
        mask |= 1 << number
    return mask


@dataclasses.dataclass(slots=True, kw_only=True)
class Holdings:
    """What one endpoint holds: engine hash -> block key, and the last sequence number applied."""

    number: int
    code: int  # ~number: the holders value of a key only this endpoint holds (one shared object)
    blocks: dict[Any, int] = dataclasses.field(default_factory=dict)
    seq: int | None = None


@dataclasses.dataclass(slots=True)
class Applied:
    """What applying one batch did, for the shell's log line and metrics."""

    stored: int = 0
    removed: int = 0
    cleared: bool = False
    gap: int = 0  # batches lost before this one (0: none)
    skipped: int = 0  # stored blocks not indexed: unknown parent, other block size or medium, LoRA
    overflow: int = 0  # stored blocks past the endpoint's bound


class BlockIndex:
    """Which endpoint holds which token block, as its engine's KV events say."""

    def __init__(self, *, block_size: int = 16, max_blocks_per_endpoint: int = 1 << 20) -> None:
        self.block_size = block_size
        self.max_blocks_per_endpoint = max_blocks_per_endpoint
        self._holders: dict[int, int] = {}
        self._holdings: dict[str, Holdings] = {}
        self._key_of_number: list[str | None] = []
        self._free_numbers: list[int] = []
        # Speculative entries: block key -> {endpoint number: expiry}, and a heap of the expiries.
        self._speculative: dict[int, dict[int, float]] = {}
        self._expiries: list[tuple[float, int, int, Sequence[int]]] = []
        self._made = itertools.count()  # breaks ties between equal expiries

    # -- ingestion --
    def ingest(self, key: str, frames: Sequence[bytes]) -> Applied:
        """Decode and apply one message from endpoint `key`; a malformed one drops the endpoint's entries
        (it may have carried removals) and raises DecodeError."""
        try:
            batch = decode(frames)
        except DecodeError:
            self.drop(key)
            raise
        return self.apply(key, batch)

    def last_seq(self, key: str) -> int | None:
        """The sequence number of the last batch applied from endpoint `key` (None: none yet)."""
        holdings = self._holdings.get(key)
        return holdings.seq if holdings is not None else None

    def apply(self, key: str, batch: Batch) -> Applied:
        """Apply `batch` from endpoint `key`; a sequence gap first drops the endpoint's entries."""
        holdings = self._holdings.get(key) or self._register(key)
        applied = Applied()
        if holdings.seq is not None and batch.seq != holdings.seq + 1:
            applied.gap = max(1, batch.seq - holdings.seq - 1)
            self._clear(holdings)
        holdings.seq = batch.seq
        for event in batch.events:
            if isinstance(event, BlockStored):
                self._store(holdings, event, applied)
            elif isinstance(event, BlockRemoved):
                if event.medium in GPU_MEDIA:
                    applied.removed += self._remove(holdings, event.block_hashes)
            else:
                applied.cleared = True
                self._clear(holdings)
                self._unspeculate_all(holdings.number)  # nothing is held there now, sent or not
        return applied

    def _store(self, holdings: Holdings, event: BlockStored, applied: Applied) -> None:
        count = len(event.block_hashes)
        if event.block_size != self.block_size or event.lora_id is not None or event.medium not in GPU_MEDIA:
            applied.skipped += count
            return
        blocks = holdings.blocks
        if event.parent_block_hash is None:
            parent = ROOT
        else:
            found = blocks.get(event.parent_block_hash)
            if found is None:
                applied.skipped += count
                return
            parent = found
        keys = block_keys(
            event.token_ids[: count * self.block_size], block_size=self.block_size, parent=parent
        )
        holders = self._holders
        get = holders.get
        speculative = self._speculative
        code = holdings.code
        bit = 1 << holdings.number
        room = self.max_blocks_per_endpoint - len(blocks)
        for engine_hash, block_key in zip(event.block_hashes, keys, strict=True):
            if engine_hash in blocks:
                continue
            if room <= 0:
                applied.overflow += 1
                continue
            room -= 1
            blocks[engine_hash] = block_key
            applied.stored += 1
            if block_key in speculative:  # confirmed: the speculative entry has done its work
                self._unspeculate(block_key, holdings.number)
            held = get(block_key)
            if held is None:
                holders[block_key] = code
            elif held < 0:
                if held != code:
                    holders[block_key] = (1 << ~held) | bit
            else:
                holders[block_key] = held | bit

    def _remove(self, holdings: Holdings, engine_hashes: Iterable[Any]) -> int:
        removed = 0
        pop = holdings.blocks.pop
        for engine_hash in engine_hashes:
            block_key = pop(engine_hash, None)
            if block_key is not None:
                self._release(holdings, block_key)
                if block_key in self._speculative:
                    self._unspeculate(block_key, holdings.number)
                removed += 1
        return removed

    def _release(self, holdings: Holdings, block_key: int) -> None:
        held = self._holders.get(block_key)
        if held is None:
            return
        if held < 0:
            if held == holdings.code:
                del self._holders[block_key]
            return
        rest = held & ~(1 << holdings.number)
        if rest & (rest - 1):
            self._holders[block_key] = rest
        elif rest:
            self._holders[block_key] = self._code(rest.bit_length() - 1)
        else:
            del self._holders[block_key]

    def _code(self, number: int) -> int:
        owner = self._key_of_number[number]
        assert owner is not None, "a held key names a forgotten endpoint"
        return self._holdings[owner].code

    def _clear(self, holdings: Holdings) -> None:
        for block_key in holdings.blocks.values():
            self._release(holdings, block_key)
        holdings.blocks = {}

    def _register(self, key: str) -> Holdings:
        if self._free_numbers:
            number = self._free_numbers.pop()
            self._key_of_number[number] = key
        else:
            number = len(self._key_of_number)
            self._key_of_number.append(key)
        holdings = self._holdings[key] = Holdings(number=number, code=~number)
        return holdings

    def drop(self, key: str) -> None:
        """Forget what endpoint `key` holds and its sequence number (its next batch starts afresh)."""
        holdings = self._holdings.get(key)
        if holdings is not None:
            self._clear(holdings)
            holdings.seq = None

    def forget(self, key: str) -> None:
        """Remove endpoint `key` entirely (it left the pool); its number is reused."""
        holdings = self._holdings.pop(key, None)
        if holdings is not None:
            self._clear(holdings)
            self._unspeculate_all(holdings.number)
            self._key_of_number[holdings.number] = None
            self._free_numbers.append(holdings.number)

    # -- speculative entries: what the picker just sent, until the engine's events confirm it --
    def speculate(self, key: str, block_keys: Sequence[int], *, until: float) -> None:
        """Count endpoint `key` as holding `block_keys` until `until` (the picker's clock) or until its
        engine reports storing them: a request just sent there will compute them, and the next request
        with the same prefix should not go elsewhere meanwhile."""
        holdings = self._holdings.get(key) or self._register(key)
        number = holdings.number
        speculative = self._speculative
        for block_key in block_keys:
            entry = speculative.get(block_key)
            if entry is None:
                speculative[block_key] = {number: until}
            else:
                entry[number] = until
        heapq.heappush(self._expiries, (until, next(self._made), number, block_keys))

    def expire(self, now: float) -> None:
        """Drop the speculative entries whose time is up at `now` (and not renewed since)."""
        expiries = self._expiries
        speculative = self._speculative
        while expiries and expiries[0][0] <= now:
            until, _, number, block_keys = heapq.heappop(expiries)
            for block_key in block_keys:
                entry = speculative.get(block_key)
                if entry is not None and entry.get(number) == until:
                    del entry[number]
                    if not entry:
                        del speculative[block_key]

    def _unspeculate(self, block_key: int, number: int) -> None:
        entry = self._speculative.get(block_key)
        if entry is not None and entry.pop(number, None) is not None and not entry:
            del self._speculative[block_key]

    def _unspeculate_all(self, number: int) -> None:
        for block_key in [key for key, entry in self._speculative.items() if number in entry]:
            self._unspeculate(block_key, number)

    def speculative_entries(self) -> int:
        """Speculative (endpoint, block) entries not yet expired or confirmed."""
        return sum(len(entry) for entry in self._speculative.values())

    # -- queries --
    def match(self, keys: Sequence[int], positions: Mapping[str, int], count: int) -> np.ndarray:
        """Per candidate (`positions`: endpoint key -> index, `count` candidates): how many leading blocks
        of `keys` its engine holds, or will hold per a live speculative entry (call `expire` first)."""
        matched = np.zeros(count, dtype=np.float64)
        if not keys or not (self._holders or self._speculative):
            return matched
        get = self._holders.get
        guessed = self._speculative.get
        names = self._key_of_number
        held = get(keys[0], 0)
        alive = (1 << ~held if held < 0 else held) | _mask(guessed(keys[0]))
        depth = 1
        while alive and depth < len(keys):
            held = get(keys[depth], 0)
            still = alive & ((1 << ~held if held < 0 else held) | _mask(guessed(keys[depth])))
            self._credit(alive & ~still, depth, names, positions, matched)
            alive = still
            depth += 1
        self._credit(alive, depth, names, positions, matched)
        return matched

    @staticmethod
    def _credit(
        mask: int, depth: int, names: Sequence[str | None], positions: Mapping[str, int], matched: np.ndarray
    ) -> None:
        while mask:
            low = mask & -mask
            name = names[low.bit_length() - 1]
            position = positions.get(name) if name is not None else None
            if position is not None:
                matched[position] = depth
            mask ^= low

    def holds(self, key: str, block_key: int) -> bool:
        """Whether endpoint `key` holds the block with key `block_key`."""
        holdings = self._holdings.get(key)
        if holdings is None:
            return False
        held = self._holders.get(block_key, 0)
        return held == holdings.code if held < 0 else bool(held >> holdings.number & 1)

    def size(self, key: str) -> int:
        """Blocks endpoint `key` holds."""
        holdings = self._holdings.get(key)
        return len(holdings.blocks) if holdings is not None else 0

    def entries(self) -> int:
        """Blocks held over all endpoints (one entry per endpoint per block)."""
        return sum(len(holdings.blocks) for holdings in self._holdings.values())

    def keys(self) -> int:
        """Distinct block keys held by some endpoint."""
        return len(self._holders)

    def endpoints(self) -> list[str]:
        """The endpoints the index has heard from."""
        return sorted(self._holdings)
