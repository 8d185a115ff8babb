"""Renderers: ModelTier + InferencePool + settings -> vLLM arguments and Kubernetes manifests."""

import copy
import dataclasses
import http.server
import json
import subprocess
import sys
import threading
import time

import operator_samples as samples
import pytest
import yaml

from frontier_api import modeltier, names, vllm_flags
from frontier_operator import (
    events,
    manifests,
    pools,
    render_args,
    render_picker,
    render_tier,
    settings,
    validate,
)

CFG = settings.Settings()


def _render(spec_raw=None, pool_obj=None):
    obj = samples.tier(spec=spec_raw)
    spec = modeltier.parse_spec(obj["spec"])
    pool = pools.from_object(pool_obj or samples.pool())
    return obj, spec, pool, render_tier.render(tier=obj, spec=spec, pool=pool, cfg=CFG)


def _by_name(rendered):
    return {(m["kind"], m["metadata"]["name"]): m for m in rendered}


def _flag(args, flag):
    return args[args.index(flag) + 1]


def test_decode_args_carry_model_quantization_speculation_kv_transfer_and_events():
    _, spec, _, _ = _render()
    args = render_args.vllm_args(spec, role=names.ROLE_DECODE, port=8000)
    assert args[:7] == [
        "meta-llama/Llama-3.1-8B-Instruct",
        "--served-model-name",
        "llama-3.1-8b",
        "--port",
        "8000",
        "--tensor-parallel-size",
        "2",
    ]
    assert _flag(args, "--quantization") == "fp8"
    assert _flag(args, "--max-model-len") == "8192"
    assert "--enable-prefix-caching" in args
    assert _flag(args, "--speculative-config") == (
        '{"method":"ngram","num_speculative_tokens":4,"prompt_lookup_max":4}'
    )
    assert _flag(args, "--kv-transfer-config") == '{"kv_connector":"NixlConnector","kv_role":"kv_both"}'
    assert json.loads(_flag(args, "--kv-events-config")) == {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": "tcp://*:5557",
        "topic": "kv@$(POD_IP)@llama-3.1-8b",
        "replay_endpoint": "tcp://*:5558",
    }


def test_prefill_role_does_not_load_the_speculative_proposer():
    _, spec, _, _ = _render()
    args = render_args.vllm_args(spec, role=names.ROLE_PREFILL, port=8000)
    assert "--speculative-config" not in args
    assert _flag(args, "--tensor-parallel-size") == "1"
    assert "--kv-transfer-config" in args


def test_drafted_speculation_names_its_model_and_lora_flags_render():
    raw = samples.disaggregated_spec()
    raw["engine"]["speculative"] = {"method": "eagle3", "numSpeculativeTokens": 3, "draftModel": "org/eagle3"}
    raw["engine"]["lora"] = {"maxLoras": 4, "adapters": [{"name": "sql", "source": "org/sql-lora"}]}
    _, spec, _, _ = _render(raw)
    args = render_args.vllm_args(spec, role=names.ROLE_DECODE, port=8000)
    assert json.loads(_flag(args, "--speculative-config")) == {
        "method": "eagle3",
        "num_speculative_tokens": 3,
        "model": "org/eagle3",
    }
    assert args[args.index("--enable-lora") : args.index("--enable-lora") + 5] == [
        "--enable-lora",
        "--max-loras",
        "4",
        "--lora-modules",
        "sql=org/sql-lora",
    ]


def test_deployments_per_role_with_labels_gpus_placement_and_replicas():
    _, _, _, rendered = _render()
    found = _by_name(rendered)
    assert set(found) == {
        ("Deployment", "llama-fast-prefill"),
        ("Deployment", "llama-fast-decode"),
        ("PodDisruptionBudget", "llama-fast-prefill"),
        ("PodDisruptionBudget", "llama-fast-decode"),
    }
    decode = found[("Deployment", "llama-fast-decode")]
    assert decode["spec"]["replicas"] == 4
    assert found[("Deployment", "llama-fast-prefill")]["spec"]["replicas"] == 2
    labels = decode["spec"]["template"]["metadata"]["labels"]
    assert labels["app"] == "chat-servers"  # the pool's selector
    assert labels[names.TIER_LABEL] == "llama-fast"
    assert labels[names.ROLE_LABEL] == names.ROLE_DECODE
    assert labels[names.MODEL_LABEL] == "llama-3.1-8b"
    assert labels[names.ENGINE_TYPE_LABEL] == names.ENGINE_VLLM
    assert decode["spec"]["selector"]["matchLabels"] == {
        names.TIER_LABEL: "llama-fast",
        names.ROLE_LABEL: names.ROLE_DECODE,
    }
    pod = decode["spec"]["template"]["spec"]
    engine = pod["containers"][0]
    assert engine["resources"]["requests"][names.GPU_RESOURCE] == "2"
    assert engine["resources"]["limits"][names.GPU_RESOURCE] == "2"
    assert pod["nodeSelector"] == {names.GKE_ACCELERATOR_LABEL: samples.H100}
    assert {"key": names.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert engine["command"] == ["vllm", "serve"]
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in engine["env"]
    # Decode pods: the routing sidecar takes the pool's port and the probes; the engine moves behind it.
    sidecar = pod["containers"][1]
    assert sidecar["command"] == ["frontier-sidecar"]
    assert sidecar["args"] == [
        "--port",
        "8000",
        "--engine-url",
        f"http://127.0.0.1:{render_tier.ENGINE_LOCAL_PORT}",
    ]
    assert sidecar["ports"][0]["containerPort"] == 8000
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/v1/models"
    args = engine["args"]
    assert args[args.index("--port") + 1] == str(render_tier.ENGINE_LOCAL_PORT)
    assert "readinessProbe" not in engine and all(p["containerPort"] != 8000 for p in engine["ports"])
    prefill = found[("Deployment", "llama-fast-prefill")]["spec"]["template"]["spec"]
    (prefill_engine,) = prefill["containers"]  # prefill pods serve the pool's port themselves
    assert prefill_engine["readinessProbe"]["httpGet"] == {"path": "/v1/models", "port": 8000}
    owner = decode["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "ModelTier",
        "llama-fast",
        "tier-uid",
        True,
    )


def test_autoscaled_role_gets_an_hpa_and_no_replicas():
    raw = samples.disaggregated_spec()
    raw["decode"] = {
        "autoscaling": {"minReplicas": 2, "maxReplicas": 8},
        "accelerator": {"type": samples.H100},
    }
    _, _, _, rendered = _render(raw)
    found = _by_name(rendered)
    assert "replicas" not in found[("Deployment", "llama-fast-decode")]["spec"]
    hpa = found[("HorizontalPodAutoscaler", "llama-fast-decode")]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "llama-fast-decode",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "vllm:num_requests_waiting"


def test_engine_image_and_command_come_from_settings_for_the_simulator():
    obj = samples.tier()
    spec = modeltier.parse_spec(obj["spec"])
    cfg = settings.Settings(engine_image="frontier:dev", engine_command=("frontier-sim", "serve"))
    rendered = render_tier.render(tier=obj, spec=spec, pool=pools.from_object(samples.pool()), cfg=cfg)
    engine = rendered[0]["spec"]["template"]["spec"]["containers"][0]
    assert (engine["image"], engine["command"]) == ("frontier:dev", ["frontier-sim", "serve"])


def test_rendering_is_deterministic_and_a_spec_change_changes_the_hash():
    _, _, _, first = _render()
    _, _, _, again = _render()
    assert first == again
    raw = samples.disaggregated_spec()
    raw["engine"]["quantization"] = "awq"
    _, _, _, changed = _render(raw)
    hashes = [
        m["metadata"]["annotations"][manifests.APPLIED_HASH_ANNOTATION]
        for m in first
        if m["kind"] == "Deployment"
    ]
    changed_hashes = [
        m["metadata"]["annotations"][manifests.APPLIED_HASH_ANNOTATION]
        for m in changed
        if m["kind"] == "Deployment"
    ]
    assert all(a != b for a, b in zip(hashes, changed_hashes, strict=True))


def test_scaling_decode_changes_only_the_decode_deployment():
    _, _, _, before = _render()
    raw = samples.disaggregated_spec()
    raw["decode"]["replicas"] = 6
    _, _, _, after = _render(raw)
    diff = [b["metadata"]["name"] for a, b in zip(before, after, strict=True) if a != b]
    assert diff == ["llama-fast-decode"]


def test_roles_roll_out_without_surge_so_a_full_gpu_pool_can_replace_its_pods():
    # Kubernetes' default (25% surge, 25% unavailable) starts a surge pod first, which waits forever for
    # GPUs a full pool does not have.
    _, _, _, rendered = _render()
    for deployment in (m for m in rendered if m["kind"] == "Deployment"):
        assert deployment["spec"]["strategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
        }
    raw = samples.disaggregated_spec()
    raw["rollout"] = {"strategy": "Recreate"}
    _, _, _, recreated = _render(raw)
    assert _by_name(recreated)[("Deployment", "llama-fast-decode")]["spec"]["strategy"] == {
        "type": "Recreate"
    }
    raw["rollout"] = {"maxSurge": 2, "maxUnavailable": 0}
    _, _, _, surged = _render(raw)
    decode = _by_name(surged)[("Deployment", "llama-fast-decode")]
    assert decode["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 2, "maxUnavailable": 0}


def test_each_role_gets_a_disruption_budget_over_its_pods_owned_by_the_tier():
    _, _, _, rendered = _render()
    found = _by_name(rendered)
    for role in ("prefill", "decode"):
        budget = found[("PodDisruptionBudget", f"llama-fast-{role}")]
        deployment = found[("Deployment", f"llama-fast-{role}")]
        assert budget["apiVersion"] == "policy/v1"
        assert budget["spec"]["selector"] == deployment["spec"]["selector"]
        assert budget["spec"]["maxUnavailable"] == 1
        assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        assert budget["metadata"]["ownerReferences"] == deployment["metadata"]["ownerReferences"]
        assert budget["metadata"]["labels"][manifests.COMPONENT_LABEL] == "model-server"
    raw = samples.disaggregated_spec()
    raw["rollout"] = {"maxSurge": 1, "maxUnavailable": 0}  # a surge-only rollout still lets drains proceed
    _, _, _, surged = _render(raw)
    assert _by_name(surged)[("PodDisruptionBudget", "llama-fast-decode")]["spec"]["maxUnavailable"] == 1


def test_engine_pods_drain_their_requests_within_the_grace_period():
    raw = samples.disaggregated_spec()
    raw["rollout"] = {"drainTimeoutSeconds": 300}
    _, _, _, rendered = _render(raw)
    found = _by_name(rendered)
    decode = found[("Deployment", "llama-fast-decode")]["spec"]["template"]["spec"]
    prefill = found[("Deployment", "llama-fast-prefill")]["spec"]["template"]["spec"]
    for pod in (decode, prefill):
        grace = pod["terminationGracePeriodSeconds"]
        assert grace == render_tier.ENDPOINT_REMOVAL_S + 300 + render_tier.ENGINE_STOP_S
    (prefill_engine,) = prefill["containers"]
    command = prefill_engine["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:3] == ["python3", "-c", render_tier.DRAIN_SCRIPT]
    assert command[3:] == ["http://127.0.0.1:8000/metrics", str(render_tier.ENDPOINT_REMOVAL_S), "300"]
    # Decode requests come through the sidecar: it stays up as long as the engine behind it drains.
    engine, sidecar = decode["containers"]
    local = f"http://127.0.0.1:{render_tier.ENGINE_LOCAL_PORT}/metrics"
    assert engine["lifecycle"]["preStop"]["exec"]["command"][3] == local
    assert sidecar["lifecycle"] == engine["lifecycle"]


class _Engine(http.server.BaseHTTPRequestHandler):
    """A /metrics page whose requests in flight count down by one per scrape (from `busy`)."""

    busy = 0
    sglang = False  # SGLang's gauge names instead of vLLM's

    def do_GET(self):
        busy = float(max(type(self).busy, 0))
        page = (
            f'sglang:num_running_reqs{{model="m"}} {busy}\nsglang:num_queue_reqs{{model="m"}} 0.0\n'.encode()
            if type(self).sglang
            else (
                "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
                f'vllm:num_requests_running{{engine="0",model_name="m"}} {busy}\n'
                'vllm:num_requests_waiting{engine="0",model_name="m"} 0.0\n'
            ).encode()
        )
        type(self).busy -= 1
        self.send_response(200)
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args):
        pass


@pytest.fixture
def engine_metrics():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Engine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics", _Engine
    server.shutdown()
    _Engine.sglang = False


def _drain(url, timeout_s):
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", render_tier.DRAIN_SCRIPT, url, "0", str(timeout_s)], check=True)
    return time.monotonic() - started


def test_the_drain_waits_for_in_flight_requests_and_no_longer_than_its_timeout(engine_metrics):
    url, engine = engine_metrics
    engine.busy = 2  # two scrapes see requests in flight, the third none
    assert 2 <= _drain(url, 30) < 10
    assert engine.busy < 0
    engine.busy = 1000  # never idle: the timeout ends the drain
    assert 3 <= _drain(url, 3) < 10
    engine.busy = 0
    assert _drain(url, 30) < 2  # idle: the drain ends at once
    assert _drain("http://127.0.0.1:9/metrics", 30) < 5  # no engine answers: nothing to drain


def test_picker_objects_follow_the_pools_endpoint_picker_ref():
    pool = pools.from_object(samples.pool())
    owners = [samples.tier("b", uid="uid-b"), samples.tier("a", uid="uid-a")]
    found = _by_name(render_picker.render(pool=pool, owners=owners, cfg=CFG))
    assert set(found) == {
        ("ConfigMap", "chat-picker-config"),
        ("ServiceAccount", "chat-picker"),
        ("Role", "chat-picker"),
        ("RoleBinding", "chat-picker"),
        ("Deployment", "chat-picker"),
        ("Service", "chat-picker"),
        ("Service", "chat-picker-peers"),
        ("PodDisruptionBudget", "chat-picker"),
    }
    service = found[("Service", "chat-picker")]
    assert service["spec"]["ports"][0]["port"] == 9002
    assert service["spec"]["ports"][0]["targetPort"] == names.EXT_PROC_PORT
    container = found[("Deployment", "chat-picker")]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == [
        "--workers",
        "1",
        "--peer-port",
        "9004",
        "--peer-service",
        "chat-picker-peers.op-test.svc:9004",
        "--pool-name",
        "chat",
        "--pool-namespace",
        "op-test",
        "--grpc-port",
        "9002",
        "--grpc-health-port",
        "9003",
        "--metrics-port",
        "9090",
        "--config-file",
        "/config/config.yaml",
        "--drain-delay",
        "1",
        "--drain-timeout",
        "30",
        "--metrics-endpoint-auth=false",
    ]
    # The pod outlives the picker's drain: routed streams finish before the kubelet kills it.
    pod = found[("Deployment", "chat-picker")]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > 30
    owner_uids = [o["uid"] for o in found[("Service", "chat-picker")]["metadata"]["ownerReferences"]]
    assert owner_uids == ["uid-a", "uid-b"]
    assert not any(o["controller"] for o in found[("Role", "chat-picker")]["metadata"]["ownerReferences"])
    resources = {r for rule in found[("Role", "chat-picker")]["rules"] for r in rule["resources"]}
    # Exactly what the picker's pool discovery lists and watches.
    assert resources == {"pods", "inferencepools", "inferenceobjectives"}
    verbs = {v for rule in found[("Role", "chat-picker")]["rules"] for v in rule["verbs"]}
    assert verbs == {"list", "watch"}


def test_picker_replicas_find_each_other_through_a_headless_service_and_drain_one_at_a_time():
    pool = pools.from_object(samples.pool())
    cfg = dataclasses.replace(CFG, picker_replicas=3, picker_workers=2)
    found = _by_name(render_picker.render(pool=pool, owners=[samples.tier()], cfg=cfg))
    deployment = found[("Deployment", "chat-picker")]
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][:2] == ["--workers", "2"]
    assert container["resources"]["requests"]["cpu"] == "2"  # a core per worker
    assert {"name": "peers", "containerPort": 9004, "protocol": "TCP"} in container["ports"]
    peers = found[("Service", "chat-picker-peers")]["spec"]
    assert peers["clusterIP"] == "None"  # DNS answers every replica's address, not one virtual IP
    assert peers["publishNotReadyAddresses"] is True  # a draining replica is still followed
    assert peers["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert "--peer-service" in container["args"]
    assert (
        container["args"][container["args"].index("--peer-service") + 1]
        == "chat-picker-peers.op-test.svc:9004"
    )
    term = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    budget = found[("PodDisruptionBudget", "chat-picker")]["spec"]
    assert budget == {"maxUnavailable": 1, "selector": deployment["spec"]["selector"]}


def test_picker_config_override_annotation_mounts_the_users_configmap():
    obj = samples.pool()
    obj["metadata"]["annotations"] = {pools.PICKER_CONFIG_ANNOTATION: "my-config"}
    found = _by_name(render_picker.render(pool=pools.from_object(obj), owners=[samples.tier()], cfg=CFG))
    assert ("ConfigMap", "chat-picker-config") not in found
    volumes = found[("Deployment", "chat-picker")]["spec"]["template"]["spec"]["volumes"]
    assert volumes == [{"name": "config", "configMap": {"name": "my-config"}}]


def test_pool_without_target_port_is_refused_naming_the_field():
    obj = samples.pool()
    obj["spec"]["targetPorts"] = []
    with pytest.raises(pools.PoolError, match=r"spec.targetPorts\[0\].number"):
        pools.from_object(obj)


def test_extra_args_may_not_repeat_a_typed_flag():
    raw = samples.disaggregated_spec()
    raw["engine"]["extraArgs"] = ["--enforce-eager", "--quantization=awq"]
    invalid = validate.check_spec(modeltier.parse_spec(raw))
    assert invalid is not None
    assert invalid.reason == "ExtraArgConflict"
    assert "spec.engine.extraArgs[1]" in invalid.message and "--quantization" in invalid.message


def _extra_args_check(extra_args):
    raw = samples.disaggregated_spec()
    raw["engine"]["extraArgs"] = extra_args
    return validate.check_spec(modeltier.parse_spec(raw))


@pytest.mark.parametrize(
    "extra_args",
    [
        ["--enforce-eager", "-tp", "2"],
        ["--enforce-eager", "--tensor_parallel_size=2"],
        ["--enforce-eager", "--tensor-parallel-size=2"],
        ["--enforce-eager", "-tp=2"],
        ["--enforce-eager", "--no-enable-prefix-caching"],
        ["--enforce-eager", "--speculative-config.method", "eagle"],
        ["--enforce-eager", "-q", "awq"],
    ],
    ids=["alias", "underscores", "equals", "alias-equals", "negated-switch", "json-key", "short-alias"],
)
def test_extra_args_may_not_repeat_a_typed_flag_in_any_spelling_vllm_accepts(extra_args):
    invalid = _extra_args_check(extra_args)
    assert invalid is not None and invalid.reason == "ExtraArgConflict"
    written = extra_args[1].partition("=")[0]
    assert invalid.message.startswith(f"spec.engine.extraArgs[1] {written}")
    assert "repeats what" in invalid.message


@pytest.mark.parametrize(
    ("extra_args", "index", "says"),
    [
        (["--enforce-eager", "--no-such-flag"], 1, "--no-such-flag is not a flag of vllm serve 0.11.0"),
        (["--max-num-seq", "8"], 0, "--max-num-seq abbreviates --max-num-seqs"),
        (["--block-size", "16", "--model", "m"], 2, "--model: vllm serve 0.11.0 refuses it"),
        (["--enforce-eager", "--block-size", "24"], 1, "'24' is refused by vLLM 0.11.0; allowed: 1, 8, 16"),
        (["--enforce-eager=1"], 0, "--enforce-eager is a switch"),
        (["--block-size"], 0, "--block-size needs a value"),
        (["--enforce-eager", "org/model"], 1, "'org/model' is no flag's value"),
    ],
    ids=["unknown", "abbreviation", "model", "refused-choice", "switch-with-value", "no-value", "positional"],
)
def test_extra_args_vllm_would_refuse_are_refused_naming_the_entry(extra_args, index, says):
    invalid = _extra_args_check(extra_args)
    assert invalid is not None and invalid.reason in ("ExtraArgInvalid", "ExtraArgConflict")
    assert invalid.message.startswith(f"spec.engine.extraArgs[{index}]")
    assert says in invalid.message


def test_extra_args_vllm_accepts_pass():
    assert (
        _extra_args_check(
            ["--enforce-eager", "--block-size", "32", "-O3", "--max_cpu_loras=4", "--load-format", "dummy"]
        )
        is None
    )


def _rendered_specs():
    aggregated = samples.disaggregated_spec()
    aggregated["disaggregation"] = {"enabled": False}
    aggregated["serving"] = aggregated.pop("decode")
    del aggregated["prefill"]
    aggregated["engine"]["lora"] = {
        "maxLoras": 2,
        "maxLoraRank": 64,
        "adapters": [{"name": "sql", "source": "org/sql"}, {"name": "chat", "source": "org/chat"}],
    }
    aggregated["engine"]["prefixCaching"] = {"enabled": False}
    aggregated["engine"]["speculative"] = {"method": "eagle3", "numSpeculativeTokens": 3, "draftModel": "o/e"}
    aggregated["engine"].update(dtype="bfloat16", kvCacheDtype="fp8_e5m2", gpuMemoryUtilization=0.9)
    return [modeltier.parse_spec(samples.disaggregated_spec()), modeltier.parse_spec(aggregated)]


@pytest.mark.parametrize("spec", _rendered_specs(), ids=["disaggregated", "aggregated"])
def test_rendered_argv_is_one_vllm_0_11_serve_accepts(spec):
    flags = vllm_flags.table()
    assert flags.version == "0.11.0"
    for role in spec.roles():
        args = render_args.vllm_args(spec, role=role, port=8000)
        parsed = vllm_flags.parse(args, flags)  # raises on --model, unknown flags, refused choices
        assert parsed.positionals == ((0, spec.model.source),)
        assert len({a.option.dest for a in parsed.args}) == len(parsed.args)  # no flag twice


def test_every_typed_flag_is_a_vllm_0_11_flag_under_its_long_name():
    flags = vllm_flags.table()
    for flag in render_args.TYPED_FLAGS:
        option = flags.option(flag)
        assert option is not None and option.name == flag, flag


def test_the_crd_offers_only_values_vllm_0_11_accepts():
    flags = vllm_flags.table()
    assert set(modeltier.SpeculativeMethod) <= set(flags.speculative_methods)
    assert "draft_model" not in flags.speculative_methods  # 0.11's V1 engine refuses it
    assert flags.max_lora_ranks == modeltier.MAX_LORA_RANKS
    assert set(modeltier.Quantization) <= set(flags.quantization_methods)
    for flag, values in (
        ("--dtype", modeltier.Dtype),
        ("--kv-cache-dtype", modeltier.KvCacheDtype),
        ("--prefix-caching-hash-algo", modeltier.PrefixHashAlgo),
    ):
        option = flags.option(flag)
        assert option is not None and option.choices is not None
        assert set(values) <= set(option.choices), flag


def test_label_values_from_model_names_are_made_valid():
    assert manifests.label_value("meta-llama/Llama-3.1-8B") == "meta-llama-Llama-3.1-8B"
    assert len(manifests.label_value("x" * 100)) == 63


def _config_hash(found):
    template = found[("Deployment", "chat-picker")]["spec"]["template"]
    return template["metadata"]["annotations"]["inference.frontier.dev/config-hash"]


def test_generated_picker_config_is_the_pickers_builtin_frontier_config():
    from frontier_picker.scheduling import config

    pool = pools.from_object(samples.pool())
    tier = samples.tier()
    tier["spec"]["tier"]["virtualModels"] = []  # no virtual model: nothing to fill in
    found = _by_name(render_picker.render(pool=pool, owners=[tier], cfg=CFG))
    text = found[("ConfigMap", "chat-picker-config")]["data"][render_picker.CONFIG_KEY]
    # The picker package's own text, whatever frontier.yaml holds today: never a copy kept in the operator.
    assert text == config.builtin_text("frontier")
    assert config.parse(text) == config.parse(config.builtin_text(config.DEFAULT_CONFIG))
    assert config.load(text).destination_profile.name == "frontier"


def test_a_tiers_non_cached_tokens_reach_the_pickers_pd_decider_for_its_model():
    from frontier_picker.scheduling import config
    from frontier_picker.scheduling.plugins import pd_deciders, profile_handlers

    spec = samples.disaggregated_spec()
    spec["disaggregation"]["nonCachedTokens"] = 512
    served = spec["model"]["servedName"]
    default_tier = samples.tier("llama-default", uid="uid-b")  # keeps the default: no entry for it
    default_tier["spec"]["model"]["servedName"] = "other-model"
    pool = pools.from_object(samples.pool())
    owners = [samples.tier(spec=spec), default_tier]
    found = _by_name(render_picker.render(pool=pool, owners=owners, cfg=CFG))
    text = found[("ConfigMap", "chat-picker-config")]["data"][render_picker.CONFIG_KEY]
    handler = config.load(text).handler
    assert isinstance(handler, profile_handlers.PDProfileHandler)
    assert isinstance(handler.decider, pd_deciders.PrefixBasedDecider)
    assert handler.decider.by_model == {served: 512}
    assert handler.decider.threshold == 2048


def _two_tier_owners() -> list[dict]:
    small = samples.tier("small", uid="uid-s")
    small["spec"]["model"]["servedName"] = "meta-llama/Llama-3.1-8B-Instruct"
    small["spec"]["tier"] = {
        "rank": 0,
        "relativeCost": 1,
        "routing": {"maxPromptTokens": 4000, "fallback": True},
    }
    large = samples.tier("large", uid="uid-l")
    large["spec"]["model"]["servedName"] = "meta-llama/Llama-3.1-70B-Instruct"
    large["spec"]["tier"] = {
        "rank": 1,
        "relativeCost": 8,
        "virtualModels": ["auto", "smart"],
        "routing": {"keywords": ["prove"]},
    }
    return [large, small]


def test_the_pools_virtual_models_reach_the_pickers_tier_router_with_a_classifier():
    from frontier_picker.scheduling import config
    from frontier_picker.scheduling.plugins import classifier, tiers

    pool = pools.from_object(samples.pool())
    found = _by_name(render_picker.render(pool=pool, owners=_two_tier_owners(), cfg=CFG))
    text = found[("ConfigMap", "chat-picker-config")]["data"][render_picker.CONFIG_KEY]
    router = config.load(text).router
    assert isinstance(router, tiers.TierRouter)
    assert isinstance(router.classifier, classifier.PromptClassifier)
    auto = {t.model: t for t in router.virtual_models["auto"]}
    assert set(auto) == {"meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-70B-Instruct"}
    small, large = auto["meta-llama/Llama-3.1-8B-Instruct"], auto["meta-llama/Llama-3.1-70B-Instruct"]
    assert (small.rank, small.relative_cost, small.max_prompt_tokens, small.fallback) == (0, 1.0, 4000, True)
    assert (large.rank, large.relative_cost, large.fallback) == (1, 8.0, False)
    assert large.keywords is not None and large.keywords.search("please prove it")
    assert [t.model for t in router.virtual_models["smart"]] == ["meta-llama/Llama-3.1-70B-Instruct"]


def test_a_virtual_model_named_like_a_served_model_is_left_to_the_served_model():
    owners = _two_tier_owners()
    owners[0]["spec"]["tier"]["virtualModels"] = ["meta-llama/Llama-3.1-8B-Instruct"]
    assert "meta-llama/Llama-3.1-8B-Instruct" not in render_picker.virtual_models(owners)


def test_tier_pods_carry_the_exact_served_name_for_the_picker():
    owners = _two_tier_owners()
    spec = modeltier.parse_spec(owners[1]["spec"])
    deployment = render_tier.deployment(
        tier=owners[1], spec=spec, role_name="prefill", pool=pools.from_object(samples.pool()), cfg=CFG
    )
    template = deployment["spec"]["template"]["metadata"]
    assert template["annotations"][names.SERVED_MODEL_ANNOTATION] == "meta-llama/Llama-3.1-8B-Instruct"
    assert template["labels"][names.MODEL_LABEL] == "meta-llama-Llama-3.1-8B-Instruct"  # lossy: not read
    assert names.ADAPTERS_ANNOTATION not in template["annotations"]
    owners[1]["spec"]["engine"]["lora"] = {
        "maxLoras": 2,
        "adapters": [{"name": "sql-lora", "source": "org/sql"}, {"name": "chat-lora", "source": "org/chat"}],
    }
    spec = modeltier.parse_spec(owners[1]["spec"])
    deployment = render_tier.deployment(
        tier=owners[1], spec=spec, role_name="prefill", pool=pools.from_object(samples.pool()), cfg=CFG
    )
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations[names.ADAPTERS_ANNOTATION] == "sql-lora,chat-lora"  # the picker routes adapter names


def test_tier_pods_publishing_kv_events_announce_the_port_the_picker_subscribes_to():
    owners = _two_tier_owners()
    owners[1]["spec"]["engine"]["kvEvents"] = {"enabled": True, "endpoint": "tcp://*:6001"}
    spec = modeltier.parse_spec(owners[1]["spec"])
    deployment = render_tier.deployment(
        tier=owners[1], spec=spec, role_name="prefill", pool=pools.from_object(samples.pool()), cfg=CFG
    )
    pod = deployment["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    assert annotations[names.KV_EVENTS_PORT_ANNOTATION] == "6001"
    assert annotations[names.KV_EVENTS_REPLAY_PORT_ANNOTATION] == "5558"  # the picker's replay after a gap
    ports = {port["name"]: port["containerPort"] for port in pod["spec"]["containers"][0]["ports"]}
    assert ports["kv-events"] == 6001 and ports["kv-replay"] == 5558


def test_kv_events_without_replay_render_no_replay_socket():
    owners = _two_tier_owners()
    owners[1]["spec"]["engine"]["kvEvents"] = {"enabled": True, "replayEndpoint": ""}
    spec = modeltier.parse_spec(owners[1]["spec"])
    args = render_args.vllm_args(spec, role="prefill", port=8000)
    assert "replay_endpoint" not in json.loads(_flag(args, "--kv-events-config"))
    deployment = render_tier.deployment(
        tier=owners[1], spec=spec, role_name="prefill", pool=pools.from_object(samples.pool()), cfg=CFG
    )
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert names.KV_EVENTS_REPLAY_PORT_ANNOTATION not in annotations


def test_operator_setting_replaces_the_generated_picker_config():
    default = _by_name(
        render_picker.render(pool=pools.from_object(samples.pool()), owners=[samples.tier()], cfg=CFG)
    )
    cfg = settings.Settings(picker_config="kind: EndpointPickerConfig\n")
    found = _by_name(
        render_picker.render(pool=pools.from_object(samples.pool()), owners=[samples.tier()], cfg=cfg)
    )
    assert found[("ConfigMap", "chat-picker-config")]["data"]["config.yaml"] == "kind: EndpointPickerConfig\n"
    assert _config_hash(found) != _config_hash(default)  # a changed config rolls the picker


def test_pool_annotation_override_ignores_the_operator_config_and_hashes_the_configmap_name():
    obj = samples.pool()
    obj["metadata"]["annotations"] = {pools.PICKER_CONFIG_ANNOTATION: "my-config"}
    cfg = settings.Settings(picker_config="kind: EndpointPickerConfig\n")
    found = _by_name(render_picker.render(pool=pools.from_object(obj), owners=[samples.tier()], cfg=cfg))
    assert not any(kind == "ConfigMap" for kind, _ in found)
    assert _config_hash(found) == "configmap:my-config"


def _live(manifest):
    """`manifest` as the API server returns it: defaults and other fields added, empty values omitted."""
    live = copy.deepcopy(manifest)
    live["metadata"] |= {"uid": "live-uid", "resourceVersion": "7", "managedFields": []}
    live["status"] = {"replicas": 1}
    return live


def test_a_live_object_as_applied_shows_no_drift_and_hand_edits_are_named():
    _, _, _, rendered = _render()
    decode = _by_name(rendered)[("Deployment", "llama-fast-decode")]
    live = _live(decode)
    container = live["spec"]["template"]["spec"]["containers"][0]
    container["terminationMessagePath"] = "/dev/termination-log"  # a default the API server fills in
    assert manifests.drift(decode, live) == []

    container["image"] = "vllm/vllm-openai:hacked"
    container["resources"]["limits"][names.GPU_RESOURCE] = "1"
    container["args"] = container["args"][:-1]
    live["spec"]["template"]["spec"]["tolerations"].append({"key": "spot", "operator": "Exists"})
    live["spec"]["replicas"] = 9
    prefix = "spec.template.spec"
    assert set(manifests.drift(decode, live)) == {
        "spec.replicas",
        f"{prefix}.tolerations",
        f"{prefix}.containers[0].image",
        f"{prefix}.containers[0].args",
        f"{prefix}.containers[0].resources.limits.{names.GPU_RESOURCE}",
    }


def test_drift_of_the_picker_config_and_values_the_api_server_omits_when_empty():
    pool = pools.from_object(samples.pool())
    config_map = _by_name(render_picker.render(pool=pool, owners=[samples.tier()], cfg=CFG))[
        ("ConfigMap", "chat-picker-config")
    ]
    live = _live(config_map)
    live["data"]["config.yaml"] += "# edited\n"
    assert manifests.drift(config_map, live) == ["data.config.yaml"]
    empty = {
        "apiVersion": "v1",
        "kind": "X",
        "metadata": {"name": "x"},
        "spec": {"a": [], "b": False, "c": {}},
    }
    assert manifests.drift(empty, {"metadata": {"name": "x"}, "spec": {}}) == []


def test_objects_the_operator_did_not_create_are_foreign():
    pool = pools.from_object(samples.pool())
    service = _by_name(render_picker.render(pool=pool, owners=[samples.tier()], cfg=CFG))[
        ("Service", "chat-picker")
    ]
    assert manifests.foreign(service, _live(service)) is None
    gie = {"metadata": {"name": "chat-picker", "labels": {manifests.MANAGED_BY_LABEL: "Helm"}}}
    assert manifests.foreign(service, gie) == "is managed by 'Helm'"
    assert "no app.kubernetes.io/managed-by" in str(manifests.foreign(service, {"metadata": {}}))
    # Another pool's picker of the same name (two pools sharing an endpointPickerRef).
    other = render_picker.render(
        pool=pools.from_object(samples.pool("chat2") | {"spec": samples.pool()["spec"]}),
        owners=[samples.tier()],
        cfg=CFG,
    )
    assert manifests.foreign(service, _live(_by_name(other)[("Service", "chat-picker")])) == (
        "belongs to the endpoint picker of InferencePool chat2"
    )
    # A Deployment of a tier's child name, controlled by something else.
    _, _, _, rendered = _render()
    decode = _by_name(rendered)[("Deployment", "llama-fast-decode")]
    taken = _live(decode)
    taken["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    assert manifests.foreign(decode, taken) == "is controlled by another object"


def test_a_config_valid_false_event_is_posted_once_per_transition():
    invalid = validate.Invalid(reason="PickerNameTaken", message="Service op-test/chat-picker exists")
    assert events.is_transition(None, invalid)
    assert events.is_transition({"status": "True", "reason": "Rendered", "message": ""}, invalid)
    same = {"status": "False", "reason": "PickerNameTaken", "message": invalid.message}
    assert not events.is_transition(same, invalid)
    assert events.is_transition(same | {"reason": "ApplyRefused"}, invalid)
    event = events.warning(tier=samples.tier(), reason=invalid.reason, message="x" * 5000, now="T")
    assert event["involvedObject"]["kind"] == names.MODEL_TIER_KIND
    assert event["involvedObject"]["uid"] == "tier-uid"
    assert (event["type"], event["reason"], len(event["message"])) == ("Warning", "PickerNameTaken", 1024)


def test_model_access_token_cache_pull_secrets_and_service_account_reach_every_engine_pod():
    spec = samples.disaggregated_spec()
    spec["model"] |= {
        "tokenSecretRef": {"name": "hf-token"},
        "cache": {"claimName": "llama-cache", "readOnly": True},
    }
    spec["engine"] |= {"imagePullSecrets": ["registry-creds"], "serviceAccountName": "llama-engine"}
    _, _, _, rendered = _render(spec)
    for role in ("prefill", "decode"):
        pod = _by_name(rendered)[("Deployment", f"llama-fast-{role}")]["spec"]["template"]["spec"]
        engine = pod["containers"][0]
        assert {
            "name": "HF_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}},
        } in engine["env"]
        assert {"name": "HF_HOME", "value": names.MODEL_CACHE_PATH} in engine["env"]
        assert {"name": "model-cache", "mountPath": names.MODEL_CACHE_PATH, "readOnly": True} in engine[
            "volumeMounts"
        ]
        assert {
            "name": "model-cache",
            "persistentVolumeClaim": {"claimName": "llama-cache", "readOnly": True},
        } in pod["volumes"]
        assert pod["imagePullSecrets"] == [{"name": "registry-creds"}]
        assert pod["serviceAccountName"] == "llama-engine"


def test_without_model_access_settings_pods_carry_none_of_them():
    _, _, _, rendered = _render()
    pod = _by_name(rendered)[("Deployment", "llama-fast-decode")]["spec"]["template"]["spec"]
    env = {e["name"] for e in pod["containers"][0]["env"]}
    assert not env & {"HF_TOKEN", "HF_HOME"}
    assert [v["name"] for v in pod["volumes"]] == ["shm"]
    assert "imagePullSecrets" not in pod and "serviceAccountName" not in pod


def test_a_cpu_only_role_requests_no_gpu_and_is_not_steered_to_gpu_nodes():
    spec = {
        "poolRef": {"name": "chat"},
        "model": {"source": "Qwen/Qwen2.5-0.5B-Instruct", "servedName": "qwen-0.5b"},
        "engine": {"image": "vllm/vllm-openai-cpu:v0.11.0"},
        "serving": {"accelerator": {"countPerPod": 0}, "resources": {"requests": {"cpu": "4"}}},
    }
    _, parsed, _, rendered = _render(spec)
    assert parsed.roles()[names.ROLE_BOTH].gpus_per_pod() == 0
    pod = _by_name(rendered)[("Deployment", "llama-fast-serving")]["spec"]["template"]["spec"]
    engine = pod["containers"][0]
    assert engine["resources"] == {"requests": {"cpu": "4"}}
    assert engine["image"] == "vllm/vllm-openai-cpu:v0.11.0"
    assert "tolerations" not in pod and "nodeSelector" not in pod


def test_on_a_cluster_labelled_by_gpu_feature_discovery_the_type_selects_its_product_label():
    spec = samples.disaggregated_spec()
    spec["decode"]["accelerator"] = {"type": "NVIDIA-H100-80GB-HBM3"}
    obj = samples.tier(spec=spec)
    gfd = dataclasses.replace(CFG, accelerator_label="nvidia.com/gpu.product")
    rendered = render_tier.render(
        tier=obj, spec=modeltier.parse_spec(obj["spec"]), pool=pools.from_object(samples.pool()), cfg=gfd
    )
    pod = _by_name(rendered)[("Deployment", "llama-fast-decode")]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def _sglang_spec(**engine):
    return {
        "poolRef": {"name": "chat"},
        "model": {"source": "meta-llama/Llama-3.1-8B-Instruct", "servedName": "llama-3.1-8b"},
        "tier": {"rank": 1, "relativeCost": 1.0},
        "engine": {"type": "sglang", **engine},
        "serving": {
            "replicas": 2,
            "parallelism": {"tensor": 2, "data": 2},
            "accelerator": {"type": samples.H100},
        },
    }


def test_an_sglang_tier_renders_launch_server_with_its_flags_image_label_and_probes():
    raw = _sglang_spec(
        maxModelLen=8192,
        maxNumSeqs=128,
        gpuMemoryUtilization=0.85,
        quantization="fp8",
        kvCacheDtype="fp8_e4m3",
        prefixCaching={"enabled": False},
        extraArgs=["--chunked-prefill-size", "4096"],
    )
    spec = modeltier.parse_spec(raw)
    assert validate.check_spec(spec) is None
    _, _, _, rendered = _render(raw)
    dep = _by_name(rendered)[("Deployment", "llama-fast-serving")]
    pod = dep["spec"]["template"]
    (engine,) = pod["spec"]["containers"]
    assert engine["image"] == settings.DEFAULT_SGLANG_IMAGE
    assert engine["command"] == ["python3", "-m", "sglang.launch_server"]
    assert engine["args"] == [
        "--model-path", "meta-llama/Llama-3.1-8B-Instruct",
        "--served-model-name", "llama-3.1-8b",
        "--host", "0.0.0.0",
        "--port", "8000",
        "--tp-size", "2",
        "--dp-size", "2",
        "--context-length", "8192",
        "--max-running-requests", "128",
        "--mem-fraction-static", "0.85",
        "--kv-cache-dtype", "fp8_e4m3",
        "--quantization", "fp8",
        "--disable-radix-cache",
        "--chunked-prefill-size", "4096",
    ]  # fmt: skip
    assert pod["metadata"]["labels"][names.ENGINE_TYPE_LABEL] == "sglang"
    assert engine["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    assert engine["startupProbe"]["httpGet"]["path"] == "/health"
    assert engine["resources"]["limits"][names.GPU_RESOURCE] == "4"
    # Data parallelism of one is SGLang's default: not rendered.
    raw["serving"]["parallelism"] = {"tensor": 1}
    _, _, _, rendered = _render(raw)
    args = rendered[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--dp-size" not in args and _flag(args, "--tp-size") == "1"


def test_an_sglang_tiers_image_and_command_come_from_the_sglang_settings():
    spec = modeltier.parse_spec(_sglang_spec())
    cfg = settings.from_env(
        {"FRONTIER_SGLANG_IMAGE": "frontier:dev", "FRONTIER_SGLANG_COMMAND": "frontier-sim sglang"}
    )
    rendered = render_tier.render(tier=samples.tier(spec=_sglang_spec()), spec=spec, pool=pools.from_object(
        samples.pool()), cfg=cfg)  # fmt: skip
    engine = rendered[0]["spec"]["template"]["spec"]["containers"][0]
    assert (engine["image"], engine["command"]) == ("frontier:dev", ["frontier-sim", "sglang"])
    assert cfg.engine_command == ("vllm", "serve")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"disaggregation": {"enabled": True}}, "spec.disaggregation.enabled"),
        (
            {"engine": {"speculative": {"method": "ngram", "numSpeculativeTokens": 4}}},
            "spec.engine.speculative",
        ),
        ({"engine": {"lora": {"maxLoras": 2}}}, "spec.engine.lora"),
        ({"engine": {"maxNumBatchedTokens": 8192}}, "spec.engine.maxNumBatchedTokens"),
        ({"engine": {"prefixCaching": {"hashAlgo": "sha256"}}}, "spec.engine.prefixCaching.hashAlgo"),
        ({"engine": {"kvEvents": {"enabled": True}}}, "spec.engine.kvEvents.enabled"),
        ({"engine": {"kvCacheDtype": "fp8"}}, "spec.engine.kvCacheDtype 'fp8'"),
        ({"engine": {"quantization": "experts_int8"}}, "spec.engine.quantization 'experts_int8'"),
    ],
)
def test_what_sglang_has_no_equivalent_of_is_refused_naming_the_field(change, field):
    raw = _sglang_spec()
    for key, value in change.items():
        raw[key] = {**raw.get(key, {}), **value}
    invalid = validate.check_spec(modeltier.parse_spec(raw))
    assert invalid is not None and invalid.reason == "EngineUnsupported"
    assert field in invalid.message


@pytest.mark.parametrize("extra", [["--tp", "4"], ["--context-length=4096"], ["--model-path", "x"]])
def test_sglang_extra_args_may_not_repeat_a_typed_flag(extra):
    invalid = validate.check_spec(
        modeltier.parse_spec(_sglang_spec(extraArgs=["--trust-remote-code", *extra]))
    )
    assert invalid is not None and invalid.reason == "ExtraArgConflict"
    assert "spec.engine.extraArgs[1]" in invalid.message


def test_the_drain_waits_for_an_sglang_engines_requests_too(engine_metrics):
    url, engine = engine_metrics
    engine.sglang = True
    engine.busy = 2
    assert 2 <= _drain(url, 30) < 10
    engine.busy = 0
    assert _drain(url, 30) < 2


def _standalone_pool(value: str | None = "true"):
    obj = samples.pool()
    if value is not None:
        obj["metadata"]["annotations"] = {pools.STANDALONE_ANNOTATION: value}
    return pools.from_object(obj)


def test_a_standalone_pools_picker_runs_an_envoy_sidecar_that_clients_reach_on_the_service():
    found = _by_name(render_picker.render(pool=_standalone_pool(), owners=[samples.tier()], cfg=CFG))
    assert ("ConfigMap", "chat-picker-envoy") in found
    pod = found[("Deployment", "chat-picker")]["spec"]["template"]
    picker, envoy = pod["spec"]["containers"]
    assert (envoy["name"], envoy["image"], envoy["command"]) == (
        "envoy",
        settings.DEFAULT_ENVOY_IMAGE,
        ["envoy"],
    )
    assert envoy["args"][:2] == ["--config-path", "/etc/envoy/envoy.yaml"]
    assert {"name": "envoy-config", "configMap": {"name": "chat-picker-envoy"}} in pod["spec"]["volumes"]
    assert envoy["readinessProbe"]["httpGet"] == {"path": "/ready", "port": names.STANDALONE_READY_PORT}
    # Envoy outlives the requests in flight, within the pod's grace period.
    assert envoy["lifecycle"]["preStop"]["sleep"]["seconds"] < pod["spec"]["terminationGracePeriodSeconds"]
    assert envoy["securityContext"]["runAsNonRoot"] and envoy["securityContext"]["runAsUser"] > 0
    # Its original-destination cluster takes one address: the picker names no fallbacks.
    assert _flag(picker["args"], "--fallbacks") == "0"
    assert pod["metadata"]["annotations"]["inference.frontier.dev/envoy-config-hash"]
    ports = {p["name"]: p for p in found[("Service", "chat-picker")]["spec"]["ports"]}
    assert ports["http"]["port"] == ports["http"]["targetPort"] == names.STANDALONE_HTTP_PORT
    assert ports["grpc-ext-proc"]["port"] == 9002  # a Gateway may still call the same picker


def test_the_sidecars_envoy_asks_the_picker_on_localhost_and_routes_to_the_endpoint_it_names():
    found = _by_name(render_picker.render(pool=_standalone_pool(), owners=[samples.tier()], cfg=CFG))
    config = yaml.safe_load(found[("ConfigMap", "chat-picker-envoy")]["data"][render_picker.ENVOY_CONFIG_KEY])
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    picker = clusters["frontier_picker"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert picker["endpoint"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": names.EXT_PROC_PORT,
    }
    assert "transport_socket" in clusters["frontier_picker"]  # the picker serves TLS, as for a gateway
    assert clusters["inference_pool"]["type"] == "ORIGINAL_DST"
    listeners = {
        listener["address"]["socket_address"]["port_value"]
        for listener in config["static_resources"]["listeners"]
    }
    assert listeners == {names.STANDALONE_HTTP_PORT, names.STANDALONE_READY_PORT}
    assert "admin" not in config  # nothing in the pod network can stop Envoy


@pytest.mark.parametrize(
    ("annotation", "default", "expected"),
    [(None, False, False), (None, True, True), ("true", False, True), ("false", True, False)],
)
def test_the_pools_annotation_overrides_the_operators_standalone_default(annotation, default, expected):
    cfg = dataclasses.replace(CFG, picker_standalone=default)
    found = _by_name(
        render_picker.render(pool=_standalone_pool(annotation), owners=[samples.tier()], cfg=cfg)
    )
    containers = found[("Deployment", "chat-picker")]["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == (["picker", "envoy"] if expected else ["picker"])
    assert (("ConfigMap", "chat-picker-envoy") in found) is expected


def test_a_standalone_annotation_that_is_not_true_or_false_is_refused_naming_it():
    with pytest.raises(pools.PoolError, match=r"inference.frontier.dev/standalone is 'yes'; allowed: true"):
        _standalone_pool("yes")


def test_the_envoy_image_and_standalone_default_come_from_the_environment():
    cfg = settings.from_env(
        {
            "FRONTIER_PICKER_STANDALONE": "true",
            "FRONTIER_ENVOY_IMAGE": "registry.local/envoy:1.40",
            "FRONTIER_ENVOY_COMMAND": "/usr/local/bin/envoy",
        }
    )
    assert (cfg.picker_standalone, cfg.envoy_image, cfg.envoy_command) == (
        True,
        "registry.local/envoy:1.40",
        ("/usr/local/bin/envoy",),
    )
    with pytest.raises(
        ValueError, match="FRONTIER_PICKER_STANDALONE='on': allowed values are true and false"
    ):
        settings.from_env({"FRONTIER_PICKER_STANDALONE": "on"})
