"""Standalone mode on the local control plane: a pool annotated `inference.frontier.dev/standalone: "true"`
(with kubectl, as the README says) gets a picker pod with an Envoy sidecar, and a client's request to that
pod's port 8081 reaches the engine serving the Hugging Face name it asks for, or the LoRA adapter the tier
declares (the operator's pod annotations carry both to the picker); annotating the pool back to "false"
removes the sidecar and its ConfigMap.

KWOK runs no containers, so the test plays the pods' processes from what the operator rendered, at the pods'
own (loopback) IPs: the engine's argv on the simulator, the picker's argv (its discovery reading the cluster
through the test's kubeconfig), and the real Envoy on the rendered bootstrap. A pod's containers share its
network, which one address stands in for: the bootstrap's `0.0.0.0` and `127.0.0.1` become the picker pod's
IP; its ports stay as rendered."""

import json
import pathlib
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import operator_cluster as oc
import operator_samples as samples
import pytest
import yaml

from frontier_api import modeltier, names
from frontier_operator import manifests, pools, render_picker, settings
from frontier_testkit import controlplane

pytestmark = pytest.mark.cluster

TIER = "llama"
SERVED = "meta-llama/Llama-3.1-8B-Instruct"
ADAPTER = "sql-lora"
BIN = pathlib.Path(sys.executable).parent


@pytest.fixture
def cluster(control_plane: Any, tmp_path: pathlib.Path) -> Iterator[tuple[oc.Api, str]]:
    control_plane.apply_crds([oc.CRD])
    api = oc.Api(control_plane.api_client())
    ns = control_plane.namespace("op-standalone")
    operator = oc.Operator(
        kubeconfig=pathlib.Path(control_plane.kubeconfig), namespace=ns, log_path=tmp_path / "operator.log"
    )
    try:
        yield api, ns
    finally:
        operator.stop()
        oc.delete_namespace(api, ns)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.terminate()
    for process in started:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def _post(url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def _pod_ip(api: oc.Api, ns: str, selector: str) -> str:
    def found() -> str | None:
        pods = api.list("v1", "Pod", ns, label_selector=selector)
        ready = [
            p
            for p in pods
            if (p.get("status") or {}).get("podIP") and not p["metadata"].get("deletionTimestamp")
        ]
        return ready[0]["status"]["podIP"] if len(ready) == 1 else None

    return str(oc.wait_for(f"one pod with an IP ({selector})", found))


def kubectl(control_plane: Any, namespace: str, *args: str) -> None:
    """Run the control plane's kubectl on the test's namespace, as a user would."""
    binary = controlplane.default_cache_dir() / "bin" / "kubectl"
    subprocess.run(
        [str(binary), "--kubeconfig", str(control_plane.kubeconfig), "-n", namespace, *args],
        check=True,
        capture_output=True,
        timeout=60,
    )


def _spawn(argv: list[str], log: pathlib.Path, started: list[subprocess.Popen[bytes]]) -> None:
    started.append(subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT))


def test_a_standalone_pool_serves_a_client_through_its_pickers_envoy_sidecar(
    cluster: tuple[oc.Api, str],
    control_plane: Any,
    processes: list[subprocess.Popen[bytes]],
    tmp_path: pathlib.Path,
) -> None:
    api, ns = cluster
    api.create(samples.pool(namespace=ns) | {"metadata": {"name": "chat", "namespace": ns}})
    tier = samples.tier(
        TIER,
        ns,
        spec={
            "poolRef": {"name": "chat"},
            "model": {"source": SERVED, "servedName": SERVED},
            "engine": {"lora": {"maxLoras": 2, "adapters": [{"name": ADAPTER, "source": "org/sql-lora"}]}},
            "serving": {"replicas": 1, "accelerator": {"type": samples.H100}},
        },
    )
    del tier["metadata"]["uid"], tier["metadata"]["generation"]
    api.create(tier)

    def ready() -> bool:
        found = api.get(oc.TIER_API, names.MODEL_TIER_KIND, ns, TIER)
        return (oc.condition(found, modeltier.READY) or {}).get("status") == "True"

    oc.wait_for(f"ModelTier {ns}/{TIER} Ready", ready)

    def containers_now() -> dict[str, dict[str, Any]]:
        found = api.get("apps/v1", "Deployment", ns, "chat-picker") or {}
        return {c["name"]: c for c in found["spec"]["template"]["spec"]["containers"]}

    assert sorted(containers_now()) == ["picker"]  # a Gateway-fronted picker until the pool says otherwise
    # As the README says, with kubectl: the annotation alone (no generation change) adds the sidecar.
    kubectl(control_plane, ns, "annotate", "inferencepool", "chat", f"{pools.STANDALONE_ANNOTATION}=true")
    oc.wait_for("the Envoy sidecar", lambda: sorted(containers_now()) == ["envoy", "picker"], timeout_s=60)
    oc.wait_for(f"ModelTier {ns}/{TIER} Ready again", ready)
    containers = containers_now()
    service = api.get("v1", "Service", ns, "chat-picker")
    assert service is not None
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["http"] == names.STANDALONE_HTTP_PORT
    envoy_map = api.get("v1", "ConfigMap", ns, "chat-picker-envoy")
    config_map = api.get("v1", "ConfigMap", ns, "chat-picker-config")
    assert envoy_map is not None and config_map is not None
    # What the API server stored is what the operator renders: its next pass finds nothing to repair.
    live_pool = api.get(f"{names.GIE_GROUP}/{names.GIE_VERSION}", "InferencePool", ns, "chat")
    live_tier = api.get(oc.TIER_API, names.MODEL_TIER_KIND, ns, TIER)
    assert live_pool is not None and live_tier is not None
    desired = render_picker.render(
        pool=pools.from_object(live_pool), owners=[live_tier], cfg=settings.Settings()
    )
    for manifest in desired:
        _, kind, _, name = manifests.key(manifest)
        stored = api.get(manifest["apiVersion"], kind, ns, name)
        assert stored is not None and manifests.drift(manifest, stored) == [], (kind, name)

    # The pods' processes, from what the operator rendered.
    engine_ip = _pod_ip(api, ns, f"{names.TIER_LABEL}={TIER}")
    picker_ip = _pod_ip(api, ns, f"{manifests.COMPONENT_LABEL}=endpoint-picker")
    engine = api.get("apps/v1", "Deployment", ns, f"{TIER}-serving")
    assert engine is not None
    engine_container = engine["spec"]["template"]["spec"]["containers"][0]
    assert engine_container["command"] == ["frontier-sim", "serve"]
    _spawn(
        [str(BIN / "frontier-sim"), "serve", *engine_container["args"], "--host", engine_ip],
        tmp_path / "engine.log",
        processes,
    )
    config_file = tmp_path / render_picker.CONFIG_KEY
    config_file.write_text(config_map["data"][render_picker.CONFIG_KEY])
    args = list(containers["picker"]["args"])
    args[args.index("--config-file") + 1] = str(config_file)
    _spawn(
        [
            str(BIN / "frontier-picker"),
            *args,
            "--address",
            picker_ip,
            "--kubeconfig",
            str(control_plane.kubeconfig),
            # Scraping the engine 20 times a second is the picker's default, not what this test is about.
            "--refresh-metrics-interval",
            "200ms",
        ],
        tmp_path / "picker.log",
        processes,
    )
    bootstrap = yaml.safe_load(envoy_map["data"][render_picker.ENVOY_CONFIG_KEY])
    for listener in bootstrap["static_resources"]["listeners"]:
        listener["address"]["socket_address"]["address"] = picker_ip
    for cluster_ in bootstrap["static_resources"]["clusters"]:
        for group in (cluster_.get("load_assignment") or {}).get("endpoints", []):
            for endpoint in group["lb_endpoints"]:
                address = endpoint["endpoint"]["address"]["socket_address"]
                assert address["address"] == "127.0.0.1"
                address["address"] = picker_ip
    bootstrap_file = tmp_path / "envoy.json"
    bootstrap_file.write_text(json.dumps(bootstrap))
    _spawn(
        [
            str(BIN / "envoy"),
            "-c",
            str(bootstrap_file),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "-l",
            "warning",
        ],
        tmp_path / "envoy.log",
        processes,
    )

    url = f"http://{picker_ip}:{names.STANDALONE_HTTP_PORT}"
    oc.wait_for(
        "Envoy ready", lambda: _get(f"http://{picker_ip}:{names.STANDALONE_READY_PORT}/ready")[0] == 200
    )
    chat = {"model": SERVED, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    status, payload = oc.wait_for(
        "a chat completion through the sidecar",
        lambda: (lambda r: r if r[0] == 200 else None)(_post(f"{url}/v1/chat/completions", chat)),
        timeout_s=60,
    )
    assert json.loads(payload)["model"] == SERVED
    status, payload = _post(f"{url}/v1/chat/completions", {**chat, "model": ADAPTER})
    assert status == 200 and json.loads(payload)["model"] == ADAPTER, payload
    status, payload = _get(f"{url}/v1/models")
    assert status == 200 and {SERVED, ADAPTER} <= {m["id"] for m in json.loads(payload)["data"]}
    status, _ = _post(f"{url}/v1/chat/completions", {**chat, "model": "not-served/model"})
    assert status == 404  # the tier router: no endpoint serves it and no virtual model stands for it

    # Back to a Gateway-fronted picker: the sidecar, its ConfigMap and the Service port go.
    kubectl(
        control_plane,
        ns,
        "annotate",
        "--overwrite",
        "inferencepool",
        "chat",
        f"{pools.STANDALONE_ANNOTATION}=false",
    )

    def sidecar_gone() -> bool:
        found = api.get("apps/v1", "Deployment", ns, "chat-picker") or {}
        names_ = [c["name"] for c in found["spec"]["template"]["spec"]["containers"]]
        return names_ == ["picker"] and api.get("v1", "ConfigMap", ns, "chat-picker-envoy") is None

    oc.wait_for("the sidecar and its ConfigMap gone", sidecar_gone, timeout_s=60)
    service = api.get("v1", "Service", ns, "chat-picker")
    assert service is not None
    assert "http" not in {p["name"] for p in service["spec"]["ports"]}
