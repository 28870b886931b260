"""The Cascade Multi-Receptive Fields (CMRF) block of TinyU-Net (Chen et al., MICCAI 2024).

Follows the official code (ChenJunren-Lab/TinyU-Net, ``CMRF``): a 1x1 convolution reduces the input to
``C_out / N`` channels; their even- and odd-indexed channels form two halves of ``C_out / 2N`` channels each;
the odd half feeds a cascade of ``N - 1`` depthwise 3x3 convolutions (each with BatchNorm, no activation), and
the sum of the two halves is concatenated with every cascade output (``N`` groups, ``C_out / 2`` channels); a
second 1x1 convolution expands to ``C_out``. A residual is added when ``C_in == C_out``. Convolutions have no
bias; BatchNorm uses the official ``eps=1e-3, momentum=0.03``; the activation is GELU.

``N`` (``n_groups`` here, ``n_dwconv`` in the model options) is the paper's N, the number of concatenated
groups. The official default is N = 8 in every version: the code first released (August 2024) took
``CMRF(c1, c2, n=7)`` with ``n`` depthwise convolutions and N = n + 1 groups; since September 2024 it takes
``CMRF(c1, c2, N=8)`` with ``N - 1`` depthwise convolutions. ``C_out`` must be a multiple of ``2N`` so the halves
have equal widths.
"""

from __future__ import annotations

import torch
from torch import nn

# The official TinyU-Net's BatchNorm settings (ultralytics-style).
BN_EPS = 1e-3
BN_MOMENTUM = 0.03


class ConvBN(nn.Sequential):
    """Bias-free convolution + BatchNorm, with an optional GELU.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: 1 (pointwise) or 3.
        groups: convolution groups (``in_channels`` for a depthwise convolution).
        activate: append a GELU.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, *, groups: int = 1, activate: bool = True
    ) -> None:
        layers = [
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM),
        ]
        if activate:
            layers.append(nn.GELU())
        super().__init__(*layers)


class CMRF(nn.Module):
    """Cascade Multi-Receptive Fields block.

    Args:
        in_channels: input channels.
        out_channels: output channels; a multiple of ``2 * n_groups``.
        n_groups: N, the number of concatenated feature groups (N - 1 depthwise convolutions).
    """

    def __init__(self, in_channels: int, out_channels: int, n_groups: int = 8) -> None:
        super().__init__()
        if n_groups < 1 or out_channels % (2 * n_groups):
            raise ValueError(f"CMRF needs out_channels divisible by 2*N; got out_channels={out_channels}, N={n_groups}")
        reduced = out_channels // n_groups
        half = reduced // 2
        self.reduce = ConvBN(in_channels, reduced)
        self.cascade = nn.ModuleList(ConvBN(half, half, 3, groups=half, activate=False) for _ in range(n_groups - 1))
        self.expand = ConvBN(out_channels // 2, out_channels)
        self.residual = in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.reduce(x)
        even, odd = reduced[:, 0::2], reduced[:, 1::2]
        groups = [even + odd]
        receptive = odd
        for dwconv in self.cascade:
            receptive = dwconv(receptive)  # each step widens the receptive field by 2
            groups.append(receptive)
        out = self.expand(torch.cat(groups, dim=1))
        return x + out if self.residual else out
