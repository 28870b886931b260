"""One :class:`DatasetSpec` per dataset: where its files lie, how to read them, how masks become classes.

A new dataset is one :func:`register` call (see README, "Adding a dataset"), or, for a plain folder of images
and a folder of masks, an entry under ``prepare.custom_datasets`` in ``params.yaml``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from repro.data.readers import DatasetError

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_ROOT_ENV = "UNET_REPRO_DATA_ROOT"
DEFAULT_DATA_ROOT = "../shared/datasets"


@dataclass(frozen=True)
class Sample:
    """One image/mask pair as found on disk.

    Args:
        id: identifier, unique within the dataset (file stem, or a prefixed stem).
        image: image file.
        mask: ground-truth mask file.
        valid: optional region-of-interest mask (e.g. DRIVE's field of view); pixels outside are ignored.
        subset: the official subset the pair belongs to ("train"/"test"), or None where none is given.
    """

    id: str
    image: Path
    mask: Path
    valid: Path | None = None
    subset: str | None = None


@dataclass(frozen=True)
class ThresholdMask:
    """Masks with noisy or interpolated values: class 1 where the value is above ``threshold``.

    Args:
        threshold: raw values strictly above it are foreground.
    """

    threshold: int = 127

    def to_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        return (raw > self.threshold).astype(np.uint8)


@dataclass(frozen=True)
class ValueMask:
    """Masks whose raw values each mean one class; any other value is an error.

    Args:
        classes: raw value -> class index (e.g. ``{255: 0, 0: 1}`` for EM, where 0 = membrane = foreground).
    """

    classes: Mapping[int, int]

    def to_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        lut = np.full(256, 255, dtype=np.uint8)
        for value, label in self.classes.items():
            lut[value] = label
        labels = lut[raw]
        if (labels == 255).any():
            unexpected = sorted(set(np.unique(raw).tolist()) - set(self.classes))
            raise DatasetError(
                f"{path}: mask has unexpected values {unexpected[:10]}; expected only {sorted(self.classes)}"
            )
        return labels


@dataclass(frozen=True)
class SplitPolicy:
    """How the committed split of a dataset was drawn.

    Args:
        val_fraction: share of the (official train, or all) pairs held out for model selection.
        test_fraction: share of all pairs held out for testing; ignored where the dataset has an official test
            subset (then that subset is the test split).
    """

    val_fraction: float = 0.1
    test_fraction: float = 0.2


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the project knows about one dataset.

    Args:
        name: registry key and folder name under the data root.
        title: human-readable name.
        source: official source and citation.
        layout: expected files below ``<data root>/<name>/``.
        class_names: class names, background first.
        in_channels: 1 (grayscale) or 3 (RGB).
        list_samples: returns every pair, given the dataset folder.
        mask: turns raw mask values into class indices.
        split: how the committed split was drawn.
        large_images: train on random patches and infer by sliding window instead of resizing to a square.
        ndim: 2 for images, 3 for volumes.
    """

    name: str
    title: str
    source: str
    layout: str
    class_names: tuple[str, ...]
    in_channels: int
    list_samples: Callable[[Path], list[Sample]]
    mask: ThresholdMask | ValueMask
    split: SplitPolicy = field(default_factory=SplitPolicy)
    large_images: bool = False
    ndim: int = 2

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def folder(self, data_root: Path | str | None = None) -> Path:
        """The dataset's folder, with a clear error when it is missing."""
        folder = resolve_data_root(data_root) / self.name
        if not folder.is_dir():
            raise DatasetError(
                f"dataset '{self.name}' not found at {folder}.\n"
                f"  Source: {self.source}\n  Expected layout below that folder: {self.layout}\n"
                f"  Set the data root with ${DATA_ROOT_ENV} or `data_root` in params.yaml."
            )
        return folder

    def samples(self, data_root: Path | str | None = None) -> list[Sample]:
        """Every pair of the dataset, sorted by id; missing partners and duplicate ids are errors."""
        samples = sorted(self.list_samples(self.folder(data_root)), key=lambda s: s.id)
        if not samples:
            raise DatasetError(f"dataset '{self.name}': no image/mask pairs found below {self.folder(data_root)}")
        ids = [s.id for s in samples]
        if len(set(ids)) != len(ids):
            raise DatasetError(f"dataset '{self.name}': duplicate ids {sorted({i for i in ids if ids.count(i) > 1})}")
        return samples


def resolve_data_root(data_root: Path | str | None = None) -> Path:
    """The data root: the argument, else ``$UNET_REPRO_DATA_ROOT``, else ``../shared/datasets``.

    Relative paths are taken from the repository root, so notebooks and DVC stages agree wherever they run.
    """
    chosen = data_root or os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT
    root = Path(chosen).expanduser()
    return root if root.is_absolute() else (REPO_ROOT / root).resolve()


def paired_folders(
    image_dir: str,
    mask_dir: str,
    *,
    image_suffix: str,
    mask_suffix: str,
    mask_name: Callable[[str], str] = lambda stem: stem,
    valid_dir: str | None = None,
    valid_name: Callable[[str], str] | None = None,
    subset: str | None = None,
    id_prefix: str = "",
) -> Callable[[Path], list[Sample]]:
    """A ``list_samples`` for a folder of images beside a folder of masks matched by file name.

    Every image must have its mask and every mask its image; otherwise the error names the orphan file.

    Args:
        image_dir, mask_dir: folders relative to the dataset folder.
        image_suffix, mask_suffix: file suffixes (``.png``).
        mask_name: maps an image stem to its mask stem (DRIVE: ``21_training`` -> ``21_manual1``).
        valid_dir, valid_name: optional region-of-interest masks, matched the same way.
        subset: the official subset these pairs form, if any.
        id_prefix: prefix for ids, where two folders share stems.
    """

    def list_samples(folder: Path) -> list[Sample]:
        images, masks = folder / image_dir, folder / mask_dir
        for required in (images, masks):
            if not required.is_dir():
                raise DatasetError(f"{required}: folder missing")
        image_files = {p.stem: p for p in images.iterdir() if p.suffix.lower() == image_suffix}
        mask_files = {p.stem: p for p in masks.iterdir() if p.suffix.lower() == mask_suffix}
        expected_masks = {mask_name(stem): stem for stem in image_files}
        problems = [
            f"{image_files[stem]}: no mask {masks / (mask_name(stem) + mask_suffix)}"
            for mask_stem, stem in sorted(expected_masks.items())
            if mask_stem not in mask_files
        ]
        problems += [
            f"{path}: mask without an image in {images}"
            for stem, path in sorted(mask_files.items())
            if stem not in expected_masks
        ]
        if problems:
            raise DatasetError("unpaired files:\n  " + "\n  ".join(problems))
        samples = []
        for stem, image in sorted(image_files.items()):
            valid = None
            if valid_dir is not None and valid_name is not None:
                valid = folder / valid_dir / (valid_name(stem) + mask_suffix)
                if not valid.is_file():
                    raise DatasetError(f"{image}: no field-of-view mask {valid}")
            samples.append(Sample(id_prefix + stem, image, mask_files[mask_name(stem)], valid=valid, subset=subset))
        return samples

    return list_samples


def _union(*listers: Callable[[Path], list[Sample]]) -> Callable[[Path], list[Sample]]:
    def list_samples(folder: Path) -> list[Sample]:
        return [sample for lister in listers for sample in lister(folder)]

    return list_samples


_REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset to the registry (its name must be new)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"dataset '{spec.name}' is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_dataset(name: str) -> DatasetSpec:
    """The registered dataset ``name``; an unknown name lists the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown dataset '{name}'; registered: {', '.join(list_datasets())}") from None


def list_datasets() -> list[str]:
    return sorted(_REGISTRY)


def register_folder_dataset(name: str, config: Mapping) -> DatasetSpec:
    """Register a user's dataset laid out as ``<root>/<name>/<images>/*`` beside ``<root>/<name>/<masks>/*``.

    ``config`` keys: ``images``, ``masks`` (folders), ``image_suffix``, ``mask_suffix``, ``in_channels``,
    ``class_names`` (background first), and either ``threshold`` (binary masks with noisy values) or
    ``mask_values`` (raw value -> class index); optional ``title``, ``source``, ``val_fraction``,
    ``test_fraction``.
    """
    required = {"images", "masks", "image_suffix", "mask_suffix", "in_channels", "class_names"}
    missing = required - set(config)
    if missing:
        raise ValueError(f"custom dataset '{name}': missing keys {sorted(missing)} (required: {sorted(required)})")
    if ("threshold" in config) == ("mask_values" in config):
        raise ValueError(f"custom dataset '{name}': give exactly one of 'threshold' or 'mask_values'")
    mask = (
        ThresholdMask(int(config["threshold"]))
        if "threshold" in config
        else ValueMask({int(k): int(v) for k, v in config["mask_values"].items()})
    )
    return register(
        DatasetSpec(
            name=name,
            title=config.get("title", name),
            source=config.get("source", "user-supplied"),
            layout=f"{config['images']}/*{config['image_suffix']}, {config['masks']}/*{config['mask_suffix']}",
            class_names=tuple(config["class_names"]),
            in_channels=int(config["in_channels"]),
            list_samples=paired_folders(
                config["images"],
                config["masks"],
                image_suffix=config["image_suffix"],
                mask_suffix=config["mask_suffix"],
            ),
            mask=mask,
            split=SplitPolicy(float(config.get("val_fraction", 0.1)), float(config.get("test_fraction", 0.2))),
        )
    )


register(
    DatasetSpec(
        name="dsb2018-nuclei-96",
        title="2018 Data Science Bowl nuclei (96x96)",
        source="Kaggle 2018 Data Science Bowl stage1_train = BBBC038v1 (Caicedo et al. 2019), UNet++-style "
        "96x96 preprocessing",
        layout="dsb2018_96/images/<id>.png, dsb2018_96/masks/0/<id>.png",
        class_names=("background", "nuclei"),
        in_channels=3,
        list_samples=paired_folders("dsb2018_96/images", "dsb2018_96/masks/0", image_suffix=".png", mask_suffix=".png"),
        # Resizing left interpolated edge values (2.7% of pixels in 1..254): threshold at the midpoint.
        mask=ThresholdMask(127),
    )
)

register(
    DatasetSpec(
        name="kvasir-seg",
        title="Kvasir-SEG colonoscopy polyps",
        source="Kvasir-SEG, Simula (Jha et al., MMM 2020)",
        layout="Kvasir-SEG/images/<id>.jpg, Kvasir-SEG/masks/<id>.jpg",
        class_names=("background", "polyp"),
        in_channels=3,
        list_samples=paired_folders("Kvasir-SEG/images", "Kvasir-SEG/masks", image_suffix=".jpg", mask_suffix=".jpg"),
        # JPEG masks carry compression noise around 0 and 255: threshold at the midpoint.
        mask=ThresholdMask(127),
    )
)

register(
    DatasetSpec(
        name="ph2-dermoscopy",
        title="PH2 dermoscopy skin lesions",
        source="PH2 database, Hospital Pedro Hispano (Mendonca et al., IEEE EMBC 2013); staged downscaled by 2",
        layout="images/IMDxxx.png, masks/IMDxxx.png",
        class_names=("background", "lesion"),
        in_channels=3,
        list_samples=paired_folders("images", "masks", image_suffix=".png", mask_suffix=".png"),
        mask=ValueMask({0: 0, 255: 1}),
    )
)

register(
    DatasetSpec(
        name="isbi2012-em-membrane",
        title="ISBI 2012 EM neuronal membranes",
        source="ISBI 2012 EM segmentation challenge (Cardona et al. 2010; Arganda-Carreras et al. 2015)",
        layout="train/image/<i>.png, train/label/<i>.png (i = 0..29); test/ is unlabelled and unused",
        class_names=("background", "membrane"),
        in_channels=1,
        list_samples=paired_folders("train/image", "train/label", image_suffix=".png", mask_suffix=".png"),
        # The labels mark cell interiors 255 and membranes 0; the membrane is what is segmented.
        mask=ValueMask({255: 0, 0: 1}),
        split=SplitPolicy(val_fraction=0.15, test_fraction=0.2),
        large_images=True,
    )
)

register(
    DatasetSpec(
        name="covid19-ct-medseg-infnet",
        title="COVID-19 CT infection, multi-class (Inf-Net split of MedSeg)",
        source="COVID-SemiSeg (Fan et al., IEEE TMI 2020) from the MedSeg COVID-19 CT segmentation dataset",
        layout="TrainingSet/MultiClassInfection-Train/{Imgs/<i>.jpg,GT/<i>.png}, "
        "TestingSet/MultiClassInfection-Test/{Imgs/<i>.jpg,GT/<i>.png}",
        class_names=("background", "ground-glass opacity", "consolidation"),
        in_channels=1,
        list_samples=_union(
            paired_folders(
                "TrainingSet/MultiClassInfection-Train/Imgs",
                "TrainingSet/MultiClassInfection-Train/GT",
                image_suffix=".jpg",
                mask_suffix=".png",
                subset="train",
                id_prefix="train-",
            ),
            paired_folders(
                "TestingSet/MultiClassInfection-Test/Imgs",
                "TestingSet/MultiClassInfection-Test/GT",
                image_suffix=".jpg",
                mask_suffix=".png",
                subset="test",
                id_prefix="test-",
            ),
        ),
        mask=ValueMask({0: 0, 1: 1, 2: 2}),
        split=SplitPolicy(val_fraction=0.2),
    )
)

register(
    DatasetSpec(
        name="drive",
        title="DRIVE retinal vessels",
        source="DRIVE, Image Sciences Institute, UMC Utrecht (Staal et al., IEEE TMI 2004)",
        layout="DRIVE/training/{images/<n>_training.tif,1st_manual/<n>_manual1.gif,mask/<n>_training_mask.gif}, "
        "DRIVE/test/{images/<n>_test.tif,1st_manual/<n>_manual1.gif,mask/<n>_test_mask.gif}",
        class_names=("background", "vessel"),
        in_channels=3,
        list_samples=_union(
            paired_folders(
                "DRIVE/training/images",
                "DRIVE/training/1st_manual",
                image_suffix=".tif",
                mask_suffix=".gif",
                mask_name=lambda stem: stem.split("_")[0] + "_manual1",
                valid_dir="DRIVE/training/mask",
                valid_name=lambda stem: stem + "_mask",
                subset="train",
            ),
            paired_folders(
                "DRIVE/test/images",
                "DRIVE/test/1st_manual",
                image_suffix=".tif",
                mask_suffix=".gif",
                mask_name=lambda stem: stem.split("_")[0] + "_manual1",
                valid_dir="DRIVE/test/mask",
                valid_name=lambda stem: stem + "_mask",
                subset="test",
            ),
        ),
        mask=ValueMask({0: 0, 255: 1}),
        split=SplitPolicy(val_fraction=0.2),
        large_images=True,
    )
)
