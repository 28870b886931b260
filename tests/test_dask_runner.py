"""The study runner (`python -m repro.study`) against real faults, on a real `dask scheduler` and two `dask worker`
processes on 127.0.0.1, in a copy of the repository with a tiny grid (smoke scale, 1 dataset x 1 variant x 3
seeds, 5 epochs so that a run is long enough to be hit mid-way).

- seed 0: its worker process is SIGKILLed once the run has written a checkpoint and before it has finished; the
  scheduler hands the run to another worker, which resumes it; its results must equal an undisturbed run's.
- seed 2: its checkpoint is corrupted beforehand, so the run fails in its notebook each time; it is reported with
  the executed notebook and the failing cell's error, after its retry, and the other runs are recorded.

And the checks made before any run: every problem of the grid and the cluster settings in one message, and an
unreachable scheduler, each as one clear error without a traceback.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from study_copy import ROOT, copy_repository, dask_cluster, dvc, lock_entries, run_python, stale, start_python

from repro.runner.cluster import (
    ClusterSettings,
    ParamsError,
    cluster_settings,
    job_script,
    read_cluster_file,
    start_cluster,
)
from repro.runner.execute import RunQueue, cell_error
from repro.runner.grid import GRID_STAGES, TRAIN_STAGES, Grid, check_grid, notebook_path, record_paths
from repro.runner.plan import missing_programs, plan, replacing, stale_train_stages
from repro.runner.progress import Progress, RunTimes
from repro.runner.stage_task import run_environment

GRID = {"datasets": ["ph2-dermoscopy"], "models": ["unet"], "seeds": [0, 1, 2]}
KILLED, GOOD, BROKEN = (f"train@ph2-dermoscopy-unet-{seed}" for seed in GRID["seeds"])
SMOKE_5_EPOCHS = {
    "image_size": 64,
    "large_image_scale": 0.25,
    "patch_size": 64,
    "patches_per_image": 2,
    "width_mult": 0.25,
    "epochs": 5,
    "batch_size": 8,
    "lr": 0.001,
    "weight_decay": 0.0,
    "max_train_images": 24,
    "max_eval_images": 12,
}


def _run_dir(copy, seed: int):
    return copy / f"results/smoke/runs/ph2-dermoscopy/unet/seed{seed}"


def _guard_of(copy, seed: int) -> psutil.Process | None:
    """The guard process (python -m repro.runner.stage_task) of the copy's run with this seed, once it runs. Only the
    copy's: a study training on the same machine has guards of its own, and killing one's worker would cost it."""
    for process in psutil.process_iter():
        try:
            command, cwd = process.cmdline(), process.cwd()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if "repro.runner.stage_task" in command and cwd == str(copy.resolve()) and f"seed{seed} " in command[-1] + " ":
            return process
    return None


@pytest.fixture(scope="module")
def faulty_grid(tmp_path_factory):
    copy = copy_repository(tmp_path_factory.mktemp("faults"), GRID, scales__smoke=SMOKE_5_EPOCHS)
    broken = copy / "checkpoints/ph2-dermoscopy/unet/seed2/smoke/last.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a checkpoint")
    checkpoint = copy / "checkpoints/ph2-dermoscopy/unet/seed0/smoke/last.pt"

    with dask_cluster(copy, workers=2) as (address, _):
        runner = start_python(copy, "-m", "repro.study", "--scheduler-address", address, "--retries", "1")
        deadline = time.monotonic() + 300
        while not checkpoint.exists():
            assert runner.poll() is None, runner.stdout.read()
            assert time.monotonic() < deadline, "seed 0 never wrote a checkpoint"
            time.sleep(0.02)
        guard = _guard_of(copy, 0)
        worker = guard.parent()
        assert "worker" in " ".join(worker.cmdline()) or "spawn" in " ".join(worker.cmdline())
        worker.send_signal(signal.SIGKILL)
        killed_mid_run = not (_run_dir(copy, 0) / "metrics.json").exists()
        psutil.wait_procs([guard], timeout=30)
        output = runner.communicate(timeout=600)[0]
    return copy, runner.returncode, output, killed_mid_run, guard


def test_killed_worker_run_is_resubmitted_and_recorded_once(faulty_grid):
    copy, returncode, output, killed_mid_run, guard = faulty_grid
    assert killed_mid_run, "the worker was killed after its run had finished: the test proves nothing"
    assert not guard.is_running(), "the killed worker's run went on, orphaned"
    assert f"resumed  {KILLED} on" in output, output
    assert returncode == 1, output  # seed 2 failed
    stale_runs = {name for name in stale(copy) if name.startswith("train@")}
    assert stale_runs == {BROKEN}
    for run in (KILLED, GOOD):
        assert lock_entries(copy, run) == 1, run
        assert sum(line.startswith(f"done     {run} ") for line in output.splitlines()) == 1, output
    assert lock_entries(copy, BROKEN) == 0


def test_failed_run_is_reported_with_its_cell_error_and_others_go_on(faulty_grid):
    copy, _, output, _, _ = faulty_grid
    notebook = copy / "results/smoke/notebooks/ph2-dermoscopy/unet/seed2/train.ipynb"
    error = cell_error(notebook)
    assert error and "Error" in error, error
    assert f"FAILED   {BROKEN} (after up to 2 attempt(s)): {error}" in output, output
    assert "notebook: " in output and "results/smoke/notebooks/ph2-dermoscopy/unet/seed2/train.ipynb" in output
    # The first attempt's cause, though the retry wrote its log over that attempt's: the error line of its log
    # (the notebook's cell error less its "cell In [N]: ").
    assert f"retry    {BROKEN} (attempt 2) on tcp://127.0.0.1:" in output
    logged = error.partition(": ")[2]
    assert logged.startswith("CheckpointError: ")
    assert any(
        line.startswith(f"retry    {BROKEN}") and line.endswith(f": attempt 1 failed: {logged}")
        for line in output.splitlines()
    ), output
    assert "trained now 2, up to date (skipped) 0, failed 1" in output
    assert "the aggregate was not updated" in output
    assert not (copy / "results/smoke/aggregate.ipynb").exists()
    assert output.strip().endswith(f"{BROKEN} failed: {error}")  # the cause last, where the eye lands


def _history(run_dir) -> list[dict]:
    with (run_dir / "history.csv").open() as handle:
        timings = ("seconds", "eval_seconds")
        return [{k: v for k, v in row.items() if k not in timings} for row in csv.DictReader(handle)]


def test_killed_run_equals_the_undisturbed_run(faulty_grid, monkeypatch):
    """Seeded CPU runs are bit-identical: the run resumed after the kill must match the same run trained in one
    go (test and validation metrics, the selected epoch, every epoch's loss, every test image's scores)."""
    copy, *_ = faulty_grid
    resumed = _run_dir(copy, 0)
    kept = copy / "resumed-run"
    shutil.copytree(resumed, kept)
    shutil.rmtree(copy / "checkpoints/ph2-dermoscopy/unet/seed0")
    # One thread, as the runner gives each run: another thread count sums in another order.
    monkeypatch.setenv("UNET_REPRO_THREADS", "1")
    dvc(copy, "repro", "--force", "--single-item", KILLED)

    before, after = (json.loads((folder / "metrics.json").read_text()) for folder in (kept, resumed))
    for key in ("test", "val", "best_epoch", "params", "flops", "n_images"):
        assert before[key] == after[key], key
    assert _history(kept) == _history(resumed)
    assert (kept / "per_image.csv").read_bytes() == (resumed / "per_image.csv").read_bytes()


# --- checks before any run ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bare_copy(tmp_path_factory):
    return copy_repository(tmp_path_factory.mktemp("checks"), GRID)


def test_every_problem_of_the_grid_and_cluster_in_one_message(bare_copy):
    params_file = bare_copy / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["scale"] = "smok"
    params["study"] = {
        "datasets": ["ph2-dermoscopi"],
        "models": ["unet", "unett", "typo_opt"],
        "seeds": [0, -1],
        "volumes": {"datasets": ["kvasir-seg"], "models": ["unet"]},
        "extra": {"datasets": ["ph2-dermoscopi", "msd-task04-hippocampus"], "models": ["unet"]},
        "ablations": {"datasets": [], "models": []},
        "controls": {"datasets": [], "models": []},
        "universal": {"domains": ["msd-task04-hippocampus", "la2018-atrium-lgemri"], "models": [], "independent": []},
    }
    params["models"]["typo_opt"] = {"arch": "unet", "blok": "cmrf"}
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    cluster_file = bare_copy / "cluster.yaml"
    original_cluster = cluster_file.read_text()
    cluster_file.write_text(yaml.safe_dump({"kind": "slurmm", "retries": -1, "threds": 2}))
    try:
        result = run_python(bare_copy, "-m", "repro.study")
    finally:
        params_file.write_text(original)
        cluster_file.write_text(original_cluster)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    message = result.stderr
    for expected in (
        "unknown scale 'smok'",
        "unknown dataset 'ph2-dermoscopi'; did you mean 'ph2-dermoscopy'?",
        "unknown model variant 'unett'; did you mean 'unet'?",
        "models.typo_opt (unet {'blok': 'cmrf'}): unknown option(s) ['blok']",
        "study.seeds: -1 is not",
        "study.volumes.datasets: 'kvasir-seg' holds 2D data, not volumes; list it in study.datasets",
        "study.volumes.models: 'unet' (unet) is a 2D network, not for volumes; list it in study.models",
        "study.extra.datasets: unknown dataset 'ph2-dermoscopi'",
        "study.extra.datasets: 'msd-task04-hippocampus' holds 3D data, not images; list it in study.volumes.datasets",
        "study.extra: 'unet' on 'ph2-dermoscopi' is already a run of study; list it once",
        "cluster.threds: unknown setting",
        "cluster.retries: -1 is not a whole number >= 0",
        "cluster.kind: unknown kind 'slurmm'; choose one of local, slurm, pbs, sge, lsf",
    ):
        assert expected in message, (expected, message)
    assert "params.yaml, cluster.yaml and the command line: 15 problem(s), nothing was run" in message
    assert not (bare_copy / "data/processed").exists() and not (bare_copy / "dvc.lock").exists()

    debug = run_python(bare_copy, "-m", "repro.study", "--debug", "--kind", "pbs")
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert "kind pbs needs the queue (partition)" in debug.stderr


def test_the_grid_knows_every_training_stage_of_dvc_yaml():
    """The runner and the committed-study checks find dvc.yaml's training stages through ``TRAIN_STAGES``: a training
    stage dvc.yaml had beside them would never run from `make study`, nor have its committed runs checked."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert tuple(name for name in stages if name.startswith("train")) == TRAIN_STAGES


def test_the_grid_trains_nnunet_as_a_block_after_the_volumetric_rows():
    """nnU-Net's stage is a block of the grid too, not one of the training stages that share train's code deps (the
    re-record rule's TRAIN_STAGES); within a seed it trains after the volumetric rows, which C14 compares it with."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert "nnunet" in stages and "nnunet" not in TRAIN_STAGES
    assert tuple(stage for stage in GRID_STAGES if stage != "nnunet") == TRAIN_STAGES
    assert GRID_STAGES.index("nnunet") == GRID_STAGES.index("train_volumes") + 1


def test_the_nnunet_stage_depends_on_the_settings_its_runs_read_not_on_its_seeds():
    """dvc.yaml's nnunet stage lists the keys of params.yaml's nnunet section that its runs read, not the whole
    section: adding a seed to nnunet.seeds must leave the other seeds' runs up to date. What it lists is all that
    repro.nnunet.load_settings reads: given only those keys, it reads the same settings at every scale."""
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["nnunet"]
    keys = ["nnunet.configuration", "nnunet.augmentation_workers", "nnunet.processes", "nnunet.scales.${scale}"]
    assert stage["do"]["params"] == ["scale", *keys]
    nnunet = pytest.importorskip("repro.nnunet")  # nnU-Net and torch: the settings as a run reads them
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    section = params["nnunet"]
    for scale in section["scales"]:
        listed = {key: section[key] for key in ("configuration", "augmentation_workers", "processes")}
        listed["scales"] = {scale: section["scales"][scale]}
        assert nnunet.load_settings(scale, {"nnunet": listed}) == nnunet.load_settings(scale, params), scale


def test_grid_takes_custom_datasets_and_refuses_one_listed_twice(tmp_path):
    """A dataset of prepare.custom_datasets is prepared by its own stage; listing it in prepare.datasets too is a
    problem found up front. (In a subprocess: loading the params registers the dataset for good.)"""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"]["custom_datasets"] = {
        "my-polyps": {
            "path": "../shared/datasets/my-polyps",
            "images": "images",
            "masks": "masks",
            "image_suffix": ".jpg",
            "mask_suffix": ".jpg",
            "in_channels": 3,
            "class_names": ["background", "polyp"],
            "threshold": 127,
        }
    }
    params["training"]["my-polyps"] = {"train_steps": {}, "eval_every": 1}  # a dataset that trains needs its entry
    params["study"]["datasets"] = ["kvasir-seg", "my-polyps"]
    params["study"]["extra"]["models"] = []
    params["study"]["ablations"]["models"] = []
    params["study"]["controls"]["models"] = []
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    code = (
        "import sys; from repro.runner.cluster import ParamsError; from repro.config import load_params\n"
        "from repro.runner.grid import check_grid\n"
        f"params = load_params({str(path)!r}); print(check_grid(params).describe())\n"
        "params['prepare']['datasets'].append('my-polyps')\n"
        "try: check_grid(params)\nexcept ParamsError as error: print(error)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    models, seeds = len(params["study"]["models"]), len(params["study"]["seeds"])
    assert f"2 dataset(s) x {models} variant(s) x {seeds} seed(s) = {2 * models * seeds} runs" in result.stdout
    assert "prepare.datasets: 'my-polyps' is also in prepare.custom_datasets" in result.stdout


def test_runs_are_kept_per_scale_and_the_stale_ones_of_this_scale_are_counted(tmp_path, monkeypatch):
    """Results lie below results/<scale>/: a study at smoke writes beside the runs of scale cpu, never over them.
    Before it starts, the runner counts the stale runs of its own scale that it replaces apart from the new ones."""
    grid = {"datasets": ["ph2-dermoscopy"], "models": ["unet", "tinyunet"], "seeds": [0]}
    copy = copy_repository(tmp_path / "copy", grid)
    for model, scale in (("unet", "cpu"), ("tinyunet", "smoke")):
        run = copy / "results" / scale / "runs" / "ph2-dermoscopy" / model / "seed0"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"scale": scale}))
    monkeypatch.chdir(copy)  # as `python -m repro.study` does: DVC resolves stage names from the working directory
    stages = stale_train_stages(copy, Grid("smoke", ("ph2-dermoscopy",), ("unet", "tinyunet"), (0,)))
    assert [stage.addressing for stage in stages] == ["train@ph2-dermoscopy-unet-0", "train@ph2-dermoscopy-tinyunet-0"]
    outs = {out.def_path for stage in stages for out in stage.outs}
    kinds = ("runs", "notebooks")
    assert outs == {f"results/smoke/{kind}/ph2-dermoscopy/{model}/seed0" for kind in kinds for model in grid["models"]}
    assert replacing(copy, stages) == 1  # smoke's tinyunet; cpu's unet is not this scale's
    line = plan(Grid("smoke", ("ph2-dermoscopy",), ("unet", "tinyunet"), (0,)), len(stages), 1)
    assert line == (
        "scale smoke: 2 of 2 training runs to run (1 new, 1 replacing stale runs of scale smoke; 0 up to date); "
        "results go to results/smoke/"
    )


def test_stale_runs_go_seed_by_seed_then_in_the_order_of_study_models(tmp_path, monkeypatch):
    """An interrupted study has every variant at the same number of seeds, and within a seed the variants the study
    lists first (its most important claims) have run first, whatever dvc.yaml's matrix order is; the extra rows
    (stage train_extra), the ablations (train_ablations), the controls (train_controls), then the volumetric rows
    (stage train_volumes) follow the images within each seed."""
    grid = Grid(
        "smoke",
        ("ph2-dermoscopy", "kvasir-seg"),
        ("tinyunet", "unet"),
        (0, 1),
        volume_datasets=("msd-task04-hippocampus",),
        volume_models=("unet3d",),
        extra_datasets=("ph2-dermoscopy",),
        extra_models=("light_unet",),
        ablation_datasets=("kvasir-seg",),
        ablation_models=("light_unet",),
        control_datasets=("ph2-dermoscopy",),
        control_models=("tinyunet_plain",),
    )
    study = {"datasets": list(grid.datasets), "models": list(grid.models), "seeds": [1, 0]}
    study["volumes"] = {"datasets": list(grid.volume_datasets), "models": list(grid.volume_models)}
    study["extra"] = {"datasets": list(grid.extra_datasets), "models": list(grid.extra_models)}
    study["ablations"] = {"datasets": list(grid.ablation_datasets), "models": list(grid.ablation_models)}
    study["controls"] = {"datasets": list(grid.control_datasets), "models": list(grid.control_models)}
    copy = copy_repository(tmp_path / "copy", study)
    monkeypatch.chdir(copy)
    stages = stale_train_stages(copy, grid)
    assert [stage.addressing for stage in stages] == [
        name
        for seed in (0, 1)
        for name in [f"train@{dataset}-{model}-{seed}" for model in grid.models for dataset in grid.datasets]
        + [
            f"train_extra@ph2-dermoscopy-light_unet-{seed}",
            f"train_ablations@kvasir-seg-light_unet-{seed}",
            f"train_controls@ph2-dermoscopy-tinyunet_plain-{seed}",
            f"train_volumes@msd-task04-hippocampus-unet3d-{seed}",
        ]
    ]
    # The other blocks' stages are `train` over other datasets and variants: the same command and outputs' layout.
    image, extra, ablation, control, volume = stages[0], *stages[4:8]
    assert extra.cmd == image.cmd.replace("tinyunet", "light_unet")
    assert ablation.cmd == extra.cmd.replace("ph2-dermoscopy", "kvasir-seg")
    assert control.cmd == image.cmd.replace("tinyunet", "tinyunet_plain")
    assert {out.def_path for out in control.outs} == {
        f"results/smoke/{kind}/ph2-dermoscopy/tinyunet_plain/seed0" for kind in ("runs", "notebooks")
    }
    assert volume.cmd == image.cmd.replace("ph2-dermoscopy", "msd-task04-hippocampus").replace("tinyunet", "unet3d")
    assert {out.def_path for out in volume.outs} == {
        f"results/smoke/{kind}/msd-task04-hippocampus/unet3d/seed0" for kind in ("runs", "notebooks")
    }
    assert grid.size == 16 and grid.describe() == (
        "2 dataset(s) x 2 variant(s) x 2 seed(s) + extra: 1 dataset(s) x 1 variant(s) x 2 seed(s) + ablations: "
        "1 dataset(s) x 1 variant(s) x 2 seed(s) + controls: 1 dataset(s) x 1 variant(s) x 2 seed(s) + volumes: "
        "1 dataset(s) x 1 variant(s) x 2 seed(s) = 16 runs at scale smoke"
    )


def test_a_universal_model_trains_once_per_seed_after_its_independent_models_on_each_domain(tmp_path, monkeypatch):
    """3D U²-Net's universal model is one stage per (variant, seed), last within each seed: one training of both
    domains, recorded under each domain beside its independent models' runs. Those are a block of their own
    (train_independent: each variant alone on each domain, after the volumetric rows), so that the volumetric rows
    may leave a domain out. Both stages have the train stage's code deps (one training code)."""
    domains = ("msd-task04-hippocampus", "la2018-atrium-lgemri")
    grid = Grid(
        "smoke",
        ("ph2-dermoscopy",),
        ("unet",),
        (0, 1),
        volume_datasets=domains[:1],
        volume_models=("unet3d",),
        universal_domains=domains,
        universal_models=("u2net3d_universal",),
        independent_models=("u2net3d",),
    )
    study = {"datasets": ["ph2-dermoscopy"], "models": ["unet"], "seeds": [0, 1]}
    study["volumes"] = {"datasets": list(domains[:1]), "models": ["unet3d"]}
    study["universal"] = {"domains": list(domains), "models": ["u2net3d_universal"], "independent": ["u2net3d"]}
    copy = copy_repository(tmp_path / "copy", study)
    monkeypatch.chdir(copy)
    stages = stale_train_stages(copy, grid)
    assert [stage.addressing for stage in stages] == [
        name
        for seed in (0, 1)
        for name in (
            f"train@ph2-dermoscopy-unet-{seed}",
            f"train_volumes@msd-task04-hippocampus-unet3d-{seed}",
            f"train_independent@msd-task04-hippocampus-u2net3d-{seed}",
            f"train_independent@la2018-atrium-lgemri-u2net3d-{seed}",
            f"train_universal@u2net3d_universal-{seed}",
        )
    ]
    image, volume, independent, atrium, universal = stages[:5]
    # The independent models' stage is `train` over the domains: the same command and outputs' layout.
    assert independent.cmd == volume.cmd.replace("unet3d", "u2net3d")
    assert atrium.cmd == independent.cmd.replace("msd-task04-hippocampus", "la2018-atrium-lgemri")
    assert {out.def_path for out in atrium.outs} == {
        f"results/smoke/{kind}/la2018-atrium-lgemri/u2net3d/seed0" for kind in ("runs", "notebooks")
    }
    assert {out.def_path for out in universal.outs} == {
        *(f"results/smoke/runs/{domain}/u2net3d_universal/seed0" for domain in domains),
        "results/smoke/notebooks/msd-task04-hippocampus+la2018-atrium-lgemri/u2net3d_universal/seed0",
    }

    def code(stage):
        return {dep.def_path for dep in stage.deps if not dep.def_path.startswith(("data/", "params.yaml"))}

    assert code(independent) == code(atrium) == code(universal) == code(image)
    assert "-p datasets msd-task04-hippocampus+la2018-atrium-lgemri" in universal.cmd
    assert grid.describe() == (
        "1 dataset(s) x 1 variant(s) x 2 seed(s) + volumes: 1 dataset(s) x 1 variant(s) x 2 seed(s) + independent: "
        "2 dataset(s) x 1 variant(s) x 2 seed(s) + universal: 2 domains together x 1 variant(s) x 2 seed(s) = 10 runs "
        "at scale smoke"
    )


def test_nnunet_trains_its_own_seeds_seed_by_seed_after_the_volumetric_rows(tmp_path, monkeypatch):
    """nnU-Net's runs (stage nnunet, one per seed of nnunet.seeds, named nnunet@<seed>) are a block of the grid with
    seeds of its own: the runner goes seed by seed over the study's seeds, then the seeds only nnU-Net has, and
    within a seed nnU-Net trains after the volumetric rows. Its stage's outputs are where record_paths and
    notebook_path look (results/<scale>/runs|notebooks/msd-task04-hippocampus/nnunet/seed<k>/), and its `done` line
    gives its test Dice."""
    from repro.runner.execute import _test_dice

    grid = Grid(
        "smoke",
        ("ph2-dermoscopy",),
        ("unet",),
        (1, 0),
        volume_datasets=("msd-task04-hippocampus",),
        volume_models=("unet3d",),
        nnunet_seeds=(0, 2),
    )
    study = {"datasets": ["ph2-dermoscopy"], "models": ["unet"], "seeds": [1, 0]}
    study["volumes"] = {"datasets": ["msd-task04-hippocampus"], "models": ["unet3d"]}
    copy = copy_repository(tmp_path / "copy", study, nnunet__seeds=[0, 2])
    monkeypatch.chdir(copy)
    stages = stale_train_stages(copy, grid)
    assert [stage.addressing for stage in stages] == [
        "train@ph2-dermoscopy-unet-1",
        "train_volumes@msd-task04-hippocampus-unet3d-1",
        "train@ph2-dermoscopy-unet-0",
        "train_volumes@msd-task04-hippocampus-unet3d-0",
        "nnunet@0",
        "nnunet@2",
    ]
    nnunet = stages[4]
    results = copy / "results/smoke"
    (record,) = record_paths(results, "msd-task04-hippocampus", "nnunet", 0)
    notebook = notebook_path(results, "nnunet", "msd-task04-hippocampus", "nnunet", 0)
    assert {copy / out.def_path for out in nnunet.outs} == {record.parent, notebook.parent}
    assert f"papermill notebooks/nnunet.ipynb {notebook.relative_to(copy)} " in nnunet.cmd
    assert grid.size == 6 and grid.describe() == (
        "1 dataset(s) x 1 variant(s) x 2 seed(s) + volumes: 1 dataset(s) x 1 variant(s) x 2 seed(s) + nnunet: "
        "1 dataset(s) x 1 variant(s) x 2 seed(s) = 6 runs at scale smoke"
    )
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"test": {"dice": 0.8765}, "model": "nnunet", "train_seconds": 60.0}))
    assert _test_dice(copy, nnunet) == ("test Dice 0.8765", json.loads(record.read_text()))
    # A grid whose nnU-Net has no seed has no nnU-Net block.
    assert all(stage != "nnunet" for stage, *_ in Grid("smoke", ("ph2-dermoscopy",), ("unet",), (0,)).runs())


def test_the_nnunet_block_is_checked_with_the_rest_of_the_grid(monkeypatch):
    """nnunet.seeds are checked as study.seeds are; with seeds, nnU-Net's dataset must be registered and prepared by
    a stage (its split), its stage's keys and its entry for the scale be there, and no variant named nnunet may train
    on its dataset (its folders)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert check_grid(params).nnunet_seeds == ()
    params["nnunet"]["seeds"] = [2, 0]
    assert check_grid(params).nnunet_seeds == (2, 0)
    params["nnunet"]["seeds"] = [0, -1, "1", 0]
    del params["nnunet"]["processes"]
    del params["nnunet"]["scales"][params["scale"]]
    params["models"]["nnunet"] = {"arch": "unet3d"}
    params["study"]["volumes"]["models"] = ["nnunet"]
    _grid_refusal(
        params,
        "nnunet.seeds lists ['0'] more than once",
        "nnunet.seeds: -1 is not a whole number from 0 to 2**32 - 1",
        "nnunet.seeds: '1' is not a whole number",
        "nnunet.processes is missing; dvc.yaml's nnunet stage reads it",
        f"nnunet.scales has no entry for scale '{params['scale']}'",
        "study.volumes.models: 'nnunet' on 'msd-task04-hippocampus' is a run of nnU-Net's stage (nnunet.seeds)",
    )
    prepared = params["prepare"]["datasets"]
    params["prepare"]["datasets"] = [name for name in prepared if name != "msd-task04-hippocampus"]
    with pytest.raises(
        ParamsError,
        match=r"nnunet: its dataset 'msd-task04-hippocampus' is not in prepare.datasets, "
        r"so no stage writes its split \(data/splits/msd-task04-hippocampus.json\)",
    ):
        check_grid(params)
    params["prepare"]["datasets"] = prepared
    monkeypatch.setattr("repro.runner.grid.list_datasets", lambda: ["ph2-dermoscopy"])
    with pytest.raises(ParamsError, match="nnunet: its dataset 'msd-task04-hippocampus' is not registered"):
        check_grid(params)
    params["nnunet"] = {"configuration": "3d_fullres"}
    with pytest.raises(ParamsError, match=r"nnunet.seeds must be a list; got None"):
        check_grid(params)


def test_the_universal_block_is_checked_with_the_rest_of_the_grid():
    """Its domains are volumes, exactly two (the stage's pair), and its variants build with two domains and do not
    share a folder with a volumetric row."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["study"]["volumes"] = {"datasets": ["msd-task04-hippocampus"], "models": ["u2net3d"]}
    params["study"]["universal"] = {
        "domains": ["msd-task04-hippocampus", "kvasir-seg", "la2018-atrium-lgemri"],
        "models": ["unet3d", "u2net3d"],
        "independent": [],
    }
    _grid_refusal(
        params,
        "study.universal.domains must name 2 datasets",
        "study.universal.datasets: 'kvasir-seg' holds 2D data, not volumes",
        "models.unet3d (unet3d {'width_mult': 0.25}): unknown option(s) ['domains']",
        "study.universal.models: 'u2net3d' is also in study.volumes.models, whose runs of msd-task04-hippocampus "
        "would share its folders",
    )
    params["study"]["universal"] = {
        "domains": ["msd-task04-hippocampus", "la2018-atrium-lgemri"],
        "models": [],
        "independent": [],
    }
    params["study"]["volumes"]["models"] = []
    assert check_grid(params).universal_domains == ("msd-task04-hippocampus", "la2018-atrium-lgemri")


def test_the_controls_are_checked_as_the_other_image_blocks_and_train_after_the_ablations():
    """study.controls (stage train_controls) is read by dvc.yaml, so it must be there; its variants are checked as
    those of the other image blocks, and a run it shares with another image block is refused (two stages, one
    folder). Within a seed its runs train after the ablations, before the volumetric rows."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["study"]["volumes"]["models"] = ["unet3d"]
    params["study"]["controls"] = {
        "datasets": ["covid19-ct-medseg-infnet", "ph2-dermoscopy"],
        "models": ["tinyunet_plain", "tinyunet", "tinyunet_plainn", "unet3d"],
    }
    message = _grid_refusal(
        params,
        "study.controls: 'tinyunet' on 'ph2-dermoscopy' is already a run of study; list it once",
        "study.controls: 'tinyunet' on 'covid19-ct-medseg-infnet' is already a run of study.ablations; list it once",
        "study.controls.models: unknown model variant 'tinyunet_plainn'; did you mean 'tinyunet_plain'?",
        "study.controls.models: 'unet3d' (unet3d) is a 3D network, not for images; list it in study.volumes.models",
    )
    assert "'tinyunet_plain' on" not in message, message

    params["study"]["controls"]["models"] = ["tinyunet_plain"]
    runs = check_grid(params).runs()
    first_seed = [run for run in runs if run[3] == params["study"]["seeds"][0]]
    stages = list(dict.fromkeys(stage for stage, *_ in first_seed))
    assert stages == ["train", "train_extra", "train_ablations", "train_controls", "train_volumes"]
    assert [run[1:3] for run in first_seed if run[0] == "train_controls"] == [
        ("covid19-ct-medseg-infnet", "tinyunet_plain"),
        ("ph2-dermoscopy", "tinyunet_plain"),
    ]

    del params["study"]["controls"]
    with pytest.raises(ParamsError, match=r"study.controls must be a mapping with datasets and models, which "):
        check_grid(params)


def test_the_independent_models_are_checked_with_the_rest_of_the_grid():
    """The universal block's independent models (study.universal.independent) are 3D networks that build for its
    domains, and no run of theirs is a run of the volumetric rows or of a universal model (two stages, one folder).
    A problem of the domains both lists share is listed once."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["study"]["volumes"] = {"datasets": ["msd-task04-hippocampus"], "models": ["unet3d"]}
    params["study"]["universal"] = {
        "domains": ["msd-task04-hippocampus", "kvasir-seg"],
        "models": ["u2net3d_universal"],
        "independent": ["unet", "u2net3dd", "unet3d", "u2net3d_universal", "u2net3d"],
    }
    message = _grid_refusal(
        params,
        "study.universal.independent: 'unet' (unet) is a 2D network, not for volumes; list it in study.models",
        "study.universal.independent: unknown model variant 'u2net3dd'; did you mean 'u2net3d'?",
        "study.universal.independent: 'unet3d' on 'msd-task04-hippocampus' is already a run of study.volumes; "
        "list it once",
        "study.universal.independent: 'u2net3d_universal' is also in study.universal.models, whose runs of "
        "msd-task04-hippocampus, kvasir-seg would share its folders; give the universal model its own variant name",
    )
    assert message.count("study.universal.datasets: 'kvasir-seg' holds 2D data, not volumes") == 1, message
    assert "'unet3d' on 'kvasir-seg'" not in message and "'u2net3d' on" not in message, message
    assert "study.universal.independent: 'u2net3d'" not in message, message

    del params["study"]["universal"]["independent"]
    with pytest.raises(ParamsError, match=r"study.universal.independent must be a list; got None"):
        check_grid(params)
    params["study"]["universal"] = ["u2net3d_universal"]
    with pytest.raises(ParamsError, match=r"study.universal must be a mapping with domains, models and independent"):
        check_grid(params)

    # grids.volumes: the volumetric rows on Hippocampus, the universal model and its independent one on both domains.
    params["study"] |= params["grids"]["volumes"]
    grid = check_grid(params)
    assert grid.independent_models == ("u2net3d",) and grid.volume_datasets == ("msd-task04-hippocampus",)
    assert [(stage, dataset, model) for stage, dataset, model, seed in grid.runs() if seed == 0][-7:] == [
        ("train_volumes", "msd-task04-hippocampus", model)
        for model in ("unet3d", "unet2d_slices", "segresnet", "segresnet_vae")
    ] + [
        ("train_independent", "msd-task04-hippocampus", "u2net3d"),
        ("train_independent", "la2018-atrium-lgemri", "u2net3d"),
        ("train_universal", "msd-task04-hippocampus+la2018-atrium-lgemri", "u2net3d_universal"),
    ]


def test_eta_weighs_each_run_left_by_the_time_of_its_own_cell():
    """The variants' costs differ up to ten-fold: the ETA sums each run's own cell's time (else its dataset's), less
    what a running run has done, over the cluster's slots; a resumed run's short time teaches it nothing."""
    times = RunTimes()
    times.add(("ph2-dermoscopy", "unet"), 100.0)
    times.add(("kvasir-seg", "unetpp"), 1000.0)
    assert times.expected(("kvasir-seg", "unet")) == 1000.0  # an unseen variant: its dataset's mean
    assert times.expected(("dsb2018-nuclei-96", "fcn")) == 550.0  # an unseen dataset: every run's mean
    assert RunTimes().expected(("ph2-dermoscopy", "unet")) is None
    cells = {
        "train@ph2-dermoscopy-unet-1": ("ph2-dermoscopy", "unet"),
        "train@ph2-dermoscopy-unet-2": ("ph2-dermoscopy", "unet"),
        "train@kvasir-seg-unetpp-1": ("kvasir-seg", "unetpp"),
    }
    progress = Progress(cells, times)
    assert progress._eta() == "20 min 0 s"  # 100 + 100 + 1000 s on one slot; a plain mean would say 3 x 550 s
    progress.finished("train@ph2-dermoscopy-unet-1", 300.0, "done", True)
    assert times.expected(("ph2-dermoscopy", "unet")) == 200.0
    assert progress._eta() == "20 min 0 s"  # 200 + 1000 s
    progress.finished("train@ph2-dermoscopy-unet-2", 10.0, "done", True, whole=False)  # resumed: its last epochs
    assert times.expected(("ph2-dermoscopy", "unet")) == 200.0
    assert progress._eta() == "16 min 40 s"
    progress.on_event(("t", {"stage": "train@kvasir-seg-unetpp-1", "event": "start", "worker": "w"}))
    progress.running["train@kvasir-seg-unetpp-1"] -= 400.0  # it started 400 s ago
    assert progress._eta() == "10 min 0 s"
    progress.tick(2)
    assert progress._eta() == "5 min 0 s"


def test_eta_of_a_resumed_study_starts_from_its_recorded_runs(tmp_path):
    """A second call to the runner knows the up-to-date runs' times from their executed notebooks (papermill records
    each one's duration); stale runs and runs resumed from a checkpoint are left out."""
    grid = Grid("smoke", ("ph2-dermoscopy",), ("unet",), (0, 1, 2))
    for seed, duration, metrics in ((0, 123.5, {}), (1, 10.0, {"resumed_after_epochs": [3]}), (2, 99.0, {})):
        for kind, name, data in (
            ("runs", "metrics.json", metrics),
            ("notebooks", "train.ipynb", {"metadata": {"papermill": {"duration": duration}}, "cells": []}),
        ):
            path = tmp_path / "results/smoke" / kind / f"ph2-dermoscopy/unet/seed{seed}" / name
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(data))
    times = RunTimes.of_recorded_runs(tmp_path, grid, stale={"train@ph2-dermoscopy-unet-2"})
    assert times.by_cell == {("ph2-dermoscopy", "unet"): [123.5]}


def test_eta_of_a_resumed_study_counts_a_universal_run_once_from_its_notebook(tmp_path):
    """A universal run's records lie under each of its domains and its executed notebook (train_universal.ipynb) in
    the domains' joint folder; it is timed once, as one run of its cell, when it has both records."""
    domains = ("msd-task04-hippocampus", "la2018-atrium-lgemri")
    grid = Grid("smoke", ("ph2-dermoscopy",), ("unet",), (0, 1), universal_domains=domains, universal_models=("u2",))
    joined = "+".join(domains)
    for seed, records in ((0, domains), (1, domains[:1])):  # seed 1 has only its first record: not finished
        for domain in records:
            path = tmp_path / f"results/smoke/runs/{domain}/u2/seed{seed}/metrics.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps({"domains": list(domains), "dataset": domain}))
        notebook = tmp_path / f"results/smoke/notebooks/{joined}/u2/seed{seed}/train_universal.ipynb"
        notebook.parent.mkdir(parents=True)
        notebook.write_text(json.dumps({"metadata": {"papermill": {"duration": 321.0}}, "cells": []}))
    times = RunTimes.of_recorded_runs(tmp_path, grid, stale=set())
    assert times.by_cell == {(joined, "u2"): [321.0]}


def test_eta_of_nnunet_runs_is_their_own_and_they_are_timed_by_their_notebook(tmp_path):
    """nnU-Net trains by a schedule of its own: its runs are timed by their own cell (else every run's mean), never as
    their dataset's other variants are, nor those by nnU-Net's; a resumed study times its committed nnU-Net runs from
    their executed notebooks (nnunet.ipynb)."""
    hippocampus = "msd-task04-hippocampus"
    grid = Grid("smoke", ("ph2-dermoscopy",), ("unet",), (0, 1), (hippocampus,), ("unet3d",), nnunet_seeds=(0, 1))
    for seed in (0, 1):
        path = tmp_path / f"results/smoke/runs/{hippocampus}/nnunet/seed{seed}/metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"model": "nnunet"}))
        notebook = tmp_path / f"results/smoke/notebooks/{hippocampus}/nnunet/seed{seed}/nnunet.ipynb"
        notebook.parent.mkdir(parents=True)
        notebook.write_text(json.dumps({"metadata": {"papermill": {"duration": 5000.0 + seed}}, "cells": []}))
    times = RunTimes.of_recorded_runs(tmp_path, grid, stale={"nnunet@1"})
    assert times.by_cell == {(hippocampus, "nnunet"): [5000.0]}
    assert times.expected((hippocampus, "unet3d")) == 5000.0  # no run of its dataset but nnU-Net's: every run's mean
    times.add((hippocampus, "unet3d"), 100.0)
    times.add(("ph2-dermoscopy", "unet"), 300.0)
    assert times.expected((hippocampus, "segresnet")) == 100.0  # its dataset's, without nnU-Net's
    assert times.expected((hippocampus, "nnunet")) == 5000.0
    fresh = RunTimes()
    fresh.add((hippocampus, "unet3d"), 100.0)
    fresh.add(("ph2-dermoscopy", "unet"), 300.0)
    assert fresh.expected((hippocampus, "nnunet")) == 200.0  # no nnU-Net run yet: every run's mean


def test_the_done_line_shows_each_domains_test_dice_of_a_universal_run(tmp_path):
    """A universal run writes one record per domain: its `done` line gives each domain's test Dice, not the first's."""
    import types

    from repro.runner.execute import _test_dice

    def stage(*outs):
        return types.SimpleNamespace(outs=[types.SimpleNamespace(def_path=out) for out in outs])

    domains = ("msd-task04-hippocampus", "la2018-atrium-lgemri")
    folders = [f"results/smoke/runs/{domain}/u2/seed0" for domain in domains]
    for folder, dice in zip(folders, (0.8456, 0.8123), strict=True):
        (tmp_path / folder).mkdir(parents=True)
        record = {"test": {"dice": dice}, "domains": list(domains), "resumed_after_epochs": None}
        (tmp_path / folder / "metrics.json").write_text(json.dumps(record))
    (tmp_path / "results/smoke/notebooks" / "+".join(domains) / "u2/seed0").mkdir(parents=True)
    text, metrics = _test_dice(tmp_path, stage(*folders, "results/smoke/notebooks/" + "+".join(domains) + "/u2/seed0"))
    assert text == "test Dice la2018-atrium-lgemri 0.8123, msd-task04-hippocampus 0.8456"
    assert metrics["resumed_after_epochs"] is None
    one = "results/smoke/runs/ph2-dermoscopy/unet/seed0"
    (tmp_path / one).mkdir(parents=True)
    (tmp_path / one / "metrics.json").write_text(json.dumps({"test": {"dice": 0.9}}))
    assert _test_dice(tmp_path, stage(one))[0] == "test Dice 0.9000"


def _grid_refusal(params: dict, *expected: str) -> str:
    """The message of check_grid's refusal of ``params``, which must list every problem in ``expected``."""
    with pytest.raises(ParamsError) as raised:
        check_grid(params)
    message = str(raised.value)
    for problem in expected:
        assert problem in message, (problem, message)
    return message


def _started_at(seconds: float) -> float:
    """A stand-in run: when it started, after which it takes ``seconds``."""
    start = time.time()
    time.sleep(seconds)
    return start


def test_runs_start_in_the_runners_order_each_on_a_free_slot(tmp_path):
    """Three datasets' runs (three Dask task groups), the first one long, on two 1-thread workers: every run starts in
    the runner's order, the later ones on the worker left free. Given all the runs at once, Dask would send each
    group's first runs to both workers, some to wait behind the long run while the other worker took later ones."""
    cluster, client = start_cluster(cluster_settings({}, {"workers": 2, "dashboard_address": "127.0.0.1:0"}), tmp_path)
    runs = [f"train@{dataset}-unet-{seed}" for seed in range(3) for dataset in ("ph2-dermoscopy", "kvasir-seg", "dsb")]
    seconds = dict.fromkeys(runs, 0.3) | {runs[0]: 5.0}
    queue = RunQueue(runs, lambda run: client.submit(_started_at, seconds[run], key=run))
    try:
        started, most_at_once = {}, 0
        while queue:
            for future in queue.step(slots=2, timeout=0.05):
                started[future.key] = future.result()
            most_at_once = max([most_at_once, *map(len, client.processing().values())])
        order = sorted(started, key=started.get)
        assert set(order[:2]) == set(runs[:2]) and order[2:] == runs[2:]  # the first two start together
        assert max(started.values()) < started[runs[0]] + seconds[runs[0]]  # none waited for the long run
        assert most_at_once == 1  # never a second run queued behind a worker's first
    finally:
        client.close()
        cluster.close()


def test_a_local_cluster_leaves_the_runners_environment_alone(tmp_path, monkeypatch):
    """The nannies of a local cluster run in the runner's process; Dask's default has them write OMP_NUM_THREADS=1
    and MALLOC_TRIM_THRESHOLD_ into its os.environ, which every later command of the runner (and of a test session:
    a resumed-run subprocess, the nbval kernels) would inherit."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")
    for name in names:
        monkeypatch.delenv(name, raising=False)  # and monkeypatch puts back what was there, even if this test fails
    cluster, client = start_cluster(cluster_settings({}, {"workers": 1, "dashboard_address": "127.0.0.1:0"}), tmp_path)
    try:
        assert {name: os.environ.get(name) for name in names} == dict.fromkeys(names)
    finally:
        client.close()
        cluster.close()


def test_a_local_cluster_does_not_profile_or_tick_fast_while_it_waits_on_runs(tmp_path):
    """Dask's profiler (every 10 ms) and event-loop checks (every 20 ms) took 13% of one core from the runs on a
    2-core machine; the scheduler and every worker, also one a nanny restarts, start without them."""
    cluster, client = start_cluster(cluster_settings({}, {"workers": 2, "dashboard_address": "127.0.0.1:0"}), tmp_path)
    try:

        def monitoring(dask_worker):
            return "profile" in dask_worker.periodic_callbacks, dask_worker._tick_interval

        assert list(client.run(monitoring).values()) == [(False, 1.0), (False, 1.0)]
        assert cluster.scheduler._tick_interval == 1.0
        client.restart()
        assert list(client.run(monitoring).values()) == [(False, 1.0), (False, 1.0)]
    finally:
        client.close()
        cluster.close()


def test_a_run_gets_its_threads_and_glibc_malloc_not_the_nannys(monkeypatch):
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_ for its workers; in a training run it turns every large tensor into
    an mmap and a page fault per step (UNet++: 0.80 s of a 2 s step in the kernel), so the run's command drops it."""
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    env = run_environment(1)
    assert "MALLOC_TRIM_THRESHOLD_" not in env
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["UNET_REPRO_THREADS"] == env["OMP_NUM_THREADS"] == "1" and env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert run_environment(3, gpu="1")["CUDA_VISIBLE_DEVICES"] == "1"


def test_the_guard_gives_a_run_the_threads_the_training_reads_and_imports_no_torch(monkeypatch):
    """A run in the environment the guard gives it trains on the runner's thread count (``set_threads`` with no
    argument, as the notebooks call it); the guard's module, which every Dask worker imports, imports no torch."""
    import torch

    from repro.training.device import set_threads

    monkeypatch.setattr(os, "environ", run_environment(3))
    before = torch.get_num_threads()
    try:
        assert set_threads() == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    code = "import sys, repro.runner.stage_task as m; assert 'torch' not in sys.modules, m.__name__ + ' imports torch'"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_runner_whose_environment_is_not_activated_still_finds_papermill(tmp_path, monkeypatch):
    """`.venv/bin/python -m repro.study` with a PATH that lacks .venv/bin: every run once failed at its start with
    status 127. Each run now gets its worker's scripts folder first on PATH, and a program found nowhere is a
    problem reported before anything runs."""
    scripts = tmp_path / "env" / "bin"
    scripts.mkdir(parents=True)
    monkeypatch.setattr(sys, "executable", str(scripts / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    local = cluster_settings({}, {})
    [problem] = missing_programs(local)
    assert "`papermill`" in problem and str(scripts / "python") in problem and "make env" in problem
    assert missing_programs(cluster_settings({}, {"scheduler_address": "tcp://127.0.0.1:8786"})) == []

    papermill = scripts / "papermill"
    papermill.write_text("#!/bin/sh\necho papermill from the environment\n")
    papermill.chmod(0o755)
    assert missing_programs(local) == []
    env = run_environment(1)
    found = subprocess.run("papermill", shell=True, env=env, capture_output=True, text=True)
    assert found.stdout == "papermill from the environment\n"


def test_unreachable_scheduler_is_one_clear_error(bare_copy):
    result = run_python(bare_copy, "-m", "repro.study", "--scheduler-address", "tcp://127.0.0.1:9")
    assert result.returncode == 2
    assert "error: cluster:\n  - cannot reach the Dask scheduler at tcp://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (bare_copy / "data/processed").exists()


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"kind": "lsf", "queue": "gpu", "walltime": "4h"}, "cluster.walltime: '4h' is not like 04:00:00"),
        ({"kind": "slurm", "queue": "gpu", "runs_per_gpu": 4}, "gpus_per_job is 0: no job would have a GPU"),
        ({"runs_per_gpu": 4}, "cluster.gpus is 0: no local worker would have a GPU"),
        ({"kind": "sge", "queue": "q", "memory": "lots"}, "cluster.memory: 'lots' is not a size like 16GB"),
        ({"scheduler_address": "10.0.0.5:8786"}, "is not like tcp://host:8786"),
        ({"kind": "slurm", "queue": "q", "cores": 3, "workers_per_job": 2}, "must be a multiple of workers_per_job"),
    ],
)
def test_bad_cluster_settings(section, expected):
    with pytest.raises(ParamsError, match=re.escape(expected)) as caught:
        cluster_settings(section)
    assert caught.value.section == "cluster"


def test_the_committed_cluster_file_holds_valid_settings_and_no_stage_reads_it():
    settings = read_cluster_file(ROOT)
    assert settings and cluster_settings(settings) == ClusterSettings(**settings)
    assert "cluster" not in yaml.safe_load((ROOT / "params.yaml").read_text())
    assert "cluster.yaml" not in (ROOT / "dvc.yaml").read_text()


def test_a_cluster_file_that_is_not_a_mapping_is_named(tmp_path):
    assert read_cluster_file(tmp_path) == {}  # no file: every default holds
    (tmp_path / "cluster.yaml").write_text("- kind: slurm\n")
    with pytest.raises(ParamsError, match=r"cluster.yaml: expected a mapping of settings \(key: value\), got list"):
        read_cluster_file(tmp_path)
    (tmp_path / "cluster.yaml").write_text("kind: [local\n")
    with pytest.raises(ParamsError, match="cluster.yaml: not valid YAML"):
        read_cluster_file(tmp_path)


def test_gpu_share_fits_exactly():
    """runs_per_gpu runs fit in one GPU whatever the count (1.0 - 9 * (1/9) alone is below 1/9)."""
    for runs in range(1, 65):
        share = cluster_settings({"gpus": 1, "runs_per_gpu": runs}).run_resources["GPU"]
        left, fitted = 1.0, 0
        while left >= share:
            left, fitted = left - share, fitted + 1
        assert fitted == runs


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("slurm", ["#SBATCH -p gpu", "#SBATCH -A lab", "#SBATCH -t 12:00:00", "#SBATCH --gres=gpu:1"]),
        ("pbs", ["#PBS -q gpu", "#PBS -A lab", "walltime=12:00:00", "#PBS --gres=gpu:1"]),
        ("sge", ["#$ -q gpu", "#$ -P lab", "h_rt=12:00:00", "#$ --gres=gpu:1"]),
        ("lsf", ["#BSUB -q gpu", '#BSUB -P "lab"', "#BSUB -W 12:00", "#BSUB --gres=gpu:1"]),
    ],
)
def test_batch_job_scripts_carry_every_setting(kind, expected, tmp_path):
    """The job script of each batch kind (nothing submitted): queue, account, walltime, directives, the prologue,
    two workers of seven threads, each advertising half of the job's GPU, TLS certificates."""
    settings = ClusterSettings(
        kind=kind,
        queue="gpu",
        account="lab",
        cores=14,
        memory="64GB",
        walltime="12:00:00" if kind != "lsf" else "12:00",
        job_directives=["--gres=gpu:1"],
        prologue=["source .venv/bin/activate"],
        workers_per_job=2,
        gpus_per_job=1,
        runs_per_gpu=7,
        tls=True,
        dashboard_address="127.0.0.1:0",  # not a running study's 8787
    )
    script = job_script(settings, tmp_path)
    quiet = [
        "export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False",
        "export DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL=1s",
    ]
    prologue = "source .venv/bin/activate"
    for line in [*expected, *quiet, prologue, "--nthreads 7", "--resources GPU=0.5", "--tls-ca-file"]:
        assert line in script, (line, script)
    assert script.index(quiet[0]) < script.index(prologue)  # the user's prologue can override
    assert "tls://127.0.0.1:" in script


def test_guard_ends_the_command_when_its_worker_goes(tmp_path):
    """The guard between a worker and a run: closing its stdin (what a SIGKILLed worker's death does) ends the
    whole command, here a shell and its sleeping child."""
    marker = tmp_path / "child.pid"
    guard = subprocess.Popen(
        [sys.executable, "-m", "repro.runner.stage_task", f"sh -c 'echo $$ > {marker}; exec sleep 300'"],
        stdin=subprocess.PIPE,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 30
    while not (marker.exists() and marker.read_text().strip()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = psutil.Process(int(marker.read_text()))
    guard.stdin.close()
    assert guard.wait(timeout=30) != 0
    psutil.wait_procs([child], timeout=10)
    assert not child.is_running()
