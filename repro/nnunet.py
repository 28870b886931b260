"""nnU-Net v2 on the study's MSD Hippocampus split: the self-configuring reference the field measures itself against.

Source: Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image segmentation",
Nature Methods 18, 203-211 (2021); the official code, MIC-DKFZ/nnUNet, as the PyPI package ``nnunetv2`` 2.8.1. Every
decision that nnU-Net makes for itself is left to it: the dataset fingerprint, the plan (target spacing, patch and
batch size, network topology), the preprocessing, the training recipe (SGD with Nesterov momentum and poly learning
rate, Dice + cross-entropy with deep supervision, its data augmentation, foreground oversampling) and its inference
(sliding window with Gaussian weighting and mirroring). This module only feeds it the study's data and scores it
with the study's metrics.

The pipeline (stage ``nnunet@<seed>`` of ``dvc.yaml``, ``notebooks/nnunet.ipynb``): :func:`export_raw` writes the
study's split in nnU-Net's raw format; :func:`plan_and_preprocess` runs nnU-Net's fingerprint extraction, its
default planner and its preprocessing for one configuration; :func:`train` trains fold 0; :func:`predict` segments
the study's validation and test cases with the final checkpoint; :func:`score` scores them with
``repro.training.metrics``, as the study scores its own networks; :func:`write_outputs` writes ``metrics.json``,
``per_image.csv`` and ``history.csv`` in the study's run format.

Deliberate deviations from nnU-Net's default (``nnUNetv2_plan_and_preprocess``, ``nnUNetv2_train`` on folds 0-4,
``nnUNetv2_find_best_configuration``, ``nnUNetv2_predict``):

- Length: nnU-Net trains 1000 epochs of 250 iterations. Here the scale's trainer (``nnunet.scales`` in
  params.yaml) is one of nnU-Net's own fixed-epoch trainers, or :class:`nnUNetTrainer_Repro` (nnU-Net's trainer
  with epochs and iterations per epoch set in params.yaml), for runs short enough for a CPU or CI.
- Folds: nnU-Net cross-validates five folds it draws itself and ensembles them. Here ``splits_final.json`` holds
  one fold, whose training and validation cases are exactly the study's, and only that fold is trained: no
  cross-validation, no ensemble, no choice among configurations (one is named in params.yaml), no postprocessing.
  The test cases are the study's, unseen by planning (the fingerprint is taken on the training and validation
  cases, as nnU-Net takes it on its imagesTr) and by training.
- Seed: nnU-Net does not seed its runs. Here Python, NumPy and torch are seeded before training. With
  ``augmentation_workers: 0`` (params.yaml) nnU-Net's data augmentation runs in the training process and draws
  from the seeded global generators; with workers, each worker process draws from its own generator and the
  batches are not reproducible bit for bit.
- Inference: the final checkpoint (nnU-Net's default), one fold.
- Smoke scale: the first ``max_train_cases`` / ``max_eval_cases`` cases of each split (as the study's own
  smoke runs cut theirs), so CI can plan, train and predict in under a minute. nnU-Net plans on what it is given:
  its batch size is capped at 5% of the training voxels, so a smoke plan has a smaller batch than the full one.

nnU-Net reads its folders from the environment variables ``nnUNet_raw``, ``nnUNet_preprocessed`` and
``nnUNet_results``; :func:`nnunet_environment` sets them for one call at a time, to folders of the run's work
folder (``checkpoints/nnunet/<scale>/seed<k>/``, git-ignored), and restores them afterwards.

nnU-Net finds trainer classes by importing every module of its trainer package until one defines the name; one of
them imports timm, which imports torchvision, which does not load beside the project's torch build. So this module
never lets nnU-Net look a trainer up by name: it imports nnU-Net's fixed-epoch trainers from their own module,
and builds the network for inference from the plans itself.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.plan_and_preprocess_api import (
    extract_fingerprint_dataset,
    plan_experiment_dataset,
    preprocess_dataset,
)
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.training_length import nnUNetTrainer_Xepochs
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from repro.analysis.run_results import load_runs
from repro.complexity import count_flops, count_parameters
from repro.config import load_params
from repro.data.readers import read_volume_mask
from repro.data.registry import REPO_ROOT, Sample, get_dataset
from repro.data.splits import SPLIT_NAMES, load_split
from repro.training.device import describe_device, seed_everything
from repro.training.identity import code_files, stages_commit
from repro.training.metrics import confusion_counts, hausdorff95, per_image_table, summarize
from repro.training.record import versions, write_record

DATASET = "msd-task04-hippocampus"
STAGE = "nnunet"  # its stage in dvc.yaml
DATASET_ID = 4
DATASET_NAME = "Dataset004_Hippocampus"
# nnU-Net's raw format names an image channel by a 4-digit suffix; Hippocampus has one channel, the MRI.
CHANNEL_SUFFIX = "_0000"
FILE_ENDING = ".nii.gz"
PLANS = "nnUNetPlans"
FOLD = 0
WORK_DIR = REPO_ROOT / "checkpoints" / "nnunet"
ENV_FOLDERS = {"nnUNet_raw": "raw", "nnUNet_preprocessed": "preprocessed", "nnUNet_results": "results"}
# nnU-Net's defaults, against which a run's schedule is stated (nnUNetTrainer.__init__).
DEFAULT_SCHEDULE = {"epochs": 1000, "iterations_per_epoch": 250, "val_iterations_per_epoch": 50, "folds": 5}
CHECKPOINT = "checkpoint_final.pth"


@dataclass(frozen=True)
class NnunetSettings:
    """The ``nnunet`` section of params.yaml at one scale.

    Args:
        scale: the scale preset's name.
        configuration: nnU-Net configuration to plan, preprocess and train (``3d_fullres``, ``2d``).
        trainer: one of nnU-Net's trainers of fixed length (``nnUNetTrainer_<N>epochs``, ``nnUNetTrainer_1epoch``,
            ``nnUNetTrainer`` = 1000 epochs), or ``nnUNetTrainer_Repro`` with the three lengths below.
        epochs: ``nnUNetTrainer_Repro`` only: epochs.
        iterations_per_epoch: ``nnUNetTrainer_Repro`` only: training iterations per epoch (nnU-Net: 250).
        val_iterations_per_epoch: ``nnUNetTrainer_Repro`` only: validation iterations per epoch (nnU-Net: 50).
        augmentation_workers: nnU-Net's data augmentation processes (``nnUNet_n_proc_DA``); 0 runs it in the
            training process, reproducible from the seed.
        processes: processes of nnU-Net's fingerprint extraction and preprocessing.
        max_train_cases: the first this-many training cases of the study's split; None = all.
        max_eval_cases: the first this-many validation and test cases; None = all.
    """

    scale: str
    configuration: str
    trainer: str
    epochs: int | None
    iterations_per_epoch: int | None
    val_iterations_per_epoch: int | None
    augmentation_workers: int
    processes: int
    max_train_cases: int | None
    max_eval_cases: int | None


def load_settings(scale: str, params: Mapping[str, Any] | None = None) -> NnunetSettings:
    """The ``nnunet`` section of params.yaml at ``scale``; an unknown scale or trainer fails with the valid names."""
    params = load_params() if params is None else params
    section = params["nnunet"]
    scales = section["scales"]
    if scale not in scales:
        raise KeyError(f"nnunet.scales has no entry for scale '{scale}'; it has {sorted(scales)}")
    entry = scales[scale]
    settings = NnunetSettings(
        scale=scale,
        configuration=section["configuration"],
        trainer=entry["trainer"],
        epochs=entry.get("epochs"),
        iterations_per_epoch=entry.get("iterations_per_epoch"),
        val_iterations_per_epoch=entry.get("val_iterations_per_epoch"),
        augmentation_workers=int(section["augmentation_workers"]),
        processes=int(section["processes"]),
        max_train_cases=entry.get("max_train_cases"),
        max_eval_cases=entry.get("max_eval_cases"),
    )
    trainer_class(settings)  # fails now, not after preprocessing, on a trainer name that does not exist
    return settings


class nnUNetTrainer_Repro(nnUNetTrainer):  # noqa: N801 - nnU-Net's naming of trainer classes
    """nnU-Net's default trainer with a schedule of the study's choosing (nnU-Net's fixed-epoch variants keep 250
    iterations per epoch, more than a CI run can afford on a CPU). Everything but the three lengths is nnU-Net's.

    nnU-Net records a trainer by its class name and constructor arguments, which must stay its own; so the lengths
    are class attributes, and :func:`trainer_class` makes the subclass that carries a run's.
    """

    epochs: ClassVar[int] = DEFAULT_SCHEDULE["epochs"]
    iterations_per_epoch: ClassVar[int] = DEFAULT_SCHEDULE["iterations_per_epoch"]
    val_iterations_per_epoch: ClassVar[int] = DEFAULT_SCHEDULE["val_iterations_per_epoch"]

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cpu"),  # noqa: B008 - nnU-Net's signature, which it inspects
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.epochs
        self.num_iterations_per_epoch = self.iterations_per_epoch
        self.num_val_iterations_per_epoch = self.val_iterations_per_epoch


def trainer_class(settings: NnunetSettings) -> type[nnUNetTrainer]:
    """The trainer class of ``settings``: nnU-Net's default or one of its fixed-epoch trainers, else
    :class:`nnUNetTrainer_Repro` with the settings' lengths."""
    lengths = (settings.epochs, settings.iterations_per_epoch, settings.val_iterations_per_epoch)
    if settings.trainer == nnUNetTrainer_Repro.__name__:
        if None in lengths:
            raise ValueError(
                f"{settings.trainer} needs epochs, iterations_per_epoch and val_iterations_per_epoch "
                f"(nnunet.scales.{settings.scale} in params.yaml)"
            )
        epochs, iterations, val_iterations = (int(n) for n in lengths)
        # Same class name, so nnU-Net's folders and checkpoints name the trainer as params.yaml does.
        return type(
            nnUNetTrainer_Repro.__name__,
            (nnUNetTrainer_Repro,),
            {"epochs": epochs, "iterations_per_epoch": iterations, "val_iterations_per_epoch": val_iterations},
        )
    if any(n is not None for n in lengths):
        raise ValueError(f"nnunet.scales.{settings.scale}: {settings.trainer} has its own lengths; set none")
    found = getattr(nnUNetTrainer_Xepochs, settings.trainer, None)
    if not (isinstance(found, type) and issubclass(found, nnUNetTrainer)):
        names = sorted(n for n in dir(nnUNetTrainer_Xepochs) if n.startswith("nnUNetTrainer"))
        raise KeyError(f"unknown nnU-Net trainer '{settings.trainer}'; use one of {names} or nnUNetTrainer_Repro")
    return found


def study_split(
    max_train_cases: int | None = None, max_eval_cases: int | None = None, data_root: str | Path | None = None
) -> tuple[dict[str, list[str]], dict[str, Sample]]:
    """The study's committed split of Hippocampus (``data/splits/``, checked against the files on disk), cut to the
    first ``max_*`` ids of each split as the study's smoke runs cut theirs, and every pair by id."""
    spec = get_dataset(DATASET)
    samples = spec.samples(data_root)
    split = load_split(spec, samples)
    limits = {"train": max_train_cases, "val": max_eval_cases, "test": max_eval_cases}
    return {name: split[name][: limits[name]] for name in SPLIT_NAMES}, {s.id: s for s in samples}


def export_raw(work_dir: Path | str, split: Mapping[str, Sequence[str]], samples: Mapping[str, Sample]) -> Path:
    """Write the split in nnU-Net's raw format, and a ``splits_final.json`` whose one fold is the study's split.

    ``<work_dir>/raw/Dataset004_Hippocampus/``: ``imagesTr`` and ``labelsTr`` hold the training and validation
    cases (nnU-Net's fold 0 trains on the first and validates on the second), ``imagesTs`` and ``labelsTs`` the
    test cases; files are copied byte for byte, images named ``<id>_0000.nii.gz``. ``dataset.json`` declares the
    MRI channel and the labels background 0, anterior 1, posterior 2 (the registry's classes).
    ``<work_dir>/preprocessed/Dataset004_Hippocampus/splits_final.json`` holds ``[{"train": ..., "val": ...}]``.
    A previous export in ``work_dir`` is replaced.

    Returns:
        The raw dataset folder.
    """
    work_dir = Path(work_dir)
    spec = get_dataset(DATASET)
    dataset = work_dir / "raw" / DATASET_NAME
    if dataset.exists():
        shutil.rmtree(dataset)
    for subset, names in (("Tr", ("train", "val")), ("Ts", ("test",))):
        images, labels = dataset / f"images{subset}", dataset / f"labels{subset}"
        images.mkdir(parents=True)
        labels.mkdir()
        for case in (i for name in names for i in split[name]):
            shutil.copyfile(samples[case].image, images / f"{case}{CHANNEL_SUFFIX}{FILE_ENDING}")
            shutil.copyfile(samples[case].mask, labels / f"{case}{FILE_ENDING}")
    dataset_json = {
        "channel_names": {"0": "MRI"},
        "labels": {name: index for index, name in enumerate(spec.class_names)},
        "numTraining": len(split["train"]) + len(split["val"]),
        "file_ending": FILE_ENDING,
        "name": DATASET_NAME,
        "description": f"the study's split of {spec.title} (data/splits/{DATASET}.json)",
    }
    (dataset / "dataset.json").write_text(json.dumps(dataset_json, indent=1) + "\n")
    preprocessed = work_dir / "preprocessed" / DATASET_NAME
    preprocessed.mkdir(parents=True, exist_ok=True)
    folds = [{"train": list(split["train"]), "val": list(split["val"])}]
    (preprocessed / "splits_final.json").write_text(json.dumps(folds, indent=1) + "\n")
    return dataset


@contextmanager
def nnunet_environment(work_dir: Path | str, workers: int) -> Iterator[None]:
    """Point nnU-Net at ``work_dir``'s folders for the duration of a call, with ``workers`` as its
    ``nnUNet_n_proc_DA``: its data augmentation processes in training (0: none, in the training process), the
    torch threads its planner builds candidate networks with (at least 1)."""
    work_dir = Path(work_dir).resolve()
    values = {name: str(work_dir / folder) for name, folder in ENV_FOLDERS.items()}
    values["nnUNet_n_proc_DA"] = str(workers)
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def plan_and_preprocess(work_dir: Path | str, settings: NnunetSettings) -> dict:
    """nnU-Net's fingerprint extraction, its default planner and its preprocessing of ``settings.configuration``
    (``nnUNetv2_plan_and_preprocess -c <configuration>`` with its defaults); returns the plans."""
    with nnunet_environment(work_dir, settings.processes):
        extract_fingerprint_dataset(
            DATASET_ID, DatasetFingerprintExtractor, settings.processes, clean=True, show_progress_bar=False
        )
        plan_experiment_dataset(DATASET_ID, ExperimentPlanner)
        preprocess_dataset(DATASET_ID, PLANS, [settings.configuration], [settings.processes], show_progress_bar=False)
    return json.loads(plans_file(work_dir).read_text())


def plans_file(work_dir: Path | str) -> Path:
    return Path(work_dir) / "preprocessed" / DATASET_NAME / f"{PLANS}.json"


def plan_summary(plans: Mapping[str, Any], configuration: str) -> dict[str, Any]:
    """What nnU-Net planned for ``configuration``: spacing, patch and batch size, network topology, normalisation."""
    config = plans["configurations"][configuration]
    arch = config["architecture"]["arch_kwargs"]
    return {
        "configuration": configuration,
        "spacing": config["spacing"],
        "median_image_size": config["median_image_size_in_voxels"],
        "patch_size": config["patch_size"],
        "batch_size": config["batch_size"],
        "network": config["architecture"]["network_class_name"].rsplit(".", 1)[-1],
        "n_stages": arch["n_stages"],
        "features_per_stage": arch["features_per_stage"],
        "strides": arch["strides"],
        "kernel_sizes": arch["kernel_sizes"],
        "n_conv_per_stage": arch["n_conv_per_stage"],
        "normalization": config["normalization_schemes"],
        "transpose_forward": plans["transpose_forward"],
    }


def train(
    work_dir: Path | str, settings: NnunetSettings, seed: int, device: torch.device | str = "cpu"
) -> tuple[nnUNetTrainer, float]:
    """Train fold 0 (the study's split) from scratch with the settings' trainer; returns the trainer and the
    wall-clock seconds of its training (nnU-Net's ``run_training``, data loading and validation included).

    Python, NumPy and torch are seeded first, so the network's initialisation and, with no augmentation workers,
    its batches follow from ``seed``. A previous training in ``work_dir`` is replaced.
    """
    work_dir = Path(work_dir)
    with nnunet_environment(work_dir, settings.augmentation_workers):
        plans = json.loads(plans_file(work_dir).read_text())
        # The trainer pops this flag; false: a new training, whose logger starts empty.
        plans["continue_training"] = False
        dataset_json = json.loads((work_dir / "raw" / DATASET_NAME / "dataset.json").read_text())
        cls = trainer_class(settings)
        output = model_folder(work_dir, cls.__name__, settings.configuration)
        if output.exists():
            shutil.rmtree(output)
        seed_everything(seed)
        trainer = cls(
            plans=plans,
            configuration=settings.configuration,
            fold=FOLD,
            dataset_json=dataset_json,
            device=torch.device(device),
        )
        start = time.perf_counter()
        # nnU-Net's logger calls seaborn.set(font_scale=2.5) for its progress.png, which would hold for every figure
        # the process draws afterwards (the notebook's learning curves): its style stays inside the training.
        with plt.rc_context():
            trainer.run_training()
        return trainer, time.perf_counter() - start


def model_folder(work_dir: Path | str, trainer_name: str, configuration: str) -> Path:
    """nnU-Net's results folder of a trained model (``<trainer>__<plans>__<configuration>``)."""
    return Path(work_dir) / "results" / DATASET_NAME / f"{trainer_name}__{PLANS}__{configuration}"


def history(trainer: nnUNetTrainer, class_names: Sequence[str]) -> list[dict]:
    """One row per epoch (from 1) from nnU-Net's log: training and validation loss, its pseudo Dice and the moving
    average by which it keeps ``checkpoint_best``, per class, the learning rate and the epoch's seconds.

    ``val_dice`` is nnU-Net's pseudo Dice: Dice pooled over the validation patches of the epoch (random patches,
    not whole volumes), mean over the foreground classes; the study's networks report whole-volume Dice instead.
    """
    log = trainer.logger.local_logger.my_fantastic_logging
    rows = []
    for epoch, (start, end) in enumerate(zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"], strict=True)):
        row = {
            "epoch": epoch + 1,
            "train_loss": float(log["train_losses"][epoch]),
            "val_loss": float(log["val_losses"][epoch]),
            "val_dice": float(log["mean_fg_dice"][epoch]),
            "val_dice_ema": float(log["ema_fg_dice"][epoch]),
        }
        per_class = log["dice_per_class_or_region"][epoch]
        row |= {f"val_dice_{name}": float(v) for name, v in zip(class_names[1:], per_class, strict=True)}
        rows.append(row | {"lr": float(log["lrs"][epoch]), "seconds": end - start})
    return rows


def inference_network(
    work_dir: Path | str, trainer_name: str, configuration: str, device: torch.device | str = "cpu"
) -> nnUNetPredictor:
    """nnU-Net's predictor with its default inference settings (sliding window, step 0.5, Gaussian weighting,
    mirroring along the axes training allowed) and fold 0's final checkpoint, on ``device``.

    The network is built from the plans by nnU-Net's default trainer (the study's trainers change the schedule,
    never the network), so nnU-Net does not look the trainer up by name (see the module docstring).
    """
    folder = model_folder(work_dir, trainer_name, configuration)
    plans_manager = PlansManager(str(folder / "plans.json"))
    dataset_json = json.loads((folder / "dataset.json").read_text())
    configuration_manager = plans_manager.get_configuration(configuration)
    checkpoint = torch.load(folder / f"fold_{FOLD}" / CHECKPOINT, map_location="cpu", weights_only=False)
    network = nnUNetTrainer.build_network_architecture(
        plans_manager,
        configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False,
    )
    network.load_state_dict(checkpoint["network_weights"])
    predictor = nnUNetPredictor(device=torch.device(device), verbose=False, allow_tqdm=False)
    predictor.manual_initialization(
        network,
        plans_manager,
        configuration_manager,
        [checkpoint["network_weights"]],
        dataset_json,
        checkpoint["trainer_name"],
        checkpoint["inference_allowed_mirroring_axes"],
    )
    return predictor


def predict(predictor: nnUNetPredictor, images: Sequence[Path], out_dir: Path | str) -> list[Path]:
    """Segment each image (nnU-Net's preprocessing, sliding window and export to the image's own geometry) into
    ``out_dir/<id>.nii.gz``, one at a time in this process; returns the files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [Path(image).name.removesuffix(CHANNEL_SUFFIX + FILE_ENDING) for image in images]
    predictor.predict_from_files_sequential(
        [[str(image)] for image in images], [str(out_dir / name) for name in names], save_probabilities=False
    )
    return [out_dir / f"{name}{FILE_ENDING}" for name in names]


def score(predictions: Sequence[Path], labels: Sequence[Path], ids: Sequence[str], class_names: Sequence[str]):
    """Score predicted label volumes against the ground truth with the study's metrics
    (``repro.training.metrics``), case by case (the volumes differ in shape): Dice, IoU and the 95th-percentile
    Hausdorff distance in voxels.

    Returns:
        ``(summary, per_image)``: the dataset summary (``repro.training.metrics.summarize`` plus ``hd95``,
        ``hd95_cases``, as the study's volume runs report) and one row per case.
    """
    counts, distances = [], []
    for prediction, label in zip(predictions, labels, strict=True):
        pred = torch.from_numpy(read_volume_mask(prediction))[None]
        target = torch.from_numpy(read_volume_mask(label))[None]
        if pred.shape != target.shape:
            raise ValueError(f"{prediction}: shape {tuple(pred.shape[1:])} differs from {label}'s")
        counts.append(confusion_counts(pred, target, len(class_names)))
        distances += hausdorff95(pred, target, class_names)
    counts = torch.cat(counts)
    per_image = [row | d for row, d in zip(per_image_table(counts, ids, class_names), distances, strict=True)]
    hd95 = np.array([d["hd95"] for d in distances])
    summary = summarize(counts, class_names)
    summary |= {"hd95": float(np.nanmean(hd95)) if np.isfinite(hd95).any() else float("nan")}
    summary |= {"hd95_cases": int(np.isfinite(hd95).sum())}
    return summary, per_image


def evaluate(
    predictor: nnUNetPredictor, work_dir: Path | str, split: Mapping[str, Sequence[str]], subset: str
) -> tuple[dict, list[dict]]:
    """Predict and score the ``val`` or ``test`` cases of ``split`` from the raw export in ``work_dir``."""
    raw = Path(work_dir) / "raw" / DATASET_NAME
    folder = "Ts" if subset == "test" else "Tr"
    ids = list(split[subset])
    images = [raw / f"images{folder}" / f"{case}{CHANNEL_SUFFIX}{FILE_ENDING}" for case in ids]
    predictions = predict(predictor, images, Path(work_dir) / "predictions" / subset)
    labels = [raw / f"labels{folder}" / f"{case}{FILE_ENDING}" for case in ids]
    return score(predictions, labels, ids, get_dataset(DATASET).class_names)


def network_summary(predictor: nnUNetPredictor, patch_size: Sequence[int]) -> dict[str, Any]:
    """Parameters and FLOPs (2 x multiply-accumulates) of the inference network on one patch."""
    in_channels = determine_num_input_channels(
        predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json
    )
    return {
        "params": count_parameters(predictor.network),
        "flops": count_flops(predictor.network, tuple(patch_size), in_channels),
        "image_size": list(patch_size),
    }


def run_versions() -> dict[str, str]:
    """The study's versions (``repro.training.record.versions``) plus nnU-Net's and its network library's."""
    packages = ("nnunetv2", "dynamic_network_architectures", "batchgeneratorsv2")
    return versions() | {name: importlib.metadata.version(name) for name in packages}


@dataclass
class NnunetRun:
    """Everything :func:`write_outputs` records of one run."""

    settings: NnunetSettings
    seed: int
    split: Mapping[str, Sequence[str]]
    plans: Mapping[str, Any]
    trainer: nnUNetTrainer
    train_seconds: float
    network: dict[str, Any]
    val: dict
    test: dict
    per_image: list[dict]
    history: list[dict]
    device: torch.device | str


def schedule(trainer: nnUNetTrainer) -> dict[str, Any]:
    """The trainer's schedule, for ``metrics.json``: its lengths, one fold, no ensemble."""
    return {
        "trainer": type(trainer).__name__,
        "epochs": trainer.num_epochs,
        "iterations_per_epoch": trainer.num_iterations_per_epoch,
        "val_iterations_per_epoch": trainer.num_val_iterations_per_epoch,
        "folds": 1,
        "ensemble": False,
    }


def differences_from_default(trainer: nnUNetTrainer, settings: NnunetSettings) -> list[dict[str, Any]]:
    """One row per setting in which this run differs from nnU-Net's default pipeline, or which nnU-Net leaves open
    (the device, the seed): the setting, nnU-Net's default, this run's value."""
    cases = "all" if settings.max_train_cases is None else f"the first {settings.max_train_cases}"
    rows = [
        ("trainer", "nnUNetTrainer", type(trainer).__name__),
        ("epochs", DEFAULT_SCHEDULE["epochs"], trainer.num_epochs),
        ("iterations per epoch", DEFAULT_SCHEDULE["iterations_per_epoch"], trainer.num_iterations_per_epoch),
        (
            "validation iterations per epoch",
            DEFAULT_SCHEDULE["val_iterations_per_epoch"],
            trainer.num_val_iterations_per_epoch,
        ),
        (
            "folds",
            f"{DEFAULT_SCHEDULE['folds']}, drawn by nnU-Net from all training cases",
            f"1: the study's train / val split ({cases} training cases)",
        ),
        ("configuration", "chosen by cross-validation among 2d, 3d_fullres (and cascade)", settings.configuration),
        ("prediction", f"ensemble of the {DEFAULT_SCHEDULE['folds']} folds (+ postprocessing)", "fold 0 alone"),
        ("device", "cuda", str(trainer.device)),
        ("seed", "none", "Python, NumPy and torch seeded"),
        ("augmentation workers", "12 (nnUNet_n_proc_DA, at most the cores)", settings.augmentation_workers),
    ]
    return [{"setting": name, "nnU-Net default": default, "this run": value} for name, default, value in rows]


def training_curves(rows: Sequence[Mapping[str, float]]) -> Figure:
    """nnU-Net's training curve: training and validation loss, and its pseudo Dice with the moving average it
    keeps its best checkpoint by."""
    epochs = [row["epoch"] for row in rows]
    fig, (loss_ax, dice_ax) = plt.subplots(1, 2, figsize=(9, 3.2))
    loss_ax.plot(epochs, [row["train_loss"] for row in rows], marker=".", label="training")
    loss_ax.plot(epochs, [row["val_loss"] for row in rows], marker=".", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="loss (Dice + CE, deep supervision)", title="loss")
    dice_ax.plot(epochs, [row["val_dice"] for row in rows], marker=".", label="pseudo Dice")
    dice_ax.plot(epochs, [row["val_dice_ema"] for row in rows], label="moving average")
    dice_ax.set(xlabel="epoch", ylabel="Dice", title="validation pseudo Dice (patches)", ylim=(0, 1))
    for ax in (loss_ax, dice_ax):
        ax.legend(fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def write_outputs(run: NnunetRun, out_dir: Path | str) -> dict:
    """Write ``metrics.json``, ``per_image.csv`` and ``history.csv`` in the study's run format; return the metrics.

    Beside the study's keys: ``nnunet_plan`` (:func:`plan_summary`), ``nnunet_schedule`` (:func:`schedule`) and
    ``nnunet_default`` (nnU-Net's own schedule, for comparison).
    ``best_epoch`` is the last epoch: nnU-Net predicts with its final checkpoint.
    """
    trainer = run.trainer
    # Training patches per second of training (nnU-Net's validation iterations in the time, as its epochs hold them).
    patches = trainer.num_epochs * trainer.num_iterations_per_epoch * trainer.configuration_manager.batch_size
    metrics = {
        "dataset": DATASET,
        "model": "nnunet",
        "arch": f"nnunetv2 {run.settings.configuration}",
        "options": {"trainer": type(trainer).__name__, "plans": PLANS, "fold": FOLD, "checkpoint": CHECKPOINT},
        "seed": run.seed,
        "scale": run.settings.scale,
        "scale_settings": {k: v for k, v in vars(run.settings).items() if k != "scale"},
        "threads": torch.get_num_threads(),
        "device": describe_device(torch.device(run.device)),
        # The stage's own deps (dvc.yaml's nnunet stage), read as a training run's are.
        "code_files": code_files(REPO_ROOT, STAGE),
        "git_commit": stages_commit(REPO_ROOT, [(STAGE, {"item": str(run.seed), "scale": run.settings.scale})]),
        "class_names": list(get_dataset(DATASET).class_names),
        "test": run.test,
        "val": {"dice": run.val["dice"], "iou": run.val["iou"]},
        "best_epoch": trainer.num_epochs,
        "epochs": trainer.num_epochs,
        "optimizer_steps": trainer.num_epochs * trainer.num_iterations_per_epoch,
        "n_images": {name: len(ids) for name, ids in run.split.items()},
        **run.network,
        "train_seconds": round(run.train_seconds, 1),
        "images_per_second": round(patches / run.train_seconds, 2),
        "nnunet_plan": plan_summary(run.plans, run.settings.configuration),
        "nnunet_schedule": schedule(trainer),
        "nnunet_default": DEFAULT_SCHEDULE | {"ensemble": True},
        "versions": run_versions(),
    }
    return write_record(out_dir, metrics, run.per_image, run.history)


def run(
    seed: int,
    scale: str,
    out_dir: Path | str,
    work_dir: Path | str | None = None,
    data_root: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> dict:
    """The whole run, as ``notebooks/nnunet.ipynb`` runs it cell by cell: export, plan and preprocess, train,
    predict, score, write. ``work_dir`` defaults to ``checkpoints/nnunet/<scale>/seed<k>``."""
    settings = load_settings(scale)
    work_dir = Path(work_dir or WORK_DIR / scale / f"seed{seed}")
    split, samples = study_split(settings.max_train_cases, settings.max_eval_cases, data_root)
    export_raw(work_dir, split, samples)
    plans = plan_and_preprocess(work_dir, settings)
    trainer, seconds = train(work_dir, settings, seed, device)
    predictor = inference_network(work_dir, type(trainer).__name__, settings.configuration, device)
    val, _ = evaluate(predictor, work_dir, split, "val")
    test, per_image = evaluate(predictor, work_dir, split, "test")
    network = network_summary(predictor, plans["configurations"][settings.configuration]["patch_size"])
    rows = history(trainer, get_dataset(DATASET).class_names)
    result = NnunetRun(settings, seed, split, plans, trainer, seconds, network, val, test, per_image, rows, device)
    return write_outputs(result, out_dir)


def beside_study_runs(metrics: Mapping[str, Any], runs_dir: Path | str) -> pd.DataFrame:
    """Mean test scores per model over the seeds of every run on Hippocampus under ``runs_dir`` (as
    ``repro.analysis.run_results`` reads them for the aggregate), with this run's ``metrics`` in place of a stored run
    of the same model and seed; only this run's row when ``runs_dir`` holds none."""
    columns = ["dice", "iou", "hd95", "dice_anterior", "dice_posterior", "params"]
    test = metrics["test"]
    row = {key: test[key] for key in ("dice", "iou", "hd95")} | {"params": metrics["params"]}
    row |= {f"dice_{name}": scores["dice"] for name, scores in test["per_class"].items()}
    this = pd.DataFrame([{"model": metrics["model"], "seed": metrics["seed"], **row}])
    try:
        stored = load_runs(runs_dir).per_seed
    except FileNotFoundError:
        stored = pd.DataFrame(columns=["dataset", "model", "seed", *columns])
    stored = stored[stored["dataset"] == DATASET]
    stored = stored[~((stored["model"] == metrics["model"]) & (stored["seed"] == metrics["seed"]))]
    runs = pd.concat([stored[["model", "seed", *columns]], this], ignore_index=True)
    table = runs.groupby("model")[columns].mean().assign(seeds=runs.groupby("model")["seed"].count())
    return table.sort_values("dice", ascending=False)
