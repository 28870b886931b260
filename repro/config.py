"""``params.yaml`` -> typed settings: scale presets, model variants, the study grid.

Notebooks and DVC stages read their settings through here, so a typo in ``params.yaml`` fails with the list of
valid names instead of silently using a default.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from repro.data.registry import REPO_ROOT, list_datasets, register_folder_dataset

PARAMS_FILE = REPO_ROOT / "params.yaml"


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
        epochs: training epochs (of a dataset that ``train_steps`` does not list).
        train_steps: dataset name -> the run's length in optimizer steps, rounded up to whole epochs; the
            ``cpu`` preset sets it per dataset from pilot learning curves (README, "Training length").
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
    train_steps: dict[str, int]
    batch_size: int
    lr: float
    weight_decay: float
    max_train_images: int | None
    max_eval_images: int | None


# Keys of a ``models.<name>`` entry that set how the variant trains rather than how its network is built.
TRAINING_OPTIONS = ("l2_kernels",)


@dataclass(frozen=True)
class ModelVariant:
    """A named model of the study: an architecture plus its options (``models.<name>`` in params.yaml).

    Args:
        name: the variant's name.
        arch: a registry name of ``repro.models``.
        options: ``create_model`` options (``width_mult`` among them fixes the variant's own width).
        l2_kernels: the official UNet++ (2018) code's L2 on conv kernels (see ``repro.train.TrainSettings``).
    """

    name: str
    arch: str
    options: dict[str, Any]
    l2_kernels: float = 0.0


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
    return ModelVariant(name=name, arch=options.pop("arch"), options=options, **training)
