"""The study runner on a real SLURM cluster: a one-node `slurmctld` + `slurmd` on this machine, started and stopped
here, runs two tiny runs through dask-jobqueue's `SLURMCluster` (two batch jobs of one worker each).

Needs root and Debian's `slurm-wlm` and `munge` (`.ci/run` installs them); without them the test is skipped with
the reason, shown in pytest's summary.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from study_copy import copy_repository, lock_entries, run_python, stale

GRID = {"datasets": ["ph2-dermoscopy"], "models": ["unet"], "seeds": [0, 1]}
PARTITION = "debug"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "not root: a one-node SLURM needs root to start slurmd and munged"
    absent = [tool for tool in ("slurmctld", "slurmd", "munged", "sinfo", "sbatch") if shutil.which(tool) is None]
    if absent:
        return f"{', '.join(absent)} not installed (apt-get install slurm-wlm munge; .ci/run does it as root)"
    return None


def _config(folder: Path) -> Path:
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    memory = int(subprocess.run(["free", "-m"], capture_output=True, text=True, check=True).stdout.split()[7])
    lines = [
        "ClusterName=unetrepro",
        f"SlurmctldHost={host}",
        "SlurmUser=root",
        "SlurmctldPort=16817",
        "SlurmdPort=16818",
        "AuthType=auth/munge",
        f"StateSaveLocation={folder}/state",
        f"SlurmdSpoolDir={folder}/spool",
        f"SlurmctldPidFile={folder}/slurmctld.pid",
        f"SlurmdPidFile={folder}/slurmd.pid",
        f"SlurmctldLogFile={folder}/slurmctld.log",
        f"SlurmdLogFile={folder}/slurmd.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "ReturnToService=2",
        f"NodeName={host} CPUs={os.cpu_count()} RealMemory={memory // 2} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
    ]
    for sub in ("state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def _alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def _stop(pid_file: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(pid_file.read_text()), signal.SIGTERM)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = _missing()
    if reason:
        pytest.skip(f"SLURM test skipped: {reason}")
    folder = tmp_path_factory.mktemp("slurm")
    conf = _config(folder)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    munge_pid = Path("/run/munge/munged.pid")
    started_munge = not _alive(munge_pid)
    if started_munge:
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["munged", "--force"], check=True, capture_output=True)
    subprocess.run(["slurmctld"], env=env, check=True)
    subprocess.run(["slurmd"], env=env, check=True)
    try:
        deadline = time.monotonic() + 60
        while (
            "idle"
            not in subprocess.run(
                ["sinfo", "--noheader", "--format=%t"], env=env, capture_output=True, text=True
            ).stdout
        ):
            assert time.monotonic() < deadline, (folder / "slurmctld.log").read_text()[-3000:]
            time.sleep(1)
        yield env
    finally:
        subprocess.run(["scancel", "--partition", PARTITION], env=env, capture_output=True)
        _stop(folder / "slurmd.pid")
        _stop(folder / "slurmctld.pid")
        if started_munge:
            _stop(munge_pid)


def test_two_runs_through_slurm_cluster(slurm, tmp_path, monkeypatch):
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    copy = copy_repository(tmp_path, GRID)
    settings = ["queue=debug", "cores=1", "memory=2GB", "walltime=00:10:00", "jobs=2"]
    # --train-only: the rest of the pipeline is not what runs on SLURM (test_pipeline.py covers it).
    result = run_python(copy, "-m", "repro.study", "--train-only", "--kind", "slurm", *(f"--set={s}" for s in settings))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "a SLURM cluster: 2 job(s) of 1 worker(s) in queue 'debug'" in result.stdout
    assert "2 of 2 training runs to run" in result.stdout
    assert not {name for name in stale(copy) if name.startswith("train@")}
    for seed in GRID["seeds"]:
        assert lock_entries(copy, f"train@ph2-dermoscopy-unet-{seed}") == 1
        metrics = json.loads((copy / f"results/smoke/runs/ph2-dermoscopy/unet/seed{seed}/metrics.json").read_text())
        assert metrics["seed"] == seed
    # The workers were SLURM jobs: dask-jobqueue's job scripts wrote their output where the runner put it.
    job_outputs = list((copy / "checkpoints/logs/dask").glob("*.out")) + list(
        (copy / "checkpoints/logs/dask").glob("*.err")
    )
    assert any("distributed.worker" in path.read_text() for path in job_outputs), job_outputs
