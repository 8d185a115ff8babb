"""ModelTier and InferencePool objects the operator tests share (API JSON, as the API server returns them)."""

import copy
from typing import Any

from frontier_api import names

H100: str = "nvidia-h100-80gb"


def pool(name: str = "chat", namespace: str = "op-test", *, uid: str = "pool-uid") -> dict[str, Any]:
    return {
        "apiVersion": f"{names.GIE_GROUP}/{names.GIE_VERSION}",
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": namespace, "uid": uid},
        "spec": {
            "selector": {"matchLabels": {"app": f"{name}-servers"}},
            "targetPorts": [{"number": 8000}],
            "endpointPickerRef": {"name": f"{name}-picker", "port": {"number": 9002}},
        },
    }


def disaggregated_spec(pool_name: str = "chat") -> dict[str, Any]:
    """The issue's example: disaggregated, fp8, ngram speculation, 2 prefill + 4 decode on H100."""
    return {
        "poolRef": {"name": pool_name},
        "model": {"source": "meta-llama/Llama-3.1-8B-Instruct", "servedName": "llama-3.1-8b"},
        "tier": {"rank": 1, "relativeCost": 1.0},
        "engine": {
            "maxModelLen": 8192,
            "quantization": "fp8",
            "speculative": {"method": "ngram", "numSpeculativeTokens": 4, "promptLookupMax": 4},
            "kvEvents": {"enabled": True},
        },
        "disaggregation": {"enabled": True},
        "prefill": {"replicas": 2, "accelerator": {"type": H100}},
        "decode": {"replicas": 4, "parallelism": {"tensor": 2}, "accelerator": {"type": H100}},
    }


def tier(
    name: str = "llama-fast",
    namespace: str = "op-test",
    *,
    spec: dict[str, Any] | None = None,
    uid: str = "tier-uid",
) -> dict[str, Any]:
    return {
        "apiVersion": f"{names.FRONTIER_GROUP}/{names.FRONTIER_VERSION}",
        "kind": names.MODEL_TIER_KIND,
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "generation": 1},
        "spec": copy.deepcopy(spec if spec is not None else disaggregated_spec()),
    }
