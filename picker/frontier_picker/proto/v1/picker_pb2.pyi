from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubscribeRequest(_message.Message):
    __slots__ = ("subscriber", "endpoint_metrics", "siblings")
    SUBSCRIBER_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_METRICS_FIELD_NUMBER: _ClassVar[int]
    SIBLINGS_FIELD_NUMBER: _ClassVar[int]
    subscriber: str
    endpoint_metrics: bool
    siblings: bool
    def __init__(self, subscriber: _Optional[str] = ..., endpoint_metrics: _Optional[bool] = ..., siblings: _Optional[bool] = ...) -> None: ...

class DeltaBatch(_message.Message):
    __slots__ = ("publisher", "deltas", "snapshot_done", "pod")
    PUBLISHER_FIELD_NUMBER: _ClassVar[int]
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_DONE_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    publisher: str
    deltas: _containers.RepeatedCompositeFieldContainer[Delta]
    snapshot_done: bool
    pod: str
    def __init__(self, publisher: _Optional[str] = ..., deltas: _Optional[_Iterable[_Union[Delta, _Mapping]]] = ..., snapshot_done: _Optional[bool] = ..., pod: _Optional[str] = ...) -> None: ...

class Delta(_message.Message):
    __slots__ = ("decided", "completed", "endpoint_metrics")
    DECIDED_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_METRICS_FIELD_NUMBER: _ClassVar[int]
    decided: Decided
    completed: Completed
    endpoint_metrics: EndpointMetrics
    def __init__(self, decided: _Optional[_Union[Decided, _Mapping]] = ..., completed: _Optional[_Union[Completed, _Mapping]] = ..., endpoint_metrics: _Optional[_Union[EndpointMetrics, _Mapping]] = ...) -> None: ...

class Decided(_message.Message):
    __slots__ = ("flight_id", "primary", "prefill", "prompt_tokens", "max_tokens", "model", "target_model", "age_s", "learned", "origin")
    class LearnedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    FLIGHT_ID_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    PREFILL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODEL_FIELD_NUMBER: _ClassVar[int]
    AGE_S_FIELD_NUMBER: _ClassVar[int]
    LEARNED_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    flight_id: str
    primary: str
    prefill: str
    prompt_tokens: int
    max_tokens: int
    model: str
    target_model: str
    age_s: float
    learned: _containers.ScalarMap[str, bytes]
    origin: str
    def __init__(self, flight_id: _Optional[str] = ..., primary: _Optional[str] = ..., prefill: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., max_tokens: _Optional[int] = ..., model: _Optional[str] = ..., target_model: _Optional[str] = ..., age_s: _Optional[float] = ..., learned: _Optional[_Mapping[str, bytes]] = ..., origin: _Optional[str] = ...) -> None: ...

class Completed(_message.Message):
    __slots__ = ("flight_id", "status", "aborted", "duration_s", "ttft_s", "prompt_tokens", "completion_tokens", "cached_tokens", "origin", "first_token_timed")
    FLIGHT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ABORTED_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    TTFT_S_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_TIMED_FIELD_NUMBER: _ClassVar[int]
    flight_id: str
    status: int
    aborted: bool
    duration_s: float
    ttft_s: float
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    origin: str
    first_token_timed: bool
    def __init__(self, flight_id: _Optional[str] = ..., status: _Optional[int] = ..., aborted: _Optional[bool] = ..., duration_s: _Optional[float] = ..., ttft_s: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., origin: _Optional[str] = ..., first_token_timed: _Optional[bool] = ...) -> None: ...

class EndpointMetrics(_message.Message):
    __slots__ = ("endpoint", "waiting", "running", "kv_usage", "block_size", "num_gpu_blocks", "running_loras", "waiting_loras", "max_loras", "age_s", "scrape_failures")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    KV_USAGE_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_GPU_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_LORAS_FIELD_NUMBER: _ClassVar[int]
    WAITING_LORAS_FIELD_NUMBER: _ClassVar[int]
    MAX_LORAS_FIELD_NUMBER: _ClassVar[int]
    AGE_S_FIELD_NUMBER: _ClassVar[int]
    SCRAPE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    waiting: int
    running: int
    kv_usage: float
    block_size: int
    num_gpu_blocks: int
    running_loras: _containers.RepeatedScalarFieldContainer[str]
    waiting_loras: _containers.RepeatedScalarFieldContainer[str]
    max_loras: int
    age_s: float
    scrape_failures: int
    def __init__(self, endpoint: _Optional[str] = ..., waiting: _Optional[int] = ..., running: _Optional[int] = ..., kv_usage: _Optional[float] = ..., block_size: _Optional[int] = ..., num_gpu_blocks: _Optional[int] = ..., running_loras: _Optional[_Iterable[str]] = ..., waiting_loras: _Optional[_Iterable[str]] = ..., max_loras: _Optional[int] = ..., age_s: _Optional[float] = ..., scrape_failures: _Optional[int] = ...) -> None: ...

class ListEndpointsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListEndpointsResponse(_message.Message):
    __slots__ = ("endpoints", "peer_flights")
    class PeerFlightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    PEER_FLIGHTS_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[EndpointState]
    peer_flights: _containers.ScalarMap[str, int]
    def __init__(self, endpoints: _Optional[_Iterable[_Union[EndpointState, _Mapping]]] = ..., peer_flights: _Optional[_Mapping[str, int]] = ...) -> None: ...

class EndpointState(_message.Message):
    __slots__ = ("endpoint", "name", "labels", "metrics", "in_flight", "in_flight_prompt_tokens")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    name: str
    labels: _containers.ScalarMap[str, str]
    metrics: EndpointMetrics
    in_flight: int
    in_flight_prompt_tokens: int
    def __init__(self, endpoint: _Optional[str] = ..., name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., metrics: _Optional[_Union[EndpointMetrics, _Mapping]] = ..., in_flight: _Optional[int] = ..., in_flight_prompt_tokens: _Optional[int] = ...) -> None: ...
