"""Reading images and masks of the formats the datasets ship (PNG, JPEG, TIFF, GIF, BMP, NIfTI).

Every reader raises :class:`DatasetError` naming the file when it cannot be read, so a broken file is reported
before any training starts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class DatasetError(ValueError):
    """Bad or missing input data; the message names the file(s) and what is wrong."""


def problems_error(header: str, problems: list[str], shown: int = 20) -> DatasetError:
    """One error listing several problems (the first ``shown`` of them), each naming its file."""
    lines = problems[:shown] + ([f"... and {len(problems) - shown} more"] if len(problems) > shown else [])
    return DatasetError(f"{header}:\n  " + "\n  ".join(lines))


def _open_pil(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DatasetError(f"{path}: unreadable image ({err})") from None
    return image


def read_image(path: Path, channels: int) -> np.ndarray:
    """Read a 2D image as uint8, shape (H, W, channels).

    Args:
        path: image file (PNG, JPEG, TIFF (incl. LZW-compressed), GIF or BMP).
        channels: 1 for grayscale, 3 for RGB; the file is converted to this.
    """
    mode = {1: "L", 3: "RGB"}[channels]
    array = np.asarray(_open_pil(Path(path)).convert(mode), dtype=np.uint8)
    return array[..., None] if channels == 1 else array


def read_mask(path: Path) -> np.ndarray:
    """Read a 2D mask as its raw uint8 values, shape (H, W).

    Palette ('P') images give their palette indices (the COVID multi-class masks store classes so); RGB masks
    (Kvasir-SEG's JPEGs) are converted to grayscale; 1-bit masks become {0, 255}.
    """
    image = _open_pil(Path(path))
    if image.mode not in ("L", "P"):
        image = image.convert("L")
    return np.asarray(image, dtype=np.uint8)


def read_volume(path: Path) -> np.ndarray:
    """Read a 3D NIfTI volume (for the 3D datasets) as a numpy array in its stored dtype."""
    import nibabel

    try:
        return np.asarray(nibabel.load(str(path)).dataobj)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except Exception as err:
        raise DatasetError(f"{path}: unreadable NIfTI volume ({err})") from None
