"""Where the study's runs execute: cluster.yaml (not a parameter of any stage), checked, and the Dask cluster it names.

Three ways, chosen by the settings:

- ``kind: local`` (the default): a ``LocalCluster`` on this machine, one worker process per core with one thread
  each (or ``workers``), or with ``gpus: G``, one worker per GPU that runs ``runs_per_gpu`` runs at once;
- ``scheduler_address``: a Dask cluster that is already running (``dask scheduler`` + ``dask worker``);
- ``kind: slurm | pbs | sge | lsf``: dask-jobqueue's cluster of that kind, ``jobs`` batch jobs of
  ``workers_per_job`` workers each.

Every problem with the settings is reported at once by :func:`cluster_settings`, before anything starts.
Everything started here listens on 127.0.0.1 unless ``scheduler_host`` says otherwise (a batch cluster's compute
nodes must reach the scheduler; see docs/running.md, "Security", for TLS).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

CLUSTER_FILE = "cluster.yaml"
KINDS = ("local", "slurm", "pbs", "sge", "lsf")
JOBQUEUE_KINDS = KINDS[1:]
SUBMIT_COMMANDS = {"slurm": "sbatch", "pbs": "qsub", "sge": "qsub", "lsf": "bsub"}


# A run is a subprocess (papermill and its kernel) that a worker only waits on, so Dask's own monitoring has nothing
# to see there, yet it costs CPU the runs need: the statistical profiler samples each worker's threads every 10 ms and
# every server checks its event loop every 20 ms. A local cluster of two workers waiting on two runs took 13% of one
# core with Dask's defaults, 3.7% with these (`python benchmarks/runner_idle_cpu.py`, this project's 2-core machine).
QUIET_DASK = {"distributed.worker.profile.enabled": False, "distributed.admin.tick.interval": "1s"}


def quiet_dask_exports() -> list[str]:
    """:data:`QUIET_DASK` as the shell exports a batch job's workers read it from (Dask's ``DASK_`` variables)."""
    return [
        f"export DASK_{key.upper().replace('.', '__').replace('-', '_')}={value}" for key, value in QUIET_DASK.items()
    ]


class ParamsError(ValueError):
    """A part of params.yaml or cluster.yaml (with the command line's overrides) cannot work; ``problems`` lists every
    reason and ``section`` names the part. One class for the cluster settings (here) and the study grid
    (:func:`repro.runner.grid.check_grid`), so a caller catches one thing; it lives here because this module imports
    nothing of the project.
    """

    def __init__(self, problems: list[str], section: str) -> None:
        self.problems = problems
        self.section = section
        super().__init__("\n".join(f"  - {problem}" for problem in problems))


@dataclass(frozen=True)
class ClusterSettings:
    """The settings of cluster.yaml (see the comments there for each field)."""

    kind: str = "local"
    scheduler_address: str | None = None
    workers: int | None = None
    threads_per_run: int = 1
    gpus: int = 0
    runs_per_gpu: int | None = None
    retries: int = 1
    dashboard_address: str = "127.0.0.1:8787"
    tls: bool = False
    scheduler_host: str = "127.0.0.1"
    queue: str | None = None
    account: str | None = None
    cores: int = 1
    memory: str = "4GB"
    walltime: str = "04:00:00"
    job_directives: list[str] = field(default_factory=list)
    prologue: list[str] = field(default_factory=list)
    workers_per_job: int = 1
    gpus_per_job: int = 0
    jobs: int = 1

    @property
    def run_resources(self) -> dict[str, float] | None:
        """What one run asks of a worker: ``1/runs_per_gpu`` of a ``GPU``, or nothing."""
        if not self.runs_per_gpu:
            return None
        # Less a billionth, so that runs_per_gpu of them fit in one GPU despite floating-point rounding
        # (1.0 - 9 * (1/9) is already less than 1/9).
        return {"GPU": (1 / self.runs_per_gpu) * (1 - 1e-9)}

    def describe(self) -> str:
        if self.scheduler_address:
            return f"the Dask scheduler at {self.scheduler_address}"
        if self.kind == "local":
            if self.gpus:
                return f"a local Dask cluster: {self.gpus} GPU worker(s), {self.runs_per_gpu} run(s) per GPU"
            return f"a local Dask cluster of {self.local_workers} worker process(es), one run each"
        return (
            f"a {self.kind.upper()} cluster: {self.jobs} job(s) of {self.workers_per_job} worker(s) in queue "
            f"'{self.queue}' ({self.cores} core(s), {self.memory}, {self.walltime} per job)"
        )

    @property
    def local_workers(self) -> int:
        return self.workers or max(1, (os.cpu_count() or 1) // self.threads_per_run)


_INTS = {
    "workers": 1,
    "threads_per_run": 1,
    "gpus": 0,
    "runs_per_gpu": 1,
    "retries": 0,
    "cores": 1,
    "workers_per_job": 1,
    "gpus_per_job": 0,
    "jobs": 1,
}
_STRINGS = ("kind", "scheduler_address", "dashboard_address", "scheduler_host", "queue", "account", "memory")


def read_cluster_file(root: Path) -> dict[str, Any]:
    """The settings of ``root``'s cluster.yaml as written (empty when the file is absent: every default holds).

    Raises:
        ParamsError: the file is not a YAML mapping of settings.
    """
    path = Path(root) / CLUSTER_FILE
    if not path.exists():
        return {}
    try:
        settings = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ParamsError([f"{path}: not valid YAML: {error}"], CLUSTER_FILE) from None
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise ParamsError(
            [f"{path}: expected a mapping of settings (key: value), got {type(settings).__name__}"], CLUSTER_FILE
        )
    return settings


def cluster_settings(section: dict[str, Any] | None, overrides: dict[str, Any] | None = None) -> ClusterSettings:
    """Check the settings of cluster.yaml (:func:`read_cluster_file`) with ``overrides`` (from the command line)
    applied on top.

    Raises:
        ParamsError: listing every unknown key, wrong type, unknown kind, a batch kind without a queue, and
            GPU settings that no worker could satisfy.
    """
    values = {**(section or {}), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    known = {f.name for f in fields(ClusterSettings)}
    problems = [f"cluster.{key}: unknown setting; known: {', '.join(sorted(known))}" for key in values.keys() - known]
    values = {k: v for k, v in values.items() if k in known and v is not None}
    wrong = set()
    for key, minimum in _INTS.items():
        value = values.get(key, minimum)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            problems.append(f"cluster.{key}: {value!r} is not a whole number >= {minimum}")
            wrong.add(key)
    for key in _STRINGS:
        if not isinstance(values.get(key, ""), str):
            problems.append(f"cluster.{key}: {values[key]!r} is not a string")
            wrong.add(key)
    for key in ("job_directives", "prologue"):
        value = values.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"cluster.{key}: {value!r} is not a list of strings")
            wrong.add(key)
    if not isinstance(values.get("tls", False), bool):
        problems.append(f"cluster.tls: {values['tls']!r} is not true or false")
        wrong.add("tls")
    # The checks below see the defaults in place of wrong values, so that one message lists every problem.
    settings = ClusterSettings(**{k: v for k, v in values.items() if k not in wrong})

    if settings.kind not in KINDS:
        problems.append(f"cluster.kind: unknown kind '{settings.kind}'; choose one of {', '.join(KINDS)}")
    if settings.scheduler_address and not re.match(r"^(tcp|tls|ucx|inproc)://", settings.scheduler_address):
        problems.append(f"cluster.scheduler_address: '{settings.scheduler_address}' is not like tcp://host:8786")
    if settings.scheduler_address and settings.kind != "local":
        problems.append("cluster: give either scheduler_address (a running cluster) or kind, not both")
    if settings.kind in JOBQUEUE_KINDS:
        submit = SUBMIT_COMMANDS[settings.kind]
        if shutil.which(submit) is None:
            problems.append(f"cluster.kind {settings.kind}: `{submit}` is not on PATH; run where jobs can be submitted")
        if not settings.queue:
            problems.append(f"cluster.queue: kind {settings.kind} needs the queue (partition) to submit jobs to")
        if not re.fullmatch(r"\d+(-\d+)?(:\d{2}){0,2}", settings.walltime):
            problems.append(f"cluster.walltime: '{settings.walltime}' is not like 04:00:00")
        if settings.cores % settings.workers_per_job:
            problems.append(f"cluster: cores ({settings.cores}) must be a multiple of workers_per_job")
        try:
            from dask.utils import parse_bytes

            parse_bytes(settings.memory)
        except (ValueError, TypeError):
            problems.append(f"cluster.memory: '{settings.memory}' is not a size like 16GB")
    if settings.runs_per_gpu:
        if settings.kind == "local" and not settings.scheduler_address and not settings.gpus:
            problems.append("cluster.runs_per_gpu is set but cluster.gpus is 0: no local worker would have a GPU")
        if settings.kind in JOBQUEUE_KINDS and not settings.gpus_per_job:
            problems.append("cluster.runs_per_gpu is set but cluster.gpus_per_job is 0: no job would have a GPU")
    elif settings.gpus or settings.gpus_per_job:
        problems.append("cluster: gpus / gpus_per_job are set but runs_per_gpu is not: say how many runs share one")
    if problems:
        raise ParamsError(problems, "cluster")
    return settings


def start_cluster(settings: ClusterSettings, log_directory: Path):
    """The Dask cluster of ``settings`` (None for an existing scheduler) and a ``Client`` connected to it.

    Raises:
        ParamsError: the scheduler cannot be reached, or the cluster cannot start.
    """
    import dask
    from distributed import Client

    security = _security(settings)
    if settings.scheduler_address:
        try:
            client = Client(settings.scheduler_address, timeout="10s", **security)
        except (OSError, TimeoutError) as error:
            raise ParamsError(
                [f"cannot reach the Dask scheduler at {settings.scheduler_address}: {error}"], "cluster"
            ) from None
        if settings.run_resources and not any(
            "GPU" in worker.get("resources", {}) for worker in client.scheduler_info()["workers"].values()
        ):
            client.close()
            raise ParamsError(
                [
                    f"runs ask for a GPU (cluster.runs_per_gpu) but no worker of {settings.scheduler_address} "
                    "advertises one: start the workers with `dask worker ... --resources GPU=1`"
                ],
                "cluster",
            )
        return None, client
    # Servers read their config when they are made: the scheduler here and a local cluster's nannies (their workers
    # get QUIET_DASK as their own config, a batch job's workers from the job script's exports).
    with dask.config.set(QUIET_DASK):
        if settings.kind != "local":
            return _jobqueue_cluster(settings, log_directory, security)
        return _local_cluster(settings, security)


def _local_cluster(settings: ClusterSettings, security: dict):
    import dask
    from distributed import Client, LocalCluster

    # A local cluster's nannies live in this process and write their pre-spawn environment (OMP_NUM_THREADS=1,
    # MALLOC_TRIM_THRESHOLD_=65536, ...) into its os.environ before spawning a worker, where it stays: every command
    # started afterwards (dvc repro aggregate, a test's subprocess, a notebook kernel) would inherit one thread and the
    # page faults of stage_task.run_environment's docstring. The workers only start runs, each with its own
    # environment, so they need none of it.
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {}}):
        try:
            cluster = LocalCluster(
                n_workers=settings.gpus or settings.local_workers,
                threads_per_worker=settings.runs_per_gpu if settings.gpus else 1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=settings.dashboard_address,
                resources={"GPU": 1} if settings.gpus else None,
                silence_logs=logging.CRITICAL,  # a failed run is reported by the runner, once
                # A nanny's copy of the config shares its sections with Dask's, which start_cluster's `with` restores
                # on leaving, so a worker the nanny restarts later would profile again; its own config keeps them.
                config=QUIET_DASK,
                **security,
            )
        except (OSError, RuntimeError) as error:
            raise ParamsError([f"cannot start the local Dask cluster: {error}"], "cluster") from None
    return cluster, Client(cluster)


def _jobqueue_object(settings: ClusterSettings, log_directory: Path, security: dict):
    """dask-jobqueue's cluster of ``settings.kind``, its scheduler started, no job submitted yet."""
    import dask_jobqueue

    cluster_class = {
        "slurm": dask_jobqueue.SLURMCluster,
        "pbs": dask_jobqueue.PBSCluster,
        "sge": dask_jobqueue.SGECluster,
        "lsf": dask_jobqueue.LSFCluster,
    }[settings.kind]
    account = {"account": settings.account} if settings.kind in ("slurm", "pbs") else {"project": settings.account}
    extra_args = []
    if settings.gpus_per_job:
        extra_args = ["--resources", f"GPU={settings.gpus_per_job / settings.workers_per_job}"]
    return cluster_class(
        queue=settings.queue,
        cores=settings.cores,
        processes=settings.workers_per_job,
        memory=settings.memory,
        walltime=settings.walltime,
        job_extra_directives=settings.job_directives,
        job_script_prologue=[*quiet_dask_exports(), *settings.prologue],  # the user's lines last: they may override
        worker_extra_args=extra_args,
        python=sys.executable,
        log_directory=str(log_directory),
        # tls: the temporary certificates go with the job logs (git-ignored, on the shared filesystem).
        shared_temp_directory=str(log_directory),
        scheduler_options={"host": settings.scheduler_host, "dashboard_address": settings.dashboard_address},
        **{k: v for k, v in account.items() if v},
        **security,
    )


def job_script(settings: ClusterSettings, log_directory: Path) -> str:
    """The batch script each of the cluster's jobs would run (nothing is submitted)."""
    cluster = _jobqueue_object(settings, log_directory, _security(settings))
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def _jobqueue_cluster(settings: ClusterSettings, log_directory: Path, security: dict):
    from distributed import Client

    try:
        cluster = _jobqueue_object(settings, log_directory, security)
        if settings.kind == "slurm":
            _slurm_test_only(cluster)
        cluster.scale(jobs=settings.jobs)
        # Submit the jobs now (scale() only schedules it), so that a refused submission is reported here instead of
        # leaving the runner waiting for workers that will never come.
        cluster.sync(cluster._correct_state)
    except ParamsError:
        raise
    except (OSError, RuntimeError, ValueError) as error:
        raise ParamsError([f"cannot start the {settings.kind} cluster: {error}"], "cluster") from None
    if any(getattr(job, "job_id", None) is None for job in cluster.workers.values()):
        cluster.close()
        raise ParamsError(
            [f"`{SUBMIT_COMMANDS[settings.kind]}` refused the worker jobs (its message is above)"], "cluster"
        )
    # Keep `jobs` jobs: one that ends (its walltime, a failed node) is replaced, and its runs resume elsewhere.
    cluster.adapt(minimum_jobs=settings.jobs, maximum_jobs=settings.jobs)
    return cluster, Client(cluster)


def _slurm_test_only(cluster) -> None:
    """Ask SLURM whether it would accept the worker job (partition, resources, limits) without submitting it."""
    with tempfile.NamedTemporaryFile("w", suffix=".sh") as script:
        script.write(cluster.job_script())
        script.flush()
        check = subprocess.run(["sbatch", "--test-only", script.name], capture_output=True, text=True)
    if check.returncode != 0:
        cluster.close()
        reason = " ".join(line.strip() for line in check.stderr.splitlines() if line.strip())
        raise ParamsError([f"SLURM would not accept the worker job: {reason}"], "cluster")


def _security(settings: ClusterSettings) -> dict:
    """``tls: true``: Dask's temporary self-signed credentials, made afresh for this cluster (dask-jobqueue hands
    them to the jobs through files beside the job logs). A running cluster's own credentials come from Dask's
    configuration instead; see docs/running.md, "Security"."""
    return {"security": True} if settings.tls and not settings.scheduler_address else {}
