"""Apply a trained run of the study to a folder of new images and write one mask per image.

    python -m repro.predict RUN_DIR IMAGES_DIR OUT_DIR [--values 255] [--device cuda] [--threads 4]
    python -m repro.predict results/cpu/runs/ph2-dermoscopy/unet/seed0 my_images/ my_masks/

The counterpart of nnU-Net's ``nnUNetv2_predict``: ``RUN_DIR`` is a run's results folder (its ``metrics.json``
says which run it is), ``IMAGES_DIR`` holds the images (PNG, JPEG, TIFF, GIF, BMP; other files are ignored),
``OUT_DIR`` receives ``<stem>.png`` for every image ``<stem>.<ext>``. Each step is the run's own, done by the
project's own functions, so a new image is seen exactly as the run saw its test images:

1. The run: ``RUN_DIR/metrics.json`` holds the run's identity (``repro.training.identity``): dataset and its
   definition (channels, intensity rule, large images or not), model variant, architecture and options, seed,
   scale and its full preset, the md5 of every file of the prepared data. Volumetric runs (NIfTI/HDF5 datasets)
   are refused: volumes are not supported yet.
2. The weights: the run's checkpoint ``checkpoints/<dataset>/<model>/seed<k>/<scale>/last.pt`` (``--checkpoint``
   to name another file). It is git-ignored and stays on the machine that trained the run; where it is missing,
   one line names it and the command that trains the run (``dvc repro train@<dataset>-<model>-<seed>``, or the
   stage of the grid's block that lists it: ``train_ablations@...`` for an ablation). The checkpoint's identity
   must be the run's (every field but the commit and the data root, as a resume compares them: dataset, model,
   arch, options, seed, scale and its settings, data and code hashes) and its selected epoch the run's
   ``best_epoch``; otherwise it is refused. Its ``best_state`` (the best-validation weights,
   BatchNorm statistics re-estimated as in the run's evaluation) is loaded into the network
   ``repro.models.create_variant`` builds, as the run built it: the run's arch and options (the training-only
   options ``l2_kernels`` and ``paper_metric`` left out), with the dataset's input channels and one output channel
   (sigmoid) for two classes, one per class (softmax) otherwise.
3. The normalisation: ``repro.data.loading`` normalises every split by the training split's per-channel mean and
   standard deviation (of values / 255, plus 1e-6), over the first ``max_train_images`` training images of the
   scale. They are recomputed the same way from the prepared ``data/processed/<scale>/<dataset>/train_images.npy``
   (``--prepared`` to name another folder), whose files must have the md5s the run recorded; a missing folder is
   refused with the command that prepares it (``dvc repro prepare@<dataset>``).
4. Each image is read by ``repro.data.readers.read_image`` with the dataset's channels (grey or RGB, converted as
   in training) and intensity rule, then resized as ``repro.data.prepare`` does (``target_size`` and the bilinear
   ``_resize_image``): to the scale's ``image_size`` square, or, for large-image datasets (EM, DRIVE), to its own
   size times the scale's ``large_image_scale``, keeping its aspect ratio.
5. The network predicts with ``repro.training.inference.predict_logits`` in eval mode: the whole image, or for
   large-image datasets overlapping sliding-window tiles of the scale's ``patch_size`` whose logits are averaged
   (the run's own evaluation). ``repro.training.metrics.logits_to_labels`` turns logits into class indices.
6. The label map is resized back to the input's size by nearest neighbour and written as an 8-bit PNG named after
   the input's stem, whatever the input's format: a JPEG input gets a PNG mask (JPEG's lossy compression would
   change the labels), and so does a TIFF, GIF or BMP. Values are class indices (0, 1, 2, ...) or, with
   ``--values 255`` for a binary task, 0 and 255.

Everything that can be checked is checked before any image is predicted: ``RUN_DIR`` without ``metrics.json``,
the checkpoint and the prepared data, an ``IMAGES_DIR`` with no image or one that does not read (every such file
named), two images with one stem, an ``OUT_DIR`` that cannot be written. Each problem ends the command with one
``error:`` line (exit status 1) and no traceback; ``--debug`` (or ``UNET_REPRO_DEBUG=1``) shows the traceback.

Not covered: volumes; a dataset's region of interest (DRIVE's field of view is not known for a new image, so
the whole image is predicted); test-time augmentation or ensembling of seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image

from repro.config import TRAINING_OPTIONS, load_params
from repro.data.loading import channel_statistics, normalise
from repro.data.prepare import PROCESSED_DIR, _resize_image, target_size
from repro.data.readers import DatasetError, read_image
from repro.data.registry import get_dataset
from repro.models import create_variant
from repro.runner.grid import Grid, run_name
from repro.training.device import normalise_device, resolve_device, set_threads
from repro.training.identity import RunIdentity, data_files
from repro.training.inference import predict_logits
from repro.training.metrics import logits_to_labels
from repro.training.run import CHECKPOINT_DIR

DEBUG_ENV = "UNET_REPRO_DEBUG"
# What repro.data.readers.read_image reads (Pillow's formats of the datasets).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp")
# The run's identity fields that must be in metrics.json; the checkpoint's identity is compared on every field.
RUN_FIELDS = ("dataset", "model", "arch", "options", "seed", "scale", "scale_settings")
VALUES = ("index", "255")


class PredictError(RuntimeError):
    """A problem the user can fix; the command line prints its message as one line, without a traceback."""


@dataclass(frozen=True)
class Run:
    """What a run's ``metrics.json`` says about how it sees an image."""

    folder: Path
    metrics: dict[str, Any]
    dataset: str
    model: str
    arch: str
    options: dict[str, Any]
    seed: int
    scale: str
    scale_settings: dict[str, Any]
    class_names: list[str]
    in_channels: int
    intensity: Any
    large_images: bool
    ndim: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def model_options(self) -> dict[str, Any]:
        """The network's options: the recorded ones less those only the training reads."""
        return {k: v for k, v in self.options.items() if k not in TRAINING_OPTIONS}

    @property
    def tile(self) -> int | None:
        """The sliding-window tile of large-image datasets (the scale's patch size), as the Trainer's ``tile``."""
        return int(self.scale_settings["patch_size"]) if self.large_images else None

    @property
    def default_checkpoint(self) -> Path:
        return CHECKPOINT_DIR / self.dataset / self.model / f"seed{self.seed}" / self.scale / "last.pt"

    @property
    def default_prepared(self) -> Path:
        return PROCESSED_DIR / self.scale / self.dataset

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.model}/seed{self.seed} [{self.scale}]"


def shown(path: Path) -> str:
    """``path`` relative to the working directory where it lies below it (shorter to read), else absolute."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load_run(run_dir: Path | str) -> Run:
    """The run of ``run_dir/metrics.json``; refuses a folder without one, a record without the run's identity, and
    a volumetric run."""
    folder = Path(run_dir)
    path = folder / "metrics.json"
    if not path.is_file():
        what = "is not a folder" if not folder.is_dir() else "holds no metrics.json"
        raise PredictError(
            f"{shown(folder)} {what}: RUN_DIR must be a run's results folder, e.g. "
            "results/cpu/runs/ph2-dermoscopy/unet/seed0"
        )
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PredictError(f"{shown(path)}: unreadable ({err})") from None
    missing = [key for key in RUN_FIELDS if key not in metrics]
    if not isinstance(metrics, dict) or missing:
        raise PredictError(f"{shown(path)}: not a run record of the study (missing {', '.join(missing)})")
    definition = metrics.get("dataset_definition")
    if not isinstance(definition, Mapping):  # a record older than the identity: the registry's definition
        spec = get_dataset(metrics["dataset"])
        definition = {
            "class_names": list(spec.class_names),
            "in_channels": spec.in_channels,
            "intensity": spec.intensity,
            "large_images": spec.large_images,
            "ndim": spec.ndim,
        }
    ndim = int(definition.get("ndim", 2))
    if ndim == 3:
        raise PredictError(
            f"{shown(folder)}: run of the volumetric dataset '{metrics['dataset']}' (NIfTI/HDF5 volumes); "
            "repro.predict supports 2D image datasets only, volumes are not supported yet"
        )
    return Run(
        folder=folder,
        metrics=metrics,
        dataset=metrics["dataset"],
        model=metrics["model"],
        arch=metrics["arch"],
        options=dict(metrics["options"]),
        seed=int(metrics["seed"]),
        scale=metrics["scale"],
        scale_settings=dict(metrics["scale_settings"]),
        class_names=list(metrics.get("class_names") or definition["class_names"]),
        in_channels=int(definition["in_channels"]),
        intensity=definition.get("intensity", "bit_depth"),
        large_images=bool(definition.get("large_images", False)),
        ndim=ndim,
    )


def training_command(run: Run) -> str:
    """The command that trains ``run``: the DVC stage of the block of params.yaml's grid that lists it (``train@``
    for the image study; ``train_extra@``, ``train_ablations@`` or ``train_controls@`` for the other image blocks),
    or ``train@`` where the grid lists no such run."""
    try:
        params = load_params()
        runs = Grid.from_params(params).runs()
    except (OSError, ValueError, KeyError, TypeError):  # no readable params.yaml, or one without a study grid
        params, runs = {}, []
    key = (run.dataset, run.model, run.seed)
    stage = next((stage for stage, *listed in runs if tuple(listed) == key), "train")
    command = f"`dvc repro {run_name(stage, run.dataset, run.model, run.seed)}`"
    if params.get("scale") != run.scale:
        command += f" with `scale: {run.scale}` in params.yaml"
    return command


def prepare_command(run: Run) -> str:
    """The command that prepares ``run``'s dataset at its scale."""
    custom = "custom_entry" in (run.metrics.get("dataset_definition") or {})
    stage = "prepare_custom" if custom else "prepare"
    return f"`dvc repro {stage}@{run.dataset}` (or `python -m repro.data.prepare {run.dataset} --scale {run.scale}`)"


def check_checkpoint_exists(run: Run, checkpoint: Path) -> None:
    if not checkpoint.is_file():
        raise PredictError(
            f"no checkpoint {shown(checkpoint)}: the trained weights stay on the machine that trained "
            f"{run.name}; train the run here with {training_command(run)}, or give the file with --checkpoint"
        )


def check_prepared_exists(run: Run, prepared: Path) -> None:
    if not (prepared / "train_images.npy").is_file() or not (prepared / "meta.json").is_file():
        raise PredictError(
            f"no prepared data {shown(prepared / 'train_images.npy')}: the run's normalisation is the mean and "
            f"standard deviation of its training images; prepare them with {prepare_command(run)}, or give the "
            "folder with --prepared"
        )


def list_images(images_dir: Path | str) -> list[Path]:
    """The image files of ``images_dir`` (by suffix, hidden files left out), sorted; refuses none."""
    folder = Path(images_dir)
    if not folder.is_dir():
        raise PredictError(f"{shown(folder)}: IMAGES_DIR is not a folder")
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise PredictError(f"{shown(folder)}: no images ({', '.join(IMAGE_SUFFIXES)}) in IMAGES_DIR")
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            raise PredictError(
                f"{shown(path)} and {stems[path.stem].name}: two images with one stem would both be written to "
                f"{path.stem}.png; rename one"
            )
        stems[path.stem] = path
    return files


def check_images(run: Run, files: list[Path]) -> None:
    """Read every image as the run would; refuse, naming every file that does not read."""
    problems = []
    for path in files:
        try:
            read_image(path, run.in_channels, run.intensity)
        except DatasetError as err:
            problems.append(str(err))
    if problems:
        raise PredictError(f"{len(problems)} of {len(files)} image(s) cannot be read: " + "; ".join(problems))


def check_writable(out_dir: Path | str) -> Path:
    """``out_dir``, created if missing; refuses one that cannot be written (probed with a temporary file)."""
    folder = Path(out_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".repro-predict-probe-"):
            pass
    except OSError as err:
        raise PredictError(f"{shown(folder)}: OUT_DIR cannot be written ({err.strerror or err})") from None
    return folder


def load_weights(run: Run, checkpoint: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's best-validation weights, once its identity is shown to be ``run``'s."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise PredictError(f"{shown(checkpoint)}: unreadable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, Mapping) or not isinstance(state.get("identity"), Mapping):
        raise PredictError(f"{shown(checkpoint)}: records no run identity, so nothing says it is {run.name}'s")
    differences = identity_differences(state["identity"], run.metrics)
    if differences:
        raise PredictError(
            f"{shown(checkpoint)} belongs to another run than {shown(run.folder)}: " + "; ".join(differences)
        )
    best_epoch = run.metrics.get("best_epoch")
    if best_epoch is not None and state.get("best_epoch") != best_epoch:
        raise PredictError(
            f"{shown(checkpoint)}: its selected epoch is {state.get('best_epoch')}, the run's metrics.json "
            f"selected epoch {best_epoch} (a checkpoint of an unfinished or later training of {run.name})"
        )
    if state.get("best_state") is None:
        raise PredictError(f"{shown(checkpoint)}: holds no best-validation weights (no epoch was validated yet)")
    return state["best_state"]


def identity_differences(saved: Mapping[str, Any], metrics: Mapping[str, Any]) -> list[str]:
    """One line per identity field (down to nested keys) that differs between a checkpoint and a run record.

    Every field of :class:`RunIdentity` but those a resume does not compare; a field the record lacks (a record
    older than it) is skipped, one the checkpoint lacks among :data:`RUN_FIELDS` is a difference.
    """
    lines: list[str] = []

    def compare(name: str, a: Any, b: Any) -> None:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for key in sorted(set(a) | set(b), key=str):
                compare(f"{name}.{key}", a.get(key, "(absent)"), b.get(key, "(absent)"))
        elif a != b:
            lines.append(f"{name}: checkpoint {json.dumps(a)}, run {json.dumps(b)}")

    for field in fields(RunIdentity):
        name = field.name
        if name in RunIdentity.NOT_COMPARED or name not in metrics:
            continue
        if name not in saved and name not in RUN_FIELDS:
            continue
        compare(name, saved.get(name, "(absent)"), metrics[name])
    return lines


def normalisation(run: Run, prepared: Path) -> tuple[np.ndarray, np.ndarray]:
    """The training split's per-channel mean and standard deviation, as ``repro.data.loading.load_prepared``
    computes them (float64; it casts them to float32 when it normalises)."""
    recorded = run.metrics.get("data_files")
    if isinstance(recorded, Mapping):
        found = data_files(prepared)
        changed = sorted(k for k in set(found) | set(recorded) if found.get(k) != recorded.get(k))
        if changed:
            raise PredictError(
                f"{shown(prepared)}: not the prepared data {run.name} trained on (md5 differs for "
                f"{', '.join(changed)}); prepare it again with {prepare_command(run)} at the run's code and settings"
            )
    meta = json.loads((prepared / "meta.json").read_text())
    for key, expected in (("dataset", run.dataset), ("in_channels", run.in_channels)):
        if meta.get(key) != expected:
            raise PredictError(f"{shown(prepared)}: meta.json {key} {meta.get(key)!r}, the run's {expected!r}")
    images = np.load(prepared / "train_images.npy")[: run.scale_settings.get("max_train_images")]
    return channel_statistics(images, run.in_channels)


def build_model(run: Run, weights: Mapping[str, torch.Tensor], device: torch.device) -> torch.nn.Module:
    """The run's network with its best-validation weights, on ``device``, in eval mode."""
    model = create_variant(
        run.arch,
        run.model_options,
        width_mult=run.scale_settings["width_mult"],
        in_channels=run.in_channels,
        num_classes=run.num_classes,
    )
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise PredictError(f"the checkpoint's weights do not fit {run.arch} {run.model_options}: {first}") from None
    return model.to(device).eval()


def preprocess(run: Run, image: np.ndarray) -> np.ndarray:
    """An image as read (uint8 (H, W, C)) resized as ``repro.data.prepare`` prepares the run's dataset."""
    spec = SimpleNamespace(large_images=run.large_images)
    scale = SimpleNamespace(**run.scale_settings)
    return _resize_image(image, target_size(spec, image.shape[:2], scale))


def to_input(prepared_image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """(1, C, H, W) float32, normalised as ``repro.data.loading.load_prepared`` normalises a prepared image."""
    return torch.from_numpy(np.ascontiguousarray(normalise(prepared_image, mean, std).transpose(2, 0, 1)[None]))


def predict_image(
    run: Run, model: torch.nn.Module, path: Path, mean: np.ndarray, std: np.ndarray, device: torch.device
) -> np.ndarray:
    """Class indices (uint8, the input's H x W) for the image file ``path``."""
    image = read_image(path, run.in_channels, run.intensity)
    inputs = to_input(preprocess(run, image), mean, std).to(device)
    try:
        logits = predict_logits(model, inputs, 1, run.tile)
    except RuntimeError as err:
        raise PredictError(
            f"{shown(path)}: {run.arch} cannot predict an input of {inputs.shape[-1]}x{inputs.shape[-2]} (W x H) "
            f"pixels ({str(err).splitlines()[0]})"
        ) from None
    labels = logits_to_labels(logits)[0].cpu().numpy().astype(np.uint8)
    height, width = image.shape[:2]
    if labels.shape != (height, width):
        labels = np.asarray(Image.fromarray(labels).resize((width, height), Image.NEAREST))
    return labels


def predict(
    run_dir: Path | str,
    images_dir: Path | str,
    out_dir: Path | str,
    values: str = "index",
    device: str | None = None,
    checkpoint: Path | str | None = None,
    prepared: Path | str | None = None,
) -> list[Path]:
    """Write a mask for every image of ``images_dir`` into ``out_dir`` (see the module docstring); returns them."""
    if values not in VALUES:
        raise PredictError(f"--values {values}: expected one of {', '.join(VALUES)}")
    run = load_run(run_dir)
    if values == "255" and run.num_classes != 2:
        raise PredictError(
            f"--values 255 is for binary tasks; {run.dataset} has {run.num_classes} classes "
            f"({', '.join(run.class_names)}): leave it out to write class indices"
        )
    checkpoint = Path(checkpoint) if checkpoint else run.default_checkpoint
    prepared = Path(prepared) if prepared else run.default_prepared
    check_checkpoint_exists(run, checkpoint)
    check_prepared_exists(run, prepared)
    files = list_images(images_dir)
    check_images(run, files)
    out = check_writable(out_dir)
    weights = load_weights(run, checkpoint)
    mean, std = normalisation(run, prepared)
    target = normalise_device(resolve_device(device))
    model = build_model(run, weights, target)
    scale = 255 if values == "255" else 1
    written = []
    for path in files:
        labels = predict_image(run, model, path, mean, std, target)
        mask = out / f"{path.stem}.png"
        Image.fromarray((labels * scale).astype(np.uint8), mode="L").save(mask)
        written.append(mask)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m repro.predict",
        description=__doc__.split("\n\n")[0],
        epilog="See the module's docstring (python -c 'import repro.predict; help(repro.predict)') for every step.",
    )
    parser.add_argument("run_dir", type=Path, help="a run's results folder (holds metrics.json)")
    parser.add_argument("images_dir", type=Path, help="folder of images (PNG, JPEG, TIFF, GIF, BMP)")
    parser.add_argument("out_dir", type=Path, help="folder for the masks, <stem>.png (created if missing)")
    parser.add_argument(
        "--values", choices=VALUES, default="index", help="mask values: class indices (default) or 0/255 (binary)"
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: $UNET_REPRO_DEVICE, else a GPU if any)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: $UNET_REPRO_THREADS, else one per core)")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="the run's checkpoint (default: checkpoints/<dataset>/<model>/seed<k>/<scale>/last.pt)",
    )
    parser.add_argument(
        "--prepared", type=Path, help="the run's prepared data folder (default: data/processed/<scale>/<dataset>)"
    )
    parser.add_argument("--debug", action="store_true", help=f"show the traceback of an error (also: {DEBUG_ENV}=1)")
    args = parser.parse_args(argv)
    try:
        set_threads(args.threads)
        written = predict(
            args.run_dir, args.images_dir, args.out_dir, args.values, args.device, args.checkpoint, args.prepared
        )
    except (PredictError, DatasetError, ValueError, OSError, RuntimeError) as err:
        if args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        sys.exit(f"error: {' '.join(str(err).split())}")
    print(f"wrote {len(written)} mask(s) to {shown(Path(args.out_dir))}")


if __name__ == "__main__":
    main()
