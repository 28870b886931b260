"""One cell of the study: (dataset, model variant, seed) at a scale, from prepared data to written results.

``notebooks/train.ipynb`` calls these pieces one cell at a time so that the executed notebook reads as a report.

Outputs in ``out_dir`` (``repro.training.record``): ``metrics.json`` (test metrics of the selected epoch, the run's
identity: see ``repro.training.identity``), ``per_image.csv``, ``history.csv``. Checkpoints go to
``checkpoints/<dataset>/<model>/seed<k>/<scale>/`` (git-ignored), which no later stage needs.

A universal run trains one network on several datasets (domains) at once (3D U²-Net;
``notebooks/train_universal.ipynb``). Its ``dataset`` names the domains joined by ``+`` (:data:`DOMAIN_SEPARATOR`).
It resolves to one :class:`RunConfig` per domain (:func:`resolve_domains`), one Trainer trains it
(:func:`make_universal_trainer`), and each domain gets its own record, the same as a one-domain run of that dataset
(``repro.training.record.write_domain_outputs``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from repro.complexity import count_flops, count_parameters
from repro.config import (
    DatasetTraining,
    ModelVariant,
    ScalePreset,
    dataset_training,
    load_params,
    model_variant,
    scale_preset,
)
from repro.data.loading import PreparedData, Split, load_prepared
from repro.data.prepare import PROCESSED_DIR, prepare_dataset
from repro.data.registry import REPO_ROOT, resolve_data_root
from repro.models import create_variant, output_channels, variant_options
from repro.models.u2net3d import U2Net3D, compare_to_independent, parameter_split
from repro.training.device import describe_device, normalise_device, resolve_device, seed_everything, set_threads
from repro.training.identity import (
    PARAMS_FILE,
    TRAIN_STAGE,
    RunIdentity,
    code_files,
    data_files,
    dataset_definition,
    git_commit,
    prepare_stage,
    stages_commit,
)
from repro.training.inference import predict_logits
from repro.training.metrics import keras_mean_iou, two_class_miou
from repro.training.trainer import Trainer, TrainSettings, epochs_for_steps

CHECKPOINT_DIR = REPO_ROOT / "checkpoints"
# Joins the domains of a universal run in its dataset name: ``msd-task04-hippocampus+la2018-atrium-lgemri``.
DOMAIN_SEPARATOR = "+"
UNIVERSAL_STAGE = "train_universal"


@dataclass
class RunConfig:
    """Every resolved setting of one run."""

    dataset: str
    variant: ModelVariant
    seed: int
    scale: ScalePreset
    dataset_settings: DatasetTraining
    data_root: str | None
    out_dir: Path
    threads: int
    checkpoint_dir: Path
    device: torch.device

    @property
    def model_options(self) -> dict[str, Any]:
        """The variant's options with the scale's width factor (unless the variant fixes its own)."""
        return variant_options(self.variant.options, self.scale.width_mult)

    @property
    def options(self) -> dict[str, Any]:
        """What the variant sets: the network's options, and its training options where it sets any."""
        training = {"l2_kernels": self.variant.l2_kernels} if self.variant.l2_kernels else {}
        if self.variant.paper_metric:
            training["paper_metric"] = self.variant.paper_metric
        return {**self.model_options, **training}

    @property
    def data_folder(self) -> Path:
        """The prepared dataset the run trains on (``dvc repro prepare`` writes it)."""
        return PROCESSED_DIR / self.scale.name / self.dataset

    def describe(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "model": self.variant.name,
            "arch": self.variant.arch,
            "options": self.options,
            "seed": self.seed,
            "scale": self.scale.name,
            "scale_settings": {k: v for k, v in vars(self.scale).items() if k != "name"},
            "dataset_settings": self.dataset_settings.settings(),
            "data_root": self.data_root,
            "out_dir": str(self.out_dir),
            "threads": self.threads,
            "checkpoint_dir": str(self.checkpoint_dir),
            "device": describe_device(self.device),
        }


def identify(config: RunConfig, data_folder: Path | str, repo_root: Path | str = REPO_ROOT) -> RunIdentity:
    """The identity of the run ``config`` (see :func:`repro.training.run.resolve`) on the prepared folder
    ``data_folder``.

    Args:
        config: the resolved run.
        data_folder: the prepared dataset the run trains on (prepare it first).
        repo_root: the repository whose ``dvc.yaml``, ``params.yaml``, code and git state are read.
    """
    repo_root = Path(repo_root)
    scale = config.scale
    params = load_params(repo_root / PARAMS_FILE)
    return RunIdentity(
        dataset=config.dataset,
        dataset_definition=dataset_definition(config.dataset, params),
        model=config.variant.name,
        arch=config.variant.arch,
        options=config.options,
        seed=config.seed,
        scale=scale.name,
        scale_settings={k: v for k, v in vars(scale).items() if k != "name"},
        dataset_settings=config.dataset_settings.settings(),
        data_files=data_files(data_folder),
        code_files=code_files(repo_root),
        data_root=str(resolve_data_root(config.data_root)),
        git_commit=git_commit(repo_root, config.dataset, config.variant.name, config.seed, scale.name),
    )


def resolve(
    dataset: str,
    model: str,
    seed: int,
    scale: str,
    data_root: str | None,
    out_dir: str | Path,
    threads: int | None,
    checkpoint_dir: str | Path | None = None,
    device: str | None = None,
) -> RunConfig:
    """Resolve notebook parameters against params.yaml (unknown names fail with the valid ones listed).

    The checkpoint folder defaults to ``checkpoints/<dataset>/<model>/seed<k>/<scale>/``; the device to
    :func:`repro.training.device.resolve_device` of ``device``.
    """
    params = load_params()
    scale_settings = scale_preset(scale, params)
    return RunConfig(
        dataset=dataset,
        variant=model_variant(model, params),
        seed=int(seed),
        scale=scale_settings,
        dataset_settings=dataset_training(dataset, params),
        data_root=data_root or params.get("data_root"),
        out_dir=Path(out_dir),
        threads=set_threads(threads),
        checkpoint_dir=Path(checkpoint_dir or CHECKPOINT_DIR / dataset / model / f"seed{seed}" / scale_settings.name),
        device=normalise_device(resolve_device(device)),
    )


def load_data(config: RunConfig) -> PreparedData:
    """The prepared dataset (DVC's prepare stage output), preparing it first when it is missing."""
    folder = config.data_folder
    if not (folder / "meta.json").exists():
        prepare_dataset(config.dataset, config.scale, folder, config.data_root)
    return load_prepared(folder, config.scale.max_train_images, config.scale.max_eval_images)


def identity(config: RunConfig) -> RunIdentity:
    """The run's identity (call after :func:`load_data`, which may prepare the data first)."""
    return identify(config, config.data_folder)


def build(config: RunConfig, data: PreparedData) -> tuple[torch.nn.Module, torch.Generator]:
    """Seed everything, then create the model (so its initialisation depends on the seed alone)."""
    generator = seed_everything(config.seed)
    model = create_variant(
        config.variant.arch,
        config.variant.options,
        width_mult=config.scale.width_mult,
        in_channels=data.in_channels,
        num_classes=data.num_classes,
    )
    return model, generator


def input_size(config: RunConfig, data: PreparedData) -> int | tuple[int, ...]:
    """What the network sees in training: the scale's image side, a patch side (large images) or the volume."""
    if data.volumetric:
        return tuple(data.train.images.shape[2:])
    return config.scale.patch_size if data.large_images else config.scale.image_size


def model_summary(model: torch.nn.Module, data: PreparedData, input_size: int | tuple[int, ...]) -> dict[str, float]:
    """Parameters and FLOPs (2 x MACs, as the papers count) for one image (or volume) of the training input size."""
    return {
        "params": count_parameters(model),
        "flops": count_flops(model, input_size, data.in_channels),
        "input_size": input_size,
    }


def train_epochs(config: RunConfig, data: PreparedData) -> int:
    """The run's epochs: enough for the dataset's length at the scale (``training.<dataset>.train_steps``), else the
    scale's ``epochs``."""
    steps = config.dataset_settings.steps(config.scale.name)
    if steps is None:
        return config.scale.epochs
    per_image = config.scale.patches_per_image if data.large_images else 1
    return epochs_for_steps(steps, len(data.train) * per_image, config.dataset_settings.batch(config.scale))


def steps_per_epoch(config: RunConfig, data: PreparedData) -> int:
    """Optimizer steps in one epoch of the run: its (patched) training samples in full batches."""
    samples = len(data.train) * (config.scale.patches_per_image if data.large_images else 1)
    return samples // min(config.dataset_settings.batch(config.scale), samples)


def train_settings(config: RunConfig, data: PreparedData) -> TrainSettings:
    scale = config.scale
    return TrainSettings(
        epochs=train_epochs(config, data),
        batch_size=config.dataset_settings.batch(scale),
        lr=scale.lr,
        weight_decay=scale.weight_decay,
        patch_size=scale.patch_size,
        patches_per_image=scale.patches_per_image,
        l2_kernels=config.variant.l2_kernels,
        eval_every=config.dataset_settings.eval_every,
    )


def make_trainer(
    config: RunConfig, model: torch.nn.Module, data: PreparedData, generator: torch.Generator, run: RunIdentity
) -> Trainer:
    return Trainer(
        model, data, train_settings(config, data), config.seed, generator, config.checkpoint_dir, config.device, run
    )


def print_progress(config: RunConfig, settings: TrainSettings, dataset: str | None = None) -> Callable[[dict], None]:
    """An ``on_epoch`` callback printing one line per epoch: training and validation seconds, and the time left
    (papermill's ``--log-output`` streams it to the terminal and the run's log). A first line is printed at once,
    so a run shows it has started before its first epoch ends. ``dataset`` names the run's data where it is not
    ``config``'s alone (a universal run's domains)."""
    name = f"{dataset or config.dataset}/{config.variant.name}/seed{config.seed} [{config.scale.name}]"
    every = f"every {settings.eval_every} epochs and after the last" if settings.eval_every > 1 else "after every epoch"
    print(f"{name}: training {settings.epochs} epochs, validating {every}", file=sys.stdout, flush=True)
    started, first_epoch = time.perf_counter(), None

    def on_epoch(row: dict) -> None:
        nonlocal first_epoch
        first_epoch = first_epoch or row["epoch"]  # a resumed run starts later
        done = row["epoch"] - first_epoch + 1
        left = (time.perf_counter() - started) / done * (settings.epochs - row["epoch"])
        validation = "not validated" if row["val_dice"] != row["val_dice"] else f"val Dice {row['val_dice']:.4f}"
        print(
            f"{name} epoch {row['epoch']}/{settings.epochs}: loss {row['train_loss']:.4f}, {validation} "
            f"(train {row['seconds']:.0f} s, eval {row['eval_seconds']:.0f} s; {_duration(left)} left)",
            file=sys.stdout,
            flush=True,
        )

    return on_epoch


def _duration(seconds: float) -> str:
    """``45 s``, ``12 min`` or ``2 h 05 min``."""
    minutes = round(seconds / 60)
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def evaluate_pruned(trainer: Trainer, data: PreparedData, input_size: int | tuple[int, ...]) -> dict[str, dict]:
    """Test metrics and FLOPs of a deep-supervision model at each of its eval modes (UNet++: the average of
    the heads, and the sub-networks pruned to L1..L4); the model's own mode is restored afterwards."""
    model = trainer.model
    chosen = model.ds_mode
    results = {}
    for mode in model.ds_modes:
        model.ds_mode = mode
        results[mode] = {
            **trainer.evaluate(data.test).summary,
            "flops": count_flops(model, input_size, data.in_channels),
        }
    model.ds_mode = chosen
    return results


def paper_metrics(config: RunConfig, trainer: Trainer, split: Split) -> dict[str, float]:
    """The test metrics in the paper's own definition that the variant asks for (``paper_metric``); none otherwise.

    ``keras_mean_iou``: the UNet++ paper's IoU (the official Keras ``mean_iou``: two-class mIoU averaged over the
    thresholds 0.5-0.95, over the whole split as one batch), and beside it the two-class mIoU at 0.5 on the same
    pixels (``keras_miou_at_05``). Binary tasks only: the metric scores sigmoid probabilities.
    """
    if config.variant.paper_metric is None:
        return {}
    if trainer.data.num_classes != 2:
        raise ValueError(f"{config.variant.name}: keras_mean_iou scores binary tasks; {config.dataset} is not one")
    images = split.images.to(trainer.device).contiguous(memory_format=trainer.memory_format)
    logits = predict_logits(trainer.model, images, trainer.settings.batch_size, trainer.tile)
    probabilities = torch.sigmoid(logits[:, 0]).cpu()
    masks = split.masks.cpu()
    if split.valid is not None:  # pixels outside the region of interest count as background in both
        inside = split.valid.cpu()
        probabilities, masks = torch.where(inside, probabilities, 0.0), torch.where(inside, masks, 0)
    return {
        "keras_mean_iou": keras_mean_iou(probabilities, masks),
        "keras_miou_at_05": two_class_miou(probabilities, masks),
    }


def describe_resumptions(trainer: Trainer) -> str:
    """One line for the executed notebook: trained in one go, or resumed from its checkpoint after which epochs
    (a resumed run ends where an uninterrupted one would: the checkpoint holds every state)."""
    if not trainer.resumed_after:
        return f"trained in one go, epochs 1-{trainer.settings.epochs}"
    epochs = ", ".join(str(epoch) for epoch in trainer.resumed_after)
    times = "once" if len(trainer.resumed_after) == 1 else f"{len(trainer.resumed_after)} times"
    return (
        f"resumed {times} from its checkpoint ({trainer.checkpoint}), after epoch {epochs} of "
        f"{trainer.settings.epochs}; the checkpoint holds every state, so the result is an uninterrupted run's"
    )


# --- universal runs: one network, several domains ----------------------------------------------------------------


def resolve_domains(
    datasets: str,
    model: str,
    seed: int,
    scale: str,
    data_root: str | None,
    out_dir: str,
    threads: int | None,
    checkpoint_dir: str | Path | None = None,
    device: str | None = None,
) -> list[RunConfig]:
    """One :class:`RunConfig` per domain of a universal run (see :func:`resolve`).

    Args:
        datasets: the domains joined by :data:`DOMAIN_SEPARATOR`, at least two, each a registered dataset.
        out_dir: each domain's output folder, with ``{dataset}`` where its name goes
            (``results/cpu/runs/{dataset}/u2net3d_universal/seed0``).
        checkpoint_dir: the run's one checkpoint folder; by default ``checkpoints/<datasets>/<model>/seed<k>/<scale>/``.
    """
    names = datasets.split(DOMAIN_SEPARATOR)
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(
            f"a universal run needs two or more different datasets joined by '{DOMAIN_SEPARATOR}'; got {datasets!r}"
        )
    if "{dataset}" not in str(out_dir):
        raise ValueError(f"out_dir of a universal run needs '{{dataset}}' for each domain's folder; got {out_dir!r}")
    checkpoint_dir = checkpoint_dir or CHECKPOINT_DIR / datasets / model / f"seed{seed}" / scale
    return [
        resolve(name, model, seed, scale, data_root, str(out_dir).format(dataset=name), threads, checkpoint_dir, device)
        for name in names
    ]


def build_universal(configs: list[RunConfig], datas: list[PreparedData]) -> tuple[torch.nn.Module, torch.Generator]:
    """Seed everything, then create the variant with one domain per dataset (each with its channels and classes)."""
    generator = seed_everything(configs[0].seed)
    first = configs[0]
    domains = {
        "domains": len(datas),
        "in_channels_per_domain": [data.in_channels for data in datas],
        "num_classes_per_domain": [output_channels(data.num_classes) for data in datas],
    }
    model = create_variant(
        first.variant.arch,
        {**first.variant.options, **domains},
        width_mult=first.scale.width_mult,
        in_channels=datas[0].in_channels,
        num_classes=datas[0].num_classes,
    )
    return model, generator


def universal_settings(configs: list[RunConfig], datas: list[PreparedData]) -> tuple[TrainSettings, list[int]]:
    """The universal run's settings and each domain's optimizer steps over the run.

    Each domain gets the steps its own one-domain run gets (its length at the scale, in its batches), so the
    universal model costs what the independent models cost together. The run's epochs are the longest domain's
    (every epoch then holds a step) and it validates as often as the domain that validates least often.
    """
    per_domain = [train_settings(config, data) for config, data in zip(configs, datas, strict=True)]
    batches = {config.dataset: settings.batch_size for config, settings in zip(configs, per_domain, strict=True)}
    if len(set(batches.values())) > 1:  # one Trainer cuts every domain's batches at one size
        raise ValueError(
            f"the domains of a universal run must share a batch size (training.<dataset>.batch_size); got {batches}"
        )
    steps = [
        settings.epochs * steps_per_epoch(config, data)
        for settings, config, data in zip(per_domain, configs, datas, strict=True)
    ]
    settings = per_domain[0]
    settings.epochs = max(s.epochs for s in per_domain)
    settings.eval_every = max(s.eval_every for s in per_domain)
    return settings, steps


def identify_universal(configs: list[RunConfig], repo_root: Path | str = REPO_ROOT) -> RunIdentity:
    """The identity of a universal run: each domain's definition, settings and prepared data, keyed by dataset."""
    repo_root = Path(repo_root)
    params = load_params(repo_root / PARAMS_FILE)
    first, scale = configs[0], configs[0].scale
    datasets = DOMAIN_SEPARATOR.join(config.dataset for config in configs)
    item = {"model": first.variant.name, "seed": first.seed}
    domains = {"universal": {"domains": [config.dataset for config in configs]}}
    stages = [(UNIVERSAL_STAGE, {"item": item, "scale": scale.name, "study": domains})]
    stages += [prepare_stage(config.dataset, scale.name, params) for config in configs]
    return RunIdentity(
        dataset=datasets,
        dataset_definition={c.dataset: dataset_definition(c.dataset, params) for c in configs},
        model=first.variant.name,
        arch=first.variant.arch,
        options=first.options,
        seed=first.seed,
        scale=scale.name,
        scale_settings={k: v for k, v in vars(scale).items() if k != "name"},
        dataset_settings={c.dataset: c.dataset_settings.settings() for c in configs},
        data_files={f"{c.dataset}/{name}": md5 for c in configs for name, md5 in data_files(c.data_folder).items()},
        code_files=code_files(repo_root, TRAIN_STAGE),
        data_root=str(resolve_data_root(first.data_root)),
        git_commit=stages_commit(repo_root, stages),
    )


def make_universal_trainer(
    configs: list[RunConfig],
    model: torch.nn.Module,
    datas: list[PreparedData],
    generator: torch.Generator,
    run: RunIdentity,
) -> Trainer:
    """One Trainer for every domain of the universal run (batches of each domain in turn)."""
    settings, steps = universal_settings(configs, datas)
    first = configs[0]
    return Trainer(
        model,
        datas[0],
        settings,
        first.seed,
        generator,
        first.checkpoint_dir,
        first.device,
        run,
        domains=datas[1:],
        domain_steps=steps,
    )


def domain_parameters(model: U2Net3D) -> dict[str, Any]:
    """A universal network's parameters: ``shared`` by every domain, each domain's own (``per_domain``), and for the
    paper's comparison the parameters of one standard-convolution network per domain of the same depth and widths
    (``independent_standard``: the official code's independent models)."""
    split = parameter_split(model)
    independent = compare_to_independent(model)
    return {
        "shared": split.shared,
        "per_domain": list(split.per_domain),
        "independent_standard": list(independent.independent),
    }


def domain_summary(trainer: Trainer, config: RunConfig, domain: int) -> dict[str, float]:
    """:func:`model_summary` of a universal run's network at one domain's input (its input block, its head), with
    its :func:`domain_parameters`."""
    data = trainer.domains[domain]
    trainer.model.domain = domain
    return model_summary(trainer.model, data, input_size(config, data)) | {
        "params_split": domain_parameters(trainer.model)
    }
