"""One cell of the study: (dataset, model variant, seed) at a scale, from prepared data to written results.

``notebooks/train.ipynb`` calls these pieces one cell at a time so that the executed notebook reads as a report.

Outputs in ``out_dir`` (``repro.training.record``): ``metrics.json`` (test metrics of the selected epoch, the run's
identity: see ``repro.training.identity``), ``per_image.csv``, ``history.csv``. Checkpoints go to
``checkpoints/<dataset>/<model>/seed<k>/<scale>/`` (git-ignored), which no later stage needs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from repro.complexity import count_flops, count_parameters
from repro.config import (
    DatasetTraining,
    ModelVariant,
    ScalePreset,
    dataset_training,
    load_params,
    model_variant,
    scale_preset,
)
from repro.data.loading import PreparedData, Split, load_prepared
from repro.data.prepare import PROCESSED_DIR, prepare_dataset
from repro.data.registry import REPO_ROOT, resolve_data_root
from repro.models import create_variant
from repro.training.device import describe_device, normalise_device, resolve_device, seed_everything, set_threads
from repro.training.identity import (
    PARAMS_FILE,
    RunIdentity,
    code_files,
    data_files,
    dataset_definition,
    git_commit,
)
from repro.training.inference import predict_logits
from repro.training.metrics import keras_mean_iou, two_class_miou
from repro.training.trainer import Trainer, TrainSettings, epochs_for_steps

CHECKPOINT_DIR = REPO_ROOT / "checkpoints"


@dataclass
class RunConfig:
    """Every resolved setting of one run."""

    dataset: str
    variant: ModelVariant
    seed: int
    scale: ScalePreset
    dataset_settings: DatasetTraining
    data_root: str | None
    out_dir: Path
    threads: int
    checkpoint_dir: Path
    device: torch.device

    @property
    def model_options(self) -> dict[str, Any]:
        """The variant's options with the scale's width factor (unless the variant fixes its own)."""
        return {"width_mult": self.scale.width_mult, **self.variant.options}

    @property
    def options(self) -> dict[str, Any]:
        """What the variant sets: the network's options, and its training options where it sets any."""
        training = {"l2_kernels": self.variant.l2_kernels} if self.variant.l2_kernels else {}
        if self.variant.paper_metric:
            training["paper_metric"] = self.variant.paper_metric
        return {**self.model_options, **training}

    @property
    def data_folder(self) -> Path:
        """The prepared dataset the run trains on (``dvc repro prepare`` writes it)."""
        return PROCESSED_DIR / self.scale.name / self.dataset

    def describe(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "model": self.variant.name,
            "arch": self.variant.arch,
            "options": self.options,
            "seed": self.seed,
            "scale": self.scale.name,
            "scale_settings": {k: v for k, v in vars(self.scale).items() if k != "name"},
            "dataset_settings": self.dataset_settings.settings(),
            "data_root": self.data_root,
            "out_dir": str(self.out_dir),
            "threads": self.threads,
            "checkpoint_dir": str(self.checkpoint_dir),
            "device": describe_device(self.device),
        }


def identify(config: RunConfig, data_folder: Path | str, repo_root: Path | str = REPO_ROOT) -> RunIdentity:
    """The identity of the run ``config`` (see :func:`repro.training.run.resolve`) on the prepared folder
    ``data_folder``.

    Args:
        config: the resolved run.
        data_folder: the prepared dataset the run trains on (prepare it first).
        repo_root: the repository whose ``dvc.yaml``, ``params.yaml``, code and git state are read.
    """
    repo_root = Path(repo_root)
    scale = config.scale
    params = load_params(repo_root / PARAMS_FILE)
    return RunIdentity(
        dataset=config.dataset,
        dataset_definition=dataset_definition(config.dataset, params),
        model=config.variant.name,
        arch=config.variant.arch,
        options=config.options,
        seed=config.seed,
        scale=scale.name,
        scale_settings={k: v for k, v in vars(scale).items() if k != "name"},
        dataset_settings=config.dataset_settings.settings(),
        data_files=data_files(data_folder),
        code_files=code_files(repo_root),
        data_root=str(resolve_data_root(config.data_root)),
        git_commit=git_commit(repo_root, config.dataset, config.variant.name, config.seed, scale.name),
    )


def resolve(
    dataset: str,
    model: str,
    seed: int,
    scale: str,
    data_root: str | None,
    out_dir: str | Path,
    threads: int | None,
    checkpoint_dir: str | Path | None = None,
    device: str | None = None,
) -> RunConfig:
    """Resolve notebook parameters against params.yaml (unknown names fail with the valid ones listed).

    The checkpoint folder defaults to ``checkpoints/<dataset>/<model>/seed<k>/<scale>/``; the device to
    :func:`repro.training.device.resolve_device` of ``device``.
    """
    params = load_params()
    scale_settings = scale_preset(scale, params)
    return RunConfig(
        dataset=dataset,
        variant=model_variant(model, params),
        seed=int(seed),
        scale=scale_settings,
        dataset_settings=dataset_training(dataset, params),
        data_root=data_root or params.get("data_root"),
        out_dir=Path(out_dir),
        threads=set_threads(threads),
        checkpoint_dir=Path(checkpoint_dir or CHECKPOINT_DIR / dataset / model / f"seed{seed}" / scale_settings.name),
        device=normalise_device(resolve_device(device)),
    )


def load_data(config: RunConfig) -> PreparedData:
    """The prepared dataset (DVC's prepare stage output), preparing it first when it is missing."""
    folder = config.data_folder
    if not (folder / "meta.json").exists():
        prepare_dataset(config.dataset, config.scale, folder, config.data_root)
    return load_prepared(folder, config.scale.max_train_images, config.scale.max_eval_images)


def identity(config: RunConfig) -> RunIdentity:
    """The run's identity (call after :func:`load_data`, which may prepare the data first)."""
    return identify(config, config.data_folder)


def build(config: RunConfig, data: PreparedData) -> tuple[torch.nn.Module, torch.Generator]:
    """Seed everything, then create the model (so its initialisation depends on the seed alone)."""
    generator = seed_everything(config.seed)
    model = create_variant(
        config.variant.arch,
        config.variant.options,
        width_mult=config.scale.width_mult,
        in_channels=data.in_channels,
        num_classes=data.num_classes,
    )
    return model, generator


def input_size(config: RunConfig, data: PreparedData) -> int | tuple[int, ...]:
    """What the network sees in training: the scale's image side, a patch side (large images) or the volume."""
    if data.volumetric:
        return tuple(data.train.images.shape[2:])
    return config.scale.patch_size if data.large_images else config.scale.image_size


def model_summary(model: torch.nn.Module, data: PreparedData, input_size: int | tuple[int, ...]) -> dict[str, float]:
    """Parameters and FLOPs (2 x MACs, as the papers count) for one image (or volume) of the training input size."""
    return {
        "params": count_parameters(model),
        "flops": count_flops(model, input_size, data.in_channels),
        "input_size": input_size,
    }


def train_epochs(config: RunConfig, data: PreparedData) -> int:
    """The run's epochs: enough for the dataset's length at the scale (``training.<dataset>.train_steps``), else the
    scale's ``epochs``."""
    steps = config.dataset_settings.steps(config.scale.name)
    if steps is None:
        return config.scale.epochs
    per_image = config.scale.patches_per_image if data.large_images else 1
    return epochs_for_steps(steps, len(data.train) * per_image, config.scale.batch_size)


def train_settings(config: RunConfig, data: PreparedData) -> TrainSettings:
    scale = config.scale
    return TrainSettings(
        epochs=train_epochs(config, data),
        batch_size=scale.batch_size,
        lr=scale.lr,
        weight_decay=scale.weight_decay,
        patch_size=scale.patch_size,
        patches_per_image=scale.patches_per_image,
        l2_kernels=config.variant.l2_kernels,
        eval_every=config.dataset_settings.eval_every,
    )


def make_trainer(
    config: RunConfig, model: torch.nn.Module, data: PreparedData, generator: torch.Generator, run: RunIdentity
) -> Trainer:
    return Trainer(
        model, data, train_settings(config, data), config.seed, generator, config.checkpoint_dir, config.device, run
    )


def print_progress(config: RunConfig, settings: TrainSettings) -> Callable[[dict], None]:
    """An ``on_epoch`` callback printing one line per epoch: training and validation seconds, and the time left
    (papermill's ``--log-output`` streams it to the terminal and the run's log). A first line is printed at once,
    so a run shows it has started before its first epoch ends."""
    name = f"{config.dataset}/{config.variant.name}/seed{config.seed} [{config.scale.name}]"
    every = f"every {settings.eval_every} epochs and after the last" if settings.eval_every > 1 else "after every epoch"
    print(f"{name}: training {settings.epochs} epochs, validating {every}", file=sys.stdout, flush=True)
    started, first_epoch = time.perf_counter(), None

    def on_epoch(row: dict) -> None:
        nonlocal first_epoch
        first_epoch = first_epoch or row["epoch"]  # a resumed run starts later
        done = row["epoch"] - first_epoch + 1
        left = (time.perf_counter() - started) / done * (settings.epochs - row["epoch"])
        validation = "not validated" if row["val_dice"] != row["val_dice"] else f"val Dice {row['val_dice']:.4f}"
        print(
            f"{name} epoch {row['epoch']}/{settings.epochs}: loss {row['train_loss']:.4f}, {validation} "
            f"(train {row['seconds']:.0f} s, eval {row['eval_seconds']:.0f} s; {_duration(left)} left)",
            file=sys.stdout,
            flush=True,
        )

    return on_epoch


def _duration(seconds: float) -> str:
    """``45 s``, ``12 min`` or ``2 h 05 min``."""
    minutes = round(seconds / 60)
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def evaluate_pruned(trainer: Trainer, data: PreparedData, input_size: int | tuple[int, ...]) -> dict[str, dict]:
    """Test metrics and FLOPs of a deep-supervision model at each of its eval modes (UNet++: the average of
    the heads, and the sub-networks pruned to L1..L4); the model's own mode is restored afterwards."""
    model = trainer.model
    chosen = model.ds_mode
    results = {}
    for mode in model.ds_modes:
        model.ds_mode = mode
        results[mode] = {
            **trainer.evaluate(data.test).summary,
            "flops": count_flops(model, input_size, data.in_channels),
        }
    model.ds_mode = chosen
    return results


def paper_metrics(config: RunConfig, trainer: Trainer, split: Split) -> dict[str, float]:
    """The test metrics in the paper's own definition that the variant asks for (``paper_metric``); none otherwise.

    ``keras_mean_iou``: the UNet++ paper's IoU (the official Keras ``mean_iou``: two-class mIoU averaged over the
    thresholds 0.5-0.95, over the whole split as one batch), and beside it the two-class mIoU at 0.5 on the same
    pixels (``keras_miou_at_05``). Binary tasks only: the metric scores sigmoid probabilities.
    """
    if config.variant.paper_metric is None:
        return {}
    if trainer.data.num_classes != 2:
        raise ValueError(f"{config.variant.name}: keras_mean_iou scores binary tasks; {config.dataset} is not one")
    images = split.images.to(trainer.device).contiguous(memory_format=trainer.memory_format)
    logits = predict_logits(trainer.model, images, trainer.settings.batch_size, trainer.tile)
    probabilities = torch.sigmoid(logits[:, 0]).cpu()
    masks = split.masks.cpu()
    if split.valid is not None:  # pixels outside the region of interest count as background in both
        inside = split.valid.cpu()
        probabilities, masks = torch.where(inside, probabilities, 0.0), torch.where(inside, masks, 0)
    return {
        "keras_mean_iou": keras_mean_iou(probabilities, masks),
        "keras_miou_at_05": two_class_miou(probabilities, masks),
    }


def describe_resumptions(trainer: Trainer) -> str:
    """One line for the executed notebook: trained in one go, or resumed from its checkpoint after which epochs
    (a resumed run ends where an uninterrupted one would: the checkpoint holds every state)."""
    if not trainer.resumed_after:
        return f"trained in one go, epochs 1-{trainer.settings.epochs}"
    epochs = ", ".join(str(epoch) for epoch in trainer.resumed_after)
    times = "once" if len(trainer.resumed_after) == 1 else f"{len(trainer.resumed_after)} times"
    return (
        f"resumed {times} from its checkpoint ({trainer.checkpoint}), after epoch {epochs} of "
        f"{trainer.settings.epochs}; the checkpoint holds every state, so the result is an uninterrupted run's"
    )
