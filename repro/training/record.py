"""A run's record: ``metrics.json``, ``per_image.csv`` and ``history.csv`` in its output folder.

One schema (:data:`RECORD_FIELDS`: the keys every run's ``metrics.json`` holds, and their types) and one writer
(:func:`write_record`) serve every kind of run: the study's own 2D and 3D networks (:func:`write_outputs`) and
nnU-Net (``repro.nnunet.write_outputs``). The aggregate reads nothing else. A run records its code (``code_files``
or ``git_commit``), its library versions (:func:`versions`) and its machine (``repro.training.device.machine``):
the same seed gives the same numbers on one machine, not across CPUs with other instruction sets.
"""

from __future__ import annotations

import csv
import json
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from repro.data.loading import PreparedData
from repro.training.device import machine
from repro.training.identity import RunIdentity
from repro.training.trainer import EvalResult, Trainer

if TYPE_CHECKING:
    from repro.training.run import RunConfig

# Every run's metrics.json holds these keys, of these types (others may follow: a run's identity, nnU-Net's plan).
RECORD_FIELDS: dict[str, type | tuple[type, ...]] = {
    "dataset": str,
    "model": str,
    "arch": str,
    "options": dict,
    "seed": int,
    "scale": str,
    "threads": int,
    "device": str,
    "code_files": dict,
    "git_commit": str,
    "class_names": list,
    "test": dict,
    "val": dict,
    "best_epoch": int,
    "epochs": int,
    "optimizer_steps": int,
    "n_images": dict,
    "params": int,
    "flops": (int, float),
    "image_size": (int, list, tuple),
    "train_seconds": (int, float),
    "images_per_second": (int, float),
    "versions": dict,
}


class RecordError(ValueError):
    """A run's metrics do not follow the record's schema."""


def check_record(metrics: Mapping[str, Any], where: Path | str) -> None:
    """Raise :class:`RecordError` naming ``where`` and every missing or mistyped key of :data:`RECORD_FIELDS`."""
    problems = [f"{key} missing" for key in RECORD_FIELDS if key not in metrics]
    problems += [
        f"{key} is {type(metrics[key]).__name__}"
        for key, kind in RECORD_FIELDS.items()
        if key in metrics and (not isinstance(metrics[key], kind) or isinstance(metrics[key], bool))
    ]
    if problems:
        raise RecordError(f"{where}: not a run record: {'; '.join(problems)}")


def write_record(
    out_dir: Path | str, metrics: dict[str, Any], per_image: Sequence[Mapping], history: Sequence[Mapping]
) -> dict[str, Any]:
    """Check ``metrics`` against the schema, then write the three files into ``out_dir``; return the metrics."""
    out = Path(out_dir)
    check_record(metrics, out / "metrics.json")
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    write_csv(out / "per_image.csv", per_image)
    write_csv(out / "history.csv", history)
    return metrics


def versions() -> dict[str, str]:
    """The library versions a run computed with."""
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


def write_outputs(
    config: RunConfig,
    trainer: Trainer,
    data: PreparedData,
    summary: dict[str, float],
    test: dict,
    per_image: list[dict],
    test_pruned: dict[str, dict] | None,
    run: RunIdentity,
    history: Sequence[Mapping] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write metrics.json, per_image.csv and history.csv to the run's out_dir; return the metrics.

    ``run`` (the run's identity) is recorded whole: its data and code hashes, data root, dataset definition and
    git commit (``+dirty`` when a dependency of the run differs from it).

    Args:
        history: the history to record, when not the trainer's own (one domain's view of a universal run's).
        extra: further keys, after the rest (a universal run's ``domains``, and ``dataset``: its domain's name).
    """
    history = trainer.history if history is None else history
    best = history[trainer.best_epoch - 1]
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
        "eval_seconds": round(trainer.eval_seconds, 1),
        "images_per_second": round(trainer.images_per_second, 2),
        "resumed_after_epochs": trainer.resumed_after,
        "versions": versions(),
        "machine": machine(config.device),
    }
    if test_pruned:
        metrics["test_pruned"] = test_pruned
    if trainer.resumed_from_code:  # resumed from checkpoints of earlier, number-equivalent training code
        metrics["resumed_from_code"] = trainer.resumed_from_code
    metrics |= extra or {}
    return write_record(config.out_dir, metrics, per_image, history)


def write_domain_outputs(
    config: RunConfig, trainer: Trainer, domain: int, summary: dict[str, float], test: EvalResult, run: RunIdentity
) -> dict[str, Any]:
    """Write a universal run's record of one domain into that domain's ``out_dir``: the record a one-domain run of
    the dataset writes (its test split, its validation scores at the selected epoch as ``val_dice``/``val_iou``
    of the history, the network's size at its input: ``summary``), plus ``domains`` (every domain of the run, in
    order), ``domain`` (this one's index) and ``params_split`` (the parameters every domain shares, each
    domain's own, and the paper's standard-convolution independent models': ``summary``'s). The identity
    (``dataset_definition``, ``data_files``, ...) is the whole run's; timings and steps too."""
    data = trainer.domains[domain]
    history = [
        row | {"val_dice": row[f"val_dice@{data.name}"], "val_iou": row[f"val_iou@{data.name}"]}
        for row in trainer.history
    ]
    extra = {
        "dataset": data.name,
        "domains": [d.name for d in trainer.domains],
        "domain": domain,
        "params_split": summary["params_split"],
    }
    return write_outputs(config, trainer, data, summary, test.summary, test.per_image, None, run, history, extra)


def write_csv(path: Path, rows: Sequence[Mapping]) -> None:
    """Write ``rows`` (dicts with the same keys) as a CSV file with a header."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
