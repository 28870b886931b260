"""x2 bicubic upsampling: repro.models.upsample against F.interpolate, alone and inside a TinyU-Net train step.

(a) The op alone, forward + backward, at the decoder shapes TinyU-Net produces at a scale (default: the study's
    ``cpu`` scale, width 0.5, 96x96, batch 16; ``paper`` adds width 1.0 at 256x256), channels-last and
    contiguous, for the dispatching function and both of its formulations.
(b) A whole TinyU-Net train step (forward, the study's loss, backward, Adam) of every TinyU-Net variant in
    params.yaml at the ``cpu`` scale (each at its own width), with the model's ``upsample`` module computing
    ``F.interpolate`` (the official code's call) and with ``repro.models.upsample`` (what the study runs).
(c) torch.profiler over a few steps of each: the share of the step spent in upsampling, forward and backward.

Timings interleave the contenders round by round (so a neighbour's load hits both alike) and report the median
over rounds with the spread (min-max) that says how noisy the machine was.

    python benchmarks/upsample_bicubic.py [--threads 1] [--rounds 5] [--variants tinyunet ...] [--op-scales cpu paper]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import profile, record_function

from repro.config import load_params, model_variant, scale_preset
from repro.models import create_model
from repro.models.upsample import bicubic_upsample2x, bicubic_upsample2x_conv, bicubic_upsample2x_matmul
from repro.training.device import set_threads
from repro.training.losses import DeepSupervisionLoss, SegmentationLoss

FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
UPSAMPLE_LABEL = "repro.upsample"


def reference(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)


class LabelledUpsample(nn.Module):
    """TinyU-Net's ``upsample`` module computing ``upsample``, labelled for the profiler."""

    def __init__(self, upsample: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.function = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with record_function(UPSAMPLE_LABEL):
            return self.function(x)


def tinyunet_with(upsample: Callable[[torch.Tensor], torch.Tensor], **options) -> nn.Module:
    """A TinyU-Net whose x2 upsampling is ``upsample``."""
    model = create_model("tinyunet", in_channels=3, num_classes=1, **options)
    model.upsample = LabelledUpsample(upsample)
    return model


def decoder_shapes(options: dict, batch: int, size: int) -> list[tuple[int, ...]]:
    """The input shapes of TinyU-Net's upsampling calls, recorded from one forward pass."""
    shapes = []

    def spy(x: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(x.shape))
        return reference(x)

    with torch.no_grad():
        tinyunet_with(spy, **options)(torch.randn(batch, 3, size, size))
    return shapes


def spread(times: list[float]) -> str:
    return f"{statistics.median(times) * 1e3:8.1f} ms [{min(times) * 1e3:.1f}-{max(times) * 1e3:.1f}]"


def time_op(function: Callable, inputs: list[torch.Tensor], grads: list[torch.Tensor], calls: int) -> float:
    """Median over ``calls`` of the summed forward + backward time over every decoder shape."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        for x, grad in zip(inputs, grads, strict=True):
            x.grad = None
            function(x).backward(grad)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_op(scale_name: str, params: dict, rounds: int) -> None:
    scale = scale_preset(scale_name, params)
    options = {"width_mult": scale.width_mult, **model_variant("tinyunet", params).options}  # the study's width
    shapes = decoder_shapes(options, scale.batch_size, scale.image_size)
    print(f"\n(a) the op alone, forward + backward, scale {scale_name}: {shapes}")
    contenders = {
        "F.interpolate": reference,
        "bicubic_upsample2x": bicubic_upsample2x,
        "  conv formulation": bicubic_upsample2x_conv,
        "  matmul formulation": bicubic_upsample2x_matmul,
    }
    for format_name, memory_format in FORMATS.items():
        generator = torch.Generator().manual_seed(0)
        inputs = [
            torch.randn(s, generator=generator).contiguous(memory_format=memory_format).requires_grad_() for s in shapes
        ]
        grads = [reference(x.detach()) for x in inputs]  # any tensor of the output's shape and format
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(rounds):
            for name, function in contenders.items():
                times[name].append(time_op(function, inputs, grads, calls=3))
        base = statistics.median(times["F.interpolate"])
        for name, measured in times.items():
            print(f"  {format_name:<14}{name:<22}{spread(measured)}   x{base / statistics.median(measured):5.2f}")


def make_step(
    variant_options: dict, scale, memory_format, upsample: Callable[[torch.Tensor], torch.Tensor]
) -> Callable[[], None]:
    """One train step of a fresh TinyU-Net variant as the study runs it (its width, loss, Adam, memory format)."""
    torch.manual_seed(0)
    model = tinyunet_with(upsample, **{"width_mult": scale.width_mult, **variant_options})
    model = model.to(memory_format=memory_format).train()
    size, batch = scale.image_size, scale.batch_size
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=memory_format)
    masks = (torch.rand(batch, size, size) > 0.8).long()
    loss_fn = DeepSupervisionLoss(SegmentationLoss(2))
    optimizer = torch.optim.Adam(model.parameters(), lr=scale.lr)

    def step() -> None:
        loss = loss_fn(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


UPSAMPLERS = {"F.interpolate": reference, "repro.upsample": bicubic_upsample2x}


def bench_steps(variant_names: list[str], params: dict, rounds: int, steps_per_round: int) -> None:
    scale = scale_preset("cpu", params)
    print(f"\n(b) train step, scale cpu: batch {scale.batch_size}, {scale.image_size}x{scale.image_size}, ", end="")
    print(f"the variant's width; median [min-max] over {rounds} rounds of {steps_per_round} steps")
    for name in variant_names:
        variant = model_variant(name, params)
        for format_name, memory_format in FORMATS.items():
            times: dict[str, list[float]] = {u: [] for u in UPSAMPLERS}
            steps = {u: make_step(variant.options, scale, memory_format, f) for u, f in UPSAMPLERS.items()}
            for _ in range(rounds):
                for upsampler in UPSAMPLERS:
                    steps[upsampler]()  # warm-up: allocations, kernel selection
                    for _ in range(steps_per_round):
                        start = time.perf_counter()
                        steps[upsampler]()
                        times[upsampler].append(time.perf_counter() - start)
            before, after = (statistics.median(times[u]) for u in UPSAMPLERS)
            print(
                f"  {name:<16}{format_name:<15}F.interpolate {spread(times['F.interpolate'])}   "
                f"repro.upsample {spread(times['repro.upsample'])}   speed-up x{before / after:.2f}"
            )


def upsample_share(events) -> tuple[float, float]:
    """(seconds in upsampling forward + backward, seconds in the profiled steps) from profiler events.

    Forward: the labelled call (either upsampler). Backward (autograd runs it on this thread on CPU): PyTorch's
    ``aten::upsample_bicubic2d_backward``, or ours in channels-last, the replicate-pad backward and the
    convolution backward whose weight is the 8x8 kernel (TinyU-Net has no other replicate pad or 8x8 kernel).
    """
    upsampling = total = 0.0
    for event in events:
        if event.name == "train_step":
            total += event.cpu_time_total
        elif event.name in (UPSAMPLE_LABEL, "aten::upsample_bicubic2d_backward", "aten::replication_pad2d_backward"):
            upsampling += event.cpu_time_total
        elif event.name == "aten::convolution_backward" and list(event.input_shapes[2][-2:]) == [8, 8]:
            upsampling += event.cpu_time_total
    return upsampling / 1e6, total / 1e6


def bench_profile(params: dict, steps: int) -> None:
    scale = scale_preset("cpu", params)
    print(f"\n(c) torch.profiler, tinyunet, channels_last, {steps} steps: upsampling's share of the step")
    for upsampler, function in UPSAMPLERS.items():
        step = make_step(model_variant("tinyunet", params).options, scale, torch.channels_last, function)
        step()
        with profile(record_shapes=True) as prof:
            for _ in range(steps):
                with record_function("train_step"):
                    step()
        upsampling, total = upsample_share(prof.events())
        print(
            f"  {upsampler:<16}step {total / steps * 1e3:7.1f} ms, upsampling {upsampling / steps * 1e3:6.1f} ms "
            f"({upsampling / total:5.1%})"
        )
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=6))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the study's CPU setting: 1)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="train steps per round and contender")
    parser.add_argument("--variants", nargs="*", help="TinyU-Net variants (default: every one in params.yaml)")
    parser.add_argument("--op-scales", nargs="*", default=["cpu", "paper"], help="scales for the op alone")
    parser.add_argument("--skip", nargs="*", default=[], choices=["op", "step", "profile"])
    args = parser.parse_args()
    params = load_params()
    threads = set_threads(args.threads)
    print(f"torch {torch.__version__}, {threads} thread(s)")
    variants = args.variants or [n for n in params["models"] if model_variant(n, params).arch == "tinyunet"]
    if "op" not in args.skip:
        for scale_name in args.op_scales:
            bench_op(scale_name, params, args.rounds)
    if "step" not in args.skip:
        bench_steps(variants, params, args.rounds, args.steps)
    if "profile" not in args.skip:
        bench_profile(params, args.steps)


if __name__ == "__main__":
    main()
