"""U-Net v2 (Peng et al., 2023), as in the official code (yaoppeng/U-Net_v2, ``PolypSeg/unet_v2/UNet_v2.py``).

An encoder gives four feature levels at strides 4, 8, 16, 32. Each level goes through channel and spatial
attention and a 1x1 convolution + BatchNorm to ``c = 32`` channels, then SDI fuses all four levels into each
level (see :mod:`repro.models.sdi`). The decoder starts from the deepest fused level and, three times, doubles
the resolution with a 4x4 stride-2 transposed convolution (32 -> 32, no bias) and adds the next fused level.
1x1 heads on the stride-8 and stride-4 decoder outputs give logits, upsampled bilinearly to the input size.

Encoders:
- ``"pvt_v2_b2"``: our PVTv2-b2 backbone (:mod:`repro.models.pvt_v2`, randomly initialised; no timm needed),
  features at strides 4-32 with 64/128/320/512 channels and stochastic depth 0.1, as in the official backbone.
  It was verified against timm 1.0.31's ``pvt_v2_b2`` (``features_only``): the same parameter count as the
  official backbone (24,849,856; it has no classification head) and, with shared weights, equal outputs; its
  state dict has timm's key names, so timm's pretrained weights (less ``head.*``) load into it, and the official
  release's after :func:`~repro.models.pvt_v2.convert_official_state_dict`.
- ``"cnn"`` (default, for CPU training from scratch): six U-Net nodes (:class:`DoubleConv`, 2x2 max-pooling
  between them) of widths ``filters`` = 16, 32, 64, 128, 320, 512 at strides 1-32; the last four are the
  features, so they have pvt_v2_b2's strides and channels and the SDI/decoder part is identical.

Levels: ``levels="stride4"`` (default) is the official layout above: four levels at strides 4-32, logits at
stride 4 upsampled to the input size, and the CNN encoder's stride-1 and stride-2 nodes only feed the deeper
ones. ``levels="all"`` (only with ``encoder="cnn"``) is the variant the official README ("On your own data")
advises for full-resolution output: all six encoder outputs (strides 1-32) go through the attention and
projections, six SDI modules each fuse all six levels (six 3x3 smoothing convolutions each), the decoder has
five transposed convolutions (up to stride 1), and the final head is at full resolution, so nothing is
upsampled but the deep-supervision head at stride 2 (x2). The README gives only a sketch: six encoder features
``f1``-``f6``, six SDI calls each fusing all six, and "delete" the x4 upsampling of the heads. The two extra
levels' attention and 1x1 projections (to the same ``c``), the two extra transposed convolutions and the heads
on the two finest outputs (the official ``seg_outs[::-1][:2]``) extend the four-level code one level at a
time. The official repository has no implementation or results of this variant.

Ablations: ``sdi=False`` keeps the encoder, the 1x1 projections + BatchNorm and the decoder but adds the
projected features directly (plain skips, the paper's "U-Net with this encoder"); ``attention=False`` keeps
SDI but drops the channel/spatial attention (the paper's "SC" ablation). In the paper (Sec. 3.2) the channel
and spatial attention is the first step of SDI, so ``attention`` defaults to ``sdi``: ``sdi=False`` alone
drops the attention too (no ``ChannelAttention``/``SpatialAttention`` modules are built), leaving only the
1x1 projections as skips; ``sdi=False, attention=True`` keeps the attention without the SDI fusion. Both
ablations apply to either ``levels``.

Deep supervision (default on, as in the official model): train mode returns heads on the last two decoder
outputs, ``[stride-8 head, stride-4 head]`` (``[stride-2 head, stride-1 head]`` with ``levels="all"``;
deepest decoder output last); eval mode returns ``ds_mode``: ``"average"`` (default; mean of the two logits,
which thresholds like the official test's ``P1 + P2``) or ``"final"``.

Deviations from the official code:
- The official model builds four heads and a fourth transposed convolution (``deconv5``) but its forward never
  uses ``deconv5``, nor the heads of the stride-32 and stride-16 outputs (nor the stride-8 head without deep
  supervision); only the modules that are used are built here. The official pvt_v2_b2 model therefore has
  16,384 + 2*(c+1) (+ (c+1) without deep supervision) more parameters: 25,145,036 against our 25,128,586 with
  one class and deep supervision (the paper reports 25.15M, the official count).
- All heads are upsampled to the input size; the official code upsamples each by 4 (by 1 in the README's
  all-levels variant), so its auxiliary head (stride 8; stride 2 with all levels) is returned at half
  resolution. The official returns ``[final, auxiliary]``; the order here is the reverse.
- SDI resizes to (height, width) rather than to a square (identical on square inputs).
- With ``levels="all"`` and ``width_mult < 1`` the stride-1 level has fewer than 16 channels, where the official
  channel attention's hidden width (``channels // 16``) would be 0; it is clamped to 1
  (:class:`~repro.models.sdi.ChannelAttention`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from repro.models.blocks import (
    DeepSupervisionMixin,
    DoubleConv,
    check_choice,
    check_filters,
    scale_width,
)
from repro.models.contract import SegmentationNetwork
from repro.models.pvt_v2 import pvt_v2_b2
from repro.models.sdi import SDI, SkipProjection

ENCODERS = ("cnn", "pvt_v2_b2")
LEVELS = ("stride4", "all")
CNN_FILTERS = (16, 32, 64, 128, 320, 512)
NUM_LEVELS = {"stride4": 4, "all": len(CNN_FILTERS)}
PVT_DROP_PATH_RATE = 0.1


class CNNEncoder(nn.Module):
    """Six :class:`DoubleConv` nodes with 2x2 max-pooling between them; returns the last ``num_features`` outputs.

    Args:
        in_channels: input image channels.
        filters: width of each of the six nodes (strides 1, 2, 4, 8, 16, 32).
        norm: ``"batch"`` or ``None``.
        num_features: how many of the deepest node outputs are returned (4: strides 4-32; 6: all).
    """

    def __init__(
        self, in_channels: int, filters: Sequence[int], *, norm: str | None = "batch", num_features: int = 4
    ) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.nodes = nn.ModuleList(
            DoubleConv(c_in, c_out, norm=norm)
            for c_in, c_out in zip([in_channels, *filters[:-1]], filters, strict=True)
        )
        self.num_features = num_features
        self.out_channels = tuple(filters[-num_features:])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for index, node in enumerate(self.nodes):
            x = node(x if index == 0 else self.pool(x))
            features.append(x)
        return features[-self.num_features :]


class PVTv2B2Encoder(nn.Module):
    """The pvt_v2_b2 backbone (:func:`repro.models.pvt_v2.pvt_v2_b2`, randomly initialised) returning its four
    stage outputs.

    Args:
        in_channels: input image channels.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.backbone = pvt_v2_b2(in_channels, drop_path_rate=PVT_DROP_PATH_RATE)
        self.out_channels = self.backbone.out_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone(x)


class UNetV2(DeepSupervisionMixin, SegmentationNetwork):
    """U-Net v2: an encoder, SDI skip connections and a light transposed-convolution decoder.

    Args:
        in_channels: input image channels.
        num_classes: output channels per head.
        encoder: ``"cnn"`` or ``"pvt_v2_b2"``.
        filters: widths of the CNN encoder's six nodes (only with ``encoder="cnn"``).
        decoder_channels: ``c``, the width of the projections, SDI and decoder (official 32).
        levels: ``"stride4"`` (official: the four levels at strides 4-32, stride-4 logits upsampled) or ``"all"``
            (only with ``encoder="cnn"``: all six levels, strides 1-32, full-resolution logits).
        sdi: fuse the levels with SDI; False adds the 1x1-projected features as plain skips. Since the paper
            counts the channel/spatial attention as part of SDI, ``attention`` follows ``sdi`` unless given:
            ``sdi=False`` alone also drops the attention.
        attention: channel and spatial attention before the projections (defaults to ``sdi``).
        norm: normalisation of the CNN encoder (``"batch"`` or ``None``).
        deep_supervision: heads on the last two decoder outputs (strides 8 and 4, or 2 and 1 with
            ``levels="all"``) instead of only the last.
        ds_mode: eval-mode output with deep supervision: ``"average"`` or ``"final"``.
        width_mult: multiplies the CNN encoder's widths and ``c`` (only with ``encoder="cnn"``).
    """

    paper = "Peng et al., U-Net v2, 2023 (arXiv:2311.17791)"
    official_code = "yaoppeng/U-Net_v2, PolypSeg/unet_v2/UNet_v2.py"

    size_divisor = 32
    ds_modes = ("average", "final")

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        encoder: str = "cnn",
        filters: Sequence[int] | None = None,
        decoder_channels: int = 32,
        levels: str = "stride4",
        sdi: bool = True,
        attention: bool | None = None,
        norm: str | None = "batch",
        deep_supervision: bool = True,
        ds_mode: str | None = None,
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        check_choice("encoder", encoder, ENCODERS)
        check_choice("levels", levels, LEVELS)
        if levels == "all" and encoder != "cnn":
            raise ValueError(f"levels='all' only applies to encoder='cnn'; {encoder} has no stride-1/2 features")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self._init_deep_supervision(deep_supervision, ds_mode)
        if encoder == "cnn":
            widths = [scale_width(w, width_mult) for w in check_filters(CNN_FILTERS if filters is None else filters, 6)]
            self.encoder = CNNEncoder(in_channels, widths, norm=norm, num_features=NUM_LEVELS[levels])
        else:
            if filters is not None or width_mult != 1.0 or norm != "batch":
                raise ValueError("filters, width_mult and norm only apply to encoder='cnn'")
            self.encoder = PVTv2B2Encoder(in_channels)
        self.levels = levels
        num_levels = NUM_LEVELS[levels]
        channels = scale_width(decoder_channels, width_mult)
        attention = sdi if attention is None else attention

        self.skips = nn.ModuleList(
            SkipProjection(c_in, channels, attention=attention) for c_in in self.encoder.out_channels
        )
        self.sdi = nn.ModuleList(SDI(channels, num_levels) for _ in range(num_levels)) if sdi else None
        # up[k] doubles the resolution of level L - 1 - k to level L - 2 - k (L levels, finest first).
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(channels, channels, kernel_size=4, stride=2, padding=1, bias=False)
            for _ in range(num_levels - 1)
        )
        # heads[-1] is on the finest decoder output; with deep supervision heads[0] is on the one before it.
        self.heads = nn.ModuleList(nn.Conv2d(channels, num_classes, 1) for _ in range(2 if deep_supervision else 1))

    def _decode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the last two decoder outputs (strides 8 and 4, or 2 and 1 with ``levels="all"``)."""
        skips = [project(feature) for project, feature in zip(self.skips, self.encoder(x), strict=True)]
        if self.sdi is not None:
            skips = [fuse(skips, level) for level, fuse in enumerate(self.sdi)]
        y = skips[-1]
        decoded = []
        for up, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            y = up(y) + skip
            decoded.append(y)
        return decoded[-2:]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self.check_input(x)
        size = x.shape[-2:]
        decoded = self._decode(x)
        if not self.deep_supervision or (not self.training and self.ds_mode == "final"):
            return _resize(self.heads[-1](decoded[-1]), size)
        outputs = [_resize(head(y), size) for head, y in zip(self.heads, decoded, strict=True)]
        return outputs if self.training else torch.stack(outputs).mean(dim=0)


def _resize(logits: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Bilinear upsampling of ``logits`` to ``size``; full-resolution logits (``levels="all"``) pass unchanged."""
    if logits.shape[-2:] == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
