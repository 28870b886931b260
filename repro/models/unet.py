"""U-Net and wide U-Net as configured in the UNet++ paper's official code (MrGiovanni/UNetPlusPlus, Keras).

Five levels with widths ``filters`` (U-Net: 32, 64, 128, 256, 512; wide U-Net: 35, 70, 140, 280, 560, sized
to match UNet++'s parameter count). Each node is two 3x3 convolutions with bias + ReLU; 2x2 max-pooling goes
down; a 2x2 stride-2 transposed convolution with bias goes up to the target level's width, and is
concatenated with the skip; a 1x1 convolution gives the logits.

Deviations from the official code, all selectable:
- ``norm="batch"`` (default) adds BatchNorm after every convolution, as the training study uses it;
  ``norm=None`` is the official, normalisation-free network (same parameter count as the Keras model).
- ``dropout=0.0`` by default; the official code applies dropout 0.5 after every convolution (``dropout=0.5``).
- The head returns logits; the official model ends in a sigmoid (the loss applies it here).
- ``init="pytorch"`` (default) keeps PyTorch's default initialisation; ``init="keras2018"`` is the official Keras
  one (:func:`~repro.models.blocks.init_keras2018`). The official ``l2(1e-4)`` penalty belongs to training;
  :func:`~repro.models.blocks.keras_l2_parameters` selects the kernels it applies to.
- ``block="cmrf"`` swaps every node for TinyU-Net's CMRF (the TinyU-Net paper's block-swap ablation); widths
  are then rounded to multiples of ``2 * n_dwconv``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from repro.models.blocks import (
    INITS,
    UpConcatNode,
    check_choice,
    check_filters,
    check_input_size,
    init_keras2018,
    make_block,
    scale_width,
)

UNET_FILTERS = (32, 64, 128, 256, 512)
WIDE_UNET_FILTERS = (35, 70, 140, 280, 560)


class UNet(nn.Module):
    """U-Net with five levels (four 2x down-samplings).

    Args:
        in_channels: input image channels.
        num_classes: output channels (1 for binary segmentation with a sigmoid).
        filters: width of each of the five levels.
        norm: ``"batch"`` or ``None`` (official).
        dropout: dropout after every activation (official: 0.5).
        block: ``"double_conv"`` (official) or ``"cmrf"``.
        n_dwconv: CMRF's N when ``block="cmrf"`` (default 8).
        width_mult: multiplies every width (reduced-scale runs).
        init: ``"pytorch"`` (PyTorch's defaults) or ``"keras2018"`` (the official Keras initialisation).
    """

    size_divisor = 16

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        filters: Sequence[int] = UNET_FILTERS,
        norm: str | None = "batch",
        dropout: float = 0.0,
        block: str = "double_conv",
        n_dwconv: int | None = None,
        width_mult: float = 1.0,
        init: str = "pytorch",
    ) -> None:
        super().__init__()
        check_choice("init", init, INITS)
        self.in_channels = in_channels
        self.num_classes = num_classes
        make_node, divisor = make_block(block, norm=norm, dropout=dropout, n_dwconv=n_dwconv)
        widths = [scale_width(w, width_mult, divisor) for w in check_filters(filters, 5)]
        self.widths = tuple(widths)

        self.pool = nn.MaxPool2d(2)
        self.encoder = nn.ModuleList(
            make_node(c_in, c_out) for c_in, c_out in zip([in_channels, *widths[:-1]], widths, strict=True)
        )
        # decoder[k] produces level 3 - k from the level below it and the encoder skip at its own level.
        self.decoder = nn.ModuleList(
            UpConcatNode(widths[level + 1], widths[level], widths[level], make_node) for level in reversed(range(4))
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        if init == "keras2018":
            init_keras2018(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.size_divisor, type(self).__name__)
        skips = []
        for level, node in enumerate(self.encoder):
            x = node(x if level == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for node in self.decoder:
            x = node(x, [skips.pop()])
        return self.head(x)
