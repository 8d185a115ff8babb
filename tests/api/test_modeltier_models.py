"""The ModelTier models parse API JSON with the CRD's defaults and name the field when something is wrong."""

import pytest

from frontier_api import modeltier, names, schema


def _disaggregated() -> dict:
    """Disaggregated, fp8, ngram speculation, 2 prefill + 4 decode (tensor 2) on H100."""
    h100 = {"type": "nvidia-h100-80gb"}
    return {
        "poolRef": {"name": "chat"},
        "model": {"source": "meta-llama/Llama-3.1-8B-Instruct", "servedName": "llama-3.1-8b"},
        "engine": {"quantization": "fp8", "speculative": {"method": "ngram", "numSpeculativeTokens": 4}},
        "disaggregation": {"enabled": True},
        "prefill": {"replicas": 2, "accelerator": h100},
        "decode": {"replicas": 4, "parallelism": {"tensor": 2}, "accelerator": h100},
    }


def test_disaggregated_spec_parses_with_defaults_filled():
    spec = modeltier.parse_spec(_disaggregated())
    assert spec.engine.quantization is modeltier.Quantization.FP8
    assert spec.engine.speculative is not None
    assert spec.engine.speculative.method is modeltier.SpeculativeMethod.NGRAM
    assert spec.engine.prefix_caching.enabled is True
    assert spec.disaggregation.kv_connector is modeltier.KvConnector.NIXL
    assert list(spec.roles()) == [names.ROLE_PREFILL, names.ROLE_DECODE]
    assert spec.roles()[names.ROLE_DECODE].gpus_per_pod() == 2
    assert spec.roles()[names.ROLE_PREFILL].gpus_per_pod() == 1


def test_aggregated_tier_has_one_role_named_both():
    raw = {"poolRef": {"name": "p"}, "model": {"source": "m", "servedName": "m"}, "serving": {"replicas": 3}}
    spec = modeltier.parse_spec(raw)
    assert list(spec.roles()) == [names.ROLE_BOTH]


def test_unknown_quantization_names_the_field_and_the_allowed_values():
    raw = _disaggregated()
    raw["engine"]["quantization"] = "int3"
    with pytest.raises(schema.ParseError) as err:
        modeltier.parse_spec(raw)
    assert err.value.path == "spec.engine.quantization"
    assert "fp8" in err.value.message and "'int3'" in err.value.message


def test_missing_required_field_is_named():
    raw = _disaggregated()
    del raw["model"]["servedName"]
    with pytest.raises(schema.ParseError) as err:
        modeltier.parse_spec(raw)
    assert err.value.path == "spec.model.servedName"


def test_out_of_range_value_is_refused():
    raw = _disaggregated()
    raw["engine"]["gpuMemoryUtilization"] = 1.5
    with pytest.raises(schema.ParseError, match=r"spec.engine.gpuMemoryUtilization: 1.5 is above"):
        modeltier.parse_spec(raw)


def test_dump_round_trips_through_parse():
    spec = modeltier.parse_spec(_disaggregated())
    assert modeltier.parse_spec(schema.dump(spec)) == spec


def _walk(node, path="$"):
    yield path, node
    for key, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{key}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural_every_node_typed_and_described():
    root = schema.openapi(modeltier.ModelTierSpec)
    for path, node in _walk(root):
        typed = "type" in node or node.get("x-kubernetes-int-or-string")
        assert typed, f"{path} has no type"
        if path != "$" and not path.endswith("[]") and not path.endswith("}"):
            assert node.get("description"), f"{path} has no description"


def test_schema_carries_enums_defaults_and_cel_rules():
    root = schema.openapi(modeltier.ModelTierSpec)
    engine = root["properties"]["engine"]["properties"]
    assert "fp8" in engine["quantization"]["enum"]
    assert engine["prefixCaching"]["default"] == {}
    assert engine["prefixCaching"]["properties"]["enabled"]["default"] is True
    rules = [r["rule"] for r in root["x-kubernetes-validations"]]
    assert any("has(self.prefill) && has(self.decode)" in r for r in rules)
    role_rules = [r["rule"] for r in root["properties"]["decode"]["x-kubernetes-validations"]]
    assert "!(has(self.replicas) && has(self.autoscaling))" in role_rules
