"""The Trainer: one recipe for every architecture, with its checkpoints.

The recipe (as in nnU-Net Revisited, the same for all networks so that only the architecture differs):
BCE + soft Dice (binary) or CE + soft Dice (multi-class), each deep-supervision head weighted equally; Adam with
cosine annealing to zero over the epochs; random flips and 90-degree rotations on the fly
(``repro.data.augment``); validation every ``eval_every`` epochs after re-estimating BatchNorm statistics
(``repro.training.inference``); the validated epoch with the best Dice is selected and the test split is evaluated
once, with those weights.

The hot path stays lean for CPU runs: every split is one in-memory tensor (``repro.data.loading``: no DataLoader, no
worker processes), augmentation is batched tensor indexing, and the only host sync per step is the loss value that
the non-finite-loss check needs. On a GPU (``device``, see ``repro.training.device.resolve_device``) the splits are
moved to it once, so the hot path never copies images between host and device.

CPU arithmetic flushes subnormal floats (below 1.2e-38) to zero while a Trainer trains
(``torch.set_flush_denormal``, which holds for the whole process). x86 CPUs compute on subnormals many times
slower than on normal numbers, and training produces them: on DSB2018, whose images are mostly confidently
predicted background, a fraction of the backward pass's gradients fall below that bound as training converges,
and the width-1.0 U-Net's train step from its epoch-28 checkpoint took 2.8 times as long as with flushing (9.6 s
against 3.5 s; UNet++ at its last epoch 1.7 times), so its epochs slowed from 50 s to over 120 s. Values that
small contribute nothing a float32 sum can keep, and TensorFlow (the framework of the UNet++ reference code)
flushes them on the CPU by default too. GPU kernels are unaffected.

Several domains (3D U²-Net's universal model, ``model.domains > 1``): one Trainer, one optimizer and one schedule
train one network on several datasets at once. Each optimizer step takes one batch of one domain, with that
domain's loss; the domains take turns, interleaved evenly (the official code's round robin, generalised to unequal
counts). Each domain gets exactly as many batches in the run as its own single-domain run of the same network
gets (``domain_steps``), so the universal model costs what the independent models cost together. Every validation
scores each domain on its own validation split; the selected epoch is the one with the best mean Dice over the
domains, and the test split of each domain is scored with those weights.

Determinism (``repro.training.device``): on CPU with a fixed thread count, the same seed gives bit-identical results
on one machine. A checkpoint written after every epoch holds every state (model, optimizer, scheduler, every RNG,
best weights, history) and the run's identity (``repro.training.identity``: data, code, variant, full scale preset,
the dataset's training settings, seed), so a killed run resumes to the same result as an uninterrupted one, and a
checkpoint of any other run is refused before training.
"""

from __future__ import annotations

import copy
import pickle
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from repro.data.augment import augment, random_patches
from repro.data.loading import PreparedData, Split
from repro.models.blocks import keras_l2_parameters
from repro.models.contract import SegmentationNetwork
from repro.training.device import normalise_device
from repro.training.identity import RunIdentity, RunMismatchError, check_resumable
from repro.training.inference import predict_logits, reestimate_batchnorm
from repro.training.losses import DeepSupervisionLoss, SegmentationLoss
from repro.training.metrics import confusion_counts, hausdorff95, logits_to_labels, per_image_table, summarize


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read."""


def epochs_for_steps(steps: int, samples_per_epoch: int, batch_size: int) -> int:
    """The epochs that give at least ``steps`` optimizer steps (an epoch drops its last incomplete batch)."""
    per_epoch = max(samples_per_epoch // min(batch_size, samples_per_epoch), 1)
    return max(1, -(-steps // per_epoch))


@dataclass
class TrainSettings:
    """Settings of one training run (from the scale preset).

    Args:
        epochs: training epochs.
        batch_size: samples per optimizer step (the last incomplete batch of an epoch is dropped, so no
            batch-norm layer sees a batch of one).
        lr: initial Adam learning rate, cosine-annealed to zero.
        weight_decay: Adam weight decay.
        patch_size: random-patch side and sliding-window tile for large-image datasets.
        patches_per_image: patches per large training image and epoch.
        channels_last: run the network in channels-last memory format.
        reestimate_bn: re-estimate BatchNorm statistics on the training split before every evaluation (see the
            module docstring); False only to measure what stale statistics do (``scripts/pilot_curves.py``).
        l2_kernels: the official UNet++ (2018) code's Keras L2 penalty ``l2 * sum(w**2)`` on the parameters
            ``repro.models.blocks.keras_l2_parameters`` selects, in place of Adam's weight decay on them; 0 = none.
        eval_every: validate after every this-many epochs and after the last (only validated epochs can be
            selected); 1 validates after each epoch.
    """

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    patch_size: int
    patches_per_image: int
    channels_last: bool = True
    reestimate_bn: bool = True
    l2_kernels: float = 0.0
    eval_every: int = 1

    def validates(self, epoch: int) -> bool:
        """Whether validation follows ``epoch`` (1-based)."""
        return epoch % self.eval_every == 0 or epoch == self.epochs


@dataclass
class EvalResult:
    """Evaluation of one split: dataset-level summary, per-image rows, and predicted label maps."""

    summary: dict
    per_image: list[dict]
    predictions: Tensor


def parameter_groups(model: nn.Module, settings: TrainSettings) -> list[dict]:
    """Adam's parameter groups: every parameter with the recipe's weight decay, or with ``l2_kernels`` the
    official UNet++ code's L2 on its regularised kernels only (Keras adds ``l2 * w**2`` to the loss, whose
    gradient ``2 * l2 * w`` is Adam's weight decay of ``2 * l2``) and no decay on anything else."""
    if not settings.l2_kernels:
        return [{"params": list(model.parameters()), "weight_decay": settings.weight_decay}]
    kernels = keras_l2_parameters(model)
    chosen = {id(p) for p in kernels}
    others = [p for p in model.parameters() if id(p) not in chosen]
    return [
        {"params": kernels, "weight_decay": 2 * settings.l2_kernels},
        {"params": others, "weight_decay": 0.0},
    ]


def _check_domains(
    model: SegmentationNetwork, domains: Sequence[PreparedData], domain_steps: Sequence[int], epochs: int
) -> tuple[int, ...]:
    """The per-domain steps of a several-domain run, checked against the model (empty for one domain).

    Raises:
        ValueError: the model serves fewer domains than the data gives, or the steps do not fit the domains.
    """
    if len(domains) == 1:
        if domain_steps:
            raise ValueError("domain_steps is for several domains; a one-domain run's length is its epochs")
        return ()
    names = ", ".join(data.name for data in domains)
    if model.domains != len(domains):
        raise ValueError(
            f"{type(model).__name__} serves {model.domains} domain(s); the data has {len(domains)} ({names})"
        )
    if len(domain_steps) != len(domains) or min(domain_steps) < 1 or max(domain_steps) < epochs:
        raise ValueError(
            f"domain_steps must give each of the {len(domains)} domains ({names}) a step, and one of them at least "
            f"one step per epoch ({epochs} epochs); got {list(domain_steps)}"
        )
    return tuple(domain_steps)


def _mean_scores(per_domain: Sequence[dict]) -> dict[str, float]:
    """The mean Dice and IoU over the domains' validation summaries (the selection criterion of several domains)."""
    return {key: float(np.mean([scores[key] for scores in per_domain])) for key in ("dice", "iou")}


class Trainer:
    """Fit a model to a prepared dataset with the study's single recipe; checkpoint and resume.

    Args:
        model: network from ``repro.models.create_model``.
        data: the prepared dataset.
        settings: training settings.
        seed: the run's seed (model initialisation must already have used it: see ``seed_everything``).
        generator: the data/augmentation generator returned by ``seed_everything`` (a CPU generator).
        checkpoint_dir: where ``last.pt`` is written after every epoch; an existing one is resumed from, if it
            records ``identity``.
        device: where the model and the splits live (see :func:`resolve_device`); the CPU by default.
        identity: the run's identity, required with ``checkpoint_dir`` (no checkpoint is resumed unchecked).
        domains: for a network that serves several domains (``model.domains``), the prepared dataset of each
            domain after ``data`` (domain 0); empty for one domain.
        domain_steps: with ``domains``, each domain's optimizer steps over the whole run (``data``'s first), spread
            over the epochs as evenly as whole steps allow.
    """

    def __init__(
        self,
        model: SegmentationNetwork,
        data: PreparedData,
        settings: TrainSettings,
        seed: int,
        generator: torch.Generator,
        checkpoint_dir: Path | str | None = None,
        device: torch.device | str = "cpu",
        identity: RunIdentity | None = None,
        domains: Sequence[PreparedData] = (),
        domain_steps: Sequence[int] = (),
    ) -> None:
        if checkpoint_dir is not None and identity is None:
            raise ValueError("a Trainer with a checkpoint_dir needs the run's identity, to check what it resumes")
        self.identity = identity
        self.device = normalise_device(device)
        self.data = data
        self.domains = [data, *domains]
        self.domain_steps = _check_domains(model, self.domains, domain_steps, settings.epochs)
        # The splits the hot path reads, moved to the device once (the caller's ``data`` stays where it is).
        self.train_splits = [domain.train.to(self.device) for domain in self.domains]
        self.val_splits = [domain.val.to(self.device) for domain in self.domains]
        self.train_split, self.val_split = self.train_splits[0], self.val_splits[0]
        self.settings = settings
        self.seed = seed
        self.generator = generator
        channels_last = torch.channels_last_3d if data.volumetric else torch.channels_last
        use_channels_last = settings.channels_last and model.channels_last
        self.memory_format = channels_last if use_channels_last else torch.contiguous_format
        self.model = model.to(device=self.device, memory_format=self.memory_format)
        self.losses = [DeepSupervisionLoss(SegmentationLoss(domain.num_classes)) for domain in self.domains]
        self.optimizer = torch.optim.Adam(parameter_groups(model, settings), lr=settings.lr)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=settings.epochs)
        self.checkpoint = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
        self.history: list[dict] = []
        self.best_state: dict[str, Tensor] | None = None
        self.best_epoch = 0
        self.best_val_dice = -1.0
        self.train_seconds = 0.0
        self.eval_seconds = 0.0  # validation, BatchNorm re-estimation included
        self.train_samples = 0
        self.optimizer_steps = 0
        # The epochs after which this run was resumed from its checkpoint (kept in the checkpoint, so every
        # resumption of the run is listed, not only the last).
        self.resumed_after: list[int] = []
        # The training-code versions of checkpoints this run resumed that were written by earlier code, proven
        # number-equivalent to this code (``repro.training.identity.check_resumable``).
        self.resumed_from_code: list[str] = []
        self._resume()

    @property
    def tile(self) -> int | None:
        """The sliding-window tile of domain 0 (see :meth:`domain_tile`)."""
        return self.domain_tile(0)

    def domain_tile(self, domain: int) -> int | None:
        """The sliding-window tile for ``domain``'s images: the patch side for large images, else None."""
        return self.settings.patch_size if self.domains[domain].large_images else None

    def _epoch_samples(self, domain: int = 0) -> Split:
        train = self.train_splits[domain]
        if self.domains[domain].large_images:
            return random_patches(train, self.settings.patch_size, self.settings.patches_per_image, self.generator)
        return train

    def _epoch_batches(self, epoch: int) -> list[tuple[int, Split, Tensor]]:
        """The epoch's batches in training order: (domain, samples, indices into samples).

        One domain: one random order of its (patched) training split, cut into full batches. Several: each
        domain's share of its ``domain_steps`` for this epoch, from as many random orders of its split as that
        share needs, interleaved evenly (ties: domain order).
        """
        batches = []
        for domain in range(len(self.domains)):
            samples = self._epoch_samples(domain)
            batch_size = min(self.settings.batch_size, len(samples))
            per_order = len(samples) // batch_size
            wanted = self._steps_in_epoch(domain, epoch) if self.domain_steps else per_order
            indices: list[Tensor] = []
            while len(indices) < wanted:
                order = torch.randperm(len(samples), generator=self.generator).to(self.device)
                indices += [order[step * batch_size : (step + 1) * batch_size] for step in range(per_order)]
            batches += [((step + 0.5) / wanted, domain, samples, index) for step, index in enumerate(indices[:wanted])]
        batches.sort(key=lambda batch: batch[:2])
        return [batch[1:] for batch in batches]

    def _steps_in_epoch(self, domain: int, epoch: int) -> int:
        """Domain ``domain``'s optimizer steps in ``epoch`` (1-based): its ``domain_steps`` spread over the epochs."""
        total, epochs = self.domain_steps[domain], self.settings.epochs
        return epoch * total // epochs - (epoch - 1) * total // epochs

    def train_epoch(self, epoch: int) -> float:
        """One pass over the (patched) training split, or each domain's share of the epoch; returns the mean loss."""
        self.model.train()
        batches = self._epoch_batches(epoch)
        steps = len(batches)
        total = 0.0
        for step, (domain, samples, index) in enumerate(batches):
            valid = None if samples.valid is None else samples.valid[index]
            images, masks, valid = augment(samples.images[index], samples.masks[index], valid, self.generator)
            self.model.domain = domain
            loss = self.losses[domain](self.model(images.contiguous(memory_format=self.memory_format)), masks, valid)
            auxiliary = self.model.auxiliary_loss  # SegResNet-VAE's VAE term, already weighted; else None
            if auxiliary is not None:
                loss = loss + auxiliary
            value = loss.item()
            if not np.isfinite(value):
                raise NonFiniteLossError(
                    f"non-finite training loss ({value}) at epoch {epoch}, step {step + 1} of {steps}; "
                    f"lr {self.scheduler.get_last_lr()[0]:.3g}. Lower the learning rate or check the inputs."
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += value
        self.scheduler.step()
        self.train_samples += sum(len(index) for _, _, index in batches)
        self.optimizer_steps += steps
        return total / steps

    def reestimate_bn(self, domain: int = 0) -> None:
        """Re-estimate BatchNorm statistics on ``domain``'s unaugmented training split (when the settings say so)."""
        if self.settings.reestimate_bn:
            self.model.domain = domain
            images = self.train_splits[domain].images.contiguous(memory_format=self.memory_format)
            reestimate_batchnorm(self.model, images, self.settings.batch_size, self.domain_tile(domain))

    def evaluate(self, split: Split, domain: int = 0) -> EvalResult:
        """Dice/IoU of the current model on ``split`` of ``domain`` (per image and summarised), and for volumes the
        95th-percentile Hausdorff distance (``hd95``: per case, and its mean over the cases that have one);
        predictions on the CPU."""
        data = self.domains[domain]
        split = split.to(self.device)
        images = split.images.contiguous(memory_format=self.memory_format)
        self.model.domain = domain
        logits = predict_logits(self.model, images, self.settings.batch_size, self.domain_tile(domain))
        predictions = logits_to_labels(logits)
        counts = confusion_counts(predictions, split.masks, data.num_classes, split.valid).cpu()
        summary = summarize(counts, data.class_names)
        per_image = per_image_table(counts, split.ids, data.class_names)
        if data.volumetric:
            inside = predictions if split.valid is None else torch.where(split.valid, predictions, 0)
            distances = hausdorff95(inside.cpu(), split.masks.cpu(), data.class_names)
            per_image = [row | distance for row, distance in zip(per_image, distances, strict=True)]
            hd95 = np.array([row["hd95"] for row in distances])
            summary |= {"hd95": float(np.nanmean(hd95)) if np.isfinite(hd95).any() else float("nan")}
            summary |= {"hd95_cases": int(np.isfinite(hd95).sum())}
        return EvalResult(summary, per_image, predictions.cpu())

    def fit(self, on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
        """Train for the remaining epochs, validating after every ``eval_every``-th and the last, keeping the
        best-validation weights.

        Args:
            on_epoch: called with each epoch's history row (e.g. to print a line or advance a progress bar).

        Returns:
            The history: one row per epoch (train loss, validation Dice and IoU, NaN where the epoch was not
            validated, learning rate, training seconds, validation seconds).
        """
        torch.set_flush_denormal(True)  # subnormals are slow on x86 CPUs (module docstring)
        for epoch in range(len(self.history) + 1, self.settings.epochs + 1):
            start = time.perf_counter()
            lr = self.scheduler.get_last_lr()[0]
            train_loss = self.train_epoch(epoch)
            seconds = time.perf_counter() - start
            self.train_seconds += seconds
            val = {"dice": float("nan"), "iou": float("nan")}
            per_domain = [dict(val) for _ in self.domains]
            if self.settings.validates(epoch):
                per_domain = [self.validate(domain) for domain in range(len(self.domains))]
                val = per_domain[0] if len(self.domains) == 1 else _mean_scores(per_domain)
                if val["dice"] > self.best_val_dice:
                    self.best_val_dice, self.best_epoch = val["dice"], epoch
                    self.best_state = copy.deepcopy(self.model.state_dict())
            eval_seconds = time.perf_counter() - start - seconds
            self.eval_seconds += eval_seconds
            row = {"epoch": epoch, "train_loss": train_loss, "val_dice": val["dice"], "val_iou": val["iou"]}
            if len(self.domains) > 1:  # the mean above, each domain's scores here
                for data, scores in zip(self.domains, per_domain, strict=True):
                    row |= {f"val_dice@{data.name}": scores["dice"], f"val_iou@{data.name}": scores["iou"]}
            self.history.append(row | {"lr": lr, "seconds": seconds, "eval_seconds": eval_seconds})
            self._save()
            if on_epoch is not None:
                on_epoch(self.history[-1])
        return self.history

    def validate(self, domain: int = 0) -> dict:
        """Re-estimate BatchNorm statistics, then score ``domain``'s validation split (its summary)."""
        self.reestimate_bn(domain)
        return self.evaluate(self.val_splits[domain], domain).summary

    def load_best(self) -> None:
        """Put the best-validation weights into the model."""
        if self.best_state is None:
            raise RuntimeError("no epoch has been trained yet")
        self.model.load_state_dict(self.best_state)

    def _save(self) -> None:
        if self.checkpoint is None:
            return
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "history": self.history,
            "best_state": self.best_state,
            "best_epoch": self.best_epoch,
            "best_val_dice": self.best_val_dice,
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
            "train_samples": self.train_samples,
            "optimizer_steps": self.optimizer_steps,
            "resumed_after": self.resumed_after,
            "resumed_from_code": self.resumed_from_code,
            "seed": self.seed,
            "settings": asdict(self.settings),
            "identity": self.identity.to_dict(),
        }
        # Write then rename, so a run killed mid-save leaves the previous checkpoint intact.
        partial = self.checkpoint.with_suffix(".partial")
        torch.save(state, partial)
        partial.replace(self.checkpoint)

    def _resume(self) -> None:
        if self.checkpoint is None or not self.checkpoint.exists():
            return
        try:
            state = torch.load(self.checkpoint, map_location=self.device, weights_only=False)
        except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
            raise CheckpointError(
                f"{self.checkpoint} cannot be read ({type(error).__name__}: {error}); the file is damaged (e.g. a "
                f"full disk, or a copy cut short). Nothing was trained. To train this run from the start, delete it "
                f"(rm {self.checkpoint}) and run it again."
            ) from error
        earlier_code = check_resumable(state.get("identity"), self.identity, self.checkpoint)
        # The settings follow from the identity, but a caller may set them by hand (the pilot script does).
        if state["settings"] != asdict(self.settings):
            raise RunMismatchError(
                f"{self.checkpoint} belongs to another run: its training settings {state['settings']} differ from "
                f"{asdict(self.settings)}. Delete it (rm {self.checkpoint}) to train this run from the start."
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
        for key in (
            "history",
            "best_state",
            "best_epoch",
            "best_val_dice",
            "train_seconds",
            "eval_seconds",
            "train_samples",
            "optimizer_steps",
            "resumed_after",
        ):
            setattr(self, key, state[key])
        self.resumed_after = [*self.resumed_after, len(self.history)]
        # Checkpoints written before this list existed hold none: their code was the code that resumed them.
        self.resumed_from_code = state.get("resumed_from_code", [])
        if earlier_code is not None:
            self.resumed_from_code = [*self.resumed_from_code, earlier_code]

    @property
    def images_per_second(self) -> float:
        """Training throughput: samples (images or patches) per second of training time."""
        return self.train_samples / self.train_seconds if self.train_seconds else 0.0
