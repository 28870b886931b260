"""Training and evaluation: one recipe for every architecture.

The recipe (as in nnU-Net Revisited, the same for all networks so that only the architecture differs):
BCE + soft Dice (binary) or CE + soft Dice (multi-class), each deep-supervision head weighted equally; Adam with
cosine annealing to zero over the epochs; random flips and 90-degree rotations on the fly; the epoch with the best
validation Dice is selected and the test split is evaluated once, with those weights.

BatchNorm statistics are re-estimated before every evaluation: one no-grad pass over the (unaugmented) training
split with BatchNorm in train mode and cumulative averaging (:func:`reestimate_batchnorm`). The running averages
that training keeps lag behind the weights when an epoch has few optimizer steps and the momentum is small
(TinyU-Net's official 0.03 on PH2's 8 steps an epoch gave val Dice 0.000 for ten epochs that, re-estimated,
score 0.70-0.90), so without it a network's evaluation would measure how many steps its dataset has.

The hot path stays lean for CPU runs: every split is one in-memory tensor (no DataLoader, no worker
processes), augmentation is batched tensor indexing, and the only host sync per step is the loss value that
the non-finite-loss check needs. On a GPU (``device``, see :func:`resolve_device`) the splits are moved to it
once, so the hot path never copies images between host and device.

CPU arithmetic flushes subnormal floats (below 1.2e-38) to zero while a Trainer trains
(``torch.set_flush_denormal``, which holds for the whole process). x86 CPUs compute on subnormals many times
slower than on normal numbers, and training produces them: on DSB2018, whose images are mostly confidently
predicted background, a fraction of the backward pass's gradients fall below that bound as training converges,
and the width-1.0 U-Net's train step from its epoch-28 checkpoint took 2.8 times as long as with flushing (9.6 s
against 3.5 s; UNet++ at its last epoch 1.7 times), so its epochs slowed from 50 s to over 120 s. Values that
small contribute nothing a float32 sum can keep, and TensorFlow (the framework of the UNet++ reference code)
flushes them on the CPU by default too. GPU kernels are unaffected.

Determinism: one seed sets Python, NumPy and torch (model initialisation, dropout) and a dedicated CPU generator
for data order, patches and augmentation, so a seed draws the same batches and transforms on every device. On
CPU with a fixed thread count, the same seed gives bit-identical results. On CUDA, cuDNN is held to its
deterministic algorithms, but a few backward kernels (bilinear upsampling, adaptive pooling) have no
deterministic CUDA version: PyTorch warns about them and a rerun can differ in the last bits. A checkpoint
written after every epoch holds every state (model, optimizer, scheduler, every RNG, best weights, history) and
the run's identity (``repro.run_identity``: data, code, variant, full scale preset, seed), so a killed run resumes
to the same result as an uninterrupted one, and a checkpoint of any other run is refused before training.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import random
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from repro.losses import DeepSupervisionLoss, SegmentationLoss
from repro.metrics import confusion_counts, hausdorff95, logits_to_labels, per_image_table, summarize
from repro.models.blocks import keras_l2_parameters
from repro.run_identity import RunIdentity, RunMismatchError, check_resumable, normalise_device

THREADS_ENV = "UNET_REPRO_THREADS"
DEVICE_ENV = "UNET_REPRO_DEVICE"


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read."""


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: the argument, else ``$UNET_REPRO_THREADS``, else one per core."""
    threads = int(threads or os.environ.get(THREADS_ENV) or os.cpu_count() or 1)
    torch.set_num_threads(threads)
    return threads


def resolve_device(device: str | None = None) -> torch.device:
    """The device to train on: the argument, else ``$UNET_REPRO_DEVICE``, else ``"auto"``.

    ``"auto"`` is the first CUDA GPU when there is one, else the CPU. A named device that is not there fails here,
    before any data is loaded.
    """
    name = device or os.environ.get(DEVICE_ENV) or "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(name)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for (argument or ${DEVICE_ENV}) but CUDA is not available")
    return resolved


def describe_device(device: torch.device) -> str:
    """A readable name: ``cpu`` or the GPU's model, e.g. ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return the generator that drives data order and augmentation."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds legacy global-state users (e.g. third-party code)
    torch.manual_seed(seed)  # also seeds every CUDA device
    # cuBLAS is deterministic only with a fixed workspace; it must be set before its first call.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    # Every CPU kernel used here is deterministic; on CUDA, the few without a deterministic version warn (see
    # the module docstring) rather than stop the run.
    torch.use_deterministic_algorithms(True, warn_only=True)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


@dataclass
class Split:
    """One split held in memory.

    Args:
        images: float32 (N, C, H, W), normalised with the training split's channel statistics; volumes
            (N, C, D, H, W), z-scored per case by ``repro.data.prepare``.
        masks: int64 (N, H, W) or (N, D, H, W) class indices.
        valid: bool, the shape of ``masks``: region of interest, or None where every pixel counts.
        ids: image ids, in order.
    """

    images: Tensor
    masks: Tensor
    valid: Tensor | None
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device) -> Split:
        """This split on ``device`` (itself when it is already there)."""
        if self.images.device == device:
            return self
        return Split(
            images=self.images.to(device),
            masks=self.masks.to(device),
            valid=None if self.valid is None else self.valid.to(device),
            ids=self.ids,
        )


@dataclass
class PreparedData:
    """A prepared dataset (output of ``repro.data.prepare``) loaded as tensors."""

    name: str
    class_names: list[str]
    in_channels: int
    large_images: bool
    train: Split
    val: Split
    test: Split
    volumetric: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def out_channels(self) -> int:
        """Model output channels: one (sigmoid) for binary tasks, one per class (softmax) otherwise."""
        return 1 if self.num_classes == 2 else self.num_classes


def load_prepared(
    folder: Path | str, max_train_images: int | None = None, max_eval_images: int | None = None
) -> PreparedData:
    """Load ``data/processed/<scale>/<dataset>/`` into tensors.

    Args:
        folder: the prepared dataset folder.
        max_train_images: keep only the first this-many training images (smoke runs); None keeps all.
        max_eval_images: likewise for validation and test.
    """
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())

    def arrays(split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str]]:
        valid_file = folder / f"{split}_valid.npy"
        valid = np.load(valid_file)[:limit] if valid_file.exists() else None
        return (
            np.load(folder / f"{split}_images.npy")[:limit],
            np.load(folder / f"{split}_masks.npy")[:limit],
            valid,
            meta["ids"][split][:limit],
        )

    raw = {"train": arrays("train", max_train_images)}
    raw["val"] = arrays("val", max_eval_images)
    raw["test"] = arrays("test", max_eval_images)
    volumetric = meta.get("ndim", 2) == 3
    if volumetric:  # z-scored per case when prepared
        mean, std = np.zeros(meta["in_channels"]), np.full(meta["in_channels"], 1 / 255.0)
    else:
        train_pixels = raw["train"][0].reshape(-1, meta["in_channels"]).astype(np.float64) / 255.0
        mean, std = train_pixels.mean(axis=0), train_pixels.std(axis=0) + 1e-6

    def to_split(images: np.ndarray, masks: np.ndarray, valid: np.ndarray | None, ids: list[str]) -> Split:
        normalised = (images.astype(np.float32) / 255.0 - mean.astype(np.float32)) / std.astype(np.float32)
        channels_first = (0, images.ndim - 1, *range(1, images.ndim - 1))
        return Split(
            images=torch.from_numpy(np.ascontiguousarray(normalised.transpose(channels_first))),
            masks=torch.from_numpy(masks.astype(np.int64)),
            valid=None if valid is None else torch.from_numpy(valid),
            ids=list(ids),
        )

    return PreparedData(
        name=meta["dataset"],
        class_names=meta["class_names"],
        in_channels=meta["in_channels"],
        large_images=meta["large_images"],
        **{split: to_split(*raw[split]) for split in ("train", "val", "test")},
        volumetric=volumetric,
    )


def random_dihedral(
    images: Tensor, masks: Tensor, valid: Tensor | None, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Apply one of the 8 flips/90-degree rotations to each sample (square inputs), drawn from ``generator``.

    Samples are grouped by their transform, so the cost is at most 8 batched index operations per batch.
    """
    choice = torch.randint(0, 8, (images.shape[0],), generator=generator)
    images, masks = images.clone(), masks.clone()
    valid = None if valid is None else valid.clone()
    for transform in choice.unique().tolist():
        index = (choice == transform).nonzero().squeeze(1).to(images.device)
        k, flip = transform % 4, transform >= 4
        for tensor in (images, masks) + ((valid,) if valid is not None else ()):
            picked = tensor[index]
            if flip:
                picked = picked.flip(-1)
            tensor[index] = picked.rot90(k, dims=(-2, -1))
    return images, masks, valid


def random_flips(
    images: Tensor, masks: Tensor, valid: Tensor | None, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Flip each sample along a random subset of its spatial axes (2^3 choices for a volume, 2^2 for an image),
    drawn from ``generator``: the augmentation of inputs that a 90-degree rotation would reshape (volumes, and
    images that are not square)."""
    spatial = masks.ndim - 1
    choice = torch.randint(0, 2**spatial, (images.shape[0],), generator=generator)
    images, masks = images.clone(), masks.clone()
    valid = None if valid is None else valid.clone()
    for transform in choice.unique().tolist():
        axes = [-1 - axis for axis in range(spatial) if transform >> axis & 1]
        if not axes:
            continue
        index = (choice == transform).nonzero().squeeze(1).to(images.device)
        for tensor in (images, masks) + ((valid,) if valid is not None else ()):
            tensor[index] = tensor[index].flip(axes)
    return images, masks, valid


def augment(
    images: Tensor, masks: Tensor, valid: Tensor | None, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The recipe's augmentation: :func:`random_dihedral` for square images, :func:`random_flips` otherwise."""
    square_image = masks.ndim == 3 and masks.shape[-1] == masks.shape[-2]
    return (random_dihedral if square_image else random_flips)(images, masks, valid, generator)


def random_patches(split: Split, patch_size: int, per_image: int, generator: torch.Generator) -> Split:
    """Draw ``per_image`` random square patches from every image of ``split`` (for large-image datasets)."""
    n, _, height, width = split.images.shape
    if height < patch_size or width < patch_size:
        raise ValueError(f"patch_size {patch_size} exceeds the prepared image size {height}x{width}")
    tops = torch.randint(0, height - patch_size + 1, (n * per_image,), generator=generator).tolist()
    lefts = torch.randint(0, width - patch_size + 1, (n * per_image,), generator=generator).tolist()
    sources = [k // per_image for k in range(n * per_image)]

    def crop(tensor: Tensor) -> Tensor:
        return torch.stack(
            [
                tensor[s, ..., top : top + patch_size, left : left + patch_size]
                for s, top, left in zip(sources, tops, lefts, strict=True)
            ]
        )

    return Split(
        images=crop(split.images),
        masks=crop(split.masks),
        valid=None if split.valid is None else crop(split.valid),
        ids=[split.ids[s] for s in sources],
    )


def _tile_starts(size: int, tile: int) -> list[int]:
    """Tile origins covering ``size`` with half-tile overlap; the last tile ends at the border."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile // 2))
    return starts + [size - tile]


@torch.no_grad()
def predict_logits(model: nn.Module, images: Tensor, batch_size: int, tile: int | None = None) -> Tensor:
    """Logits for ``images`` in eval mode, batched; with ``tile``, by overlapping sliding-window tiles whose
    logits are averaged (for large images the network was trained on patches of that size)."""
    model.eval()
    return _forward_batched(model, images, batch_size, tile)


def _forward_batched(model: nn.Module, images: Tensor, batch_size: int, tile: int | None) -> Tensor:
    outputs = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size]
        if tile is None:
            outputs.append(model(batch))
            continue
        height, width = batch.shape[-2:]
        total, count = None, torch.zeros(1, 1, height, width, device=batch.device)
        for top in _tile_starts(height, tile):
            for left in _tile_starts(width, tile):
                logits = model(batch[..., top : top + tile, left : left + tile])
                if total is None:
                    total = torch.zeros(batch.shape[0], logits.shape[1], height, width, device=batch.device)
                total[..., top : top + tile, left : left + tile] += logits
                count[..., top : top + tile, left : left + tile] += 1
        outputs.append(total / count)
    return torch.cat(outputs)


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, images: Tensor, batch_size: int, tile: int | None = None) -> int:
    """Replace every BatchNorm layer's running statistics by their average over ``images``; return how many
    layers were re-estimated.

    The pass runs the network as evaluation does (eval mode, the same batches and sliding-window tiles) with only
    the BatchNorm layers in train mode and ``momentum=None`` (a cumulative average over the batches), so the
    statistics are those of the inputs each layer sees at inference. A layer the pass does not reach (e.g. a
    node that a pruned deep-supervision mode skips) keeps its previous statistics. The model is left in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    before = [(m.momentum, copy.deepcopy(m.state_dict())) for m in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    try:
        _forward_batched(model, images, batch_size, tile)
    finally:
        for norm, (momentum, state) in zip(norms, before, strict=True):
            norm.momentum = momentum
            norm.eval()
            if norm.num_batches_tracked.item() == 0:
                norm.load_state_dict(state)
    return len(norms)


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
    """

    def __init__(
        self,
        model: nn.Module,
        data: PreparedData,
        settings: TrainSettings,
        seed: int,
        generator: torch.Generator,
        checkpoint_dir: Path | str | None = None,
        device: torch.device | str = "cpu",
        identity: RunIdentity | None = None,
    ) -> None:
        if checkpoint_dir is not None and identity is None:
            raise ValueError("a Trainer with a checkpoint_dir needs the run's identity, to check what it resumes")
        self.identity = identity
        self.device = normalise_device(device)
        self.data = data
        # The splits the hot path reads, moved to the device once (the caller's ``data`` stays where it is).
        self.train_split, self.val_split = data.train.to(self.device), data.val.to(self.device)
        self.settings = settings
        self.seed = seed
        self.generator = generator
        channels_last = torch.channels_last_3d if data.volumetric else torch.channels_last
        self.memory_format = channels_last if settings.channels_last else torch.contiguous_format
        self.model = model.to(device=self.device, memory_format=self.memory_format)
        self.loss = DeepSupervisionLoss(SegmentationLoss(data.num_classes))
        self.optimizer = torch.optim.Adam(parameter_groups(model, settings), lr=settings.lr)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=settings.epochs)
        self.checkpoint = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
        self.history: list[dict] = []
        self.best_state: dict[str, Tensor] | None = None
        self.best_epoch = 0
        self.best_val_dice = -1.0
        self.train_seconds = 0.0
        self.train_samples = 0
        self.optimizer_steps = 0
        # The epochs after which this run was resumed from its checkpoint (kept in the checkpoint, so every
        # resumption of the run is listed, not only the last).
        self.resumed_after: list[int] = []
        self._resume()

    @property
    def tile(self) -> int | None:
        return self.settings.patch_size if self.data.large_images else None

    def _epoch_samples(self) -> Split:
        train = self.train_split
        if self.data.large_images:
            return random_patches(train, self.settings.patch_size, self.settings.patches_per_image, self.generator)
        return train

    def train_epoch(self, epoch: int) -> float:
        """One pass over the (patched) training split; returns the mean loss."""
        self.model.train()
        samples = self._epoch_samples()
        order = torch.randperm(len(samples), generator=self.generator).to(self.device)
        batch_size = min(self.settings.batch_size, len(samples))
        steps = len(samples) // batch_size
        total = 0.0
        for step in range(steps):
            index = order[step * batch_size : (step + 1) * batch_size]
            valid = None if samples.valid is None else samples.valid[index]
            images, masks, valid = augment(samples.images[index], samples.masks[index], valid, self.generator)
            loss = self.loss(self.model(images.contiguous(memory_format=self.memory_format)), masks, valid)
            auxiliary = getattr(self.model, "auxiliary_loss", None)  # SegResNet-VAE's VAE term, already weighted
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
        self.train_samples += steps * batch_size
        self.optimizer_steps += steps
        return total / steps

    def reestimate_bn(self) -> None:
        """Re-estimate BatchNorm statistics on the unaugmented training split (when the settings say so)."""
        if self.settings.reestimate_bn:
            images = self.train_split.images.contiguous(memory_format=self.memory_format)
            reestimate_batchnorm(self.model, images, self.settings.batch_size, self.tile)

    def evaluate(self, split: Split) -> EvalResult:
        """Dice/IoU of the current model on ``split`` (per image and summarised), and for volumes the 95th-percentile
        Hausdorff distance (``hd95``: per case, and its mean over the cases that have one); predictions on the
        CPU."""
        split = split.to(self.device)
        images = split.images.contiguous(memory_format=self.memory_format)
        logits = predict_logits(self.model, images, self.settings.batch_size, self.tile)
        predictions = logits_to_labels(logits)
        counts = confusion_counts(predictions, split.masks, self.data.num_classes, split.valid).cpu()
        summary = summarize(counts, self.data.class_names)
        per_image = per_image_table(counts, split.ids, self.data.class_names)
        if self.data.volumetric:
            inside = predictions if split.valid is None else torch.where(split.valid, predictions, 0)
            distances = hausdorff95(inside.cpu(), split.masks.cpu(), self.data.class_names)
            per_image = [row | distance for row, distance in zip(per_image, distances, strict=True)]
            hd95 = np.array([row["hd95"] for row in distances])
            summary |= {"hd95": float(np.nanmean(hd95)) if np.isfinite(hd95).any() else float("nan")}
            summary |= {"hd95_cases": int(np.isfinite(hd95).sum())}
        return EvalResult(summary, per_image, predictions.cpu())

    def fit(self, on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
        """Train for the remaining epochs, validating after each, keeping the best-validation weights.

        Args:
            on_epoch: called with each epoch's history row (e.g. to advance a progress bar).

        Returns:
            The history: one row per epoch (train loss, validation Dice and IoU, learning rate, seconds).
        """
        torch.set_flush_denormal(True)  # subnormals are slow on x86 CPUs (module docstring)
        for epoch in range(len(self.history) + 1, self.settings.epochs + 1):
            start = time.perf_counter()
            lr = self.scheduler.get_last_lr()[0]
            train_loss = self.train_epoch(epoch)
            seconds = time.perf_counter() - start
            self.train_seconds += seconds
            self.reestimate_bn()
            val = self.evaluate(self.val_split).summary
            self.history.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "val_dice": val["dice"],
                    "val_iou": val["iou"],
                    "lr": lr,
                    "seconds": seconds,
                }
            )
            if val["dice"] > self.best_val_dice:
                self.best_val_dice, self.best_epoch = val["dice"], epoch
                self.best_state = copy.deepcopy(self.model.state_dict())
            self._save()
            if on_epoch is not None:
                on_epoch(self.history[-1])
        return self.history

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
            "train_samples": self.train_samples,
            "optimizer_steps": self.optimizer_steps,
            "resumed_after": self.resumed_after,
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
        check_resumable(state.get("identity"), self.identity, self.checkpoint)
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
            "train_samples",
            "optimizer_steps",
            "resumed_after",
        ):
            setattr(self, key, state[key])
        self.resumed_after = [*self.resumed_after, len(self.history)]

    @property
    def images_per_second(self) -> float:
        """Training throughput: samples (images or patches) per second of training time."""
        return self.train_samples / self.train_seconds if self.train_seconds else 0.0
