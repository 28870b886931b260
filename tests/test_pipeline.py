"""The DVC pipeline end to end on a tiny grid (smoke scale, 1 dataset x 2 variants x 2 seeds, with an extra row
and a control), in a copy.

The grid runs through the study runner (`python -m repro.study`) on a real `dask scheduler` and two `dask worker`
processes started here on 127.0.0.1, then `dvc repro` does the rest. Checks that every stage ran through
papermill and each run is recorded once, that a second `dvc repro` finds everything up to date, that dependencies
are exact (one variant's options re-run only that variant's runs, the statistics code only `aggregate`), and that
the runner's default local cluster, interrupted by SIGTERM, leaves dvc.lock whole and then runs exactly the stale
runs.
"""

from __future__ import annotations

import json
import shutil
import signal
import time

import psutil
import pytest
import yaml
from study_copy import copy_repository, dask_cluster, dvc, lock_entries, run_python, stale, start_python

GRID = {
    "datasets": ["ph2-dermoscopy"],
    "models": ["unet", "tinyunet"],
    "seeds": [0, 1],
    "extra": {"datasets": ["ph2-dermoscopy"], "models": ["lighter_unet_1"]},
    "controls": {"datasets": ["ph2-dermoscopy"], "models": ["tinyunet_plain"]},
}
RUNS = [f"train@ph2-dermoscopy-{model}-{seed}" for model in GRID["models"] for seed in GRID["seeds"]]
RUNS += [f"train_extra@ph2-dermoscopy-lighter_unet_1-{seed}" for seed in GRID["seeds"]]
RUNS += [f"train_controls@ph2-dermoscopy-tinyunet_plain-{seed}" for seed in GRID["seeds"]]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    copy = copy_repository(tmp_path_factory.mktemp("pipeline"), GRID)
    with dask_cluster(copy, workers=2) as (address, _):
        result = run_python(copy, "-m", "repro.study", "--scheduler-address", address)
    assert result.returncode == 0, result.stdout + result.stderr
    return copy, result.stdout


def test_runner_runs_every_stage_once(pipeline):
    copy, runner_output = pipeline
    assert "8 of 8 training runs to run" in runner_output
    for model in [*GRID["models"], *GRID["extra"]["models"], *GRID["controls"]["models"]]:
        for seed in GRID["seeds"]:
            run = copy / f"results/smoke/runs/ph2-dermoscopy/{model}/seed{seed}"
            metrics = json.loads((run / "metrics.json").read_text())
            assert (metrics["model"], metrics["seed"], metrics["scale"]) == (model, seed, "smoke")
            assert metrics["threads"] == 1  # cluster.threads_per_run reached torch through $UNET_REPRO_THREADS
            assert (copy / f"results/smoke/notebooks/ph2-dermoscopy/{model}/seed{seed}/train.ipynb").is_file()
    assert (copy / "results" / "complexity.csv").is_file()
    for output in ("aggregate.ipynb", "stats.json", "tables/results.md", "figures/seed_dice.png"):
        assert (copy / "results" / "smoke" / output).is_file(), output
    for run in RUNS:
        assert lock_entries(copy, run) == 1, run
        assert sum(line.startswith(f"done     {run} ") for line in runner_output.splitlines()) == 1, runner_output
    assert "trained now 8, up to date (skipped) 0, failed 0" in runner_output
    ran = next(line for line in runner_output.splitlines() if line.startswith("  ran "))
    assert "complexity" in ran and "aggregate" in ran and "train@" not in ran


def test_second_repro_is_up_to_date(pipeline):
    copy, _ = pipeline
    assert stale(copy) == set()
    assert "Running stage" not in dvc(copy, "repro")


def test_dependencies_are_exact(pipeline):
    copy, _ = pipeline
    params_file = copy / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["models"]["tinyunet"]["n_dwconv"] = 4
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    assert stale(copy) == {"train@ph2-dermoscopy-tinyunet-0", "train@ph2-dermoscopy-tinyunet-1"}
    params = yaml.safe_load(original)
    params["models"]["lighter_unet_1"]["groups_c"] = 2
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    assert stale(copy) == {f"train_extra@ph2-dermoscopy-lighter_unet_1-{seed}" for seed in (0, 1)}
    params = yaml.safe_load(original)
    params["models"]["tinyunet_plain"]["width_mult"] = 0.5
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    assert stale(copy) == {f"train_controls@ph2-dermoscopy-tinyunet_plain-{seed}" for seed in (0, 1)}
    params_file.write_text(original)

    stats = copy / "repro" / "analysis" / "stats.py"
    original_stats = stats.read_text()
    stats.write_text(original_stats + "\n# an edit\n")
    assert stale(copy) == {"aggregate"}
    stats.write_text(original_stats)


def _processes_in(folder) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.cwd() == str(folder) and "repro.study" not in " ".join(process.cmdline()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def test_local_cluster_interrupted_then_runs_exactly_the_stale_runs(pipeline):
    """`make study`'s way (a local cluster, JOBS=2): SIGTERM while two runs train leaves no process behind and
    dvc.lock whole; the next call (sharing a GPU resource) trains exactly the runs still stale and records them."""
    copy, _ = pipeline
    assert stale(copy) == set()
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["models"]["tinyunet"]["n_dwconv"] = 4
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # The finished runs' checkpoints must go first: they are matched on seed and settings only (docs/running.md,
    # "Checkpoints"), and resuming them would load the 8-convolution weights into the 4-convolution network.
    shutil.rmtree(copy / "checkpoints/ph2-dermoscopy/tinyunet")
    unet_metrics = copy / "results/smoke/runs/ph2-dermoscopy/unet/seed0/metrics.json"
    untouched = unet_metrics.read_bytes()
    lock_before = (copy / "dvc.lock").read_text()

    shutil.rmtree(copy / "checkpoints/logs")  # the logs of the first call, to see this call's runs start
    runner = start_python(copy, "-m", "repro.study", "--workers", "2")
    logs = [copy / f"checkpoints/logs/train@ph2-dermoscopy-tinyunet-{seed}.log" for seed in (0, 1)]
    deadline = time.monotonic() + 300
    while not all(log.is_file() and "Executing notebook" in log.read_text() for log in logs):
        assert runner.poll() is None, runner.stdout.read()
        assert time.monotonic() < deadline, "the two runs never started"
        time.sleep(0.1)
    runner.send_signal(signal.SIGTERM)
    output = runner.communicate(timeout=120)[0]
    assert runner.returncode == 130, output
    assert "interrupted" in output
    finished = {run for run in RUNS if f"done     {run} " in output}
    # Whole: still valid YAML, and exactly the runs reported done were added.
    assert yaml.safe_load((copy / "dvc.lock").read_text())
    stale_runs = {name for name in stale(copy) if name.startswith("train@")}
    assert stale_runs == {"train@ph2-dermoscopy-tinyunet-0", "train@ph2-dermoscopy-tinyunet-1"} - finished
    if not finished:
        assert (copy / "dvc.lock").read_text() == lock_before
    time.sleep(2)  # the kernels notice within a second that papermill is gone
    assert _processes_in(copy) == []

    # The second call shares a "GPU" between two runs: one worker advertising GPU=1 with two threads, each run
    # asking for half of it (on a machine without CUDA, CUDA_VISIBLE_DEVICES=0 changes nothing and the runs use
    # the CPU): the resource path of a GPU machine, end to end.
    result = run_python(copy, "-m", "repro.study", "--set", "gpus=1", "--set", "runs_per_gpu=2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "a local Dask cluster: 1 GPU worker(s), 2 run(s) per GPU" in result.stdout
    assert f"{2 - len(finished)} of 8 training runs to run" in result.stdout
    assert not {name for name in stale(copy) if name.startswith("train@")}
    for seed in (0, 1):
        metrics = json.loads((copy / f"results/smoke/runs/ph2-dermoscopy/tinyunet/seed{seed}/metrics.json").read_text())
        assert metrics["options"]["n_dwconv"] == 4
        assert lock_entries(copy, f"train@ph2-dermoscopy-tinyunet-{seed}") == 1
    assert unet_metrics.read_bytes() == untouched
    assert "Dask dashboard: http://127.0.0.1:" in result.stdout
