"""Custom datasets in the DVC pipeline, in a copy (smoke scale): a `prepare.custom_datasets` entry alone (no
second list) gives a prepare stage that the study's training stages use, its definition is that stage's
parameter, and a `large_images` entry with a field-of-view folder trains on patches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from study_copy import copy_repository, run_python, stale

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


def _run(copy: Path, *args: str) -> str:
    result = run_python(copy, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _stale(copy: Path) -> set[str]:
    """Stale prepare and train stages (complexity and aggregate are not run here)."""
    return {name for name in stale(copy) if name.startswith(("prepare", "train"))}


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
    data_root = tmp_path_factory.mktemp("custom-data")
    _write_datasets(data_root)
    # No built-in dataset here: the custom ones are prepared from their entries alone.
    copy = copy_repository(
        tmp_path_factory.mktemp("custom-pipeline"),
        {"datasets": ["polyps", "fundus"], "models": ["tinyunet"], "seeds": [0]},
        data_root=str(data_root),
        prepare={"datasets": [], "custom_datasets": {n: {**e, "path": str(data_root / n)} for n, e in CUSTOM.items()}},
        training={name: {"train_steps": {}, "eval_every": 1} for name in CUSTOM},
    )
    for name in CUSTOM:
        assert f"splits/{name}.json" in _run(copy, "-m", "repro.data.prepare", "--draw-split", name)
    _run(copy, "-m", "dvc", "repro", "train@polyps-tinyunet-0", "train@fundus-tinyunet-0")
    return copy


def test_custom_datasets_are_prepared_and_trained_without_a_second_list(pipeline):
    lock = yaml.safe_load((pipeline / "dvc.lock").read_text())["stages"]
    for name in CUSTOM:
        assert lock[f"prepare_custom@{name}"]["params"]["params.yaml"][f"prepare.custom_datasets.{name}"]
        metrics = json.loads((pipeline / f"results/smoke/runs/{name}/tinyunet/seed0/metrics.json").read_text())
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


def test_a_datasets_length_is_a_parameter_of_its_own_runs_only(pipeline):
    """training.<dataset> is a parameter of that dataset's train stages alone: a new dataset's entry, or another
    length for one dataset, leaves every other run as it was."""
    params_file = pipeline / "params.yaml"
    original = params_file.read_text()
    before = _stale(pipeline)  # an earlier test may have left polyps' stages stale; fundus' are up to date
    assert "train@fundus-tinyunet-0" not in before
    params = yaml.safe_load(original)
    params["training"]["another-dataset"] = {"train_steps": {"smoke": 40}, "eval_every": 2}
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    assert _stale(pipeline) == before
    params["training"]["fundus"]["train_steps"]["smoke"] = 40
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    assert _stale(pipeline) == before | {"train@fundus-tinyunet-0"}
    params_file.write_text(original)
