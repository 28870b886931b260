"""The recipe's augmentation and large-image patches, batched tensor indexing driven by one CPU generator (so a
seed draws the same transforms on every device)."""

from __future__ import annotations

import torch
from torch import Tensor

from repro.data.loading import Split


def random_dihedral(
    images: Tensor, masks: Tensor, valid: Tensor | None, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Apply one of the 8 flips/90-degree rotations to each sample (square inputs), drawn from ``generator``.

    Samples are grouped by their transform, so the cost is at most 8 batched index operations per batch.
    """
    choice = torch.randint(0, 8, (images.shape[0],), generator=generator)
    images, masks = images.clone(), masks.clone()
    valid = None if valid is None else valid.clone()
    for transform in choice.unique().tolist():
        index = (choice == transform).nonzero().squeeze(1).to(images.device)
        k, flip = transform % 4, transform >= 4
        for tensor in (images, masks) + ((valid,) if valid is not None else ()):
            picked = tensor[index]
            if flip:
                picked = picked.flip(-1)
            tensor[index] = picked.rot90(k, dims=(-2, -1))
    return images, masks, valid


def random_flips(
    images: Tensor, masks: Tensor, valid: Tensor | None, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Flip each sample along a random subset of its spatial axes (2^3 choices for a volume, 2^2 for an image),
    drawn from ``generator``: the augmentation of inputs that a 90-degree rotation would reshape (volumes, and
    images that are not square)."""
    spatial = masks.ndim - 1
    choice = torch.randint(0, 2**spatial, (images.shape[0],), generator=generator)
    images, masks = images.clone(), masks.clone()
    valid = None if valid is None else valid.clone()
    for transform in choice.unique().tolist():
        axes = [-1 - axis for axis in range(spatial) if transform >> axis & 1]
        if not axes:
            continue
        index = (choice == transform).nonzero().squeeze(1).to(images.device)
        for tensor in (images, masks) + ((valid,) if valid is not None else ()):
            tensor[index] = tensor[index].flip(axes)
    return images, masks, valid


def augment(
    images: Tensor, masks: Tensor, valid: Tensor | None, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The recipe's augmentation: :func:`random_dihedral` for square images, :func:`random_flips` otherwise."""
    square_image = masks.ndim == 3 and masks.shape[-1] == masks.shape[-2]
    return (random_dihedral if square_image else random_flips)(images, masks, valid, generator)


def random_patches(split: Split, patch_size: int, per_image: int, generator: torch.Generator) -> Split:
    """Draw ``per_image`` random square patches from every image of ``split`` (for large-image datasets)."""
    n, _, height, width = split.images.shape
    if height < patch_size or width < patch_size:
        raise ValueError(f"patch_size {patch_size} exceeds the prepared image size {height}x{width}")
    tops = torch.randint(0, height - patch_size + 1, (n * per_image,), generator=generator).tolist()
    lefts = torch.randint(0, width - patch_size + 1, (n * per_image,), generator=generator).tolist()
    sources = [k // per_image for k in range(n * per_image)]

    def crop(tensor: Tensor) -> Tensor:
        return torch.stack(
            [
                tensor[s, ..., top : top + patch_size, left : left + patch_size]
                for s, top, left in zip(sources, tops, lefts, strict=True)
            ]
        )

    return Split(
        images=crop(split.images),
        masks=crop(split.masks),
        valid=None if split.valid is None else crop(split.valid),
        ids=[split.ids[s] for s in sources],
    )
