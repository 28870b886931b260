"""One Trainer for several domains (3D U²-Net's universal model): which batches it takes, that each goes through its
own domain with its own loss, that each domain gets its own validation and record, and that a killed run resumes.
Tiny synthetic volumes; the real domains run in notebooks/train_universal.ipynb (nbval)."""

from __future__ import annotations

import pytest
import torch

from repro.data.loading import PreparedData, Split
from repro.models import create_model, output_channels
from repro.training.device import seed_everything
from repro.training.identity import RunIdentity
from repro.training.trainer import Trainer, TrainSettings

SETTINGS = TrainSettings(epochs=3, batch_size=2, lr=0.01, weight_decay=0.0, patch_size=8, patches_per_image=1)


def cubes(n: int, side: int, classes: int, seed: int) -> Split:
    """Noisy volumes, each with a bright cube of class 1 (and a dimmer one of class 2 when there are three)."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, side, side, side, dtype=torch.int64)
    for i in range(n):
        for label in range(1, classes):
            corner = torch.randint(0, side // 2, (3,), generator=generator).tolist()
            z, y, x = corner
            masks[i, z : z + side // 2, y : y + side // 2, x : x + side // 2] = label
    images = masks[:, None].float() + 0.3 * torch.randn(n, 1, side, side, side, generator=generator)
    return Split(images=images, masks=masks, valid=None, ids=[f"case{i}" for i in range(n)])


def domain(name: str, train: int, classes: int, side: int = 8) -> PreparedData:
    names = ["background", "one", "two"][:classes]
    return PreparedData(
        name=name,
        class_names=names,
        in_channels=1,
        large_images=False,
        train=cubes(train, side, classes, 0),
        val=cubes(2, side, classes, 1),
        test=cubes(2, side, classes, 2),
        volumetric=True,
    )


def universal_model(datas: list[PreparedData]) -> torch.nn.Module:
    return create_model(
        "u2net3d",
        in_channels=1,
        num_classes=output_channels(datas[0].num_classes),
        domains=len(datas),
        num_classes_per_domain=[output_channels(data.num_classes) for data in datas],
        levels=2,
        width_mult=0.25,
    )


def identity(seed: int) -> RunIdentity:
    return RunIdentity(
        dataset="a+b",
        dataset_definition={},
        model="u2net3d_universal",
        arch="u2net3d",
        options={},
        seed=seed,
        scale="test",
        scale_settings={},
        dataset_settings={},
        data_files={},
        code_files={},
        data_root="synthetic",
        git_commit="unknown",
    )


def universal_trainer(steps=(6, 3), seed=0, checkpoint_dir=None, settings=SETTINGS) -> Trainer:
    datas = [domain("a", train=4, classes=3), domain("b", train=3, classes=2, side=16)]
    generator = seed_everything(seed)
    model = universal_model(datas)
    run = identity(seed) if checkpoint_dir else None
    return Trainer(
        model, datas[0], settings, seed, generator, checkpoint_dir, identity=run, domains=datas[1:], domain_steps=steps
    )


def test_each_domain_gets_its_steps_spread_evenly_and_interleaved():
    trainer = universal_trainer(steps=(6, 3))
    per_epoch = [[domain for domain, _, _ in trainer._epoch_batches(epoch)] for epoch in (1, 2, 3)]
    assert per_epoch == [[0, 1, 0], [0, 1, 0], [0, 1, 0]]
    uneven = universal_trainer(steps=(7, 2))
    counts = [[domain for domain, _, _ in uneven._epoch_batches(epoch)].count(0) for epoch in (1, 2, 3)]
    assert sum(counts) == 7 and max(counts) - min(counts) <= 1
    assert sum([domain for domain, _, _ in uneven._epoch_batches(epoch)].count(1) for epoch in (1, 2, 3)) == 2


def test_a_domain_with_more_steps_than_one_pass_draws_a_new_order():
    trainer = universal_trainer(steps=(3, 9))  # domain b: 3 volumes, batch 2, so one pass is one batch
    batches = [(domain, index.tolist()) for domain, _, index in trainer._epoch_batches(1) if domain == 1]
    assert len(batches) == 3 and all(len(index) == 2 for _, index in batches)


def test_every_batch_runs_through_its_own_domain_with_its_own_loss():
    trainer = universal_trainer()
    seen = []
    original = trainer.model.forward

    def recording_forward(x, domain=None):
        seen.append((trainer.model.domain, tuple(x.shape[2:])))
        return original(x, domain)

    trainer.model.forward = recording_forward
    trainer.train_epoch(1)
    assert seen == [(0, (8, 8, 8)), (1, (16, 16, 16)), (0, (8, 8, 8))]
    assert [loss.base.num_classes for loss in trainer.losses] == [3, 2]
    assert trainer.optimizer_steps == 3 and trainer.train_samples == 6


def test_validation_scores_each_domain_and_selects_on_their_mean():
    trainer = universal_trainer()
    history = trainer.fit()
    for row in history:
        per_domain = [row["val_dice@a"], row["val_dice@b"]]
        assert row["val_dice"] == pytest.approx(sum(per_domain) / 2)
    best = max(history, key=lambda row: row["val_dice"])
    assert trainer.best_epoch == best["epoch"]
    for index, name in enumerate(("a", "b")):
        trainer.load_best()
        assert trainer.validate(index)["dice"] == pytest.approx(history[trainer.best_epoch - 1][f"val_dice@{name}"])


class Killed(Exception):
    """Stands for the run being killed after an epoch's checkpoint is written."""


def test_a_killed_universal_run_resumes_to_the_uninterrupted_result(tmp_path):
    uninterrupted = universal_trainer(checkpoint_dir=tmp_path / "whole")
    uninterrupted.fit()

    def kill_after_epoch_2(row):
        if row["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        universal_trainer(checkpoint_dir=tmp_path / "killed").fit(on_epoch=kill_after_epoch_2)
    resumed = universal_trainer(checkpoint_dir=tmp_path / "killed")
    assert resumed.resumed_after == [2]
    resumed.fit()

    def numbers(history):
        return [{k: v for k, v in row.items() if k not in ("seconds", "eval_seconds")} for row in history]

    assert numbers(resumed.history) == numbers(uninterrupted.history)
    for name, tensor in uninterrupted.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


@pytest.mark.parametrize(
    ("domains", "steps", "message"),
    [
        (1, (6, 3), "serves 1 domain"),
        (2, (6,), "domain_steps must give each"),
        (2, (2, 0), "domain_steps must give each"),
        (2, (2, 2), "domain_steps must give each"),  # 3 epochs: no domain has a step in every epoch
    ],
)
def test_a_universal_run_that_cannot_work_is_refused_before_training(domains, steps, message):
    datas = [domain("a", train=4, classes=3), domain("b", train=3, classes=2)]
    model = universal_model(datas[:domains] if domains == 1 else datas)
    with pytest.raises(ValueError, match=message):
        Trainer(model, datas[0], SETTINGS, 0, seed_everything(0), domains=datas[1:], domain_steps=steps)


def test_one_domain_takes_no_domain_steps():
    data = domain("a", train=4, classes=3)
    model = universal_model([data])
    with pytest.raises(ValueError, match="domain_steps is for several domains"):
        Trainer(model, data, SETTINGS, 0, seed_everything(0), domain_steps=(3,))


def test_the_domains_of_a_universal_run_share_a_batch_size(tmp_path):
    """One Trainer cuts every domain's batches at one size, so domains with their own, different batch sizes are
    refused before anything is built."""
    from repro.config import DatasetTraining
    from repro.training import run

    configs = run.resolve_domains(
        "msd-task04-hippocampus+la2018-atrium-lgemri",
        "u2net3d_universal",
        0,
        "smoke",
        None,
        str(tmp_path / "{dataset}"),
        1,
    )
    datas = [domain("msd-task04-hippocampus", train=4, classes=3), domain("la2018-atrium-lgemri", train=3, classes=2)]
    settings, steps = run.universal_settings(configs, datas)
    assert settings.batch_size == configs[0].scale.batch_size and len(steps) == 2
    configs[1].dataset_settings = DatasetTraining("la2018-atrium-lgemri", {}, 1, {"smoke": 2})
    with pytest.raises(ValueError, match="must share a batch size"):
        run.universal_settings(configs, datas)
