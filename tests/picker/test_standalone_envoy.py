"""A standalone picker's pod as the operator renders it, run here: its Envoy sidecar, started on the
bootstrap from the rendered ConfigMap, asks the picker (TLS, with the rendered `--fallbacks`) and routes a
client's request to the endpoint serving the model it names; other paths are refused by Envoy itself.

The pod's network is stood in for by one loopback address: the rendered bootstrap's listeners (0.0.0.0) and
the picker's localhost address are moved there, and their fixed ports to free ones, so parallel test runs
do not collide. Nothing else in the bootstrap is changed."""

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from frontier_api import names
from frontier_operator import pools, render_picker, settings
from frontier_picker import datastore, endpoints, server
from frontier_picker.scheduling import config

from . import stack

pytestmark = pytest.mark.envoy

POD = "127.2.0.150"  # the picker pod's address
SERVED = "meta-llama/Llama-3.1-8B-Instruct"


def standalone_picker() -> dict[tuple[str, str], dict[str, Any]]:
    pool = {
        "metadata": {
            "name": "chat",
            "namespace": "team-a",
            "uid": "pool-uid",
            "annotations": {pools.STANDALONE_ANNOTATION: "true"},
        },
        "spec": {
            "selector": {"matchLabels": {"app": "chat"}},
            "targetPorts": [{"number": 8000}],
            "endpointPickerRef": {"name": "chat-picker", "port": {"number": 9002}},
        },
    }
    tier = {
        "apiVersion": f"{names.FRONTIER_GROUP}/{names.FRONTIER_VERSION}",
        "kind": names.MODEL_TIER_KIND,
        "metadata": {"name": "llama", "namespace": "team-a", "uid": "tier-uid"},
        "spec": {"poolRef": {"name": "chat"}, "model": {"source": SERVED, "servedName": SERVED}},
    }
    rendered = render_picker.render(pool=pools.from_object(pool), owners=[tier], cfg=settings.Settings())
    return {(m["kind"], m["metadata"]["name"]): m for m in rendered}


def moved_into_the_pod(bootstrap: dict[str, Any], *, picker_port: int) -> tuple[dict[str, Any], int, int]:
    """`bootstrap` with its listeners on POD at free ports and its picker cluster at POD:`picker_port`;
    returns it with the HTTP and readiness ports."""
    ports = {}
    for listener in bootstrap["static_resources"]["listeners"]:
        address = listener["address"]["socket_address"]
        assert address["address"] == "0.0.0.0"
        ports[address["port_value"]] = address["port_value"] = stack.free_port(POD)
        address["address"] = POD
    (picker,) = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "frontier_picker"]
    socket = picker["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert socket["socket_address"] == {"address": "127.0.0.1", "port_value": names.EXT_PROC_PORT}
    socket["socket_address"] = {"address": POD, "port_value": picker_port}
    return bootstrap, ports[names.STANDALONE_HTTP_PORT], ports[names.STANDALONE_READY_PORT]


def post(url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_the_rendered_sidecar_envoy_routes_a_request_through_the_picker(tmp_path: Path) -> None:
    found = standalone_picker()
    pod = found[("Deployment", "chat-picker")]["spec"]["template"]["spec"]
    picker_args = pod["containers"][0]["args"]
    fallbacks = int(picker_args[picker_args.index("--fallbacks") + 1])
    config_text = found[("ConfigMap", "chat-picker-config")]["data"][render_picker.CONFIG_KEY]
    envoy_text = found[("ConfigMap", "chat-picker-envoy")]["data"][render_picker.ENVOY_CONFIG_KEY]

    loop = stack.LoopThread()
    other, serving = stack.Backend(address="127.2.0.151"), stack.Backend(address="127.2.0.152")
    envoy = None
    try:
        for backend in (other, serving):
            loop.run(backend.start())
        store = datastore.Datastore()
        store.replace(
            endpoints.Endpoint(
                name=name, address=backend.address, port=backend.port, labels={names.MODEL_LABEL: model}
            )
            for name, backend, model in (("other", other, "Qwen/Qwen3-8B"), ("llama", serving, SERVED))
        )
        options = server.Options(
            address=POD,
            grpc_port=0,
            grpc_health_port=0,
            metrics_port=0,
            secure_serving=True,  # the picker's default, which the rendered args keep
            fallbacks=fallbacks,
            refresh_metrics_interval_s=0,  # the echo backends serve no /metrics
        )
        scheduler = config.load(config_text, fallbacks=fallbacks)
        picker = loop.run(server.start(options, scheduler=scheduler, store=store))
        bootstrap, http_port, ready_port = moved_into_the_pod(
            yaml.safe_load(envoy_text), picker_port=picker.grpc_port
        )
        envoy, log_path = stack.launch_envoy(bootstrap, tmp=tmp_path, name="envoy-standalone")
        loop.run(stack.wait_ready(f"http://{POD}:{ready_port}/ready", envoy, log_path))

        url = f"http://{POD}:{http_port}"
        for _ in range(3):
            status, payload = post(
                f"{url}/v1/chat/completions",
                {"model": SERVED, "messages": [{"role": "user", "content": "hello"}]},
            )
            assert status == 200, payload
            assert json.loads(payload)["served_by"] == serving.key
        assert [r.path for r in other.received] == []
        status, _ = post(f"{url}/v1/chat/completions", {"model": "unknown/model", "messages": []})
        assert status == 404  # the tier router: no endpoint serves it and no virtual model stands for it
        status, _ = post(f"{url}/reset_prefix_cache", {})
        assert status == 404 and len(serving.received) == 3
        loop.run(picker.stop())
    finally:
        if envoy is not None:
            stack.stop_envoy(envoy)
        for backend in (other, serving):
            if backend.runner is not None:
                loop.run(backend.runner.cleanup())
        loop.close()
