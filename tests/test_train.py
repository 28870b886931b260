"""The training engine on a tiny synthetic problem: it learns, is deterministic, resumes, stops on NaN."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from repro.data.augment import random_dihedral, random_patches
from repro.data.loading import PreparedData, Split
from repro.models import create_model
from repro.models.blocks import keras_l2_parameters
from repro.training.device import resolve_device, seed_everything
from repro.training.identity import RunIdentity
from repro.training.inference import _tile_starts, predict_logits, reestimate_batchnorm
from repro.training.run import describe_resumptions
from repro.training.trainer import (
    CheckpointError,
    NonFiniteLossError,
    Trainer,
    TrainSettings,
    epochs_for_steps,
    parameter_groups,
)


def synthetic_split(n: int, size: int, seed: int) -> Split:
    """Noisy images with one bright square each; the square is the foreground."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, size, size, dtype=torch.int64)
    for i in range(n):
        side = int(torch.randint(size // 4, size // 2, (1,), generator=generator))
        top, left = torch.randint(0, size - side, (2,), generator=generator).tolist()
        masks[i, top : top + side, left : left + side] = 1
    images = masks[:, None].float() * 1.5 + 0.5 * torch.randn(n, 1, size, size, generator=generator)
    return Split(images=images, masks=masks, valid=None, ids=[f"img{i}" for i in range(n)])


def synthetic_data(large_images: bool = False) -> PreparedData:
    return PreparedData(
        name="squares",
        class_names=["background", "square"],
        in_channels=1,
        large_images=large_images,
        train=synthetic_split(16, 32, 0),
        val=synthetic_split(6, 32, 1),
        test=synthetic_split(6, 32, 2),
    )


SETTINGS = TrainSettings(epochs=4, batch_size=4, lr=0.01, weight_decay=0.0, patch_size=16, patches_per_image=2)


def identity_of(data: PreparedData, seed: int, settings: TrainSettings) -> RunIdentity:
    """A run identity of the synthetic run: its data files are the md5s of the splits' tensors (the identities of
    real prepared folders and code are tested in test_run_identity.py)."""
    splits = {name: getattr(data, name) for name in ("train", "val", "test")}
    return RunIdentity(
        dataset=data.name,
        dataset_definition={"name": data.name},
        model="unet",
        arch="unet",
        options={"width_mult": 0.125},
        seed=seed,
        scale="test",
        scale_settings=vars(settings),
        dataset_settings={"train_steps": {}, "eval_every": settings.eval_every},
        data_files={
            f"{name}_{part}": hashlib.md5(getattr(split, part).numpy().tobytes()).hexdigest()
            for name, split in splits.items()
            for part in ("images", "masks")
        },
        code_files={},
        data_root="synthetic",
        git_commit="unknown",
    )


def make_trainer(
    seed: int = 0, settings: TrainSettings = SETTINGS, checkpoint_dir=None, data=None, device="cpu"
) -> Trainer:
    generator = seed_everything(seed)
    model = create_model("unet", in_channels=1, num_classes=1, width_mult=0.125, norm="batch")
    data = data or synthetic_data()
    identity = identity_of(data, seed, settings) if checkpoint_dir is not None else None
    return Trainer(model, data, settings, seed, generator, checkpoint_dir, device, identity)


def test_training_learns_the_task():
    settings = TrainSettings(epochs=20, batch_size=4, lr=0.01, weight_decay=0.0, patch_size=16, patches_per_image=2)
    trainer = make_trainer(settings=settings)
    history = trainer.fit()
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]
    trainer.load_best()
    test = trainer.evaluate(trainer.data.test).summary
    # Chance level: predicting everything foreground gives Dice 2f/(1+f) with f ~ 0.14 foreground, i.e. ~0.25.
    assert test["dice"] > 0.8, test


def test_same_seed_gives_bit_identical_results():
    results = []
    for _ in range(2):
        trainer = make_trainer(seed=3)
        history = trainer.fit()
        trainer.load_best()
        results.append(
            (
                [{k: v for k, v in row.items() if k not in ("seconds", "eval_seconds")} for row in history],
                trainer.evaluate(trainer.data.test).summary,
            )
        )
    assert results[0] == results[1]
    other = make_trainer(seed=4)
    assert [row["train_loss"] for row in other.fit()] != [row["train_loss"] for row in results[0][0]]


# The killed run computes with this process's threads: floating-point sums split across another number of threads
# round differently, and a run is resumed on the threads it started with (the runner gives every run the same).
RESUME_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads({threads})
    sys.path.insert(0, {tests!r})
    from test_train import make_trainer

    def kill_after_epoch_2(row):
        if row["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    make_trainer(checkpoint_dir={checkpoints!r}).fit(on_epoch=kill_after_epoch_2)
    """
)


def test_killed_run_resumes_to_the_same_result(tmp_path):
    uninterrupted = make_trainer()
    uninterrupted.fit()
    uninterrupted.load_best()

    script = RESUME_SCRIPT.format(
        tests=str(Path(__file__).parent), checkpoints=str(tmp_path), threads=torch.get_num_threads()
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert (tmp_path / "last.pt").exists()

    resumed = make_trainer(checkpoint_dir=tmp_path)
    assert len(resumed.history) == 2
    resumed.fit()
    resumed.load_best()
    strip = [{k: v for k, v in row.items() if k not in ("seconds", "eval_seconds")} for row in uninterrupted.history]
    assert [{k: v for k, v in row.items() if k not in ("seconds", "eval_seconds")} for row in resumed.history] == strip
    assert resumed.evaluate(resumed.data.test).summary == uninterrupted.evaluate(uninterrupted.data.test).summary
    # The run says that it was resumed, and after which epoch; the uninterrupted one that it was not.
    assert uninterrupted.resumed_after == [] and resumed.resumed_after == [2]
    assert describe_resumptions(uninterrupted) == f"trained in one go, epochs 1-{uninterrupted.settings.epochs}"
    checkpoint = tmp_path / "last.pt"
    assert describe_resumptions(resumed).startswith(f"resumed once from its checkpoint ({checkpoint}), after epoch 2")
    # A second resumption (here of the finished run) is added to the first, not put in its place.
    again = make_trainer(checkpoint_dir=tmp_path)
    assert again.resumed_after == [2, again.settings.epochs]
    assert describe_resumptions(again).startswith("resumed 2 times from its checkpoint")


def test_training_flushes_subnormals_to_zero():
    """Subnormal floats are many times slower on x86 CPUs; training flushes them (repro.train's docstring)."""
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals (no SSE3)")
    try:
        torch.set_flush_denormal(False)
        subnormal = torch.tensor([1e-40])
        assert (subnormal * 1.0).item() != 0.0  # representable while not flushed
        make_trainer(settings=dataclasses.replace(SETTINGS, epochs=1)).fit()
        assert (subnormal * 1.0).item() == 0.0
    finally:
        torch.set_flush_denormal(False)


def test_checkpoint_of_another_run_is_refused(tmp_path):
    make_trainer(checkpoint_dir=tmp_path).fit()
    with pytest.raises(ValueError, match="belongs to another run"):
        make_trainer(seed=1, checkpoint_dir=tmp_path)


def test_checkpoint_of_other_data_is_refused(tmp_path):
    # Same seed and settings, other training data: the identity's data hashes tell the runs apart.
    make_trainer(checkpoint_dir=tmp_path).fit()
    data = synthetic_data()
    other = PreparedData(**{**vars(data), "train": synthetic_split(16, 32, 7)})
    with pytest.raises(ValueError, match=r"belongs to another run: it differs from this run in data_files"):
        make_trainer(checkpoint_dir=tmp_path, data=other)


def test_checkpoint_directory_needs_an_identity(tmp_path):
    generator = seed_everything(0)
    model = create_model("unet", in_channels=1, num_classes=1, width_mult=0.125)
    with pytest.raises(ValueError, match="needs the run's identity"):
        Trainer(model, synthetic_data(), SETTINGS, 0, generator, tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_checkpoint_names_the_file_and_the_way_out(tmp_path, damage):
    make_trainer(checkpoint_dir=tmp_path).fit()
    checkpoint = tmp_path / "last.pt"
    content = checkpoint.read_bytes()
    checkpoint.write_bytes(
        {"truncated": content[: len(content) // 2], "garbage": b"not a checkpoint", "empty": b""}[damage]
    )
    with pytest.raises(
        CheckpointError, match=rf"{re.escape(str(checkpoint))} cannot be read .*\(rm {re.escape(str(checkpoint))}\)"
    ):
        make_trainer(checkpoint_dir=tmp_path)


def test_batchnorm_reestimation_uses_the_data_and_spares_unreached_layers():
    torch.manual_seed(0)
    model = create_model("unetpp", in_channels=1, num_classes=1, width_mult=0.125, deep_supervision=True)
    images = 3.0 + 2.0 * torch.randn(8, 1, 32, 32)
    conv, first = model.encoder[0][0][0], model.encoder[0][0][1]  # X(0,0)'s first convolution and BatchNorm
    # L1 computes only the nodes X(0,0), X(1,0), X(0,1): the others keep their statistics.
    model.ds_mode = "L1"
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in norms]
    assert reestimate_batchnorm(model, images, batch_size=4) == len(norms)
    changed = [not torch.equal(m.running_mean, b) for m, b in zip(norms, before, strict=True)]
    assert 0 < sum(changed) < len(norms)
    assert not model.training and all(not m.training and m.momentum == 0.1 for m in norms)
    # The first BatchNorm sees the first convolution of the images: its mean is the batches' average.
    model.ds_mode = "average"
    reestimate_batchnorm(model, images, batch_size=4)
    with torch.no_grad():
        expected = torch.stack([conv(images[i : i + 4]).mean(dim=(0, 2, 3)) for i in (0, 4)]).mean(dim=0)
    torch.testing.assert_close(first.running_mean, expected, rtol=1e-4, atol=1e-5)


def test_non_finite_loss_stops_with_epoch_and_step():
    data = synthetic_data()
    data.train.images[5] = float("nan")
    trainer = make_trainer(data=data)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step \d+ of 4"):
        trainer.fit()


def test_dihedral_moves_image_and_mask_together():
    data = synthetic_data()
    images, masks = data.train.images[:8], data.train.masks[:8]
    new_images, new_masks, _ = random_dihedral(images, masks, None, torch.Generator().manual_seed(0))
    # The bright square stays under the mask: the transform is the same for image and mask.
    for i in range(8):
        assert new_masks[i].sum() == masks[i].sum()
        mean_inside = new_images[i, 0][new_masks[i] == 1].mean()
        mean_outside = new_images[i, 0][new_masks[i] == 0].mean()
        assert mean_inside > mean_outside + 1.0


def test_patches_and_sliding_window():
    data = synthetic_data(large_images=True)
    patches = random_patches(data.train, 16, 3, torch.Generator().manual_seed(0))
    assert patches.images.shape == (48, 1, 16, 16) and patches.masks.shape == (48, 16, 16)
    assert _tile_starts(32, 16) == [0, 8, 16] and _tile_starts(40, 16) == [0, 8, 16, 24] and _tile_starts(10, 16) == [0]
    model = create_model("unet", in_channels=1, num_classes=1, width_mult=0.125)
    logits = predict_logits(model, data.test.images, batch_size=4, tile=16)
    assert logits.shape == (6, 1, 32, 32) and torch.isfinite(logits).all()
    trainer = make_trainer(data=data)
    trainer.fit()
    assert trainer.train_samples == 4 * 32  # 16 images x 2 patches per epoch, 4 epochs


def test_device_resolution(monkeypatch):
    monkeypatch.delenv("UNET_REPRO_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device().type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("UNET_REPRO_DEVICE", "cpu")
    assert resolve_device() == torch.device("cpu")
    if not torch.cuda.is_available():
        monkeypatch.setenv("UNET_REPRO_DEVICE", "cuda")
        with pytest.raises(RuntimeError, match="UNET_REPRO_DEVICE.*CUDA is not available"):
            resolve_device()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="on the CPU the data never moves: needs a CUDA GPU")
def test_trainer_leaves_the_callers_data_on_the_cpu():
    """Trained on the GPU, the caller's data stays where it was and the predictions come back to the CPU."""
    data = synthetic_data()
    trainer = make_trainer(data=data, device="cuda")
    trainer.fit()
    result = trainer.evaluate(data.test)
    assert data.train.images.device.type == "cpu"
    assert result.predictions.device.type == "cpu"
    assert data.train.to(torch.device("cpu")) is data.train


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_run_draws_the_same_batches_and_agrees_with_the_cpu():
    """The data order and augmentation come from a CPU generator, so both devices see the same batches: the
    first epoch's loss agrees to float tolerance, and both runs learn the task."""
    settings = TrainSettings(epochs=20, batch_size=4, lr=0.01, weight_decay=0.0, patch_size=16, patches_per_image=2)
    cpu, gpu = make_trainer(settings=settings), make_trainer(settings=settings, device="cuda")
    cpu_history, gpu_history = cpu.fit(), gpu.fit()
    assert gpu_history[0]["train_loss"] == pytest.approx(cpu_history[0]["train_loss"], rel=1e-3)
    gpu.load_best()
    assert gpu.evaluate(gpu.data.test).summary["dice"] > 0.8


def test_keras_l2_on_kernels_replaces_the_weight_decay():
    """``l2_kernels``: Keras adds l2 * sum(w**2) to the loss, so Adam's step for a kernel equals that of the
    loss plus the penalty without weight decay; biases and transposed-conv kernels are not decayed."""
    settings = TrainSettings(
        epochs=1, batch_size=4, lr=0.01, weight_decay=0.5, patch_size=16, patches_per_image=2, l2_kernels=1e-4
    )
    model = create_model("unet", in_channels=1, num_classes=1, width_mult=0.125, norm=None, init="keras2018")
    groups = parameter_groups(model, settings)
    kernels = {id(p) for p in keras_l2_parameters(model)}
    assert [g["weight_decay"] for g in groups] == [2e-4, 0.0]
    assert {id(p) for p in groups[0]["params"]} == kernels
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
    x = torch.randn(2, 1, 32, 32)
    torch.manual_seed(0)
    twin = create_model("unet", in_channels=1, num_classes=1, width_mult=0.125, norm=None, init="keras2018")
    twin.load_state_dict(model.state_dict())
    decayed = torch.optim.Adam(groups, lr=0.01)
    penalised = torch.optim.Adam(twin.parameters(), lr=0.01)
    model.eval(), twin.eval()  # no dropout: the two losses see the same network
    model(x).mean().backward()
    (twin(x).mean() + 1e-4 * sum((p**2).sum() for p in keras_l2_parameters(twin))).backward()
    decayed.step(), penalised.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_lengths_in_optimizer_steps_round_up_to_whole_epochs():
    assert epochs_for_steps(1000, 469, 16) == 35  # DSB2018 at scale cpu: 29 steps an epoch
    assert epochs_for_steps(480, 140, 16) == 60  # PH2: 8 steps an epoch
    assert epochs_for_steps(2000, 700, 16) == 47  # Kvasir-SEG: 43 steps an epoch
    assert epochs_for_steps(10, 3, 16) == 10  # fewer samples than a batch: one step an epoch


def test_a_run_resumed_from_number_equivalent_code_says_so_in_its_record(tmp_path, monkeypatch):
    """A checkpoint written by earlier training code that results/provenance.csv proves number-equivalent resumes,
    and the run lists that code's version (``resumed_from_code``, kept in the checkpoint across later resumptions)."""
    import repro.training.identity as identity_module
    from repro.provenance import training_code_version

    settings = dataclasses.replace(SETTINGS, epochs=3)
    data = synthetic_data()
    old_identity = dataclasses.replace(identity_of(data, 0, settings), code_files={"repro/training/trainer.py": "1"})
    new_identity = dataclasses.replace(old_identity, code_files={"repro/training/trainer.py": "2"})
    old_version, new_version = (training_code_version(i.code_files) for i in (old_identity, new_identity))
    monkeypatch.setattr(identity_module, "read_log", lambda: [{"from_code": old_version, "to_code": new_version}])

    def trainer(identity):
        generator = seed_everything(0)
        model = create_model("unet", in_channels=1, num_classes=1, width_mult=0.125, norm="batch")
        return Trainer(model, data, settings, 0, generator, tmp_path, "cpu", identity)

    class Killed(Exception):
        pass

    def kill_after(epoch):
        def on_epoch(row):
            if row["epoch"] == epoch:
                raise Killed

        return on_epoch

    first = trainer(old_identity)
    with pytest.raises(Killed):
        first.fit(on_epoch=kill_after(1))
    assert first.resumed_from_code == []
    second = trainer(new_identity)
    assert second.resumed_from_code == [old_version] and second.resumed_after == [1]
    with pytest.raises(Killed):
        second.fit(on_epoch=kill_after(2))
    third = trainer(new_identity)
    assert third.resumed_from_code == [old_version] and third.resumed_after == [1, 2]
