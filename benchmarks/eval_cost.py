"""What validation costs beside training, per dataset: the measurement behind ``training.<dataset>.eval_every``.

A run validates after every ``eval_every``-th epoch: BatchNorm statistics re-estimated on the training split, then
the validation split predicted (by sliding window on large images). On the study's 96-pixel images that is a small
part of an epoch; on large images, trained on patches but evaluated whole, it can cost more than the epoch's
training. This trains the study's run (``repro.training.run``: same data, variant, seed, scale and recipe) for a
few epochs, validating after each, and reports training and validation seconds per epoch and the ``eval_every``
that keeps validation within ``--budget`` of the training time (the study's 2D datasets keep 1).

    python benchmarks/eval_cost.py --dataset isbi2012-em-membrane [--model unet] [--epochs 2] [--budget 0.25]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics

from repro.training import run
from repro.training.trainer import Trainer


def suggested_eval_every(train_seconds: float, eval_seconds: float, budget: float) -> int:
    """The smallest N with one validation per N epochs costing at most ``budget`` of the N epochs' training."""
    return max(1, math.ceil(eval_seconds / (budget * train_seconds)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", default="unet")
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--budget", type=float, default=0.25, help="validation time as a fraction of training's")
    args = parser.parse_args()
    config = run.resolve(args.dataset, args.model, 0, args.scale, None, "/tmp/eval_cost", 1)
    data = run.load_data(config)
    network, generator = run.build(config, data)
    settings = dataclasses.replace(run.train_settings(config, data), epochs=args.epochs, eval_every=1)
    trainer = Trainer(network, data, settings, config.seed, generator, None, config.device)
    rows = trainer.fit()
    train = statistics.median(row["seconds"] for row in rows)
    evaluation = statistics.median(row["eval_seconds"] for row in rows)
    print(
        f"{args.dataset} / {args.model} at scale {args.scale}, large images: {data.large_images}, one thread: "
        f"{train:.1f} s training and {evaluation:.1f} s validation per epoch (x{evaluation / train:.2f}); "
        f"eval_every {suggested_eval_every(train, evaluation, args.budget)} keeps validation within "
        f"{args.budget:.0%} of training"
    )


if __name__ == "__main__":
    main()
