"""MultiResUNet (Ibtehaz and Rahman, "MultiResUNet: Rethinking the U-Net architecture for multimodal biomedical
image segmentation", Neural Networks 121, 2020), as built by the official Keras code (nibtehaz/MultiResUNet,
``tensorflow/MultiResUNet.py``).

Five levels with nominal U-Net widths ``U`` = 32, 64, 128, 256, 512; 2x2 max-pooling goes down.

- MultiRes block of width ``U``: with ``W = alpha * U`` (``alpha = 1.67``), three successive 3x3 convolutions to
  ``int(0.167 W)``, ``int(0.333 W)`` and ``int(0.5 W)`` channels (the official fractions; each followed by
  BatchNorm and ReLU), concatenated (51, 105, 212, 426, 853 channels at the official widths) and batch-normalised;
  a 1x1 convolution + BatchNorm shortcut to the same width is added, then ReLU, then BatchNorm.
- Res path on the skip of level ``i`` (0 = full resolution): ``4 - i`` residual units to ``U`` channels, each a
  3x3 convolution + BatchNorm + ReLU plus a 1x1 convolution + BatchNorm shortcut, added, then ReLU, then
  BatchNorm.
- Decoder: a 2x2 stride-2 transposed convolution with bias (no BatchNorm) to ``U`` channels, concatenated with
  the Res path output (``[upsampled, skip]``), then a MultiRes block of width ``U``.
- Head: a 1x1 convolution + BatchNorm to ``num_classes``.

Convolutions have no bias. As in the official code, the BatchNorm after a convolution has no learned scale
(Keras ``scale=False``: a learned shift only, :class:`ShiftBatchNorm`); the BatchNorms after the concatenation
and after each residual sum have both. Keras counts BatchNorm's moving mean and variance as (non-trainable)
parameters: the official model (256x256x3 input, one output) has 7,262,750 of them, the paper's 7.26M, of which
7,238,228 are trainable; here the moving statistics are buffers, so ``count_parameters`` gives 7,238,228, and
7,262,750 with the running statistics added.

Deviations from the official code, all deliberate:
- The head returns logits; the official model ends in a sigmoid (the loss applies it here).
- BatchNorm uses Keras's defaults (``eps=1e-3``, moving-average momentum 0.99, PyTorch's ``momentum=0.01``), but
  weights are initialised by PyTorch's defaults rather than Keras's Glorot-uniform.
- ``width_mult`` (an addition) scales the nominal widths ``U`` before ``alpha``; a block whose smallest split
  rounds to zero channels is an error.
"""

from __future__ import annotations

import torch
from torch import nn

from repro.models.blocks import UpConcatNode, scale_width
from repro.models.contract import SegmentationNetwork

MULTIRESUNET_FILTERS = (32, 64, 128, 256, 512)
DEFAULT_ALPHA = 1.67
# The official code's split of W between the three convolutions (not exactly 1/6, 1/3, 1/2: int() of these).
SPLIT_FRACTIONS = (0.167, 0.333, 0.5)
KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 0.01


def keras_batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with learned scale and shift and Keras's default epsilon and momentum."""
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)


class ShiftBatchNorm(nn.BatchNorm2d):
    """BatchNorm without a learned scale (Keras ``scale=False``): normalise, then add a learned per-channel shift.

    Args:
        channels: channels normalised.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM, affine=False)
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.shift.view(1, -1, 1, 1)


class ConvBN(nn.Sequential):
    """The official ``conv2d_bn``: a convolution without bias, :class:`ShiftBatchNorm`, then ReLU if ``relu``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: 1 or 3 ("same" padding).
        relu: end with a ReLU.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, relu: bool) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            ShiftBatchNorm(out_channels),
        ]
        if relu:
            layers.append(nn.ReLU())
        super().__init__(*layers)


def multires_splits(width: int, alpha: float) -> tuple[int, int, int]:
    """Channels of a MultiRes block's three convolutions for nominal width ``width``, as the official code rounds."""
    scaled = alpha * width
    splits = tuple(int(scaled * fraction) for fraction in SPLIT_FRACTIONS)
    if min(splits) < 1:
        raise ValueError(f"MultiRes block of width {width} with alpha={alpha} has an empty convolution: {splits}")
    return splits


class MultiResBlock(nn.Module):
    """Three chained 3x3 convolutions, concatenated, plus a 1x1 shortcut (the official ``MultiResBlock``).

    Args:
        in_channels: input channels.
        width: the level's nominal U-Net width ``U``.
        alpha: ``W = alpha * U`` is split between the three convolutions.
    """

    def __init__(self, in_channels: int, width: int, *, alpha: float) -> None:
        super().__init__()
        splits = multires_splits(width, alpha)
        self.out_channels = sum(splits)
        self.shortcut = ConvBN(in_channels, self.out_channels, 1, relu=False)
        self.convs = nn.ModuleList(
            ConvBN(c_in, c_out, 3, relu=True) for c_in, c_out in zip((in_channels, *splits[:-1]), splits, strict=True)
        )
        self.concat_norm = keras_batch_norm(self.out_channels)
        self.relu = nn.ReLU()
        self.out_norm = keras_batch_norm(self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        features = []
        for conv in self.convs:
            x = conv(x)
            features.append(x)
        return self.out_norm(self.relu(self.concat_norm(torch.cat(features, dim=1)) + shortcut))


class ResUnit(nn.Module):
    """One unit of a Res path: 3x3 convolution + BN + ReLU plus a 1x1 convolution + BN shortcut, ReLU, then BN.

    Args:
        in_channels: input channels.
        out_channels: output channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.shortcut = ConvBN(in_channels, out_channels, 1, relu=False)
        self.conv = ConvBN(in_channels, out_channels, 3, relu=True)
        self.relu = nn.ReLU()
        self.norm = keras_batch_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.relu(self.conv(x) + self.shortcut(x)))


class ResPath(nn.Sequential):
    """``length`` residual units on a skip connection (the official ``ResPath``).

    Args:
        in_channels: channels of the encoder block's output.
        out_channels: the level's nominal width ``U``.
        length: number of residual units.
    """

    def __init__(self, in_channels: int, out_channels: int, length: int) -> None:
        super().__init__(*(ResUnit(in_channels if unit == 0 else out_channels, out_channels) for unit in range(length)))


class MultiResUNet(SegmentationNetwork):
    """MultiResUNet with five levels (four 2x down-samplings).

    Args:
        in_channels: input image channels.
        num_classes: output channels (1 for binary segmentation with a sigmoid).
        alpha: width factor of the MultiRes blocks (official: 1.67).
        width_mult: multiplies the nominal widths ``U`` (reduced-scale runs).
    """

    paper = 'Ibtehaz and Rahman, "MultiResUNet", Neural Networks 121, 2020'
    official_code = "nibtehaz/MultiResUNet, tensorflow/MultiResUNet.py (Keras)"

    size_divisor = 16

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        alpha: float = DEFAULT_ALPHA,
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0; got {alpha}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        widths = [scale_width(w, width_mult) for w in MULTIRESUNET_FILTERS]
        self.widths = tuple(widths)

        def block(c_in: int, width: int) -> MultiResBlock:
            return MultiResBlock(c_in, width, alpha=alpha)

        self.pool = nn.MaxPool2d(2)
        self.encoder = nn.ModuleList()
        for width in widths:
            c_in = self.encoder[-1].out_channels if self.encoder else in_channels
            self.encoder.append(block(c_in, width))
        # The Res path of level i has 4 - i units: the shallower the skip, the larger its semantic gap.
        self.res_paths = nn.ModuleList(
            ResPath(self.encoder[level].out_channels, widths[level], 4 - level) for level in range(4)
        )
        # decoder[k] produces level 3 - k from the block below it and that level's Res path.
        self.decoder = nn.ModuleList()
        coarse_channels = self.encoder[-1].out_channels
        for level in reversed(range(4)):
            node = UpConcatNode(coarse_channels, widths[level], widths[level], block)
            self.decoder.append(node)
            coarse_channels = node.block.out_channels
        self.head = ConvBN(coarse_channels, num_classes, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = []
        for level, node in enumerate(self.encoder):
            x = node(x if level == 0 else self.pool(x))
            if level < 4:
                skips.append(self.res_paths[level](x))
        for node in self.decoder:
            x = node(x, [skips.pop()])
        return self.head(x)
