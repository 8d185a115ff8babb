"""The examples a README points users at: every ModelTier in examples/ is valid, and applied to the local
control plane with the operator running they become Deployments and a picker whose tier router knows the
two-tier example's virtual model."""

import os
import pathlib
import subprocess

import operator_cluster as oc
import pytest
import yaml

from frontier_api import modeltier, names
from frontier_testkit import controlplane

EXAMPLES = oc.REPO / "examples"


def _documents(path: pathlib.Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _tiers() -> list[dict]:
    return [
        doc
        for path in sorted(EXAMPLES.glob("*.yaml"))
        for doc in _documents(path)
        if doc["kind"] == names.MODEL_TIER_KIND
    ]


def test_every_example_tier_parses_and_the_set_covers_what_the_readme_promises():
    specs = {tier["metadata"]["name"]: modeltier.parse_spec(tier["spec"]) for tier in _tiers()}
    assert any(spec.disaggregation.enabled for spec in specs.values())
    assert any(spec.engine.quantization is not None for spec in specs.values())
    assert any(spec.engine.speculative is not None for spec in specs.values())
    auto = [name for name, spec in specs.items() if "auto" in spec.tier.virtual_models]
    assert sorted(auto) == ["large", "small"]  # two tiers behind the virtual model
    assert any("/" in spec.model.served_name for spec in specs.values())  # a Hugging Face name
    assert any(spec.model.token_secret_ref is not None for spec in specs.values())  # a gated model


@pytest.mark.cluster
def test_examples_apply_and_the_two_tiers_share_auto(control_plane, tmp_path):
    from frontier_picker.scheduling import config

    control_plane.apply_crds([oc.CRD])
    api = oc.Api(control_plane.api_client())
    ns = control_plane.namespace("op-examples")
    operator = oc.Operator(
        kubeconfig=pathlib.Path(control_plane.kubeconfig), namespace=ns, log_path=tmp_path / "op.log"
    )
    try:
        # As a user would: kubectl (linked into the control plane's binary) applies the folder.
        kubectl = [
            str(controlplane.default_cache_dir() / "bin" / "kubectl"),
            "--kubeconfig",
            control_plane.kubeconfig,
        ]
        subprocess.run([*kubectl, "apply", "-n", ns, "-f", str(EXAMPLES)], check=True, capture_output=True)

        def router():
            found = api.get("v1", "ConfigMap", ns, "chat-picker-config")
            if found is None:
                return None
            loaded = config.load(found["data"]["config.yaml"]).router
            tiers = loaded.virtual_models.get("auto", ()) if loaded is not None else ()
            return {t.model: t for t in tiers} if len(tiers) == 2 else None

        auto = oc.wait_for("auto over the two example tiers", router)
        assert auto["meta-llama/Llama-3.1-8B-Instruct"].fallback
        assert auto["meta-llama/Llama-3.3-70B-Instruct"].relative_cost == 6
        listed = subprocess.run(
            [*kubectl, "get", "modeltiers", "-n", ns], check=True, capture_output=True, text=True
        ).stdout
        assert listed.split("\n")[0].split()[:4] == ["NAME", "POOL", "TIER", "MODEL"]
        assert {line.split()[0] for line in listed.strip().split("\n")[1:]} == {
            t["metadata"]["name"] for t in _tiers()
        }
        for tier in _tiers():
            roles = modeltier.parse_spec(tier["spec"]).roles()
            for role in roles:
                suffix = {"both": "serving"}.get(role, role)
                name = f"{tier['metadata']['name']}-{suffix}"
                oc.wait_for(f"Deployment {name}", lambda n=name: api.get("apps/v1", "Deployment", ns, n))
    finally:
        operator.stop()
        oc.delete_namespace(api, ns)


GATEWAYS = sorted((EXAMPLES / "gateway").glob("*.yaml"))


def test_each_gateway_example_routes_the_pool_through_an_inference_pool_backend():
    assert [path.stem for path in GATEWAYS] == ["envoy-gateway", "gke", "istio", "kgateway"]
    for path in GATEWAYS:
        kinds = {doc["kind"]: doc for doc in _documents(path)}
        (backend,) = kinds["HTTPRoute"]["spec"]["rules"][0]["backendRefs"]
        assert (backend["group"], backend["kind"], backend["name"]) == (
            names.GIE_GROUP,
            "InferencePool",
            "chat",
        )
        assert kinds["HTTPRoute"]["spec"]["parentRefs"][0]["name"] == kinds["Gateway"]["metadata"]["name"]
        for doc in kinds.values():
            target = doc.get("spec", {}).get("targetRef")
            if target is not None:  # vendor policies attach to the pool
                assert (target["kind"], target["name"]) == ("InferencePool", "chat")


@pytest.mark.cluster
def test_gateway_examples_pass_server_side_dry_run_with_the_gateway_api_crds(control_plane):
    """The Gateway API kinds are dry-run against their real CRDs; vendor kinds (GKE's policies, Istio's
    DestinationRule) need their vendors' CRDs, which are not installed here, and are checked above only."""
    crds = controlplane.default_cache_dir() / "gateway-api"
    if not crds.is_dir():
        if os.environ.get("CI"):
            pytest.fail("Gateway API CRDs missing: make testbin copies them")
        pytest.skip("Gateway API CRDs missing: run make testbin")
    kubectl = [
        str(controlplane.default_cache_dir() / "bin" / "kubectl"),
        "--kubeconfig",
        control_plane.kubeconfig,
    ]
    subprocess.run([*kubectl, "apply", "--server-side", "-f", str(crds)], check=True, capture_output=True)
    subprocess.run(
        [*kubectl, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"],
        check=True,
        capture_output=True,
    )
    ns = control_plane.namespace("op-gateways")
    for path in GATEWAYS:
        gateway_api = [
            d for d in _documents(path) if d["apiVersion"].startswith("gateway.networking.k8s.io/")
        ]
        result = subprocess.run(
            [*kubectl, "apply", "-n", ns, "--server-side", "--dry-run=server", "-f", "-"],
            input=yaml.safe_dump_all(gateway_api),
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, f"{path.name}: {result.stderr}"
