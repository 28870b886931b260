"""Model complexity: parameters, FLOPs and CPU latency, beside the figures the papers report.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` for one image in eval mode: 2 FLOPs per
multiply-accumulate of convolutions, transposed convolutions, matrix products and attention (the convention of
the TinyU-Net paper, which doubles thop's MAC count). Element-wise operations, normalisation, pooling and
interpolation are not counted; they are a few percent of these convolutional networks' totals. TinyU-Net's x2
bicubic upsampling runs as fixed convolutions (:class:`~repro.models.upsample.BicubicUpsample2x`), which the
counter would see: they are left out, so interpolation counts nothing whichever way it is computed.

:data:`OFFICIAL_CONFIGS` lists every architecture in the configuration its paper or official code reports, and
:data:`PAPER_FIGURES` what was reported, with its source; :func:`complexity_table` puts the two side by side.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from repro import table_files
from repro.data.registry import REPO_ROOT
from repro.models import create_model
from repro.models.upsample import BicubicUpsample2x

# Rounding granularity of a figure given in millions with two decimals.
TWO_DECIMALS_M = 10_000
# The prepared MSD Hippocampus volume (the volume_shape of its registry entry).
HIPPOCAMPUS_VOLUME = (48, 64, 48)


@dataclass(frozen=True)
class OfficialConfig:
    """One architecture in a configuration reported by its paper or official code.

    Args:
        name: row name (also the key of :data:`PAPER_FIGURES`).
        arch: registry name (:func:`repro.models.list_models`).
        in_channels: input channels of the reported configuration.
        num_classes: output channels of the reported configuration.
        options: ``create_model`` options.
        input_size: the input's (D, H, W) for a volumetric network; None: the table's square image size.
    """

    name: str
    arch: str
    in_channels: int
    num_classes: int
    options: Mapping[str, Any] = field(default_factory=dict)
    input_size: tuple[int, ...] | None = None


@dataclass(frozen=True)
class PaperFigure:
    """What a paper or official repository reports for one configuration.

    Args:
        params: parameter count as reported (7.76M is 7_760_000).
        params_precision: rounding granularity of ``params`` (1 for an exact count).
        gflops: reported GFLOPs, or None when not reported.
        image_size: input side the GFLOPs are reported at.
        source: where the figure comes from.
        note: how our count relates to the official code's, and why it differs where it does.
    """

    params: int
    params_precision: int
    gflops: float | None = None
    image_size: int | None = None
    source: str = ""
    note: str = ""


OFFICIAL_CONFIGS: tuple[OfficialConfig, ...] = (
    OfficialConfig("unet", "unet", 1, 1, {"norm": None}),
    OfficialConfig("wide_unet", "wide_unet", 1, 1, {"norm": None}),
    OfficialConfig("unet_plus", "unet_plus", 1, 1, {"norm": None}),
    OfficialConfig("unetpp", "unetpp", 1, 1, {"norm": None}),
    OfficialConfig("unetpp_ds", "unetpp", 1, 1, {"norm": None, "deep_supervision": True}),
    OfficialConfig("tinyunet", "tinyunet", 3, 2),
    OfficialConfig("unetv2", "unetv2", 3, 1, {"encoder": "pvt_v2_b2"}),
    OfficialConfig("unet_bilinear", "unet_bilinear", 3, 1),
    OfficialConfig("light_unet", "light_unet", 3, 1),
    OfficialConfig("lighter_unet_128", "lighter_unet", 3, 1, {"groups_c": 128}),
    OfficialConfig("lighter_unet_1", "lighter_unet", 3, 1, {"groups_c": 1}),
    OfficialConfig("fcn", "fcn", 3, 1),
    OfficialConfig("multiresunet", "multiresunet", 3, 1),
    # Volumetric networks on one MSD Hippocampus volume as the study prepares it (1 channel, 3 classes).
    *(
        OfficialConfig(arch, arch, 1, 3, input_size=HIPPOCAMPUS_VOLUME)
        for arch in ("unet3d", "unet2d_slices", "vnet", "segresnet", "segresnet_vae")
    ),
    # 3D U²-Net with one domain; five of the official six levels, the deepest whose input multiple (16) the
    # Hippocampus volume is.
    OfficialConfig("u2net3d", "u2net3d", 1, 3, {"levels": 5}, input_size=HIPPOCAMPUS_VOLUME),
)

_UNETPP_PAPER = "UNet++ paper (Zhou et al., DLMIA 2018), parameter table"
_LIGHT_README = "Light-U-net README (Yingping-LI/Light-U-net), exact count"
PAPER_FIGURES: dict[str, PaperFigure] = {
    "unet": PaperFigure(7_760_000, TWO_DECIMALS_M, source=_UNETPP_PAPER, note="equals the official code's 7,759,521"),
    "wide_unet": PaperFigure(
        9_130_000,
        TWO_DECIMALS_M,
        source=_UNETPP_PAPER,
        note="the official code's filters (35, 70, 140, 280, 560) give 9,282,246, as its own comment says",
    ),
    "unetpp": PaperFigure(
        9_040_000,
        TWO_DECIMALS_M,
        source=_UNETPP_PAPER + ", without deep supervision",
        note="equals the official code's 9,041,601",
    ),
    "unetpp_ds": PaperFigure(
        9_040_000,
        TWO_DECIMALS_M,
        source=_UNETPP_PAPER + ", with deep supervision",
        note="the official code's, with its four 1x1 heads",
    ),
    "tinyunet": PaperFigure(
        480_000,
        TWO_DECIMALS_M,
        3.33,
        256,
        source="TinyU-Net paper (Chen et al., MICCAI 2024)",
        note="the paper's FLOPs are thop MACs x 2, and thop also counts 4 MACs per BatchNorm output (+0.20 G)",
    ),
    "unetv2": PaperFigure(
        25_150_000,
        TWO_DECIMALS_M,
        source="U-Net v2 paper (Peng et al., 2023)",
        note="the official model's 25,145,036 include 16,450 parameters its forward never uses (not built here)",
    ),
    "unet_bilinear": PaperFigure(17_267_393, 1, source=_LIGHT_README),
    "light_unet": PaperFigure(11_000_257, 1, source=_LIGHT_README),
    "lighter_unet_128": PaperFigure(7_944_661, 1, source=_LIGHT_README),
    "lighter_unet_1": PaperFigure(1_983_583, 1, source=_LIGHT_README),
    "multiresunet": PaperFigure(
        7_260_000,
        TWO_DECIMALS_M,
        source="MultiResUNet paper (Ibtehaz & Rahman, Neural Networks 2020)",
        note="Keras counts BatchNorm's 24,522 moving means and variances as (non-trainable) parameters: the official "
        "model's 7,262,750 = our 7,238,228 + 24,522, which PyTorch keeps as buffers",
    ),
}


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# FlopCounterMode knows the CUDA attention kernels but not the CPU one that scaled_dot_product_attention
# dispatches to here (used by pvt_v2_b2); without this its attention would count as zero.
_EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def _input(input_size: int | tuple[int, ...], in_channels: int, batch_size: int = 1) -> torch.Tensor:
    """A random input: ``input_size`` is a square image's side, or the (H, W) or (D, H, W) of the input."""
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    return torch.randn(batch_size, in_channels, *size)


def count_flops(model: nn.Module, input_size: int | tuple[int, ...], in_channels: int) -> int:
    """FLOPs (2 per multiply-accumulate) of one eval-mode forward pass on one image (or volume) of ``input_size``
    (see :func:`_input`), on the model's device (the input is drawn on the CPU, so the count draws the same random
    numbers on every device)."""
    was_training = model.training
    device = next(model.parameters(), torch.empty(0)).device  # a module without parameters runs on the CPU
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as counter:
            model(_input(input_size, in_channels).to(device))
    finally:
        model.train(was_training)
    # The counter keys each module's FLOPs by its path below the root's class name.
    root = type(model).__name__
    interpolation = {f"{root}.{name}" for name, m in model.named_modules() if isinstance(m, BicubicUpsample2x)}
    per_module = counter.get_flop_counts()
    return counter.get_total_flops() - sum(sum(per_module[key].values()) for key in interpolation & set(per_module))


def measure_latency(
    model: nn.Module,
    input_size: int | tuple[int, ...],
    repeats: int = 3,
    *,
    in_channels: int | None = None,
    warmup: int = 1,
) -> float:
    """Median wall time in milliseconds of an eval-mode forward pass on one image, on the CPU.

    Args:
        model: the model (on the CPU).
        input_size: side, or (height, width), or (depth, height, width), of the input.
        repeats: timed passes (at least one).
        in_channels: input channels; defaults to ``model.in_channels``.
        warmup: untimed passes first (allocator and thread-pool start-up).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")
    x = _input(input_size, model.in_channels if in_channels is None else in_channels)
    was_training = model.training
    model.eval()
    timings = []
    try:
        with torch.no_grad():
            for step in range(warmup + repeats):
                start = time.perf_counter()
                model(x)
                if step >= warmup:
                    timings.append((time.perf_counter() - start) * 1000)
    finally:
        model.train(was_training)
    return statistics.median(timings)


def complexity_table(
    configs: Iterable[OfficialConfig] = OFFICIAL_CONFIGS,
    image_size: int = 256,
    latency_repeats: int = 3,
) -> pd.DataFrame:
    """One row per configuration: our parameters, FLOPs and latency beside the papers' figures.

    ``params_diff`` is ours minus the reported count; ``params_match`` says whether ours rounds to the reported
    figure. ``gflops_paper`` is only given where the paper reports FLOPs at ``image_size``. With
    ``latency_repeats=0`` latency is not measured (NaN). A volumetric configuration is measured at its own
    ``input_size`` (the ``input`` column).
    """
    rows = []
    for config in configs:
        size = config.input_size or image_size
        model = create_model(
            config.arch, in_channels=config.in_channels, num_classes=config.num_classes, **config.options
        )
        params = count_parameters(model)
        paper = PAPER_FIGURES.get(config.name)
        params_diff = None if paper is None else params - paper.params
        rows.append(
            {
                "model": config.name,
                "arch": config.arch,
                "options": ", ".join(f"{k}={v}" for k, v in config.options.items()),
                "in_channels": config.in_channels,
                "num_classes": config.num_classes,
                "params": params,
                "params_paper": None if paper is None else paper.params,
                "params_diff": params_diff,
                "params_match": None if paper is None else abs(params_diff) * 2 <= paper.params_precision,
                "input": "x".join(map(str, size if isinstance(size, tuple) else (size, size))),
                "gflops": count_flops(model, size, config.in_channels) / 1e9,
                "gflops_paper": paper.gflops if paper is not None and paper.image_size == size else None,
                "latency_ms": measure_latency(model, size, latency_repeats) if latency_repeats else float("nan"),
                "threads": torch.get_num_threads(),
                "source": "" if paper is None else paper.source,
                "note": "" if paper is None else paper.note,
            }
        )
    table = pd.DataFrame(rows)
    # Integer columns with gaps (no paper figure) stay integers rather than becoming floats.
    return table.astype({"params_paper": "Int64", "params_diff": "Int64", "params_match": "boolean"})


def write_table(table: pd.DataFrame, csv_path: str | Path, md_path: str | Path) -> None:
    """Write a complexity or pruning table as CSV and as a Markdown table (floats at two decimals, a plain rule),
    creating parent folders (:func:`repro.table_files.write_table`).

    Args:
        table: the table (:func:`complexity_table`, ``repro.pruning.pruning_table``).
        csv_path: where the CSV goes; a relative path is taken from the repository root, so a notebook writes to
            the same place whatever folder its kernel runs in.
        md_path: where the Markdown table goes, likewise.
    """
    table_files.write_table(table, REPO_ROOT / csv_path, REPO_ROOT / md_path, float_digits=2, align=False)
