"""U-Net and wide U-Net as configured in the UNet++ paper's official code (MrGiovanni/UNetPlusPlus, Keras).

Five levels (``levels=5``) with widths ``filters`` (U-Net: 32, 64, 128, 256, 512; wide U-Net: 35, 70, 140, 280,
560, sized to match UNet++'s parameter count). Each node is two 3x3 convolutions with bias + ReLU; 2x2
max-pooling goes down; a 2x2 stride-2 transposed convolution with bias goes up to the target level's width, and
is concatenated with the skip; a 1x1 convolution gives the logits.

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

``spatial_dims=3`` builds the same network from 3D layers (3x3x3 convolutions, BatchNorm3d, 2x2x2 max-pooling
and 2x2x2 stride-2 transposed convolutions), and ``levels`` sets the number of levels; the registry's ``unet3d``
is this class with ``spatial_dims=3`` and the 3D U-Net paper's depth and widths (see :data:`UNET3D_FILTERS`).

The 3D U-Net (Cicek et al., MICCAI 2016) compared with ``unet3d``. Reproduced: four levels (three 2x2x2
max-poolings), two 3x3x3 convolutions per node, each followed by BatchNorm and ReLU, 2x2x2 stride-2
up-convolutions, concatenated skips, a 1x1x1 convolution to the classes, and the paper's widths at every
node output (64 / 128 / 256 / 512 in the encoder, 256 / 128 / 64 in the decoder), so the skips, the bottleneck
and the head have the paper's widths (taking the widths of the first convolutions, 32 / 64 / 128 / 256, would
halve all of those instead). Not reproduced: (1) the paper doubles the width inside each encoder block
(32 then 64, 64 then 128, 128 then 256, 256 then 512), while our node uses its width twice, so the first
convolution of each encoder node here is twice as wide as the paper's; (2) the paper's up-convolution keeps the
coarser node's width (512 -> 512, 256 -> 256, 128 -> 128) while ours halves it to the target level's width, as
our 2D U-Net does; (3) the paper's convolutions are unpadded (valid; a 132x132x116 input gives a 44x44x28 output
and the skips are cropped), ours are padded, so output and input have the same size. The paper reports
19,069,955 parameters (3 input channels, 3 classes); ``unet3d`` with 1 input channel and 3 classes has 22,399,555
(22,393,923 without BatchNorm): (1) adds 7,023,936 and (2) removes 3,699,136 of the paper's structure's.
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
    conv_nd,
    init_keras2018,
    make_block,
    max_pool_nd,
    scale_width,
)
from repro.models.contract import SegmentationNetwork

UNET_FILTERS = (32, 64, 128, 256, 512)
WIDE_UNET_FILTERS = (35, 70, 140, 280, 560)
# The 3D U-Net paper's node output widths (four levels); see the module docstring for what differs.
UNET3D_FILTERS = (64, 128, 256, 512)


class UNet(SegmentationNetwork):
    """U-Net with ``levels`` levels (``levels - 1`` 2x down-samplings; five by default), 2D or 3D.

    Args:
        in_channels: input image channels.
        num_classes: output channels (1 for binary segmentation with a sigmoid).
        filters: width of each level (``levels`` widths).
        norm: ``"batch"`` or ``None`` (official).
        dropout: dropout after every activation (official: 0.5).
        block: ``"double_conv"`` (official) or ``"cmrf"``.
        n_dwconv: CMRF's N when ``block="cmrf"`` (default 8).
        width_mult: multiplies every width (reduced-scale runs).
        init: ``"pytorch"`` (PyTorch's defaults) or ``"keras2018"`` (the official Keras initialisation).
        levels: number of levels (at least 2); inputs must be multiples of ``2 ** (levels - 1)``.
        spatial_dims: 2 (images ``(N, C, H, W)``) or 3 (volumes ``(N, C, D, H, W)``; ``block="double_conv"``).
    """

    paper = (
        "Ronneberger et al., U-Net, MICCAI 2015, as configured by Zhou et al., UNet++, DLMIA 2018;"
        " 3D: Cicek et al., 3D U-Net, MICCAI 2016"
    )
    official_code = "MrGiovanni/UNetPlusPlus (Keras)"

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
        levels: int = 5,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        check_choice("init", init, INITS)
        if not isinstance(levels, int) or levels < 2:
            raise ValueError(f"levels must be an int >= 2; got {levels!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.spatial_dims = spatial_dims
        self.size_divisor = 2 ** (levels - 1)
        make_node, divisor = make_block(block, norm=norm, dropout=dropout, n_dwconv=n_dwconv, spatial_dims=spatial_dims)
        widths = [scale_width(w, width_mult, divisor) for w in check_filters(filters, levels)]
        self.widths = tuple(widths)

        self.pool = max_pool_nd(spatial_dims)(2)
        self.encoder = nn.ModuleList(
            make_node(c_in, c_out) for c_in, c_out in zip([in_channels, *widths[:-1]], widths, strict=True)
        )
        # decoder[k] produces level levels - 2 - k from the level below it and the encoder skip at its own level.
        self.decoder = nn.ModuleList(
            UpConcatNode(widths[level + 1], widths[level], widths[level], make_node, spatial_dims=spatial_dims)
            for level in reversed(range(levels - 1))
        )
        self.head = conv_nd(spatial_dims)(widths[0], num_classes, 1)
        if init == "keras2018":
            init_keras2018(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = []
        for level, node in enumerate(self.encoder):
            x = node(x if level == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for node in self.decoder:
            x = node(x, [skips.pop()])
        return self.head(x)
