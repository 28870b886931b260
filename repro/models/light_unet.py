"""The bilinear U-Net and Light U-Net / Lighter U-Net@C (Li et al., 2021; Yingping-LI/Light-U-net).

The official code builds on the bilinear U-Net of milesial/Pytorch-UNet: five levels of widths 64, 128, 256,
512, 512; each node is a double convolution ("Conv set 1", then "Conv set 2"), each followed by BatchNorm + ReLU;
2x2 max-pooling goes down; going up, the coarser output is upsampled bilinearly x2 (``align_corners=True``),
padded to the skip's size, concatenated after the skip, and passed through a double convolution whose middle
width is half its input; dropout 0.5 is applied to the bottleneck output; a 1x1 convolution gives the logits.
Every convolution has a bias. The variants differ in the conv sets:
- ``unet_bilinear``: both are 3x3 convolutions (17,267,393 parameters with 3 input channels, 1 class);
- ``light_unet``: set 2 is depthwise separable (3x3 depthwise with bias, then 1x1 with bias) (11,000,257);
- ``lighter_unet`` (``groups_c=C``): both sets are a grouped 3x3 with ``in // min(in, C)`` groups, then 1x1,
  so C is the channels per group, capped at the input channels (the 3-channel input layer uses C = 3 unless
  C = 1); C = 1 is depthwise separable (C=128: 7,944,661; C=1: 1,983,583).

Any input of at least 16x16 is accepted: the padding before each concatenation absorbs odd sizes.

Deviations from the official code: the head returns logits (official: sigmoid); ``norm=None`` (drop
BatchNorm) and ``width_mult`` are additions. ``width_mult`` scales ``groups_c`` with the widths (C > 1, rounded
like a width), so Lighter U-Net@C keeps its structure at a reduced width: at width 0.5, C = 128 becomes 64 and,
as at full width, the two shallowest levels stay ordinary convolutions while the deeper ones are grouped (an
unscaled C = 128 would make every layer of the half-width network an ordinary convolution). A width that
``groups_c`` does not divide into whole groups raises a ValueError (the official code would fail in ``nn.Conv2d``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from repro.models.blocks import ConvNormAct, check_choice, check_filters, scale_width
from repro.models.contract import SegmentationNetwork

VARIANTS = ("unet", "light", "lighter")
BILINEAR_FILTERS = (64, 128, 256, 512, 512)
BOTTLENECK_DROPOUT = 0.5

ConvFactory = Callable[[int, int], nn.Module]


def standard_conv(in_channels: int, out_channels: int) -> nn.Module:
    """A 3x3 convolution with bias."""
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


def grouped_conv(in_channels: int, out_channels: int, *, channels_per_group: int) -> nn.Module:
    """A grouped 3x3 convolution (``in // min(in, C)`` groups, with bias), then a 1x1 convolution with bias.

    ``channels_per_group=1`` gives a depthwise separable convolution.
    """
    groups = in_channels // min(in_channels, channels_per_group)
    if in_channels % groups:
        raise ValueError(
            f"groups_c={channels_per_group} gives {groups} groups, which do not divide a width of {in_channels};"
            " choose widths (filters, width_mult) that are multiples of groups_c"
        )
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=groups),
        nn.Conv2d(in_channels, out_channels, 1),
    )


class ConvSetDoubleConv(nn.Sequential):
    """Conv set 1 then conv set 2, each followed by [BatchNorm +] ReLU.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        mid_channels: channels between the two conv sets.
        first: factory of conv set 1.
        second: factory of conv set 2.
        norm: ``"batch"`` or ``None``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int,
        *,
        first: ConvFactory,
        second: ConvFactory,
        norm: str | None,
    ) -> None:
        super().__init__(
            ConvNormAct(first(in_channels, mid_channels), mid_channels, norm=norm),
            ConvNormAct(second(mid_channels, out_channels), out_channels, norm=norm),
        )


class BilinearUp(nn.Module):
    """Bilinear x2 upsampling, padding to the skip's size, concatenation ``[skip, upsampled]``, double conv.

    Args:
        double_conv: the node applied to the concatenation.
    """

    def __init__(self, double_conv: nn.Module) -> None:
        super().__init__()
        self.conv = double_conv

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        coarse = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=True)
        pad_h = skip.shape[-2] - coarse.shape[-2]
        pad_w = skip.shape[-1] - coarse.shape[-1]
        coarse = F.pad(coarse, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return self.conv(torch.cat([skip, coarse], dim=1))


class BilinearUNet(SegmentationNetwork):
    """The milesial bilinear U-Net with the conv sets of U-Net, Light U-Net or Lighter U-Net@C.

    Args:
        in_channels: input image channels.
        num_classes: output channels.
        variant: ``"unet"``, ``"light"`` or ``"lighter"``.
        groups_c: C of Lighter U-Net@C (channels per group at width 1.0; scaled by ``width_mult`` when > 1); only
            with ``variant="lighter"``.
        filters: width of each of the five levels.
        norm: ``"batch"`` (official) or ``None``.
        dropout: dropout on the bottleneck output (official 0.5).
        width_mult: multiplies every width (reduced-scale runs).
    """

    paper = "Li et al., Light U-Net and Lighter U-Net, 2021"
    official_code = "Yingping-LI/Light-U-net (on milesial/Pytorch-UNet's bilinear U-Net)"

    size_divisor = 1
    min_input_size = 16

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        variant: str = "unet",
        groups_c: int | None = None,
        filters: Sequence[int] = BILINEAR_FILTERS,
        norm: str | None = "batch",
        dropout: float = BOTTLENECK_DROPOUT,
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        check_choice("variant", variant, VARIANTS)
        if (variant == "lighter") != (groups_c is not None):
            raise ValueError("groups_c is required by, and only valid for, lighter_unet")
        if groups_c is not None and groups_c < 1:
            raise ValueError(f"groups_c must be a positive int; got {groups_c}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        widths = [scale_width(w, width_mult) for w in check_filters(filters, 5)]
        self.widths = tuple(widths)

        if variant == "unet":
            first = second = standard_conv
        elif variant == "light":
            first, second = standard_conv, partial(grouped_conv, channels_per_group=1)
        else:
            channels_per_group = groups_c if groups_c == 1 else scale_width(groups_c, width_mult)
            first = second = partial(grouped_conv, channels_per_group=channels_per_group)

        def double_conv(c_in: int, c_out: int, c_mid: int | None = None) -> nn.Module:
            return ConvSetDoubleConv(c_in, c_out, c_mid or c_out, first=first, second=second, norm=norm)

        self.pool = nn.MaxPool2d(2)
        self.encoder = nn.ModuleList(
            double_conv(c_in, c_out) for c_in, c_out in zip([in_channels, *widths[:-1]], widths, strict=True)
        )
        self.dropout = nn.Dropout(dropout)
        # Going up from level i + 1 to level i, the output width is that of level i - 1 (level 0 keeps its own),
        # so each concatenation is twice a level's width; the middle width is half the input, as in milesial.
        decoder = []
        below = widths[4]
        for level in reversed(range(4)):
            c_in = below + widths[level]
            below = widths[max(level - 1, 0)]
            decoder.append(BilinearUp(double_conv(c_in, below, c_in // 2)))
        self.decoder = nn.ModuleList(decoder)
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = []
        for level, node in enumerate(self.encoder):
            x = node(x if level == 0 else self.pool(x))
            skips.append(x)
        x = self.dropout(skips.pop())
        for up in self.decoder:
            x = up(x, skips.pop())
        return self.head(x)
