"""Figures of one training run: learning curves and test cases with ground truth and prediction overlaid.

A run keeps its figures once, inside its executed notebook: :func:`show` embeds a figure and closes it. Test
cases are photographs and go in as JPEG (a tenth of their PNG size); line plots stay PNG.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from repro.data.overlay import normalise, overlay, short_id


def learning_curves(history: pd.DataFrame, best_epoch: int) -> Figure:
    """Training loss and validation Dice/IoU per epoch, with the selected epoch marked."""
    fig, (loss_ax, score_ax) = plt.subplots(1, 2, figsize=(9, 3.2))
    loss_ax.plot(history["epoch"], history["train_loss"], marker=".")
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="training loss")
    score_ax.plot(history["epoch"], history["val_dice"], marker=".", label="val Dice")
    score_ax.plot(history["epoch"], history["val_iou"], marker=".", label="val IoU")
    score_ax.axvline(best_epoch, color="grey", linestyle="--", label=f"selected (epoch {best_epoch})")
    score_ax.set(xlabel="epoch", ylabel="score", title="validation", ylim=(0, 1))
    score_ax.legend(loc="lower right", fontsize=8)
    for ax in (loss_ax, score_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def show(fig: Figure, image_format: str = "png", dpi: int = 80) -> None:
    """Embed ``fig`` in the notebook's output as ``png`` or ``jpeg`` at ``dpi``, then close it."""
    from IPython.display import Image, display

    buffer = io.BytesIO()
    options = {"pil_kwargs": {"quality": 85}} if image_format == "jpeg" else {}
    fig.savefig(buffer, format=image_format, dpi=dpi, **options)
    plt.close(fig)
    display(Image(data=buffer.getvalue(), format=image_format))


def displayable(images: torch.Tensor, masks: torch.Tensor, predictions: torch.Tensor) -> tuple[np.ndarray, ...]:
    """Images (N, H, W, C), ground truth and predictions (N, H, W) as arrays to draw; of volumes, the slice
    through each volume's middle along its first axis."""
    if masks.ndim == 4:
        middle = masks.shape[1] // 2
        images, masks, predictions = images[:, :, middle], masks[:, middle], predictions[:, middle]
    return images.permute(0, 2, 3, 1).numpy(), masks.numpy(), predictions.numpy()


def pick_cases(dice: Sequence[float]) -> dict[str, int]:
    """Indices of the best, median and worst test images by Dice (ties: the first in id order)."""
    order = np.argsort(np.asarray(dice), kind="stable")
    return {"worst": int(order[0]), "median": int(order[len(order) // 2]), "best": int(order[-1])}


def test_cases(images: np.ndarray, truth: np.ndarray, prediction: np.ndarray, per_image: pd.DataFrame) -> Figure:
    """Best, median and worst test images: image, ground truth overlaid, prediction overlaid.

    Args:
        images: (N, H, W, C) images (any scale; normalised per image for display).
        truth, prediction: (N, H, W) class indices.
        per_image: the per-image metrics table (columns ``id`` and ``dice``), in the same order.
    """
    cases = pick_cases(per_image["dice"].to_numpy())
    fig, axes = plt.subplots(len(cases), 3, figsize=(7.5, 2.6 * len(cases)), squeeze=False)
    for row, (name, index) in enumerate(cases.items()):
        panels = [
            (normalise(images[index]), f"{name}: {short_id(per_image['id'].iloc[index])}"),
            (overlay(images[index], truth[index]), "ground truth"),
            (
                overlay(images[index], prediction[index]),
                f"prediction (Dice {per_image['dice'].iloc[index]:.3f})",
            ),
        ]
        for ax, (panel, title) in zip(axes[row], panels, strict=True):
            ax.imshow(panel)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return fig
