"""The committed CRDs are exactly what `make crds` generates from the models."""

import pathlib

import yaml

from frontier_api import names
from frontier_operator import crdgen

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_crds_folder_is_not_stale():
    committed = (ROOT / "crds" / crdgen.CRD_FILE).read_text()
    assert committed == crdgen.render_text(), "crds/ is stale: run `make crds`"


def test_chart_crd_is_not_stale():
    committed = (ROOT / crdgen.CHART_CRD_DIR / crdgen.CRD_FILE).read_text()
    assert committed == crdgen.render_text(), "charts/frontier/crds/ is stale: run `make crds`"


def test_crd_has_status_subresource_and_printer_columns():
    crd = yaml.safe_load(crdgen.render_text())
    assert crd["spec"]["group"] == names.FRONTIER_GROUP
    (version,) = crd["spec"]["versions"]
    assert version["name"] == names.FRONTIER_VERSION
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Pool"] == ".spec.poolRef.name"
    assert columns["Tier"] == ".spec.tier.rank"
    assert columns["Ready Roles"] == ".status.readyRoles"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_main_writes_both_copies(tmp_path):
    crdgen.main([str(tmp_path / "crds"), "--chart-crds", str(tmp_path / "chart")])
    assert (tmp_path / "crds" / crdgen.CRD_FILE).read_text() == crdgen.render_text()
    assert (tmp_path / "chart" / crdgen.CRD_FILE).read_text() == crdgen.render_text()
