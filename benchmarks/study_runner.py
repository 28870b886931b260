"""What the study runner (repro/study.py) costs and gains, on a tiny grid in a copy of the repository.

1. Per-run overhead: the same training stages (smoke scale, one thread each) run one after another by their bare
   commands from dvc.yaml, then through the runner on a local Dask cluster of one worker (submission, the guard
   process, the progress events, `dvc commit`); the difference divided by the number of runs. The cluster's start
   is a one-off cost, reported apart.
2. Scaling: the same grid on one worker and on two (the runner's training phase, cluster start excluded).

    python benchmarks/study_runner.py [--runs 6]     # `make bench-runner`

Each measurement starts from the same state: no outputs, no checkpoints (a checkpoint would be resumed), no lock.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from study_copy import copy_repository  # noqa: E402

from repro.runner.cluster import cluster_settings, start_cluster  # noqa: E402
from repro.runner.execute import Runner  # noqa: E402
from repro.runner.grid import Grid  # noqa: E402
from repro.runner.plan import Outcome, stale_train_stages  # noqa: E402


def _reset(copy: Path) -> None:
    for folder in ("results/smoke/runs", "results/smoke/notebooks", "checkpoints"):
        shutil.rmtree(copy / folder, ignore_errors=True)
    (copy / "dvc.lock").unlink(missing_ok=True)


def direct(copy: Path, grid: Grid) -> tuple[float, int]:
    """Every stale train stage's bare command, one after another, with one torch thread."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "UNET_REPRO_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    stages = stale_train_stages(copy, grid)
    start = time.perf_counter()
    for stage in stages:
        subprocess.run(stage.cmd, shell=True, cwd=copy, env=env, check=True, capture_output=True)
    return time.perf_counter() - start, len(stages)


def through_runner(copy: Path, grid: Grid, workers: int) -> tuple[float, float, float]:
    """(cluster start, training phase, sum of the runs' own wall times) in seconds for the runner on a local
    cluster of ``workers``."""
    runner = Runner(copy, copy / "checkpoints" / "logs", cluster_settings({}, {"workers": workers}))
    stages = stale_train_stages(copy, grid)
    start = time.perf_counter()
    runner.cluster, runner.client = start_cluster(runner.settings, runner.logs / "dask")
    started = time.perf_counter()
    try:
        outcome = Outcome(total=len(stages))
        runner._train(grid, stages, outcome)
        assert len(outcome.done) == len(stages), outcome
    finally:
        runner.client.close()
        runner.cluster.close()
    return started - start, time.perf_counter() - started, sum(outcome.seconds.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=6, help="runs in the grid (seeds of unet on PH2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="unet-repro-bench-") as folder:
        grid = Grid("smoke", ("ph2-dermoscopy",), ("unet",), tuple(range(args.runs)))
        study = {"datasets": list(grid.datasets), "models": list(grid.models), "seeds": list(grid.seeds)}
        copy = copy_repository(Path(folder), study)
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        subprocess.run([sys.executable, "-m", "dvc", "repro", "-q", "prepare"], cwd=copy, env=env, check=True)

        os.environ["PATH"] = env["PATH"]
        os.chdir(copy)  # DVC's API resolves the stages' paths against the working directory
        direct(copy, grid)  # warm-up: the first runs pay for reading the libraries from disk
        _reset(copy)
        bare_first, runs = direct(copy, grid)
        _reset(copy)
        start_1, one, inside_1 = through_runner(copy, grid, 1)
        _reset(copy)
        start_2, two, _ = through_runner(copy, grid, 2)
        _reset(copy)
        bare_last, _ = direct(copy, grid)
        bare = (bare_first + bare_last) / 2

    print()
    print(f"{runs} runs (PH2, unet, smoke scale, one thread each) on {os.cpu_count()} cores, {platform.processor()}")
    per_run = (one - bare) / runs
    print(f"bare commands, one after another: {bare:.1f} s = {bare / runs:.2f} s per run")
    print(f"  ({bare_first:.1f} s before the runner's measurements, {bare_last:.1f} s after them)")
    print(f"runner, 1 local worker: {one:.1f} s; overhead {per_run:+.2f} s per run against the bare commands")
    print(f"  time outside the runs' own commands (dispatch, guard, commit): {(one - inside_1) / runs:.2f} s per run")
    print(f"runner, 2 local workers: {two:.1f} s; speed-up over 1 worker {one / two:.2f}x")
    print(f"local cluster start (once): {start_1:.1f} s (1 worker), {start_2:.1f} s (2 workers)")


if __name__ == "__main__":
    main()
