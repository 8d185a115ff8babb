"""GIE's metrics read from a real picker's `/metrics`: after requests through the real Envoy, every plugin
call timed under its extension point, type and name, and the prefix index's size and, per request, how much
of the prompt the chosen endpoint held; and every family GIE's own dashboard reads."""

import json
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from frontier_api import envoy_bootstrap, names
from frontier_picker import datastore, endpoints, server
from frontier_picker.scheduling import config

from . import stack

pytestmark = pytest.mark.envoy

BLOCKS = 10
PROMPT = "".join(f"{i:03d}" * 22 for i in range(BLOCKS))[: 64 * BLOCKS]  # exactly BLOCKS 64-character blocks


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_plugin_durations_and_prefix_hits_are_exported_under_gies_names(tmp_path: Path) -> None:
    loop = stack.LoopThread()
    backend = stack.Backend(address="127.2.0.161")  # one endpoint: the second request must hit its cache
    envoy = picker = None
    try:
        loop.run(backend.start())
        store = datastore.Datastore()
        store.replace(
            [
                endpoints.Endpoint(
                    name="e0", address=backend.address, port=backend.port, labels={names.MODEL_LABEL: "m"}
                )
            ]
        )
        options = server.Options(
            address=stack.FRONT,
            grpc_port=0,
            grpc_health_port=0,
            metrics_port=0,
            secure_serving=False,
            builtin_config="gie-default",
            refresh_metrics_interval_s=0,  # the echo backend serves no /metrics
        )
        picker = loop.run(server.start(options, store=store))
        listen_port, admin_port = stack.free_port(stack.FRONT), stack.free_port(stack.FRONT)
        bootstrap = envoy_bootstrap.bootstrap(
            listen_address=stack.FRONT,
            listen_port=listen_port,
            pickers=[f"{stack.FRONT}:{picker.grpc_port}"],
            picker_tls=False,
            endpoints=[(backend.address, backend.port)],
            admin_port=admin_port,
        )
        envoy, log_path = stack.launch_envoy(bootstrap, tmp=tmp_path, name="envoy-plugin-metrics")
        loop.run(stack.wait_ready(f"http://{stack.FRONT}:{admin_port}/ready", envoy, log_path))
        sent = json.dumps({"model": "m", "prompt": PROMPT}).encode()
        answered = 0
        for _ in range(2):
            request = urllib.request.Request(
                f"http://{stack.FRONT}:{listen_port}/v1/completions",
                data=sent,
                headers={"content-type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
                answered += len(response.read())

        found = samples(f"http://{stack.FRONT}:{picker.metrics_port}/metrics")
        calls = {
            (dict(labels)["extension_point"], dict(labels)["plugin_type"]): value
            for (name, labels), value in found.items()
            if name == "inference_extension_plugin_duration_seconds_count"
        }
        assert calls == {
            ("Admission", "priority-shedding"): 2,  # the loader's default admitter
            ("ProfilePicker", "single-profile-handler"): 4,  # asked twice per request: run, then done
            ("Scorer", "queue-scorer"): 2,
            ("Scorer", "kv-cache-utilization-scorer"): 2,
            ("Scorer", "prefix-cache-scorer"): 2,
            ("Picker", "max-score-picker"): 2,
            ("ProcessProfilesResults", "single-profile-handler"): 2,
            ("PreRequest", "prefix-cache-scorer"): 2,
        }
        labels = (("extension_point", "Scorer"), ("plugin_name", "prefix-cache-scorer"))
        labels += (("plugin_type", "prefix-cache-scorer"),)
        assert 0 < found[("inference_extension_plugin_duration_seconds_sum", labels)] < 1
        # The first request found nothing cached, the second its whole prompt on the one endpoint.
        assert found[("inference_extension_prefix_indexer_hit_ratio_count", ())] == 2
        assert found[("inference_extension_prefix_indexer_hit_ratio_sum", ())] == 1.0
        assert found[("inference_extension_prefix_indexer_hit_ratio_bucket", (("le", "0.0"),))] == 1
        assert found[("inference_extension_prefix_indexer_hit_bytes_sum", ())] == 64 * BLOCKS
        assert found[("inference_extension_prefix_indexer_size", ())] == BLOCKS
        model = (("model_name", "m"), ("target_model_name", "m"))
        attempts = {
            labels: value
            for (name, labels), value in found.items()
            if name == "inference_extension_scheduler_attempts_total"
        }
        # The first request's model is not a label value yet (no endpoint had answered it): `other`.
        chosen = (("namespace", ""), ("pod_name", "e0"), ("port", str(backend.port)), ("status", "success"))
        assert attempts == {
            (*chosen, ("target_model_name", "other")): 1,
            (*chosen, ("target_model_name", "m")): 1,
        }
        assert found[("inference_objective_request_sizes_sum", model)] == 2 * len(sent)
        # Both answered: nothing runs, under whichever label each request started.
        assert found[("inference_objective_running_requests", (("model_name", "other"),))] == 0
        assert found[("inference_objective_running_requests", (("model_name", "m"),))] == 0
        assert found[("inference_objective_response_sizes_sum", model)] == answered  # gie mode: bodies seen
    finally:
        if envoy is not None:
            stack.stop_envoy(envoy)
        if picker is not None:
            loop.run(picker.stop())
        if backend.runner is not None:
            loop.run(backend.runner.cleanup())
        loop.close()


# Every metric GIE v1.5.0's own Grafana dashboard (tools/dashboards/inference_gateway.json) queries from the
# endpoint picker, by family name.
GIE_DASHBOARD_FAMILIES = {
    "inference_extension_flow_control_dispatch_cycle_duration_seconds",
    "inference_extension_flow_control_pool_saturation",
    "inference_extension_flow_control_queue_bytes",
    "inference_extension_flow_control_queue_size",
    "inference_extension_flow_control_request_enqueue_duration_seconds",
    "inference_extension_flow_control_request_queue_duration_seconds",
    "inference_objective_input_tokens",
    "inference_objective_output_tokens",
    "inference_objective_request_duration_seconds",
    "inference_objective_request_error",  # _total
    "inference_objective_request_sizes",
    "inference_objective_request",  # _total
    "inference_objective_response_sizes",
    "inference_pool_average_kv_cache_utilization",
    "inference_pool_average_queue_size",
    "inference_pool_per_pod_queue_size",
    "inference_extension_scheduler_attempts",  # _total: not on that dashboard, but GIE's
}


def test_a_picker_with_flow_control_exports_every_family_gies_own_dashboard_reads(tmp_path: Path) -> None:
    loop = stack.LoopThread()
    picker = None
    try:
        store = datastore.Datastore()
        store.replace([endpoints.Endpoint(name="vllm-0", address="127.2.0.162", port=8000)])
        text = yaml.safe_load(config.builtin_text("gie-default"))
        text["flowControl"] = {"maxInFlightPerEndpoint": 4}
        options = server.Options(
            address=stack.FRONT,
            grpc_port=0,
            grpc_health_port=0,
            metrics_port=0,
            secure_serving=False,
            config_text=yaml.safe_dump(text),
            refresh_metrics_interval_s=0,
            pool_name="chat",
        )
        picker = loop.run(server.start(options, store=store))
        with urllib.request.urlopen(
            f"http://{stack.FRONT}:{picker.metrics_port}/metrics", timeout=5
        ) as response:
            families = {family.name for family in text_string_to_metric_families(response.read().decode())}
        assert families >= GIE_DASHBOARD_FAMILIES, GIE_DASHBOARD_FAMILIES - families
        found = samples(f"http://{stack.FRONT}:{picker.metrics_port}/metrics")
        assert (
            found[("inference_pool_per_pod_queue_size", (("model_server_pod", "vllm-0"), ("name", "chat")))]
            == 0
        )
    finally:
        if picker is not None:
            loop.run(picker.stop())
        loop.close()
