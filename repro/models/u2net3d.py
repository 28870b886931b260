"""3D U²-Net (Huang, Han, Yao, Zhu and Zhou, "3D U²-Net: A 3D Universal U-Net for Multi-Domain Medical Image
Segmentation", MICCAI 2019, LNCS 11765, pp. 291-299; arXiv:1909.06012): one residual 3D U-Net shared by several
domains (datasets), whose 3x3x3 convolutions are separable: a domain-specific channel-wise (depthwise) 3x3x3
kernel followed by a pointwise 1x1x1 kernel shared by all domains.

Facts from the official code (github.com/huangmozhilv/u2net_torch at c655840564ce4e153a08d6ef789b075884fd839e;
read: ``u2net_torch_src/models/u2net3d.py``, ``models/model_utils.py``, ``config.py``, ``train.py``,
``train_model_wt_adapters.py``, ``train_model_no_adapters.py``, ``train_models.sh``), with its universal run
(``--trainMode universal --module separable_adapter --base_outChans 16``, ``num_pool_per_axis = [5, 5, 5]``):

- Levels: ``max(num_pool_per_axis) + 1`` = six resolution levels (five stride-2 down-samplings) of widths
  16, 32, 64, 128, 256, 512 (``base_outChans * 2 ** level``); patches 128x128x128 in the universal run.
- Every normalisation is ``InstanceNorm3d(affine=True)`` and every activation ``LeakyReLU(0.01)``. No dropout.
- Input block (per domain): a full 3x3x3 convolution (``in_channels -> 16``, bias) + norm + activation.
- Separable unit (the "separable adapter"): the domain's depthwise 3x3x3 convolution (bias) + the domain's norm +
  activation, then the shared pointwise 1x1x1 convolution (bias), then the domain's norm (no activation).
- Encoder level: unit, activation, unit, residual addition of the block input, activation (``residual=True``).
- Down-sampling (shared convolution): zero-pad one voxel at the end of each axis (TensorFlow "SAME"), a full
  3x3x3 stride-2 convolution doubling the width, the domain's norm, activation.
- Up-sampling: nearest-neighbour x2, a separable unit to the finer level's width, activation; then the
  concatenation ``[upsampled, skip]`` and a decoder block: unit (``2w -> w``), activation, unit (``w -> w``),
  activation (no residual). The official second unit is built with ``kernel_size=1``, which the separable unit
  ignores: in the universal model it is a 3x3x3 depthwise + 1x1x1 pointwise unit, in the standard
  (independent/shared) model a 1x1x1 convolution. Both are reproduced.
- "Deep supervision" (``config.deep_supervision = True``) is not auxiliary losses: at decoder levels 2 and 1 a
  per-domain 1x1x1 convolution to the classes + norm + activation is added to the running sum from the level
  below and upsampled x2; the sum is added to the final per-domain 1x1x1 head. One output. Here
  ``summed_heads`` (the name avoids the project's ``deep_supervision``, which returns a list of logits).
- Per domain: the input block, every depthwise kernel (and bias) with the norm after it, every norm after a
  pointwise or down-sampling convolution, the summed heads and the output head. Shared: the pointwise kernels
  (and biases) and the stride-2 down-sampling convolutions (which are never separable).
- ``trainMode`` independent (one domain) and shared (several) use the same network with full 3x3x3
  convolutions in place of the separable units (norms, input blocks and heads stay per domain): ``conv="standard"``.
- Initialisation: ``kaiming_normal_`` on every ``Conv3d`` weight, biases zero (``init="official"``).
- The official standard (non-universal) ``conv_unit.forward`` lacks its ``return`` and so returns None; the
  standard model here is that network with the missing return. With the official module's weights copied in,
  this module's logits equal the official module's exactly (universal, independent and shared; checked once
  against the official file, which the tests do not import).

Parameter counts (1 input channel, 2 classes, six levels, width 16; equal to the official module's): universal
with one domain 5,998,430, two 6,143,020, five 6,576,790 (144,590 per added domain); one independent (standard)
model 33,113,214. The official five-task universal run (in-channels 1, 1, 1, 2, 1; classes 2, 2, 3, 3, 2) has
6,577,460; its five independent models (task-specific depths: ``max(num_pool_per_axis)`` 5, 5, 3, 5, 5, so
6, 6, 4, 6, 6 levels) 134,508,692: the universal model is 4.9% of them. The abstract's "about 1% of the
parameters" is not a ratio these configurations give; the domain-specific part of one domain is 0.44% of an
independent model (:func:`parameter_split`, :func:`compare_to_independent`).

Deliberate deviations:
- Domains are chosen by ``forward(x, domain)`` or the ``domain`` attribute, not a global ``config.task_idx``;
  forward returns only the logits (the official separable model also returns two feature maps for plots).
- Down-sampling is isotropic (2x2x2 at every level; ``levels`` sets the depth); the official code can skip an
  axis (``num_pool_per_axis``, e.g. Prostate's [2, 5, 5]). :func:`compare_to_independent` gives every
  independent model this model's depth, not the official task-specific depths.
- ``width_mult`` (not in the official code) scales every level's width, rounded half up.
- ``init="pytorch"`` (PyTorch's defaults) is the default, as for the project's other models.
- Domains share one ``in_channels`` and ``num_classes`` unless ``in_channels_per_domain`` /
  ``num_classes_per_domain`` are given (the official code takes a list of each); their first entries must equal
  ``in_channels`` and ``num_classes``, which describe domain 0, the default domain.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from repro.models.blocks import check_choice, scale_width
from repro.models.contract import SegmentationNetwork

U2NET_BASE_FILTERS = 16
# num_pool_per_axis = [5, 5, 5] in the official universal run: five down-samplings, six levels.
U2NET_LEVELS = 6
# The official summed ("deep supervision") heads sit at decoder levels 1 and 2 (level 0: full resolution).
SUMMED_HEAD_LEVELS = (1, 2)
LEAKY_SLOPE = 1e-2
CONVS = ("separable", "standard")
U2NET_INITS = ("pytorch", "official")

_DOMAIN_PARAMETER = re.compile(r"(?:^|\.)per_domain\.(\d+)\.")


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm3d(channels, affine=True)


def _act() -> nn.Module:
    return nn.LeakyReLU(LEAKY_SLOPE)


class DomainNorm(nn.Module):
    """One affine InstanceNorm3d per domain.

    Args:
        channels: channels normalised.
        domains: number of domains.
    """

    def __init__(self, channels: int, domains: int) -> None:
        super().__init__()
        self.per_domain = nn.ModuleList(_norm(channels) for _ in range(domains))

    def forward(self, x: torch.Tensor, domain: int) -> torch.Tensor:
        return self.per_domain[domain](x)


class DomainDepthwise(nn.Module):
    """Per domain: a channel-wise (depthwise) 3x3x3 convolution with bias + norm + LeakyReLU.

    Args:
        channels: input and output channels.
        domains: number of domains.
    """

    def __init__(self, channels: int, domains: int) -> None:
        super().__init__()
        self.per_domain = nn.ModuleList(
            nn.Sequential(nn.Conv3d(channels, channels, 3, padding=1, groups=channels), _norm(channels), _act())
            for _ in range(domains)
        )

    def forward(self, x: torch.Tensor, domain: int) -> torch.Tensor:
        return self.per_domain[domain](x)


class ConvUnit(nn.Module):
    """A stride-1 convolution followed by the domain's norm (no activation): the official ``conv_unit``.

    ``separable=True``: the domain's depthwise 3x3x3 convolution + norm + LeakyReLU, then the shared pointwise
    1x1x1 convolution (``kernel_size`` is ignored, as in the official code). ``separable=False``: one shared
    full convolution of ``kernel_size``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        domains: number of domains.
        separable: domain-specific depthwise + shared pointwise (universal) or shared full convolution.
        kernel_size: the full convolution's kernel (3 or 1) when not separable.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, domains: int, separable: bool, kernel_size: int = 3
    ) -> None:
        super().__init__()
        self.separable = separable
        if separable:
            self.depthwise = DomainDepthwise(in_channels, domains)
            self.conv = nn.Conv3d(in_channels, out_channels, 1)
        else:
            self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = DomainNorm(out_channels, domains)

    def forward(self, x: torch.Tensor, domain: int) -> torch.Tensor:
        if self.separable:
            x = self.depthwise(x, domain)
        return self.norm(self.conv(x), domain)


class InputBlock(nn.Module):
    """Per domain: a full 3x3x3 convolution to the first width + norm + LeakyReLU.

    Args:
        in_channels_per_domain: each domain's input channels.
        out_channels: the first level's width.
    """

    def __init__(self, in_channels_per_domain: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.per_domain = nn.ModuleList(
            nn.Sequential(nn.Conv3d(c_in, out_channels, 3, padding=1), _norm(out_channels), _act())
            for c_in in in_channels_per_domain
        )

    def forward(self, x: torch.Tensor, domain: int) -> torch.Tensor:
        return self.per_domain[domain](x)


class ResidualBlock(nn.Module):
    """Encoder level: unit, LeakyReLU, unit, (+ input), LeakyReLU.

    Args:
        channels: the level's width (input and output).
        domains: number of domains.
        separable: separable (universal) or standard units.
        residual: add the block input before the last activation (official: True).
    """

    def __init__(self, channels: int, *, domains: int, separable: bool, residual: bool = True) -> None:
        super().__init__()
        self.residual = residual
        self.unit1 = ConvUnit(channels, channels, domains=domains, separable=separable)
        self.unit2 = ConvUnit(channels, channels, domains=domains, separable=separable)
        self.act = _act()

    def forward(self, x: torch.Tensor, domain: int) -> torch.Tensor:
        out = self.unit2(self.act(self.unit1(x, domain)), domain)
        return self.act(out + x if self.residual else out)


class DownSample(nn.Module):
    """TensorFlow-"SAME" stride-2 3x3x3 convolution (shared; pad one voxel at each axis's end), domain norm, act.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        domains: number of domains.
    """

    def __init__(self, in_channels: int, out_channels: int, *, domains: int) -> None:
        super().__init__()
        self.pad = nn.ConstantPad3d((0, 1, 0, 1, 0, 1), 0.0)
        self.conv = nn.Conv3d(in_channels, out_channels, 3, stride=2)
        self.norm = DomainNorm(out_channels, domains)
        self.act = _act()

    def forward(self, x: torch.Tensor, domain: int) -> torch.Tensor:
        return self.act(self.norm(self.conv(self.pad(x)), domain))


class UpSample(nn.Module):
    """Nearest-neighbour x2, then a unit to the finer level's width and LeakyReLU.

    Args:
        in_channels: the coarser level's width.
        out_channels: the finer level's width.
        domains: number of domains.
        separable: separable (universal) or standard unit.
    """

    def __init__(self, in_channels: int, out_channels: int, *, domains: int, separable: bool) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.unit = ConvUnit(in_channels, out_channels, domains=domains, separable=separable)
        self.act = _act()

    def forward(self, x: torch.Tensor, domain: int) -> torch.Tensor:
        return self.act(self.unit(self.up(x), domain))


class DecoderBlock(nn.Module):
    """Decoder level on ``[upsampled, skip]``: unit (2w -> w), LeakyReLU, unit (w -> w), LeakyReLU; no residual.

    The second unit is separable 3x3x3 in the universal model and a 1x1x1 convolution in the standard one, as in
    the official code.

    Args:
        channels: the level's width ``w``.
        domains: number of domains.
        separable: separable (universal) or standard units.
    """

    def __init__(self, channels: int, *, domains: int, separable: bool) -> None:
        super().__init__()
        self.unit1 = ConvUnit(2 * channels, channels, domains=domains, separable=separable)
        self.unit2 = ConvUnit(channels, channels, domains=domains, separable=separable, kernel_size=1)
        self.act = _act()

    def forward(self, x: torch.Tensor, domain: int) -> torch.Tensor:
        return self.act(self.unit2(self.act(self.unit1(x, domain)), domain))


class SummedHead(nn.Module):
    """Per domain: 1x1x1 convolution to the classes + norm + LeakyReLU, plus the running sum, upsampled x2.

    Args:
        in_channels: the decoder level's width.
        num_classes_per_domain: each domain's classes.
    """

    def __init__(self, in_channels: int, num_classes_per_domain: Sequence[int]) -> None:
        super().__init__()
        self.per_domain = nn.ModuleList(
            nn.Sequential(nn.Conv3d(in_channels, n, 1), _norm(n), _act()) for n in num_classes_per_domain
        )
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")

    def forward(self, x: torch.Tensor, domain: int, running_sum: torch.Tensor | None) -> torch.Tensor:
        out = self.per_domain[domain](x)
        return self.up(out if running_sum is None else out + running_sum)


class OutputHead(nn.Module):
    """Per domain: a 1x1x1 convolution (bias) to the classes.

    Args:
        in_channels: the first level's width.
        num_classes_per_domain: each domain's classes.
    """

    def __init__(self, in_channels: int, num_classes_per_domain: Sequence[int]) -> None:
        super().__init__()
        self.per_domain = nn.ModuleList(nn.Conv3d(in_channels, n, 1) for n in num_classes_per_domain)

    def forward(self, x: torch.Tensor, domain: int) -> torch.Tensor:
        return self.per_domain[domain](x)


def _per_domain(name: str, default: int, values: Sequence[int] | None, domains: int) -> tuple[int, ...]:
    if values is None:
        return (default,) * domains
    values = tuple(values)
    if len(values) != domains or not all(isinstance(v, int) and v > 0 for v in values):
        raise ValueError(f"{name}_per_domain must be {domains} positive ints (one per domain); got {values}")
    if values[0] != default:
        raise ValueError(f"{name}_per_domain[0] must equal {name} (domain 0 is the default); got {values}")
    return values


class U2Net3D(SegmentationNetwork):
    """3D U²-Net: a residual 3D U-Net whose convolutions share pointwise kernels across domains.

    ``forward(x, domain)`` runs domain ``domain`` (default: the ``domain`` attribute, 0 unless set, so a trainer
    that calls ``model(x)`` sets ``model.domain = k`` before a batch of domain ``k``).

    Args:
        in_channels: input channels (of domain 0, and of every domain unless ``in_channels_per_domain``).
        num_classes: output channels (of domain 0, and of every domain unless ``num_classes_per_domain``).
        domains: number of domains K.
        width_mult: multiplies every width (official 1.0: 16, 32, 64, 128, 256, 512).
        base_filters: the first level's width before ``width_mult`` (official ``base_outChans`` 16).
        levels: resolution levels (official universal run: 6); inputs must be multiples of ``2 ** (levels - 1)``.
        conv: ``"separable"`` (the universal model) or ``"standard"`` (the official independent model with one
            domain, its shared model with several).
        residual: residual encoder blocks (official True).
        summed_heads: the official ``deep_supervision``: heads at decoder levels 1 and 2 summed into the output.
        in_channels_per_domain: each domain's input channels (official ``inChans_list``).
        num_classes_per_domain: each domain's classes (official ``num_class_list``).
        init: ``"pytorch"`` (PyTorch's defaults) or ``"official"`` (Kaiming-normal convolution weights, zero biases).
    """

    paper = 'Huang et al., "3D U2-Net: A 3D Universal U-Net for Multi-Domain Medical Image Segmentation", MICCAI 2019'
    official_code = "huangmozhilv/u2net_torch, u2net_torch_src/models/u2net3d.py"

    spatial_dims = 3
    size_divisor = 2 ** (U2NET_LEVELS - 1)

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        domains: int = 1,
        width_mult: float = 1.0,
        base_filters: int = U2NET_BASE_FILTERS,
        levels: int = U2NET_LEVELS,
        conv: str = "separable",
        residual: bool = True,
        summed_heads: bool = True,
        in_channels_per_domain: Sequence[int] | None = None,
        num_classes_per_domain: Sequence[int] | None = None,
        init: str = "pytorch",
    ) -> None:
        super().__init__()
        check_choice("conv", conv, CONVS)
        check_choice("init", init, U2NET_INITS)
        if not isinstance(domains, int) or domains < 1:
            raise ValueError(f"domains must be an int >= 1; got {domains!r}")
        if not isinstance(levels, int) or levels < 2:
            raise ValueError(f"levels must be an int >= 2; got {levels!r}")
        if not isinstance(base_filters, int) or base_filters < 1:
            raise ValueError(f"base_filters must be a positive int; got {base_filters!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.domains = domains
        self.domain = 0
        self.levels = levels
        self.conv = conv
        self.size_divisor = 2 ** (levels - 1)
        self.in_channels_per_domain = _per_domain("in_channels", in_channels, in_channels_per_domain, domains)
        self.num_classes_per_domain = _per_domain("num_classes", num_classes, num_classes_per_domain, domains)
        self.widths = tuple(scale_width(base_filters * 2**level, width_mult) for level in range(levels))
        self._options = {
            "width_mult": width_mult,
            "base_filters": base_filters,
            "levels": levels,
            "residual": residual,
            "summed_heads": summed_heads,
        }
        separable = conv == "separable"
        widths = self.widths

        self.input_block = InputBlock(self.in_channels_per_domain, widths[0])
        self.encoder = nn.ModuleList(
            ResidualBlock(w, domains=domains, separable=separable, residual=residual) for w in widths
        )
        # downsamples[level]: level -> level + 1; upsamples[level] and decoder[level]: level + 1 -> level.
        self.downsamples = nn.ModuleList(
            DownSample(widths[level], widths[level + 1], domains=domains) for level in range(levels - 1)
        )
        self.upsamples = nn.ModuleList(
            UpSample(widths[level + 1], widths[level], domains=domains, separable=separable)
            for level in range(levels - 1)
        )
        self.decoder = nn.ModuleList(
            DecoderBlock(widths[level], domains=domains, separable=separable) for level in range(levels - 1)
        )
        head_levels = [level for level in SUMMED_HEAD_LEVELS if level <= levels - 2] if summed_heads else []
        self.summed_heads = nn.ModuleDict(
            {str(level): SummedHead(widths[level], self.num_classes_per_domain) for level in head_levels}
        )
        self.head = OutputHead(widths[0], self.num_classes_per_domain)
        if init == "official":
            for module in self.modules():
                if isinstance(module, nn.Conv3d):
                    nn.init.kaiming_normal_(module.weight)
                    nn.init.zeros_(module.bias)

    def _check(self, x: torch.Tensor, domain: int | None) -> int:
        domain = self.domain if domain is None else domain
        if not isinstance(domain, int) or not 0 <= domain < self.domains:
            raise ValueError(f"domain must be an int in [0, {self.domains}); got {domain!r}")
        self.check_input(x)
        if x.shape[1] != self.in_channels_per_domain[domain]:
            raise ValueError(
                f"domain {domain} takes {self.in_channels_per_domain[domain]} input channels; got {x.shape[1]}"
            )
        return domain

    def forward(self, x: torch.Tensor, domain: int | None = None) -> torch.Tensor:
        domain = self._check(x, domain)
        x = self.input_block(x, domain)
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x, domain)
            if level < self.levels - 1:
                skips.append(x)
                x = self.downsamples[level](x, domain)
        running_sum = None
        for level in reversed(range(self.levels - 1)):
            x = self.upsamples[level](x, domain)
            x = self.decoder[level](torch.cat([x, skips[level]], dim=1), domain)
            if str(level) in self.summed_heads:
                running_sum = self.summed_heads[str(level)](x, domain, running_sum)
        logits = self.head(x, domain)
        return logits if running_sum is None else logits + running_sum


# --- parameter counts -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParameterSplit:
    """A model's parameters: shared by all domains, and each domain's own.

    Args:
        shared: parameters every domain uses.
        per_domain: the parameters only domain ``k`` uses, for each ``k``.
    """

    shared: int
    per_domain: tuple[int, ...]

    @property
    def domain_specific(self) -> int:
        return sum(self.per_domain)

    @property
    def total(self) -> int:
        return self.shared + self.domain_specific


def parameter_domain(name: str) -> int | None:
    """The domain a parameter of :class:`U2Net3D` belongs to (from its name), or None for a shared one."""
    match = _DOMAIN_PARAMETER.search(name)
    return None if match is None else int(match.group(1))


def parameter_split(model: U2Net3D) -> ParameterSplit:
    """Count ``model``'s shared and per-domain parameters."""
    shared = 0
    per_domain = [0] * model.domains
    for name, parameter in model.named_parameters():
        domain = parameter_domain(name)
        if domain is None:
            shared += parameter.numel()
        else:
            per_domain[domain] += parameter.numel()
    return ParameterSplit(shared, tuple(per_domain))


@dataclass(frozen=True)
class UniversalVsIndependent:
    """One universal model for K domains against K independent models (the official code's comparison).

    Args:
        universal: the universal (separable) model's parameters.
        independent: each domain's independent model: standard convolutions, one domain, same depth and widths.
    """

    universal: int
    independent: tuple[int, ...]

    @property
    def independent_total(self) -> int:
        return sum(self.independent)

    @property
    def ratio(self) -> float:
        """Universal parameters as a fraction of all independent models' parameters."""
        return self.universal / self.independent_total


def compare_to_independent(model: U2Net3D) -> UniversalVsIndependent:
    """Compare ``model`` with one standard-convolution, one-domain model per domain (built on the meta device)."""
    independent = []
    with torch.device("meta"):
        for c_in, n in zip(model.in_channels_per_domain, model.num_classes_per_domain, strict=True):
            twin = U2Net3D(c_in, n, domains=1, conv="standard", **model._options)
            independent.append(sum(p.numel() for p in twin.parameters()))
    return UniversalVsIndependent(sum(p.numel() for p in model.parameters()), tuple(independent))
