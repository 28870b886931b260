"""TinyU-Net (Chen et al., MICCAI 2024), as in the official code (ChenJunren-Lab/TinyU-Net).

Encoder: four CMRF blocks of widths 64, 128, 256, 512, each followed by 2x2 max-pooling (there is no
bottleneck block: the pooled output of the fourth feeds the decoder). Decoder: at each level, bicubic x2
upsampling (``align_corners=False``; computed as fixed convolutions by
:class:`~repro.models.upsample.BicubicUpsample2x`, equal to the official ``F.interpolate`` to float rounding and
twice as fast to train on a CPU), concatenation with the encoder output of that level, and a CMRF (inputs
1024, 768, 384, 192 -> 512, 256, 128, 64). A 1x1 convolution with bias gives the logits. With 3 input
channels and 2 classes this is 481,170 parameters.

Ablation options: ``n_dwconv`` (the CMRF's N; official 8) and ``block="double_conv"`` (every CMRF replaced
by two 3x3 convolution + BatchNorm + GELU blocks; GELU keeps the activation of the CMRF network, so only the
block structure changes). With ``block="cmrf"``, widths are rounded to multiples of ``2 * n_dwconv``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from repro.models.blocks import check_filters, make_block, scale_width
from repro.models.contract import SegmentationNetwork
from repro.models.upsample import BicubicUpsample2x

TINYUNET_FILTERS = (64, 128, 256, 512)


class TinyUNet(SegmentationNetwork):
    """TinyU-Net: a CMRF U-Net with four levels and no bottleneck block.

    Args:
        in_channels: input image channels.
        num_classes: output channels.
        filters: width of each of the four levels.
        block: ``"cmrf"`` (official) or ``"double_conv"`` (CMRF ablation).
        n_dwconv: CMRF's N (default 8; the paper's ablation uses 1, 2, 4, 8, 16).
        width_mult: multiplies every width (reduced-scale runs).
    """

    paper = "Chen et al., TinyU-Net, MICCAI 2024"
    official_code = "ChenJunren-Lab/TinyU-Net"

    size_divisor = 16

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        filters: Sequence[int] = TINYUNET_FILTERS,
        block: str = "cmrf",
        n_dwconv: int | None = None,
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        make_node, divisor = make_block(block, n_dwconv=n_dwconv, activation=nn.GELU)
        widths = [scale_width(w, width_mult, divisor) for w in check_filters(filters, 4)]
        self.widths = tuple(widths)

        self.pool = nn.MaxPool2d(2)
        self.upsample = BicubicUpsample2x()
        self.encoder = nn.ModuleList(
            make_node(c_in, c_out) for c_in, c_out in zip([in_channels, *widths[:-1]], widths, strict=True)
        )
        # The deepest decoder block takes the pooled 4th encoder output, of the same width as its skip.
        below = [widths[-1], *reversed(widths[1:])]
        self.decoder = nn.ModuleList(
            make_node(c_below + c_skip, c_skip) for c_below, c_skip in zip(below, widths[::-1], strict=True)
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = []
        for node in self.encoder:
            x = node(x)
            skips.append(x)
            x = self.pool(x)
        for node in self.decoder:
            x = self.upsample(x)
            x = node(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)
