"""Precise prefix-cache routing: the engines' KV events as the index, the request's token ids as the key.

`kv-events-subscriber` is a data source: it subscribes to every publishing endpoint's KV events and keeps
`kv_events.BlockIndex` (which endpoint holds which token block, keyed by the picker's own hash of token
ids; see that module). `precise-prefix-cache-scorer` tokenizes the request, cuts its token ids into blocks
of the index's block size, and scores each candidate by the leading blocks its engine reports holding.
Unlike `prefix-cache-scorer` it does not guess evictions: an engine's eviction removes the entry as soon as
its event arrives. What it learns from its own decisions is short-lived: a request just sent counts as held
where it went (a speculative entry) until the engine's `BlockStored` confirms it or `speculativeTtlSeconds`
pass, so a burst of requests sharing a new prefix does not scatter before the first one is computed.

Tokenizers (`frontier_picker.tokenization`): `standin` is the simulator's, so precise routing is exact
against simulated engines. A path names a model's own `tokenizer.json` (Hugging Face `tokenizers`, an
optional dependency; mounted from a ConfigMap or volume, never fetched from a hub): completions are encoded
as vLLM encodes them, chat requests rendered with the model's chat template first (`chatTemplate`, or the
`chat_template.jinja` / `tokenizer_config.json` beside the tokenizer). A request the tokenizer cannot
encode (a chat without a template) scores 0, leaving the decision to the other scorers.

A request of more than `offLoopChars` characters is tokenized before scheduling, in a worker thread of the
ext_proc server (`preparation`), so the event loop keeps serving other streams meanwhile; the token ids wait
in `request.prepared`. Where nothing prepares requests (the virtual-time cluster) the scorer tokenizes
inline, with the same result.
"""

from collections.abc import Callable
from pathlib import Path

import numpy as np

from frontier_picker import kv_events, kv_subscriber, tokenization
from frontier_picker.scheduling import types
from frontier_picker.scheduling.framework import cycles, plugin

STANDIN = "standin"


def tokenizer_for(value: str, *, chat_template: str, owner: str) -> tokenization.Tokenizer:
    """The tokenizer a `tokenizer` parameter names: `standin`, or the path of a `tokenizer.json` (with the
    chat template `chat_template` names, or the one shipped beside it)."""
    if value == STANDIN:
        if chat_template:
            raise plugin.ConfigError(
                f"plugin {owner!r}: parameter 'chatTemplate' needs a model's tokenizer.json as 'tokenizer'; "
                f"{STANDIN!r} has the simulator's template"
            )
        return tokenization.StandinTokenizer()
    path = Path(value)
    if not path.is_file():
        raise plugin.ConfigError(
            f"plugin {owner!r}: parameter 'tokenizer' is {value!r}, which is not a file; "
            f"give {STANDIN!r} or the path of a model's tokenizer.json"
        )
    if chat_template and not Path(chat_template).is_file():
        raise plugin.ConfigError(
            f"plugin {owner!r}: parameter 'chatTemplate' is {chat_template!r}, which is not a file; give a "
            "Jinja template or a tokenizer_config.json with a chat_template"
        )
    try:
        template = tokenization.load_chat_template(path, Path(chat_template) if chat_template else None)
        return tokenization.FileTokenizer(path, chat_template=template)
    except ImportError:
        raise plugin.ConfigError(
            f"plugin {owner!r}: tokenizer {value!r} needs the Hugging Face tokenizers and jinja2 packages "
            "(pip install 'frontier[tokenizers]')"
        ) from None
    except tokenization.TemplateError as error:
        raise plugin.ConfigError(f"plugin {owner!r}: {error}") from None
    except Exception as error:  # the tokenizers library raises its own exception type for a bad file
        raise plugin.ConfigError(f"plugin {owner!r}: tokenizer {value!r} does not load: {error}") from None


@plugin.register
class KvEventsSubscriber(plugin.DataSource):
    """Keep an index of the token blocks each endpoint's engine holds, from its KV events (ZMQ).

    Subscribes to `tcp://<endpoint>:<port>` for every endpoint labelled
    `inference.frontier.dev/kv-events-port` (or every endpoint, when `port` is set); a sequence gap is
    replayed from the engine's replay socket (label `inference.frontier.dev/kv-events-replay-port`, or
    `replayPort`) where it has one; a gap that cannot be replayed, or an undecodable batch, drops that
    endpoint's entries, which the events that follow rebuild. Read by
    `precise-prefix-cache-scorer`.
    """

    type_name = "kv-events-subscriber"
    formula = "holds(endpoint, block) = BlockStored seen and no BlockRemoved/AllBlocksCleared since"
    intent = "data"
    produces = frozenset({"kv-block-index"})
    BLOCK_SIZE = plugin.Param("blockSize", 16, "tokens per block; the engines' --block-size", 1)
    MAX_BLOCKS = plugin.Param(
        "maxBlocksPerEndpoint",
        1 << 20,
        "blocks indexed per endpoint (memory bound; stores past it ignored)",
        1,
    )
    PORT = plugin.Param(
        "port", 0, "KV events port of endpoints without the kv-events-port label (0: only labelled ones)", 0
    )
    REPLAY_PORT = plugin.Param(
        "replayPort",
        0,
        "KV events replay port of endpoints without the kv-events-replay-port label (0: none; a gap drops)",
        0,
    )
    parameter_docs = plugin.documented((BLOCK_SIZE, MAX_BLOCKS, PORT, REPLAY_PORT))

    def __init__(self, name: str, *, index: kv_events.BlockIndex, port: int, replay_port: int = 0) -> None:
        super().__init__(name)
        self.index = index
        self.port = port
        self.replay_port = replay_port
        self.subscriber: kv_subscriber.Subscriber | None = None  # while running

    @classmethod
    def build(cls, name: str, parameters: plugin.Parameters, handle: plugin.Handle) -> plugin.Plugin:
        index = kv_events.BlockIndex(
            block_size=parameters.read(cls.BLOCK_SIZE),
            max_blocks_per_endpoint=parameters.read(cls.MAX_BLOCKS),
        )
        return cls(
            name,
            index=index,
            port=parameters.read(cls.PORT),
            replay_port=parameters.read(cls.REPLAY_PORT),
        )

    async def run(self, states: kv_subscriber.StatesFn) -> None:
        self.subscriber = kv_subscriber.Subscriber(
            self.index, states, default_port=self.port, default_replay_port=self.replay_port
        )
        await self.subscriber.run()


@plugin.register
class PrecisePrefixCacheScorer(plugin.Scorer):
    """Prefer endpoints whose engine reports holding the request's leading token blocks (KV events).

    Finds its index as the producer of `kv-block-index` (a `kv-events-subscriber`, or the one named by
    `indexPlugin`). Scores 0 everywhere until events arrive.
    """

    type_name = "precise-prefix-cache-scorer"
    formula = "score = leading blocks held per KV events / request blocks (0 under one block)"
    intent = "affinity"
    consumes = frozenset({"kv-block-index"})
    TOKENIZER = plugin.Param(
        "tokenizer", STANDIN, "standin (the simulator's) or the path of the model's tokenizer.json"
    )
    CHAT_TEMPLATE = plugin.Param(
        "chatTemplate",
        "",
        "Jinja chat template file or tokenizer_config.json (default: the one beside the tokenizer)",
    )
    OFF_LOOP_CHARS = plugin.Param(
        "offLoopChars",
        16_384,
        "requests longer than this (characters) are tokenized in a worker thread before scheduling",
        0,
    )
    INDEX_PLUGIN = plugin.Param("indexPlugin", "", "kv-events-subscriber to read (default: the first)")
    MAX_BLOCKS = plugin.Param("maxPrefixBlocksToMatch", 0, "blocks matched per request (0: all)", 0)
    SPECULATIVE_TTL = plugin.Param(
        "speculativeTtlSeconds",
        2.0,
        "blocks of a request count as held where it was sent this long, or until confirmed (0: off)",
        0.0,
    )
    parameter_docs = plugin.documented(
        (TOKENIZER, CHAT_TEMPLATE, INDEX_PLUGIN, MAX_BLOCKS, SPECULATIVE_TTL, OFF_LOOP_CHARS)
    )

    def __init__(
        self,
        name: str,
        *,
        index: kv_events.BlockIndex,
        max_blocks: int,
        tokenizer: tokenization.Tokenizer | None = None,
        speculative_ttl_s: float = 2.0,
        off_loop_chars: int = 16_384,
    ) -> None:
        super().__init__(name)
        self.index = index
        self.tokenizer = tokenizer or tokenization.StandinTokenizer()
        self.off_loop_chars = off_loop_chars
        self.max_blocks = max_blocks
        self.speculative_ttl_s = speculative_ttl_s
        # Owned by this scorer: the request's block keys, and the match per candidate (per candidate set).
        self.keys_key: cycles.StateKey[list[int]] = cycles.StateKey(f"{name}/block-keys")
        self.matched_key: cycles.StateKey[np.ndarray] = cycles.StateKey(
            f"{name}/matched", per_candidates=True
        )

    @classmethod
    def build(cls, name: str, parameters: plugin.Parameters, handle: plugin.Handle) -> plugin.Plugin:
        tokenizer = tokenizer_for(
            parameters.read(cls.TOKENIZER), chat_template=parameters.read(cls.CHAT_TEMPLATE), owner=name
        )
        source_name = parameters.read(cls.INDEX_PLUGIN)
        source = handle.plugin(source_name) if source_name else handle.producer("kv-block-index")
        if source is None:
            raise plugin.ConfigError(
                f"plugin {name!r} consumes 'kv-block-index', which no configured plugin produces; "
                "add a plugin of type kv-events-subscriber"
            )
        if not isinstance(source, KvEventsSubscriber):
            raise plugin.ConfigError(
                f"plugin {name!r}: indexPlugin {source_name!r} is not a kv-events-subscriber plugin"
            )
        return cls(
            name,
            index=source.index,
            max_blocks=parameters.read(cls.MAX_BLOCKS),
            tokenizer=tokenizer,
            speculative_ttl_s=parameters.read(cls.SPECULATIVE_TTL),
            off_loop_chars=parameters.read(cls.OFF_LOOP_CHARS),
        )

    def preparation(self, request: types.Request) -> Callable[[], None] | None:
        """Tokenizing `request` when it is longer than `offLoopChars` (the server runs it in a thread)."""
        if self.name in request.prepared or tokenization.request_chars(request) <= self.off_loop_chars:
            return None

        def tokenize() -> None:
            request.prepared[self.name] = self.tokenizer.token_ids(request)

        return tokenize

    def token_ids(self, request: types.Request) -> list[int]:
        """The request's token ids: prepared off the event loop, or tokenized now."""
        if self.name in request.prepared:
            ids: list[int] | None = request.prepared[self.name]
        else:
            ids = self.tokenizer.token_ids(request)
        return ids or []

    def block_keys(self, cycle: cycles.Cycle) -> list[int]:
        """The request's block keys, computed once per cycle."""
        keys = cycle.read(self.keys_key)
        if keys is None:
            token_ids = self.token_ids(cycle.request)
            if self.max_blocks:
                token_ids = token_ids[: self.max_blocks * self.index.block_size]
            keys = kv_events.block_keys(token_ids, block_size=self.index.block_size)
            cycle.write(self.keys_key, keys)
        return keys

    def matched_blocks(self, cycle: cycles.Cycle) -> np.ndarray:
        """Per candidate: how many leading blocks of the request its engine holds."""
        matched = cycle.read(self.matched_key)
        if matched is None:
            self.index.expire(cycle.now)
            matched = self.index.match(self.block_keys(cycle), cycle.positions(), len(cycle.candidates))
            cycle.write(self.matched_key, matched)
        return matched

    def score(self, cycle: cycles.Cycle) -> np.ndarray:
        total = len(self.block_keys(cycle))
        if total == 0:
            return np.zeros(len(cycle.candidates), dtype=np.float64)
        return self.matched_blocks(cycle) / total

    def on_decision(self, cycle: cycles.Cycle, decision: types.Decision) -> None:
        if self.speculative_ttl_s:
            self._speculate(self.block_keys(cycle), decision, now=cycle.now)

    def _speculate(self, keys: list[int], decision: types.Decision, *, now: float) -> None:
        if not keys:
            return
        for key in (decision.primary, decision.prefill):
            if key is not None:
                self.index.speculate(key, keys, until=now + self.speculative_ttl_s)

    def share(self, cycle: cycles.Cycle, decision: types.Decision) -> bytes | None:
        if not self.speculative_ttl_s:
            return None
        keys = self.block_keys(cycle)
        return np.asarray(keys, dtype="<u8").tobytes() if keys else None

    def learn_shared(self, data: bytes, shared: types.SharedDecision) -> None:
        """A peer's request counts as held where it went, as this picker's own do (speculative entries)."""
        keys: list[int] = np.frombuffer(data, dtype="<u8").tolist()
        self._speculate(keys, shared.decision, now=shared.now)
