"""Semantics and Detail Infusion (SDI) of U-Net v2 (Peng et al., 2023), with its CBAM-style attention.

Follows the official code (yaoppeng/U-Net_v2, ``UNet_v2.py``). Per encoder level, :class:`SkipProjection`
applies channel attention then spatial attention (each a sigmoid gate multiplied into the features) and a
bias-free 1x1 convolution + BatchNorm to ``c`` channels. Then, per target level, :class:`SDI` resizes every
level to the target's size (adaptive average pooling from finer levels, bilinear interpolation with
``align_corners=True`` from coarser ones), smooths each by its own 3x3 convolution with bias, and multiplies them
all element-wise. U-Net v2 fuses four levels (strides 4-32); its all-levels variant (``levels="all"`` in
:class:`repro.models.unetv2.UNetV2`, from the official README) fuses six (strides 1-32), with six convolutions
per SDI.

Deviation: the official SDI resizes to a square of the target's width and chooses pooling or interpolation by
comparing widths; here each level is resized to the target's (height, width) and the direction is chosen by
level index, which is the same on square inputs and also correct on non-square ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_REDUCTION = 16
SPATIAL_KERNEL = 7


class ChannelAttention(nn.Module):
    """Sigmoid gate per channel from a shared bias-free MLP over the average- and max-pooled features.

    Args:
        channels: feature channels; the hidden layer has ``channels // 16`` (at least one).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(1, channels // ATTENTION_REDUCTION)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1))
        peak = self.mlp(F.adaptive_max_pool2d(x, 1))
        return torch.sigmoid(avg + peak)


class SpatialAttention(nn.Module):
    """Sigmoid gate per pixel from a bias-free 7x7 convolution over the channel mean and channel max."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, SPATIAL_KERNEL, padding=SPATIAL_KERNEL // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class SkipProjection(nn.Module):
    """One encoder level to the decoder width: [channel then spatial attention,] 1x1 conv (no bias) + BN.

    Args:
        in_channels: encoder channels at this level.
        out_channels: decoder width ``c``.
        attention: apply the channel and spatial attention gates first.
    """

    def __init__(self, in_channels: int, out_channels: int, *, attention: bool = True) -> None:
        super().__init__()
        self.channel_attention = ChannelAttention(in_channels) if attention else None
        self.spatial_attention = SpatialAttention() if attention else None
        self.project = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_attention is not None:
            x = self.channel_attention(x) * x
            x = self.spatial_attention(x) * x
        return self.project(x)


class SDI(nn.Module):
    """Fuse all levels into one target level by resizing, 3x3 smoothing and a Hadamard product.

    Args:
        channels: width ``c`` of every level.
        num_levels: number of encoder levels fused (four in U-Net v2, six in its all-levels variant).
    """

    def __init__(self, channels: int, num_levels: int = 4) -> None:
        super().__init__()
        self.smooth = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(num_levels))

    def forward(self, features: Sequence[torch.Tensor], target_level: int) -> torch.Tensor:
        """Fuse ``features`` (finest level first) at the resolution of ``features[target_level]``."""
        size = features[target_level].shape[-2:]
        fused = None
        for level, (feature, smooth) in enumerate(zip(features, self.smooth, strict=True)):
            if level < target_level:
                feature = F.adaptive_avg_pool2d(feature, size)
            elif level > target_level:
                feature = F.interpolate(feature, size=size, mode="bilinear", align_corners=True)
            feature = smooth(feature)
            fused = feature if fused is None else fused * feature
        return fused
