"""The study's architectures, built by name: ``create_model(arch, in_channels=..., num_classes=...)``, and a model
variant of the study as its runs build it: :func:`create_variant`.

Every model maps ``(N, in_channels, H, W)`` images to logits ``(N, num_classes, H, W)`` (binary segmentation
uses ``num_classes=1`` with a sigmoid, multi-class a softmax). With ``deep_supervision=True``, train mode returns
a list of logits (deepest decoder output last) and eval mode one tensor selected by ``ds_mode``. Volumetric
models (:func:`model_spatial_dims` 3) map ``(N, in_channels, D, H, W)`` to ``(N, num_classes, D, H, W)``. Every
model is a :class:`~repro.models.contract.SegmentationNetwork`: it states its paper, official code, input multiple
(``size_divisor``) and dimensions next to its code, and its module docstring states every deviation from the
official code. Adding an architecture: one module, one line in ``_REGISTRY`` below, one variant in params.yaml.

Imports nothing of the project outside ``repro.models``: every other part may build a network.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from repro.models.fcn import FCN8s
from repro.models.light_unet import BilinearUNet
from repro.models.monai_nets import SegResNet, SegResNetVAE, VNet
from repro.models.multiresunet import MultiResUNet
from repro.models.slicewise import SlicewiseUNet
from repro.models.tinyunet import TinyUNet
from repro.models.u2net3d import U2Net3D
from repro.models.unet import UNET3D_FILTERS, WIDE_UNET_FILTERS, UNet
from repro.models.unetpp import NestedUNet
from repro.models.unetv2 import UNetV2

__all__ = [
    "ModelSpec",
    "create_model",
    "create_variant",
    "list_models",
    "model_options",
    "model_spatial_dims",
    "output_channels",
    "variant_options",
]


@dataclass(frozen=True)
class ModelSpec:
    """How a registry name builds its model.

    Args:
        model_class: the class; its keyword-only constructor arguments are the options.
        fixed: arguments the name sets (not options).
        defaults: option defaults that differ from the class's.
    """

    model_class: type[nn.Module]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)

    @property
    def options(self) -> tuple[str, ...]:
        parameters = inspect.signature(self.model_class).parameters.values()
        return tuple(p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.name not in self.fixed)


_REGISTRY: dict[str, ModelSpec] = {
    "unet": ModelSpec(UNet),
    "wide_unet": ModelSpec(UNet, defaults={"filters": WIDE_UNET_FILTERS}),
    "unet_plus": ModelSpec(NestedUNet, fixed={"dense_skips": False}),
    "unetpp": ModelSpec(NestedUNet, fixed={"dense_skips": True}),
    "tinyunet": ModelSpec(TinyUNet),
    "unetv2": ModelSpec(UNetV2),
    "unet_bilinear": ModelSpec(BilinearUNet, fixed={"variant": "unet", "groups_c": None}),
    "light_unet": ModelSpec(BilinearUNet, fixed={"variant": "light", "groups_c": None}),
    "lighter_unet": ModelSpec(BilinearUNet, fixed={"variant": "lighter"}, defaults={"groups_c": 128}),
    "fcn": ModelSpec(FCN8s),
    "multiresunet": ModelSpec(MultiResUNet),
    # Volumetric models (MSD Hippocampus): inputs (N, C, D, H, W).
    "unet3d": ModelSpec(UNet, fixed={"spatial_dims": 3}, defaults={"levels": 4, "filters": UNET3D_FILTERS}),
    "unet2d_slices": ModelSpec(SlicewiseUNet),
    "vnet": ModelSpec(VNet),
    "segresnet": ModelSpec(SegResNet),
    "segresnet_vae": ModelSpec(SegResNetVAE),
    "u2net3d": ModelSpec(U2Net3D),
}


def list_models() -> list[str]:
    """The registered architecture names."""
    return sorted(_REGISTRY)


def _spec(arch: str) -> ModelSpec:
    if arch not in _REGISTRY:
        raise ValueError(f"unknown arch {arch!r}; valid archs: {list_models()}")
    return _REGISTRY[arch]


def model_options(arch: str) -> tuple[str, ...]:
    """The option names ``create_model(arch, ...)`` accepts."""
    return _spec(arch).options


def model_spatial_dims(arch: str) -> int:
    """2 for an image model (inputs ``(N, C, H, W)``), 3 for a volume model (inputs ``(N, C, D, H, W)``)."""
    spec = _spec(arch)
    return spec.fixed.get("spatial_dims", spec.model_class.spatial_dims)


def create_model(arch: str, *, in_channels: int, num_classes: int, **options: Any) -> nn.Module:
    """Build architecture ``arch`` (one of :func:`list_models`) with the given options.

    Raises:
        ValueError: for an unknown arch, an unknown option (the message lists the valid ones), or an invalid
            option value.
    """
    spec = _spec(arch)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {arch!r}; valid options: {list(spec.options)}")
    return spec.model_class(in_channels, num_classes, **{**spec.defaults, **options, **spec.fixed})


def create_variant(
    arch: str, options: Mapping[str, Any], *, width_mult: float, in_channels: int, num_classes: int
) -> nn.Module:
    """Build a model variant of the study as its runs build it: the one rule that training, prediction, the runner's
    estimate and the benchmarks share.

    Args:
        arch: the variant's architecture (one of :func:`list_models`).
        options: the variant's network options (its ``models.<name>`` entry of params.yaml less ``arch`` and the
            training options); a ``width_mult`` among them fixes the variant's own width.
        width_mult: the scale's width factor, for a variant that fixes none.
        in_channels: the data's input channels.
        num_classes: the data's classes, background included: two get one output channel (a sigmoid), more one
            channel per class (a softmax).

    Raises:
        ValueError: as :func:`create_model`.
    """
    return create_model(
        arch, in_channels=in_channels, num_classes=output_channels(num_classes), **variant_options(options, width_mult)
    )


def variant_options(options: Mapping[str, Any], width_mult: float) -> dict[str, Any]:
    """The options a variant builds with: its own, and the scale's width factor unless it fixes its own (the rule
    of :func:`create_variant`, which a run records as its options)."""
    return {"width_mult": width_mult, **options}


def output_channels(num_classes: int) -> int:
    """A network's output channels for ``num_classes`` classes, background included: one (a sigmoid) for two, one
    per class (a softmax) for more."""
    return 1 if num_classes == 2 else num_classes
