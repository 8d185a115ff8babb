"""Fixtures shared by every test suite.

`control_plane` is one real local Kubernetes control plane (etcd, kube-apiserver, controller-manager,
scheduler, KWOK; see `frontier_testkit.controlplane`) for the whole test session, with simulated GPU node
pools and the GIE CRDs installed. Tests isolate themselves by namespace (`control_plane.namespace("my-test")`)
and are marked `@pytest.mark.cluster`. Without the binaries (`make testbin`) these tests skip, except under CI
(the `CI` environment variable set), where a missing binary is a failure.
"""

import os
from collections.abc import Iterator

import pytest

from frontier_testkit import controlplane


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[controlplane.ControlPlane]:
    try:
        assets = controlplane.Assets.discover()
    except controlplane.ControlPlaneError as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and the control plane is missing: {error}")
        pytest.skip(str(error))
    with controlplane.ControlPlane(tmp_path_factory.mktemp("controlplane"), assets=assets) as plane:
        yield plane
