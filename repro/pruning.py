"""What UNet++ costs when pruned at inference (the papers' "fast mode"), depth by depth.

A UNet++ trained with deep supervision can answer from the head of depth k alone, computing only the nodes
X(i, j) with i + j <= k (``ds_mode="L1"``..``"L4"``; ``"average"`` averages the four heads). Claim C9
(``repro.analysis.claims``) tests whether accuracy survives pruning to L3; this table gives the other side of that
trade: FLOPs and CPU latency of one image at each depth, for the official configuration (``OFFICIAL_CONFIGS``'
``unetpp_ds``), measured with the same counters as the complexity table.
"""

from __future__ import annotations

import pandas as pd
import torch

from repro.complexity import OFFICIAL_CONFIGS, count_flops, measure_latency
from repro.models import create_model

DEPTHS = ("L1", "L2", "L3", "L4", "average")


def pruning_table(image_size: int = 256, latency_repeats: int = 3) -> pd.DataFrame:
    """One row per inference depth of the official deep-supervision UNet++.

    Args:
        image_size: side of the square input.
        latency_repeats: timed forward passes per depth (the median is reported); 0 skips latency (NaN).

    Returns:
        Columns ``depth``, ``gflops``, ``gflops_vs_L4`` (fraction of the full network's FLOPs), ``latency_ms``,
        ``latency_vs_L4`` and ``threads``.
    """
    (config,) = [config for config in OFFICIAL_CONFIGS if config.name == "unetpp_ds"]
    model = create_model(config.arch, in_channels=config.in_channels, num_classes=config.num_classes, **config.options)
    rows = []
    for depth in DEPTHS:
        model.ds_mode = depth
        rows.append(
            {
                "depth": depth,
                "gflops": count_flops(model, image_size, config.in_channels) / 1e9,
                "latency_ms": (
                    measure_latency(model, image_size, latency_repeats) if latency_repeats else float("nan")
                ),
                "threads": torch.get_num_threads(),
            }
        )
    table = pd.DataFrame(rows)
    full = table.set_index("depth").loc["L4"]
    table.insert(2, "gflops_vs_L4", table["gflops"] / full["gflops"])
    table.insert(4, "latency_vs_L4", table["latency_ms"] / full["latency_ms"])
    return table
