"""The image `make image` tags is the image the chart and the operator deploy by default, and its build
context holds every component root. Reads the files (and asks `hack/image.sh tag`, which needs no buildah)."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml

from frontier_operator import settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "frontier"


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def make_image_tag() -> str:
    """What `make image` tags: `hack/image.sh tag` (the script builds with exactly this tag)."""
    done = subprocess.run(
        ["bash", str(ROOT / "hack" / "image.sh"), "tag"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=60,
    )
    return done.stdout.strip()


def test_make_image_tags_the_project_version() -> None:
    assert make_image_tag() == f"ghcr.io/frontier-dev/frontier:{pyproject()['project']['version']}"


def test_the_chart_default_image_is_the_one_make_image_tags() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    tag = values["image"]["tag"] or chart["appVersion"]  # the chart's `frontier.image` helper
    assert f"{values['image']['repository']}:{tag}" == make_image_tag()
    assert chart["appVersion"] == pyproject()["project"]["version"]


def test_the_operator_default_picker_image_is_the_one_make_image_tags() -> None:
    assert make_image_tag() == settings.DEFAULT_PICKER_IMAGE
    assert settings.Settings().picker_image == settings.DEFAULT_PICKER_IMAGE


def test_the_build_context_lets_in_every_component_root() -> None:
    """.dockerignore is a whitelist: a component root missing from it would build a wheel without it."""
    allowed = {
        line.strip()[1:]
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip().startswith("!")
    }
    roots = set(pyproject()["tool"]["setuptools"]["packages"]["find"]["where"])
    assert roots <= allowed, f"add {sorted(roots - allowed)} to .dockerignore"
    assert {"pyproject.toml", "README.md"} <= allowed  # the wheel's metadata reads both
