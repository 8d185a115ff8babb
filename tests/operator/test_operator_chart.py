"""The Helm chart: lint, what it renders, and a server-side dry-run apply on the local control plane."""

import asyncio
import json
import os
import pathlib
import re
import shutil
import subprocess

import operator_cluster as oc
import operator_samples as samples
import pytest
import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.dynamic import exceptions

from frontier_api import modeltier, names
from frontier_operator import settings
from frontier_testkit import controlplane

CHART = oc.REPO / "charts" / "frontier"


@pytest.fixture(scope="module")
def helm() -> pathlib.Path:
    for candidate in (controlplane.default_cache_dir() / "bin" / "helm", oc.REPO / ".cache" / "bin" / "helm"):
        if candidate.is_file():
            return candidate
    found = shutil.which("helm")
    if found:
        return pathlib.Path(found)
    if os.environ.get("CI"):
        pytest.fail("CI is set and helm is missing (make testbin)")
    pytest.skip("helm not built; run `make testbin`")


def _template(helm, *args: str) -> list[dict]:
    out = subprocess.run(
        [str(helm), "template", "frontier", str(CHART), *args], check=True, capture_output=True, text=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _kinds(docs):
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_chart_lints_strictly(helm):
    result = subprocess.run([str(helm), "lint", "--strict", str(CHART)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_operator_runs_non_root_read_only_with_resources(helm):
    docs = _kinds(_template(helm, "--namespace", "frontier-system"))
    pod = docs[("Deployment", "frontier")]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    assert container["command"] == ["frontier-operator"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["FRONTIER_ENGINE_COMMAND"] == "vllm serve"
    assert env["FRONTIER_SGLANG_COMMAND"] == "python3 -m sglang.launch_server"
    assert ("ServiceMonitor", "frontier") not in docs


def test_the_accelerator_label_is_the_operators_setting(helm):
    def env(*args):
        docs = _kinds(_template(helm, *args))
        container = docs[("Deployment", "frontier")]["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e["value"] for e in container["env"]}["FRONTIER_ACCELERATOR_LABEL"]

    assert env() == names.GKE_ACCELERATOR_LABEL
    assert env("--set", "acceleratorLabel=nvidia.com/gpu.product") == "nvidia.com/gpu.product"


def test_standalone_pickers_and_their_envoy_image_are_chart_values_the_operator_reads(helm):
    def cfg(*args):
        docs = _kinds(_template(helm, *args))
        container = docs[("Deployment", "frontier")]["spec"]["template"]["spec"]["containers"][0]
        return settings.from_env({e["name"]: e["value"] for e in container["env"]})

    default = cfg()
    assert default.picker_standalone is False
    assert (default.envoy_image, default.envoy_command) == (settings.DEFAULT_ENVOY_IMAGE, ("envoy",))
    chosen = cfg(
        "--set",
        "picker.standalone.enabled=true",
        "--set",
        "picker.standalone.envoyImage=mirror.local/envoy:v1.40.0",
    )
    assert (chosen.picker_standalone, chosen.envoy_image) == (True, "mirror.local/envoy:v1.40.0")


WRITABLE = {
    "modeltiers/status",
    "deployments",
    "poddisruptionbudgets",
    "horizontalpodautoscalers",
    "services",
    "configmaps",
    "serviceaccounts",
    "roles",
    "rolebindings",
}


def _writable(role):
    return {r for rule in role["rules"] if "patch" in rule["verbs"] for r in rule["resources"]}


def _deletable(role):
    return {r for rule in role["rules"] if "delete" in rule["verbs"] for r in rule["resources"]}


def test_rbac_is_limited_to_the_kinds_the_operator_manages(helm):
    role = _kinds(_template(helm))[("ClusterRole", "frontier")]
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
    assert _writable(role) == WRITABLE
    # Stale tier children, and the picker of a pool whose tiers all left it, are deleted.
    assert _deletable(role) == WRITABLE - {"modeltiers/status"}
    assert not any("secrets" in rule["resources"] for rule in role["rules"])


def test_with_watched_namespaces_the_operator_writes_only_there(helm):
    docs = _template(helm, "--namespace", "frontier-system", "--set", "watchNamespaces={team-a,team-b}")
    cluster_role = _kinds(docs)[("ClusterRole", "frontier")]
    # Cluster-wide: reads, and kopf's events; no path to creating workloads or RBAC objects elsewhere.
    for rule in cluster_role["rules"]:
        assert set(rule["verbs"]) <= {"get", "list", "watch"} or rule["resources"] == ["events"], rule
    roles = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "Role"}
    bindings = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "RoleBinding"}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    for namespace, role in roles.items():
        assert _writable(role) == WRITABLE
        assert bindings[namespace]["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "frontier",
        }
        assert bindings[namespace]["subjects"] == [
            {"kind": "ServiceAccount", "name": "frontier", "namespace": "frontier-system"}
        ]
    # kopf's patterns cannot be granted a Role: the values schema takes exact names only.
    result = subprocess.run(
        [str(helm), "template", "frontier", str(CHART), "--set", "watchNamespaces={team-*}"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "watchNamespaces" in result.stderr, result.stderr


def test_service_monitor_is_optional(helm):
    docs = _kinds(_template(helm, "--set", "metrics.serviceMonitor.enabled=true"))
    monitor = docs[("ServiceMonitor", "frontier")]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_values_schema_rejects_unknown_and_mistyped_values(helm):
    for bad in ("bogus=1", "picker.replicas=zero"):
        result = subprocess.run(
            [str(helm), "template", "frontier", str(CHART), "--set", bad], capture_output=True, text=True
        )
        assert result.returncode != 0, bad
        assert "schema" in result.stderr.lower(), result.stderr


def test_chart_carries_the_generated_crd(helm):
    docs = _kinds(_template(helm, "--include-crds"))
    crd = docs[("CustomResourceDefinition", "modeltiers.inference.frontier.dev")]
    assert crd == yaml.safe_load((oc.REPO / "crds" / "modeltier.yaml").read_text())


@pytest.mark.cluster
def test_rendered_chart_passes_server_side_dry_run_apply(helm, control_plane):
    api = oc.Api(control_plane.api_client())
    ns = control_plane.namespace("op-chart")
    watched = [control_plane.namespace("op-a"), control_plane.namespace("op-b")]
    docs = _template(
        helm, "--include-crds", "--namespace", ns, "--set", f"watchNamespaces={{{','.join(watched)}}}"
    )
    applied = []
    for doc in docs:
        res = api.resource(doc["apiVersion"], doc["kind"])
        api.dyn.server_side_apply(
            res,
            body=doc,
            namespace=doc["metadata"].get("namespace", ns) if res.namespaced else None,
            field_manager="helm-dry-run",
            dry_run="All",
        )
        applied.append(doc["kind"])
    assert sorted(applied) == sorted(
        [
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "Role",
            "RoleBinding",
            "RoleBinding",
            "Deployment",
            "Service",
        ]
    )


def controlplane_client(kubeconfig: pathlib.Path) -> k8s_client.ApiClient:
    """An API client for a kubeconfig file."""
    configuration = k8s_client.Configuration()
    k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return k8s_client.ApiClient(configuration)


def _token_kubeconfig(control_plane, core, service_account, namespace, path):
    """A kubeconfig that authenticates as `namespace/service_account`."""
    token = core.create_namespaced_service_account_token(
        service_account, namespace, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    controlplane.write_kubeconfig(
        path, server=control_plane.server, ca_file=control_plane.workdir / "pki" / "ca.crt", token=token
    )
    return path


@pytest.mark.cluster
async def test_operator_works_with_exactly_the_charts_rbac(helm, control_plane, tmp_path, caplog):
    """Runs the operator as the chart's ServiceAccount, bound as the chart binds it when watching one
    namespace, and serves a tier: a permission the chart forgets shows up as a failed reconcile here. The
    same account may not create workloads or RBAC objects in a namespace it does not watch, and the
    picker, as its own ServiceAccount, discovers its endpoints with exactly the Role the operator gave it."""
    from frontier_picker import datastore, pool_discovery

    control_plane.apply_crds([oc.CRD])
    api = oc.Api(control_plane.api_client())
    system = control_plane.namespace("op-rbac-system")
    ns = control_plane.namespace("op-rbac")
    other = control_plane.namespace("op-rbac-other")
    release = f"rbac-{ns[-6:]}"
    docs = subprocess.run(
        [str(helm), "template", release, str(CHART), "--namespace", system,
         "--set", f"watchNamespaces={{{ns}}}",
         "--show-only", "templates/rbac.yaml", "--show-only", "templates/serviceaccount.yaml"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    service_account = ""
    for doc in yaml.safe_load_all(docs):
        if doc:
            api.create(
                doc | {"metadata": {**doc["metadata"], "namespace": system}}
                if doc["kind"] == "ServiceAccount"
                else doc
            )
            if doc["kind"] == "ServiceAccount":
                service_account = doc["metadata"]["name"]
    core = k8s_client.CoreV1Api(control_plane.api_client())
    kubeconfig = _token_kubeconfig(
        control_plane, core, service_account, system, tmp_path / "operator-kubeconfig"
    )
    op = oc.Operator(kubeconfig=kubeconfig, namespace=ns, log_path=tmp_path / "operator.log")
    try:
        api.create(samples.pool(namespace=ns) | {"metadata": {"name": "chat", "namespace": ns}})
        obj = samples.tier("llama-fast", ns)
        del obj["metadata"]["uid"], obj["metadata"]["generation"]
        api.create(obj)

        def ready():
            tier = api.get(oc.TIER_API, names.MODEL_TIER_KIND, ns, "llama-fast")
            cond = oc.condition(tier, modeltier.READY)
            return cond is not None and cond["status"] == "True"

        oc.wait_for("Ready=True under the chart's RBAC", ready, timeout_s=90)
        assert api.get("rbac.authorization.k8s.io/v1", "Role", ns, "chat-picker") is not None
        assert api.get("policy/v1", "PodDisruptionBudget", ns, "llama-fast-decode") is not None
        # A 403 body always says "forbidden"; a bare "403" also matches log timestamps (",403").
        assert "forbidden" not in op.log().lower(), op.log()[-3000:]

        as_operator = oc.Api(controlplane_client(kubeconfig))
        elsewhere = [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "x", "namespace": other}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": {"name": "x", "namespace": other}, "rules": []},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "x", "namespace": other},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
             "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": system}]},
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x", "namespace": other},
             "spec": api.get("apps/v1", "Deployment", ns, "llama-fast-decode")["spec"]},
        ]  # fmt: skip
        for doc in elsewhere:
            with pytest.raises(exceptions.DynamicApiError) as refused:
                as_operator.create(doc)
            assert refused.value.status == 403, doc["kind"]

        picker_kubeconfig = _token_kubeconfig(
            control_plane, core, "chat-picker", ns, tmp_path / "picker-kubeconfig"
        )
        store = datastore.Datastore()
        watching = asyncio.create_task(
            pool_discovery.watch(name="chat", namespace=ns, store=store, kubeconfig=picker_kubeconfig)
        )
        try:
            for _ in range(100):
                if len(store.states()) == 6:  # 2 prefill + 4 decode pods
                    break
                await asyncio.sleep(0.2)
            assert len(store.states()) == 6
        finally:
            watching.cancel()
        assert "watch_failed" not in caplog.text, caplog.text

        # A tier leaving its pool: the operator deletes the pool's picker; an unservable tier gets an Event.
        api.create(samples.pool("chat2", ns))
        mover = samples.tier("mover", ns, spec=samples.disaggregated_spec("chat2"))
        mover["spec"]["prefill"]["replicas"] = mover["spec"]["decode"]["replicas"] = 1
        del mover["metadata"]["uid"], mover["metadata"]["generation"]
        api.create(mover)
        oc.wait_for("the chat2 picker", lambda: api.get("v1", "ServiceAccount", ns, "chat2-picker"))
        api.merge_patch(
            oc.TIER_API, names.MODEL_TIER_KIND, ns, "mover", {"spec": {"poolRef": {"name": "absent"}}}
        )
        oc.wait_for(
            "the PoolNotFound Event",
            lambda: [e for e in api.list("v1", "Event", ns) if e["reason"] == "PoolNotFound"],
        )
        api.merge_patch(
            oc.TIER_API, names.MODEL_TIER_KIND, ns, "mover", {"spec": {"poolRef": {"name": "chat"}}}
        )
        oc.wait_for(
            "the chat2 picker collected", lambda: api.get("v1", "Service", ns, "chat2-picker") is None
        )
        assert "forbidden" not in op.log().lower(), op.log()[-3000:]
    finally:
        op.stop()
        oc.delete_namespace(api, ns)


def _metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (identifiers that are not functions, keywords or labels)."""
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", "", expr)))
    grouping = set(re.findall(r"by \(([^)]*)\)", expr))
    labels = {label.strip() for group in grouping for label in group.split(",")}
    functions = {"sum", "rate", "histogram_quantile", "by", "le"}
    return {word for word in words - functions - labels if "_" in word}


def test_the_dashboard_only_queries_metrics_the_picker_exports(helm):
    from prometheus_client import generate_latest

    from frontier_picker import datastore, director, endpoints, metrics, server
    from frontier_picker.scheduling import config, types

    docs = _kinds(_template(helm, "--set", "dashboard.enabled=true"))
    config_map = docs[("ConfigMap", "frontier-dashboard")]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["frontier-picker.json"])
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    read = set().union(*map(_metric_names, exprs))
    assert {"inference_objective_request_total", "inference_pool_ready_pods"} <= read  # the parse finds names

    # A picker that routed, refused and completed requests exports every family the dashboard reads.
    own = metrics.create()
    store = datastore.Datastore()
    store.replace([endpoints.Endpoint(name="e0", address="127.7.0.1", port=8000)])
    metrics.watch_pool(own, "chat", store.states)
    scheduler = config.load(builtin="gie-default")  # with a prefix index, as the picker serves it
    server.observe_plugins(scheduler, own)
    routed = director.Director(scheduler=scheduler, store=store, metrics=own)
    request = types.Request(request_id="r", model="m", target_model="m", prompt="hello")
    flight = routed.decide(request, now=0.0)
    routed.complete(
        flight,
        types.Completion(
            endpoint="127.7.0.1:8000",
            status=200,
            prompt_tokens=9,
            completion_tokens=4,
            cached_tokens=3,
            ttft_s=0.1,
            duration_s=0.4,
        ),
    )
    own.child(own.errors, "429").inc()
    own.child(own.gie.request_errors, "m", "m", "429").inc()
    own.child(own.tier_decisions, "auto", "m", "classifier", "code").inc()
    own.classification_duration.observe(0.0003)
    exported = generate_latest(own.registry).decode()
    families = {line.split()[2] for line in exported.splitlines() if line.startswith("# TYPE")}
    series = families | {
        f"{name}_{suffix}" for name in families for suffix in ("total", "bucket", "sum", "count")
    }
    for expr in exprs:
        missing = _metric_names(expr) - series
        assert not missing, f"{expr}: {missing} not exported by the picker"
