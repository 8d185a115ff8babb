"""Benchmark workloads: what the clients ask for, and when.

A *workload* is an ordered list of prompts that the load generator sends in turn (cycling when the run needs
more requests than there are prompts), exactly as inference-perf's data generators do. A *schedule* pairs a
workload with open-loop Poisson arrival times at one offered load (QPS); the same seed gives the same prompts
and the same arrival times, so every policy in a sweep faces the identical request sequence.

Text is made of three-letter words separated by spaces: four characters per word, so one word is one token
both for a whitespace tokenizer and for the ~4-characters-per-token estimate that the simulator and the
picker use, and prompt lengths stated in tokens hold on either side.

Shapes:
- `shared_prefix`: inference-perf's `shared_prefix` generator — `num_groups` system prompts of
  `system_prompt_len` tokens, `num_prompts_per_group` questions of `question_len` tokens each, completions of
  `output_len` tokens, prompts shuffled once and then sent in order. `llmd_study` is the llm-d study's shape
  (150 groups x 5 prompts, 6,000 + 1,200 tokens in, 1,000 out) with the number of groups scaled to the fleet.
- `multi_turn_chat`: chat sessions whose every turn resends the whole conversation so far (scripted assistant
  replies), as a replayed chat dataset does.
- `long_documents`: a few long shared documents, each asked many short questions, popularity Zipf-like.
- `no_sharing`: the control — every prompt unique, lengths as in the shared-prefix shape.
- `mixed_lengths`: unique prompts whose prompt and output lengths are log-normal, as in API traffic (a few
  long prompts among many short ones), so that a picker that knows what each request costs can do better
  than an even spread.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any, Final, Literal

import numpy as np

# 26^3 three-letter words; drawing from all of them makes accidental shared prefixes between groups
# vanishingly unlikely (the first 16-token block of two groups collides with probability 17,576^-16).
_LETTERS: Final = np.array(list("abcdefghijklmnopqrstuvwxyz"))
_VOCABULARY: Final = np.array(
    [a + b + c for a in _LETTERS for b in _LETTERS for c in _LETTERS],
)

# The llm-d study's fleet: its 150 groups are spread over this many engines when scaled to another fleet
# (an assumption of this benchmark, written down so the scaling is explicit and adjustable).
LLMD_REFERENCE_ENGINES: Final = 8

Api = Literal["completions", "chat"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Prompt:
    """One request body's content: a completion `prompt`, or chat `messages` (role, content) in order."""

    prompt: str = ""
    messages: tuple[tuple[str, str], ...] = ()
    max_tokens: int
    group: str  # what it shares a prefix with ("" when nothing); used for reporting, never for routing

    @property
    def api(self) -> Api:
        return "chat" if self.messages else "completions"

    def body(self, *, model: str, stream: bool = True) -> dict[str, Any]:
        """The OpenAI request body; `ignore_eos` makes the engine emit exactly `max_tokens` tokens."""
        body: dict[str, Any] = {"model": model, "max_tokens": self.max_tokens, "ignore_eos": True}
        if self.messages:
            body["messages"] = [{"role": role, "content": content} for role, content in self.messages]
        else:
            body["prompt"] = self.prompt
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """A named, parameterised, reproducible list of prompts."""

    name: str
    params: dict[str, Any]
    prompts: Sequence[Prompt]

    def prompt_for(self, index: int) -> Prompt:
        """The prompt of the `index`-th request: the list cycled, as inference-perf does."""
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


def shared_prefix(
    *,
    num_groups: int,
    num_prompts_per_group: int,
    system_prompt_len: int,
    question_len: int,
    output_len: int,
    seed: int = 0,
) -> Workload:
    """inference-perf's shared-prefix shape: each prompt is its group's system prompt + ' ' + a question."""
    _require_positive(
        num_groups=num_groups, num_prompts_per_group=num_prompts_per_group, output_len=output_len
    )
    rng = np.random.default_rng(seed)
    prompts = []
    for group in range(num_groups):
        system = words(rng, system_prompt_len)
        for _ in range(num_prompts_per_group):
            text = f"{system} {words(rng, question_len)}" if system else words(rng, question_len)
            prompts.append(Prompt(prompt=text, max_tokens=output_len, group=f"g{group}"))
    order = rng.permutation(len(prompts))
    return Workload(
        name="shared-prefix",
        params={
            "num_groups": num_groups,
            "num_prompts_per_group": num_prompts_per_group,
            "system_prompt_len": system_prompt_len,
            "question_len": question_len,
            "output_len": output_len,
            "seed": seed,
        },
        prompts=[prompts[i] for i in order],
    )


def llmd_groups(engines: int, *, reference_engines: int = LLMD_REFERENCE_ENGINES) -> int:
    """The llm-d study's 150 groups scaled to a fleet of `engines` (same groups per engine, at least 1)."""
    return max(1, round(150 * engines / reference_engines))


def llmd_study(*, engines: int, output_len: int = 1000, seed: int = 0) -> Workload:
    """The llm-d study: 150 groups x 5 prompts, 6,000-token system prompt, 1,200-token question, scaled."""
    workload = shared_prefix(
        num_groups=llmd_groups(engines),
        num_prompts_per_group=5,
        system_prompt_len=6000,
        question_len=1200,
        output_len=output_len,
        seed=seed,
    )
    return dataclasses.replace(workload, name="llmd-study", params={**workload.params, "engines": engines})


def multi_turn_chat(
    *,
    num_sessions: int,
    turns: int,
    system_prompt_len: int,
    user_len: int,
    output_len: int,
    seed: int = 0,
) -> Workload:
    """Chat sessions; turn k resends the system prompt and all earlier turns (scripted assistant replies).

    Requests interleave sessions in a seeded random order while keeping each session's turns in order, so a
    session's next turn usually arrives after several other requests (open loop: not after its reply).
    """
    _require_positive(num_sessions=num_sessions, turns=turns, output_len=output_len)
    rng = np.random.default_rng(seed)
    conversations: list[list[Prompt]] = []
    for session in range(num_sessions):
        history: list[tuple[str, str]] = [("system", words(rng, system_prompt_len))]
        session_prompts = []
        for _ in range(turns):
            history.append(("user", words(rng, user_len)))
            session_prompts.append(
                Prompt(messages=tuple(history), max_tokens=output_len, group=f"s{session}")
            )
            history.append(("assistant", words(rng, output_len)))
        conversations.append(session_prompts)
    # Each session contributes `turns` slots; a random permutation of the slots, read in order, picks the
    # session whose next turn comes next.
    slots = rng.permutation(np.repeat(np.arange(num_sessions), turns))
    next_turn = [0] * num_sessions
    prompts = []
    for session in slots:
        prompts.append(conversations[session][next_turn[session]])
        next_turn[session] += 1
    return Workload(
        name="multi-turn-chat",
        params={
            "num_sessions": num_sessions,
            "turns": turns,
            "system_prompt_len": system_prompt_len,
            "user_len": user_len,
            "output_len": output_len,
            "seed": seed,
        },
        prompts=prompts,
    )


def long_documents(
    *,
    num_documents: int,
    document_len: int,
    num_questions: int,
    question_len: int,
    output_len: int,
    zipf_s: float = 1.0,
    seed: int = 0,
) -> Workload:
    """Questions about a few long documents; document d is asked with probability ∝ 1/(d+1)^zipf_s."""
    _require_positive(num_documents=num_documents, num_questions=num_questions, output_len=output_len)
    rng = np.random.default_rng(seed)
    documents = [words(rng, document_len) for _ in range(num_documents)]
    weights = 1.0 / np.arange(1, num_documents + 1) ** zipf_s
    chosen = rng.choice(num_documents, size=num_questions, p=weights / weights.sum())
    prompts = [
        Prompt(prompt=f"{documents[d]} {words(rng, question_len)}", max_tokens=output_len, group=f"d{d}")
        for d in chosen
    ]
    return Workload(
        name="long-documents",
        params={
            "num_documents": num_documents,
            "document_len": document_len,
            "num_questions": num_questions,
            "question_len": question_len,
            "output_len": output_len,
            "zipf_s": zipf_s,
            "seed": seed,
        },
        prompts=prompts,
    )


def no_sharing(*, num_prompts: int, prompt_len: int, output_len: int, seed: int = 0) -> Workload:
    """The control: unique prompts, nothing for a prefix cache to reuse (beyond chance)."""
    _require_positive(num_prompts=num_prompts, output_len=output_len)
    rng = np.random.default_rng(seed)
    prompts = [
        Prompt(prompt=words(rng, prompt_len), max_tokens=output_len, group="") for _ in range(num_prompts)
    ]
    return Workload(
        name="no-sharing",
        params={"num_prompts": num_prompts, "prompt_len": prompt_len, "output_len": output_len, "seed": seed},
        prompts=prompts,
    )


def mixed_lengths(
    *,
    num_prompts: int,
    median_prompt_len: int,
    median_output_len: int,
    prompt_sigma: float = 0.9,
    output_sigma: float = 0.8,
    max_prompt_len: int = 16000,
    max_output_len: int = 1000,
    seed: int = 0,
) -> Workload:
    """Unique prompts with log-normal lengths (`sigma` of the log), clipped to [1/30 median, max]."""
    _require_positive(
        num_prompts=num_prompts, median_prompt_len=median_prompt_len, median_output_len=median_output_len
    )
    rng = np.random.default_rng(seed)

    def lengths(median: int, sigma: float, most: int) -> np.ndarray:
        drawn = rng.lognormal(np.log(median), sigma, num_prompts)
        return np.clip(drawn, max(1, median // 30), most).astype(int)

    prompt_lens = lengths(median_prompt_len, prompt_sigma, max_prompt_len)
    output_lens = lengths(median_output_len, output_sigma, max_output_len)
    prompts = [
        Prompt(prompt=words(rng, int(n)), max_tokens=int(m), group="")
        for n, m in zip(prompt_lens, output_lens, strict=True)
    ]
    return Workload(
        name="mixed-lengths",
        params={
            "num_prompts": num_prompts,
            "median_prompt_len": median_prompt_len,
            "median_output_len": median_output_len,
            "prompt_sigma": prompt_sigma,
            "output_sigma": output_sigma,
            "max_prompt_len": max_prompt_len,
            "max_output_len": max_output_len,
            "seed": seed,
        },
        prompts=prompts,
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


def _require_positive(**values: int) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
