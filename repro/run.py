"""One cell of the study: (dataset, model variant, seed) at a scale, from prepared data to written results.

``notebooks/train.ipynb`` calls these pieces one cell at a time so that the executed notebook reads as a report;
:func:`run` chains them for scripts and tests.

Outputs in ``out_dir``: ``metrics.json`` (test metrics of the selected epoch, the run's identity: see
``repro.run_identity``), ``per_image.csv``, ``history.csv``. Checkpoints go to
``checkpoints/<dataset>/<model>/seed<k>/<scale>/`` (git-ignored), which no later stage needs.
"""

from __future__ import annotations

import csv
import json
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from repro.complexity import count_flops, count_parameters
from repro.config import ModelVariant, ScalePreset, load_params, model_variant, scale_preset
from repro.data.prepare import PROCESSED_DIR, prepare_dataset
from repro.data.registry import REPO_ROOT
from repro.models import create_model
from repro.run_identity import RunIdentity, identify, normalise_device
from repro.train import (
    PreparedData,
    Trainer,
    TrainSettings,
    describe_device,
    epochs_for_steps,
    load_prepared,
    resolve_device,
    seed_everything,
    set_threads,
)

CHECKPOINT_DIR = REPO_ROOT / "checkpoints"


@dataclass
class RunConfig:
    """Every resolved setting of one run."""

    dataset: str
    variant: ModelVariant
    seed: int
    scale: ScalePreset
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
            "data_root": self.data_root,
            "out_dir": str(self.out_dir),
            "threads": self.threads,
            "checkpoint_dir": str(self.checkpoint_dir),
            "device": describe_device(self.device),
        }


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
    :func:`repro.train.resolve_device` of ``device``.
    """
    params = load_params()
    scale_settings = scale_preset(scale, params)
    return RunConfig(
        dataset=dataset,
        variant=model_variant(model, params),
        seed=int(seed),
        scale=scale_settings,
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
    model = create_model(
        config.variant.arch,
        in_channels=data.in_channels,
        num_classes=data.out_channels,
        **config.model_options,
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
    """The run's epochs: the scale's ``epochs``, or enough epochs for its ``train_steps`` entry of the dataset."""
    steps = config.scale.train_steps.get(config.dataset)
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
    )


def make_trainer(
    config: RunConfig, model: torch.nn.Module, data: PreparedData, generator: torch.Generator, run: RunIdentity
) -> Trainer:
    return Trainer(
        model, data, train_settings(config, data), config.seed, generator, config.checkpoint_dir, config.device, run
    )


def print_progress(config: RunConfig, epochs: int) -> Callable[[dict], None]:
    """An ``on_epoch`` callback printing one line per epoch (papermill's ``--log-output`` streams it to the
    terminal and the run's log)."""
    name = f"{config.dataset}/{config.variant.name}/seed{config.seed} [{config.scale.name}]"

    def on_epoch(row: dict) -> None:
        print(
            f"{name} epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.4f}, val Dice {row['val_dice']:.4f} "
            f"({row['seconds']:.0f} s)",
            file=sys.stdout,
            flush=True,
        )

    return on_epoch


def is_deeply_supervised(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "deep_supervision", False))


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


def versions() -> dict[str, str]:
    import numpy
    import scipy

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
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


def write_outputs(
    config: RunConfig,
    trainer: Trainer,
    data: PreparedData,
    summary: dict[str, float],
    test: dict,
    per_image: list[dict],
    test_pruned: dict[str, dict] | None,
    run: RunIdentity,
) -> dict:
    """Write metrics.json, per_image.csv and history.csv to the run's out_dir; return the metrics.

    ``run`` (the run's identity) is recorded whole: its data and code hashes, data root, dataset definition and
    git commit (``+dirty`` when a dependency of the run differs from it).
    """
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    best = trainer.history[trainer.best_epoch - 1]
    metrics = {
        **{k: v for k, v in config.describe().items() if k not in ("out_dir", "data_root", "checkpoint_dir")},
        **run.to_dict(),
        "class_names": data.class_names,
        "test": test,
        "val": {"dice": best["val_dice"], "iou": best["val_iou"]},
        "best_epoch": trainer.best_epoch,
        "epochs": trainer.settings.epochs,
        "optimizer_steps": trainer.optimizer_steps,
        "n_images": {split: len(getattr(data, split)) for split in ("train", "val", "test")},
        "params": summary["params"],
        "flops": summary["flops"],
        "image_size": summary["input_size"],
        "train_seconds": round(trainer.train_seconds, 1),
        "images_per_second": round(trainer.images_per_second, 2),
        "resumed_after_epochs": trainer.resumed_after,
        "versions": versions(),
    }
    if test_pruned:
        metrics["test_pruned"] = test_pruned
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    write_csv(out / "per_image.csv", per_image)
    write_csv(out / "history.csv", trainer.history)
    return metrics


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` (dicts with the same keys) as a CSV file with a header."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
