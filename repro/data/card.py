"""Dataset cards: what each dataset holds, at its native resolution (``notebooks/datasets.ipynb``).

2D datasets: :func:`cards_table`, :func:`sample_grid`; volumes: :func:`volume_card`, :func:`volume_slices`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from repro.data.overlay import overlay, short_id
from repro.data.prepare import read_pair, read_volume_pair
from repro.data.registry import get_dataset
from repro.data.splits import SPLIT_NAMES, load_split


def dataset_card(name: str, data_root: str | None = None) -> dict:
    """Counts per split, native image sizes and per-class pixel fractions of dataset ``name``.

    Every pair is read and validated, so a card that renders is also a check of the data on disk.
    """
    spec = get_dataset(name)
    samples = spec.samples(data_root)
    split = load_split(spec, samples)
    with ThreadPoolExecutor(max_workers=2) as pool:
        pairs = list(pool.map(lambda s: read_pair(spec, s), samples))
    heights = np.array([labels.shape[0] for _, labels, _ in pairs])
    widths = np.array([labels.shape[1] for _, labels, _ in pairs])
    class_pixels = sum(np.bincount(labels.ravel(), minlength=spec.num_classes) for _, labels, _ in pairs)
    return {
        "dataset": name,
        "title": spec.title,
        **{f"n_{k}": len(split[k]) for k in SPLIT_NAMES},
        "channels": spec.in_channels,
        "sizes (H x W)": _size_range(heights, widths),
        "distinct sizes": len(set(zip(heights.tolist(), widths.tolist(), strict=True))),
        "foreground fraction": ", ".join(
            f"{c} {class_pixels[k] / class_pixels.sum():.3f}" for k, c in enumerate(spec.class_names) if k
        ),
        "training": "random patches, sliding-window test" if spec.large_images else "resized to a square",
    }


def _size_range(heights: np.ndarray, widths: np.ndarray) -> str:
    if heights.min() == heights.max() and widths.min() == widths.max():
        return f"{heights[0]} x {widths[0]}"
    return f"{heights.min()}..{heights.max()} x {widths.min()}..{widths.max()}"


def cards_table(names: list[str], data_root: str | None = None) -> pd.DataFrame:
    """One row per dataset (see :func:`dataset_card`)."""
    return pd.DataFrame([dataset_card(n, data_root) for n in names]).set_index("dataset")


def sample_grid(name: str, n: int = 4, data_root: str | None = None) -> Figure:
    """The first ``n`` training pairs (in id order) of ``name``: image above, mask overlaid below."""
    spec = get_dataset(name)
    samples = spec.samples(data_root)
    train_ids = set(load_split(spec, samples)["train"])
    chosen = [s for s in samples if s.id in train_ids][:n]
    fig, axes = plt.subplots(2, n, figsize=(2.0 * n, 4.2), squeeze=False)
    for column, sample in enumerate(chosen):
        image, labels, _ = read_pair(spec, sample)
        axes[0, column].imshow(overlay(image, np.zeros_like(labels)))
        axes[0, column].set_title(short_id(sample.id), fontsize=8)
        axes[1, column].imshow(overlay(image, labels))
        for ax in axes[:, column]:
            ax.axis("off")
    fig.suptitle(f"{spec.title}: {', '.join(spec.class_names[1:])} overlaid", fontsize=10)
    fig.tight_layout()
    return fig


def volume_card(name: str, data_root: str | None = None) -> pd.Series:
    """Counts per split, native shapes, the prepared shape with the cases it crops, and per-class voxel fractions
    of the 3D dataset ``name``; like :func:`dataset_card`, it reads and validates every pair."""
    spec = get_dataset(name)
    samples = spec.samples(data_root)
    split = load_split(spec, samples)
    with ThreadPoolExecutor(max_workers=2) as pool:
        labels = [pair[1] for pair in pool.map(lambda s: read_volume_pair(spec, s), samples)]
    shapes = np.array([volume.shape for volume in labels])
    voxels = sum(np.bincount(volume.ravel(), minlength=spec.num_classes) for volume in labels)
    factor = np.array(spec.volume_downsample or (1, 1, 1))
    cropped = int((-(-shapes // factor) > np.array(spec.volume_shape)).any(axis=1).sum())
    return pd.Series(
        {
            "title": spec.title,
            **{f"n_{k}": len(split[k]) for k in SPLIT_NAMES},
            "channels": spec.in_channels,
            "shapes (D x H x W)": " x ".join(
                f"{lo}..{hi}" for lo, hi in zip(shapes.min(0), shapes.max(0), strict=True)
            ),
            "median shape": " x ".join(f"{m:g}" for m in np.median(shapes, axis=0)),
            "distinct shapes": len({tuple(s) for s in shapes.tolist()}),
            "prepared shape": " x ".join(map(str, spec.volume_shape or ()))
            + (f" (downsampled by {' x '.join(map(str, factor))})" if spec.volume_downsample else ""),
            "cases cropped": cropped,
            "voxel fraction": ", ".join(f"{c} {voxels[k] / voxels.sum():.3f}" for k, c in enumerate(spec.class_names)),
        },
        name=name,
    )


def volume_slices(name: str, n: int = 3, data_root: str | None = None) -> Figure:
    """The first ``n`` training volumes (in id order), z-scored as prepared: one row each, the three orthogonal
    slices through the centre of its labelled voxels, labels overlaid."""
    spec = get_dataset(name)
    samples = spec.samples(data_root)
    train_ids = set(load_split(spec, samples)["train"])
    chosen = [s for s in samples if s.id in train_ids][:n]
    fig, axes = plt.subplots(n, 3, figsize=(6.6, 2.3 * n), squeeze=False)
    for row, sample in enumerate(chosen):
        image, labels = read_volume_pair(spec, sample)
        centre = np.argwhere(labels > 0).mean(axis=0).round().astype(int)
        for axis in range(3):
            cut = [slice(None)] * 3
            cut[axis] = centre[axis]
            ax = axes[row, axis]
            ax.imshow(overlay(image[tuple(cut)][..., None], labels[tuple(cut)]))
            ax.set_title(f"{short_id(sample.id)}, axis {axis} = {centre[axis]}", fontsize=8)
            ax.axis("off")
    fig.suptitle(f"{spec.title}: {', '.join(spec.class_names[1:])} overlaid", fontsize=10)
    fig.tight_layout()
    return fig
