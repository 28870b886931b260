"""Median train-step time per image for every model variant at a scale, against MONAI's reference U-Nets.

One train step = forward, the study's loss, backward, Adam step, on a batch of the scale's size and image size
(random data: the time does not depend on the values). MONAI's BasicUNet and BasicUNetPlusPlus, configured to
the same widths, are the reference implementations; the ratio ours/theirs says whether our code adds overhead.
Also compares channels-last with contiguous memory format.

    python benchmarks/train_step.py [--scale cpu] [--threads 2] [--steps 6] [--variants unet unetpp ...]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from repro.config import load_params, model_variant, scale_preset
from repro.models import create_variant
from repro.training.device import set_threads
from repro.training.losses import DeepSupervisionLoss, SegmentationLoss


def time_train_steps(
    model: torch.nn.Module, batch: int, size: int, channels: int, steps: int, channels_last: bool
) -> float:
    """Median seconds per image of ``steps`` train steps (after one warm-up step)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    images = torch.randn(batch, channels, size, size).contiguous(memory_format=memory_format)
    masks = (torch.rand(batch, size, size) > 0.8).long()
    loss_fn = DeepSupervisionLoss(SegmentationLoss(2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        loss = loss_fn(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:  # the first step pays for allocations and kernel selection
            times.append(time.perf_counter() - start)
    return statistics.median(times) / batch


def monai_reference(arch: str, filters: tuple[int, ...]) -> torch.nn.Module | None:
    """MONAI's BasicUNet / BasicUNetPlusPlus at the given widths, where MONAI has the architecture."""
    from monai.networks.nets import BasicUNet, BasicUNetPlusPlus

    # MONAI's 6-entry features: five encoder widths plus the last decoder width (= the first encoder width).
    features = (*filters, filters[0])
    common = {
        "spatial_dims": 2,
        "in_channels": 3,
        "out_channels": 1,
        "features": features,
        "norm": "batch",
        "act": "relu",
    }
    if arch == "unet":
        return BasicUNet(**common, upsample="deconv")
    if arch == "unetpp":
        return BasicUNetPlusPlus(**common, upsample="deconv")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--variants", nargs="*", help="model variants (default: every variant in params.yaml)")
    args = parser.parse_args()
    params = load_params()
    scale = scale_preset(args.scale, params)
    threads = set_threads(args.threads)
    torch.set_flush_denormal(True)  # as repro.training.trainer.Trainer trains
    variants = args.variants or list(params["models"])
    size, batch = scale.image_size, scale.batch_size
    print(f"scale {scale.name}: {batch} x 3 x {size} x {size}, width_mult {scale.width_mult}, {threads} thread(s)")
    print(f"{'variant':<16}{'params':>10}{'ms/img (CL)':>13}{'ms/img':>9}{'MONAI ms/img':>14}{'ours/MONAI':>12}")
    for name in variants:
        variant = model_variant(name, params)
        torch.manual_seed(0)
        # RGB images of a binary task, as the synthetic batches are.
        model = create_variant(variant.arch, variant.options, width_mult=scale.width_mult, in_channels=3, num_classes=2)
        n_params = sum(p.numel() for p in model.parameters())
        per_image = {cl: time_train_steps(model, batch, size, 3, args.steps, cl) for cl in (True, False)}
        reference = None
        if variant.arch in ("unet", "unetpp") and not variant.options:
            reference = monai_reference(variant.arch, tuple(model.widths))
        ref_time = time_train_steps(reference, batch, size, 3, args.steps, True) if reference is not None else None
        print(
            f"{name:<16}{n_params:>10,}{per_image[True] * 1e3:>13.2f}{per_image[False] * 1e3:>9.2f}"
            + (f"{ref_time * 1e3:>14.2f}{per_image[True] / ref_time:>12.2f}" if ref_time else f"{'-':>14}{'-':>12}")
        )


if __name__ == "__main__":
    main()
