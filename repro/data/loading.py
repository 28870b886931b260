"""Prepared datasets (``repro.data.prepare``'s output) loaded as in-memory tensors for training.

Every split is one tensor (no DataLoader, no worker processes): the training hot path indexes it directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


@dataclass
class Split:
    """One split held in memory.

    Args:
        images: float32 (N, C, H, W), normalised with the training split's channel statistics; volumes
            (N, C, D, H, W), z-scored per case by ``repro.data.prepare``.
        masks: int64 (N, H, W) or (N, D, H, W) class indices.
        valid: bool, the shape of ``masks``: region of interest, or None where every pixel counts.
        ids: image ids, in order.
    """

    images: Tensor
    masks: Tensor
    valid: Tensor | None
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device) -> Split:
        """This split on ``device`` (itself when it is already there)."""
        if self.images.device == device:
            return self
        return Split(
            images=self.images.to(device),
            masks=self.masks.to(device),
            valid=None if self.valid is None else self.valid.to(device),
            ids=self.ids,
        )


@dataclass
class PreparedData:
    """A prepared dataset (output of ``repro.data.prepare``) loaded as tensors."""

    name: str
    class_names: list[str]
    in_channels: int
    large_images: bool
    train: Split
    val: Split
    test: Split
    volumetric: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def channel_statistics(train_images: np.ndarray, in_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel mean and standard deviation (+1e-6) of prepared uint8 training images scaled to [0, 1], in
    float64: the normalisation of every split of a 2D run, and of the images ``repro.predict`` applies it to."""
    train_pixels = train_images.reshape(-1, in_channels).astype(np.float64) / 255.0
    return train_pixels.mean(axis=0), train_pixels.std(axis=0) + 1e-6


def normalise(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Prepared uint8 images (channels last) scaled to [0, 1] and normalised by ``mean`` and ``std``, in float32."""
    return (images.astype(np.float32) / 255.0 - mean.astype(np.float32)) / std.astype(np.float32)


def load_prepared(
    folder: Path | str, max_train_images: int | None = None, max_eval_images: int | None = None
) -> PreparedData:
    """Load ``data/processed/<scale>/<dataset>/`` into tensors.

    Args:
        folder: the prepared dataset folder.
        max_train_images: keep only the first this-many training images (smoke runs); None keeps all.
        max_eval_images: likewise for validation and test.
    """
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())

    def arrays(split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str]]:
        valid_file = folder / f"{split}_valid.npy"
        valid = np.load(valid_file)[:limit] if valid_file.exists() else None
        return (
            np.load(folder / f"{split}_images.npy")[:limit],
            np.load(folder / f"{split}_masks.npy")[:limit],
            valid,
            meta["ids"][split][:limit],
        )

    raw = {"train": arrays("train", max_train_images)}
    raw["val"] = arrays("val", max_eval_images)
    raw["test"] = arrays("test", max_eval_images)
    volumetric = meta.get("ndim", 2) == 3
    if volumetric:  # z-scored per case when prepared
        mean, std = np.zeros(meta["in_channels"]), np.full(meta["in_channels"], 1 / 255.0)
    else:
        mean, std = channel_statistics(raw["train"][0], meta["in_channels"])

    def to_split(images: np.ndarray, masks: np.ndarray, valid: np.ndarray | None, ids: list[str]) -> Split:
        normalised = normalise(images, mean, std)
        channels_first = (0, images.ndim - 1, *range(1, images.ndim - 1))
        return Split(
            images=torch.from_numpy(np.ascontiguousarray(normalised.transpose(channels_first))),
            masks=torch.from_numpy(masks.astype(np.int64)),
            valid=None if valid is None else torch.from_numpy(valid),
            ids=list(ids),
        )

    return PreparedData(
        name=meta["dataset"],
        class_names=meta["class_names"],
        in_channels=meta["in_channels"],
        large_images=meta["large_images"],
        **{split: to_split(*raw[split]) for split in ("train", "val", "test")},
        volumetric=volumetric,
    )
