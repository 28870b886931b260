"""The pruning table: each inference depth of the official deep-supervision UNet++ costs what its nodes cost."""

from __future__ import annotations

import math

from repro.pruning import DEPTHS, pruning_table


def test_each_depth_costs_more_than_the_shallower_ones_and_is_compared_with_l4():
    table = pruning_table(image_size=32, latency_repeats=0).set_index("depth")
    assert list(table.index) == list(DEPTHS)
    flops = table.loc[["L1", "L2", "L3", "L4"], "gflops"]
    assert flops.is_monotonic_increasing and flops.is_unique
    # Averaging the four heads runs the whole network plus the three shallower heads.
    assert table.loc["average", "gflops"] > table.loc["L4", "gflops"]
    assert table.loc["L4", "gflops_vs_L4"] == 1
    assert 0 < table.loc["L1", "gflops_vs_L4"] < table.loc["L3", "gflops_vs_L4"] < 1
    assert all(math.isnan(value) for value in table["latency_ms"])


def test_latency_is_measured_for_every_depth():
    table = pruning_table(image_size=32, latency_repeats=1)
    assert (table["latency_ms"] > 0).all()
    assert table.set_index("depth").loc["L4", "latency_vs_L4"] == 1
