"""What a study grid costs on this machine: measured seconds per train step and per evaluated image of every
variant, times the steps and evaluations the scale's recipe gives each dataset.

Per run: ``optimizer steps x seconds per step`` (forward, loss, backward, Adam at the scale's batch and image
size) plus, every epoch, one forward pass over the training split (BatchNorm re-estimation) and one over the
validation split, plus the test split once. Data loading and notebook start-up (seconds per run) are left out.
Timings are medians over a few steps after a warm-up, with one thread, as the study's runner gives each run;
the 2-core wall time assumes two runs at a time.

    python benchmarks/grid_cost.py [--grid full] [--scale cpu] [--datasets ...] [--seeds 5] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from repro.config import dataset_training, load_params, model_variant, scale_preset
from repro.data.prepare import PROCESSED_DIR
from repro.models import create_variant
from repro.training.device import set_threads
from repro.training.losses import DeepSupervisionLoss, SegmentationLoss
from repro.training.trainer import epochs_for_steps


def step_and_forward_seconds(
    model: torch.nn.Module, batch: int, channels: int, classes: int, shape: tuple[int, ...], steps: int
) -> tuple[float, float]:
    """Median seconds of one train step on a batch of ``shape`` images (2D) or volumes (3D), and of one eval forward
    pass per image. 2D runs channels-last, as the study trains them."""
    images = torch.randn(batch, channels, *shape)
    if len(shape) == 2:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    masks = torch.randint(0, classes, (batch, *shape))
    loss_fn = DeepSupervisionLoss(SegmentationLoss(classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train, forward = [], []
    for _ in range(steps + 1):
        model.train()
        start = time.perf_counter()
        loss = loss_fn(model(images), masks)
        auxiliary = getattr(model, "auxiliary_loss", None)  # SegResNet-VAE's VAE term, as the Trainer adds it
        if auxiliary is not None:
            loss = loss + auxiliary
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        train.append(time.perf_counter() - start)
        model.eval()
        with torch.no_grad():
            start = time.perf_counter()
            model(images)
            forward.append((time.perf_counter() - start) / batch)
    # The first step pays for allocations and kernel selection.
    return statistics.median(train[1:]), statistics.median(forward[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--grid",
        default="full",
        help="a grid of params.yaml's `grids`, or `study` (with its extra rows, ablations and controls)",
    )
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--datasets", nargs="*", default=["dsb2018-nuclei-96", "kvasir-seg", "ph2-dermoscopy"])
    parser.add_argument("--variants", nargs="*", help="default: the grid's models")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    params = load_params()
    scale = scale_preset(args.scale, params)
    set_threads(1)
    torch.set_flush_denormal(True)  # as repro.training.trainer.Trainer trains
    grid = params["study"] if args.grid == "study" else params["grids"][args.grid]
    # Each variant with the datasets it trains on: the grid's models on every dataset, those of its image sub-blocks
    # (extra rows, ablations, controls) on the block's own datasets, where --datasets has them.
    rows = [(name, args.datasets) for name in args.variants or grid["models"]]
    if not args.variants:
        for key in ("extra", "ablations", "controls"):
            block = grid.get(key) or {}
            datasets = [d for d in args.datasets if d in (block.get("datasets") or [])]
            rows += [(name, datasets) for name in block.get("models") or [] if datasets]
    sizes, inputs = {}, {}
    for dataset in args.datasets:
        meta = json.loads((PROCESSED_DIR / scale.name / dataset / "meta.json").read_text())
        sizes[dataset] = {split: len(ids) for split, ids in meta["ids"].items()}
        shape = meta.get("volume_shape") or [scale.image_size, scale.image_size]
        inputs[dataset] = (meta["in_channels"], len(meta["class_names"]), tuple(shape))
    print(f"scale {scale.name}: batch {scale.batch_size} (a dataset may set its own), 1 thread")
    step_lengths = {d: dataset_training(d, params).steps(scale.name) for d in sizes}
    batches = {d: dataset_training(d, params).batch(scale) for d in sizes}
    lengths = {
        d: scale.epochs if step_lengths[d] is None else epochs_for_steps(step_lengths[d], n["train"], batches[d])
        for d, n in sizes.items()
    }
    print("epochs: " + ", ".join(f"{d} {e} ({'x'.join(map(str, inputs[d][2]))})" for d, e in lengths.items()))
    header = f"{'variant':<18}{'s/step':>8}{'ms/img fwd':>11}" + "".join(f"{d[:14]:>16}" for d in args.datasets)
    print(header + f"{'all seeds (h)':>15}")
    total = 0.0
    for name, datasets in rows:
        variant = model_variant(name, params)
        per_run, timings = {}, {}
        for dataset in datasets:
            n, (channels, classes, shape) = sizes[dataset], inputs[dataset]
            if (channels, classes, shape, batches[dataset]) not in timings:
                torch.manual_seed(0)
                model = create_variant(
                    variant.arch,
                    variant.options,
                    width_mult=scale.width_mult,
                    in_channels=channels,
                    num_classes=classes,
                )
                timings[channels, classes, shape, batches[dataset]] = step_and_forward_seconds(
                    model, batches[dataset], channels, classes, shape, args.steps
                )
            step, forward = timings[channels, classes, shape, batches[dataset]]
            epochs = lengths[dataset]
            steps = epochs * (n["train"] // min(batches[dataset], n["train"]))
            per_run[dataset] = steps * step + (epochs * (n["train"] + n["val"]) + n["test"]) * forward
        seconds = args.seeds * sum(per_run.values())
        total += seconds
        print(
            f"{name:<18}{step:>8.2f}{forward * 1e3:>11.1f}"
            + "".join(f"{per_run[d]:>14.0f} s" if d in per_run else f"{'-':>16}" for d in args.datasets)
            + f"{seconds / 3600:>15.1f}"
        )
    print(f"grid: {total / 3600:.1f} core-hours of training; {total / 7200:.1f} h of wall time on 2 cores")


if __name__ == "__main__":
    main()
