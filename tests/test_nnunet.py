"""nnU-Net v2 on the study's Hippocampus split (repro/nnunet.py): the raw export, the trainer classes, the scoring,
and one smoke run from export to written results."""

import json
import os
import sys
import time

import matplotlib
import nibabel
import numpy as np
import pytest

from repro import nnunet
from repro.config import load_params
from repro.data.readers import DatasetError, read_volume_mask
from repro.data.registry import get_dataset

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def study():
    """The committed split and every pair on disk (skips where the data root lacks the dataset)."""
    try:
        return nnunet.study_split()
    except DatasetError as error:  # the data root lies outside the repository
        pytest.skip(f"MSD Hippocampus not available: {error}")


@pytest.fixture
def small_split(study):
    """Four real cases: two training, one validation, one test."""
    split, samples = study
    return {"train": split["train"][:2], "val": split["val"][:1], "test": split["test"][:1]}, samples


def test_export_raw_writes_the_study_split_in_nnunet_format(tmp_path, small_split):
    split, samples = small_split
    dataset = nnunet.export_raw(tmp_path, split, samples)
    assert dataset == tmp_path / "raw" / "Dataset004_Hippocampus"

    def names(folder, suffix):
        return sorted(p.name.removesuffix(suffix) for p in (dataset / folder).iterdir())

    trainval = sorted(split["train"] + split["val"])
    assert names("imagesTr", "_0000.nii.gz") == trainval
    assert names("labelsTr", ".nii.gz") == trainval
    assert names("imagesTs", "_0000.nii.gz") == split["test"]
    assert names("labelsTs", ".nii.gz") == split["test"]
    for case in split["train"] + split["val"] + split["test"]:
        folder = "Ts" if case in split["test"] else "Tr"
        image = dataset / f"images{folder}" / f"{case}_0000.nii.gz"
        label = dataset / f"labels{folder}" / f"{case}.nii.gz"
        assert image.read_bytes() == samples[case].image.read_bytes()
        assert label.read_bytes() == samples[case].mask.read_bytes()
        np.testing.assert_array_equal(read_volume_mask(label), read_volume_mask(samples[case].mask))

    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "MRI"}
    assert meta["labels"] == {"background": 0, "anterior": 1, "posterior": 2}
    assert meta["numTraining"] == 3
    assert meta["file_ending"] == ".nii.gz"

    folds = json.loads((tmp_path / "preprocessed" / "Dataset004_Hippocampus" / "splits_final.json").read_text())
    assert folds == [{"train": split["train"], "val": split["val"]}]


def test_export_raw_replaces_a_previous_export(tmp_path, small_split):
    split, samples = small_split
    nnunet.export_raw(tmp_path, split, samples)
    fewer = {"train": split["train"][:1], "val": split["val"], "test": split["test"]}
    dataset = nnunet.export_raw(tmp_path, fewer, samples)
    assert len(list((dataset / "imagesTr").iterdir())) == 2


def test_study_split_is_the_committed_split_cut_like_smoke_runs(study):
    split, _ = study
    cut, _ = nnunet.study_split(max_train_cases=5, max_eval_cases=2)
    assert cut == {"train": split["train"][:5], "val": split["val"][:2], "test": split["test"][:2]}
    assert not set(split["test"]) & set(split["train"] + split["val"])


def test_environment_is_set_for_the_call_only(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", "/elsewhere")
    monkeypatch.delenv("nnUNet_results", raising=False)
    with nnunet.nnunet_environment(tmp_path, 0):
        assert os.environ["nnUNet_raw"] == str(tmp_path.resolve() / "raw")
        assert os.environ["nnUNet_results"] == str(tmp_path.resolve() / "results")
        assert os.environ["nnUNet_n_proc_DA"] == "0"
    assert os.environ["nnUNet_raw"] == "/elsewhere"
    assert "nnUNet_results" not in os.environ


def settings(**changes):
    base = nnunet.load_settings("smoke")
    return nnunet.NnunetSettings(**(vars(base) | changes))


def test_trainer_classes():
    short = nnunet.trainer_class(settings(epochs=3, iterations_per_epoch=4, val_iterations_per_epoch=1))
    assert short.__name__ == "nnUNetTrainer_Repro"
    assert (short.epochs, short.iterations_per_epoch, short.val_iterations_per_epoch) == (3, 4, 1)
    no_lengths = {"epochs": None, "iterations_per_epoch": None, "val_iterations_per_epoch": None}
    stock = nnunet.trainer_class(settings(trainer="nnUNetTrainer_5epochs", **no_lengths))
    assert stock.__name__ == "nnUNetTrainer_5epochs"
    with pytest.raises(KeyError, match="nnUNetTrainer_10epochs"):
        nnunet.trainer_class(settings(trainer="nnUNetTrainer_7epochs", **no_lengths))
    with pytest.raises(ValueError, match="iterations_per_epoch"):
        nnunet.trainer_class(settings(iterations_per_epoch=None))
    with pytest.raises(ValueError, match="own lengths"):
        nnunet.trainer_class(settings(trainer="nnUNetTrainer_5epochs"))


def test_every_scale_of_params_yaml_names_a_trainer():
    for scale in load_params()["nnunet"]["scales"]:
        nnunet.trainer_class(nnunet.load_settings(scale))


def test_score_uses_the_study_metrics_case_by_case(tmp_path, small_split):
    split, samples = small_split
    cases = split["train"]
    labels = [samples[case].mask for case in cases]
    names = get_dataset(nnunet.DATASET).class_names
    summary, rows = nnunet.score(labels, labels, cases, names)
    assert summary["dice"] == 1.0 and summary["hd95"] == 0.0 and summary["hd95_cases"] == 2
    assert [row["id"] for row in rows] == cases

    # Swapping anterior and posterior in one case: its foreground Dice drops, the other case stays perfect.
    image = nibabel.load(str(labels[0]))
    swapped = read_volume_mask(labels[0])
    swapped = np.where(swapped == 1, 2, np.where(swapped == 2, 1, swapped)).astype(np.uint8)
    path = tmp_path / "swapped.nii.gz"
    nibabel.save(nibabel.Nifti1Image(swapped, image.affine), str(path))
    summary, rows = nnunet.score([path, labels[1]], labels, cases, names)
    assert rows[0]["dice"] < 0.5 and rows[1]["dice"] == 1.0
    assert summary["dice"] == pytest.approx((rows[0]["dice"] + 1.0) / 2)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, study):
    """One smoke run of the whole pipeline (about 50 s on two busy cores): its metrics, folders and seconds, and the
    matplotlib settings it changed for the rest of the process."""
    root = tmp_path_factory.mktemp("nnunet")
    style = dict(matplotlib.rcParams)
    start = time.perf_counter()
    metrics = nnunet.run(seed=0, scale="smoke", out_dir=root / "out", work_dir=root / "work")
    seconds = time.perf_counter() - start
    return metrics, root, seconds, {key for key, value in style.items() if matplotlib.rcParams[key] != value}


def test_smoke_run_end_to_end(smoke_run):
    """nnU-Net plans, preprocesses, trains fold 0 and predicts at the smoke scale; the results hold the study's
    keys, the plan, the schedule, a row per epoch and a row per test case."""
    metrics, root, seconds, style_changed = smoke_run
    smoke = nnunet.load_settings("smoke")
    split, _ = nnunet.study_split(smoke.max_train_cases, smoke.max_eval_cases)

    assert metrics["model"] == "nnunet" and metrics["arch"] == "nnunetv2 3d_fullres"
    assert metrics["dataset"] == nnunet.DATASET and metrics["seed"] == 0 and metrics["scale"] == "smoke"
    assert metrics["n_images"] == {name: len(ids) for name, ids in split.items()}
    assert metrics["epochs"] == smoke.epochs
    assert metrics["nnunet_schedule"]["iterations_per_epoch"] == smoke.iterations_per_epoch
    assert metrics["nnunet_plan"]["patch_size"] and metrics["params"] > 0
    assert 0.0 <= metrics["test"]["dice"] <= 1.0 and "hd95" in metrics["test"]
    assert set(metrics["versions"]) >= {"torch", "nnunetv2"}
    # nnU-Net's trainer lookup by name would import timm and torchvision, which does not load beside this torch.
    assert "torchvision" not in sys.modules
    assert style_changed == set()  # nnU-Net's seaborn font_scale 2.5 stayed inside its training

    per_image = (root / "out" / "per_image.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in per_image[1:]] == split["test"]
    history = (root / "out" / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss,val_loss,val_dice")
    assert len(history) == 1 + smoke.epochs
    print(f"smoke run: {seconds:.0f} s")


def test_training_is_reproducible_from_the_seed(smoke_run):
    """With augmentation in the training process, the same seed trains to the same losses and pseudo Dice."""
    _, root, _, _ = smoke_run
    smoke = nnunet.load_settings("smoke")
    trainer, _ = nnunet.train(root / "work", smoke, seed=0)
    again = nnunet.history(trainer, get_dataset(nnunet.DATASET).class_names)
    stored = [row.split(",") for row in (root / "out" / "history.csv").read_text().splitlines()]
    columns = stored[0]
    for row, line in zip(again, stored[1:], strict=True):
        for name in ("train_loss", "val_loss", "val_dice"):
            assert row[name] == float(line[columns.index(name)])
