"""Dataset cards: what each dataset holds, at its native resolution (``notebooks/datasets.ipynb``)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from repro.data.prepare import read_pair
from repro.data.registry import get_dataset
from repro.data.splits import SPLIT_NAMES, load_split
from repro.run_figures import overlay, short_id


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
