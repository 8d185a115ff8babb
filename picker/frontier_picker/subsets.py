"""The proxy's subset hint: the endpoints a gateway allows for this request.

A gateway may restrict the picker's choice with dynamic metadata
`envoy.lb.subset_hint` / `x-gateway-destination-endpoint-subset`: a list of strings or one comma-separated
string, each `ip` (any port of that address) or `ip:port`. A hint that is present but matches no ready
endpoint (or is empty) means the request cannot be served: 503.
"""

from collections.abc import Sequence

from google.protobuf import struct_pb2

from frontier_api import names
from frontier_picker import endpoints


def hint(metadata: struct_pb2.Struct | None) -> list[str] | None:
    """The hinted entries from a namespace's metadata Struct; None when there is no hint."""
    if metadata is None or names.DESTINATION_SUBSET not in metadata.fields:
        return None
    value = metadata.fields[names.DESTINATION_SUBSET]
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        raw = value.string_value.split(",")
    elif kind == "list_value":
        raw = [item.string_value for item in value.list_value.values if item.HasField("string_value")]
    else:
        return []
    return [entry.strip() for entry in raw if entry.strip()]


def restrict(
    states: Sequence[endpoints.EndpointState], entries: Sequence[str]
) -> list[endpoints.EndpointState]:
    """The states whose endpoint matches an entry (`ip:port` exactly, or `ip` on any port)."""
    keys = {entry for entry in entries if ":" in entry}
    addresses = {entry for entry in entries if ":" not in entry}
    return [state for state in states if state.endpoint.key in keys or state.endpoint.address in addresses]
