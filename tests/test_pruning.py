"""The pruning table: each inference depth of the official deep-supervision UNet++ costs what its nodes cost."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import torch
from torch import nn

from repro import complexity, pruning
from repro.models import create_model
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


def test_latency_is_measured_at_each_depth_on_the_network_pruned_to_it(monkeypatch):
    """Timed on a fake clock that advances 1 ms per convolution run, a depth's latency is the number of convolutions
    one forward pass at that depth runs: the shallower the head, the fewer nodes, the shorter; averaging the four
    heads runs all of L4 and more. A measurement that timed the full network at every depth, or did not time
    the forward pass, would not give these numbers (on a busy machine a real clock could not tell them apart)."""
    clock = [0.0]
    convs_per_pass: dict[str, int] = {}

    def tick(module, inputs, output):
        clock[0] += 1e-3

    def create_with_hooks(*args, **kwargs):
        model = create_model(*args, **kwargs)
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.register_forward_hook(tick)
        with torch.no_grad():
            for depth in DEPTHS:
                model.ds_mode = depth
                before = clock[0]
                model.eval()(torch.zeros(1, model.in_channels, 32, 32))
                convs_per_pass[depth] = round((clock[0] - before) / 1e-3)
        return model

    monkeypatch.setattr(pruning, "create_model", create_with_hooks)
    monkeypatch.setattr(complexity, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    table = pruning.pruning_table(image_size=32, latency_repeats=3).set_index("depth")
    expected = pd.Series(convs_per_pass, dtype=float)
    assert expected["L1"] < expected["L2"] < expected["L3"] < expected["L4"] < expected["average"]
    assert table["latency_ms"].round(6).to_dict() == expected.to_dict()
    assert table["latency_vs_L4"].round(6).to_dict() == (expected / expected["L4"]).round(6).to_dict()
