"""Upgrading the ModelTier CRD of a Helm install: Helm installs a chart's `crds/` once and never upgrades
them, so the chart documents one step for every upgrade,

    kubectl apply --server-side --field-manager=frontier-crds --force-conflicts -f crds/

run before `helm upgrade`. Tested with real helm and kubectl on the local control plane: Helm installs the old
CRD and a tier is created; `helm upgrade` to a chart carrying the new CRD leaves the old one (the reason for
the step); the step applies the new CRD, the tier still reads, the new field is kept, and a later
`helm upgrade` leaves the CRD as the step wrote it.

The CRD under test is a copy of the generated one in a group of its own, so the session's ModelTier CRD (which
other tests use) is never replaced."""

import copy
import shutil
import subprocess

import operator_cluster as oc
import operator_samples as samples
import pytest
import yaml
from test_operator_chart import helm  # noqa: F401  (fixture)

from frontier_api import names
from frontier_testkit import controlplane

pytestmark = pytest.mark.cluster

GROUP = "crd-upgrade.frontier.dev"
CRD_NAME = f"{names.MODEL_TIER_PLURAL}.{GROUP}"
API = f"{GROUP}/{names.FRONTIER_VERSION}"
# The field the "new" CRD adds over the "old" one: removed from the generated schema to make the old CRD.
NEW_FIELD = "tokenSecretRef"
FIELD_MANAGER = "frontier-crds"


def _crd(*, old: bool) -> dict:
    crd = copy.deepcopy(yaml.safe_load(oc.CRD.read_text()))
    crd["metadata"]["name"] = CRD_NAME
    crd["spec"]["group"] = GROUP
    if old:
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        del spec["properties"]["model"]["properties"][NEW_FIELD]
        spec["x-kubernetes-validations"] = [
            rule for rule in spec["x-kubernetes-validations"] if NEW_FIELD not in rule["rule"]
        ]
    return crd


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(command)}: {done.stderr}"


def _kubectl() -> str:
    built = controlplane.default_cache_dir() / "bin" / "kubectl"
    if built.is_file():
        return str(built)
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl not found; run `make testbin`")
    return found


def test_the_documented_crd_upgrade_step_upgrades_a_helm_installed_crd(
    helm,  # noqa: F811
    control_plane,
    tmp_path,
):
    api = oc.Api(control_plane.api_client())
    kubeconfig = str(control_plane.kubeconfig)
    ns = control_plane.namespace("op-crd-upgrade")
    chart = tmp_path / "chart"
    (chart / "crds").mkdir(parents=True)
    (chart / "templates").mkdir()
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: crd-upgrade\nversion: 0.1.0\n")
    (chart / "templates" / "marker.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: crd-upgrade-marker\n"
    )
    (chart / "crds" / "modeltier.yaml").write_text(yaml.safe_dump(_crd(old=True)))

    def helm_run(verb):
        _run(str(helm), verb, "crd-upgrade", str(chart), "--kubeconfig", kubeconfig, "-n", ns, "--wait")

    def crd_fields():
        crd = api.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "", CRD_NAME)
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        return set(spec["properties"]["model"]["properties"]), crd

    def established():
        crd = api.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "", CRD_NAME)
        conds = (crd or {}).get("status", {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

    helm_run("install")
    try:
        oc.wait_for("the old CRD established", established)
        assert NEW_FIELD not in crd_fields()[0]
        tier = samples.tier("upgraded", ns)
        tier["apiVersion"] = API
        del tier["metadata"]["uid"], tier["metadata"]["generation"]
        tier["spec"]["model"][NEW_FIELD] = {"name": "hf-token"}
        api.resource(API, names.MODEL_TIER_KIND)  # discovery of the new group
        created = oc.wait_for("the tier created", lambda: _create(api, tier))
        assert NEW_FIELD not in created["spec"]["model"]  # the old CRD prunes what it does not know

        # The next chart version carries the new CRD; `helm upgrade` alone leaves the old one in place.
        (chart / "crds" / "modeltier.yaml").write_text(yaml.safe_dump(_crd(old=False)))
        (chart / "Chart.yaml").write_text("apiVersion: v2\nname: crd-upgrade\nversion: 0.2.0\n")
        helm_run("upgrade")
        assert NEW_FIELD not in crd_fields()[0]

        _run(
            _kubectl(),
            "--kubeconfig",
            kubeconfig,
            "apply",
            "--server-side",
            f"--field-manager={FIELD_MANAGER}",
            "--force-conflicts",
            "-f",
            str(chart / "crds"),
        )
        fields, crd = crd_fields()
        assert NEW_FIELD in fields
        managers = {(m["manager"], m["operation"]) for m in crd["metadata"]["managedFields"]}
        assert (FIELD_MANAGER, "Apply") in managers

        def token_ref():
            return api.get(API, names.MODEL_TIER_KIND, ns, "upgraded")["spec"]["model"].get(NEW_FIELD)

        kept = api.get(API, names.MODEL_TIER_KIND, ns, "upgraded")
        assert kept["spec"]["model"]["servedName"] == "llama-3.1-8b"
        patch = {"spec": {"model": {NEW_FIELD: {"name": "hf-token"}}}}
        api.merge_patch(API, names.MODEL_TIER_KIND, ns, "upgraded", patch)
        assert token_ref() == {"name": "hf-token", "key": "token"}  # kept, and defaulted by the new schema

        helm_run("upgrade")  # Helm skips crds/ on upgrade: nothing fights the step back
        assert NEW_FIELD in crd_fields()[0]
        assert token_ref() == {"name": "hf-token", "key": "token"}
    finally:
        subprocess.run(
            [str(helm), "uninstall", "crd-upgrade", "--kubeconfig", kubeconfig, "-n", ns], capture_output=True
        )
        api.delete("apiextensions.k8s.io/v1", "CustomResourceDefinition", "", CRD_NAME)
        oc.delete_namespace(api, ns)


def _create(api, obj):
    """Creates `obj`, or None while the API server does not serve its new kind yet."""
    try:
        return api.create(copy.deepcopy(obj))
    except Exception:  # the group's discovery lags the CRD's Established condition by a moment
        api.dyn.resources.invalidate_cache()
        return None
