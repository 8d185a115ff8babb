"""The import contracts `make lint` runs (`lint-imports`, configured in pyproject.toml) hold for the code as
it is, and fail when a layer imports upward: checked on a copy of the packages with one violation added."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "api": "frontier_api",
    "picker": "frontier_picker",
    "operator": "frontier_operator",
    "sim": "frontier_sim",
    "bench": "frontier_bench",
    "testkit": "frontier_testkit",
}
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    roots = [str(tree / folder) for folder in PACKAGES]
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(roots)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for folder, package in PACKAGES.items():
        shutil.copytree(
            ROOT / folder / package, tmp_path / folder / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return tmp_path


def test_the_contracts_hold_for_the_code_as_it_is(tree: Path):
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "violation", "contract"),
    [
        (
            "picker/frontier_picker/scheduling/framework/cycles.py",
            "from frontier_picker.scheduling.plugins import scorers",
            "the scheduling framework knows no plugin",
        ),
        (
            "operator/frontier_operator/render_picker.py",
            "from frontier_picker.scheduling import config",
            "the operator never imports the picker",
        ),
        ("api/frontier_api/names.py", "import frontier_sim.engine", "api imports nothing of ours"),
        (
            "sim/frontier_sim/engine.py",
            "from frontier_picker import endpoints",
            "only the simulator's virtual-time cluster imports the picker",
        ),
    ],
)
def test_an_upward_import_breaks_its_contract(tree: Path, module: str, violation: str, contract: str):
    path = tree / module
    path.write_text(path.read_text() + f"\n{violation}  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert f"{contract}" in result.stdout and "BROKEN" in result.stdout, result.stdout
