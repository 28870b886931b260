"""Building blocks shared by the architectures, and the small checks every model runs on its arguments.

The U-Net family (U-Net, wide U-Net, UNet+, UNet++) is built from one kind of node, :class:`DoubleConv`, or,
for the TinyU-Net block-swap ablation, from :class:`~repro.models.cmrf.CMRF`; :func:`make_block` picks one
from the ``block`` option so every architecture takes the same block options. The U-Net blocks take
``spatial_dims`` (2 or 3): the volumetric variant of a network is the same module built from the 3D layers that
:func:`conv_nd`, :func:`conv_transpose_nd`, :func:`batch_norm_nd` and :func:`max_pool_nd` pick, with the same
parameter names.

:func:`init_keras2018` re-initialises a model as the official UNet++ code (MrGiovanni/UNetPlusPlus, Keras 2.2.2,
the version its ``requirements.txt`` pins) initialised it, and :func:`keras_l2_parameters` selects the kernels
that code penalises with ``l2(1e-4)``. In that code every ``Conv2D`` (the 3x3 node convolutions and the 1x1
heads) has ``kernel_initializer="he_normal"`` and ``kernel_regularizer=l2(1e-4)``; every ``Conv2DTranspose``
keeps the Keras defaults (``glorot_uniform`` kernel, no regulariser); all biases keep the default ``zeros``.
Keras 2.2.2's ``he_normal`` is a normal truncated at two of its standard deviations and rescaled (since Keras
2.2.0) so the truncated samples have standard deviation ``sqrt(2 / fan_in)``; Keras 2.0-2.1 did not rescale
(about 12% smaller) and Keras 1 drew an untruncated normal. Both functions treat 3D convolutions as the 2D ones
(Keras's ``Conv3D`` / ``Conv3DTranspose`` have the same defaults), so they apply to the volumetric U-Net too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from repro.models.cmrf import CMRF

BLOCKS = ("double_conv", "cmrf")
NORMS = ("batch", None)
INITS = ("pytorch", "keras2018")
SPATIAL_DIMS = (2, 3)
DEFAULT_CMRF_GROUPS = 8
# The official code's L2 factor: Keras adds KERAS_L2 * sum(w ** 2) of each regularised kernel to the loss.
KERAS_L2 = 1e-4
# Standard deviation of a standard normal truncated to [-2, 2]; Keras divides by it so the truncated samples
# keep the intended standard deviation.
_TRUNCATED_NORMAL_STD = math.sqrt(1 - 4 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(math.sqrt(2)))

BlockFactory = Callable[[int, int], nn.Module]

_CONVS = (nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSES = (nn.ConvTranspose2d, nn.ConvTranspose3d)


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    """Raise a ValueError naming the valid choices when ``value`` is not one of them."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {list(choices)}")


def check_filters(filters: Sequence[int], expected_len: int) -> tuple[int, ...]:
    """Return ``filters`` as a tuple after checking its length and that every width is a positive int."""
    filters = tuple(filters)
    if len(filters) != expected_len or not all(isinstance(w, int) and w > 0 for w in filters):
        raise ValueError(f"filters must be {expected_len} positive ints (one width per level); got {filters}")
    return filters


def scale_width(width: int, width_mult: float, divisor: int = 1) -> int:
    """Scale a channel width by ``width_mult`` and round half up to a multiple of ``divisor`` (at least one).

    With ``width_mult=1`` and ``divisor=1`` the width is unchanged, so the official configurations are exact.
    """
    if width_mult <= 0:
        raise ValueError(f"width_mult must be > 0; got {width_mult}")
    return max(divisor, int(width * width_mult / divisor + 0.5) * divisor)


def check_input_size(
    x: torch.Tensor, divisor: int, arch: str, min_size: int | None = None, *, spatial_dims: int = 2
) -> None:
    """Raise a ValueError when the spatial size of ``x`` cannot pass through the network unchanged.

    The spatial size is the last ``spatial_dims`` dimensions: (height, width), or (depth, height, width).
    """
    check_choice("spatial_dims", spatial_dims, SPATIAL_DIMS)
    sizes = tuple(x.shape[-spatial_dims:])
    min_size = divisor if min_size is None else min_size
    if any(size % divisor or size < min_size for size in sizes):
        names = "height and width" if spatial_dims == 2 else "depth, height and width"
        raise ValueError(
            f"{arch} takes inputs whose {names} are multiples of {divisor} and at least {min_size};"
            f" got {'x'.join(map(str, sizes))}"
        )


def _nd(layers: tuple[type[nn.Module], type[nn.Module]], spatial_dims: int) -> type[nn.Module]:
    check_choice("spatial_dims", spatial_dims, SPATIAL_DIMS)
    return layers[spatial_dims - 2]


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return _nd(_CONVS, spatial_dims)


def conv_transpose_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return _nd(_CONV_TRANSPOSES, spatial_dims)


def batch_norm_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.BatchNorm2d`` or ``nn.BatchNorm3d``."""
    return _nd((nn.BatchNorm2d, nn.BatchNorm3d), spatial_dims)


def max_pool_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.MaxPool2d`` or ``nn.MaxPool3d``."""
    return _nd((nn.MaxPool2d, nn.MaxPool3d), spatial_dims)


def init_keras2018(model: nn.Module) -> nn.Module:
    """Re-initialise ``model`` in place as the official Keras UNet++ code did; returns the model.

    Every ``Conv2d`` / ``Conv3d`` kernel gets Keras 2.2.2's ``he_normal`` (a normal truncated at +-2 of its
    standard deviation, scaled so the samples have standard deviation ``sqrt(2 / fan_in)``), every
    ``ConvTranspose2d`` / ``ConvTranspose3d`` kernel Glorot uniform (bound ``sqrt(6 / (fan_in + fan_out))``), every
    convolution bias zero. Normalisation layers keep their ones / zeros, which are Keras's defaults too.
    """
    for module in model.modules():
        if isinstance(module, _CONV_TRANSPOSES):
            nn.init.xavier_uniform_(module.weight)
        elif isinstance(module, _CONVS):
            fan_in = module.weight[0].numel()  # input channels (per group) x kernel size, as Keras counts it
            std = math.sqrt(2 / fan_in) / _TRUNCATED_NORMAL_STD
            nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        else:
            continue
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    return model


def keras_l2_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The tensors the official Keras code penalises with ``l2(KERAS_L2)``: the kernel of every ``Conv2d`` (or
    ``Conv3d``, in a volumetric model).

    Those are the 3x3 node convolutions and the 1x1 heads; transposed-convolution kernels, biases and
    normalisation parameters carry no regulariser there.
    """
    return [module.weight for module in model.modules() if isinstance(module, _CONVS)]


def mean_probability_logits(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Combine heads' logits ``(N, C, H, W)`` into logits whose probabilities are the mean of the heads'.

    With one channel (sigmoid) this is the logit of the mean probability, ``log(mean p) - log(mean (1 - p))``,
    computed from log-sigmoids so saturated heads stay finite; with several channels (softmax over the
    channels) it is the log of the mean softmax, already normalised, so its softmax is that mean.
    """
    stacked = torch.stack(tuple(logits))
    if stacked.shape[2] == 1:
        return torch.logsumexp(F.logsigmoid(stacked), dim=0) - torch.logsumexp(F.logsigmoid(-stacked), dim=0)
    return torch.logsumexp(stacked.log_softmax(dim=2), dim=0) - math.log(len(stacked))


class UniformDropout(nn.Module):
    """Element-wise dropout, as ``nn.Dropout``: in training each element is zeroed with probability ``p`` and the
    others scaled by ``1 / (1 - p)``; in eval mode the identity. The mask is drawn as ``torch.rand_like(x) >= p``.

    Why not ``nn.Dropout``: on the CPU it draws its mask with ``bernoulli_``, which took 21% of a train step of the
    UNet++ paper's network (dropout after each of its 30 convolutions; 2.4 s of 11.2 s at width 1.0, batch 16, 96²,
    one thread). A uniform draw and a float mask make forward and backward 2.4 times faster (87 ms against 212 ms
    for a 16x32x96x96 batch). Same distribution (to float32's 2^-24), another random stream: not bit-compatible
    with ``nn.Dropout``, so only the blocks with ``dropout`` use it (the UNet++ paper's 2018 networks, which had no
    committed runs when it came; Light U-Net's bottleneck keeps ``nn.Dropout``).

    Args:
        p: probability of zeroing an element, in [0, 1).
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * (torch.rand_like(x) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ConvNormAct(nn.Sequential):
    """A convolution, then BatchNorm (unless ``norm=None``), the activation, and dropout (when > 0).

    Args:
        conv: the convolution (any module mapping to ``out_channels`` channels).
        out_channels: channels ``conv`` produces.
        norm: ``"batch"`` or ``None``.
        activation: activation class, instantiated without arguments.
        dropout: element-wise dropout probability after the activation (:class:`UniformDropout`).
        spatial_dims: 2 or 3 (picks ``BatchNorm2d`` or ``BatchNorm3d``).
    """

    def __init__(
        self,
        conv: nn.Module,
        out_channels: int,
        *,
        norm: str | None = "batch",
        activation: type[nn.Module] = nn.ReLU,
        dropout: float = 0.0,
        spatial_dims: int = 2,
    ) -> None:
        check_choice("norm", norm, NORMS)
        layers = [conv]
        if norm == "batch":
            layers.append(batch_norm_nd(spatial_dims)(out_channels))
        layers.append(activation())
        if dropout > 0:
            layers.append(UniformDropout(dropout))
        super().__init__(*layers)


class DoubleConv(nn.Sequential):
    """Two 3x3 (3x3x3) convolutions with bias, each followed by [BatchNorm] + activation [+ dropout].

    Args:
        in_channels: input channels.
        out_channels: output channels.
        norm: ``"batch"`` or ``None`` (the official UNet++ code has no normalisation).
        dropout: dropout after each activation (the official UNet++ code uses 0.5).
        activation: activation class.
        spatial_dims: 2 or 3.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        norm: str | None = "batch",
        dropout: float = 0.0,
        activation: type[nn.Module] = nn.ReLU,
        spatial_dims: int = 2,
    ) -> None:
        conv = conv_nd(spatial_dims)
        options = {"norm": norm, "activation": activation, "dropout": dropout, "spatial_dims": spatial_dims}
        super().__init__(
            ConvNormAct(conv(in_channels, out_channels, 3, padding=1), out_channels, **options),
            ConvNormAct(conv(out_channels, out_channels, 3, padding=1), out_channels, **options),
        )


def make_block(
    block: str,
    *,
    norm: str | None = "batch",
    dropout: float = 0.0,
    n_dwconv: int | None = None,
    activation: type[nn.Module] = nn.ReLU,
    spatial_dims: int = 2,
) -> tuple[BlockFactory, int]:
    """Return a factory ``(in_channels, out_channels) -> node`` for ``block``, and the divisor its widths need.

    Args:
        block: ``"double_conv"`` (:class:`DoubleConv`) or ``"cmrf"`` (:class:`~repro.models.cmrf.CMRF`).
        norm: normalisation of double_conv nodes; CMRF always uses BatchNorm.
        dropout: dropout of double_conv nodes; CMRF has none.
        n_dwconv: CMRF's N (default 8); only valid with ``block="cmrf"``.
        activation: activation of double_conv nodes (CMRF uses GELU, as in the official code).
        spatial_dims: 2 or 3; CMRF is 2D only.
    """
    check_choice("block", block, BLOCKS)
    check_choice("norm", norm, NORMS)
    check_choice("spatial_dims", spatial_dims, SPATIAL_DIMS)
    if block == "double_conv":
        if n_dwconv is not None:
            raise ValueError("n_dwconv only applies to block='cmrf'")
        return (
            lambda c_in, c_out: DoubleConv(
                c_in, c_out, norm=norm, dropout=dropout, activation=activation, spatial_dims=spatial_dims
            ),
            1,
        )
    if spatial_dims != 2:
        raise ValueError("block='cmrf' is 2D only: use block='double_conv' with spatial_dims=3")
    if norm != "batch" or dropout:
        raise ValueError("block='cmrf' always uses BatchNorm and no dropout: leave norm and dropout unset")
    groups = DEFAULT_CMRF_GROUPS if n_dwconv is None else n_dwconv
    # CMRF splits its reduced features into N groups of two halves: widths must divide by 2N.
    return (lambda c_in, c_out: CMRF(c_in, c_out, n_groups=groups)), 2 * groups


class UpConcatNode(nn.Module):
    """Decoder node: upsample the coarser node, concatenate it with same-level skips, then one block.

    The upsampling is a 2x2 (2x2x2) stride-2 transposed convolution with bias to this level's width, as in the
    official UNet++ code; the concatenation order is ``[upsampled, *skips]``.

    Args:
        coarse_channels: channels of the coarser (lower-resolution) node.
        out_channels: this level's width.
        skip_channels: total channels of the skips concatenated at this node.
        block: factory building the node block from (input channels, output channels).
        spatial_dims: 2 or 3 (picks the transposed convolution; ``block`` must build nodes of the same dims).
    """

    def __init__(
        self,
        coarse_channels: int,
        out_channels: int,
        skip_channels: int,
        block: BlockFactory,
        *,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        self.up = conv_transpose_nd(spatial_dims)(coarse_channels, out_channels, kernel_size=2, stride=2)
        self.block = block(out_channels + skip_channels, out_channels)

    def forward(self, coarse: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.block(torch.cat([self.up(coarse), *skips], dim=1))


class DeepSupervisionMixin:
    """``ds_mode`` attribute (validated on every assignment) for models with optional deep supervision.

    With deep supervision a model returns all its heads in train mode, and in eval mode the one tensor
    ``ds_mode`` selects (the first of ``ds_modes`` unless set). ``ds_mode`` can be changed after construction,
    so one trained model can be evaluated in every mode. Without deep supervision ``ds_mode`` is None.
    """

    ds_modes: tuple[str, ...] = ()
    deep_supervision: bool
    _ds_mode: str | None

    def _init_deep_supervision(self, deep_supervision: bool, ds_mode: str | None) -> None:
        self.deep_supervision = deep_supervision
        self._ds_mode = None
        if deep_supervision:
            self.ds_mode = self.ds_modes[0] if ds_mode is None else ds_mode
        elif ds_mode is not None:
            raise ValueError("ds_mode only applies with deep_supervision=True")

    @property
    def ds_mode(self) -> str | None:
        return self._ds_mode

    @ds_mode.setter
    def ds_mode(self, mode: str) -> None:
        if not self.deep_supervision:
            raise ValueError("ds_mode only applies with deep_supervision=True")
        check_choice("ds_mode", mode, self.ds_modes)
        self._ds_mode = mode

    def set_ds_mode(self, mode: str) -> DeepSupervisionMixin:
        """Select the eval-mode output (one of ``ds_modes``); returns the model."""
        self.ds_mode = mode
        return self
