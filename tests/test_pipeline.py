"""The DVC pipeline end to end on a tiny grid (smoke scale, 1 dataset x 2 variants x 2 seeds), in a copy.

Checks that `dvc repro` runs every stage through papermill, that a second `dvc repro` finds everything up to
date, and that dependencies are exact: one variant's options re-run only that variant's runs, the statistics
code only `aggregate`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from repro.data.registry import resolve_data_root

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".git", ".venv", "results", "checkpoints", "data/processed", ".dvc/cache", ".dvc/tmp", "dvc.lock"}


def _copy_tree(destination: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for name in files:
        if any(name == skip or name.startswith(skip + "/") for skip in SKIP) or not (ROOT / name).is_file():
            continue
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)


def _run(copy: Path, *args: str) -> subprocess.CompletedProcess:
    """This interpreter on ``args`` in the copy, with its environment's `dvc` and `papermill` first on PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, *args], cwd=copy, env=env, capture_output=True, text=True, timeout=900)


def _dvc(copy: Path, *args: str) -> str:
    result = _run(copy, "-m", "dvc", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _stale(copy: Path) -> set[str]:
    return set(json.loads(_dvc(copy, "status", "--json")))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("pipeline")
    _copy_tree(copy)
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["data_root"] = str(resolve_data_root(params["data_root"]))
    params["scale"] = "smoke"
    params["study"] = {"datasets": ["ph2-dermoscopy"], "models": ["unet", "tinyunet"], "seeds": [0, 1]}
    params["prepare"]["datasets"] = ["ph2-dermoscopy"]
    params["complexity"] = {"image_size": 64, "latency_repeats": 1}
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    _dvc(copy, "repro")
    return copy


def test_repro_runs_every_stage(pipeline):
    for model in ("unet", "tinyunet"):
        for seed in (0, 1):
            metrics = json.loads(
                (pipeline / f"results/runs/ph2-dermoscopy/{model}/seed{seed}/metrics.json").read_text()
            )
            assert (metrics["model"], metrics["seed"], metrics["scale"]) == (model, seed, "smoke")
            assert (pipeline / f"results/notebooks/ph2-dermoscopy/{model}/seed{seed}/train.ipynb").is_file()
    for output in ("complexity.csv", "aggregate.ipynb", "stats.json", "tables/results.md", "figures/seed_dice.png"):
        assert (pipeline / "results" / output).is_file(), output
    assert "train@ph2-dermoscopy-tinyunet-1" in (pipeline / "dvc.lock").read_text()


def test_second_repro_is_up_to_date(pipeline):
    assert _stale(pipeline) == set()
    assert "Running stage" not in _dvc(pipeline, "repro")


def test_dependencies_are_exact(pipeline):
    params_file = pipeline / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["models"]["tinyunet"]["n_dwconv"] = 4
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    assert _stale(pipeline) == {"train@ph2-dermoscopy-tinyunet-0", "train@ph2-dermoscopy-tinyunet-1"}
    params_file.write_text(original)

    stats = pipeline / "repro" / "stats.py"
    stats.write_text(stats.read_text() + "\n# an edit\n")
    assert _stale(pipeline) == {"aggregate"}


def test_parallel_repro_runs_and_records_the_stale_runs(pipeline):
    """`make study` trains through scripts/parallel_repro.py: it must run exactly the stale runs and lock them."""
    params_file = pipeline / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["models"]["tinyunet"]["n_dwconv"] = 4
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    # The finished runs' checkpoints must go first: they are matched on seed and settings only (README,
    # "Checkpoints"), and resuming them would load the 8-convolution weights into the 4-convolution network.
    shutil.rmtree(pipeline / "checkpoints/ph2-dermoscopy/tinyunet")
    unet_metrics = pipeline / "results/runs/ph2-dermoscopy/unet/seed0/metrics.json"
    untouched = unet_metrics.read_bytes()

    result = _run(pipeline, "scripts/parallel_repro.py", "-j", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 training stage(s) to run" in result.stdout
    assert not {name for name in _stale(pipeline) if name.startswith("train@")}
    for seed in (0, 1):
        metrics = json.loads((pipeline / f"results/runs/ph2-dermoscopy/tinyunet/seed{seed}/metrics.json").read_text())
        assert metrics["options"]["n_dwconv"] == 4
    assert unet_metrics.read_bytes() == untouched
