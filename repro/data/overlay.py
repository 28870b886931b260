"""Masks drawn over their images, for the dataset cards (``repro.data.card``) and the runs' figures of test cases
(``repro.training.figures``): one colour per foreground class, the image normalised per image for display."""

from __future__ import annotations

import numpy as np

# Colours of foreground classes 1, 2, ... in overlays (background stays transparent).
CLASS_COLOURS = np.array([[0.0, 0.9, 0.2], [1.0, 0.75, 0.0], [0.2, 0.5, 1.0], [1.0, 0.2, 0.6]])


def normalise(image: np.ndarray) -> np.ndarray:
    """(H, W, C) image of any range as RGB in [0, 1] for display."""
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
    return (rgb - rgb.min()) / max(float(rgb.max() - rgb.min()), 1e-6)


def overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB image in [0, 1] with each foreground class tinted in its colour."""
    rgb = normalise(image)
    tinted = rgb.copy()
    for label in range(1, int(labels.max()) + 1):
        where = labels == label
        tinted[where] = 0.45 * rgb[where] + 0.55 * CLASS_COLOURS[(label - 1) % len(CLASS_COLOURS)]
    return tinted


def short_id(image_id: str, length: int = 18) -> str:
    """Ids such as DSB2018's 64-character hashes, shortened to fit a panel title."""
    return image_id if len(image_id) <= length else image_id[: length - 1] + "…"
