"""Helpers for the tests that run the pipeline: a copy of the repository with a tiny grid, commands run in it, and
a real Dask cluster (`dask scheduler` + `dask worker` processes) on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from repro.data.registry import resolve_data_root
from repro.runner.grid import NNUNET_DATASET

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".git", ".venv", "results", "checkpoints", "data/processed", ".dvc/cache", ".dvc/tmp", "dvc.lock"}
# Kept although below a skipped folder: the provenance log is the training code's record, which the report reads.
KEEP = {"results/provenance.csv"}
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    """This process's environment with the environment's `dvc`, `papermill` and `dask` first, as `make` does."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def copy_repository(destination: Path, study: dict, **params_overrides) -> Path:
    """The repository's tracked and unignored files (no results, no lock) in ``destination``, at the smoke scale
    with the grid ``study`` and only its datasets prepared (with nnU-Net's where ``nnunet__seeds`` asks for its
    runs), as a git repository of its own."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for name in files:
        skipped = any(name == skip or name.startswith(skip + "/") for skip in SKIP) and name not in KEEP
        if skipped or not (ROOT / name).is_file():
            continue
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    params = yaml.safe_load((destination / "params.yaml").read_text())
    params["data_root"] = str(resolve_data_root(params["data_root"]))
    params["scale"] = "smoke"
    empty = {"datasets": [], "models": []}
    # dvc.yaml reads every key of study.universal: a study that gives some of them gets the others empty.
    universal = {"domains": params["study"]["universal"]["domains"], "models": [], "independent": []}
    universal |= study.get("universal", {})
    params["study"] = {
        "volumes": empty,
        "extra": empty,
        "ablations": empty,
        "controls": empty,
        **study,
        "universal": universal,
    }
    params["prepare"]["datasets"] = list(study["datasets"])
    params["complexity"] = {"image_size": 64, "latency_repeats": 1}
    params["nnunet"]["seeds"] = []  # nnU-Net's runs are a block of the grid: a copy trains them only when asked
    for key, value in params_overrides.items():
        section, _, name = key.partition("__")
        if name:
            params[section][name] = value
        else:
            params[section] = value
    if params["nnunet"]["seeds"] and NNUNET_DATASET not in params["prepare"]["datasets"]:
        params["prepare"]["datasets"].append(NNUNET_DATASET)  # its runs train on the split its prepare stage writes
    (destination / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # A study running in the repository itself holds 8787; a copy's dashboard takes any free port.
    cluster = yaml.safe_load((destination / "cluster.yaml").read_text())
    cluster["dashboard_address"] = "127.0.0.1:0"
    (destination / "cluster.yaml").write_text(yaml.safe_dump(cluster, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=destination, check=True)
    return destination


def run_python(copy: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """This interpreter on ``args`` in the copy."""
    command = [sys.executable, *args]
    return subprocess.run(command, cwd=copy, env=_env(), capture_output=True, text=True, timeout=timeout)


def start_python(copy: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args], cwd=copy, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def dvc(copy: Path, *args: str) -> str:
    result = run_python(copy, "-m", "dvc", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def stale(copy: Path) -> set[str]:
    return set(json.loads(dvc(copy, "status", "--json")))


def lock_entries(copy: Path, stage: str) -> int:
    """How many times dvc.lock names ``stage`` (once per recorded run; YAML would hide a duplicate key)."""
    return (copy / "dvc.lock").read_text().count(f"\n  {stage}:\n")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def dask_cluster(copy: Path, workers: int):
    """A `dask scheduler` and ``workers`` `dask worker` processes (one thread each, with their nannies) on
    127.0.0.1, started in the copy; yields the scheduler's address and the worker processes."""
    from distributed import Client

    address = f"tcp://127.0.0.1:{_free_port()}"
    dask = str(BIN / "dask")
    processes = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1]]
            + ["--dashboard-address", "127.0.0.1:0"],
            cwd=copy,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        for i in range(workers):
            processes.append(
                subprocess.Popen(
                    [dask, "worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--name", f"w{i}"]
                    + ["--no-dashboard"],
                    cwd=copy,
                    env=_env(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(address, timeout="5s") as client:
                    client.wait_for_workers(workers, timeout=60)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield address, processes[1:]
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
