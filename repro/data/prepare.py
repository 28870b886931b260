"""Prepare a dataset at a scale: read, validate, resize, and cache it as plain ``.npy`` arrays.

Output (``data/processed/<scale>/<dataset>/``), byte-identical whenever it is prepared again from the same
files and settings:

- ``<split>_images.npy``: uint8 (N, H, W, C)
- ``<split>_masks.npy``: uint8 (N, H, W) class indices
- ``<split>_valid.npy``: bool (N, H, W), only for datasets with a region of interest (DRIVE's field of view)
- ``meta.json``: ids per split, class names, channels, sizes, source

Every pair is validated (readable, image and mask of one size, mask values as the dataset's encoding expects)
and all problems are reported together, naming each file, before anything is written. The folder is then written
whole beside the old one and swapped in only when complete: a prepare that fails keeps the last good data.

Volumes (``ndim=3`` datasets: NIfTI files, or HDF5 files holding image and label) keep their native voxels, or are
reduced by the dataset's fixed ``volume_downsample`` factor (see below); a scale's ``image_size`` does not resize
them:

- ``<split>_images.npy``: float32 (N, D, H, W, 1), each case z-scored over its whole volume (mean 0, standard
  deviation 1 over its own voxels, sums taken exactly with :func:`math.fsum` so the bytes do not depend on the
  machine), then centred in the dataset's ``volume_shape``: padded with 0.0 (the case's mean) or cropped.
- ``<split>_masks.npy``: uint8 (N, D, H, W), padding is background.
- ``<split>_valid.npy``: bool (N, D, H, W), False in the padding, so the loss and the scores skip it.
- ``meta.json`` also names the shape, the normalisation and every cropped case with the labelled voxels its
  crop removed (none are removed silently).

Why the whole volume and not only its non-zero voxels: MSD Hippocampus volumes are crops around the
hippocampus, with no empty background to leave out (0.02% of voxels are 0 on average, 0.07% at most), and their
raw ranges differ by orders of magnitude (maxima 112 to 1.7 million), so only a per-case rule compares them.
Its ``volume_shape`` 48 x 64 x 48 holds all 260 cases (largest extents 43, 59, 47): none is cropped.

A dataset with a ``volume_downsample`` factor (LA2018 left atrium: 2 on every axis) is reduced before it is
z-scored and centred (:func:`downsample`): the image by the mean of each block of factor^3 voxels, the labels by
the majority class of the block. ``meta.json`` then also records the factor, the rules, every case's native shape
and how the labelled volume changed.

Run as ``python -m repro.data.prepare <dataset> [--scale NAME] [--out DIR]``, or
``python -m repro.data.prepare --draw-split <dataset>`` to draw and write a new split file. From the command
line, bad input ends in one error message without a traceback; ``--debug`` (or ``UNET_REPRO_DEBUG=1``) shows
the traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from repro.config import ScalePreset, load_params, scale_preset
from repro.data.readers import (
    DatasetError,
    problems_error,
    read_h5_volume_pair,
    read_image,
    read_mask,
    read_volume,
    read_volume_mask,
)
from repro.data.registry import REPO_ROOT, DatasetSpec, Sample, check_custom_names, get_dataset
from repro.data.splits import SPLIT_NAMES, SPLIT_SEED, draw_split, load_split, warn_small_splits, write_split

PROCESSED_DIR = REPO_ROOT / "data" / "processed"
DEBUG_ENV = "UNET_REPRO_DEBUG"


@dataclass(frozen=True)
class PreparedPair:
    image: np.ndarray  # (H, W, C) uint8; volumes (D, H, W, 1) float32
    labels: np.ndarray  # (H, W) uint8 class indices; volumes (D, H, W)
    valid: np.ndarray | None  # (H, W) bool; volumes (D, H, W), False in the padding
    crop: dict | None = None  # volumes cut to fit volume_shape: native shape, voxels cut per axis, labels lost
    native_shape: tuple[int, ...] | None = None  # volumes: the shape as read, before any downsampling
    labelled_voxels: tuple[int, int] | None = None  # volumes: labelled voxels as read, and after downsampling


def target_size(spec: DatasetSpec, native_hw: tuple[int, int], scale: ScalePreset) -> tuple[int, int]:
    """(H, W) a pair is prepared at: a square for most datasets; the scaled native size for large images."""
    if spec.large_images:
        return round(native_hw[0] * scale.large_image_scale), round(native_hw[1] * scale.large_image_scale)
    return scale.image_size, scale.image_size


def resize_labels(labels: np.ndarray, num_classes: int, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize a class-index map by resizing each class's indicator bilinearly and taking the argmax.

    Smoother than nearest-neighbour (thin structures survive downscaling in proportion) and still exact
    class indices.
    """
    if labels.shape == size_hw:
        return labels
    scores = np.stack(
        [
            np.asarray(Image.fromarray((labels == c).astype(np.float32)).resize(size_hw[::-1], Image.BILINEAR))
            for c in range(num_classes)
        ]
    )
    return scores.argmax(axis=0).astype(np.uint8)


def _resize_image(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == size_hw:
        return image
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    resized = np.asarray(pil.resize(size_hw[::-1], Image.BILINEAR))
    return resized[..., None] if image.shape[-1] == 1 else resized


def read_pair(spec: DatasetSpec, sample: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read and validate one pair at its native size: (image, class indices, valid region or None)."""
    image = read_image(sample.image, spec.in_channels, spec.intensity)
    raw_mask = read_mask(sample.mask)
    if raw_mask.shape != image.shape[:2]:
        raise DatasetError(
            f"{sample.mask}: mask size {raw_mask.shape[::-1]} (W, H) differs from image {sample.image} "
            f"size {image.shape[1::-1]}"
        )
    labels = spec.mask.to_labels(raw_mask, sample.mask)
    valid = None
    if sample.valid is not None:
        valid_raw = read_mask(sample.valid)
        if valid_raw.shape != image.shape[:2]:
            raise DatasetError(f"{sample.valid}: size {valid_raw.shape[::-1]} differs from image {sample.image}")
        valid = valid_raw > 127
        if not valid.any():
            raise DatasetError(f"{sample.valid}: field-of-view mask has no pixel inside (none above 127)")
    return image, labels, valid


def zscore(volume: np.ndarray, path: Path) -> np.ndarray:
    """``volume`` minus its mean, divided by its standard deviation (population), as float32.

    The two sums are exact (:func:`math.fsum`) and every other step is one IEEE operation per voxel, so the
    result is the same on every machine.
    """
    values = volume.astype(np.float64)
    if not np.isfinite(values).all():
        raise DatasetError(f"{path}: volume holds NaN or infinite values")
    mean = math.fsum(values.ravel().tolist()) / values.size
    centred = values - mean
    variance = math.fsum(np.square(centred).ravel().tolist()) / values.size
    if variance == 0:
        raise DatasetError(f"{path}: constant volume (every voxel {values.flat[0]:g}); it cannot be z-scored")
    return (centred / math.sqrt(variance)).astype(np.float32)


H5_SUFFIXES = (".h5", ".hdf5")


def _read_raw_volume_pair(spec: DatasetSpec, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one volume pair at its native shape: (image as stored, labels uint8 class indices).

    A ``.h5``/``.hdf5`` sample is one file holding both (:func:`read_h5_volume_pair`); otherwise image and label
    are two NIfTI files.
    """
    if sample.image.suffix.lower() in H5_SUFFIXES:
        image, raw_labels = read_h5_volume_pair(sample.image)
    else:
        image = read_volume(sample.image)
        raw_labels = read_volume_mask(sample.mask)
        if raw_labels.shape != image.shape:
            raise DatasetError(
                f"{sample.mask}: label shape {raw_labels.shape} differs from image {sample.image} shape {image.shape}"
            )
    return image, spec.mask.to_labels(raw_labels, sample.mask)


def read_volume_pair(spec: DatasetSpec, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one volume pair at its native shape: (z-scored image float32 (D, H, W), labels uint8)."""
    image, labels = _read_raw_volume_pair(spec, sample)
    return zscore(image, sample.image), labels


def _blocks(n: int, factor: int, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) along one axis of n voxels of each block of ``factor`` voxels, one per ``factor``
    step (``ceil(n / factor)`` blocks), widened by ``margin`` on each side and clipped to the axis."""
    starts = np.arange(0, n, factor)
    return np.clip(starts - margin, 0, n), np.clip(starts + factor + margin, 0, n)


def _box_counts(mask: np.ndarray, factor: tuple[int, ...], margins: list[tuple[int, ...]]) -> list[np.ndarray]:
    """For each of ``margins``: the number of True voxels of ``mask`` in each block (see :func:`_blocks`). Exact:
    differences of one integer cumulative sum (a summed-volume table)."""
    table = np.zeros(tuple(n + 1 for n in mask.shape), dtype=np.int64)
    small = np.int32 if mask.size < 2**31 else np.int64
    table[1:, 1:, 1:] = mask.astype(small).cumsum(0, dtype=small).cumsum(1, dtype=small).cumsum(2)
    counts = []
    for margin in margins:
        bounds = [_blocks(n, f, m) for n, f, m in zip(mask.shape, factor, margin, strict=True)]
        total = np.zeros(tuple(len(lo) for lo, _ in bounds), dtype=np.int64)
        for corner in np.ndindex(2, 2, 2):
            index = np.ix_(*(bounds[axis][side] for axis, side in enumerate(corner)))
            total += (-1) ** (3 - sum(corner)) * table[index]
        counts.append(total)
    return counts


def _box_sizes(shape: tuple[int, ...], factor: tuple[int, ...], margin: tuple[int, ...]) -> np.ndarray:
    """The number of voxels of each block (see :func:`_blocks`): fewer at the edges, where blocks are clipped."""
    lengths = [hi - lo for lo, hi in (_blocks(n, f, m) for n, f, m in zip(shape, factor, margin, strict=True))]
    return lengths[0][:, None, None] * lengths[1][None, :, None] * lengths[2][None, None, :]


def downsample(
    image: np.ndarray, labels: np.ndarray, factor: tuple[int, int, int], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Reduce a volume by an integer ``factor`` per axis: ``ceil(n / factor)`` voxels per axis.

    - image: the mean of each block of ``factor`` voxels (area averaging; a last, partial block averages the
      voxels it holds), float64, summed in a fixed order so the bytes are the same on every machine.
    - labels: the class holding most of the block's voxels (majority, i.e. the averaged one-hot mask thresholded
      at 0.5 for two classes), not nearest-neighbour: the majority's block is the image's block, so labels and
      image stay aligned, while nearest takes one corner voxel of each block, half a native voxel off the block's
      centre. A tie (4 of 8 voxels at factor 2) goes to the class holding most of the block widened by
      ``factor // 2`` voxels on every side (4^3 at factor 2), a further tie to the lower class (background).
      On LA2018 (factor 2) the labelled volume becomes 0.979 of the native one (times 8); ties always going to
      background would give 0.968, always to the foreground 1.028. Counts are integers, so the rule is exact.
    """
    factor = tuple(int(f) for f in factor)
    if image.shape != labels.shape or image.ndim != 3:
        raise ValueError(f"downsample: image {image.shape} and labels {labels.shape} must be one 3D shape")
    block, widened = (0, 0, 0), tuple(f // 2 for f in factor)
    padded = np.zeros(tuple(-(-n // f) * f for n, f in zip(image.shape, factor, strict=True)), dtype=np.float64)
    padded[tuple(slice(0, n) for n in image.shape)] = image
    total = np.zeros(tuple(-(-n // f) for n, f in zip(image.shape, factor, strict=True)), dtype=np.float64)
    for offset in np.ndindex(*factor):
        total += padded[tuple(slice(o, None, f) for o, f in zip(offset, factor, strict=True))]
    sizes = [_box_sizes(labels.shape, factor, margin) for margin in (block, widened)]
    counts = [_box_counts(labels == c, factor, [block, widened]) for c in range(1, num_classes)]
    # Class 0 holds the voxels no other class holds; the score orders by block count, then widened count.
    scale = int(sizes[1].max()) + 1
    score = [(sizes[0] - sum(c[0] for c in counts)) * scale + (sizes[1] - sum(c[1] for c in counts))]
    score += [block_count * scale + widened_count for block_count, widened_count in counts]
    return total / sizes[0], np.stack(score).argmax(axis=0).astype(np.uint8)


def centre_in(array: np.ndarray, shape: tuple[int, ...], fill: float | bool) -> np.ndarray:
    """``array`` centred in ``shape`` along its leading axes: padded with ``fill`` where it is smaller, its middle
    kept where it is larger (an odd difference puts the extra voxel after)."""
    out = np.full(tuple(shape) + array.shape[len(shape) :], fill, dtype=array.dtype)
    source, target = [], []
    for n, size in zip(array.shape, shape, strict=False):
        offset = abs(n - size) // 2
        source.append(slice(offset, offset + size) if n > size else slice(0, n))
        target.append(slice(0, size) if n > size else slice(offset, offset + n))
    out[tuple(target)] = array[tuple(source)]
    return out


def prepare_volume(spec: DatasetSpec, sample: Sample) -> PreparedPair:
    """One volume pair, downsampled where the dataset says so, z-scored and centred in ``spec.volume_shape`` (see
    the module's docstring)."""
    image, labels = _read_raw_volume_pair(spec, sample)
    native_shape, native_labelled = labels.shape, int(np.count_nonzero(labels))
    if spec.volume_downsample is not None:
        image, labels = downsample(image, labels, spec.volume_downsample, spec.num_classes)
    image = zscore(image, sample.image)
    shape = tuple(spec.volume_shape or ())
    fitted = centre_in(labels, shape, 0)
    crop = None
    if any(n > size for n, size in zip(labels.shape, shape, strict=True)):
        crop = {
            "native_shape": list(native_shape),
            **({"downsampled_shape": list(labels.shape)} if spec.volume_downsample is not None else {}),
            "voxels_cut": [max(0, n - size) for n, size in zip(labels.shape, shape, strict=True)],
            "labelled_voxels_lost": int(np.count_nonzero(labels) - np.count_nonzero(fitted)),
        }
    return PreparedPair(
        centre_in(image, shape, 0.0)[..., None],
        fitted,
        centre_in(np.ones(labels.shape, dtype=bool), shape, False),
        crop,
        native_shape=native_shape,
        labelled_voxels=(native_labelled, int(np.count_nonzero(labels))),
    )


def prepare_pair(spec: DatasetSpec, sample: Sample, scale: ScalePreset) -> PreparedPair:
    if spec.ndim == 3:
        return prepare_volume(spec, sample)
    image, labels, valid = read_pair(spec, sample)
    size = target_size(spec, image.shape[:2], scale)
    if valid is not None:
        valid = resize_labels(valid.astype(np.uint8), 2, size).astype(bool)
    return PreparedPair(_resize_image(image, size), resize_labels(labels, spec.num_classes, size), valid)


def prepare_dataset(
    name: str,
    scale: ScalePreset,
    out_dir: Path | None = None,
    data_root: Path | str | None = None,
    splits_dir: Path | None = None,
    workers: int = 2,
) -> Path:
    """Validate and cache dataset ``name`` at ``scale``; returns the output folder.

    The folder is written whole beside ``out_dir`` and put in its place only when complete, so a prepare that fails
    leaves the last good one as it was. A split too small to score on is warned about (:func:`warn_small_splits`).

    Raises:
        DatasetError: naming every bad file (unreadable, unpaired, wrong size, unexpected mask values) or
            split problem. Nothing is written in that case.
    """
    spec = get_dataset(name)
    samples = spec.samples(data_root)
    split = load_split(spec, samples, splits_dir)
    warn_small_splits(spec, samples, split)
    by_id = {s.id: s for s in samples}

    def guarded(sample: Sample) -> PreparedPair | str:
        try:
            return prepare_pair(spec, sample, scale)
        except DatasetError as err:
            return str(err)

    # Decoding releases the GIL, so a thread per core nearly halves the time; map keeps the order.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        prepared = dict(zip(by_id, pool.map(guarded, by_id.values()), strict=True))
    problems = [p for p in prepared.values() if isinstance(p, str)]
    if problems:
        raise problems_error(f"dataset '{name}': {len(problems)} bad pair(s)", problems)

    out_dir = Path(out_dir or PROCESSED_DIR / scale.name / name)
    arrays: dict[str, np.ndarray] = {}
    for split_name in SPLIT_NAMES:
        pairs = [prepared[i] for i in split[split_name]]
        shapes = {p.image.shape[:2]: i for i, p in zip(split[split_name], pairs, strict=True)}
        if len(shapes) != 1:
            examples = ", ".join(f"{h}x{w} ({i})" for (h, w), i in sorted(shapes.items())[:4])
            raise DatasetError(
                f"dataset '{name}' split '{split_name}': large_images keeps each image's size, and a split's "
                f"images must share one; found {examples}"
            )
        arrays[f"{split_name}_images"] = np.stack([p.image for p in pairs])
        arrays[f"{split_name}_masks"] = np.stack([p.labels for p in pairs])
        if pairs[0].valid is not None:
            arrays[f"{split_name}_valid"] = np.stack([p.valid for p in pairs])

    meta = {
        "dataset": name,
        "title": spec.title,
        "source": spec.source,
        "scale": scale.name,
        "class_names": list(spec.class_names),
        "in_channels": spec.in_channels,
        "large_images": spec.large_images,
        "image_shape": {k: list(arrays[f"{k}_images"].shape[1 : 1 + spec.ndim]) for k in SPLIT_NAMES},
        "ids": split,
    }
    if spec.ndim == 3:
        crops = {i: p.crop for i, p in prepared.items() if p.crop is not None}
        meta |= {
            "ndim": 3,
            "volume_shape": list(spec.volume_shape or ()),
            "normalisation": "z-score per case over the whole volume (exact sums), float32",
            "padding": "centred; image 0.0 (the case's mean), mask 0 (background), valid False",
            "cases_cropped": len(crops),
            "labelled_voxels_lost": sum(c["labelled_voxels_lost"] for c in crops.values()),
            "cropped": crops,
        }
        if spec.volume_downsample is not None:
            factor = list(spec.volume_downsample)
            native, reduced = (sum(p.labelled_voxels[k] for p in prepared.values()) for k in (0, 1))
            meta |= {
                "normalisation": "block mean (downsampling), then z-score per case over the whole downsampled "
                "volume (exact sums), float32",
                "downsample": {
                    "factor": factor,
                    "image": "mean of each block of factor voxels (a partial last block: of the voxels it holds)",
                    "labels": "majority class of each block; ties: majority of the block widened by factor // 2 "
                    "voxels on every side, then the lower class",
                    "shape": "ceil(native / factor) per axis, then centred in volume_shape",
                    "labelled_volume_ratio": round(reduced * math.prod(factor) / native, 4) if native else None,
                },
                "native_shape": {i: list(p.native_shape) for i, p in prepared.items()},
            }
    _write_in_place_of(out_dir, arrays, meta)
    return out_dir


def _write_in_place_of(out_dir: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write the prepared arrays and ``meta.json`` into a new folder beside ``out_dir``, then put it in its place.

    A prepare that fails, even while writing (a full disk), leaves the last good folder as it was: the prepare
    stages keep their output (``persist`` in dvc.yaml), so this swap is the only thing that replaces it.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".new", dir=out_dir.parent))
    previous = fresh.with_suffix(".old")
    try:
        # mkdtemp makes a private folder; the prepared one is as readable as the folder it lies in.
        fresh.chmod(out_dir.parent.stat().st_mode & 0o777)
        for key, array in arrays.items():
            np.save(fresh / f"{key}.npy", np.ascontiguousarray(array))
        (fresh / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        if out_dir.exists():
            out_dir.rename(previous)
        fresh.rename(out_dir)
    except BaseException:
        if previous.exists() and not out_dir.exists():
            previous.rename(out_dir)
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    # The new data is in place: a leftover of the old (a file another process holds open) must not fail the prepare.
    shutil.rmtree(previous, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("--scale", help="scale preset (default: params.yaml's `scale`)")
    parser.add_argument("--out", type=Path, help="output folder (default: data/processed/<scale>/<dataset>)")
    parser.add_argument("--data-root", help="data root (default: params.yaml's `data_root`)")
    parser.add_argument("--draw-split", action="store_true", help="draw and write data/splits/<dataset>.json")
    parser.add_argument("--debug", action="store_true", help=f"show the traceback of an error (also: {DEBUG_ENV}=1)")
    args = parser.parse_args(argv)
    try:
        _run(args)
    except (DatasetError, ValueError, OSError, yaml.YAMLError) as err:
        # Bad input (unknown name, bad option, unreadable file) is the user's to fix: the message names it.
        if args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        sys.exit(f"error: {err}")


def _run(args: argparse.Namespace) -> None:
    params = load_params()
    check_custom_names(params.get("prepare", {}).get("custom_datasets") or {})
    data_root = args.data_root or params.get("data_root")
    if args.draw_split:
        spec = get_dataset(args.dataset)
        samples = spec.samples(data_root)
        split = draw_split(spec, samples)
        print(f"wrote {write_split(spec, split, SPLIT_SEED)}")
        warn_small_splits(spec, samples, split)
        return
    out = prepare_dataset(args.dataset, scale_preset(args.scale, params), args.out, data_root)
    print(f"prepared {args.dataset} -> {out}")
    meta = json.loads((out / "meta.json").read_text())
    if meta.get("cases_cropped"):
        print(
            f"note: {meta['cases_cropped']} volume(s) cropped to {meta['volume_shape']}, losing "
            f"{meta['labelled_voxels_lost']} labelled voxel(s); meta.json lists each"
        )


if __name__ == "__main__":
    main()
