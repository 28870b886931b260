"""Our 2D U-Net applied slice by slice to volumes: the 2D baseline of claim C10 ("a 3D U-Net beats a 2D U-Net
applied slice by slice").

:class:`SlicewiseUNet` takes volumes ``(N, C, D, H, W)``, folds the depth axis D into the batch, runs one
:class:`~repro.models.unet.UNet` (2D, with every option of the registry's ``unet``) on the ``N * D`` slices
``(C, H, W)``, and unfolds its logits to ``(N, num_classes, D, H, W)``. The sliced axis is D, the volume's first
spatial axis: for the prepared NIfTI volumes (``repro.data``) the first voxel axis as stored in the file (i),
without reorientation. Every slice is segmented on its own, with no context from its neighbours; in train mode
BatchNorm takes its statistics over all ``N * D`` slices of the batch.

No deviation from the 2D U-Net: the parameters are exactly the 2D U-Net's (under ``unet.``), so weights trained
either way load into the other.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from repro.models.blocks import check_input_size
from repro.models.contract import SegmentationNetwork
from repro.models.unet import UNET_FILTERS, UNet


class SlicewiseUNet(SegmentationNetwork):
    """The 2D U-Net applied to every depth slice of a volume.

    Args:
        in_channels: input channels of the volume.
        num_classes: output channels.
        filters, norm, dropout, block, n_dwconv, width_mult, init, levels: the 2D
            :class:`~repro.models.unet.UNet`'s options, with its defaults.
    """

    paper = 'Cicek et al., "3D U-Net", MICCAI 2016 (its 2D baseline: a 2D U-Net slice by slice)'
    official_code = "none: the study's 2D U-Net (repro.models.unet) applied to each slice"

    spatial_dims = 3
    # Its layers are 2D: the channels-last format of volumes (channels_last_3d) does not apply to their weights.
    channels_last = False

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
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.unet = UNet(
            in_channels,
            num_classes,
            filters=filters,
            norm=norm,
            dropout=dropout,
            block=block,
            n_dwconv=n_dwconv,
            width_mult=width_mult,
            init=init,
            levels=levels,
            spatial_dims=2,
        )
        # Height and width go through the 2D U-Net; the depth can be any size.
        self.size_divisor = self.unet.size_divisor

    def check_input(self, x: torch.Tensor) -> None:
        """Only each slice's height and width pass through the 2D U-Net: any depth will do."""
        check_input_size(x, self.size_divisor, type(self).__name__)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"{type(self).__name__} takes volumes (N, C, D, H, W); got shape {tuple(x.shape)}")
        self.check_input(x)
        batch, channels, depth, height, width = x.shape
        slices = x.transpose(1, 2).reshape(batch * depth, channels, height, width)
        logits = self.unet(slices)
        # contiguous, as every other model's logits are, so downstream code may view() them.
        return logits.reshape(batch, depth, self.num_classes, height, width).transpose(1, 2).contiguous()
