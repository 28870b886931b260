"""UNet+ and UNet++ (Zhou et al., 2018/2019) as in the official code (MrGiovanni/UNetPlusPlus, Keras).

A grid of nodes X(i, j): level i (0..4, width ``filters[i]``), column j. X(i, 0) is the encoder (two 3x3
convolutions with bias + ReLU after a 2x2 max-pool); X(i, j >= 1) upsamples X(i+1, j-1) by a 2x2 stride-2
transposed convolution with bias and concatenates it with
- UNet++ (dense skips): every earlier node of its level, X(i, 0..j-1);
- UNet+ (plain nested skips): only X(i, j-1).
1x1 heads: one on X(0, 4), or with ``deep_supervision=True`` four, on X(0, 1..4).

With deep supervision, train mode returns ``[head1(X01), head2(X02), head3(X03), head4(X04)]`` (deepest last).
Eval mode returns one tensor chosen by ``ds_mode`` (settable after construction):
- ``"average"`` (default; the paper's "accurate mode", which averages the heads' outputs): logits whose sigmoid
  (one channel) or softmax (several) is the mean of the four heads' probabilities
  (:func:`~repro.models.blocks.mean_probability_logits`);
- ``"L1"``..``"L4"`` (the paper's pruned "fast mode"): only the nodes with i + j <= k are computed, and
  head k's output is returned.

Deviations from the official code, all selectable: ``norm="batch"`` by default (official: ``norm=None``),
``dropout=0.0`` by default (official: 0.5 after every convolution), ``init="pytorch"`` by default (official:
``init="keras2018"``, :func:`~repro.models.blocks.init_keras2018`), logits instead of sigmoid outputs, and
``block="cmrf"`` for the CMRF block swap. The official ``l2(1e-4)`` penalty belongs to training;
:func:`~repro.models.blocks.keras_l2_parameters` selects the kernels it applies to. The official model without
deep supervision has one head, so its parameter count matches ours; with deep supervision ours has the four
heads the official code builds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from repro.models.blocks import (
    INITS,
    DeepSupervisionMixin,
    UpConcatNode,
    check_choice,
    check_filters,
    init_keras2018,
    make_block,
    mean_probability_logits,
    scale_width,
)
from repro.models.contract import SegmentationNetwork
from repro.models.unet import UNET_FILTERS

DEPTH = 4


class NestedUNet(DeepSupervisionMixin, SegmentationNetwork):
    """The UNet+/UNet++ grid; ``dense_skips`` selects UNet++ (True) or UNet+ (False).

    Args:
        in_channels: input image channels.
        num_classes: output channels per head.
        dense_skips: concatenate all earlier same-level nodes (UNet++) or only the previous one (UNet+).
        filters: width of each of the five levels.
        norm: ``"batch"`` or ``None`` (official).
        dropout: dropout after every activation (official: 0.5).
        block: ``"double_conv"`` (official) or ``"cmrf"``.
        n_dwconv: CMRF's N when ``block="cmrf"`` (default 8).
        deep_supervision: four heads on X(0, 1..4) instead of one on X(0, 4).
        ds_mode: eval-mode output with deep supervision: ``"average"`` or ``"L1"``..``"L4"``.
        width_mult: multiplies every width (reduced-scale runs).
        init: ``"pytorch"`` (PyTorch's defaults) or ``"keras2018"`` (the official Keras initialisation).
    """

    paper = "Zhou et al., UNet++, DLMIA 2018 / IEEE TMI 2019"
    official_code = "MrGiovanni/UNetPlusPlus (Keras)"

    size_divisor = 16
    ds_modes = ("average", "L1", "L2", "L3", "L4")

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        dense_skips: bool,
        filters: Sequence[int] = UNET_FILTERS,
        norm: str | None = "batch",
        dropout: float = 0.0,
        block: str = "double_conv",
        n_dwconv: int | None = None,
        deep_supervision: bool = False,
        ds_mode: str | None = None,
        width_mult: float = 1.0,
        init: str = "pytorch",
    ) -> None:
        super().__init__()
        check_choice("init", init, INITS)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.dense_skips = dense_skips
        self._init_deep_supervision(deep_supervision, ds_mode)
        make_node, divisor = make_block(block, norm=norm, dropout=dropout, n_dwconv=n_dwconv)
        widths = [scale_width(w, width_mult, divisor) for w in check_filters(filters, DEPTH + 1)]
        self.widths = tuple(widths)

        self.pool = nn.MaxPool2d(2)
        self.encoder = nn.ModuleList(
            make_node(c_in, c_out) for c_in, c_out in zip([in_channels, *widths[:-1]], widths, strict=True)
        )
        # nodes["i_j"] is X(i, j) for j >= 1; UNet++ node X(i, j) receives j same-level skips, UNet+ one.
        self.nodes = nn.ModuleDict(
            {
                f"{i}_{j}": UpConcatNode(widths[i + 1], widths[i], widths[i] * (j if dense_skips else 1), make_node)
                for j in range(1, DEPTH + 1)
                for i in range(DEPTH + 1 - j)
            }
        )
        num_heads = DEPTH if deep_supervision else 1
        self.heads = nn.ModuleList(nn.Conv2d(widths[0], num_classes, 1) for _ in range(num_heads))
        if init == "keras2018":
            init_keras2018(self)

    def _top_row(self, x: torch.Tensor, depth: int) -> list[torch.Tensor]:
        """Compute only the nodes with i + j <= depth; return X(0, 1..depth)."""
        rows = []  # rows[i] holds X(i, 0), X(i, 1), ... as they are computed
        for i in range(depth + 1):
            x = self.encoder[i](x if i == 0 else self.pool(x))
            rows.append([x])
        for j in range(1, depth + 1):
            for i in range(depth + 1 - j):
                skips = rows[i] if self.dense_skips else rows[i][-1:]
                rows[i].append(self.nodes[f"{i}_{j}"](rows[i + 1][j - 1], skips))
        return rows[0][1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self.check_input(x)
        if not self.deep_supervision:
            return self.heads[0](self._top_row(x, DEPTH)[-1])
        if self.training or self.ds_mode == "average":
            outputs = [head(node) for head, node in zip(self.heads, self._top_row(x, DEPTH), strict=True)]
            return outputs if self.training else mean_probability_logits(outputs)
        depth = int(self.ds_mode[1:])
        return self.heads[depth - 1](self._top_row(x, depth)[-1])
