"""x2 bicubic upsampling as fixed convolutions: the maths of ``F.interpolate(x, scale_factor=2, mode="bicubic",
align_corners=False)``, at the speed of a convolution.

PyTorch's bicubic upsampling maps output index ``o`` to the source coordinate ``o / 2 - 0.25`` and weights the
four nearest inputs with the cubic convolution kernel of A = -0.75, reading indices clamped to the edge. At scale
2 the fractional offset is always 0.75 (even outputs, inputs ``k - 2 .. k + 1`` for ``o = 2k``) or 0.25 (odd
outputs, inputs ``k - 1 .. k + 2``), so every output is one of two fixed 4-tap filters of the edge-replicated
input, separably per axis. Both filters together are the 8-tap kernel of a stride-2 transposed convolution.
PyTorch's own kernel recomputes the weights per pixel and scatters its gradient one pixel at a time; on the
study's CPU setting it took 42% of a TinyU-Net train step (``benchmarks/upsample_bicubic.py`` measures both).

Two formulations of the same maths, chosen by memory format because each is the fast one for its layout:

- channels-last input: replicate-pad by 2, then one depthwise stride-2 transposed convolution with the 8x8 outer
  product of the 8-tap kernel (oneDNN's depthwise kernels are vectorised over the contiguous channels);
- any other layout: ``U_h @ x @ U_w.T`` with the dense (2n x n) interpolation matrices, which fold the clamping
  into the edge columns (two batched matrix products, no padding).

The 8 taps are multiples of 1/256, exact in every floating dtype, so only summation order differs from PyTorch.
The edge replication is ``F.pad(mode="replicate")``, the fastest on CPU of the forms tried (concatenating edge
slices took twice as long); on CUDA its backward is, like PyTorch's bicubic backward, not deterministic.
Unlike ``F.interpolate``, its convolution and matrix products are counted by ``FlopCounterMode``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CUBIC_TAPS",
    "BicubicUpsample2x",
    "bicubic_upsample2x",
    "bicubic_upsample2x_conv",
    "bicubic_upsample2x_matmul",
    "cubic_kernel",
    "interpolation_matrix",
]

# Cubic convolution (A = -0.75) at offsets 1.75, 0.75, 0.25, 1.25 from the source coordinate of an even output
# (o = 2k reads k-2 .. k+1); an odd output (o = 2k+1 reads k-1 .. k+2) uses them in reverse order.
EVEN_TAPS = (-0.03515625, 0.26171875, 0.87890625, -0.10546875)
# The stride-2 transposed-convolution kernel: tap j weights input i for output 2i + j - 7 (of the 2-padded input),
# i.e. odd and even taps interleaved, reversed.
CUBIC_TAPS = (-0.03515625, -0.10546875, 0.26171875, 0.87890625, 0.87890625, 0.26171875, -0.10546875, -0.03515625)
PAD = 2
# With the input padded by PAD, output 0 is tap 7 of input 0: the transposed convolution crops 7 on each side.
CROP = 7


def _check_input(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"bicubic_upsample2x expects a (N, C, H, W) tensor; got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"bicubic_upsample2x expects a floating-point tensor; got {x.dtype}")


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def cubic_kernel(dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """The 8-tap kernel ``CUBIC_TAPS`` as a tensor."""
    return torch.tensor(CUBIC_TAPS, dtype=dtype, device=device)


def bicubic_upsample2x_conv(x: torch.Tensor, kernel: torch.Tensor | None = None) -> torch.Tensor:
    """x2 bicubic upsampling as a depthwise stride-2 transposed convolution of the edge-replicated input.

    Args:
        x: ``(N, C, H, W)`` floating-point input (fastest in channels-last memory format).
        kernel: the 8 taps (``cubic_kernel()``); built here when not given.
    """
    _check_input(x)
    if kernel is None:
        kernel = cubic_kernel(x.dtype, x.device)
    kernel = kernel.to(dtype=x.dtype, device=x.device)
    channels = x.shape[1]
    weight = torch.outer(kernel, kernel).expand(channels, 1, len(CUBIC_TAPS), len(CUBIC_TAPS))
    padded = F.pad(x, (PAD, PAD, PAD, PAD), mode="replicate")
    return F.conv_transpose2d(padded, weight, stride=2, padding=CROP, groups=channels)


def interpolation_matrix(
    size: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """The ``(2 * size, size)`` matrix of x2 bicubic upsampling along one axis, edge clamping included."""
    if size < 1:
        raise ValueError(f"interpolation_matrix needs size >= 1; got {size}")
    taps = torch.tensor(EVEN_TAPS, dtype=torch.float64)
    outputs = torch.arange(2 * size)
    # Even outputs o = 2k read k-2 .. k+1 with EVEN_TAPS; odd ones read k-1 .. k+2 with the taps reversed.
    first = outputs // 2 - 2 + outputs % 2
    sources = (first[:, None] + torch.arange(4)).clamp(0, size - 1)
    weights = torch.where((outputs % 2 == 0)[:, None], taps, taps.flip(0))
    matrix = torch.zeros(2 * size, size, dtype=torch.float64)
    matrix.scatter_add_(1, sources, weights)  # clamped taps of the same row add up on the edge column
    return matrix.to(dtype=dtype, device=device)


def bicubic_upsample2x_matmul(x: torch.Tensor) -> torch.Tensor:
    """x2 bicubic upsampling as ``U_h @ x @ U_w.T`` with dense interpolation matrices.

    Args:
        x: ``(N, C, H, W)`` floating-point input (fastest contiguous).
    """
    _check_input(x)
    height, width = x.shape[-2:]
    rows = interpolation_matrix(height, x.dtype, x.device)
    cols = interpolation_matrix(width, x.dtype, x.device)
    return torch.matmul(rows, torch.matmul(x, cols.T))


def bicubic_upsample2x(x: torch.Tensor, kernel: torch.Tensor | None = None) -> torch.Tensor:
    """``F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)``, computed fast.

    Channels-last input goes through the transposed convolution and stays channels-last; any other layout
    goes through the matrix products and comes out contiguous (as ``F.interpolate`` keeps the input's format).

    Args:
        x: ``(N, C, H, W)`` floating-point input, any size (1 included).
        kernel: the conv formulation's 8 taps, e.g. a module's buffer; built when not given.
    """
    _check_input(x)
    if _is_channels_last(x):
        return bicubic_upsample2x_conv(x, kernel)
    return bicubic_upsample2x_matmul(x)


class BicubicUpsample2x(nn.Module):
    """x2 bicubic upsampling, ``align_corners=False``: ``bicubic_upsample2x`` as a module.

    Has no parameters; its kernel is a non-persistent buffer, so it follows ``.to()`` and leaves the
    ``state_dict`` of a model using it unchanged.
    """

    kernel: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("kernel", cubic_kernel(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bicubic_upsample2x(x, self.kernel)
