"""FCN-8s (Long, Shelhamer and Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015;
official Caffe code: shelhamer/fcn.berkeleyvision.org, ``voc-fcn8s/net.py``), trained from scratch.

Structure, as in FCN-8s: an encoder; two "fully connected" layers run as convolutions (fc6, fc7) after the last
pooling; 1x1 score layers at strides 32 (on fc7), 16 and 8 (on the encoder features of those strides); the stride
32 scores are upsampled x2 by a transposed convolution initialised to bilinear interpolation and summed with the
stride-16 scores, that sum is upsampled x2 the same way and summed with the stride-8 scores, and a x8 transposed
convolution (also bilinear-initialised) gives the full-resolution logits.

Where the scores are taken (``widths`` = the U-Net encoder's 32, 64, 128, 256, 512):

- stride 8: the output of encoder level 3 (256 channels, after three 2x2 poolings; FCN's pool3 has stride 8);
- stride 16: the output of encoder level 4 (512 channels, after four poolings; FCN's pool4);
- stride 32: fc7. A fifth 2x2 max-pooling after level 4 (FCN's pool5) brings the features to stride 32, then
  fc6 (3x3 convolution) and fc7 (1x1 convolution), each to 1024 channels with [BatchNorm +] ReLU [+ dropout].
  So five levels with four poolings give strides 1..16, and the fc layers add the fifth (stride 32): inputs must
  be multiples of 32.

Deviations from FCN-8s, all deliberate:

- Encoder: VGG16's 13 convolutions (64..512 channels, two or three per stage) are replaced by the U-Net encoder
  (:data:`repro.models.unet.UNET_FILTERS`, five levels of two 3x3 convolutions, :class:`DoubleConv`). fc6/fc7
  have 1024 channels (the encoder's doubling continued) instead of 4096, and fc6 is 3x3 instead of 7x7: from
  scratch there are no VGG fully connected weights to convert, and a 7x7 kernel would mostly see padding on the
  8x8 stride-32 map of a 256x256 input.
- ``norm="batch"`` (default) adds BatchNorm after every convolution but the score layers; ``norm=None`` is
  normalisation-free as FCN.
- Trained from scratch in one stage (no ImageNet weights, no 32s -> 16s -> 8s staging), so the score layers use
  PyTorch's default initialisation rather than FCN's zeros (which only kept a staged net's output unchanged).
- ``dropout=0.0`` by default; FCN applies dropout 0.5 after fc6 and fc7 (``dropout=0.5``).
- Padding: FCN pads the input by 100 pixels and crops every skip; here every convolution keeps the size and the
  transposed convolutions (kernel ``2s``, stride ``s``, padding ``s / 2``) upsample exactly by ``s``, so nothing
  is cropped.
- Upsampling: all three upsamplers are learned from their bilinear initialisation (``learn_upsampling=True``,
  default). The paper learns the x2 ones and fixes the final x8 to bilinear; the released ``net.py`` fixes all
  three (``lr_mult=0``), which ``learn_upsampling=False`` reproduces (the kernels are then buffers, not
  parameters).
- The head returns logits (FCN's softmax is in its loss, as here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from repro.models.blocks import ConvNormAct, DoubleConv, scale_width
from repro.models.contract import SegmentationNetwork
from repro.models.unet import UNET_FILTERS

FC_WIDTH = 1024


def bilinear_kernel(size: int) -> torch.Tensor:
    """The ``size`` x ``size`` bilinear interpolation kernel of FCN's ``upsample_filt`` (surgery.py)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 else factor - 0.5
    ramp = 1 - (torch.arange(size, dtype=torch.float32) - center).abs() / factor
    return ramp[:, None] * ramp[None, :]


class BilinearUpsample(nn.Module):
    """Transposed convolution without bias that upsamples by ``scale``, initialised to bilinear interpolation.

    Kernel ``2 * scale``, stride ``scale``, padding ``scale // 2``: the output is exactly ``scale`` times the
    input. As in FCN, the kernel maps every channel to itself (a bilinear kernel on the diagonal, zeros across
    channels); when learned, training may mix channels.

    Args:
        channels: input and output channels.
        scale: the (even) upsampling factor.
        learnable: learn the kernel (a parameter) or keep it fixed (a buffer).
    """

    def __init__(self, channels: int, scale: int, *, learnable: bool = True) -> None:
        super().__init__()
        if scale < 2 or scale % 2:
            raise ValueError(f"scale must be an even factor >= 2; got {scale}")
        self.scale = scale
        weight = torch.zeros(channels, channels, 2 * scale, 2 * scale)
        weight[range(channels), range(channels)] = bilinear_kernel(2 * scale)
        if learnable:
            self.weight = nn.Parameter(weight)
        else:
            self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, self.weight, stride=self.scale, padding=self.scale // 2)


class FCN8s(SegmentationNetwork):
    """FCN-8s on the U-Net encoder: score layers at strides 8, 16 and 32, fused by learned upsampling.

    Args:
        in_channels: input image channels.
        num_classes: output channels (1 for binary segmentation with a sigmoid).
        norm: ``"batch"`` (default) or ``None`` (FCN).
        dropout: dropout after fc6 and fc7 (FCN: 0.5).
        learn_upsampling: learn the three bilinear-initialised upsamplers (default) or fix them (released FCN).
        width_mult: multiplies every width but the score layers' (reduced-scale runs).
    """

    paper = 'Long, Shelhamer and Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015'
    official_code = "shelhamer/fcn.berkeleyvision.org, voc-fcn8s/net.py (Caffe)"

    size_divisor = 32

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        norm: str | None = "batch",
        dropout: float = 0.0,
        learn_upsampling: bool = True,
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        widths = [scale_width(w, width_mult) for w in UNET_FILTERS]
        fc_width = scale_width(FC_WIDTH, width_mult)
        self.widths = (*widths, fc_width)

        self.pool = nn.MaxPool2d(2)
        self.encoder = nn.ModuleList(
            DoubleConv(c_in, c_out, norm=norm) for c_in, c_out in zip([in_channels, *widths[:-1]], widths, strict=True)
        )
        self.fc = nn.Sequential(
            ConvNormAct(nn.Conv2d(widths[-1], fc_width, 3, padding=1), fc_width, norm=norm, dropout=dropout),
            ConvNormAct(nn.Conv2d(fc_width, fc_width, 1), fc_width, norm=norm, dropout=dropout),
        )
        self.score32 = nn.Conv2d(fc_width, num_classes, 1)
        self.score16 = nn.Conv2d(widths[4], num_classes, 1)
        self.score8 = nn.Conv2d(widths[3], num_classes, 1)
        self.up32to16 = BilinearUpsample(num_classes, 2, learnable=learn_upsampling)
        self.up16to8 = BilinearUpsample(num_classes, 2, learnable=learn_upsampling)
        self.up8to1 = BilinearUpsample(num_classes, 8, learnable=learn_upsampling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        features = []
        for level, node in enumerate(self.encoder):
            x = node(x if level == 0 else self.pool(x))
            features.append(x)
        scores = self.up32to16(self.score32(self.fc(self.pool(x)))) + self.score16(features[4])
        scores = self.up16to8(scores) + self.score8(features[3])
        return self.up8to1(scores)
