"""Builders for scheduling tests: endpoint states with chosen metrics, snapshots and requests.

Addresses are in this suite's loopback range 127.5.0.0/16 (never bound: scheduling does no I/O).
"""

from collections.abc import Mapping, Sequence

from frontier_api import names
from frontier_picker import endpoints
from frontier_picker.scheduling import types

NOW = 1000.0


def state(
    i: int,
    *,
    waiting: int = 0,
    running: int = 0,
    kv: float = 0.0,
    age: float = 0.01,
    in_flight: int = 0,
    labels: Mapping[str, str] | None = None,
    **metrics: object,
) -> endpoints.EndpointState:
    endpoint = endpoints.Endpoint(
        name=f"e{i}", address=f"127.5.0.{i + 1}", port=8000, labels=dict(labels or {})
    )
    return endpoints.EndpointState(
        endpoint=endpoint,
        metrics=endpoints.EndpointMetrics(
            waiting=waiting,
            running=running,
            kv_usage=kv,
            updated_at=NOW - age,
            **metrics,  # type: ignore[arg-type]
        ),
        load=endpoints.EndpointLoad(in_flight=in_flight),
    )


def key(i: int) -> str:
    return f"127.5.0.{i + 1}:8000"


def snapshot(states: Sequence[endpoints.EndpointState], *, now: float = NOW) -> endpoints.Snapshot:
    return endpoints.Snapshot(now=now, endpoints=list(states))


def request(
    prompt: str = "",
    *,
    request_id: str = "r",
    model: str = "llama",
    prompt_tokens: int | None = None,
    **fields: object,
) -> types.Request:
    return types.Request(
        request_id=request_id,
        model=model,
        target_model=str(fields.pop("target_model", model)),
        prompt=prompt,
        prompt_tokens=len(prompt) // 4 if prompt_tokens is None else prompt_tokens,
        **fields,  # type: ignore[arg-type]
    )


def role(value: str) -> dict[str, str]:
    return {names.ROLE_LABEL: value}
