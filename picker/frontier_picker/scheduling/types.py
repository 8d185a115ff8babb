"""The scheduler's inputs and outputs, and the interface every scheduler implements.

`Scheduler.schedule(request, snapshot) -> Decision` is pure with respect to I/O: it may update the scheduler's
own learned state (a prefix index learns from its own choices) but never touches the network. A refusal is an
exception carrying the HTTP status the client gets.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from frontier_api import estimates
from frontier_picker import endpoints


@dataclasses.dataclass(slots=True, kw_only=True)
class Request:
    """One inference request as the scheduler sees it."""

    request_id: str
    model: str  # the model the client asked for
    target_model: str  # after x-gateway-model-name-rewrite; what the endpoint serves
    prompt: str = ""  # text used for prefix affinity (chat messages joined in order); "" when body-less
    messages: Sequence[Mapping[str, Any]] | None = None  # a chat request's messages, as the client sent them
    prompt_tokens: int = 0  # estimate (~4 characters per token) until the model server reports usage
    max_tokens: int | None = None
    objective: str | None = None
    priority: int = 0
    fairness_id: str | None = None
    session_token: str | None = None
    lora_adapter: str | None = None
    ttft_slo_s: float | None = None  # x-slo-ttft-ms: flow control sheds sheddable requests that would miss it
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    queued_s: float = 0.0  # how long flow control held it before it was decided
    # What plugins computed for it off the event loop before scheduling (`preparation`), by plugin name.
    prepared: dict[str, Any] = dataclasses.field(default_factory=dict)

    def token_count(self) -> int:
        """`prompt_tokens`, or the character estimate of `prompt` when a caller left it unset."""
        return self.prompt_tokens or estimates.tokens(len(self.prompt))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TierChoice:
    """How a request naming a virtual model got its tier: the served model chosen, and why.

    `reason` is one of `TIER_REASONS`; `category` is the classifier's label ("" when none ran) and
    `classify_s` the seconds the classification took (0 when none ran)."""

    virtual_model: str
    model: str
    reason: str
    category: str = ""
    classify_s: float = 0.0


# Why a tier was chosen: a rule (prompt length, keyword), the client's category header, the classifier,
# the tier holding the conversation's prefix, the fallback tier, or a spill from a saturated tier.
TIER_REASONS = ("rule", "header", "classifier", "affinity", "fallback", "spill", "all-saturated")


@dataclasses.dataclass(frozen=True, slots=True)
class PrefixMatch:
    """How much of the request's prompt the prefix index believed the primary endpoint held when it was
    chosen: leading blocks matched, blocks in the prompt, characters per block."""

    matched_blocks: int
    total_blocks: int
    block_chars: int


@dataclasses.dataclass(slots=True, kw_only=True)
class Decision:
    """Where a request goes: `endpoints` primary first, then fallbacks; `prefill` for disaggregated tiers;
    `tier` when the request named a virtual model (its `target_model` is then the tier's served model)."""

    endpoints: list[str]
    prefill: str | None = None
    profile: str = ""
    scores: Mapping[str, float] = dataclasses.field(default_factory=dict)
    tier: TierChoice | None = None
    prefix: PrefixMatch | None = None  # set by a prefix-cache plugin, for the hit-ratio metrics
    # Plugin name -> what it learned from this decision, for peer pickers; filled only while sharing.
    learned: Mapping[str, bytes] = dataclasses.field(default_factory=dict)

    @property
    def primary(self) -> str:
        return self.endpoints[0]


@dataclasses.dataclass(slots=True, kw_only=True)
class Completion:
    """How a request ended, as the picker observed it on the response path."""

    endpoint: str
    status: int
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    ttft_s: float | None = None
    # ttft_s is when the first token arrived (a streamed answer whose body the picker saw); otherwise it is
    # when the response headers did, which an engine may send before any token or only with the whole answer.
    first_token_timed: bool = False
    duration_s: float = 0.0
    aborted: bool = False
    request_bytes: int = 0
    response_bytes: int | None = None  # None when the picker does not see the response body


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SharedDecision:
    """A decision a peer picker made, as this picker learns it: the request as far as the peer described
    it (no prompt), the decision, this picker's clock and a lookup of its endpoint states."""

    request: Request
    decision: Decision
    now: float
    state: Callable[[str], endpoints.EndpointState | None]


class Rejection(Exception):
    """The request cannot be scheduled; `status` is the HTTP status the client receives."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@runtime_checkable
class ListsModels(Protocol):
    """A scheduler that answers for model names no endpoint serves as such (a tier router's virtual
    models), so `GET /v1/models` can list them."""

    def virtual_models(self) -> list[str]:
        """Those names."""
        ...


@runtime_checkable
class PreparesRequests(Protocol):
    """A scheduler whose plugins may need costly work done for a request before it is scheduled."""

    def preparation(self, request: Request) -> Callable[[], None] | None:
        """The work to run in a worker thread before `request` is scheduled; None when there is none."""
        ...


@runtime_checkable
class SharesLearning(Protocol):
    """A scheduler whose plugins can share what they learn from each decision with peer pickers."""

    sharing: bool  # while True, `schedule` fills each decision's `learned`

    def learn_shared(self, shared: SharedDecision) -> None:
        """Learn a peer's decision (its `learned` is what the peer's plugins shared)."""
        ...


class Scheduler(Protocol):
    """What the director calls, in the ext_proc server and in the virtual-time cluster alike."""

    def schedule(self, request: Request, snapshot: endpoints.Snapshot) -> Decision:
        """Choose endpoints for `request`; raise `Rejection` to refuse it."""
        ...

    def on_completion(self, request: Request, decision: Decision, completion: Completion) -> None:
        """Learn from a finished request (its own state only; load accounting is the datastore's)."""
        ...
