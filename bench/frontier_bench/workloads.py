"""Benchmark workloads: what the clients ask for, and when.

A *workload* makes the `index`-th request's prompt on demand (`prompt_for(index)`), from its seed and the
index alone, so hours of traffic cost nothing up front and every policy in a sweep sees the same requests. No
request repeats an earlier one unless the workload's definition says so: each request's question (or prompt)
is drawn fresh, seeded by its index, after whatever prefix its shape shares (a group's system prompt, a
document, a conversation so far). A `Trace` is the one workload that repeats by definition: a fixed list of
prompts, cycled. A *schedule* pairs a workload with open-loop Poisson arrival times at one offered load (QPS);
the same seed gives the same prompts and the same arrival times.

Text is made of three-letter words separated by spaces: four characters per word, so one word is one token
both for a whitespace tokenizer and for the ~4-characters-per-token estimate that the simulator and the
picker use, and prompt lengths stated in tokens hold on either side.

Shapes:
- `shared_prefix`: inference-perf's `shared_prefix` shape — `num_groups` system prompts of
  `system_prompt_len` tokens, completions of `output_len` tokens; every block of
  `num_groups x num_prompts_per_group` requests sends each group's system prompt `num_prompts_per_group`
  times in a seeded shuffled order (a fresh shuffle per block), each time followed by a fresh question of
  `question_len` tokens. `llmd_study` is the llm-d study's shape (150 groups x 5 prompts, 6,000 + 1,200 tokens
  in, 1,000 out) with the number of groups scaled to the fleet.
- `multi_turn_chat`: `num_sessions` chat sessions at a time, each of `turns` turns; turn k resends the whole
  conversation so far (its system prompt, earlier user turns and scripted assistant replies) plus a fresh
  user turn. Every block of `num_sessions x turns` requests is a fresh set of sessions.
- `long_documents`: a few long shared documents, each request a fresh short question about one of them,
  popularity Zipf-like.
- `zipf_churn`: many long system prompts, Zipf popularity over `num_prompts` ranks, and churn: every
  `churn_interval` requests a new system prompt takes the top rank and every other one moves down a rank
  (the one at the bottom leaves), so the popular set drifts and each system prompt is asked about
  `churn_interval` times in expectation over its life, most of them while it is young. Its working set
  (`num_prompts x system_prompt_len` tokens) is meant to exceed an engine's KV cache: where a prompt is
  still cached depends on evictions. Each request is a fresh question after its system prompt.
- `no_sharing`: the control — every prompt fresh, lengths as in the shared-prefix shape.
- `mixed_lengths`: fresh prompts whose prompt and output lengths are log-normal, as in API traffic (a few
  long prompts among many short ones), so that a picker that knows what each request costs can do better
  than an even spread.
"""

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, Final, Literal, Protocol

import numpy as np

from frontier_api import names

# 26^3 three-letter words; drawing from all of them makes accidental shared prefixes between groups
# vanishingly unlikely (the first 16-token block of two groups collides with probability 17,576^-16).
_LETTERS: Final = np.array(list("abcdefghijklmnopqrstuvwxyz"))
_VOCABULARY: Final = np.array(
    [a + b + c for a in _LETTERS for b in _LETTERS for c in _LETTERS],
)

# The llm-d study's fleet: its 150 groups are spread over this many engines when scaled to another fleet
# (an assumption of this benchmark, written down so the scaling is explicit and adjustable).
LLMD_REFERENCE_ENGINES: Final = 8

# Seed streams: what each seeded generator draws, so that two kinds of text never share a stream.
_SYSTEM, _REQUEST, _ORDER, _USER, _REPLY, _RANK = 1, 2, 3, 4, 5, 6
# Shared texts (system prompts, documents) kept made; a bounded cache, as a fleet of 1,024 engines has
# 19,200 groups of 6,000 tokens.
_SHARED_CACHE: Final = 4096

Api = Literal["completions", "chat"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Prompt:
    """One request body's content: a completion `prompt`, or chat `messages` (role, content) in order."""

    prompt: str = ""
    messages: tuple[tuple[str, str], ...] = ()
    max_tokens: int
    group: str  # what it shares a prefix with ("" when nothing); used for reporting, never for routing
    # The answer's own length, where the (simulated) model emits EOS; None: it runs to max_tokens.
    output_tokens: int | None = None

    @property
    def api(self) -> Api:
        return "chat" if self.messages else "completions"

    def body(self, *, model: str, stream: bool = True) -> dict[str, Any]:
        """The OpenAI request body: without an answer length, `ignore_eos` makes the engine emit exactly
        `max_tokens` tokens; with one, the simulator's `sim_output_tokens` ends the answer there (EOS)."""
        body: dict[str, Any] = {"model": model, "max_tokens": self.max_tokens}
        if self.output_tokens is None:
            body["ignore_eos"] = True
        else:
            body[names.SIM_OUTPUT_TOKENS] = self.output_tokens
        if self.messages:
            body["messages"] = [{"role": role, "content": content} for role, content in self.messages]
        else:
            body["prompt"] = self.prompt
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body


class Workload(Protocol):
    """A named, parameterised, reproducible request stream: the `index`-th request's prompt on demand."""

    @property
    def name(self) -> str: ...

    @property
    def params(self) -> dict[str, Any]: ...

    def prompt_for(self, index: int) -> Prompt: ...


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Trace:
    """A fixed list of prompts sent in turn and cycled: the workload that repeats requests by definition."""

    name: str
    params: dict[str, Any]
    prompts: Sequence[Prompt]

    def prompt_for(self, index: int) -> Prompt:
        """The prompt of the `index`-th request: the list cycled."""
        return self.prompts[index % len(self.prompts)]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """Open-loop arrivals at one offered load: request i is sent `offsets_s[i]` after the start."""

    qps: float
    offsets_s: np.ndarray
    seed: int

    def __len__(self) -> int:
        return len(self.offsets_s)


def words(rng: np.random.Generator, count: int) -> str:
    """`count` tokens of text (one three-letter word each)."""
    if count <= 0:
        return ""
    return " ".join(_VOCABULARY[rng.integers(0, len(_VOCABULARY), size=count)])


def _params(workload: Any) -> dict[str, Any]:
    return {f.name: getattr(workload, f.name) for f in dataclasses.fields(workload) if f.name != "name"}


@functools.lru_cache(maxsize=_SHARED_CACHE)
def _shared_text(seed: int, key: int, length: int) -> str:
    """The shared text number `key` of a workload seeded `seed` (a system prompt, a document)."""
    return words(np.random.default_rng([seed, _SYSTEM, key]), length)


@functools.lru_cache(maxsize=2)
def _block_order(seed: int, block: int, slots: int, repeats: int) -> np.ndarray:
    """Block `block`'s order: each of `slots` slots `repeats` times, seeded-shuffled."""
    return np.random.default_rng([seed, _ORDER, block]).permutation(np.repeat(np.arange(slots), repeats))


@functools.lru_cache(maxsize=2)
def _block_turns(seed: int, block: int, slots: int, repeats: int) -> np.ndarray:
    """How often each position's slot came earlier in its block (a chat turn's number)."""
    order = _block_order(seed, block, slots, repeats)
    turns = np.empty_like(order)
    seen = np.zeros(slots, dtype=int)
    for position, slot in enumerate(order):
        turns[position] = seen[slot]
        seen[slot] += 1
    return turns


@dataclasses.dataclass(frozen=True, kw_only=True)
class SharedPrefix:
    """inference-perf's shared-prefix shape with a fresh question per request (see the module docstring)."""

    num_groups: int
    num_prompts_per_group: int
    system_prompt_len: int
    question_len: int
    output_len: int
    seed: int = 0
    name: str = "shared-prefix"

    @property
    def params(self) -> dict[str, Any]:
        return _params(self)

    def group_of(self, index: int) -> int:
        """The group whose system prompt the `index`-th request starts with."""
        block, offset = divmod(index, self.num_groups * self.num_prompts_per_group)
        order = _block_order(self.seed, block, self.num_groups, self.num_prompts_per_group)
        return int(order[offset])

    def prompt_for(self, index: int) -> Prompt:
        """The group's system prompt, then a question seeded by `index` alone."""
        group = self.group_of(index)
        system = _shared_text(self.seed, group, self.system_prompt_len)
        question = words(np.random.default_rng([self.seed, _REQUEST, index]), self.question_len)
        text = f"{system} {question}" if system else question
        return Prompt(prompt=text, max_tokens=self.output_len, group=f"g{group}")


def shared_prefix(
    *,
    num_groups: int,
    num_prompts_per_group: int,
    system_prompt_len: int,
    question_len: int,
    output_len: int,
    seed: int = 0,
) -> SharedPrefix:
    """inference-perf's shared-prefix shape: a group's system prompt + ' ' + a fresh question per request."""
    _require_positive(
        num_groups=num_groups, num_prompts_per_group=num_prompts_per_group, output_len=output_len
    )
    return SharedPrefix(
        num_groups=num_groups,
        num_prompts_per_group=num_prompts_per_group,
        system_prompt_len=system_prompt_len,
        question_len=question_len,
        output_len=output_len,
        seed=seed,
    )


def llmd_groups(engines: int, *, reference_engines: int = LLMD_REFERENCE_ENGINES) -> int:
    """The llm-d study's 150 groups scaled to a fleet of `engines` (same groups per engine, at least 1)."""
    return max(1, round(150 * engines / reference_engines))


def llmd_study(*, engines: int, output_len: int = 1000, seed: int = 0) -> SharedPrefix:
    """The llm-d study: 150 groups x 5 prompts, 6,000-token system prompt, 1,200-token question, scaled."""
    workload = shared_prefix(
        num_groups=llmd_groups(engines),
        num_prompts_per_group=5,
        system_prompt_len=6000,
        question_len=1200,
        output_len=output_len,
        seed=seed,
    )
    return dataclasses.replace(workload, name="llmd-study")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MultiTurnChat:
    """Chat sessions that grow turn by turn (see the module docstring)."""

    num_sessions: int
    turns: int
    system_prompt_len: int
    user_len: int
    output_len: int
    seed: int = 0
    name: str = "multi-turn-chat"

    @property
    def params(self) -> dict[str, Any]:
        return _params(self)

    def prompt_for(self, index: int) -> Prompt:
        """The next turn of a session: its conversation so far, then a fresh user turn.

        Requests interleave sessions in a seeded random order while keeping each session's turns in order,
        so a session's next turn usually arrives after several other requests (open loop: not after its
        reply); the replies are scripted, `output_len` tokens each.
        """
        block, offset = divmod(index, self.num_sessions * self.turns)
        order = _block_order(self.seed, block, self.num_sessions, self.turns)
        session = block * self.num_sessions + int(order[offset])
        turn = int(_block_turns(self.seed, block, self.num_sessions, self.turns)[offset])
        history = [("system", _shared_text(self.seed, session, self.system_prompt_len))]
        for k in range(turn + 1):
            user = words(np.random.default_rng([self.seed, _USER, session, k]), self.user_len)
            history.append(("user", user))
            if k < turn:
                reply = words(np.random.default_rng([self.seed, _REPLY, session, k]), self.output_len)
                history.append(("assistant", reply))
        return Prompt(messages=tuple(history), max_tokens=self.output_len, group=f"s{session}")


def multi_turn_chat(
    *,
    num_sessions: int,
    turns: int,
    system_prompt_len: int,
    user_len: int,
    output_len: int,
    seed: int = 0,
) -> MultiTurnChat:
    """`num_sessions` concurrent chat sessions of `turns` turns, fresh sessions in every block."""
    _require_positive(num_sessions=num_sessions, turns=turns, output_len=output_len)
    return MultiTurnChat(
        num_sessions=num_sessions,
        turns=turns,
        system_prompt_len=system_prompt_len,
        user_len=user_len,
        output_len=output_len,
        seed=seed,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class LongDocuments:
    """Fresh questions about a few long documents; document d is asked with probability ∝ 1/(d+1)^zipf_s."""

    num_documents: int
    document_len: int
    question_len: int
    output_len: int
    zipf_s: float = 1.0
    seed: int = 0
    name: str = "long-documents"

    @property
    def params(self) -> dict[str, Any]:
        return _params(self)

    @functools.cached_property
    def _popularity(self) -> np.ndarray:
        weights = 1.0 / np.arange(1, self.num_documents + 1) ** self.zipf_s
        return np.asarray(weights / weights.sum())

    def prompt_for(self, index: int) -> Prompt:
        """A document drawn by popularity, then a question, both seeded by `index`."""
        rng = np.random.default_rng([self.seed, _REQUEST, index])
        document = int(rng.choice(self.num_documents, p=self._popularity))
        text = f"{_shared_text(self.seed, document, self.document_len)} {words(rng, self.question_len)}"
        return Prompt(prompt=text, max_tokens=self.output_len, group=f"d{document}")


def long_documents(
    *,
    num_documents: int,
    document_len: int,
    question_len: int,
    output_len: int,
    zipf_s: float = 1.0,
    seed: int = 0,
) -> LongDocuments:
    """Questions about a few long documents, Zipf-like popularity."""
    _require_positive(num_documents=num_documents, output_len=output_len)
    return LongDocuments(
        num_documents=num_documents,
        document_len=document_len,
        question_len=question_len,
        output_len=output_len,
        zipf_s=zipf_s,
        seed=seed,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ZipfChurn:
    """Long system prompts with Zipf popularity over ranks and a sliding popular set (module docstring)."""

    num_prompts: int
    system_prompt_len: int
    question_len: int
    output_len: int
    zipf_s: float = 1.0
    churn_interval: int = 100
    seed: int = 0
    name: str = "zipf-churn"

    @property
    def params(self) -> dict[str, Any]:
        return _params(self)

    @functools.cached_property
    def _popularity(self) -> np.ndarray:
        weights = 1.0 / np.arange(1, self.num_prompts + 1) ** self.zipf_s
        return np.asarray(weights / weights.sum())

    def rank_of(self, index: int) -> int:
        """The popularity rank (0: most popular) the `index`-th request draws."""
        rng = np.random.default_rng([self.seed, _RANK, index])
        return int(rng.choice(self.num_prompts, p=self._popularity))

    def prompt_of(self, index: int) -> int:
        """The system prompt the `index`-th request starts with: rank r at epoch e is prompt e - r (shifted so
        that the prompts of epoch 0 are numbered from 0)."""
        epoch = index // self.churn_interval
        return epoch + self.num_prompts - 1 - self.rank_of(index)

    def prompt_for(self, index: int) -> Prompt:
        """The drawn system prompt, then a question seeded by `index` alone."""
        prompt = self.prompt_of(index)
        system = _shared_text(self.seed, prompt, self.system_prompt_len)
        question = words(np.random.default_rng([self.seed, _REQUEST, index]), self.question_len)
        return Prompt(prompt=f"{system} {question}", max_tokens=self.output_len, group=f"p{prompt}")


def zipf_churn(
    *,
    num_prompts: int,
    system_prompt_len: int,
    question_len: int,
    output_len: int,
    zipf_s: float = 1.0,
    churn_interval: int = 100,
    seed: int = 0,
) -> ZipfChurn:
    """Many long system prompts, Zipf popularity, one new top prompt every `churn_interval` requests."""
    _require_positive(
        num_prompts=num_prompts,
        system_prompt_len=system_prompt_len,
        question_len=question_len,
        output_len=output_len,
        churn_interval=churn_interval,
    )
    return ZipfChurn(
        num_prompts=num_prompts,
        system_prompt_len=system_prompt_len,
        question_len=question_len,
        output_len=output_len,
        zipf_s=zipf_s,
        churn_interval=churn_interval,
        seed=seed,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoSharing:
    """The control: fresh prompts, nothing for a prefix cache to reuse (beyond chance)."""

    prompt_len: int
    output_len: int
    seed: int = 0
    name: str = "no-sharing"

    @property
    def params(self) -> dict[str, Any]:
        return _params(self)

    def prompt_for(self, index: int) -> Prompt:
        """A prompt seeded by `index` alone."""
        text = words(np.random.default_rng([self.seed, _REQUEST, index]), self.prompt_len)
        return Prompt(prompt=text, max_tokens=self.output_len, group="")


def no_sharing(*, prompt_len: int, output_len: int, seed: int = 0) -> NoSharing:
    """The control: fresh prompts of `prompt_len` tokens."""
    _require_positive(prompt_len=prompt_len, output_len=output_len)
    return NoSharing(prompt_len=prompt_len, output_len=output_len, seed=seed)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MixedLengths:
    """Fresh prompts with log-normal lengths (`sigma` of the log), clipped to [1/30 median, max]."""

    median_prompt_len: int
    median_output_len: int
    prompt_sigma: float = 0.9
    output_sigma: float = 0.8
    max_prompt_len: int = 16000
    max_output_len: int = 1000
    # True: every request asks for max_output_len tokens and its answer ends at its drawn length (EOS), as
    # clients send one max_tokens for all; False: max_tokens is the drawn length.
    ends_at_eos: bool = False
    seed: int = 0
    name: str = "mixed-lengths"

    @property
    def params(self) -> dict[str, Any]:
        return _params(self)

    def prompt_for(self, index: int) -> Prompt:
        """Lengths and text seeded by `index` alone."""
        rng = np.random.default_rng([self.seed, _REQUEST, index])

        def length(median: int, sigma: float, most: int) -> int:
            return int(np.clip(rng.lognormal(np.log(median), sigma), max(1, median // 30), most))

        prompt_len = length(self.median_prompt_len, self.prompt_sigma, self.max_prompt_len)
        output_len = length(self.median_output_len, self.output_sigma, self.max_output_len)
        if self.ends_at_eos:
            return Prompt(
                prompt=words(rng, prompt_len),
                max_tokens=self.max_output_len,
                output_tokens=output_len,
                group="",
            )
        return Prompt(prompt=words(rng, prompt_len), max_tokens=output_len, group="")


def mixed_lengths(
    *,
    median_prompt_len: int,
    median_output_len: int,
    prompt_sigma: float = 0.9,
    output_sigma: float = 0.8,
    max_prompt_len: int = 16000,
    max_output_len: int = 1000,
    ends_at_eos: bool = False,
    seed: int = 0,
) -> MixedLengths:
    """Fresh prompts with log-normal prompt and output lengths (`ends_at_eos`: see `MixedLengths`)."""
    _require_positive(median_prompt_len=median_prompt_len, median_output_len=median_output_len)
    return MixedLengths(
        median_prompt_len=median_prompt_len,
        median_output_len=median_output_len,
        prompt_sigma=prompt_sigma,
        output_sigma=output_sigma,
        max_prompt_len=max_prompt_len,
        max_output_len=max_output_len,
        ends_at_eos=ends_at_eos,
        seed=seed,
        name="mixed-lengths-eos" if ends_at_eos else "mixed-lengths",
    )


def poisson_schedule(*, qps: float, duration_s: float, seed: int) -> Schedule:
    """Open-loop Poisson arrivals at `qps` for `duration_s` seconds (exponential gaps, seeded)."""
    if qps <= 0 or duration_s <= 0:
        raise ValueError(f"qps and duration_s must be positive, got qps={qps} duration_s={duration_s}")
    rng = np.random.default_rng(seed)
    # Draw comfortably more gaps than needed, then cut at the duration.
    expected = qps * duration_s
    gaps = rng.exponential(1.0 / qps, size=int(expected + 10 * np.sqrt(expected) + 20))
    offsets = np.cumsum(gaps)
    return Schedule(qps=qps, offsets_s=offsets[offsets < duration_s], seed=seed)


def gamma_schedule(*, qps: float, duration_s: float, seed: int, cv: float) -> Schedule:
    """Open-loop bursty arrivals at mean rate `qps`: Gamma-distributed gaps whose coefficient of variation
    is `cv` (1 is Poisson; 2-4 is the burstiness production LLM traces show: many arrivals close together,
    then lulls). Seeded; cut at `duration_s`."""
    if qps <= 0 or duration_s <= 0 or cv <= 0:
        raise ValueError(f"qps, duration_s and cv must be positive, got {qps}, {duration_s}, {cv}")
    rng = np.random.default_rng(seed)
    shape = 1.0 / cv**2  # a Gamma's CV is 1/sqrt(shape); its mean shape * scale is 1/qps
    expected = qps * duration_s
    gaps = rng.gamma(shape, 1.0 / (qps * shape), size=int(expected + 10 * cv * np.sqrt(expected) + 20))
    offsets = np.cumsum(gaps)
    return Schedule(qps=qps, offsets_s=offsets[offsets < duration_s], seed=seed)


POISSON: Final = "poisson"


def arrival_label(cv: float) -> str:
    """How results name an arrival shape: `poisson` (CV 1), else `gamma-cv<CV>` (bursty)."""
    return POISSON if cv == 1.0 else f"gamma-cv{cv:g}"


def schedule(*, qps: float, duration_s: float, seed: int, cv: float = 1.0) -> Schedule:
    """Poisson arrivals when `cv` is 1, else bursty ones (`gamma_schedule`)."""
    if cv == 1.0:
        return poisson_schedule(qps=qps, duration_s=duration_s, seed=seed)
    return gamma_schedule(qps=qps, duration_s=duration_s, seed=seed, cv=cv)


def _require_positive(**values: int) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
