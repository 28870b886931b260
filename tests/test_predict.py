"""``python -m repro.predict``: a trained run applied to new images, with the run's own preprocessing.

Every test builds a tiny synthetic run in tmp_path: a prepared folder written as ``repro.data.prepare`` writes one,
a width-0.125 network saved in a checkpoint dict (``best_state``, ``identity``, ``best_epoch``) as the Trainer
saves one, and the run's ``metrics.json``. The expected masks are computed by hand: Pillow's bilinear resize, the
normalisation of ``repro.data.loading.load_prepared`` itself (on a reference folder holding the resized image), the
network called directly, nearest-neighbour back to the input's size.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import repro.predict as predict_module
from repro.data.loading import load_prepared
from repro.data.registry import REPO_ROOT, get_dataset
from repro.models import create_model
from repro.predict import main
from repro.training.identity import RunIdentity, data_files, dataset_definition
from repro.training.inference import predict_logits
from repro.training.metrics import logits_to_labels

SCALE = "pytest-predict"  # no checkpoint or prepared folder of this scale exists in the repository
SCALE_SETTINGS = {
    "image_size": 32,
    "large_image_scale": 0.5,
    "patch_size": 32,
    "patches_per_image": 2,
    "width_mult": 0.125,
    "epochs": 1,
    "batch_size": 2,
    "lr": 0.001,
    "weight_decay": 0.0,
    "max_train_images": None,
    "max_eval_images": None,
}

pytestmark = pytest.mark.usefixtures("single_thread")


def write_prepared(folder: Path, dataset: str, train_images: np.ndarray, test_images: np.ndarray | None = None) -> Path:
    """A prepared folder as ``repro.data.prepare.prepare_dataset`` writes it (arrays and meta.json)."""
    spec = get_dataset(dataset)
    splits = {
        "train": train_images,
        "val": train_images[:1],
        "test": train_images[:1] if test_images is None else test_images,
    }
    folder.mkdir(parents=True)
    for name, images in splits.items():
        np.save(folder / f"{name}_images.npy", np.ascontiguousarray(images))
        np.save(folder / f"{name}_masks.npy", np.zeros(images.shape[:3], dtype=np.uint8))
    meta = {
        "dataset": dataset,
        "title": spec.title,
        "source": spec.source,
        "scale": SCALE,
        "class_names": list(spec.class_names),
        "in_channels": spec.in_channels,
        "large_images": spec.large_images,
        "image_shape": {k: list(v.shape[1:3]) for k, v in splits.items()},
        "ids": {k: [f"{k}{i}" for i in range(len(v))] for k, v in splits.items()},
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return folder


def make_run(tmp_path: Path, dataset: str = "ph2-dermoscopy", seed: int = 0) -> SimpleNamespace:
    """A synthetic finished run: prepared data, metrics.json, checkpoint with a width-0.125 U-Net."""
    spec = get_dataset(dataset)
    rng = np.random.default_rng(seed)
    size = (48, 56) if spec.large_images else (32, 32)
    # Bright, low-contrast training images: their mean and std are far from 0 and 1, so skipping the
    # normalisation changes the prediction.
    train = rng.integers(170, 240, size=(4, *size, spec.in_channels), dtype=np.uint8)
    prepared = write_prepared(tmp_path / "prepared", dataset, train)
    identity = RunIdentity(
        dataset=dataset,
        dataset_definition=dataset_definition(dataset, {}),
        model="unet",
        arch="unet",
        options={"width_mult": 0.125},
        seed=seed,
        scale=SCALE,
        scale_settings=SCALE_SETTINGS,
        dataset_settings={"train_steps": {}, "eval_every": 1},
        data_files=data_files(prepared),
        code_files={"repro/training/trainer.py": "0" * 32},
        data_root="/nowhere",
        git_commit="unknown",
    )
    run_dir = tmp_path / "results" / SCALE / "runs" / dataset / "unet" / f"seed{seed}"
    run_dir.mkdir(parents=True)
    metrics = {**identity.to_dict(), "class_names": list(spec.class_names), "best_epoch": 3, "epochs": 4}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    num_classes = len(spec.class_names)
    torch.manual_seed(seed)
    model = create_model(
        "unet", in_channels=spec.in_channels, num_classes=1 if num_classes == 2 else num_classes, width_mult=0.125
    ).eval()
    run = SimpleNamespace(
        dir=run_dir, prepared=prepared, checkpoint=tmp_path / "last.pt", model=model, identity=identity, spec=spec
    )
    save_checkpoint(run)
    return run


def save_checkpoint(run: SimpleNamespace, **identity_changes) -> None:
    identity = {**run.identity.to_dict(), **identity_changes}
    state = {"best_state": run.model.state_dict(), "identity": identity, "best_epoch": 3, "model": None}
    torch.save(state, run.checkpoint)


def write_image(path: Path, shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    """A smooth random image (so resizing matters) written to ``path``; returns the array written."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 5, *shape[2:]), dtype=np.uint8)
    pil = Image.fromarray(coarse[..., 0] if coarse.ndim == 3 and coarse.shape[-1] == 1 else coarse)
    array = np.asarray(pil.resize((shape[1], shape[0]), Image.BICUBIC))
    Image.fromarray(array).save(path)
    return array


def by_hand(run: SimpleNamespace, raw: np.ndarray, tmp_path: Path, *, normalised: bool = True) -> tuple:
    """(labels at the input's size, logits) of the run's network on ``raw`` (H, W[, C] uint8), preprocessed by hand.

    Resize: Pillow bilinear to the scale's square (or the image's size times ``large_image_scale``). Normalisation:
    ``load_prepared`` of a copy of the prepared folder whose test split is the resized image.
    """
    height, width = raw.shape[:2]
    if run.spec.large_images:
        target = (
            round(height * SCALE_SETTINGS["large_image_scale"]),
            round(width * SCALE_SETTINGS["large_image_scale"]),
        )
    else:
        target = (SCALE_SETTINGS["image_size"],) * 2
    resized = np.asarray(Image.fromarray(raw).resize(target[::-1], Image.BILINEAR))
    resized = resized.reshape(*target, run.spec.in_channels)
    if normalised:
        reference = tmp_path / f"reference-{len(list(tmp_path.glob('reference-*')))}"
        write_prepared(reference, run.spec.name, np.load(run.prepared / "train_images.npy"), resized[None])
        inputs = load_prepared(reference).test.images
    else:
        inputs = torch.from_numpy(resized.astype(np.float32).transpose(2, 0, 1)[None] / 255.0)
    tile = SCALE_SETTINGS["patch_size"] if run.spec.large_images else None
    with torch.no_grad():
        logits = predict_logits(run.model, inputs, 1, tile) if tile else run.model.eval()(inputs)
    labels = logits_to_labels(logits)[0].numpy().astype(np.uint8)
    back = np.asarray(Image.fromarray(labels).resize((width, height), Image.NEAREST))
    return back, logits


def balance(run: SimpleNamespace, raw: np.ndarray, tmp_path: Path) -> None:
    """Shift the network's output bias of each channel by its median logit on ``raw`` (binary: about half the
    pixels foreground; an untrained network predicts one class everywhere), and save the checkpoint again."""
    _, logits = by_hand(run, raw, tmp_path)
    head = [m for m in run.model.modules() if isinstance(m, nn.Conv2d)][-1]
    assert head.out_channels == logits.shape[1]
    with torch.no_grad():
        head.bias -= logits.transpose(0, 1).flatten(1).median(dim=1).values
    save_checkpoint(run)


def run_cli(*args) -> str:
    """Run ``main``; the error line when it exits with one, else ''."""
    try:
        main([str(a) for a in args])
    except SystemExit as exit_:
        assert exit_.code not in (0, None)
        message = str(exit_.code)
        assert message.startswith("error: ") and "\n" not in message
        return message
    return ""


def read_mask(path: Path) -> np.ndarray:
    image = Image.open(path)
    assert image.mode == "L"
    return np.asarray(image)


@pytest.mark.parametrize("dataset", ["ph2-dermoscopy", "covid19-ct-medseg-infnet"])
def test_masks_are_the_networks_labels_on_the_runs_preprocessing(tmp_path, dataset):
    run = make_run(tmp_path, dataset)
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    raw = write_image(images / "case.png", (45, 60, run.spec.in_channels) if run.spec.in_channels == 3 else (45, 60))
    balance(run, raw, tmp_path)
    assert run_cli(run.dir, images, out, "--checkpoint", run.checkpoint, "--prepared", run.prepared) == ""
    expected, _ = by_hand(run, raw, tmp_path)
    mask = read_mask(out / "case.png")
    np.testing.assert_array_equal(mask, expected)
    assert len(np.unique(expected)) > 1  # the comparison is not of two constant maps
    # The test sees a skipped normalisation: without it the network's labels differ.
    assert not np.array_equal(by_hand(run, raw, tmp_path, normalised=False)[0], expected)


def test_one_mask_per_image_named_by_stem_at_the_inputs_size(tmp_path):
    run = make_run(tmp_path)
    images, out = tmp_path / "images", tmp_path / "masks" / "new"
    images.mkdir()
    shapes = {"a.png": (45, 60, 3), "b.jpg": (50, 40, 3), "c.tif": (33, 70), "d.bmp": (32, 32, 3)}
    for name, shape in shapes.items():
        write_image(images / name, shape)
    (images / "notes.txt").write_text("not an image")
    (images / ".hidden.png").write_bytes(b"")
    assert run_cli(run.dir, images, out, "--checkpoint", run.checkpoint, "--prepared", run.prepared) == ""
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png", "d.png"]
    for name, shape in shapes.items():
        mask = read_mask(out / f"{Path(name).stem}.png")
        assert mask.shape == shape[:2]
        assert set(np.unique(mask)) <= {0, 1}


def test_values_255_for_a_binary_task(tmp_path):
    run = make_run(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    raw = write_image(images / "x.jpeg", (40, 44, 3))
    balance(run, np.asarray(Image.open(images / "x.jpeg")), tmp_path)
    args = (run.dir, images, "--checkpoint", run.checkpoint, "--prepared", run.prepared)
    assert run_cli(args[0], args[1], tmp_path / "index", *args[2:]) == ""
    assert run_cli(args[0], args[1], tmp_path / "255", *args[2:], "--values", "255") == ""
    index, binary = read_mask(tmp_path / "index" / "x.png"), read_mask(tmp_path / "255" / "x.png")
    assert binary.shape == raw.shape[:2]
    assert set(np.unique(binary)) == {0, 255}
    np.testing.assert_array_equal(binary, index * 255)


def test_values_255_is_refused_for_a_multi_class_task(tmp_path):
    run = make_run(tmp_path, "covid19-ct-medseg-infnet")
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "x.png", (32, 32))
    message = run_cli(run.dir, images, tmp_path / "out", "--values", "255", "--checkpoint", run.checkpoint)
    assert "binary" in message and "3 classes" in message


def test_large_images_are_predicted_by_sliding_window(tmp_path, monkeypatch):
    run = make_run(tmp_path, "isbi2012-em-membrane")
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    raw = write_image(images / "slice.tif", (100, 120))
    balance(run, raw, tmp_path)
    tiles = []

    def recording(model, inputs, batch_size, tile=None):
        tiles.append((tuple(inputs.shape), tile))
        return predict_logits(model, inputs, batch_size, tile)

    monkeypatch.setattr(predict_module, "predict_logits", recording)
    assert run_cli(run.dir, images, out, "--checkpoint", run.checkpoint, "--prepared", run.prepared) == ""
    # Kept at its size times large_image_scale (not squared), tiled at the scale's patch size.
    assert tiles == [((1, 1, 50, 60), 32)]
    expected, _ = by_hand(run, raw, tmp_path)
    np.testing.assert_array_equal(read_mask(out / "slice.png"), expected)
    assert len(np.unique(expected)) > 1


def test_missing_checkpoint_names_the_file_and_the_training_command(tmp_path):
    run = make_run(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "x.png", (32, 32, 3))
    message = run_cli(run.dir, images, tmp_path / "out", "--prepared", run.prepared)
    assert f"checkpoints/ph2-dermoscopy/unet/seed0/{SCALE}/last.pt" in message
    assert "dvc repro train@ph2-dermoscopy-unet-0" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("dataset", "model", "stage"),
    [
        ("covid19-ct-medseg-infnet", "tinyunet_n1", "train_ablations"),
        ("ph2-dermoscopy", "tinyunet_plain", "train_controls"),
        ("covid19-ct-medseg-infnet", "tinyunet_plain", "train_controls"),
        ("ph2-dermoscopy", "unet", "train"),
        ("drive", "unet", "train"),  # a run the grid does not list
    ],
)
def test_the_training_command_names_the_stage_of_the_runs_block(monkeypatch, dataset, model, stage):
    """A run of study.ablations or study.controls is trained by its block's stage: `dvc repro train@...` names no
    stage for it."""
    params = predict_module.load_params()
    params["study"]["controls"] = {
        "datasets": ["covid19-ct-medseg-infnet", "ph2-dermoscopy"],
        "models": ["tinyunet_plain"],
    }
    monkeypatch.setattr(predict_module, "load_params", lambda: params)
    run = SimpleNamespace(dataset=dataset, model=model, seed=2, scale=params["scale"])
    assert predict_module.training_command(run) == f"`dvc repro {stage}@{dataset}-{model}-2`"


def test_command_line_error_is_one_line_and_non_zero(tmp_path):
    run = make_run(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "x.png", (32, 32, 3))
    done = subprocess.run(
        [sys.executable, "-m", "repro.predict", run.dir, images, tmp_path / "out", "--prepared", run.prepared],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith("error: no checkpoint ") and "train@ph2-dermoscopy-unet-0" in lines[0]
    )


@pytest.mark.parametrize(
    ("change", "named"),
    [({"seed": 1}, "seed"), ({"options": {"width_mult": 0.25}}, "options.width_mult"), ({"scale": "cpu"}, "scale")],
)
def test_a_checkpoint_of_another_run_is_refused(tmp_path, change, named):
    run = make_run(tmp_path)
    save_checkpoint(run, **change)
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "x.png", (32, 32, 3))
    message = run_cli(run.dir, images, tmp_path / "out", "--checkpoint", run.checkpoint, "--prepared", run.prepared)
    assert "belongs to another run" in message and f"{named}: checkpoint" in message
    assert not any((tmp_path / "out").glob("*.png"))


def test_a_checkpoint_without_identity_or_of_another_epoch_is_refused(tmp_path):
    run = make_run(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "x.png", (32, 32, 3))
    args = (run.dir, images, tmp_path / "out", "--checkpoint", run.checkpoint, "--prepared", run.prepared)
    torch.save({"best_state": run.model.state_dict()}, run.checkpoint)
    assert "records no run identity" in run_cli(*args)
    torch.save(
        {"best_state": run.model.state_dict(), "identity": run.identity.to_dict(), "best_epoch": 2}, run.checkpoint
    )
    assert "selected epoch is 2" in run_cli(*args)


def test_missing_or_other_prepared_data_is_refused(tmp_path):
    run = make_run(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "x.png", (32, 32, 3))
    args = (run.dir, images, tmp_path / "out", "--checkpoint", run.checkpoint)
    message = run_cli(*args, "--prepared", tmp_path / "nowhere")
    assert "train_images.npy" in message and "dvc repro prepare@ph2-dermoscopy" in message
    np.save(run.prepared / "train_images.npy", np.full((4, 32, 32, 3), 9, dtype=np.uint8))
    message = run_cli(*args, "--prepared", run.prepared)
    assert "not the prepared data" in message and "train_images.npy" in message


def test_input_problems_are_refused_before_any_work(tmp_path):
    run = make_run(tmp_path)
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    common = ("--checkpoint", run.checkpoint, "--prepared", run.prepared)
    assert "holds no metrics.json" in run_cli(tmp_path, images, out, *common)
    assert "no images" in run_cli(run.dir, images, out, *common)
    (images / "notes.txt").write_text("not an image")
    assert "no images" in run_cli(run.dir, images, out, *common)
    write_image(images / "good.png", (32, 32, 3))
    (images / "broken.png").write_bytes(b"not a png")
    message = run_cli(run.dir, images, out, *common)
    assert "broken.png" in message and "good.png" not in message
    assert not out.exists()
    (images / "broken.png").unlink()
    write_image(images / "good.jpg", (32, 32, 3))
    assert "two images with one stem" in run_cli(run.dir, images, out, *common)
    (images / "good.jpg").unlink()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert "OUT_DIR cannot be written" in run_cli(run.dir, images, blocker, *common)
    assert "OUT_DIR cannot be written" in run_cli(run.dir, images, blocker / "sub", *common)


def test_volumetric_runs_are_refused(tmp_path):
    run = make_run(tmp_path)
    metrics = json.loads((run.dir / "metrics.json").read_text())
    metrics["dataset"] = "msd-task04-hippocampus"
    metrics["dataset_definition"] = dataset_definition("msd-task04-hippocampus", {})
    (run.dir / "metrics.json").write_text(json.dumps(metrics))
    images = tmp_path / "images"
    images.mkdir()
    message = run_cli(run.dir, images, tmp_path / "out")
    assert "volumes are not supported yet" in message
