"""docs/datasets.md, "Adding a dataset", walked in a copy of the repository at the smoke scale: the docs' own entry
(its `path` set to a folder outside the data root) and length entry, then the docs' commands: the split command, a
prepare, the runner aimed at the dataset (dry, then training its one run). The folder holds large JPEG photographs,
two per subject, each with two annotators' masks beside it. Then a prepare that fails keeps the prepared data."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from study_copy import ROOT, copy_repository, run_python

NAME = "my-retina"
SECTION = re.search(r"### Adding a dataset\n(.*?)\n### ", (ROOT / "docs/datasets.md").read_text(), re.DOTALL).group(1)
ENTRY, LENGTH = (yaml.safe_load(textwrap.dedent(b)) for b in re.findall(r"```yaml\n(.*?)```", SECTION, re.DOTALL))
# The docs' commands, one a line, comments dropped: the environment is this interpreter's already.
COMMANDS = [
    line.split("#")[0].split()
    for block in re.findall(r"```bash\n(.*?)```", SECTION, re.DOTALL)
    for line in textwrap.dedent(block).splitlines()
    if line.startswith("python ")
]


def _photographs(folder: Path, subjects: int = 6) -> None:
    """Both eyes of each subject, 300x400 JPEG photographs with vessel-like stripes; the first annotator's masks
    mark the stripes, the second's are of another size, so a prepare that read them would fail."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for subject in range(1, subjects + 1):
        for eye in "LR":
            stem = f"Image_{subject:02d}{eye}"
            vessels = np.zeros((300, 400), dtype=np.uint8)
            for offset in range(4):  # 4 pixels wide: they stay vessels when scaled by 0.25
                vessels[:, subject + offset :: 12] = 255
            photo = (rng.random((300, 400, 3)) * 60).astype(np.uint8) + vessels[..., None] // 2
            Image.fromarray(photo).save(folder / f"{stem}.jpg", quality=90)
            Image.fromarray(vessels).save(folder / f"{stem}_1stHO.png")
            Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(folder / f"{stem}_2ndHO.png")


def _run(copy: Path, args: list[str]) -> str:
    assert args[0] == "python"
    result = run_python(copy, *args[1:])
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    """The copy after following the docs; the photographs' folder; the output of each docs command."""
    folder = tmp_path_factory.mktemp("elsewhere") / "photographs"
    _photographs(folder)
    # No dataset in the grid yet, and none prepared: the docs add one.
    copy = copy_repository(tmp_path_factory.mktemp("adding"), {"datasets": [], "models": ["tinyunet"], "seeds": [0]})
    params = yaml.safe_load((copy / "params.yaml").read_text())
    assert params["prepare"]["custom_datasets"] == {}
    assert not folder.is_relative_to(Path(params["data_root"]))
    params["prepare"]["custom_datasets"] = {NAME: {**ENTRY["custom_datasets"][NAME], "path": str(folder)}}
    params["study"]["datasets"].append(NAME)
    params["training"].update(LENGTH)
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return copy, folder, [_run(copy, command) for command in COMMANDS]


def test_the_docs_entry_and_commands_are_the_ones_walked():
    assert ENTRY["custom_datasets"][NAME]["mask_pattern"] == "{stem}_1stHO.png"
    assert LENGTH == {NAME: {"train_steps": {"cpu": 600}, "eval_every": 2}}
    assert [" ".join(command) for command in COMMANDS] == [
        f"python -m repro.data.prepare --draw-split {NAME}",
        f"python -m repro.data.prepare {NAME}",
        f"python -m repro.study --datasets {NAME} --dry-run",
        f"python -m repro.study --datasets {NAME}",
    ]


def test_the_split_keeps_subjects_together_and_warns_of_its_small_splits(walked):
    copy, _, outputs = walked
    split = json.loads((copy / f"data/splits/{NAME}.json").read_text())
    subjects = {name: {i[:8] for i in split[name]} for name in ("train", "val", "test")}
    assert [len(split[name]) for name in ("train", "val", "test")] == [8, 2, 2]
    assert not (subjects["train"] & subjects["val"] or subjects["train"] & subjects["test"])
    for output in outputs[:2]:  # the split command and the prepare both say it
        for name, key in (("val", "val_fraction"), ("test", "test_fraction")):
            assert (
                f"warning: split '{name}' of '{NAME}' holds 2 image(s) of 1 group(s), fewer than 5 images or 2 "
                f"groups: its scores rest on too few; add images, or raise {key} in params.yaml "
                f"prepare.custom_datasets.{NAME} and redraw the split (python -m repro.data.prepare --draw-split "
                f"{NAME})"
            ) in output.splitlines()


def test_the_photographs_are_prepared_from_their_folder_with_the_first_annotators_masks(walked):
    copy, folder, _ = walked
    prepared = copy / "data/processed/smoke" / NAME
    meta = json.loads((prepared / "meta.json").read_text())
    assert meta["large_images"] and meta["image_shape"]["train"] == [75, 100]  # 300x400 scaled by 0.25
    masks = np.load(prepared / "train_masks.npy")
    assert 0.15 < masks.mean() < 0.5  # the stripes of the 1stHO masks (a third of the pixels), not the 2ndHO ones
    lock = yaml.safe_load((copy / "dvc.lock").read_text())["stages"][f"prepare_custom@{NAME}"]
    assert lock["deps"][0]["path"] == str(folder)


def test_the_runner_aimed_at_the_dataset_trains_its_run(walked):
    copy, _, outputs = walked
    assert f"train@{NAME}-tinyunet-0" in outputs[2]
    metrics = json.loads((copy / f"results/smoke/runs/{NAME}/tinyunet/seed0/metrics.json").read_text())
    assert metrics["dataset"] == NAME and 0 <= metrics["test"]["dice"] <= 1
    assert metrics["dataset_definition"]["path"] == metrics["dataset_definition"]["custom_entry"]["path"]


def test_a_failing_prepare_keeps_the_prepared_data_and_ends_with_its_cause(walked):
    copy, folder, _ = walked
    prepared = copy / "data/processed/smoke" / NAME
    good = {path.name: path.read_bytes() for path in prepared.iterdir()}
    broken = folder / "Image_03L.jpg"
    original = broken.read_bytes()
    broken.write_bytes(b"not a JPEG")
    try:
        # DVC sees the folder changed and runs the stage, which fails: its output stays (persist) as it was.
        result = run_python(copy, "-m", "repro.study", "--datasets", NAME)
        assert result.returncode == 2, result.stdout + result.stderr
        assert (
            result.stderr.strip()
            .splitlines()[-1]
            .startswith(f"cause: error: dataset '{NAME}': 1 bad pair(s): {broken}: unreadable image")
        )
        assert {path.name: path.read_bytes() for path in prepared.iterdir()} == good
    finally:
        broken.write_bytes(original)
    split = copy / f"data/splits/{NAME}.json"
    split.unlink()
    result = run_python(copy, "-m", "repro.data.prepare", NAME)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {split}: no split file for '{NAME}'; draw one with `python -m repro.data.prepare --draw-split "
        f"{NAME}` and commit it"
    )
    assert {path.name: path.read_bytes() for path in prepared.iterdir()} == good
    assert [path.name for path in prepared.parent.iterdir()] == [NAME]  # nothing half-written beside it
