"""The operator against a real API server, controller-manager, scheduler and KWOK GPU nodes.

Each test runs its own `frontier-operator` process watching only the test's namespace (prefix `op-`).
"""

import pathlib

import operator_cluster as oc
import operator_samples as samples
import pytest
from kubernetes.dynamic import exceptions

from frontier_api import modeltier, names
from frontier_operator import handlers, kube, reconcile, settings

pytestmark = pytest.mark.cluster

TIER = "llama-fast"


@pytest.fixture(scope="module")
def api(control_plane):
    control_plane.apply_crds([oc.CRD])
    return oc.Api(control_plane.api_client())


@pytest.fixture
def namespace(control_plane, api):
    """A fresh `op-` namespace per call; deleted (and its pods gone) when the test ends."""
    made: list[str] = []

    def make(prefix: str) -> str:
        made.append(control_plane.namespace(prefix))
        return made[-1]

    yield make
    for ns in made:
        oc.delete_namespace(api, ns)


@pytest.fixture
def operator_factory(control_plane, tmp_path):
    started: list[oc.Operator] = []

    def start(namespace: str, name: str = "operator") -> oc.Operator:
        op = oc.Operator(
            kubeconfig=pathlib.Path(control_plane.kubeconfig),
            namespace=namespace,
            log_path=tmp_path / f"{name}.log",
        )
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()


def _apply_pool_and_tier(api, ns, spec=None):
    api.create(samples.pool(namespace=ns) | {"metadata": {"name": "chat", "namespace": ns}})
    obj = samples.tier(TIER, ns, spec=spec)
    del obj["metadata"]["uid"], obj["metadata"]["generation"]
    return api.create(obj)


def _deployment(api, ns, role):
    return api.get("apps/v1", "Deployment", ns, f"{TIER}-{role}")


def _ready_tier(api, ns):
    def check():
        tier = api.get(oc.TIER_API, names.MODEL_TIER_KIND, ns, TIER)
        ready = oc.condition(tier, modeltier.READY)
        if (
            ready
            and ready["status"] == "True"
            and tier["status"]["observedGeneration"] == tier["metadata"]["generation"]
        ):
            return tier
        return None

    return oc.wait_for(f"ModelTier {ns}/{TIER} Ready=True", check)


def _engine_args(dep):
    return dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_disaggregated_tier_runs_on_h100_nodes_rolls_out_scales_and_is_collected(
    namespace, api, control_plane, operator_factory
):
    ns = namespace("op-lifecycle")
    op = operator_factory(ns)
    _apply_pool_and_tier(api, ns)

    tier = _ready_tier(api, ns)
    assert tier["status"]["roles"]["prefill"] == {"replicas": 2, "ready": 2, "updated": 2, "available": 2}
    assert tier["status"]["roles"]["decode"] == {"replicas": 4, "ready": 4, "updated": 4, "available": 4}
    assert tier["status"]["readyRoles"] == "2/2"
    assert tier["status"]["split"] == "2:4"  # available prefill:decode endpoints
    for type_ in (modeltier.PREFILL_AVAILABLE, modeltier.DECODE_AVAILABLE, modeltier.CONFIG_VALID):
        assert oc.condition(tier, type_)["status"] == "True"

    decode = _deployment(api, ns, "decode")
    args = _engine_args(decode)
    assert args[args.index("--quantization") + 1] == "fp8"
    assert '"method":"ngram"' in args[args.index("--speculative-config") + 1]
    container, side = decode["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["frontier-sim", "serve"]
    assert side["command"] == ["frontier-sidecar"]  # decode pods route through the P/D sidecar
    assert container["resources"]["limits"][names.GPU_RESOURCE] == "2"
    pods = api.list("v1", "Pod", ns, label_selector=f"{names.TIER_LABEL}={TIER}")
    assert len(pods) == 6
    nodes = {n["metadata"]["name"]: n for n in api.list("v1", "Node", "")}
    for pod in pods:
        node = nodes[pod["spec"]["nodeName"]]
        assert node["metadata"]["labels"][names.GKE_ACCELERATOR_LABEL] == samples.H100
        assert pod["metadata"]["labels"]["app"] == "chat-servers"  # the pool selects it
    assert api.get("v1", "Service", ns, "chat-picker")["spec"]["ports"][0]["port"] == 9002
    assert api.get("apps/v1", "Deployment", ns, "chat-picker") is not None

    # Change quantization: both roles roll out with the new flag.
    before = {r: _deployment(api, ns, r)["metadata"]["generation"] for r in ("prefill", "decode")}
    old_hash = tier["status"]["renderedArgsHash"]
    api.merge_patch(
        oc.TIER_API, names.MODEL_TIER_KIND, ns, TIER, {"spec": {"engine": {"quantization": "awq"}}}
    )
    oc.wait_for(
        "rollout to awq",
        lambda: _ready_tier(api, ns)["status"]["renderedArgsHash"] != old_hash,
    )
    for role in ("prefill", "decode"):
        dep = _deployment(api, ns, role)
        assert dep["metadata"]["generation"] > before[role]
        args = _engine_args(dep)
        assert args[args.index("--quantization") + 1] == "awq"

    # Scale decode: only the decode Deployment changes.
    prefill = _deployment(api, ns, "prefill")
    api.merge_patch(oc.TIER_API, names.MODEL_TIER_KIND, ns, TIER, {"spec": {"decode": {"replicas": 3}}})
    oc.wait_for("decode at 3 ready", lambda: _ready_tier(api, ns)["status"]["roles"]["decode"]["ready"] == 3)
    after = _deployment(api, ns, "prefill")
    assert after["metadata"]["generation"] == prefill["metadata"]["generation"]
    assert after["spec"] == prefill["spec"]
    assert _deployment(api, ns, "decode")["spec"]["replicas"] == 3
    assert _ready_tier(api, ns)["status"]["split"] == "2:3"

    # Delete: owner references let the garbage collector remove every child.
    api.delete(oc.TIER_API, names.MODEL_TIER_KIND, ns, TIER)
    oc.wait_for(
        "children garbage collected",
        lambda: (
            not api.list("apps/v1", "Deployment", ns)
            and not api.list(
                "v1", "ConfigMap", ns, label_selector="app.kubernetes.io/managed-by=frontier-operator"
            )
            and api.get("v1", "Service", ns, "chat-picker") is None
        ),
    )
    assert op.process.poll() is None, op.log()[-3000:]


def test_operator_restart_resumes_without_writes(namespace, api, control_plane, operator_factory):
    ns = namespace("op-restart")
    first = operator_factory(ns, "first")
    _apply_pool_and_tier(api, ns)
    _ready_tier(api, ns)
    first.stop()

    def versions():
        out = {}
        for api_version, kind in (
            (oc.TIER_API, names.MODEL_TIER_KIND),
            ("apps/v1", "Deployment"),
            ("v1", "Service"),
            ("v1", "ConfigMap"),
            ("v1", "ServiceAccount"),
            ("rbac.authorization.k8s.io/v1", "Role"),
            ("rbac.authorization.k8s.io/v1", "RoleBinding"),
            ("policy/v1", "PodDisruptionBudget"),
        ):
            for obj in api.list(api_version, kind, ns):
                if kind == "ServiceAccount" and obj["metadata"]["name"] == "default":
                    continue
                if kind == "ConfigMap" and obj["metadata"]["name"] == "kube-root-ca.crt":
                    continue
                out[(kind, obj["metadata"]["name"])] = obj["metadata"]["resourceVersion"]
        return out

    before = versions()
    # The tier, 3 Deployments, the picker's Service and peers Service, ConfigMap, ServiceAccount, Role,
    # RoleBinding, and the PodDisruptionBudgets of the two roles and of the picker.
    assert len(before) == 13
    second = operator_factory(ns, "second")
    oc.wait_for(
        "the restarted operator to reconcile the tier",
        lambda: f"reconcile tier={ns}/{TIER}" in second.log(),
        timeout_s=60,
    )
    # The initial listing's Deployment and pool events come on their own watches: wait until each was handled.
    oc.wait_for(
        "the restarted operator to go through its initial listing",
        lambda: (
            second.log().count(f"listed kind=Deployment namespace={ns} ") == 2  # prefill, decode
            and f"listed kind=InferencePool namespace={ns} " in second.log()
        ),
        timeout_s=60,
    )
    assert second.write_lines() == [], second.log()[-3000:]
    assert "applied=- deleted=- status_written=False" in second.log()
    assert versions() == before


def test_tier_whose_pool_is_missing_reports_config_invalid_and_creates_nothing(
    namespace, api, control_plane, operator_factory
):
    ns = namespace("op-nopool")
    operator_factory(ns)
    obj = samples.tier(TIER, ns, spec=samples.disaggregated_spec("absent"))
    del obj["metadata"]["uid"], obj["metadata"]["generation"]
    api.create(obj)

    def invalid():
        cond = oc.condition(api.get(oc.TIER_API, names.MODEL_TIER_KIND, ns, TIER), modeltier.CONFIG_VALID)
        return cond if cond and cond["status"] == "False" else None

    cond = oc.wait_for("ConfigValid=False", invalid)
    assert cond["reason"] == "PoolNotFound"
    assert "spec.poolRef.name" in cond["message"]
    assert api.list("apps/v1", "Deployment", ns) == []
    posted = oc.wait_for("the PoolNotFound Event", lambda: _tier_events(api, ns))
    assert [(e["type"], e["reason"], e["message"]) for e in posted] == [
        ("Warning", "PoolNotFound", cond["message"])
    ]


@pytest.fixture(scope="module")
def invalid_ns(control_plane, api):
    return control_plane.namespace("op-invalid")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda s: s["engine"].update(quantization="int3"), "spec.engine.quantization"),
        (lambda s: s["decode"].update(autoscaling={"maxReplicas": 8}), "spec.decode.autoscaling"),
        (lambda s: s.pop("decode"), "spec.disaggregation.enabled"),
        (
            lambda s: s["engine"].update(speculative={"method": "eagle3", "numSpeculativeTokens": 3}),
            "spec.engine.speculative.draftModel",
        ),
        (
            lambda s: s["engine"].update(
                speculative={"method": "draft_model", "numSpeculativeTokens": 3, "draftModel": "org/small"}
            ),
            "spec.engine.speculative.method",
        ),
        (
            lambda s: s["engine"].update(lora={"maxLoras": 2, "maxLoraRank": 48}),
            "spec.engine.lora.maxLoraRank",
        ),
        (lambda s: s["tier"].update(virtualModels=[""]), "spec.tier.virtualModels"),
        (
            lambda s: s["tier"].update(routing={"minPromptTokens": 900, "maxPromptTokens": 100}),
            "spec.tier.routing.minPromptTokens",
        ),
        (lambda s: s.update(rollout={"maxSurge": 0, "maxUnavailable": 0}), "spec.rollout.maxUnavailable"),
        (
            lambda s: (
                s["model"].update(tokenSecretRef={"name": "hf"}),
                s["engine"].update(env=[{"name": "HF_TOKEN", "value": "hf_x"}]),
            ),
            "spec.engine.env",
        ),
        (
            lambda s: (
                s["model"].update(cache={"claimName": "models"}),
                s["engine"].update(env=[{"name": "HF_HOME", "value": "/tmp"}]),
            ),
            "spec.engine.env",
        ),
        (lambda s: s["decode"]["accelerator"].update(countPerPod=0), "spec.decode.accelerator.type"),
        (
            lambda s: s["engine"].update(kvEvents={"enabled": True, "replayEndpoint": "tcp://*:5557"}),
            "spec.engine.kvEvents.replayEndpoint",
        ),
        (
            lambda s: s["engine"].update(kvEvents={"enabled": True, "replayEndpoint": "ipc:///tmp/replay"}),
            "spec.engine.kvEvents.replayEndpoint",
        ),
    ],
    ids=[
        "unknown-quantization",
        "replicas-and-autoscaling",
        "pd-with-one-role",
        "eagle3-without-draft",
        "draft-model-refused-by-vllm-0.11",
        "lora-rank-outside-vllms-set",
        "empty-virtual-model",
        "prompt-bounds-reversed",
        "rollout-that-can-replace-no-pod",
        "hf-token-twice",
        "hf-home-twice",
        "cpu-only-with-an-accelerator-type",
        "kv-replay-on-the-event-port",
        "kv-replay-without-a-tcp-port",
    ],
)
def test_invalid_tiers_are_rejected_by_the_api_server_naming_the_field(api, invalid_ns, change, field):
    ns = invalid_ns
    spec = samples.disaggregated_spec()
    change(spec)
    obj = samples.tier("bad", ns, spec=spec)
    del obj["metadata"]["uid"], obj["metadata"]["generation"]
    with pytest.raises(exceptions.DynamicApiError) as err:
        api.create(obj)
    assert err.value.status == 422
    body = err.value.body.decode() if isinstance(err.value.body, bytes) else str(err.value.body)
    assert field in body


def test_two_tiers_with_a_virtual_model_reach_the_pickers_config_with_exact_served_names(
    namespace, api, control_plane, operator_factory
):
    from frontier_picker.scheduling import config
    from frontier_picker.scheduling.plugins import tiers

    ns = namespace("op-tiers")
    operator_factory(ns)
    api.create(samples.pool(namespace=ns) | {"metadata": {"name": "chat", "namespace": ns}})
    served = {"small": "meta-llama/Llama-3.1-8B-Instruct", "large": "meta-llama/Llama-3.3-70B-Instruct"}
    for name, rank in (("small", 0), ("large", 1)):
        spec = samples.disaggregated_spec()
        spec["model"]["servedName"] = served[name]
        spec["tier"] = {"rank": rank, "relativeCost": 1 + 5 * rank, "routing": {"fallback": rank == 0}}
        spec["prefill"]["replicas"] = spec["decode"]["replicas"] = 1
        obj = samples.tier(name, ns, spec=spec)
        del obj["metadata"]["uid"], obj["metadata"]["generation"]
        api.create(obj)

    def router():
        found = api.get("v1", "ConfigMap", ns, "chat-picker-config")
        if found is None:
            return None
        loaded = config.load(found["data"]["config.yaml"]).router
        assert isinstance(loaded, tiers.TierRouter)
        auto = loaded.virtual_models.get("auto", ())
        return loaded if len(auto) == 2 else None

    auto = {t.model: t for t in oc.wait_for("both tiers under auto", router).virtual_models["auto"]}
    assert set(auto) == set(served.values())
    assert auto[served["small"]].fallback and auto[served["large"]].relative_cost == 6
    pods = oc.wait_for(
        "tier pods", lambda: api.list("v1", "Pod", ns, label_selector=f"{names.TIER_LABEL}=large") or None
    )
    assert pods[0]["metadata"]["annotations"][names.SERVED_MODEL_ANNOTATION] == served["large"]


def test_autoscaled_role_gets_an_hpa_that_goes_when_replicas_are_fixed_again(
    namespace, api, control_plane, operator_factory
):
    ns = namespace("op-hpa")
    operator_factory(ns)
    spec = samples.disaggregated_spec()
    spec["decode"] = {
        "autoscaling": {"minReplicas": 1, "maxReplicas": 3},
        "accelerator": {"type": samples.H100},
    }
    _apply_pool_and_tier(api, ns, spec)

    hpa = oc.wait_for(
        "decode HPA", lambda: api.get("autoscaling/v2", "HorizontalPodAutoscaler", ns, f"{TIER}-decode")
    )
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{TIER}-decode"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    decode = oc.wait_for("decode Deployment", lambda: _deployment(api, ns, "decode"))
    managed = {
        f["manager"]: f.get("fieldsV1", {}).get("f:spec", {}) for f in decode["metadata"]["managedFields"]
    }
    assert "f:replicas" not in managed["frontier-operator"]  # the HPA, not the operator, owns the count

    api.merge_patch(
        oc.TIER_API,
        names.MODEL_TIER_KIND,
        ns,
        TIER,
        {"spec": {"decode": {"autoscaling": None, "replicas": 2}}},
    )
    oc.wait_for(
        "HPA deleted",
        lambda: api.get("autoscaling/v2", "HorizontalPodAutoscaler", ns, f"{TIER}-decode") is None,
    )
    oc.wait_for("decode at 2 replicas", lambda: _deployment(api, ns, "decode")["spec"]["replicas"] == 2)


class _BrokenFor(reconcile.Reconciler):
    """The real reconciler, except that one tier's pass raises (as an unexpected API error would)."""

    broken = "aaa-broken"

    async def tier(self, namespace, name, *, body=None):
        if name == self.broken:
            raise RuntimeError("the API server answered something unexpected")
        return await super().tier(namespace, name, body=body)


async def test_one_broken_tier_does_not_stop_the_resync_of_the_others(namespace, api, control_plane):
    ns = namespace("op-resync")
    api.create(samples.pool(namespace=ns) | {"metadata": {"name": "chat", "namespace": ns}})
    for name in (_BrokenFor.broken, "zzz-fine"):  # the broken one is listed first
        obj = samples.tier(name, ns)
        del obj["metadata"]["uid"], obj["metadata"]["generation"]
        api.create(obj)
    client = kube.Kube(control_plane.api_client(), field_manager="frontier-operator")
    reconciler = _BrokenFor(client, settings.Settings())
    failed = await handlers.resync_once(reconciler, [ns])
    assert failed == [f"{ns}/{_BrokenFor.broken}"]
    assert api.get("apps/v1", "Deployment", ns, "zzz-fine-decode") is not None


def _pd_decision(api, ns, prompt_tokens):
    """What the pool's picker, configured by the operator's ConfigMap and seeing the pool's real pods (as its
    pool discovery would), decides for a fresh prompt of `prompt_tokens` to the tier's model."""
    from frontier_picker import endpoints, pool_discovery
    from frontier_picker.scheduling import config, types

    view = pool_discovery.PoolView(pool_name="chat")
    view.apply_pool(pool_discovery.SYNCED, [api.get(oc.POOL_API, "InferencePool", ns, "chat")])
    view.apply_pod(pool_discovery.SYNCED, api.list("v1", "Pod", ns))
    now = 1000.0
    states = [
        endpoints.EndpointState(
            endpoint=endpoint,
            metrics=endpoints.EndpointMetrics(running=2, updated_at=now),
            load=endpoints.EndpointLoad(),
        )
        for endpoint in view.endpoints()
    ]
    assert {s.endpoint.labels[names.ROLE_LABEL] for s in states} == {names.ROLE_PREFILL, names.ROLE_DECODE}
    text = api.get("v1", "ConfigMap", ns, "chat-picker-config")["data"]["config.yaml"]
    served = samples.disaggregated_spec()["model"]["servedName"]
    prompt = " ".join(f"w{i:03d}" for i in range(prompt_tokens))  # 4 characters a token, nothing cached
    request = types.Request(
        request_id="pd", model=served, target_model=served, prompt=prompt, prompt_tokens=prompt_tokens
    )
    decision = config.load(text, seed=1).schedule(request, endpoints.Snapshot(now=now, endpoints=states))
    roles = {f"{s.endpoint.address}:{s.endpoint.port}": s.endpoint.labels[names.ROLE_LABEL] for s in states}
    assert roles[decision.primary] == names.ROLE_DECODE
    return None if decision.prefill is None else roles[decision.prefill]


def test_a_tiers_non_cached_tokens_change_the_pickers_prefill_decision(
    namespace, api, control_plane, operator_factory
):
    ns = namespace("op-pd-threshold")
    operator_factory(ns)
    spec = samples.disaggregated_spec()
    spec["disaggregation"]["nonCachedTokens"] = 4096
    _apply_pool_and_tier(api, ns, spec=spec)
    _ready_tier(api, ns)
    assert _pd_decision(api, ns, prompt_tokens=3000) is None  # 3,000 uncached <= 4,096: prefilled locally

    api.merge_patch(
        oc.TIER_API, names.MODEL_TIER_KIND, ns, TIER, {"spec": {"disaggregation": {"nonCachedTokens": 1024}}}
    )
    assert oc.wait_for(
        "the picker's config to disaggregate 3,000 uncached tokens",
        lambda: _pd_decision(api, ns, prompt_tokens=3000) == names.ROLE_PREFILL,
    )


def test_roles_a_tier_no_longer_has_leave_its_status(namespace, api, control_plane, operator_factory):
    ns = namespace("op-roles")
    operator_factory(ns)
    _apply_pool_and_tier(api, ns)
    assert set(_ready_tier(api, ns)["status"]["roles"]) == {names.ROLE_PREFILL, names.ROLE_DECODE}
    aggregated = {
        "disaggregation": {"enabled": False},
        "prefill": None,
        "decode": None,
        "serving": {"replicas": 1, "accelerator": {"type": samples.H100}},
    }
    api.merge_patch(oc.TIER_API, names.MODEL_TIER_KIND, ns, TIER, {"spec": aggregated})

    def serving_only():
        tier = _ready_tier(api, ns)
        return tier if set(tier["status"]["roles"]) == {names.ROLE_BOTH} else None

    aggregated_status = oc.wait_for("status with the serving role only", serving_only)["status"]
    assert aggregated_status["readyRoles"] == "1/1"
    assert "split" not in aggregated_status  # no longer disaggregated: the split is removed, not left stale


def test_a_spec_the_api_server_refuses_at_apply_shows_its_message_on_the_tier(
    namespace, api, control_plane, operator_factory
):
    ns = namespace("op-refused")
    operator_factory(ns)
    spec = samples.disaggregated_spec()
    spec["engine"]["env"] = [{"name": "BAD=NAME", "value": "x"}]  # passes the CRD; a Pod refuses "="
    _apply_pool_and_tier(api, ns, spec=spec)

    def refused():
        cond = oc.condition(api.get(oc.TIER_API, names.MODEL_TIER_KIND, ns, TIER), modeltier.CONFIG_VALID)
        return cond if cond and cond["status"] == "False" else None

    cond = oc.wait_for("ConfigValid=False from the apply", refused)
    assert cond["reason"] == "ApplyRefused"
    assert "Deployment/" in cond["message"] and "env" in cond["message"]  # the API server's own words
    ready = oc.condition(api.get(oc.TIER_API, names.MODEL_TIER_KIND, ns, TIER), modeltier.READY)
    assert ready is not None and ready["status"] == "False"
    posted = oc.wait_for("the ApplyRefused Event", lambda: _tier_events(api, ns))
    assert [(e["type"], e["reason"]) for e in posted] == [("Warning", "ApplyRefused")]
    assert posted[0]["message"] == cond["message"]


def test_a_tier_filling_its_gpu_pool_rolls_out_and_has_a_disruption_budget_per_role(
    namespace, api, control_plane, operator_factory
):
    """One pod takes every GPU of the one-node H200 pool: a rollout that starts a surge pod first would wait
    for GPUs forever; the tier's rollout replaces the pod in place instead."""
    ns = namespace("op-full-pool")
    operator_factory(ns)
    spec = {
        "poolRef": {"name": "chat"},
        "model": {"source": "meta-llama/Llama-3.1-70B-Instruct", "servedName": "llama-70b"},
        "serving": {
            "replicas": 1,
            "parallelism": {"tensor": 8},
            "accelerator": {"type": "nvidia-h200-141gb"},
        },
    }
    _apply_pool_and_tier(api, ns, spec)
    tier = _ready_tier(api, ns)

    budget = api.get("policy/v1", "PodDisruptionBudget", ns, f"{TIER}-serving")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["metadata"]["ownerReferences"][0]["uid"] == tier["metadata"]["uid"]
    oc.wait_for(
        "the budget to allow evicting the one pod",
        lambda: (
            (api.get("policy/v1", "PodDisruptionBudget", ns, f"{TIER}-serving").get("status") or {}).get(
                "disruptionsAllowed"
            )
            == 1
        ),
    )

    def rolled_out(old_hash):
        def check():
            tier = _ready_tier(api, ns)
            dep = _deployment(api, ns, "serving")
            pods = api.list("v1", "Pod", ns, label_selector=f"{names.TIER_LABEL}={TIER}")
            return (
                tier["status"]["renderedArgsHash"] != old_hash
                and dep["status"].get("replicas") == 1
                and (len(pods) == 1)
            )

        return check

    for change in (
        {"engine": {"maxModelLen": 4096}},  # the default rollout: no surge, one pod at a time
        {"engine": {"maxModelLen": 2048}, "rollout": {"strategy": "Recreate"}},
    ):
        old_hash = _ready_tier(api, ns)["status"]["renderedArgsHash"]
        api.merge_patch(oc.TIER_API, names.MODEL_TIER_KIND, ns, TIER, {"spec": change})
        oc.wait_for(f"rollout of {change} on the full pool", rolled_out(old_hash), timeout_s=60)
    assert _deployment(api, ns, "serving")["spec"]["strategy"] == {"type": "Recreate"}

    api.delete(oc.TIER_API, names.MODEL_TIER_KIND, ns, TIER)
    oc.wait_for(
        "budget garbage collected",
        lambda: api.get("policy/v1", "PodDisruptionBudget", ns, f"{TIER}-serving") is None,
    )


# The settings the operator subprocess runs with (`oc.Operator`), for passes run in the test itself.
SUBPROCESS_SETTINGS = settings.Settings(
    engine_image="frontier:test", engine_command=("frontier-sim", "serve")
)


def _tier_events(api, ns, tier=TIER):
    return [e for e in api.list("v1", "Event", ns) if e["involvedObject"]["name"] == tier]


async def test_hand_edits_of_children_are_reverted_and_logged(
    namespace, api, control_plane, operator_factory, caplog
):
    ns = namespace("op-drift")
    op = operator_factory(ns)
    _apply_pool_and_tier(api, ns)
    _ready_tier(api, ns)
    desired = _deployment(api, ns, "decode")["spec"]["template"]["spec"]
    edited = _deployment(api, ns, "decode")["spec"]["template"]["spec"]
    engine = edited["containers"][0]
    engine["image"] = "vllm/vllm-openai:by-hand"
    engine["args"] = [*engine["args"], "--enforce-eager"]
    engine["resources"]["limits"][names.GPU_RESOURCE] = "1"
    engine["resources"]["requests"][names.GPU_RESOURCE] = "1"
    edited["tolerations"] = [*edited["tolerations"], {"key": "spot", "operator": "Exists"}]
    api.merge_patch(
        "apps/v1",
        "Deployment",
        ns,
        f"{TIER}-decode",
        {
            "spec": {
                "template": {
                    "spec": {"containers": edited["containers"], "tolerations": edited["tolerations"]}
                }
            }
        },
    )

    def reverted():
        now = _deployment(api, ns, "decode")["spec"]["template"]["spec"]
        return now["containers"] == desired["containers"] and now["tolerations"] == desired["tolerations"]

    # The running operator sees the Deployment's new generation and repairs it at once.
    oc.wait_for("the decode Deployment reverted", reverted, timeout_s=30)
    line = next(line for line in op.log().splitlines() if "event=drift_repaired kind=Deployment" in line)
    for field in ("containers[0].image", "containers[0].args", "tolerations", names.GPU_RESOURCE):
        assert field in line, line

    # The picker's ConfigMap is not watched: the periodic resync repairs it.
    config = api.get("v1", "ConfigMap", ns, "chat-picker-config")
    api.merge_patch("v1", "ConfigMap", ns, "chat-picker-config", {"data": {"config.yaml": "plugins: []\n"}})
    client = kube.Kube(control_plane.api_client(), field_manager="frontier-operator")
    reconciler = reconcile.Reconciler(client, SUBPROCESS_SETTINGS)
    caplog.set_level("INFO", logger="frontier_operator")
    assert await handlers.resync_once(reconciler, [ns]) == []
    assert api.get("v1", "ConfigMap", ns, "chat-picker-config")["data"] == config["data"]
    assert "event=drift_repaired kind=ConfigMap" in caplog.text and "fields=data.config.yaml" in caplog.text
    # Repaired and rolled out again (the revert is a new pod template), a resync writes nothing: the status
    # may still move while the rollout runs, so settle first.
    _ready_tier(api, ns)
    assert await handlers.resync_once(reconciler, [ns]) == []
    writes = client.writes
    assert await handlers.resync_once(reconciler, [ns]) == []
    assert client.writes == writes


PICKER_KINDS = (
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("v1", "ServiceAccount"),
)


def _create_tier(api, ns, name, pool_name):
    obj = samples.tier(name, ns, spec=samples.disaggregated_spec(pool_name))
    obj["spec"]["prefill"]["replicas"] = obj["spec"]["decode"]["replicas"] = 1
    del obj["metadata"]["uid"], obj["metadata"]["generation"]
    return api.create(obj)


def _config_valid(api, ns, name):
    return oc.condition(api.get(oc.TIER_API, names.MODEL_TIER_KIND, ns, name), modeltier.CONFIG_VALID)


async def test_a_picker_name_the_operator_did_not_create_is_never_adopted(namespace, api, control_plane):
    ns = namespace("op-taken")
    reconciler = reconcile.Reconciler(
        kube.Kube(control_plane.api_client(), field_manager="frontier-operator"), SUBPROCESS_SETTINGS
    )
    # An existing GIE EPP Service under the name pool `gie` points at.
    epp = api.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "gie-picker",
                "namespace": ns,
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
            },
            "spec": {"selector": {"app": "gie-epp"}, "ports": [{"port": 9002}]},
        }
    )
    api.create(samples.pool("gie", ns))
    _create_tier(api, ns, "on-gie", "gie")
    await reconciler.tier(ns, "on-gie")
    cond = _config_valid(api, ns, "on-gie")
    assert (cond["status"], cond["reason"]) == ("False", "PickerNameTaken")
    assert f"Service {ns}/gie-picker exists and is managed by 'Helm'" in cond["message"]
    after = api.get("v1", "Service", ns, "gie-picker")
    assert after["metadata"]["resourceVersion"] == epp["metadata"]["resourceVersion"]
    assert api.get("v1", "ServiceAccount", ns, "gie-picker") is None  # nothing of the picker was written

    # Two pools naming one picker: the second pool's tier may not take over (and re-own) the first's.
    api.create(samples.pool("chat", ns))
    api.create(samples.pool("chat2", ns) | {"spec": samples.pool("chat", ns)["spec"]})
    first = _create_tier(api, ns, "first", "chat")
    _create_tier(api, ns, "second", "chat2")
    await reconciler.tier(ns, "first")
    await reconciler.tier(ns, "second")
    cond = _config_valid(api, ns, "second")
    assert (cond["status"], cond["reason"]) == ("False", "PickerNameTaken")
    assert f"InferencePool {ns}/chat2 (spec.endpointPickerRef.name 'chat-picker')" in cond["message"]
    assert "belongs to the endpoint picker of InferencePool chat;" in cond["message"]
    account = api.get("v1", "ServiceAccount", ns, "chat-picker")
    assert [ref["uid"] for ref in account["metadata"]["ownerReferences"]] == [first["metadata"]["uid"]]

    # One Warning Event per transition, none per resync pass.
    await handlers.resync_once(reconciler, [ns])
    await handlers.resync_once(reconciler, [ns])
    for tier in ("on-gie", "second"):
        posted = _tier_events(api, ns, tier)
        assert [(e["type"], e["reason"]) for e in posted] == [("Warning", "PickerNameTaken")], posted
    assert _tier_events(api, ns, "first") == []


async def test_the_picker_of_a_pool_its_tiers_left_is_collected(namespace, api, control_plane):
    ns = namespace("op-moved")
    reconciler = reconcile.Reconciler(
        kube.Kube(control_plane.api_client(), field_manager="frontier-operator"), SUBPROCESS_SETTINGS
    )
    for pool_name in ("chat", "chat2"):
        api.create(samples.pool(pool_name, ns))
    staying = _create_tier(api, ns, "staying", "chat")
    _create_tier(api, ns, "moving", "chat")
    for name in ("staying", "moving"):
        await reconciler.tier(ns, name)
    owners = api.get("v1", "ServiceAccount", ns, "chat-picker")["metadata"]["ownerReferences"]
    assert len(owners) == 2

    # One of two tiers leaves: the picker stays, owned by the tier that stays.
    api.merge_patch(
        oc.TIER_API, names.MODEL_TIER_KIND, ns, "moving", {"spec": {"poolRef": {"name": "chat2"}}}
    )
    await reconciler.tier(ns, "moving")
    assert api.get("apps/v1", "Deployment", ns, "chat2-picker") is not None
    for api_version, kind in PICKER_KINDS:
        name = "chat-picker-config" if kind == "ConfigMap" else "chat-picker"
        found = api.get(api_version, kind, ns, name)
        assert [ref["uid"] for ref in found["metadata"]["ownerReferences"]] == [staying["metadata"]["uid"]]

    # The last tier leaves: every picker object of the pool goes.
    api.merge_patch(
        oc.TIER_API, names.MODEL_TIER_KIND, ns, "staying", {"spec": {"poolRef": {"name": "chat2"}}}
    )
    outcome = await reconciler.tier(ns, "staying")
    assert outcome is not None and "Service/chat-picker" in outcome.deleted
    for api_version, kind in PICKER_KINDS:
        name = "chat-picker-config" if kind == "ConfigMap" else "chat-picker"
        assert api.get(api_version, kind, ns, name) is None, kind
    assert len(api.get("v1", "ServiceAccount", ns, "chat2-picker")["metadata"]["ownerReferences"]) == 2


def _tier_condition(api, ns, type_, *, status, reason):
    def check():
        cond = oc.condition(api.get(oc.TIER_API, names.MODEL_TIER_KIND, ns, TIER), type_)
        return cond if cond and cond["status"] == status and cond["reason"] == reason else None

    return check


def test_an_unschedulable_gpu_shape_shows_the_schedulers_reason(
    namespace, api, control_plane, operator_factory
):
    """Two pods of 8 GPUs on the one-node H200 pool: the second cannot be placed, and the tier says why in
    the scheduler's words at once (not "RollingOut" until the Deployment's 10-minute progress deadline)."""
    ns = namespace("op-unschedulable")
    operator_factory(ns)
    spec = {
        "poolRef": {"name": "chat"},
        "model": {"source": "meta-llama/Llama-3.1-70B-Instruct", "servedName": "llama-70b"},
        "serving": {
            "replicas": 2,
            "parallelism": {"tensor": 8},
            "accelerator": {"type": "nvidia-h200-141gb"},
        },
    }
    _apply_pool_and_tier(api, ns, spec)
    progressing = oc.wait_for(
        "Progressing=False reason Unschedulable",
        _tier_condition(api, ns, modeltier.PROGRESSING, status="False", reason="Unschedulable"),
        timeout_s=60,
    )
    assert progressing["message"].startswith(f"{names.ROLE_BOTH}: 0/")
    assert f"Insufficient {names.GPU_RESOURCE}" in progressing["message"]
    ready = oc.condition(api.get(oc.TIER_API, names.MODEL_TIER_KIND, ns, TIER), modeltier.READY)
    assert ready["status"] == "False" and ready["reason"] == "Unschedulable"

    api.merge_patch(oc.TIER_API, names.MODEL_TIER_KIND, ns, TIER, {"spec": {"serving": {"replicas": 1}}})
    tier = _ready_tier(api, ns)
    assert oc.condition(tier, modeltier.PROGRESSING)["reason"] == "Settled"


def test_a_tier_is_ready_only_while_its_pools_picker_is_available(
    namespace, api, control_plane, operator_factory
):
    """Ready replicas behind a picker that cannot run serve nothing: the picker has no GPU toleration, so
    with the one CPU node cordoned it stays pending and the tier is `1/1` but not Ready (Routable=False)."""
    ns = namespace("op-routable")
    operator_factory(ns)
    spec = {
        "poolRef": {"name": "chat"},
        "model": {"source": "meta-llama/Llama-3.1-8B-Instruct", "servedName": "llama-8b"},
        "serving": {"replicas": 1, "accelerator": {"type": samples.H100}},
    }
    cpu_nodes = [
        n["metadata"]["name"]
        for n in api.list("v1", "Node", "")
        if names.GKE_ACCELERATOR_LABEL not in (n["metadata"].get("labels") or {})
    ]

    def cordon(flag):
        for node in cpu_nodes:
            api.merge_patch("v1", "Node", "", node, {"spec": {"unschedulable": flag}})

    cordon(True)
    try:
        _apply_pool_and_tier(api, ns, spec)
        ready = oc.wait_for(
            "Ready=False reason PickerUnavailable",
            _tier_condition(api, ns, modeltier.READY, status="False", reason="PickerUnavailable"),
            timeout_s=60,
        )
        assert ready["message"] == "endpoint picker chat-picker: 0 of 1 replica(s) available"
        tier = api.get(oc.TIER_API, names.MODEL_TIER_KIND, ns, TIER)
        assert tier["status"]["readyRoles"] == "1/1"
        assert oc.condition(tier, modeltier.ROUTABLE)["status"] == "False"
    finally:
        cordon(False)
    tier = _ready_tier(api, ns)
    assert oc.condition(tier, modeltier.ROUTABLE)["reason"] == "PickerAvailable"


def test_a_cpu_only_tier_is_admitted_and_runs_on_a_cpu_node(namespace, api, control_plane, operator_factory):
    """`accelerator.countPerPod: 0` (once refused by the CEL rule tying the count to the parallelism): no GPU
    is requested and no GPU toleration added, so the pod lands on the CPU pool."""
    ns = namespace("op-cpu-only")
    operator_factory(ns)
    spec = {
        "poolRef": {"name": "chat"},
        "model": {"source": "Qwen/Qwen2.5-0.5B-Instruct", "servedName": "qwen-0.5b"},
        "serving": {"accelerator": {"countPerPod": 0}, "resources": {"requests": {"cpu": "1"}}},
    }
    _apply_pool_and_tier(api, ns, spec)
    _ready_tier(api, ns)
    (pod,) = api.list("v1", "Pod", ns, label_selector=f"{names.TIER_LABEL}={TIER}")
    node = api.get("v1", "Node", "", pod["spec"]["nodeName"])
    assert names.GKE_ACCELERATOR_LABEL not in node["metadata"]["labels"]
    assert names.GPU_RESOURCE not in str(pod["spec"]["containers"][0]["resources"])


def test_an_sglang_tier_runs_like_a_vllm_one_and_an_unmappable_field_is_refused_by_name(
    namespace, api, control_plane, operator_factory
):
    ns = namespace("op-sglang")
    operator_factory(ns)
    spec = {
        "poolRef": {"name": "chat"},
        "model": {"source": "meta-llama/Llama-3.1-8B-Instruct", "servedName": "llama-3.1-8b"},
        "engine": {"type": "sglang", "maxModelLen": 8192, "quantization": "fp8"},
        "serving": {"replicas": 2, "parallelism": {"tensor": 2}, "accelerator": {"type": samples.H100}},
    }
    _apply_pool_and_tier(api, ns, spec)
    tier = _ready_tier(api, ns)
    assert tier["status"]["roles"][names.ROLE_BOTH]["ready"] == 2
    assert oc.condition(tier, modeltier.CONFIG_VALID)["status"] == "True"
    dep = _deployment(api, ns, "serving")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert (container["image"], container["command"]) == ("frontier:test", ["frontier-sim", "sglang"])
    args = _engine_args(dep)
    assert args[:2] == ["--model-path", "meta-llama/Llama-3.1-8B-Instruct"]
    assert args[args.index("--context-length") + 1] == "8192" and "--tp-size" in args
    pods = api.list("v1", "Pod", ns, label_selector=f"{names.ENGINE_TYPE_LABEL}=sglang")
    assert len(pods) == 2

    api.merge_patch(
        oc.TIER_API,
        names.MODEL_TIER_KIND,
        ns,
        TIER,
        {"spec": {"engine": {"speculative": {"method": "ngram", "numSpeculativeTokens": 4}}}},
    )

    def invalid():
        cond = oc.condition(api.get(oc.TIER_API, names.MODEL_TIER_KIND, ns, TIER), modeltier.CONFIG_VALID)
        return cond if cond and cond["status"] == "False" else None

    cond = oc.wait_for("ConfigValid=False", invalid)
    assert cond["reason"] == "EngineUnsupported" and "spec.engine.speculative" in cond["message"]
    assert _engine_args(_deployment(api, ns, "serving")) == args  # the running role is left as it was
