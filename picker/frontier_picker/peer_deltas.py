"""What peer pickers tell each other, to and from Frontier's wire messages (`frontier.picker.v1`).

Pure conversions between the director's flights, completions and endpoint metrics and the messages of
`proto/frontier_picker/proto/v1/picker.proto`. A peer's request crosses without its prompt or headers: the
plugins that learn from the prompt (the prefix index) send what they learned instead (`Decided.learned`).
"""

import math

from frontier_picker import director, endpoints
from frontier_picker.proto.v1 import picker_pb2 as wire
from frontier_picker.scheduling import types


def decided(flight: director.Flight, *, now: float, origin: str = "") -> wire.Delta:
    """The delta telling peers that `flight` was decided here (`now`: this picker's clock), or by sibling
    `origin` when relaying its flight."""
    request, decision = flight.request, flight.decision
    return wire.Delta(
        decided=wire.Decided(
            flight_id=flight.flight_id,
            primary=decision.primary,
            prefill=decision.prefill or "",
            prompt_tokens=request.prompt_tokens,
            max_tokens=request.max_tokens or 0,
            model=request.model,
            target_model=request.target_model,
            age_s=max(0.0, now - flight.decided_at),
            learned=decision.learned,
            origin=origin,
        )
    )


def relayed(delta: wire.Delta, origin: str) -> wire.Delta:
    """A sibling's decided or completed delta, marked with the sibling it came from, for other pods."""
    copy = wire.Delta()
    copy.CopyFrom(delta)
    getattr(copy, copy.WhichOneof("change")).origin = origin
    return copy


def peer_request(peer: str, message: wire.Decided) -> tuple[types.Request, types.Decision]:
    """The request and decision a peer described. The request id is the peer's and the flight's, so
    per-request state learned from it (the cost ledger's) never meets this picker's own ids."""
    request = types.Request(
        request_id=f"{peer}/{message.flight_id}",
        model=message.model,
        target_model=message.target_model,
        prompt_tokens=message.prompt_tokens,
        max_tokens=message.max_tokens or None,
    )
    decision = types.Decision(
        endpoints=[message.primary],
        prefill=message.prefill or None,
        learned=dict(message.learned),
    )
    return request, decision


def completed(flight: director.Flight, completion: types.Completion) -> wire.Delta:
    """The delta telling peers how `flight` ended."""
    message = wire.Completed(
        flight_id=flight.flight_id,
        status=completion.status,
        aborted=completion.aborted,
        duration_s=completion.duration_s,
        first_token_timed=completion.first_token_timed,
    )
    if completion.ttft_s is not None:
        message.ttft_s = completion.ttft_s
    if completion.prompt_tokens is not None:
        message.prompt_tokens = completion.prompt_tokens
    if completion.completion_tokens is not None:
        message.completion_tokens = completion.completion_tokens
    if completion.cached_tokens is not None:
        message.cached_tokens = completion.cached_tokens
    return wire.Delta(completed=message)


def completion(message: wire.Completed, endpoint: str) -> types.Completion:
    """The completion a peer reported for its flight to `endpoint`."""
    return types.Completion(
        endpoint=endpoint,
        status=message.status,
        aborted=message.aborted,
        duration_s=message.duration_s,
        ttft_s=message.ttft_s if message.HasField("ttft_s") else None,
        first_token_timed=message.first_token_timed,
        prompt_tokens=message.prompt_tokens if message.HasField("prompt_tokens") else None,
        completion_tokens=message.completion_tokens if message.HasField("completion_tokens") else None,
        cached_tokens=message.cached_tokens if message.HasField("cached_tokens") else None,
    )


def endpoint_metrics(state: endpoints.EndpointState, *, now: float) -> wire.EndpointMetrics | None:
    """`state`'s scraped metrics as a message (None when it was never scraped)."""
    scraped = state.metrics
    if not math.isfinite(scraped.updated_at):
        return None
    message = wire.EndpointMetrics(
        endpoint=state.endpoint.key,
        waiting=scraped.waiting,
        running=scraped.running,
        kv_usage=scraped.kv_usage,
        running_loras=sorted(scraped.running_loras),
        waiting_loras=sorted(scraped.waiting_loras),
        age_s=max(0.0, now - scraped.updated_at),
        scrape_failures=state.scrape_failures,
    )
    if scraped.block_size is not None:
        message.block_size = scraped.block_size
    if scraped.num_gpu_blocks is not None:
        message.num_gpu_blocks = scraped.num_gpu_blocks
    if scraped.max_loras is not None:
        message.max_loras = scraped.max_loras
    return message


def scraped(message: wire.EndpointMetrics, *, now: float) -> endpoints.EndpointMetrics:
    """The metrics a peer scraped, dated on this picker's clock (`now` minus their age when sent)."""
    return endpoints.EndpointMetrics(
        waiting=message.waiting,
        running=message.running,
        kv_usage=message.kv_usage,
        block_size=message.block_size if message.HasField("block_size") else None,
        num_gpu_blocks=message.num_gpu_blocks if message.HasField("num_gpu_blocks") else None,
        running_loras=frozenset(message.running_loras),
        waiting_loras=frozenset(message.waiting_loras),
        max_loras=message.max_loras if message.HasField("max_loras") else None,
        updated_at=now - message.age_s,
    )
