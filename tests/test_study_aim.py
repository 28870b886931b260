"""Aiming the study runner (`python -m repro.study`): filters (--datasets, --models, --seeds, --stages,
--trained-on), --retrain, --dry-run, the question before a large start (--yes), --report-only, the runs' logs without
noise, and a failure's cause as the runner's last line.

The plan functions are tested on their own; the end-to-end tests run the runner in a copy of the repository at the
smoke scale (one real training run, about 20 s on one core).
"""

from __future__ import annotations

import io
import json
import pickle
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from study_copy import _env, copy_repository, dvc, run_python, stale

from repro.data.registry import REPO_ROOT
from repro.runner.cluster import ParamsError
from repro.runner.grid import Grid, RunFilter
from repro.runner.plan import (
    CONFIRM_RUNS,
    Estimate,
    Outcome,
    StudyError,
    aim_text,
    committed_runs,
    confirm_start,
    dry_run_listing,
    dvc_repo,
    missing_splits,
    move_checkpoint_aside,
    plan,
    selected_runs,
    trained_on_problems,
    variant_flops,
)
from repro.runner.stage_task import StageFailed, copy_output, failure_cause, is_noise
from repro.study import main, summary

GRID = Grid(
    "smoke",
    ("ph2-dermoscopy", "kvasir-seg"),
    ("unet", "unetpp"),
    (0, 1),
    volume_datasets=("msd-task04-hippocampus",),
    volume_models=("unet3d",),
)


# 3D U²-Net's universal model: one run per seed on both domains, recorded under each; the independent models on
# Hippocampus only here, so that the left atrium is a domain of the universal runs alone.
DOMAINS = ("msd-task04-hippocampus", "la2018-atrium-lgemri")
UNIVERSAL = Grid(
    "smoke",
    ("ph2-dermoscopy",),
    ("unet",),
    (0, 1),
    volume_datasets=DOMAINS[:1],
    volume_models=("unet3d", "segresnet"),
    universal_domains=DOMAINS,
    universal_models=("u2net3d_universal",),
)


# nnU-Net's runs: seeds of their own (nnunet.seeds), after the volumetric rows within a seed; seed 2 is nnU-Net's only.
NNUNET = Grid(
    "smoke",
    ("ph2-dermoscopy",),
    ("unet",),
    (0, 1),
    volume_datasets=DOMAINS[:1],
    volume_models=("unet3d",),
    nnunet_seeds=(0, 2),
)


def _names(grid: Grid, only: RunFilter) -> list[str]:
    from repro.runner.grid import run_name

    return [run_name(*run) for run in only.select(grid)]


# --- filters -----------------------------------------------------------------------------------------------------


def test_filters_select_the_runs_matching_every_filter_given_in_the_grids_order():
    assert _names(GRID, RunFilter()) == [f"{s}@{d}-{m}-{k}" for s, d, m, k in GRID.runs()]
    assert _names(GRID, RunFilter.parse(datasets="ph2-dermoscopy", models="unetpp,unet", seeds="1")) == [
        "train@ph2-dermoscopy-unet-1",
        "train@ph2-dermoscopy-unetpp-1",
    ]
    assert _names(GRID, RunFilter.parse(stages="train@kvasir-*")) == [
        f"train@kvasir-seg-{model}-{seed}" for seed in (0, 1) for model in ("unet", "unetpp")
    ]
    # A glob over stage names reaches the other blocks too; with another filter, both must match.
    assert _names(GRID, RunFilter.parse(stages="train_volumes@*", seeds="0")) == [
        "train_volumes@msd-task04-hippocampus-unet3d-0"
    ]
    assert _names(GRID, RunFilter.parse(stages="*-unetpp-0,*-unet3d-0")) == [
        "train@ph2-dermoscopy-unetpp-0",
        "train@kvasir-seg-unetpp-0",
        "train_volumes@msd-task04-hippocampus-unet3d-0",
    ]
    assert not RunFilter.parse() and RunFilter.parse(seeds="0")
    assert RunFilter.parse(datasets="a, b", seeds="0,1").describe() == "--datasets a,b --seeds 0,1"


def test_a_filter_naming_nothing_of_the_grid_is_a_problem_not_an_empty_study():
    problems = []
    only = RunFilter.parse(datasets="ph2-dermoscopi", models="unet", seeds="x,7", stages="val@*", problems=problems)
    problems += only.problems(GRID)
    assert problems == [
        "--seeds: 'x' is not a whole number",
        "--datasets: 'ph2-dermoscopi' is not in the study grid of params.yaml; did you mean 'ph2-dermoscopy'? it has: "
        "kvasir-seg, msd-task04-hippocampus, ph2-dermoscopy",
        "--seeds: '7' is not in the study grid of params.yaml; it has: 0, 1",
        "--stages: 'val@*' matches no run of the study grid (names like train@ph2-dermoscopy-unet-0)",
    ]
    with pytest.raises(ParamsError, match="'x' is not a whole number") as caught:
        RunFilter.parse(seeds="x")
    assert caught.value.section == "the command line"
    # Each filter names something of the grid, yet together they select nothing.
    assert RunFilter.parse(datasets="msd-task04-hippocampus", models="unet").problems(GRID) == [
        "--datasets msd-task04-hippocampus --models unet together select no run of the study grid"
    ]


def test_a_universal_run_is_selected_by_any_of_its_domains():
    """A universal run's dataset is its domains joined by '+': --datasets naming either domain selects it, as the
    joined name does; a domain only the universal runs train on is a dataset of the grid all the same."""
    universal = [f"train_universal@u2net3d_universal-{seed}" for seed in (0, 1)]
    assert _names(UNIVERSAL, RunFilter.parse(datasets="la2018-atrium-lgemri")) == universal
    assert RunFilter.parse(datasets="la2018-atrium-lgemri").problems(UNIVERSAL) == []
    assert _names(UNIVERSAL, RunFilter.parse(datasets="msd-task04-hippocampus", seeds="1")) == [
        "train_volumes@msd-task04-hippocampus-unet3d-1",
        "train_volumes@msd-task04-hippocampus-segresnet-1",
        "train_universal@u2net3d_universal-1",
    ]
    assert _names(UNIVERSAL, RunFilter.parse(datasets="msd-task04-hippocampus+la2018-atrium-lgemri")) == universal
    assert _names(UNIVERSAL, RunFilter.parse(datasets="ph2-dermoscopy", models="u2net3d_universal")) == []
    typo = RunFilter.parse(datasets="la2018-atrium-lgemry").problems(UNIVERSAL)
    assert typo[0].startswith(
        "--datasets: 'la2018-atrium-lgemry' is not in the study grid of params.yaml; did you mean "
        "'la2018-atrium-lgemri'?"
    )


def test_nnunet_runs_are_selected_by_their_model_dataset_seed_and_stage_name():
    assert _names(NNUNET, RunFilter()) == [
        "train@ph2-dermoscopy-unet-0",
        "train_volumes@msd-task04-hippocampus-unet3d-0",
        "nnunet@0",
        "train@ph2-dermoscopy-unet-1",
        "train_volumes@msd-task04-hippocampus-unet3d-1",
        "nnunet@2",
    ]
    assert _names(NNUNET, RunFilter.parse(models="nnunet")) == ["nnunet@0", "nnunet@2"]
    assert _names(NNUNET, RunFilter.parse(stages="nnunet@*")) == ["nnunet@0", "nnunet@2"]
    assert _names(NNUNET, RunFilter.parse(datasets="msd-task04-hippocampus", seeds="0")) == [
        "train_volumes@msd-task04-hippocampus-unet3d-0",
        "nnunet@0",
    ]
    assert _names(NNUNET, RunFilter.parse(seeds="2")) == ["nnunet@2"]  # a seed of nnU-Net's alone
    for only in (RunFilter.parse(models="nnunet"), RunFilter.parse(stages="nnunet@*"), RunFilter.parse(seeds="2")):
        assert only.problems(NNUNET) == []
    assert (
        RunFilter.parse(models="nnunet")
        .problems(GRID)[0]
        .startswith("--models: 'nnunet' is not in the study grid of params.yaml")
    )
    assert RunFilter.parse(models="nnunet", seeds="1").problems(NNUNET) == [
        "--models nnunet --seeds 1 together select no run of the study grid"
    ]


def test_the_plan_line_says_what_the_filters_selected():
    only = RunFilter.parse(datasets="ph2-dermoscopy", seeds="0")
    assert plan(GRID, 1, 1, only) == (
        "scale smoke: 1 of 2 training runs to run (selected by --datasets ph2-dermoscopy --seeds 0 of 10; 0 new, "
        "1 replacing stale runs of scale smoke; 1 up to date); results go to results/smoke/"
    )
    assert plan(GRID, 10, 0) == (
        "scale smoke: 10 of 10 training runs to run (10 new, 0 replacing stale runs of scale smoke; 0 up to date); "
        "results go to results/smoke/"
    )
    # --retrain: runs that are up to date, replaced on request, apart from the stale ones.
    assert plan(GRID, 3, 1, only, retrained=2, selected=3, aim=aim_text(only, "cuda")) == (
        "scale smoke: 3 of 3 training runs to run (selected by --datasets ph2-dermoscopy --seeds 0 --trained-on cuda "
        "of 10; 0 new, 1 replacing stale runs of scale smoke, 2 replacing committed runs that are up to date "
        "(--retrain); 0 up to date); results go to results/smoke/"
    )
    assert aim_text(RunFilter(), "cuda", retrain=True) == "--trained-on cuda --retrain" and aim_text() == ""


# --- the estimate, the dry run's listing, the question -----------------------------------------------------------


def _committed(root: Path, dataset: str, model: str, seed: int, /, **metrics) -> None:
    run = root / "results/smoke/runs" / dataset / model / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_estimate_is_the_cells_median_else_the_datasets(tmp_path):
    _committed(tmp_path, "ph2-dermoscopy", "unet", 0, train_seconds=100.0, eval_seconds=20.0)
    _committed(tmp_path, "ph2-dermoscopy", "unet", 1, train_seconds=200.0)  # an older record: no eval_seconds
    _committed(tmp_path, "ph2-dermoscopy", "unet", 2, train_seconds=10.0, resumed_after_epochs=[3])  # left out
    _committed(tmp_path, "ph2-dermoscopy", "fcn", 0, train_seconds=1000.0)  # not in the grid: its dataset's median
    names = [f"train@ph2-dermoscopy-{model}-{seed}" for model in ("unet", "unetpp") for seed in (0, 1)]
    names.append("train@kvasir-seg-unet-0")
    estimate = Estimate.of_runs(tmp_path, GRID, names)
    assert estimate.seconds == {
        "train@ph2-dermoscopy-unet-0": 160.0,
        "train@ph2-dermoscopy-unet-1": 160.0,
        "train@ph2-dermoscopy-unetpp-0": 200.0,  # the median of 120, 200, 1000
        "train@ph2-dermoscopy-unetpp-1": 200.0,
    }
    assert estimate.from_dataset == {"train@ph2-dermoscopy-unetpp-0", "train@ph2-dermoscopy-unetpp-1"}
    assert estimate.unknown == ["train@kvasir-seg-unet-0"]
    assert estimate.wall(2) == 360.0 and estimate.wall(None) == 720.0
    assert estimate.hours(2) == "~0.1 h, 1 of them without an estimate"
    assert estimate.describe(2).startswith(
        "~6 min 0 s on 2 run(s) at a time (12 min 0 s of training), from the committed runs' train_seconds + "
        "eval_seconds: the median of each run's own dataset x variant, for 2 run(s) without one the median of their "
        "dataset; 1 run(s) of datasets without any committed run have no estimate"
    )


def _universal_records(root: Path, seed: int, devices=("cuda:0", "cuda:0"), **metrics) -> list[Path]:
    """A universal run's records, one under each domain, as train_universal.ipynb writes them: the run's timings
    in each."""
    paths = []
    for domain, (dataset, device) in enumerate(zip(DOMAINS, devices, strict=True)):
        _committed(
            root,
            dataset,
            "u2net3d_universal",
            seed,
            dataset=dataset,
            domains=list(DOMAINS),
            domain=domain,
            device=device,
            **metrics,
        )
        paths.append(root / "results/smoke/runs" / dataset / "u2net3d_universal" / f"seed{seed}" / "metrics.json")
    return paths


def test_a_universal_run_is_timed_once_by_its_records_and_not_as_its_domains_runs(tmp_path):
    _universal_records(tmp_path, 0, train_seconds=500.0, eval_seconds=100.0)
    _committed(tmp_path, "msd-task04-hippocampus", "unet3d", 0, train_seconds=50.0)
    names = [
        "train_universal@u2net3d_universal-1",
        "train_volumes@msd-task04-hippocampus-unet3d-1",
        "train_volumes@msd-task04-hippocampus-segresnet-1",
        "train@ph2-dermoscopy-unet-1",
    ]
    estimate = Estimate.of_runs(tmp_path, UNIVERSAL, names)
    # The universal run's time is its own (each record holds it), and no time of one domain's runs: it trained
    # both domains, so Hippocampus's median (for SegResNet, without a run of its own) is U-Net 3D's alone.
    assert estimate.seconds == {
        "train_universal@u2net3d_universal-1": 600.0,
        "train_volumes@msd-task04-hippocampus-unet3d-1": 50.0,
        "train_volumes@msd-task04-hippocampus-segresnet-1": 50.0,
    }
    assert estimate.from_dataset == {"train_volumes@msd-task04-hippocampus-segresnet-1"}
    assert estimate.unknown == ["train@ph2-dermoscopy-unet-1"]
    # --trained-on leaves out the times of the runs it selects: one run, although two records.
    left = Estimate.of_runs(tmp_path, UNIVERSAL, names, leave_out={"train_universal@u2net3d_universal-0"})
    assert left.left_out == 1 and "train_universal@u2net3d_universal-1" in left.unknown


def test_an_nnunet_run_is_timed_by_nnunets_own_runs_only(tmp_path):
    """nnU-Net trains by a schedule of its own (nnunet.scales), so its runs time no other variant of Hippocampus
    (neither by the dataset's median nor by seconds per FLOP: its FLOPs are a patch's), and without a committed
    nnU-Net run of the scale an nnU-Net run has no estimate."""
    hippocampus = DOMAINS[0]
    _committed(tmp_path, hippocampus, "nnunet", 0, train_seconds=9000.0, flops=5e11, image_size=[40, 56, 40])

    def flops_of(dataset, model, size):
        raise AssertionError(f"no FLOPs to count: {dataset} {model} {size}")

    names = ["nnunet@2", "train_volumes@msd-task04-hippocampus-unet3d-1", "train@ph2-dermoscopy-unet-1"]
    estimate = Estimate.of_runs(tmp_path, NNUNET, names, flops_of=flops_of)
    assert estimate.seconds == {"nnunet@2": 9000.0}
    assert estimate.unknown == names[1:]
    _committed(tmp_path, hippocampus, "unet3d", 0, train_seconds=100.0, flops=1e9, image_size=[48, 64, 48])
    assert Estimate.of_runs(tmp_path, NNUNET, ["nnunet@2"], leave_out={"nnunet@0"}).unknown == ["nnunet@2"]
    names.append("nnunet@0")
    estimate = Estimate.of_runs(tmp_path, NNUNET, names, leave_out={"nnunet@0"})
    assert estimate.seconds == {"train_volumes@msd-task04-hippocampus-unet3d-1": 100.0}
    assert estimate.left_out == 1 and estimate.describe(1).endswith(
        "; 1 run(s) of datasets without any committed run have no estimate; 2 nnU-Net run(s) have no estimate before "
        "a committed nnU-Net run of this scale; the times of the 1 committed run(s) they replace left out (another "
        "device)"
    )
    # U-Net 3D's cell has its run; SegResNet (no run) is scaled by U-Net 3D's seconds per FLOP, not nnU-Net's.
    grid = Grid("smoke", ("ph2-dermoscopy",), ("unet",), (1,), (hippocampus,), ("segresnet",), nnunet_seeds=(1,))
    estimate = Estimate.of_runs(
        tmp_path, grid, ["train_volumes@msd-task04-hippocampus-segresnet-1"], flops_of=lambda *_: 2e9
    )
    assert estimate.seconds == {"train_volumes@msd-task04-hippocampus-segresnet-1": pytest.approx(200.0)}


def test_a_cell_without_runs_is_scaled_by_its_flops_and_a_resumed_run_counts_by_its_history(tmp_path):
    _committed(tmp_path, "ph2-dermoscopy", "unet", 0, train_seconds=100.0, flops=1e9, image_size=[96, 96])
    # Resumed: its record's train_seconds may be the last part only, but the history holds every epoch.
    _committed(
        tmp_path,
        "ph2-dermoscopy",
        "unet",
        1,
        train_seconds=5.0,
        flops=1e9,
        image_size=[96, 96],
        resumed_after_epochs=[2],
    )
    history = tmp_path / "results/smoke/runs/ph2-dermoscopy/unet/seed1/history.csv"
    history.write_text("epoch,seconds,eval_seconds\n1,100,10\n2,100,10\n3,80,0\n")
    asked = []

    def flops_of(dataset, model, size):
        asked.append((dataset, model, size))
        return 3e9

    names = ["train@ph2-dermoscopy-unet-0", "train@ph2-dermoscopy-unetpp-0", "train@ph2-dermoscopy-unetpp-1"]
    estimate = Estimate.of_runs(tmp_path, GRID, names, flops_of=flops_of)
    assert estimate.seconds["train@ph2-dermoscopy-unet-0"] == 200.0  # the median of 100 and 300
    # 200 s per 1e9 FLOPs (the median of 1e-7 and 3e-7 s per FLOP) x 3e9 FLOPs
    assert estimate.seconds["train@ph2-dermoscopy-unetpp-0"] == pytest.approx(600.0)
    assert estimate.from_flops == {"train@ph2-dermoscopy-unetpp-0", "train@ph2-dermoscopy-unetpp-1"}
    assert asked == [("ph2-dermoscopy", "unetpp", [96, 96])]  # once per cell
    assert "for 2 run(s) without one their dataset's seconds per FLOP x their FLOPs" in estimate.describe(1)


def test_variant_flops_builds_the_variant_as_the_study_does(tmp_path):
    from repro.complexity import count_flops
    from repro.config import load_params, scale_preset
    from repro.models import create_model

    assert variant_flops(tmp_path, GRID, "ph2-dermoscopy", "unet", [32, 32]) is None  # not prepared here
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    prepared = tmp_path / "data/processed/smoke/ph2-dermoscopy"
    prepared.mkdir(parents=True)
    (prepared / "meta.json").write_text(json.dumps({"class_names": ["background", "lesion"], "in_channels": 3}))
    width = scale_preset("smoke", load_params(REPO_ROOT / "params.yaml")).width_mult
    expected = count_flops(create_model("unetpp", in_channels=3, num_classes=1, width_mult=width), (32, 32), 3)
    assert variant_flops(tmp_path, GRID, "ph2-dermoscopy", "unetpp", [32, 32]) == expected


def test_dry_run_lists_new_runs_apart_from_those_replacing_committed_ones(tmp_path):
    _committed(tmp_path, "ph2-dermoscopy", "unet", 0, train_seconds=90.0)
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"stages": {"train@ph2-dermoscopy-unetpp-0": {"cmd": "x"}}}))
    names = ["train@ph2-dermoscopy-unet-0", "train@ph2-dermoscopy-unetpp-0", "train@ph2-dermoscopy-unet-1"]
    stages = [
        types.SimpleNamespace(
            addressing=name,
            outs=[
                types.SimpleNamespace(
                    def_path=f"results/smoke/runs/ph2-dermoscopy/{name.split('-')[-2]}/seed{name[-1]}"
                )
            ],
        )
        for name in names
    ]
    committed = committed_runs(tmp_path, stages)
    assert committed == {"train@ph2-dermoscopy-unet-0", "train@ph2-dermoscopy-unetpp-0"}  # metrics.json; lock entry
    listing = dry_run_listing(stages, committed, Estimate.of_runs(tmp_path, GRID, names), 1).splitlines()
    assert listing[0].startswith("dry run: 3 run(s) would train, ~4 min 30 s on 1 run(s) at a time")
    assert listing[1:] == [
        "  new runs (1):",
        "    train@ph2-dermoscopy-unet-1    ~1 min 30 s",
        "  runs replacing committed ones (2; their code, data or settings changed):",
        "    train@ph2-dermoscopy-unet-0    ~1 min 30 s",
        "    train@ph2-dermoscopy-unetpp-0  ~1 min 30 s (dataset median)",
        "nothing was run (--dry-run)",
    ]
    # With --retrain, an up-to-date run (a committed one) is listed apart from the stale ones it joins.
    estimate = Estimate.of_runs(tmp_path, GRID, names)
    listing = dry_run_listing(stages, committed, estimate, 1, retrained={"train@ph2-dermoscopy-unet-0"}).splitlines()
    assert listing[2:] == [
        "    train@ph2-dermoscopy-unet-1    ~1 min 30 s",
        "  runs replacing committed ones (1; their code, data or settings changed):",
        "    train@ph2-dermoscopy-unetpp-0  ~1 min 30 s (dataset median)",
        "  runs replacing committed ones that are up to date (1; --retrain trains them afresh):",
        "    train@ph2-dermoscopy-unet-0    ~1 min 30 s",
        "nothing was run (--dry-run)",
    ]
    # The runs --trained-on replaces do not time their own replacements: here no run of the dataset is left.
    left = Estimate.of_runs(tmp_path, GRID, names, leave_out={"train@ph2-dermoscopy-unet-0"})
    assert left.left_out == 1 and left.unknown == names


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_large_start_asks_on_a_terminal_and_refuses_without_one(capsys):
    hour = Estimate(seconds={f"run{i}": 3600.0 for i in range(3)})
    small = Estimate(seconds={f"run{i}": 60.0 for i in range(CONFIRM_RUNS)})
    assert confirm_start(CONFIRM_RUNS, small, 1, yes=False, stdin=io.StringIO())  # small: no question
    assert confirm_start(3, hour, 1, yes=True, stdin=io.StringIO())  # --yes
    assert capsys.readouterr().out == ""
    assert confirm_start(3, hour, 1, yes=False, stdin=_Terminal("y\n"))
    assert capsys.readouterr().out == "Train 3 runs (~3.0 h)? [y/N] "
    assert not confirm_start(3, hour, 1, yes=False, stdin=_Terminal("\n"))  # the default is no
    capsys.readouterr()
    # More runs than CONFIRM_RUNS, however short: 10 x 60 s on 4 slots.
    assert not confirm_start(CONFIRM_RUNS + 1, small, 4, yes=False, stdin=_Terminal("n\n"))
    assert capsys.readouterr().out == f"Train {CONFIRM_RUNS + 1} runs (~2 min)? [y/N] "
    with pytest.raises(StudyError, match="this would train 3 runs \\(~3.0 h\\) and no terminal .* add --yes"):
        confirm_start(3, hour, 1, yes=False, stdin=io.StringIO("y\n"))


# --- noise and failures ------------------------------------------------------------------------------------------

PAPERMILL_FAILURE = """\
Executing Cell 3---------------------------------------
[IPKernelApp] WARNING | Kernel is running over TCP without encryption. All communication is sent in plain text.
Traceback (most recent call last):
  File ".venv/bin/papermill", line 8, in <module>
papermill.exceptions.PapermillExecutionError:
---------------------------------------------------------------------------
Exception encountered at "In [3]":
ValueError                                Traceback (most recent call last)
Cell In[3], line 15
---> 15 config = run.resolve(dataset, model)
\x1b[0;31mValueError\x1b[0m: unknown model variant 'nope'; params.yaml defines: unet

"""


def test_the_cause_is_the_last_line_that_states_an_error():
    assert failure_cause(PAPERMILL_FAILURE) == "ValueError: unknown model variant 'nope'; params.yaml defines: unet"
    # DVC's own "failed to run" names the command; the command's own error line says why.
    prepare = (
        "Running stage 'prepare_custom@polyps':\n> python -m repro.data.prepare polyps --scale smoke\n"
        "error: data/polyps/masks: no .png files; the folder is empty\n"
        "ERROR: failed to reproduce 'prepare_custom@polyps': failed to run: python -m repro.data.prepare polyps "
        "--scale smoke, exited with 1\n"
    )
    assert failure_cause(prepare) == "error: data/polyps/masks: no .png files; the folder is empty"
    missing = "ERROR: failed to reproduce 'prepare@x': [Errno 2] No such file or directory: 'data/splits/x.json'\n"
    assert failure_cause(missing) == missing.strip()
    assert failure_cause("sh: 1: papermill: not found\n\n") == "sh: 1: papermill: not found"
    assert failure_cause("\n") is None


def test_a_failed_stage_carries_its_cause_from_the_worker_to_the_client():
    """Dask pickles a task's exception on the worker: the cause read there (before a retry writes its own log over
    the attempt's) survives the trip, so the client's FAILED line need not read the log again."""
    failed = pickle.loads(pickle.dumps(StageFailed("train@x", 1, "logs/train@x.log", "ValueError: bad mask")))
    assert (failed.stage, failed.returncode, failed.log, failed.cause) == (
        "train@x",
        1,
        "logs/train@x.log",
        "ValueError: bad mask",
    )
    assert pickle.loads(pickle.dumps(StageFailed("train@x", -1, "l.log"))).cause is None  # stopped on request


def test_noise_lines_are_dropped_from_the_logs_and_the_rest_kept():
    for line in (
        "Executing Cell 12--------------------------------------",
        "Ending Cell 12------------------------------------------",
        "[IPKernelApp] WARNING | Kernel is running over TCP without encryption. All communication ...",
        "Waiting to acquire lock. If DVC froze, see `hardlink_lock` in <https://man.dvc.org/config#core>.",
        " 40%|████      | 2/5 [00:01<00:02, 1.20file/s]",
        "\r\x1b[2KCollecting files and computing hashes in results/smoke/runs |0.00 [00:00, ?file/s]",
    ):
        assert is_noise(line), line
    kept = [
        "Executing notebook with kernel: python3",
        "ph2-dermoscopy/unet/seed0 [smoke] epoch 1/2: loss 1.3450, val Dice 0.5031 (train 2 s, eval 1 s; 3 s left)",
        "ValueError: bad",
    ]
    assert not any(map(is_noise, kept))
    sink = io.BytesIO()
    copy_output(io.BytesIO(("\n".join([PAPERMILL_FAILURE.splitlines()[0], *kept]) + "\n").encode()), sink)
    assert sink.getvalue().decode() == "\n".join(kept) + "\n"


def test_a_stage_guard_writes_its_commands_output_without_noise(tmp_path):
    script = tmp_path / "noisy.sh"
    script.write_text(
        "echo 'Executing Cell 1---------'\necho 'epoch 1/2: loss 1.0'\n"
        "echo '[IPKernelApp] WARNING | Kernel is running over TCP without encryption. x' >&2\n"
        "echo 'Ending Cell 1---------'\necho 'ValueError: the end' >&2\nexit 3\n"
    )
    # Its stdin stays open, as a worker holds it: closed, the guard would end the command.
    guard = subprocess.Popen(
        [sys.executable, "-m", "repro.runner.stage_task", f"sh {script}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    output = guard.stdout.read()
    assert guard.wait(timeout=30) == 3
    guard.stdin.close()
    assert output.decode() == "epoch 1/2: loss 1.0\nValueError: the end\n"


def test_dvcs_progress_bars_are_off_in_the_runner(tmp_path):
    """In the runner's process DVC hashes (status, commit) and may wait for its lock: on a terminal, its bars
    ("Collecting files and computing hashes", "Waiting to acquire lock") would draw inside the runner's own."""
    from dvc.progress import Tqdm

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    with dvc_repo(tmp_path):
        bar = Tqdm(total=3, file=_Terminal(), desc="Collecting files and computing hashes")
        assert bar.disable
        bar.close()


def test_a_missing_split_file_is_named_with_its_fix(tmp_path):
    (tmp_path / "data/splits").mkdir(parents=True)
    (tmp_path / "data/splits/kvasir-seg.json").write_text("{}")
    params = {"prepare": {"datasets": ["kvasir-seg"], "custom_datasets": {"my-polyps": {}}}}
    assert missing_splits(params, tmp_path) == [
        "prepare: 'my-polyps' has no split file (data/splits/my-polyps.json), which its prepare stage reads; draw "
        "one with `python -m repro.data.prepare --draw-split my-polyps` and commit it"
    ]


# --- end to end, in a copy ---------------------------------------------------------------------------------------

STUDY = {"datasets": ["ph2-dermoscopy"], "models": ["tinyunet", "unet"], "seeds": [0]}
TINY, UNET = "train@ph2-dermoscopy-tinyunet-0", "train@ph2-dermoscopy-unet-0"


@pytest.fixture(scope="module")
def aimed(tmp_path_factory):
    """A study of two runs of which a call aimed by --models trains one: it trains that one only, then neither
    the complexity nor the aggregate stage runs."""
    copy = copy_repository(tmp_path_factory.mktemp("aimed"), STUDY)
    result = run_python(copy, "-m", "repro.study", "--models", "tinyunet", "--workers", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    return copy, result.stdout + result.stderr


def test_a_filtered_call_trains_only_the_selected_runs(aimed):
    copy, output = aimed
    assert "1 of 1 training runs to run (selected by --models tinyunet of 2; 1 new" in output
    assert f"done     {TINY} " in output and "trained now 1, up to date (skipped) 0, not selected 1" in output
    assert {name for name in stale(copy) if name.startswith("train")} == {UNET}
    assert "the rest of the pipeline" not in output and not (copy / "results/smoke/aggregate.ipynb").exists()
    assert "make report" in output.strip().splitlines()[-1]


def test_runner_output_and_run_logs_are_without_noise(aimed):
    copy, output = aimed
    log = (copy / f"checkpoints/logs/{TINY}.log").read_text()
    assert "epoch 2/2: loss" in log and "Executing notebook" in log  # the run's own lines stay
    for text in (output, log, (copy / "checkpoints/logs/prepare.log").read_text()):
        for noise in ("Executing Cell", "Ending Cell", "without encryption", "Collecting files", "acquire lock"):
            assert noise not in text, (noise, text)


def test_dry_run_lists_what_would_train_and_changes_nothing(aimed):
    copy, _ = aimed
    params_file = copy / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["models"]["tinyunet"]["n_dwconv"] = 4  # the trained run goes stale: it would be replaced
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    lock = (copy / "dvc.lock").read_text()
    try:
        result = run_python(copy, "-m", "repro.study", "--dry-run")
    finally:
        params_file.write_text(original)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    start = lines.index("  new runs (1):")
    # U-Net has no committed run here: its dataset's seconds per FLOP times its FLOPs.
    assert re.fullmatch(rf"    {UNET} +~\d+ s \(scaled by FLOPs\)", lines[start + 1]), lines
    assert lines[start + 2] == "  runs replacing committed ones (1; their code, data or settings changed):"
    assert re.fullmatch(rf"    {TINY} +~\d+ s", lines[start + 3]), lines
    assert (
        "the median of each run's own dataset x variant, for 1 run(s) without one their dataset's seconds per FLOP x "
        "their FLOPs" in result.stdout
    )
    assert lines[-1] == "nothing was run (--dry-run)"
    assert (copy / "dvc.lock").read_text() == lock
    assert not (copy / "results/smoke/runs/ph2-dermoscopy/unet").exists()
    assert "starting a local Dask cluster" not in result.stdout


def test_a_large_start_without_a_terminal_refuses_in_one_line(aimed):
    copy, _ = aimed
    params_file = copy / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["study"]["seeds"] = list(range(6))  # 12 runs, 11 of them stale
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    lock = (copy / "dvc.lock").read_text()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "repro.study"],
            cwd=copy,
            env=_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        params_file.write_text(original)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: this would train 11 runs (~1 min) and no terminal is there to confirm: add --yes to start it "
        "(--dry-run lists them; --datasets, --models, --seeds, --stages train part of them)"
    ]
    assert "starting a local Dask cluster" not in result.stdout
    assert (copy / "dvc.lock").read_text() == lock
    assert not (copy / "results/smoke/runs/ph2-dermoscopy/unet").exists()


def test_report_only_rebuilds_the_aggregate_and_trains_nothing(aimed):
    copy, _ = aimed
    result = run_python(copy, "-m", "repro.study", "--report-only")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "  ran aggregate, report" in result.stdout
    assert "1 training run(s) of the grid are stale or missing and were left so" in result.stdout
    assert (copy / "results/smoke/aggregate.ipynb").is_file() and (copy / "results/smoke/report/index.html").is_file()
    # The stale training stage stays stale and untrained, although the aggregate's dependency holds its outputs.
    assert {name for name in stale(copy) if name.startswith("train")} == {UNET}
    assert not (copy / "results/smoke/runs/ph2-dermoscopy/unet").exists()
    assert not (copy / f"checkpoints/logs/{UNET}.log").exists()
    refused = run_python(copy, "-m", "repro.study", "--report-only", "--models", "unet")
    assert refused.returncode == 2 and "--report-only trains nothing" in refused.stderr


def _custom_copy(tmp_path: Path) -> Path:
    data_root = tmp_path / "data"
    for i in range(12):
        mask = np.zeros((48, 56), dtype=np.uint8)
        mask[10:38, 12:44] = 255
        for folder, array in (("images", np.stack([mask // 2] * 3, -1)), ("masks", mask)):
            (data_root / "polyps" / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(data_root / f"polyps/{folder}/p{i:02d}.png")
    definition = {
        "path": str(data_root / "polyps"),
        "images": "images",
        "masks": "masks",
        "image_suffix": ".png",
        "mask_suffix": ".png",
        "in_channels": 3,
        "class_names": ["background", "polyp"],
        "threshold": 127,
    }
    return copy_repository(
        tmp_path / "copy",
        {"datasets": ["polyps"], "models": ["tinyunet"], "seeds": [0]},
        data_root=str(data_root),
        prepare={"datasets": [], "custom_datasets": {"polyps": definition}},
        training={"polyps": {"train_steps": {}, "eval_every": 1}},
    )


def test_a_failure_ends_the_runners_output_with_its_cause(tmp_path):
    """The issue's case: a custom dataset without its split file once ended with "the end of prepare.log:" and
    nothing (DVC's --quiet hid its own error). It is now a problem named before anything runs; and a stage that
    fails for a reason of its own (here an empty masks folder) ends the output with the stage's error line."""
    copy = _custom_copy(tmp_path)
    result = run_python(copy, "-m", "repro.study")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "  - prepare: 'polyps' has no split file (data/splits/polyps.json), which its prepare stage reads; draw one "
        "with `python -m repro.data.prepare --draw-split polyps` and commit it"
    )

    drawn = run_python(copy, "-m", "repro.data.prepare", "--draw-split", "polyps")
    assert drawn.returncode == 0, drawn.stdout + drawn.stderr
    for mask in (tmp_path / "data/polyps/masks").iterdir():
        mask.unlink()
    result = run_python(copy, "-m", "repro.study")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert (
        lines[0]
        == "error: `dvc repro --glob prepare*` failed (exit status 255); the end of checkpoints/logs/prepare.log:"
    )
    assert lines[-1] == f"cause: error: {tmp_path}/data/polyps/masks: no .png files; the folder is empty"
    assert "Traceback" not in result.stderr


# --- re-training committed runs (--retrain, --trained-on) ---------------------------------------------------------


def test_retrain_without_a_filter_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # main() moves to the repository; the test's working directory comes back after
    assert main(["--retrain", "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "error: --retrain re-trains committed runs that are up to date: say which, with at least one of --datasets, "
        "--models, --seeds, --stages or --trained-on (e.g. --retrain --trained-on cuda)"
    ]


def test_a_replaced_runs_checkpoint_is_moved_aside(tmp_path):
    grid = Grid("smoke", ("ph2-dermoscopy",), ("unet",), (0,))
    assert move_checkpoint_aside(tmp_path, grid, "ph2-dermoscopy", "unet", 0) is None  # none: nothing to do
    folder = tmp_path / "checkpoints/ph2-dermoscopy/unet/seed0/smoke"
    folder.mkdir(parents=True)
    (folder / "last.pt").write_text("new")
    (folder / "last.pt.replaced").write_text("older")
    assert move_checkpoint_aside(tmp_path, grid, "ph2-dermoscopy", "unet", 0) == folder / "last.pt.replaced"
    assert not (folder / "last.pt").exists() and (folder / "last.pt.replaced").read_text() == "new"


def test_the_summary_says_how_to_restore_a_replaced_run_that_did_not_finish():
    params = {"scales": {"smoke": {"image_size": 64, "width_mult": 0.25, "epochs": 2}}}
    outcome = Outcome(total=10, selected=2, only="--trained-on cuda --retrain", interrupted=True)
    outcome.replacing = {
        name: [
            f"results/smoke/runs/ph2-dermoscopy/{model}/seed0",
            f"results/smoke/notebooks/ph2-dermoscopy/{model}/seed0",
        ]
        for name, model in (("train@ph2-dermoscopy-unet-0", "unet"), ("train@ph2-dermoscopy-unetpp-0", "unetpp"))
    }
    outcome.done = ["train@ph2-dermoscopy-unet-0"]
    lines = summary(GRID, params, outcome, 60.0).splitlines()
    assert lines[-1] == (
        "  1 re-trained run(s) did not finish (--retrain); their committed outputs may be partly overwritten. Run the "
        "call again to train them, or restore the committed ones: git checkout -- "
        "results/smoke/runs/ph2-dermoscopy/unetpp/seed0 results/smoke/notebooks/ph2-dermoscopy/unetpp/seed0"
    )
    outcome.done.append("train@ph2-dermoscopy-unetpp-0")
    assert "git checkout" not in summary(GRID, params, outcome, 60.0)


def test_the_summary_states_each_domains_length_for_a_universal_run():
    """A universal run's dataset is its domains joined by '+', which has no training entry: the scale line states
    each domain's own length (the steps its run gives that domain), never the default epochs for the joined name."""
    params = {
        "scales": {"smoke": {"image_size": 64, "width_mult": 0.25, "epochs": 2}},
        "training": {DOMAINS[0]: {"train_steps": {"smoke": 30}}, DOMAINS[1]: {"train_steps": {"smoke": 40}}},
    }
    text = summary(UNIVERSAL, params, Outcome(total=UNIVERSAL.size), 60.0)
    assert (
        "lengths ph2-dermoscopy 2 epochs, msd-task04-hippocampus 30 steps, la2018-atrium-lgemri 40 steps "
        "(training.<dataset>.train_steps)"
    ) in " ".join(text.split()), text


def test_the_summary_states_nnunets_trainer_apart_from_the_datasets_lengths():
    """nnU-Net's runs train its trainer's length (nnunet.scales), not training.<dataset>.train_steps: the scale line
    states it apart, and a dataset only nnU-Net trains on has no length of its own there."""
    params = {
        "scales": {
            "smoke": {"image_size": 64, "width_mult": 0.25, "epochs": 2},
            "paper": {"image_size": 256, "width_mult": 1.0, "epochs": 100},
        },
        "training": {DOMAINS[0]: {"train_steps": {"smoke": 30}}},
        "nnunet": {"scales": {"smoke": {"trainer": "nnUNetTrainer_Repro"}, "paper": {"trainer": "nnUNetTrainer"}}},
    }
    grid = Grid("smoke", ("ph2-dermoscopy",), ("unet",), (0,), nnunet_seeds=(0,))
    text = " ".join(summary(grid, params, Outcome(total=grid.size), 60.0).split())
    assert (
        "study: 1 dataset(s) x 1 variant(s) x 1 seed(s) + nnunet: 1 dataset(s) x 1 variant(s) x 1 seed(s) = 2 runs"
        in text
    )
    assert (
        "lengths ph2-dermoscopy 2 epochs (training.<dataset>.train_steps) instead of 100 epochs; nnU-Net "
        "nnUNetTrainer_Repro (nnunet.scales.smoke) instead of nnUNetTrainer"
    ) in text, text
    assert "nnU-Net" not in summary(GRID, params, Outcome(total=GRID.size), 60.0)


GPU = "cuda:0 (NVIDIA H200)"


@pytest.fixture(scope="module")
def retrain_copy(tmp_path_factory):
    """A study of two trained runs, one of which says it was trained on a GPU: its metrics.json's device is faked
    after the first training and recorded again (`dvc commit`), so that it is up to date, as the study's GPU runs
    of seed 4 are."""
    copy = copy_repository(tmp_path_factory.mktemp("retrain"), STUDY)
    result = run_python(copy, "-m", "repro.study", "--train-only", "--workers", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    path = copy / "results/smoke/runs/ph2-dermoscopy/tinyunet/seed0/metrics.json"
    metrics = json.loads(path.read_text())
    assert metrics["device"] == "cpu"
    path.write_text(json.dumps({**metrics, "device": GPU}, indent=1))
    dvc(copy, "commit", "--force", "--quiet", TINY)
    assert not {name for name in stale(copy) if name.startswith("train")}
    return copy


def test_trained_on_with_retrain_lists_exactly_the_gpu_runs_as_replacing(retrain_copy):
    copy = retrain_copy
    lock = (copy / "dvc.lock").read_text()
    result = run_python(copy, "-m", "repro.study", "--trained-on", "cuda", "--retrain", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert (
        "scale smoke: 1 of 1 training runs to run (selected by --trained-on cuda of 2; 0 new, 0 replacing stale runs "
        "of scale smoke, 1 replacing committed runs that are up to date (--retrain); 0 up to date)"
    ) in result.stdout
    start = lines.index("  runs replacing committed ones that are up to date (1; --retrain trains them afresh):")
    # Its own time is left out (another device's): the CPU U-Net's seconds per FLOP times its FLOPs.
    assert re.fullmatch(rf"    {TINY} +~\d+ s \(scaled by FLOPs\)", lines[start + 1]), lines
    assert lines[start + 2 :] == ["nothing was run (--dry-run)"]
    assert UNET not in result.stdout  # trained on the CPU: not selected
    assert "the times of the 1 committed run(s) they replace left out" in result.stdout
    # Without --retrain, --trained-on selects the same run, which is up to date: nothing trains.
    plain = run_python(copy, "-m", "repro.study", "--trained-on", "cuda", "--dry-run")
    assert plain.returncode == 0 and "dry run: nothing would train" in plain.stdout
    # A device no committed run records is a problem named with the devices there are.
    none = run_python(copy, "-m", "repro.study", "--trained-on", "tpu", "--retrain", "--dry-run")
    assert none.returncode == 2
    assert none.stderr.strip().splitlines()[-1] == (
        f"  - --trained-on tpu: no committed run was trained on a device starting with 'tpu'; their metrics.json "
        f"record: cpu (1); {GPU} (1)"
    )
    assert (copy / "dvc.lock").read_text() == lock


def test_trained_on_selects_a_universal_run_by_its_domains_records(tmp_path):
    """A universal run has no record of its own: it was trained on a device when its records (one per domain, from
    the one run) say so; records of one run that disagree are an error naming both."""
    _committed(tmp_path, "msd-task04-hippocampus", "unet3d", 0, device="cpu")
    _universal_records(tmp_path, 0)
    assert selected_runs(tmp_path, UNIVERSAL, trained_on="cuda") == ["train_universal@u2net3d_universal-0"]
    assert selected_runs(tmp_path, UNIVERSAL, RunFilter.parse(datasets="la2018-atrium-lgemri"), "cuda") == [
        "train_universal@u2net3d_universal-0"
    ]
    assert selected_runs(tmp_path, UNIVERSAL, trained_on="cpu") == ["train_volumes@msd-task04-hippocampus-unet3d-0"]
    assert trained_on_problems(tmp_path, UNIVERSAL, None, "tpu") == [
        "--trained-on tpu: no committed run was trained on a device starting with 'tpu'; their metrics.json record: "
        "cpu (1); cuda:0 (1)"
    ]
    first, second = _universal_records(tmp_path, 1, devices=("cuda:0", "cpu"))
    # Only the runs the other filters select are read.
    assert selected_runs(tmp_path, UNIVERSAL, RunFilter.parse(seeds="0"), "cuda") == [
        "train_universal@u2net3d_universal-0"
    ]
    with pytest.raises(StudyError) as caught:
        selected_runs(tmp_path, UNIVERSAL, trained_on="cuda")
    message = str(caught.value)
    assert "train_universal@u2net3d_universal-1" in message
    assert f"{first.relative_to(tmp_path)} records device 'cuda:0'" in message
    assert f"{second.relative_to(tmp_path)} records 'cpu'" in message


def test_trained_on_selects_nnunet_runs_by_their_records(tmp_path):
    _committed(tmp_path, DOMAINS[0], "nnunet", 2, device="cuda:0 (NVIDIA H100)")
    _committed(tmp_path, DOMAINS[0], "unet3d", 0, device="cpu")
    assert selected_runs(tmp_path, NNUNET, trained_on="cuda") == ["nnunet@2"]
    assert selected_runs(tmp_path, NNUNET, RunFilter.parse(models="nnunet"), "cpu") == []
    assert trained_on_problems(tmp_path, NNUNET, RunFilter.parse(models="nnunet"), "cpu") == [
        "--trained-on cpu: no committed run among those of --models nnunet was trained on a device starting with "
        "'cpu'; their metrics.json record: cuda:0 (NVIDIA H100) (1)"
    ]


def test_a_dry_run_aimed_at_nnunet_lists_its_runs_with_their_estimate(tmp_path):
    """Through the runner's command line, in a copy with nnunet.seeds [0, 3]: DVC's stale nnunet@<seed> stages,
    selected by --models nnunet, listed in the grid's order, the one with a committed record as replacing it, each
    timed by the committed nnU-Net run; nothing is trained or recorded."""
    copy = copy_repository(tmp_path / "copy", STUDY, nnunet__seeds=[0, 3])
    _committed(copy, DOMAINS[0], "nnunet", 0, train_seconds=1500.0, device="cpu")
    result = run_python(copy, "-m", "repro.study", "--models", "nnunet", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "study: 1 dataset(s) x 2 variant(s) x 1 seed(s) + nnunet: 1 dataset(s) x 1 variant(s) x 2 seed(s) = 4 runs at "
        "scale smoke, aimed by --models nnunet"
    ) in result.stdout
    assert (
        "scale smoke: 2 of 2 training runs to run (selected by --models nnunet of 4; 1 new, 1 replacing stale runs of "
        "scale smoke; 0 up to date)"
    ) in result.stdout
    lines = result.stdout.splitlines()
    start = lines.index("  new runs (1):")
    assert lines[start:] == [
        "  new runs (1):",
        "    nnunet@3  ~25 min 0 s",
        "  runs replacing committed ones (1; their code, data or settings changed):",
        "    nnunet@0  ~25 min 0 s",
        "nothing was run (--dry-run)",
    ]
    assert not (copy / "dvc.lock").exists() and not (copy / "results/smoke/notebooks").exists()


def test_retrain_trains_the_gpu_run_afresh_and_records_it(retrain_copy):
    copy = retrain_copy
    checkpoint = copy / "checkpoints/ph2-dermoscopy/tinyunet/seed0/smoke/last.pt"
    assert checkpoint.is_file()  # the first training's, which a resumed run would end with straight away
    old = checkpoint.read_bytes()
    result = run_python(copy, "-m", "repro.study", "--trained-on", "cuda", "--retrain", "--workers", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        f"afresh   {TINY}: its checkpoint moved aside to checkpoints/ph2-dermoscopy/tinyunet/seed0/smoke/"
        "last.pt.replaced; it trains from its first epoch (--retrain)"
    ) in result.stdout
    assert f"done     {TINY} " in result.stdout and UNET not in result.stdout
    assert "trained now 1, up to date (skipped) 0, not selected 1, failed 0" in result.stdout
    assert checkpoint.with_name("last.pt.replaced").read_bytes() == old and checkpoint.is_file()
    metrics = json.loads((copy / "results/smoke/runs/ph2-dermoscopy/tinyunet/seed0/metrics.json").read_text())
    assert metrics["device"] == "cpu" and not metrics.get("resumed_after_epochs")
    assert not {name for name in stale(copy) if name.startswith("train")}  # recorded: dvc status is clean
    # Re-trained, it is no GPU run any more: the same call now has nothing to select.
    again = run_python(copy, "-m", "repro.study", "--trained-on", "cuda", "--retrain", "--dry-run")
    assert again.returncode == 2 and "no committed run was trained on a device starting with 'cuda'" in again.stderr
