"""Endpoints and what the picker knows about each: identity from discovery, engine metrics from scraping,
and the picker's own load accounting.

An *endpoint* is one `ip:port` of a model server (a pod has one endpoint per InferencePool target port).
Scraped metrics lag and can go stale; the picker's own accounting (requests it sent and has not seen
complete) is exact and immediate. Schedulers read both through `EndpointState`.
"""

import dataclasses
from collections.abc import Mapping, Sequence

from frontier_api import names


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """One model-server address that requests can be sent to."""

    name: str
    address: str
    port: int
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    adapters: frozenset[str] = frozenset()  # LoRA adapters it serves, by the model names clients use
    # `key` is read for every endpoint on every scheduling pass: formatted once, here.
    _key: str = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_key", f"{self.address}:{self.port}")

    @property
    def key(self) -> str:
        """`ip:port`, the form used on the wire and as the endpoint's identity everywhere."""
        return self._key

    @property
    def engine_type(self) -> str:
        return self.labels.get(names.ENGINE_TYPE_LABEL, names.ENGINE_VLLM)

    @property
    def role(self) -> str:
        return self.labels.get(names.ROLE_LABEL, names.ROLE_BOTH)


@dataclasses.dataclass(slots=True, kw_only=True)
class EndpointMetrics:
    """Engine metrics from the last successful scrape; `updated_at` is on the picker's monotonic clock."""

    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0
    block_size: int | None = None
    num_gpu_blocks: int | None = None
    running_loras: frozenset[str] = frozenset()
    waiting_loras: frozenset[str] = frozenset()
    max_loras: int | None = None
    updated_at: float = float("-inf")

    def age(self, now: float) -> float:
        return now - self.updated_at


@dataclasses.dataclass(slots=True, kw_only=True)
class EndpointLoad:
    """The picker's own accounting: requests sent to this endpoint and not yet completed."""

    in_flight: int = 0
    in_flight_prompt_tokens: int = 0
    in_flight_decode_tokens: int = 0


@dataclasses.dataclass(slots=True, kw_only=True)
class EndpointState:
    """Everything a scheduler may read about one endpoint."""

    endpoint: Endpoint
    metrics: EndpointMetrics = dataclasses.field(default_factory=EndpointMetrics)
    load: EndpointLoad = dataclasses.field(default_factory=EndpointLoad)
    scrape_failures: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """The endpoints a scheduler chooses among, and the time (`now`, seconds) it reads their ages against.

    The picker builds one per request from its datastore; the virtual-time simulator builds one from its
    model clock, so the same scheduling code serves both.
    """

    now: float
    endpoints: Sequence[EndpointState]
