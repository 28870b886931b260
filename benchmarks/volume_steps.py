"""Train-step time of volumetric networks at chosen widths and batch sizes: what sized the volumetric rows.

One thread, as the study's runner gives each run; medians of a few steps after a warm-up (``grid_cost``'s
``step_and_forward_seconds``), on random volumes of a prepared dataset's shape at the scale.

    python benchmarks/volume_steps.py unet3d:0.25:4:msd-task04-hippocampus u2net3d:0.25:4:la2018-atrium-lgemri

Each argument is ``variant:width:batch:dataset`` (the variant's own options, the width replacing its
``width_mult``).
"""

from __future__ import annotations

import argparse
import json

import torch
from grid_cost import step_and_forward_seconds

from repro.config import load_params, model_variant, scale_preset
from repro.data.prepare import PROCESSED_DIR
from repro.models import create_variant
from repro.training.device import set_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="+", help="variant:width:batch:dataset")
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    params = load_params()
    scale = scale_preset(args.scale, params)
    set_threads(1)
    torch.set_flush_denormal(True)  # as repro.training.trainer.Trainer trains
    for case in args.cases:
        name, width, batch, dataset = case.split(":")
        meta = json.loads((PROCESSED_DIR / scale.name / dataset / "meta.json").read_text())
        shape, classes = tuple(meta["volume_shape"]), len(meta["class_names"])
        variant = model_variant(name, params)
        options = {k: v for k, v in variant.options.items() if k != "width_mult"}
        torch.manual_seed(0)
        model = create_variant(
            variant.arch, options, width_mult=float(width), in_channels=meta["in_channels"], num_classes=classes
        )
        step, forward = step_and_forward_seconds(model, int(batch), meta["in_channels"], classes, shape, args.steps)
        parameters = sum(p.numel() for p in model.parameters())
        print(
            f"{name:15} width {width} batch {batch} {dataset} {'x'.join(map(str, shape))}: {step:6.2f} s/step, "
            f"{forward * 1e3:7.1f} ms/volume forward, {parameters / 1e6:.2f}M parameters",
            flush=True,
        )


if __name__ == "__main__":
    main()
