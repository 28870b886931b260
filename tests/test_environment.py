"""The conda environment and pyproject.toml pin the same stack."""

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_mirrors_pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    conda_python = [d for d in environment["dependencies"] if isinstance(d, str) and d.startswith("python=")]
    assert set(pip_section) - {"-e ."} == pinned
    assert "-e ." in pip_section
    assert conda_python == ["python=3.11"]
    assert project["requires-python"] == ">=3.11,<3.12"


def test_every_dependency_is_pinned_exactly():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
        assert "==" in requirement, f"{requirement} is not pinned"
