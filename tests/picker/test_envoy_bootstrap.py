"""The rendered Envoy bootstraps are accepted by the real Envoy (`--mode validate`) in every mode, and carry
the processing modes GKE/Istio use."""

import json
import subprocess
from pathlib import Path

import pytest

from frontier_api import envoy_bootstrap

from . import stack


@pytest.mark.envoy
@pytest.mark.parametrize("mode", envoy_bootstrap.MODES)
@pytest.mark.parametrize("static", [False, True])
def test_envoy_accepts_the_bootstrap(tmp_path: Path, mode: str, static: bool) -> None:
    config = envoy_bootstrap.bootstrap(
        listen_address="127.2.0.100",
        listen_port=10000,
        pickers=["127.2.0.100:9002", "127.2.0.101:9002"],
        mode=mode,
        endpoints=[("127.2.0.1", 8000), ("127.2.0.2", 8000)] if static else None,
        admin_port=10001,
        subset_from_header=True,
    )
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(config))
    result = subprocess.run(
        [str(stack.ENVOY), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_gie_mode_is_full_duplex_both_ways_and_cheap_mode_skips_the_response_body() -> None:
    gie = envoy_bootstrap.processing_mode("gie")
    assert gie["request_body_mode"] == gie["response_body_mode"] == "FULL_DUPLEX_STREAMED"
    assert gie["request_trailer_mode"] == gie["response_trailer_mode"] == "SEND"
    cheap = envoy_bootstrap.processing_mode("cheap")
    assert (cheap["request_body_mode"], cheap["response_body_mode"], cheap["response_trailer_mode"]) == (
        "FULL_DUPLEX_STREAMED",
        "NONE",
        "SEND",
    )
    with pytest.raises(ValueError, match="allowed"):
        envoy_bootstrap.processing_mode("fast")


def test_client_copies_of_the_pickers_headers_are_removed_before_ext_proc_runs() -> None:
    config = envoy_bootstrap.bootstrap(
        listen_address="127.2.0.100", listen_port=10000, pickers=["127.2.0.100:9002"]
    )
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filters = [f["name"] for f in manager["http_filters"]]
    assert filters.index("envoy.filters.http.header_mutation") < filters.index("envoy.filters.http.ext_proc")
    mutation = manager["http_filters"][0]["typed_config"]["mutations"]["request_mutations"]
    assert {m["remove"] for m in mutation} == {
        "x-gateway-destination-endpoint",
        "x-gateway-destination-endpoint-served",
        "x-prefiller-host-port",
    }


def test_every_picker_replica_is_in_the_cluster_and_health_checked_for_readiness() -> None:
    config = envoy_bootstrap.bootstrap(
        listen_address="127.2.0.100", listen_port=10000, pickers=["127.2.0.100:9002", "[::1]:9012"]
    )
    cluster = next(c for c in config["static_resources"]["clusters"] if c["name"] == "frontier_picker")
    addresses = [
        (
            e["endpoint"]["address"]["socket_address"]["address"],
            e["endpoint"]["address"]["socket_address"]["port_value"],
        )
        for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert addresses == [("127.2.0.100", 9002), ("::1", 9012)]
    (check,) = cluster["health_checks"]
    assert check["grpc_health_check"] == {"service_name": "readiness"}
    with pytest.raises(ValueError, match="host:port"):
        envoy_bootstrap.bootstrap(listen_address="127.2.0.100", listen_port=10000, pickers=["127.2.0.100"])
    with pytest.raises(ValueError, match="at least one"):
        envoy_bootstrap.bootstrap(listen_address="127.2.0.100", listen_port=10000, pickers=[])
