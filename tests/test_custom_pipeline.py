"""Custom datasets in the DVC pipeline, in a copy (smoke scale): a `prepare.custom_datasets` entry alone (no
second list) gives a prepare stage that the study's training stages use, its definition is that stage's
parameter, and a `large_images` entry with a field-of-view folder trains on patches."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".git", ".venv", "results", "checkpoints", "data/processed", ".dvc/cache", ".dvc/tmp", "dvc.lock"}
CUSTOM = {
    "polyps": {
        "images": "images",
        "masks": "masks",
        "image_suffix": ".jpg",
        "mask_suffix": ".png",
        "in_channels": 3,
        "class_names": ["background", "polyp"],
        "threshold": 127,
    },
    "fundus": {
        "images": "images",
        "masks": "vessels",
        "image_suffix": ".png",
        "mask_suffix": ".png",
        "in_channels": 3,
        "class_names": ["background", "vessel"],
        "mask_values": {0: 0, 255: 1},
        "large_images": True,
        "fov_masks": "fov",
    },
}


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


def _run(copy: Path, *args: str) -> str:
    """This interpreter on ``args`` in the copy, with its environment's `dvc` and `papermill` first on PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([sys.executable, *args], cwd=copy, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _stale(copy: Path) -> set[str]:
    """Stale prepare and train stages (complexity and aggregate are not run here)."""
    return {n for n in json.loads(_run(copy, "-m", "dvc", "status", "--json")) if n.startswith(("prepare", "train"))}


def _write_datasets(root: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(16):
        # Polyps: JPEG photos; masks with a core of 255 and a rim of 160, which threshold 127 counts and 200 not.
        mask = np.zeros((48, 56), dtype=np.uint8)
        mask[10:38, 12:44] = 160
        mask[16:32, 18:38] = 255
        photo = (rng.random((48, 56, 3)) * 80).astype(np.uint8) + (mask[..., None] // 2)
        (root / "polyps/images").mkdir(parents=True, exist_ok=True)
        (root / "polyps/masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo).save(root / f"polyps/images/p{i:02d}.jpg", quality=90)
        Image.fromarray(mask).save(root / f"polyps/masks/p{i:02d}.png")
    yy, xx = np.mgrid[:300, :260]
    fov = (((yy - 150) ** 2 + (xx - 130) ** 2) < 120**2).astype(np.uint8) * 255
    for i in range(8):
        vessels = np.zeros((300, 260), dtype=np.uint8)
        vessels[:, 10 + i :: 12] = 255
        for folder, array in (("images", np.stack([vessels // 2] * 3, -1)), ("vessels", vessels), ("fov", fov)):
            (root / "fundus" / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / f"fundus/{folder}/f{i}.png")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("custom-pipeline")
    data_root = tmp_path_factory.mktemp("custom-data")
    _write_datasets(data_root)
    _copy_tree(copy)
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["data_root"] = str(data_root)
    params["scale"] = "smoke"
    # No built-in dataset here: the custom ones are prepared from their entries alone.
    params["prepare"] = {"datasets": [], "custom_datasets": CUSTOM}
    params["study"] = {"datasets": ["polyps", "fundus"], "models": ["tinyunet"], "seeds": [0]}
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    for name in CUSTOM:
        assert f"splits/{name}.json" in _run(copy, "-m", "repro.data.prepare", "--draw-split", name)
    _run(copy, "-m", "dvc", "repro", "train@polyps-tinyunet-0", "train@fundus-tinyunet-0")
    return copy


def test_custom_datasets_are_prepared_and_trained_without_a_second_list(pipeline):
    lock = yaml.safe_load((pipeline / "dvc.lock").read_text())["stages"]
    for name in CUSTOM:
        assert lock[f"prepare_custom@{name}"]["params"]["params.yaml"][f"prepare.custom_datasets.{name}"]
        metrics = json.loads((pipeline / f"results/runs/{name}/tinyunet/seed0/metrics.json").read_text())
        assert metrics["dataset"] == name and 0 <= metrics["test"]["dice"] <= 1
    assert _stale(pipeline) == set()


def test_large_custom_dataset_keeps_its_size_and_field_of_view(pipeline):
    folder = pipeline / "data/processed/smoke/fundus"
    assert json.loads((folder / "meta.json").read_text())["large_images"]
    assert np.load(folder / "train_images.npy").shape[1:3] == (75, 65)  # 300x260 scaled by 0.25, not squeezed
    assert (folder / "train_valid.npy").is_file()


def test_changing_a_definition_makes_only_its_stage_stale(pipeline):
    params_file = pipeline / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["prepare"]["custom_datasets"]["polyps"]["threshold"] = 200
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    assert _stale(pipeline) == {"prepare_custom@polyps"}
    # Re-prepared, the masks lose their 160-valued rim: the dataset's training run is stale, the other is not.
    _run(pipeline, "-m", "dvc", "repro", "prepare_custom@polyps")
    assert _stale(pipeline) == {"train@polyps-tinyunet-0"}
    params_file.write_text(original)
