"""Pilot learning curves: how long the study's runs must be, and what stale BatchNorm statistics do.

One pilot is one training run of the study (``repro.training.run``: same data, model variant, seed, scale and
recipe) whose every epoch is validated twice with the same weights: with the running BatchNorm statistics that
training kept (``val_dice_running``) and with statistics re-estimated on the training split (``val_dice``, what the
study's evaluation uses; see ``repro.training.inference.reestimate_batchnorm``). Both come from one training
trajectory, since running statistics never enter a train-mode forward pass. No test split is touched. A dataset
without a length yet is piloted at a long one (``--steps``), and its length chosen from the curve.

    python scripts/pilot_curves.py run --dataset kvasir-seg --model unet --seed 0   # one pilot
    python scripts/pilot_curves.py summary                                           # table + figure

``run`` writes ``results/pilots/<scale>/<dataset>/<model>/seed<k>/{history.csv,pilot.json}``; ``summary`` writes
``results/pilots/<scale>/summary.md`` and ``curves.png`` from every pilot there. A killed pilot resumes from its
checkpoint (``checkpoints/pilots/...``).
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from repro.config import load_params  # noqa: E402
from repro.training import record, run  # noqa: E402
from repro.training.inference import reestimate_batchnorm  # noqa: E402
from repro.training.trainer import Trainer, epochs_for_steps  # noqa: E402

PILOTS_DIR = run.REPO_ROOT / "results" / "pilots"
# Val Dice gained over the last five epochs: a run still learning at its end was cut short.
TAIL_EPOCHS = 5
# The recipe's rule for a length: validation changes by less than this over the last TAIL_EPOCHS epochs.
SETTLED = 0.005


def meets_rule(val_dice: list[float]) -> bool:
    """The recipe's rule for a length, on a run's validation curve: its best epoch is not the last, and validation
    changed by less than :data:`SETTLED` over the last :data:`TAIL_EPOCHS` epochs."""
    if len(val_dice) <= TAIL_EPOCHS:
        return False
    best_is_last = max(range(len(val_dice)), key=val_dice.__getitem__) == len(val_dice) - 1
    return not best_is_last and abs(val_dice[-1] - val_dice[-1 - TAIL_EPOCHS]) < SETTLED


def suggest_length(val_dice: list[float], steps_per_epoch: int) -> int | None:
    """The pilot's own length in optimizer steps when its curve meets the rule (:func:`meets_rule`), as the study's
    lengths were chosen; None when it does not: pilot a longer run. A shorter cut of the curve is no evidence: a run
    of that length would anneal its learning rate on another schedule."""
    return len(val_dice) * steps_per_epoch if meets_rule(val_dice) else None


def pilot(dataset: str, model: str, seed: int, scale: str, threads: int, steps: int | None = None) -> dict:
    out = PILOTS_DIR / scale / dataset / model / f"seed{seed}"
    checkpoint = run.CHECKPOINT_DIR / "pilots" / scale / dataset / model / f"seed{seed}"
    config = run.resolve(dataset, model, seed, scale, None, out, threads, checkpoint)
    data = run.load_data(config)
    network, generator = run.build(config, data)
    # The trainer evaluates with training's running statistics; each epoch is evaluated again re-estimated.
    settings = dataclasses.replace(run.train_settings(config, data), reestimate_bn=False)
    if steps is not None:  # a dataset without a length yet: pilot a long run, then choose from its curve
        per_image = config.scale.patches_per_image if data.large_images else 1
        epochs = epochs_for_steps(steps, len(data.train) * per_image, settings.batch_size)
        settings = dataclasses.replace(settings, epochs=epochs)
    identity = run.identity(config)
    trainer = Trainer(network, data, settings, config.seed, generator, config.checkpoint_dir, config.device, identity)
    rows = _read_rows(out / "history.csv")[: len(trainer.history)]

    def on_epoch(row: dict) -> None:
        state = copy.deepcopy(trainer.model.state_dict())
        images = trainer.train_split.images.contiguous(memory_format=trainer.memory_format)
        reestimate_batchnorm(trainer.model, images, settings.batch_size, trainer.tile)
        val = trainer.evaluate(trainer.val_split).summary
        trainer.model.load_state_dict(state)
        rows.append({**row, "val_dice_running": row["val_dice"], "val_dice": val["dice"], "val_iou": val["iou"]})
        out.mkdir(parents=True, exist_ok=True)
        record.write_csv(out / "history.csv", rows)
        print(
            f"{dataset}/{model}/seed{seed} epoch {row['epoch']}/{settings.epochs}: loss {row['train_loss']:.3f}, "
            f"val Dice {val['dice']:.3f} (running statistics {row['val_dice']:.3f})",
            flush=True,
        )

    trainer.fit(on_epoch=on_epoch)
    history = pd.DataFrame(rows)
    best = int(history["val_dice"].idxmax())
    summary = {
        "dataset": dataset,
        "model": model,
        "options": config.model_options,
        "seed": seed,
        "scale": scale,
        "epochs": settings.epochs,
        "optimizer_steps": trainer.train_samples // settings.batch_size,
        "best_epoch": int(history["epoch"][best]),
        "best_val_dice": float(history["val_dice"][best]),
        "gain_last_5_epochs": float(history["val_dice"].iloc[-1] - history["val_dice"].iloc[-1 - TAIL_EPOCHS]),
        "suggested_train_steps": suggest_length(
            history["val_dice"].tolist(), trainer.train_samples // settings.batch_size // settings.epochs
        ),
        "train_seconds": round(trainer.train_seconds, 1),
        "git_commit": identity.git_commit,
        "versions": record.versions(),
        "machine": record.machine(config.device),
    }
    (out / "pilot.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def suggestion_text(summary: dict, entry: dict | None = None) -> str:
    """The params.yaml line a pilot suggests, or what to do when its curve never settles. ``entry`` is the
    dataset's ``training.<dataset>`` entry as it stands (its other scales' lengths, ``eval_every`` and
    ``batch_size`` stay as they are); None for a dataset without one."""
    steps, dataset, scale = summary["suggested_train_steps"], summary["dataset"], summary["scale"]
    if steps is None:
        return (
            f"no length suggested: the curve has not settled (its best epoch must not be the last, and validation "
            f"must change by less than {SETTLED} over the last {TAIL_EPOCHS} epochs); pilot a longer run (--steps)"
        )
    entry = entry or {}
    settings = {
        "train_steps": {**(entry.get("train_steps") or {}), scale: steps},
        "eval_every": entry.get("eval_every", 1),
    }
    if entry.get("batch_size"):
        settings["batch_size"] = entry["batch_size"]
    return (
        f"suggested length (this pilot's: its curve meets the recipe's rule); in params.yaml:\n"
        f"  training:\n    {dataset}: {_flow(settings)}\n"
    )


def _flow(settings: dict) -> str:
    """``settings`` as one YAML flow mapping, as params.yaml writes its training entries."""
    return yaml.safe_dump(settings, default_flow_style=True, sort_keys=False, width=sys.maxsize).strip()


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def summarize(scale: str) -> None:
    folder = PILOTS_DIR / scale
    pilots = sorted(folder.glob("*/*/seed*/pilot.json"))
    if not pilots:
        raise SystemExit(f"no finished pilot under {folder}")
    table = pd.DataFrame([json.loads(p.read_text()) for p in pilots])
    table["best epoch / epochs"] = table["best_epoch"].astype(str) + " / " + table["epochs"].astype(str)
    table["train_seconds"] = table["train_seconds"].round().astype(int)
    columns = [
        "dataset",
        "model",
        "seed",
        "optimizer_steps",
        "best epoch / epochs",
        "best_val_dice",
        "gain_last_5_epochs",
        "train_seconds",
    ]
    lines = [
        f"# Pilot learning curves, scale `{scale}`",
        "",
        "Written by `python scripts/pilot_curves.py summary` from the pilots below; commits: "
        + ", ".join(sorted(set(table["git_commit"])))
        + ".",
        "",
        table[columns].to_markdown(index=False, floatfmt=".3f"),
        "",
    ]
    (folder / "summary.md").write_text("\n".join(lines))
    histories = {
        (p.parent.parent.parent.name, p.parent.parent.name, p.parent.name): pd.read_csv(p.parent / "history.csv")
        for p in pilots
    }
    datasets = sorted({key[0] for key in histories})
    colours = {model: f"C{k}" for k, model in enumerate(sorted({key[1] for key in histories}))}  # one per model
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for (name, model, seed), history in histories.items():
            if name != dataset:
                continue
            line = ax.plot(history["epoch"], history["val_dice"], color=colours[model], label=f"{model} {seed}")[0]
            ax.plot(
                history["epoch"],
                history["val_dice_running"],
                ls=":",
                color=line.get_color(),
                label=f"{model} {seed}, running BN statistics",
            )
            best = history["val_dice"].idxmax()
            ax.plot(history["epoch"][best], history["val_dice"][best], "o", color=line.get_color())
        ax.set(title=dataset, xlabel="epoch", ylabel="validation Dice", ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(folder / "curves.png", dpi=100)
    print((folder / "summary.md").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("run", help="one pilot run")
    one.add_argument("--dataset", required=True)
    one.add_argument("--model", required=True)
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--scale", default="cpu")
    one.add_argument("--threads", type=int, default=1)
    one.add_argument(
        "--steps", type=int, help="length in optimizer steps (default: the dataset's training.<dataset>.train_steps)"
    )
    table = commands.add_parser("summary", help="table and figure of every finished pilot")
    table.add_argument("--scale", default="cpu")
    args = parser.parse_args()
    if args.command == "run":
        summary = pilot(args.dataset, args.model, args.seed, args.scale, args.threads, args.steps)
        print(json.dumps(summary, indent=1))
        print(suggestion_text(summary, (load_params().get("training") or {}).get(args.dataset)))
    else:
        summarize(args.scale)


if __name__ == "__main__":
    main()
