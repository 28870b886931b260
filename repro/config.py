"""``params.yaml`` -> typed settings: scale presets, model variants, the study grid.

Notebooks and DVC stages read their settings through here, so a typo in ``params.yaml`` fails with the list of
valid names instead of silently using a default.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from repro.data.registry import REPO_ROOT, list_datasets, register_folder_dataset

PARAMS_FILE = REPO_ROOT / "params.yaml"
# The variable that sets a run's torch threads: read by the run (``repro.training.device.set_threads``), set by the
# runner for each run it starts (``repro.runner.stage_task``). Named here, the one module both import that loads no
# torch: every Dask worker imports the runner's guard, and torch would cost each of them its memory and start-up.
THREADS_ENV = "UNET_REPRO_THREADS"


def load_params(path: Path | str | None = None) -> dict[str, Any]:
    """Read ``params.yaml`` (and register any ``prepare.custom_datasets`` it declares)."""
    params = yaml.safe_load(Path(path or PARAMS_FILE).read_text())
    for name, config in (params.get("prepare", {}).get("custom_datasets") or {}).items():
        if name not in list_datasets():
            register_folder_dataset(name, config)
    return params


@dataclass(frozen=True)
class ScalePreset:
    """One scale of the study (``scales.<name>`` in params.yaml).

    Args:
        name: preset name (smoke, cpu, paper).
        image_size: side of the square that resized datasets are prepared at.
        large_image_scale: factor applied to large-image datasets (EM, DRIVE), which keep their aspect ratio.
        patch_size: side of the random training patches / sliding-window tiles for large-image datasets.
        patches_per_image: random patches drawn per large training image and epoch.
        width_mult: factor on every network width.
        epochs: training epochs of a dataset whose ``training.<dataset>.train_steps`` lists no length for the
            scale (see :class:`DatasetTraining`).
        batch_size: images per optimizer step.
        lr: Adam learning rate (cosine-annealed to 0).
        weight_decay: Adam weight decay.
        max_train_images: use only the first this-many training images (smoke runs); None = all.
        max_eval_images: likewise for the validation and test splits.
    """

    name: str
    image_size: int
    large_image_scale: float
    patch_size: int
    patches_per_image: int
    width_mult: float
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    max_train_images: int | None
    max_eval_images: int | None


@dataclass(frozen=True)
class DatasetTraining:
    """How one dataset trains (``training.<dataset>`` in params.yaml): a parameter of that dataset's train stages
    only, so adding a dataset or changing one's length leaves every other run up to date.

    Args:
        dataset: the dataset's name.
        train_steps: scale name -> the run's length in optimizer steps, rounded up to whole epochs (chosen from
            pilot learning curves: the selected epoch is not the last, and validation changes by less than 0.005
            over the last five epochs); a scale not listed trains its preset's ``epochs``.
        eval_every: epochs between validations; BatchNorm statistics are re-estimated only before one, and the
            last epoch is always validated. Only validated epochs can be selected.
        batch_size: scale name -> samples per optimizer step for this dataset (volumes: a 3D network's step on a
            batch of the scale's 16 volumes takes a minute on one CPU core); a scale not listed uses its preset's
            ``batch_size``.
    """

    dataset: str
    train_steps: dict[str, int]
    eval_every: int = 1
    batch_size: dict[str, int] = field(default_factory=dict)

    def steps(self, scale: str) -> int | None:
        """The length in optimizer steps at ``scale``; None: the scale's ``epochs``."""
        return self.train_steps.get(scale)

    def batch(self, scale: ScalePreset) -> int:
        """Samples per optimizer step at ``scale``: the dataset's own, else the preset's."""
        return self.batch_size.get(scale.name, scale.batch_size)

    def settings(self) -> dict[str, Any]:
        """The entry as params.yaml gives it (recorded in a run's identity; ``batch_size`` only where it is set, so
        that the identities of runs recorded before the key existed stay theirs)."""
        settings: dict[str, Any] = {"train_steps": dict(self.train_steps), "eval_every": self.eval_every}
        return settings | ({"batch_size": dict(self.batch_size)} if self.batch_size else {})


def dataset_training(name: str, params: dict[str, Any] | None = None) -> DatasetTraining:
    """The training settings of dataset ``name`` (``training.<name>`` in params.yaml).

    Raises:
        ValueError: the entry is missing (with the line to add) or has unknown or invalid keys.
    """
    params = params or load_params()
    entries = params.get("training") or {}
    if name not in entries:
        raise ValueError(
            f"params.yaml has no training settings for dataset '{name}': add under `training:` the line "
            f"`{name}: {{train_steps: {{}}, eval_every: 1}}` (train_steps: scale -> optimizer steps, from a pilot; "
            'docs/datasets.md, "Adding a dataset")'
        )
    entry = dict(entries[name] or {})
    expected = {f.name for f in fields(DatasetTraining)} - {"dataset"}
    unknown = sorted(set(entry) - expected)
    if unknown or "train_steps" not in entry:
        raise ValueError(
            f"training.{name} in params.yaml: unknown keys {unknown}, valid keys {sorted(expected)} "
            "(train_steps is required, {} for none)"
        )
    steps = entry["train_steps"] or {}
    eval_every = entry.get("eval_every", 1)
    batch_size = entry.get("batch_size") or {}

    def bad(values: Any) -> bool:
        return not isinstance(values, dict) or any(not isinstance(v, int) or v < 1 for v in values.values())

    if bad(steps) or bad(batch_size) or not isinstance(eval_every, int) or eval_every < 1:
        raise ValueError(
            f"training.{name} in params.yaml: train_steps and batch_size must map scales to positive integers and "
            f"eval_every must be a positive integer (got train_steps {steps}, batch_size {batch_size}, eval_every "
            f"{eval_every!r})"
        )
    return DatasetTraining(dataset=name, train_steps=dict(steps), eval_every=eval_every, batch_size=dict(batch_size))


# Keys of a ``models.<name>`` entry that set how the variant trains or is scored rather than how its network is built.
TRAINING_OPTIONS = ("l2_kernels", "paper_metric")
# Extra test metrics a variant may ask for (``paper_metric``), beside the study's own.
PAPER_METRICS = ("keras_mean_iou",)


@dataclass(frozen=True)
class ModelVariant:
    """A named model of the study: an architecture plus its options (``models.<name>`` in params.yaml).

    Args:
        name: the variant's name.
        arch: a registry name of ``repro.models``.
        options: ``create_model`` options (``width_mult`` among them fixes the variant's own width).
        l2_kernels: the official UNet++ (2018) code's L2 on conv kernels (see ``repro.training.trainer.TrainSettings``).
        paper_metric: also score the test split in a paper's own metric (one of :data:`PAPER_METRICS`:
            ``keras_mean_iou``, the UNet++ paper's; see ``repro.training.metrics.keras_mean_iou``); None: the study's
            metrics only, so no other run's outputs change.
    """

    name: str
    arch: str
    options: dict[str, Any]
    l2_kernels: float = 0.0
    paper_metric: str | None = None


def scale_preset(name: str | None = None, params: dict[str, Any] | None = None) -> ScalePreset:
    """The scale preset ``name`` (default: the ``scale`` chosen in params.yaml)."""
    params = params or load_params()
    name = name or params["scale"]
    presets = params["scales"]
    if name not in presets:
        raise ValueError(f"unknown scale '{name}'; params.yaml defines: {', '.join(presets)}")
    expected = {f.name for f in fields(ScalePreset)} - {"name"}
    given = set(presets[name])
    if given != expected:
        raise ValueError(
            f"scales.{name} in params.yaml: missing {sorted(expected - given)}, unknown {sorted(given - expected)}"
        )
    return ScalePreset(name=name, **presets[name])


def model_variant(name: str, params: dict[str, Any] | None = None) -> ModelVariant:
    """The model variant ``name`` from params.yaml's ``models`` section."""
    params = params or load_params()
    variants = params["models"]
    if name not in variants:
        raise ValueError(f"unknown model variant '{name}'; params.yaml defines: {', '.join(variants)}")
    options = dict(variants[name])
    if "arch" not in options:
        raise ValueError(f"models.{name} in params.yaml has no 'arch'")
    training = {key: options.pop(key) for key in TRAINING_OPTIONS if key in options}
    if training.get("paper_metric", None) not in (None, *PAPER_METRICS):
        raise ValueError(
            f"models.{name}.paper_metric in params.yaml: {training['paper_metric']!r}; valid: {list(PAPER_METRICS)}"
        )
    return ModelVariant(name=name, arch=options.pop("arch"), options=options, **training)
