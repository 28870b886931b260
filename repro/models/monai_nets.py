"""MONAI's volumetric segmentation networks behind ``create_model``: V-Net, SegResNet and SegResNet-VAE.

Each wrapper builds the MONAI 1.6.1 network (under ``net.``) for volumes ``(N, C, D, H, W)`` and returns logits
``(N, num_classes, D, H, W)``, checks the input size with a clear error, and takes ``width_mult`` where the
network has a width argument. MONAI is imported inside the constructors, not with ``repro.models``: its import
takes about 2.5 s on the project's machines, which every 2D run would otherwise pay.

- :class:`VNet`: ``monai.networks.nets.VNet`` (Milletari et al., 3DV 2016), with MONAI's defaults: 5x5x5
  convolutions with BatchNorm and ELU, residual stages of 1, 2, 3, 2 (down) and 2, 2, 1, 1 (up) convolutions,
  2x2x2 stride-2 (transposed) convolutions between them, channel dropout 0.5 in the two deepest down stages, on
  the upsampling input of the two deepest up stages and on every skip. Its widths are fixed (16, 32, 64, 128,
  256: MONAI's ``VNet`` has no width argument, and its first stage repeats the input to 16 channels, so
  ``in_channels`` must divide 16), so ``width_mult`` only accepts 1.0.
- :class:`SegResNet`: ``monai.networks.nets.SegResNet`` (Myronenko, BrainLes 2018, without the VAE branch) with
  the paper's 32 initial filters (MONAI's default is 8: ``width_mult=0.25``) and MONAI's other defaults, which
  are the paper's encoder and decoder: residual blocks 1, 2, 2, 4 (down) and 1, 1, 1 (up), GroupNorm with 8
  groups, ReLU, 1x1x1 convolution + trilinear upsampling in the decoder, no dropout. ``width_mult`` scales the
  initial filters, rounded to a multiple of 8 (the GroupNorm groups).
- :class:`SegResNetVAE`: ``monai.networks.nets.SegResNetVAE``, the same network with the paper's VAE branch
  (built for one input size, ``input_image_size``). As in the paper the VAE estimates its standard deviations
  (``vae_estimate_std=True``; MONAI's default fixes them to 0.3 and leaves ``vae_fc2`` unused) and its latent
  space has 128 means and 128 standard deviations (``vae_nz=128``: MONAI's default 256 gives 256 of each,
  although its docstring describes the paper's 128 + 128).

The VAE loss: in train mode MONAI's forward returns the logits and ``vae_loss`` = KL term + reconstruction MSE,
unweighted (``0.5 * mean(mu^2 + sigma^2 - log(sigma^2) - 1)`` over the latent units, plus the mean squared error
between input and reconstruction); MONAI's docstring gives no weight for it. The paper's loss is
``L_dice + 0.1 * L_L2 + 0.1 * L_KL``: both terms weighted 0.1 (:data:`VAE_LOSS_WEIGHT`). :class:`SegResNetVAE`
returns only the logits and keeps the weighted VAE loss of its last forward, ``0.1 * vae_loss``, in
``auxiliary_loss`` (a scalar tensor in train mode, None in eval mode, where MONAI skips the VAE branch), which
``repro.training.trainer.Trainer`` adds to the segmentation loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from repro.models.blocks import scale_width
from repro.models.contract import SegmentationNetwork

# The SegResNet-VAE paper's weight of each VAE term (reconstruction L2 and KL) beside the Dice loss.
VAE_LOSS_WEIGHT = 0.1
# The SegResNet paper's initial filters; GroupNorm's 8 groups need widths that are multiples of 8.
SEGRESNET_INIT_FILTERS = 32
SEGRESNET_NORM_GROUPS = 8
# V-Net's first width, fixed in MONAI's VNet; its input is repeated to it.
VNET_WIDTH = 16
HIPPOCAMPUS_SIZE = (48, 64, 48)


class _MonaiNet(SegmentationNetwork):
    """A MONAI network ``self.net`` for volumes; subclasses build it and set ``size_divisor``."""

    spatial_dims = 3
    size_divisor: int
    net: nn.Module

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.net(x)


class VNet(_MonaiNet):
    """MONAI's V-Net with its default configuration (fixed widths 16 to 256).

    Args:
        in_channels: input channels (must divide 16).
        num_classes: output channels.
        width_mult: only 1.0: MONAI's V-Net has no width argument.
    """

    paper = "Milletari et al., V-Net, 3DV 2016"
    official_code = "MONAI 1.6.1, monai/networks/nets/vnet.py (used as is)"

    size_divisor = 16  # four stride-2 stages

    def __init__(self, in_channels: int, num_classes: int, *, width_mult: float = 1.0) -> None:
        if width_mult != 1.0:
            raise ValueError(
                f"vnet has fixed widths (MONAI's VNet has no width argument): width_mult must be 1.0; got {width_mult}"
            )
        if VNET_WIDTH % in_channels:
            raise ValueError(
                f"vnet repeats its input to {VNET_WIDTH} channels: in_channels must divide "
                f"{VNET_WIDTH}; got {in_channels}"
            )
        super().__init__(in_channels, num_classes)
        from monai.networks.nets import VNet as MonaiVNet

        self.net = MonaiVNet(spatial_dims=3, in_channels=in_channels, out_channels=num_classes)


def _segresnet_filters(width_mult: float) -> int:
    return scale_width(SEGRESNET_INIT_FILTERS, width_mult, SEGRESNET_NORM_GROUPS)


class SegResNet(_MonaiNet):
    """MONAI's SegResNet with the paper's 32 initial filters.

    Args:
        in_channels: input channels.
        num_classes: output channels.
        width_mult: multiplies the initial filters (32), rounded to a multiple of 8.
    """

    paper = "Myronenko, 3D MRI brain tumor segmentation using autoencoder regularization, BrainLes 2018"
    official_code = "MONAI 1.6.1, monai/networks/nets/segresnet.py (used as is)"

    size_divisor = 8  # three stride-2 stages

    def __init__(self, in_channels: int, num_classes: int, *, width_mult: float = 1.0) -> None:
        super().__init__(in_channels, num_classes)
        from monai.networks.nets import SegResNet as MonaiSegResNet

        self.net = MonaiSegResNet(
            spatial_dims=3,
            init_filters=_segresnet_filters(width_mult),
            in_channels=in_channels,
            out_channels=num_classes,
        )


class SegResNetVAE(_MonaiNet):
    """MONAI's SegResNet-VAE with the paper's 32 initial filters and VAE; returns logits only.

    After each forward, ``auxiliary_loss`` holds the VAE loss weighted by :data:`VAE_LOSS_WEIGHT` (train mode) or
    None (eval mode); see the module docstring.

    Args:
        in_channels: input channels.
        num_classes: output channels.
        width_mult: multiplies the initial filters (32), rounded to a multiple of 8.
        input_image_size: the one input size (D, H, W) the VAE's fully connected layers are built for; each a
            multiple of 16.
    """

    paper = "Myronenko, 3D MRI brain tumor segmentation using autoencoder regularization, BrainLes 2018"
    official_code = "MONAI 1.6.1, monai/networks/nets/segresnet.py (used as is)"

    size_divisor = 16  # three stride-2 stages, then the VAE's own stride-2 convolution
    # MONAI's VAE branch flattens its features with .view, which a channels-last tensor cannot give.
    channels_last = False

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        width_mult: float = 1.0,
        input_image_size: Sequence[int] = HIPPOCAMPUS_SIZE,
    ) -> None:
        super().__init__(in_channels, num_classes)
        size = tuple(input_image_size)
        if len(size) != 3 or not all(isinstance(s, int) and s > 0 and s % self.size_divisor == 0 for s in size):
            raise ValueError(
                f"input_image_size must be three positive multiples of {self.size_divisor} (D, H, W); got {size}"
            )
        self.input_image_size = size
        self.auxiliary_loss: torch.Tensor | None = None
        from monai.networks.nets import SegResNetVAE as MonaiSegResNetVAE

        self.net = MonaiSegResNetVAE(
            input_image_size=size,
            vae_estimate_std=True,
            vae_nz=128,
            spatial_dims=3,
            init_filters=_segresnet_filters(width_mult),
            in_channels=in_channels,
            out_channels=num_classes,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != self.input_image_size:
            raise ValueError(
                f"{type(self).__name__} was built for inputs of {'x'.join(map(str, self.input_image_size))} "
                f"(input_image_size); got {'x'.join(map(str, x.shape[2:]))}"
            )
        # MONAI's VAE branch flattens with .view, which needs standard strides all the way down. A one-channel
        # volume stored channels-last (as the prepared arrays are) counts as contiguous, yet convolutions carry its
        # strides on: copy it to the standard layout first.
        logits, vae_loss = self.net(x.clone(memory_format=torch.contiguous_format))
        self.auxiliary_loss = None if vae_loss is None else VAE_LOSS_WEIGHT * vae_loss
        return logits
