"""Reading images and masks of the formats the datasets ship (PNG, JPEG, TIFF, GIF, BMP, NIfTI, HDF5).

Every reader raises :class:`DatasetError` naming the file when it cannot be read, so a broken file is reported
before any training starts. Images wider than 8 bits (16-bit microscopy, float TIFFs) are mapped to 8 bits by a
rule the dataset chooses (:data:`INTENSITY_RULES`) or refused; they are never clipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class DatasetError(ValueError):
    """Bad or missing input data; the message names the file(s) and what is wrong."""


def problems_error(header: str, problems: list[str], shown: int = 20) -> DatasetError:
    """One error listing several problems (the first ``shown`` of them), each naming its file; a single problem is
    one line, so that the command line's last line (and the study runner's cause) holds all of it."""
    if len(problems) == 1:
        return DatasetError(f"{header}: {problems[0]}")
    lines = problems[:shown] + ([f"... and {len(problems) - shown} more"] if len(problems) > shown else [])
    return DatasetError(f"{header}:\n  " + "\n  ".join(lines))


# Pillow's single-channel modes wider than 8 bits: 16-bit integers, 32-bit integers, 32-bit floats. Pillow's
# own conversion of these to "L" saturates at 255 (a 16-bit gradient becomes 99.6% white), so they are read
# as numbers and mapped here instead.
_WIDE_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
# How an image's values become 0..255: "bit_depth" divides by the largest value of the file's type (16-bit:
# 65535); "min_max" stretches each image's own range; a pair [low, high] maps that fixed range, and a value
# outside it is an error.
INTENSITY_RULES = ("bit_depth", "min_max", "[low, high]")
Intensity = str | tuple[float, float]


def _open_pil(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DatasetError(f"{path}: unreadable image ({err})") from None
    return image


def _to_uint8(values: np.ndarray, path: Path, intensity: Intensity, is_float: bool) -> np.ndarray:
    """Map an image's values to 0..255 by the rule ``intensity`` (see :data:`INTENSITY_RULES`)."""
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise DatasetError(f"{path}: image holds NaN or infinite values")
    if intensity == "bit_depth":
        if is_float:
            raise DatasetError(
                f"{path}: floating-point image, which has no bit depth; set `intensity: min_max` or "
                f"`intensity: [low, high]` in the dataset's entry"
            )
        low, high = 0.0, 65535.0
        if values.min() < 0 or values.max() > high:
            raise DatasetError(
                f"{path}: integer values {values.min():.0f}..{values.max():.0f} do not fit 16 bits; set "
                f"`intensity: min_max` or `intensity: [low, high]` in the dataset's entry"
            )
    elif intensity == "min_max":
        low, high = float(values.min()), float(values.max())
        if high == low:  # a blank image stays blank rather than dividing by zero
            return np.zeros(values.shape, dtype=np.uint8)
    else:
        low, high = intensity
        outside = (values < low) | (values > high)
        if outside.any():
            raise DatasetError(
                f"{path}: {int(outside.sum())} pixel(s) outside the dataset's intensity range [{low}, {high}] "
                f"(this image spans {values.min():g}..{values.max():g}); widen `intensity` in the dataset's entry"
            )
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def read_image(path: Path, channels: int, intensity: Intensity = "bit_depth") -> np.ndarray:
    """Read a 2D image as uint8, shape (H, W, channels).

    Args:
        path: image file (PNG, JPEG, TIFF (incl. LZW-compressed), GIF or BMP).
        channels: 1 for grayscale, 3 for RGB; the file is converted to this.
        intensity: how values become 0..255 (:data:`INTENSITY_RULES`). 8-bit files are taken as they are under
            "bit_depth"; single-channel 16-bit files are divided by 65535 (float files are refused, having no
            bit depth). Pillow decodes 16-bit colour PNGs at 8 bits per channel (their high byte).
    """
    path = Path(path)
    image = _open_pil(path)
    if image.mode in _WIDE_MODES:
        gray = _to_uint8(np.asarray(image), path, intensity, is_float=image.mode == "F")
        return gray[..., None] if channels == 1 else np.repeat(gray[..., None], channels, axis=-1)
    mode = {1: "L", 3: "RGB"}[channels]
    array = np.asarray(image.convert(mode), dtype=np.uint8)
    if intensity != "bit_depth":
        array = _to_uint8(array, path, intensity, is_float=False)
    return array[..., None] if channels == 1 else array


def read_mask(path: Path) -> np.ndarray:
    """Read a 2D mask as its raw values, shape (H, W): uint8, or uint16 for a 16-bit mask.

    Palette ('P') images give their palette indices (the COVID multi-class masks store classes so); RGB masks
    (Kvasir-SEG's JPEGs) are converted to grayscale; 1-bit masks become {0, 255}; 16-bit masks keep their
    values (a mask's values are labels, never rescaled). Float masks are refused.
    """
    path = Path(path)
    image = _open_pil(path)
    if image.mode in _WIDE_MODES:
        values = np.asarray(image)
        if image.mode == "F":
            raise DatasetError(f"{path}: floating-point mask; save labels as integers (8- or 16-bit)")
        if values.min() < 0 or values.max() > 65535:
            raise DatasetError(f"{path}: mask values {values.min()}..{values.max()} do not fit 16 bits")
        return values.astype(np.uint16)
    if image.mode not in ("L", "P"):
        image = image.convert("L")
    return np.asarray(image, dtype=np.uint8)


def read_volume(path: Path) -> np.ndarray:
    """Read a 3D NIfTI volume (``.nii`` or ``.nii.gz``) as a numpy array, axes as stored (i, j, k).

    The header's scaling (``scl_slope``, ``scl_inter``) is applied, so the dtype is the stored one or, for a
    scaled file, float. A file that does not load, or holds anything but a 3D array, is an error naming it.
    """
    import nibabel

    path = Path(path)
    try:
        volume = np.asarray(nibabel.load(str(path)).dataobj)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except Exception as err:  # nibabel and gzip raise many types for truncated or foreign files
        raise DatasetError(f"{path}: unreadable NIfTI volume ({type(err).__name__}: {err})") from None
    if volume.ndim != 3:
        raise DatasetError(f"{path}: expected a 3D volume, found shape {volume.shape}")
    return volume


def read_volume_mask(path: Path) -> np.ndarray:
    """Read a 3D NIfTI label volume as its raw values, int64 (D, H, W).

    Some label files are stored as floats (two of MSD Hippocampus's 260); their values must still be whole,
    non-negative numbers, which are labels and never rounded.
    """
    path = Path(path)
    raw = read_volume(path)
    if raw.dtype.kind == "f":
        whole = np.isfinite(raw) & (raw == np.round(raw))
        if not whole.all():
            bad = np.unique(raw[~whole])[:10].tolist()
            raise DatasetError(f"{path}: label volume holds values that are not whole numbers, e.g. {bad}")
    elif raw.dtype.kind not in "iub":
        raise DatasetError(f"{path}: label volume of type {raw.dtype}; save labels as integers")
    labels = raw.astype(np.int64)
    if labels.min() < 0:
        raise DatasetError(f"{path}: label volume holds negative values {np.unique(labels[labels < 0])[:10].tolist()}")
    return labels


def read_h5_volume_pair(
    path: Path, image_key: str = "image", label_key: str = "label"
) -> tuple[np.ndarray, np.ndarray]:
    """Read one HDF5 file holding an image volume and its label volume: (image float64, raw labels int64).

    The LA2018 left-atrium files (UA-MT's ``mri_norm2.h5``) hold two 3D datasets of one shape, ``image`` (float32)
    and ``label`` (uint8), axes as stored. Every problem is a :class:`DatasetError` naming the file and what is
    wrong: a missing or unreadable file, a missing dataset, a dataset that is not 3D, image and label of different
    shapes, an image with NaN or infinite values, labels that are not whole non-negative numbers. Which label values
    are allowed is the dataset's mask rule (:class:`repro.data.registry.ValueMask`), checked by the caller.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with h5py.File(path, "r") as handle:
            arrays = {}
            for key in (image_key, label_key):
                node = handle.get(key)
                if not isinstance(node, h5py.Dataset):
                    held = sorted(handle.keys())
                    what = "no dataset" if node is None else "a group, not a dataset, at"
                    raise DatasetError(f"{path}: {what} '{key}' (the file holds {held})")
                arrays[key] = np.asarray(node[()])
    except DatasetError:
        raise
    except Exception as err:  # h5py raises OSError, KeyError or RuntimeError for foreign or truncated files
        raise DatasetError(f"{path}: unreadable HDF5 file ({type(err).__name__}: {err})") from None
    image, raw = arrays[image_key], arrays[label_key]
    for key, array in ((image_key, image), (label_key, raw)):
        if array.ndim != 3 or 0 in array.shape:
            raise DatasetError(f"{path}: dataset '{key}': expected a non-empty 3D volume, found shape {array.shape}")
    if raw.shape != image.shape:
        raise DatasetError(f"{path}: '{label_key}' shape {raw.shape} differs from '{image_key}' shape {image.shape}")
    if image.dtype.kind not in "fiub":
        raise DatasetError(f"{path}: dataset '{image_key}' of type {image.dtype}; expected numbers")
    image = image.astype(np.float64)
    finite = np.isfinite(image)
    if not finite.all():
        raise DatasetError(f"{path}: dataset '{image_key}' holds {int((~finite).sum())} NaN or infinite value(s)")
    if raw.dtype.kind == "f":
        whole = np.isfinite(raw) & (raw == np.round(raw))
        if not whole.all():
            bad = np.unique(raw[~whole])[:10].tolist()
            raise DatasetError(f"{path}: dataset '{label_key}' holds values that are not whole numbers, e.g. {bad}")
    elif raw.dtype.kind not in "iub":
        raise DatasetError(f"{path}: dataset '{label_key}' of type {raw.dtype}; save labels as integers")
    labels = raw.astype(np.int64)
    if labels.min() < 0:
        negative = np.unique(labels[labels < 0])[:10].tolist()
        raise DatasetError(f"{path}: dataset '{label_key}' holds negative values {negative}")
    return image, labels
