"""One :class:`DatasetSpec` per dataset: where its files lie, how to read them, how masks become classes.

A new dataset is one :func:`register` call (see docs/datasets.md, "Adding a dataset"), or, for a plain folder of images
and a folder of masks, an entry under ``prepare.custom_datasets`` in ``params.yaml``.
"""

from __future__ import annotations

import csv
import difflib
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml

from repro.data.readers import INTENSITY_RULES, DatasetError, Intensity, problems_error

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_ROOT_ENV = "UNET_REPRO_DATA_ROOT"


@dataclass(frozen=True)
class Sample:
    """One image/mask pair as found on disk.

    Args:
        id: identifier, unique within the dataset (file stem, or a prefixed stem).
        image: image file.
        mask: ground-truth mask file.
        valid: optional region-of-interest mask (e.g. DRIVE's field of view); pixels outside are ignored.
        subset: the official subset the pair belongs to ("train"/"test"), or None where none is given.
        group: the group the pair belongs to where the dataset groups its pairs (e.g. the video a frame was
            cut from); a group is never split across train, val and test.
    """

    id: str
    image: Path
    mask: Path
    valid: Path | None = None
    subset: str | None = None
    group: str | None = None


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
        # 255 marks "no class"; the table covers every 8-bit value, and 16-bit masks' values up to their maximum.
        lut = np.full(max(256, int(raw.max()) + 1), 255, dtype=np.uint8)
        for value, label in self.classes.items():
            if value < len(lut):
                lut[value] = label
        labels = lut[raw]
        if (labels == 255).any():
            unexpected = sorted(set(np.unique(raw).tolist()) - set(self.classes))
            raise DatasetError(
                f"{path}: mask has unexpected values {unexpected[:10]}; expected only {sorted(self.classes)}"
            )
        return labels


@dataclass(frozen=True)
class Grouping:
    """Which pairs belong together (frames of one video, tiles of one slide), so a split keeps them together.

    Exactly one of:

    Args:
        regex: a regular expression searched in each id; its first capturing group (or, without one, the
            whole match) names the group. An id it does not match is an error.
        csv: a CSV file with a header row ``id,group``, relative to the dataset's folder; every id on disk
            must have exactly one row, and every row must name an id on disk.
    """

    regex: str | None = None
    csv: str | None = None

    def describe(self) -> str:
        return f"regex {self.regex!r} on ids" if self.regex is not None else f"{self.csv} (id -> group)"

    def assign(self, ids: list[str], folder: Path) -> dict[str, str]:
        """id -> group for every id, with one error listing every id that has no group."""
        if self.regex is not None:
            pattern = re.compile(self.regex)
            matches = {i: pattern.search(i) for i in ids}
            unmatched = [i for i, m in matches.items() if m is None]
            if unmatched:
                raise DatasetError(
                    f"group regex {self.regex!r} matches no part of {len(unmatched)} id(s), e.g. {unmatched[:5]}"
                )
            return {i: m.group(1 if pattern.groups else 0) for i, m in matches.items()}
        path = folder / str(self.csv)
        if not path.is_file():
            raise DatasetError(f"{path}: group file not found (the dataset's `group: {{csv: ...}}`)")
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
        if not rows or [c.strip() for c in rows[0]] != ["id", "group"]:
            raise DatasetError(f"{path}: the first row must be the header `id,group`")
        table: dict[str, str] = {}
        problems = []
        for number, row in enumerate(rows[1:], start=2):
            if len(row) != 2:
                problems.append(f"line {number}: expected 2 columns (id,group), found {len(row)}")
            elif row[0] in table:
                problems.append(f"line {number}: id '{row[0]}' appears twice")
            else:
                table[row[0]] = row[1]
        problems += [f"id '{i}' has no row" for i in ids if i not in table]
        problems += [f"row id '{i}' is not an id on disk" for i in sorted(set(table) - set(ids))]
        if problems:
            raise problems_error(f"{path}: invalid group file", problems)
        return {i: table[i] for i in ids}


@dataclass(frozen=True)
class SplitPolicy:
    """How the committed split of a dataset was drawn.

    Args:
        val_fraction: share of the (official train, or all) pairs held out for model selection.
        test_fraction: share of all pairs held out for testing; ignored where the dataset has an official test
            subset (then that subset is the test split).
        group: pairs that belong together and are drawn as whole groups (the fractions are then approximate).
    """

    val_fraction: float = 0.1
    test_fraction: float = 0.2
    group: Grouping | None = None


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
        ndim: 2 for images, 3 for volumes (NIfTI files, read by :func:`repro.data.readers.read_volume`, or HDF5
            files holding image and label, read by :func:`repro.data.readers.read_h5_volume_pair`).
        intensity: how image values become 0..255 (see :data:`repro.data.readers.INTENSITY_RULES`); 2D only,
            since volumes are z-scored per case instead (see :mod:`repro.data.prepare`).
        volume_shape: for volumes only, the (D, H, W) every volume is centred in, padded or cropped, at every
            scale: volumes keep their native voxel size (or the size ``volume_downsample`` gives them), so a
            scale's ``image_size`` does not apply to them.
        volume_downsample: for volumes only, an integer factor per axis (D, H, W) every volume is reduced by
            before it is centred in ``volume_shape``, at every scale (see :func:`repro.data.prepare.downsample`);
            None keeps the native voxels.
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
    intensity: Intensity = "bit_depth"
    volume_shape: tuple[int, int, int] | None = None
    volume_downsample: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.ndim not in (2, 3):
            raise ValueError(f"dataset '{self.name}': ndim must be 2 or 3, got {self.ndim}")
        if (self.ndim == 3) != (self.volume_shape is not None):
            raise ValueError(f"dataset '{self.name}': a volume_shape is given exactly for 3D datasets (ndim=3)")
        if self.volume_shape is not None and not (
            len(self.volume_shape) == 3 and all(isinstance(n, int) and n > 0 for n in self.volume_shape)
        ):
            raise ValueError(f"dataset '{self.name}': volume_shape must be 3 positive integers: {self.volume_shape}")
        if self.volume_downsample is not None and not (
            self.ndim == 3
            and len(self.volume_downsample) == 3
            and all(isinstance(n, int) and n > 0 for n in self.volume_downsample)
        ):
            raise ValueError(
                f"dataset '{self.name}': volume_downsample must be 3 positive integers, for 3D datasets only: "
                f"{self.volume_downsample}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def folder(self, data_root: Path | str | None = None) -> Path:
        """The dataset's folder, with a clear error when it is missing."""
        folder, setting = self._location(data_root)
        if not folder.is_dir():
            raise DatasetError(
                f"dataset '{self.name}' not found at {folder}.\n"
                f"  Source: {self.source}\n  Expected layout below that folder: {self.layout}\n  {setting}"
            )
        return folder

    def _location(self, data_root: Path | str | None) -> tuple[Path, str]:
        """Where the dataset's folder should be, and the setting that says so."""
        return (
            resolve_data_root(data_root) / self.name,
            "The data root is `data_root` in params.yaml (or `--data-root` on the command line).",
        )

    def samples(self, data_root: Path | str | None = None) -> list[Sample]:
        """Every pair of the dataset, sorted by id, with its group where the dataset groups its pairs; missing
        partners and duplicate ids are errors."""
        folder = self.folder(data_root)
        samples = sorted(self.list_samples(folder), key=lambda s: s.id)
        if not samples:
            raise DatasetError(f"dataset '{self.name}': no image/mask pairs found below {folder}")
        ids = [s.id for s in samples]
        if len(set(ids)) != len(ids):
            raise DatasetError(f"dataset '{self.name}': duplicate ids {sorted({i for i in ids if ids.count(i) > 1})}")
        if self.split.group is not None:
            groups = self.split.group.assign(ids, folder)
            samples = [replace(s, group=groups[s.id]) for s in samples]
        return samples


@dataclass(frozen=True)
class FolderDatasetSpec(DatasetSpec):
    """A dataset of ``prepare.custom_datasets``: its folder is its entry's ``path``, wherever it lies.

    A subclass rather than a field of :class:`DatasetSpec`: a run records every field of its dataset's spec
    (``dataset_definition`` in :mod:`repro.training.identity`), and the built-in datasets' records keep theirs.

    Args:
        path: the dataset's folder, absolute or relative to the repository root, as written in the entry (the
            ``prepare_custom`` stage of dvc.yaml depends on that folder by the same value).
    """

    path: str = field(kw_only=True)

    def _location(self, data_root: Path | str | None) -> tuple[Path, str]:
        path = Path(self.path)
        return (
            path if path.is_absolute() else (REPO_ROOT / path).resolve(),
            f"The folder is `path` of prepare.custom_datasets.{self.name} in params.yaml ({self.path}; a relative "
            f"path is taken from the repository root).",
        )


def resolve_data_root(data_root: Path | str | None = None) -> Path:
    """The data root: the argument, else ``$UNET_REPRO_DATA_ROOT``, else params.yaml's ``data_root`` (one place
    sets the default: the pipeline's stages read it there too).

    Relative paths are taken from the repository root, so notebooks and DVC stages agree wherever they run.
    """
    chosen = (
        data_root
        or os.environ.get(DATA_ROOT_ENV)
        or yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["data_root"]
    )
    root = Path(chosen).expanduser()
    return root if root.is_absolute() else (REPO_ROOT / root).resolve()


def paired_folders(
    image_dir: str,
    mask_dir: str,
    *,
    image_suffix: str,
    mask_pattern: str,
    mask_name: Callable[[str], str] = lambda stem: stem,
    valid_dir: str | None = None,
    valid_name: Callable[[str], str] = lambda stem: stem,
    valid_suffix: str | None = None,
    subset: str | None = None,
    id_prefix: str = "",
) -> Callable[[Path], list[Sample]]:
    """A ``list_samples`` for a folder of images beside a folder of masks matched by file name.

    Every image must have its mask, and every file of the mask folder named like ``mask_pattern`` its image;
    otherwise the error names the orphan file. Files of the mask folder named otherwise (another annotator's
    masks, the images themselves where both share a folder) are not masks of this dataset and are left alone.

    Args:
        image_dir, mask_dir: folders relative to the dataset folder.
        image_suffix: the images' file suffix (``.png``).
        mask_pattern: a mask's file name, ``{stem}`` standing for the image's file stem (``{stem}.png``,
            ``{stem}_segmentation.png``); see :func:`mask_pattern_problems`.
        mask_name: maps an image stem to the ``{stem}`` of its mask (DRIVE: ``21_training`` -> ``21_manual1``).
        valid_dir, valid_name, valid_suffix: optional region-of-interest masks ``<valid_dir>/<valid_name(stem)>
            <valid_suffix>``, given together.
        subset: the official subset these pairs form, if any.
        id_prefix: prefix for ids, where two folders share stems.
    """
    if valid_dir is not None and valid_suffix is None:
        raise ValueError(f"paired_folders({image_dir!r}, ...): valid_dir {valid_dir!r} needs its valid_suffix")

    def list_samples(folder: Path) -> list[Sample]:
        images, masks = folder / image_dir, folder / mask_dir
        for required in (images, masks):
            if not required.is_dir():
                raise DatasetError(f"{required}: folder missing")
        image_files = _files_named(images, "{stem}" + image_suffix, "`image_suffix`")
        mask_files = _files_named(masks, mask_pattern, "`mask_suffix` or `mask_pattern`")
        expected_masks = {mask_name(stem): stem for stem in image_files}
        problems = [
            f"{image_files[stem]}: no mask {masks / mask_pattern.replace('{stem}', mask_stem)}"
            for mask_stem, stem in sorted(expected_masks.items())
            if mask_stem not in mask_files
        ]
        problems += [
            f"{path}: mask without an image in {images}"
            for stem, path in sorted(mask_files.items())
            if stem not in expected_masks
        ]
        if problems:
            raise problems_error(f"unpaired files (masks named {mask_pattern} in {masks})", problems)
        samples = []
        for stem, image in sorted(image_files.items()):
            valid = None
            if valid_dir is not None:
                valid = folder / valid_dir / (valid_name(stem) + str(valid_suffix))
                if not valid.is_file():
                    raise DatasetError(f"{image}: no field-of-view mask {valid}")
            samples.append(Sample(id_prefix + stem, image, mask_files[mask_name(stem)], valid=valid, subset=subset))
        return samples

    return list_samples


def mask_pattern_problems(pattern: object) -> list[str]:
    """What is wrong with a mask file-name pattern (nothing: an empty list).

    A pattern is a file name holding ``{stem}`` once, where the image's file stem goes, and ending in a file suffix:
    ``{stem}_segmentation.png`` (ISIC), ``{stem}_1stHO.png``. It names a file of the mask folder, not a path.
    """
    example = "like '{stem}_segmentation.png'"
    if not isinstance(pattern, str):
        return [f"mask_pattern must be a file name holding {{stem}}, {example} (got {pattern!r})"]
    problems = []
    if pattern.count("{stem}") != 1:
        problems.append(
            f"mask_pattern must hold {{stem}} once, where the image's file stem goes, {example} (got {pattern!r})"
        )
    elif "{" in pattern.replace("{stem}", "") or "}" in pattern.replace("{stem}", ""):
        problems.append(f"mask_pattern may hold no braces but those of {{stem}} (got {pattern!r})")
    if "/" in pattern or "\\" in pattern:
        problems.append(f"mask_pattern is a file name in the `masks` folder, without a folder (got {pattern!r})")
    if not re.search(r"\.\w+$", pattern):
        problems.append(f"mask_pattern must end with a file suffix such as .png (got {pattern!r})")
    return problems


def _files_named(folder: Path, pattern: str, setting: str) -> dict[str, Path]:
    """stem -> file for the files of ``folder`` named like ``pattern`` (``{stem}`` standing for the stem, the rest
    matched regardless of case); none at all is one error saying what the folder holds.

    The suffix may have two parts (``{stem}.nii.gz``).
    """
    before, after = pattern.split("{stem}")
    named = re.compile(re.escape(before) + "(.+)" + re.escape(after), re.IGNORECASE)
    found = {match.group(1): p for p in folder.iterdir() if (match := named.fullmatch(p.name))}
    if not found:
        others = Counter(p.suffix.lower() or "(no suffix)" for p in folder.iterdir() if p.is_file())
        held = ", ".join(f"{n} x {s}" for s, n in sorted(others.items()))
        wanted = f"{after} files" if not before and re.fullmatch(r"(\.\w+)+", after) else f"files named {pattern}"
        raise DatasetError(
            f"{folder}: no {wanted}" + (f"; it holds {held} (check {setting})" if others else "; the folder is empty")
        )
    return found


def case_folders(cases_dir: str, file_name: str, *, test_list: str, train_list: str) -> Callable[[Path], list[Sample]]:
    """A ``list_samples`` for one file per case, ``<cases_dir>/<id>/<file_name>``, holding image and label both
    (HDF5), with the official subsets named by two lists of ids, one a line (UA-MT's ``train.list``/``test.list``).

    A case folder without its file, or a case in neither list, is an error naming it. The lists may name cases
    that are not on disk (a dataset copied in part keeps the official lists unchanged).
    """

    def list_samples(folder: Path) -> list[Sample]:
        cases = folder / cases_dir
        if not cases.is_dir():
            raise DatasetError(f"{cases}: folder missing")
        subsets: dict[str, str] = {}
        for subset, name in (("train", train_list), ("test", test_list)):
            path = folder / name
            if not path.is_file():
                raise DatasetError(f"{path}: list of the official {subset} cases not found")
            for line in path.read_text().splitlines():
                if line.strip() and subsets.setdefault(line.strip(), subset) != subset:
                    raise DatasetError(f"{path}: case '{line.strip()}' is in both {train_list} and {test_list}")
        problems, samples = [], []
        for case in sorted(p for p in cases.iterdir() if p.is_dir()):
            path = case / file_name
            if not path.is_file():
                problems.append(f"{path}: file not found (every case folder holds one {file_name})")
            elif case.name not in subsets:
                problems.append(f"{case}: case in neither {train_list} nor {test_list}")
            else:
                samples.append(Sample(case.name, path, path, subset=subsets[case.name]))
        if problems:
            raise problems_error(f"{cases}: invalid case folder(s)", problems)
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
        raise DatasetError(
            f"unknown dataset '{name}'; registered: {', '.join(list_datasets())} (a dataset of your own is an "
            f"entry under prepare.custom_datasets in params.yaml)"
        ) from None


def list_datasets() -> list[str]:
    return sorted(_REGISTRY)


# The keys of a `prepare.custom_datasets` entry; docs/datasets.md, "The keys of an entry", documents each.
REQUIRED_KEYS = ("path", "images", "masks", "image_suffix", "in_channels", "class_names")
OPTIONAL_KEYS = (
    "mask_suffix",
    "mask_pattern",
    "threshold",
    "mask_values",
    "title",
    "source",
    "val_fraction",
    "test_fraction",
    "group",
    "large_images",
    "fov_masks",
    "fov_suffix",
    "intensity",
)
# A name is a DVC stage name and a dotted params key: no dots or slashes.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def _custom_config_problems(name: str, config: Mapping) -> list[str]:
    """Every problem of one custom dataset entry (unknown keys with a guess, missing keys, wrong values)."""
    known = REQUIRED_KEYS + OPTIONAL_KEYS
    problems = []
    for key in config:
        guess = difflib.get_close_matches(str(key), known, n=1)
        if key not in known:
            problems.append(f"unknown key '{key}'" + (f" (did you mean '{guess[0]}'?)" if guess else ""))
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        problems.append(f"missing key(s) {missing}")
    if "path" in missing:
        problems.append(
            "path is the dataset's folder, absolute or relative to the repository root (one below the data root: "
            f"path: ../shared/datasets/{name})"
        )
    path = config.get("path")
    if "path" in config and not (isinstance(path, str) and path.strip() and not path.startswith("~")):
        # DVC reads the same value as the prepare stage's dependency, and expands no `~`.
        problems.append(f"path must be a folder, absolute or relative to the repository root, without ~ (got {path!r})")
    for key in ("image_suffix", "mask_suffix", "fov_suffix"):
        if key in config and not (isinstance(config[key], str) and re.fullmatch(r"\.\w+", config[key])):
            problems.append(f"{key} must be a file suffix with its dot, like .png (got {config[key]!r})")
    if ("mask_suffix" in config) == ("mask_pattern" in config):
        problems.append(
            "give exactly one of 'mask_suffix' (a mask named as its image: .png) or 'mask_pattern' (its file name, "
            "{stem} standing for the image's stem: '{stem}_segmentation.png')"
        )
    if "mask_pattern" in config:
        problems += mask_pattern_problems(config["mask_pattern"])
    if "in_channels" in config and config["in_channels"] not in (1, 3):
        problems.append(f"in_channels must be 1 (grayscale) or 3 (RGB), got {config['in_channels']!r}")
    names = config.get("class_names")
    if "class_names" in config and not (
        isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)
    ):
        problems.append(f"class_names must be a list of at least 2 names, background first (got {names!r})")
    if ("threshold" in config) == ("mask_values" in config):
        problems.append("give exactly one of 'threshold' (binary masks) or 'mask_values' (raw value -> class)")
    if "threshold" in config and not (isinstance(config["threshold"], int) and config["threshold"] >= 0):
        problems.append(f"threshold must be a non-negative integer, got {config['threshold']!r}")
    values = config.get("mask_values")
    if values is not None:
        n_classes = len(names) if isinstance(names, list) else None
        if not isinstance(values, Mapping) or not all(
            isinstance(k, int) and isinstance(v, int) and 0 <= k <= 65535 and 0 <= v < (n_classes or 256)
            for k, v in values.items()
        ):
            problems.append(
                f"mask_values must map raw mask values (0..65535) to class indices 0..{(n_classes or 256) - 1}, "
                f"got {values!r}"
            )
    for key in ("val_fraction", "test_fraction"):
        if key in config and not (isinstance(config[key], int | float) and 0 < config[key] < 1):
            problems.append(f"{key} must be a fraction between 0 and 1, got {config[key]!r}")
    fractions = (config.get("val_fraction", 0.1), config.get("test_fraction", 0.2))
    if all(isinstance(f, int | float) for f in fractions) and sum(fractions) >= 1:
        problems.append("val_fraction + test_fraction must leave pairs for training (sum below 1)")
    if "large_images" in config and not isinstance(config["large_images"], bool):
        problems.append(f"large_images must be true or false, got {config['large_images']!r}")
    if "fov_suffix" in config and "fov_masks" not in config:
        problems.append("fov_suffix is given without fov_masks (the field-of-view mask folder)")
    group = config.get("group")
    if "group" in config:
        if not (isinstance(group, Mapping) and len(group) == 1 and set(group) <= {"regex", "csv"}):
            problems.append(f"group must be {{regex: <pattern>}} or {{csv: <file>}}, got {group!r}")
        elif "regex" in group:
            try:
                re.compile(group["regex"])
            except (re.error, TypeError) as err:
                problems.append(f"group regex {group['regex']!r} is invalid ({err})")
    intensity = config.get("intensity", "bit_depth")
    if intensity not in ("bit_depth", "min_max") and not (
        isinstance(intensity, list)
        and len(intensity) == 2
        and all(isinstance(v, int | float) for v in intensity)
        and intensity[0] < intensity[1]
    ):
        problems.append(f"intensity must be one of {', '.join(INTENSITY_RULES)}, got {intensity!r}")
    return problems


def register_folder_dataset(name: str, config: Mapping) -> DatasetSpec:
    """Register a user's dataset laid out as ``<path>/<images>/*`` beside ``<path>/<masks>/*``.

    ``config`` is one ``prepare.custom_datasets`` entry of params.yaml; its keys (:data:`REQUIRED_KEYS`,
    :data:`OPTIONAL_KEYS`) are documented in docs/datasets.md, "The keys of an entry". Every problem of the entry
    is reported at once, unknown keys with the known ones. A ``mask_suffix`` is the mask pattern ``{stem}<suffix>``.
    """
    problems = []
    if not (isinstance(name, str) and _NAME.fullmatch(name)):
        problems.append("the name must be letters, digits, '-' and '_' (it is a DVC stage and a key)")
    problems += (
        _custom_config_problems(name, config)
        if isinstance(config, Mapping)
        else [f"the entry must be a mapping of keys, got {config!r}"]
    )
    if problems:
        known = f"required keys: {', '.join(REQUIRED_KEYS)}; optional: {', '.join(OPTIONAL_KEYS)}"
        raise problems_error(f"params.yaml prepare.custom_datasets.{name}", [*problems, known])
    mask = (
        ThresholdMask(int(config["threshold"]))
        if "threshold" in config
        else ValueMask({int(k): int(v) for k, v in config["mask_values"].items()})
    )
    large_images = bool(config.get("large_images", False))
    fov_masks = config.get("fov_masks")
    intensity = config.get("intensity", "bit_depth")
    image_suffix = config["image_suffix"].lower()
    mask_pattern = config.get("mask_pattern") or "{stem}" + config["mask_suffix"].lower()
    fov_suffix = config.get("fov_suffix", re.search(r"\.\w+$", mask_pattern).group()).lower()
    layout = f"{config['images']}/<stem>{image_suffix}, {config['masks']}/{mask_pattern.replace('{stem}', '<stem>')}"
    if fov_masks is not None:
        layout += f", {fov_masks}/<stem>{fov_suffix} (field of view, white inside)"
    return register(
        FolderDatasetSpec(
            name=name,
            title=config.get("title", name),
            source=config.get("source", "user-supplied"),
            layout=layout,
            class_names=tuple(config["class_names"]),
            in_channels=int(config["in_channels"]),
            list_samples=paired_folders(
                config["images"],
                config["masks"],
                image_suffix=image_suffix,
                mask_pattern=mask_pattern,
                valid_dir=fov_masks,
                valid_suffix=fov_suffix,
            ),
            mask=mask,
            split=SplitPolicy(
                float(config.get("val_fraction", 0.1)),
                float(config.get("test_fraction", 0.2)),
                Grouping(**config["group"]) if "group" in config else None,
            ),
            large_images=large_images,
            intensity=tuple(intensity) if isinstance(intensity, list) else intensity,
            path=config["path"],
        )
    )


def check_custom_names(custom: Mapping) -> None:
    """A custom dataset may not take a built-in dataset's name (params.yaml would silently lose the entry)."""
    clashes = sorted(set(custom) & BUILT_IN)
    if clashes:
        raise DatasetError(
            f"params.yaml prepare.custom_datasets: {clashes} are names of built-in datasets; choose other names"
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
        list_samples=paired_folders(
            "dsb2018_96/images", "dsb2018_96/masks/0", image_suffix=".png", mask_pattern="{stem}.png"
        ),
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
        list_samples=paired_folders(
            "Kvasir-SEG/images", "Kvasir-SEG/masks", image_suffix=".jpg", mask_pattern="{stem}.jpg"
        ),
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
        list_samples=paired_folders("images", "masks", image_suffix=".png", mask_pattern="{stem}.png"),
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
        list_samples=paired_folders("train/image", "train/label", image_suffix=".png", mask_pattern="{stem}.png"),
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
                mask_pattern="{stem}.png",
                subset="train",
                id_prefix="train-",
            ),
            paired_folders(
                "TestingSet/MultiClassInfection-Test/Imgs",
                "TestingSet/MultiClassInfection-Test/GT",
                image_suffix=".jpg",
                mask_pattern="{stem}.png",
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
                mask_pattern="{stem}.gif",
                mask_name=lambda stem: stem.split("_")[0] + "_manual1",
                valid_dir="DRIVE/training/mask",
                valid_name=lambda stem: stem + "_mask",
                valid_suffix=".gif",
                subset="train",
            ),
            paired_folders(
                "DRIVE/test/images",
                "DRIVE/test/1st_manual",
                image_suffix=".tif",
                mask_pattern="{stem}.gif",
                mask_name=lambda stem: stem.split("_")[0] + "_manual1",
                valid_dir="DRIVE/test/mask",
                valid_name=lambda stem: stem + "_mask",
                valid_suffix=".gif",
                subset="test",
            ),
        ),
        mask=ValueMask({0: 0, 255: 1}),
        split=SplitPolicy(val_fraction=0.2),
        large_images=True,
    )
)

register(
    DatasetSpec(
        name="msd-task04-hippocampus",
        title="MSD Task04 Hippocampus (3D MRI)",
        source="Medical Segmentation Decathlon Task04_Hippocampus training set (Simpson et al. 2019; Antonelli "
        "et al., Nat. Commun. 2022), as copied in the Udacity nd320 course repository (260 labelled pairs)",
        layout="Task04_Hippocampus/imagesTr/hippocampus_NNN.nii.gz, "
        "Task04_Hippocampus/labelsTr/hippocampus_NNN.nii.gz (same name, same shape)",
        class_names=("background", "anterior", "posterior"),
        in_channels=1,
        list_samples=paired_folders(
            "Task04_Hippocampus/imagesTr",
            "Task04_Hippocampus/labelsTr",
            image_suffix=".nii.gz",
            mask_pattern="{stem}.nii.gz",
        ),
        mask=ValueMask({0: 0, 1: 1, 2: 2}),
        ndim=3,
        # The 260 volumes span 31..43 x 40..59 x 24..47 voxels (median 35 x 50 x 36): 48 x 64 x 48 holds every
        # one without cropping and is divisible by 16, as V-Net's four halvings need.
        volume_shape=(48, 64, 48),
    )
)

register(
    DatasetSpec(
        name="la2018-atrium-lgemri",
        title="2018 Atrial Segmentation Challenge left atrium (3D LGE-MRI)",
        source="2018 Atrial Segmentation Challenge, University of Utah LGE-MRI (Xiong et al., MedIA 2021), as "
        "cropped and z-scored in the UA-MT repository (Yu et al., MICCAI 2019; github.com/yulequan/UA-MT); 32 of "
        "its 100 labelled cases: the 20 of test.list and the first 12 of train.list",
        layout="LA2018/<id>/mri_norm2.h5 (datasets 'image' float32 and 'label' uint8, same shape), train.list, "
        "test.list (case ids, one a line)",
        class_names=("background", "left atrium"),
        in_channels=1,
        list_samples=case_folders("LA2018", "mri_norm2.h5", test_list="test.list", train_list="train.list"),
        mask=ValueMask({0: 0, 1: 1}),
        # Official test (test.list's 20) kept; validation 3 of the 12 training cases (25%), 9 train.
        split=SplitPolicy(val_fraction=0.25),
        ndim=3,
        # Crops of 168..232 x 132..154 x 88 voxels of 0.625 mm, axes as stored (x, y, z): halved on every axis
        # (1.25 mm, still isotropic) they span 84..116 x 66..77 x 44 (the whole challenge's 100 cases up to
        # 122 x 80 x 44). 128 x 80 x 48 holds every one without cropping and is divisible by 16.
        volume_downsample=(2, 2, 2),
        volume_shape=(128, 80, 48),
    )
)

BUILT_IN = frozenset(_REGISTRY)
