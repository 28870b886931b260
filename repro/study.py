"""Run the study: every stale training run of the grid on a Dask cluster, then `dvc repro` for the rest.

    python -m repro.study                       # a local cluster, one worker process per core
    python -m repro.study --workers 4           # four at a time (`make study JOBS=4`)
    python -m repro.study --scheduler-address tcp://10.0.0.5:8786
    python -m repro.study --kind slurm --set queue=gpu --set jobs=4
    python -m repro.study --datasets ph2-dermoscopy --models unet,unetpp --seeds 0   # part of the grid
    python -m repro.study --stages 'train@ph2-*' --dry-run   # what would train, and for how long; trains nothing
    python -m repro.study --retrain --trained-on cuda        # train the committed GPU runs again (here, afresh)
    python -m repro.study --report-only         # the aggregate and the report from the runs that exist (`make report`)

`dvc repro` runs stages one at a time under one repository lock. This entry point checks the whole grid and the
``cluster:`` settings of params.yaml first (one message lists every problem), prepares the data (`dvc repro
prepare`), asks DVC which `train@...` (and `train_extra@...`, `train_volumes@...`) stages are stale, and submits
each one's exact command from dvc.yaml as a Dask task keyed by the stage's name, so no run is ever submitted twice.
Seeds go first, then variants in the order ``study.models`` lists them: an interrupted study has every variant at
the same number of seeds. This process alone records a finished run in dvc.lock (`dvc commit`, one at a time),
and Ctrl-C or SIGTERM only stops it between two commits, so dvc.lock never holds half an entry and a second call
runs exactly the stages still stale. Finally `dvc repro` runs complexity and aggregate.

Before it trains, it prints the scale, how many runs it trains (new, or replacing stale runs of that scale) and
where the results go: dvc.yaml writes every output of the study below results/<scale>/, so a study at another
scale writes beside the committed one, never over it.

Aiming it: ``--datasets``, ``--models``, ``--seeds`` (comma-separated) and ``--stages`` (globs over the stage names)
train only the stale runs that match every filter given; the rest of the pipeline (aggregate, report) then waits
for a call without filters, or ``--report-only``, which rebuilds the aggregate and the report from the runs that
exist (``dvc repro --single-item aggregate report``: the stages themselves, none of the training stages they
follow). ``--trained-on DEVICE`` selects the committed runs whose metrics.json ``device`` starts with DEVICE
(``cuda``, ``cpu``). ``--retrain`` (refused without a filter) also trains the selected runs that are up to date:
each moves its checkpoint aside (``last.pt.replaced``) just before it starts, so it trains from its first epoch
whatever device or software stack wrote that checkpoint; its committed outputs stay until the new run overwrites
them, and it is recorded in dvc.lock as any finished run. ``--dry-run`` lists the runs a call would train, new ones
apart from those replacing a committed run, with a time estimate, and stops. A call that would train more than ten
runs or for more than two hours asks first (on a terminal; elsewhere it refuses unless given ``--yes``). The
estimate is each run's dataset x variant's median ``train_seconds`` (+ ``eval_seconds``) over the committed runs of
the scale (less those ``--trained-on`` selects: another device's times), else its dataset's median, spread over the
cluster's slots; benchmarks/grid_cost.py's step model would time every variant first (minutes), too long for a
question asked before a start.

The runs' logs (checkpoints/logs/<stage>.log) and DVC's (prepare.log, repro.log, report.log) keep the runs'
settings, epoch lines and errors, not papermill's cell markers, the kernel's transport warning or DVC's progress
bars (:data:`repro.stage_task.NOISE`), and the runner's screen shows none of them. A command that fails ends the
runner's output with its cause: the last line of its log that states an error.

A worker killed mid-run loses only its current epoch: the scheduler gives the run to another worker, which
resumes from the run's checkpoint. A run that fails is retried (``cluster.retries``), then reported with its
executed notebook and the failing cell's error; the other runs go on.

Errors a user causes end with one line (or one list) and no traceback; ``--debug`` or ``UNET_REPRO_DEBUG=1``
shows it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from repro.cluster import ClusterSettings, ParamsError, cluster_settings, start_cluster
from repro.config import load_params
from repro.data.registry import REPO_ROOT
from repro.grid import Grid, RunFilter, check_grid, run_name
from repro.stage_task import TOPIC, StageFailed, copy_output, failure_cause, meaningful_lines, run_stage

# The programs the training stages' commands in dvc.yaml call by name.
STAGE_PROGRAMS = ("papermill",)

DEBUG_ENV = "UNET_REPRO_DEBUG"

# A start that trains more runs than this, or longer (estimated wall time), asks first.
CONFIRM_RUNS = 10
CONFIRM_SECONDS = 2 * 3600


class StudyError(RuntimeError):
    """A problem the user can fix; the command line prints its message without a traceback."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM reached the runner."""


@dataclass
class Outcome:
    """What happened to the grid's runs in this call."""

    total: int
    up_to_date: int = 0
    done: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # each trained run's wall time on its worker
    failed: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False
    selected: int | None = None  # the runs the filters selected (None: no filter, the whole grid)
    only: str = ""  # the filters, as the command line gave them
    replacing: dict[str, list[str]] = field(default_factory=dict)  # each re-trained run started -> its outputs
    stopped: str = ""  # why it trained nothing: "dry run", "declined"


# --- DVC ---------------------------------------------------------------------------------------------------------


def _repo(root: Path):
    """DVC's API on the repository at ``root``."""
    from dvc.repo import Repo

    # Importing dvc sets up its console logging at INFO: its in-process commit would announce every lock-file update.
    logging.getLogger("dvc").setLevel(logging.WARNING)
    # DVC's progress bars ("Collecting files and computing hashes", "Waiting to acquire lock") draw on a terminal
    # unless their logger is above ERROR: inside the runner's own bar they are noise.
    logging.getLogger("dvc.progress").setLevel(logging.CRITICAL)
    return Repo(str(root))


def stale_train_stages(root: Path, grid: Grid, only: RunFilter | None = None) -> list:
    """The `train@...`, `train_extra@...` and `train_volumes@...` stages `dvc repro` would run (DVC's own status), in
    the grid's order (:meth:`repro.grid.Grid.runs`): seed by seed, then each variant in the order ``study.models``
    (then ``study.extra.models``, ``study.volumes.models``) lists it, then each dataset. The study lists its variants
    in the order their claims matter, so a study cut short has every variant at the same number of seeds, the first
    ones at one more. With ``only``, the stale stages it selects."""
    return train_stages(root, grid, only)[0]


def train_stages(
    root: Path, grid: Grid, only: RunFilter | None = None, trained_on: str | None = None, retrain: bool = False
) -> tuple[list, set[str]]:
    """The training stages one call trains, in the grid's order (:func:`stale_train_stages`), and which of them are
    up to date: the stale runs among those selected (:func:`selected_runs`), and with ``retrain`` the selected runs
    that are up to date too (``--retrain``: committed runs to train again, e.g. those of another device)."""
    targets = [stage for stage, _, _ in grid.blocks]
    selected = set(selected_runs(root, grid, only, trained_on))
    with _repo(root) as repo:
        stale = set(repo.status(targets=targets))
        wanted = selected if retrain else stale & selected
        stages = [stage for stage in repo.index.stages if stage.addressing in wanted]
    rank = {name: i for i, (name, _, _) in enumerate(_grid_runs(grid))}
    return (
        sorted(stages, key=lambda stage: rank[stage.addressing]),
        {stage.addressing for stage in stages if stage.addressing not in stale},
    )


def run_folder(grid: Grid, dataset: str, model: str, seed: int) -> str:
    """A run's results folder, repo-relative: ``results/<scale>/runs/<dataset>/<model>/seed<k>``."""
    return f"{grid.results_dir}/runs/{dataset}/{model}/seed{seed}"


def trained_on_device(root: Path, grid: Grid) -> dict[str, str]:
    """Each run of ``grid`` that holds a finished run (its metrics.json) -> the device its metrics.json records."""
    devices = {}
    for stage, dataset, model, seed in grid.runs():
        metrics = _read_json(root / run_folder(grid, dataset, model, seed) / "metrics.json")
        if metrics is not None:
            devices[run_name(stage, dataset, model, seed)] = str(metrics.get("device", "(none recorded)"))
    return devices


def selected_runs(root: Path, grid: Grid, only: RunFilter | None = None, trained_on: str | None = None) -> list[str]:
    """The runs of ``grid`` (their stage names, in its order) that the filters select: ``only``'s, and with
    ``trained_on`` (``--trained-on``) the committed runs whose metrics.json ``device`` starts with it."""
    names = [run_name(*run) for run in (only.select(grid) if only else grid.runs())]
    if trained_on is None:
        return names
    devices = trained_on_device(root, grid)
    return [name for name in names if devices.get(name, "").startswith(trained_on)]


def trained_on_problems(root: Path, grid: Grid, only: RunFilter | None, trained_on: str | None) -> list[str]:
    """``--trained-on`` given as nothing, or selecting no run (with the devices the selected runs record)."""
    if trained_on is None:
        return []
    if not trained_on.strip():
        return ["--trained-on: give the start of a device as metrics.json records it, e.g. cuda or cpu"]
    if selected_runs(root, grid, only, trained_on):
        return []
    devices = trained_on_device(root, grid)
    names = [run_name(*run) for run in (only.select(grid) if only else grid.runs())]
    counts: dict[str, int] = {}
    for name in names:
        if name in devices:
            counts[devices[name]] = counts.get(devices[name], 0) + 1
    found = "; ".join(f"{device} ({n})" for device, n in sorted(counts.items())) or "none: no run has a metrics.json"
    aimed = f" among those of {only.describe()}" if only else ""
    return [
        f"--trained-on {trained_on}: no committed run{aimed} was trained on a device starting with '{trained_on}'; "
        f"their metrics.json record: {found}"
    ]


def committed_runs(root: Path, stages: list) -> set[str]:
    """The stale ``stages`` that already hold a run, which training replaces: an entry in dvc.lock, or a finished
    run's metrics.json in its results folder.

    Outputs lie below results/<scale>/, so these are runs of the same scale whose code, data or settings changed
    since; the others are new. A study at another scale never writes over them.
    """
    try:
        locked = set((yaml.safe_load((root / "dvc.lock").read_text()) or {}).get("stages") or {})
    except (OSError, yaml.YAMLError, AttributeError):
        locked = set()
    return {stage.addressing for stage in stages if stage.addressing in locked or _files(root, stage, "metrics.json")}


def replacing(root: Path, stages: list) -> int:
    """How many of the stale ``stages`` replace a committed run (:func:`committed_runs`)."""
    return len(committed_runs(root, stages))


def missing_splits(params: dict, root: Path = REPO_ROOT) -> list[str]:
    """The datasets the prepare stages prepare that have no split file (data/splits/<name>.json), as problems to
    report: DVC would stop on the missing dependency with "No such file or directory" and no word of the fix."""
    prepare = params.get("prepare") or {}
    names = list(prepare.get("datasets") or []) + list(prepare.get("custom_datasets") or {})
    return [
        f"prepare: '{name}' has no split file (data/splits/{name}.json), which its prepare stage reads; draw one "
        f"with `python -m repro.data.prepare --draw-split {name}` and commit it"
        for name in names
        if not (root / "data" / "splits" / f"{name}.json").is_file()
    ]


def missing_programs(settings: ClusterSettings, programs: tuple[str, ...] = STAGE_PROGRAMS) -> list[str]:
    """The programs the stages' commands call that a local worker would not find, as problems to report.

    A local worker runs each command with its interpreter's scripts folder first on PATH (``run_environment``), so
    a program counts as found there or on PATH. Workers elsewhere (a running scheduler, batch jobs) have their own
    environment, which this machine cannot check.
    """
    if settings.scheduler_address or settings.kind != "local":
        return []
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])
    return [
        f"`{program}` (called by every training stage's command) is neither beside {sys.executable} nor on PATH: "
        "install the project's environment (`make env`) and run the study with its Python"
        for program in programs
        if shutil.which(program, path=search) is None
    ]


def aim_text(only: RunFilter | None = None, trained_on: str | None = None, retrain: bool = False) -> str:
    """The filters and --retrain as the command line gives them, e.g. ``--seeds 4 --trained-on cuda --retrain``;
    empty when none is given."""
    parts = [only.describe() if only else ""]
    parts += [f"--trained-on {trained_on}" if trained_on is not None else "", "--retrain" if retrain else ""]
    return " ".join(part for part in parts if part)


def move_checkpoint_aside(root: Path, grid: Grid, dataset: str, model: str, seed: int) -> Path | None:
    """Rename a run's checkpoint (``checkpoints/<dataset>/<model>/seed<k>/<scale>/last.pt``) to ``last.pt.replaced``
    (over an older one), so that the run trains from its first epoch; its new path, or None when it has none."""
    checkpoint = root / "checkpoints" / dataset / model / f"seed{seed}" / grid.scale / "last.pt"
    if not checkpoint.is_file():
        return None
    aside = checkpoint.with_name("last.pt.replaced")
    os.replace(checkpoint, aside)
    return aside


def plan(
    grid: Grid,
    to_train: int,
    replaced: int,
    only: RunFilter | None = None,
    retrained: int = 0,
    selected: int | None = None,
    aim: str | None = None,
) -> str:
    """The line the runner prints before it starts: the scale, the runs it trains (new, replacing stale runs of
    this scale, and ``retrained``: replacing committed runs that are up to date, ``--retrain``), and where the
    results go; with ``only`` (or ``selected`` runs, selected by ``aim``), out of the runs it selects."""
    aim = aim if aim is not None else (only.describe() if only else "")
    selected = selected if selected is not None else (len(only.select(grid)) if only else grid.size)
    aimed = f"selected by {aim} of {grid.size}; " if aim else ""
    again = f", {retrained} replacing committed runs that are up to date (--retrain)" if retrained else ""
    return (
        f"scale {grid.scale}: {to_train} of {selected} training runs to run ({aimed}{to_train - replaced - retrained} "
        f"new, {replaced} replacing stale runs of scale {grid.scale}{again}; {selected - to_train} up to date); "
        f"results go to {grid.results_dir}/"
    )


@dataclass
class Estimate:
    """How long runs take, from the committed runs of the same scale: each run its cell's (dataset x variant)
    median of ``train_seconds + eval_seconds``, else its dataset's median over every variant, else unknown.

    Notebook start-up and data loading (seconds) are left out. benchmarks/grid_cost.py's step model would also
    cover cells without a run, but it times every variant's training steps first: minutes before a question.
    """

    seconds: dict[str, float] = field(default_factory=dict)  # each run with an estimate -> expected seconds
    from_dataset: set[str] = field(default_factory=set)  # those from their dataset's median
    unknown: list[str] = field(default_factory=list)  # runs of a dataset without any committed run
    left_out: int = 0  # committed runs whose times were left out (those --trained-on replaces)

    @classmethod
    def of_runs(cls, root: Path, grid: Grid, names: list[str], leave_out: set[str] = frozenset()) -> Estimate:
        """The estimate of the runs ``names``; the committed runs ``leave_out`` (stage names) do not count: the
        runs ``--trained-on`` selects were timed on the device they are re-trained to leave."""
        skip = {
            root / run_folder(grid, dataset, model, seed) / "metrics.json"
            for stage, dataset, model, seed in grid.runs()
            if run_name(stage, dataset, model, seed) in leave_out
        }
        by_cell: dict[tuple[str, str], list[float]] = {}
        left_out = 0
        for path in (root / grid.results_dir / "runs").glob("*/*/seed*/metrics.json"):
            if path in skip:
                left_out += 1
                continue
            metrics = _read_json(path) or {}
            seconds = metrics.get("train_seconds")
            if metrics.get("resumed_after_epochs") or not isinstance(seconds, int | float):
                continue  # a resumed run's record timed its last part only
            extra = metrics.get("eval_seconds")
            seconds += extra if isinstance(extra, int | float) else 0.0
            by_cell.setdefault((path.parent.parent.parent.name, path.parent.parent.name), []).append(float(seconds))
        by_dataset: dict[str, list[float]] = {}
        for (dataset, _), times in by_cell.items():
            by_dataset.setdefault(dataset, []).extend(times)
        cells = {name: cell for name, cell, _ in _grid_runs(grid)}
        estimate = cls(left_out=left_out)
        for name in names:
            dataset, _ = cells[name]
            if cells[name] in by_cell:
                estimate.seconds[name] = statistics.median(by_cell[cells[name]])
            elif dataset in by_dataset:
                estimate.seconds[name] = statistics.median(by_dataset[dataset])
                estimate.from_dataset.add(name)
            else:
                estimate.unknown.append(name)
        return estimate

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def wall(self, slots: int | None) -> float:
        """The wall time of the runs with an estimate on ``slots`` runs at a time (one when unknown)."""
        return self.total / max(1, slots or 1)

    def hours(self, slots: int | None) -> str:
        """``~H h`` of wall time, for the question; with the runs left out when some have no estimate."""
        wall = self.wall(slots)
        text = f"~{wall / 3600:.1f} h" if wall >= 360 else f"~{max(1, round(wall / 60))} min"
        return text + (f", {len(self.unknown)} of them without an estimate" if self.unknown else "")

    def describe(self, slots: int | None) -> str:
        """The estimate and where it comes from."""
        known = len(self.seconds)
        if not known:
            return "no time estimate: no committed run of their datasets at this scale"
        where = f"on {slots} run(s) at a time" if slots else "one at a time (the cluster's size is unknown)"
        source = "from the committed runs' train_seconds + eval_seconds: the median of each run's own dataset x variant"
        if self.from_dataset:
            source += f", for {len(self.from_dataset)} run(s) without one the median of their dataset"
        if self.unknown:
            source += f"; {len(self.unknown)} run(s) of datasets without any committed run have no estimate"
        if self.left_out:
            source += f"; the times of the {self.left_out} committed run(s) they replace left out (another device)"
        return f"~{_duration(self.wall(slots))} {where} ({_duration(self.total)} of training), {source}"


def dry_run_listing(
    stages: list, committed: set[str], estimate: Estimate, slots: int | None, retrained: set[str] = frozenset()
) -> str:
    """What ``--dry-run`` prints: the runs that would train, new ones apart from those replacing a committed run
    (stale ones, then the ``retrained`` ones that are up to date, ``--retrain``), each with its estimate, and the
    total."""
    names = [stage.addressing for stage in stages]
    if not names:
        return "dry run: nothing would train; nothing was run"
    width = max(map(len, names))
    lines = [f"dry run: {len(names)} run(s) would train, {estimate.describe(slots)}"]
    for title, group in (
        ("new runs ({}):", [name for name in names if name not in committed and name not in retrained]),
        (
            "runs replacing committed ones ({}; their code, data or settings changed):",
            [n for n in names if n in committed and n not in retrained],
        ),
        (
            "runs replacing committed ones that are up to date ({}; --retrain trains them afresh):",
            [n for n in names if n in retrained],
        ),
    ):
        if not group:
            continue
        lines.append("  " + title.format(len(group)))
        for name in group:
            seconds = estimate.seconds.get(name)
            guess = "?" if seconds is None else f"~{_duration(seconds)}"
            lines.append(f"    {name:<{width}}  {guess}{' (dataset median)' if name in estimate.from_dataset else ''}")
    lines.append("nothing was run (--dry-run)")
    return "\n".join(lines)


def confirm_start(runs: int, estimate: Estimate, slots: int | None, yes: bool, stdin=None) -> bool:
    """Whether a start that trains ``runs`` may go: yes when it is small (at most :data:`CONFIRM_RUNS` runs and
    :data:`CONFIRM_SECONDS` of estimated wall time) or ``yes``; else the answer to "Train N runs (~H h)? [y/N]" on a
    terminal.

    Raises:
        StudyError: a large start without a terminal to ask on (standard input is not one) and without ``yes``.
    """
    if yes or (runs <= CONFIRM_RUNS and estimate.wall(slots) <= CONFIRM_SECONDS):
        return True
    stdin = stdin or sys.stdin
    question = f"Train {runs} runs ({estimate.hours(slots)})? [y/N] "
    if not (stdin and stdin.isatty()):
        raise StudyError(
            f"this would train {runs} runs ({estimate.hours(slots)}) and no terminal is there to confirm: add --yes "
            "to start it (--dry-run lists them; --datasets, --models, --seeds, --stages train part of them)"
        )
    print(question, end="", flush=True)
    answer = stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def _files(root: Path, stage, pattern: str) -> list[Path]:
    return sorted(path for out in stage.outs for path in (root / out.def_path).glob(pattern))


def cell_error(notebook: Path) -> str | None:
    """The first error an executed notebook records: which cell and the exception, e.g.
    ``cell In [3]: ValueError: unknown dataset 'x'``; None when it holds none."""
    try:
        cells = json.loads(notebook.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return None
    for cell in cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"cell In [{cell.get('execution_count')}]: {output['ename']}: {output['evalue']}"
    return None


# --- progress ----------------------------------------------------------------------------------------------------


class RunTimes:
    """Finished runs' wall times by cell (dataset, variant), for the ETA: the variants' costs differ up to ten-fold,
    and so do the datasets' lengths, so a plain mean over finished runs says little of the runs left."""

    def __init__(self) -> None:
        self.by_cell: dict[tuple[str, str], list[float]] = {}

    def add(self, cell: tuple[str, str], seconds: float) -> None:
        self.by_cell.setdefault(cell, []).append(seconds)

    def expected(self, cell: tuple[str, str]) -> float | None:
        """A run's expected wall time: the mean of its cell's finished runs (its other seeds, which differ little),
        else of its dataset's, else of every finished run; None before any. Seeds run one after another, so from
        the second seed on every cell has a time of its own."""
        dataset = cell[0]
        for times in (
            self.by_cell.get(cell, []),
            [t for (other, _), ts in self.by_cell.items() if other == dataset for t in ts],
            [t for ts in self.by_cell.values() for t in ts],
        ):
            if times:
                return sum(times) / len(times)
        return None

    @classmethod
    def of_recorded_runs(cls, root: Path, grid: Grid, stale: set[str]) -> RunTimes:
        """The times of the grid's up-to-date runs (not in ``stale``), so that a study resumed by a second call has an
        ETA from its start: papermill records each executed notebook's duration. A run resumed from a checkpoint
        (its metrics.json lists ``resumed_after_epochs``) is left out: its notebook timed only its last part."""
        times = cls()
        for name, cell, seed in _grid_runs(grid):
            if name in stale:
                continue
            results, folder = root / grid.results_dir, Path(*cell, f"seed{seed}")
            metrics = _read_json(results / "runs" / folder / "metrics.json")
            notebook = _read_json(results / "notebooks" / folder / "train.ipynb")
            duration = ((notebook or {}).get("metadata") or {}).get("papermill", {}).get("duration")
            if metrics is not None and not metrics.get("resumed_after_epochs") and isinstance(duration, int | float):
                times.add(cell, float(duration))
        return times


def _grid_runs(grid: Grid) -> list[tuple[str, tuple[str, str], int]]:
    """(DVC stage name, cell (dataset, variant), seed) of every run of ``grid``, in the order the runner trains them."""
    return [
        (f"{stage}@{dataset}-{model}-{seed}", (dataset, model), seed) for stage, dataset, model, seed in grid.runs()
    ]


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class Progress:
    """One bar over the runs to train (done / running / failed, ETA from finished runs' times) and one line per
    finished run. On a terminal the bar redraws in place; in a log, each line carries the counts instead.

    Args:
        cells: each run to train (its stage name) -> its cell (dataset, variant).
        times: finished runs' times (:class:`RunTimes`), those of this call added as they come.
    """

    def __init__(self, cells: dict[str, tuple[str, str]], times: RunTimes) -> None:
        from tqdm import tqdm

        stream = sys.stdout
        self.total = len(cells)
        self.cells = cells
        self.times = times
        self.left = set(cells)  # neither done nor failed
        self.lock = threading.Lock()
        self.running: dict[str, float] = {}  # each running run -> when its current attempt started (time.monotonic)
        self.started: dict[str, int] = {}
        self.failed_attempts: dict[str, int] = {}
        self.done = self.failed = 0
        self.slots = 1  # runs the cluster runs at once (its workers' threads), updated as workers come and go
        self.tty = stream.isatty()
        bar_format = "{percentage:3.0f}%|{bar}| {n}/{total} runs: {desc}"
        self.bar = tqdm(total=self.total, file=stream, disable=not self.tty, bar_format=bar_format)
        self._refresh()

    def on_event(self, event) -> None:
        """A worker's message (Dask topic ``TOPIC``); runs in the client's event-loop thread."""
        _, message = event
        stage = message["stage"]
        with self.lock:
            if message["event"] == "start":
                attempt = self.started[stage] = self.started.get(stage, 0) + 1
                if attempt > 1 and self.failed_attempts.get(stage, 0) < attempt - 1:
                    self.write(f"resumed  {stage} on {message['worker']}: its worker was lost (from its checkpoint)")
                elif attempt > 1:
                    self.write(f"retry    {stage} (attempt {attempt}) on {message['worker']}")
                self.running[stage] = time.monotonic()
            elif message["event"] == "failed":
                self.failed_attempts[stage] = self.failed_attempts.get(stage, 0) + 1
                self.running.pop(stage, None)
            self._refresh()

    def finished(self, stage: str, seconds: float | None, line: str, ok: bool, whole: bool = True) -> None:
        """``stage`` has ended: done in ``seconds`` (``whole``: trained from its first epoch in this attempt), or
        failed."""
        with self.lock:
            self.running.pop(stage, None)
            self.left.discard(stage)
            if ok:
                self.done += 1
                if whole and seconds is not None:
                    self.times.add(self.cells[stage], seconds)
            else:
                self.failed += 1
            self._refresh()
            self.write(line if self.tty else f"{line}  [{self._counts()}]")

    def _counts(self) -> str:
        return f"{self.done + self.failed}/{self.total}: done {self.done}, running {len(self.running)}, " + (
            f"failed {self.failed}, ETA {self._eta()}"
        )

    def _eta(self) -> str:
        expected = {stage: self.times.expected(self.cells[stage]) for stage in self.left}
        if None in expected.values():
            return "after the first run"
        # The work left (each run's expected time, less what a running one has done) spread over the cluster's slots.
        now = time.monotonic()
        work = sum(
            max(0.0, seconds - (now - self.running[stage])) if stage in self.running else seconds
            for stage, seconds in expected.items()
        )
        return _duration(work / max(1, self.slots))

    def tick(self, slots: int) -> None:
        """Redraw with the cluster's current number of slots."""
        with self.lock:
            self.slots = slots
            self._refresh()

    def _refresh(self) -> None:
        self.bar.n = self.done + self.failed
        self.bar.set_description_str(
            f"done {self.done}, running {len(self.running)}, failed {self.failed}, ETA {self._eta()}", refresh=True
        )

    def write(self, line: str) -> None:
        # On a terminal, through tqdm, which lifts the bar out of the way and redraws it below the line.
        self.bar.write(line, file=self.bar.fp) if self.tty else print(line, flush=True)

    def close(self) -> None:
        self.bar.close()


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


# --- the runner --------------------------------------------------------------------------------------------------


class RunQueue:
    """Hands runs to the cluster in the runner's order, one per free slot, and returns them as they finish.

    The runner's order (seed by seed, then ``study.models``') is kept by holding back every run without a free slot:
    given them all at once, Dask sends the first few runs of each task group (a dataset's runs, by their keys) to
    workers straight away, where one can wait behind a long run while another worker goes on to later runs.

    Args:
        names: the runs, first to start first.
        submit: starts one run on the cluster and returns its future.
    """

    def __init__(self, names: list[str], submit) -> None:
        self.waiting = list(reversed(names))
        self.submit = submit
        self.running: set = set()

    def __bool__(self) -> bool:
        return bool(self.waiting or self.running)

    def step(self, slots: int, timeout: float = 1.0) -> set:
        """Fill the free ones of ``slots`` with the next runs, then wait up to ``timeout`` s for any to finish."""
        from distributed import wait

        while self.waiting and len(self.running) < slots:
            self.running.add(self.submit(self.waiting.pop()))
        if not self.running:  # no slot yet (workers still starting, or all gone): look again later
            time.sleep(timeout)
            return set()
        try:
            finished, self.running = wait(self.running, timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            return set()
        return set(finished)


class Runner:
    """One call of the study: signals are turned into a flag that is only acted on between two DVC writes."""

    def __init__(
        self,
        root: Path,
        logs: Path,
        settings: ClusterSettings,
        rest: bool = True,
        only: RunFilter | None = None,
        dry_run: bool = False,
        yes: bool = True,
        trained_on: str | None = None,
        retrain: bool = False,
    ) -> None:
        """``rest``: run `dvc repro` for the rest of the pipeline after training (never with a filter ``only`` or
        ``trained_on``); ``dry_run``: list what would train and stop; ``yes``: start a large study without asking;
        ``trained_on``: select only the committed runs whose metrics.json device starts with it; ``retrain``: train
        the selected runs that are up to date too, each from its first epoch (:func:`move_checkpoint_aside`)."""
        self.root, self.logs, self.settings, self.rest = root, logs, settings, rest
        self.only, self.dry_run, self.yes = only or RunFilter(), dry_run, yes
        self.trained_on, self.retrain = trained_on, retrain
        self.filters = aim_text(self.only, trained_on)  # what selects the runs
        self.aim = aim_text(self.only, trained_on, retrain)
        self.retrained: set[str] = set()
        self.stop: int | None = None

    def _signal(self, signum, _frame) -> None:
        self.stop = signum

    def _check_stop(self) -> None:
        if self.stop is not None:
            raise Interrupted

    def _dvc(self, args: list[str], log_name: str) -> str:
        """A DVC command, its output (less :data:`repro.stage_task.NOISE`) in a log, returned; a failure shows the
        log's end and, last, its cause."""
        log = self.logs / log_name
        log.parent.mkdir(parents=True, exist_ok=True)
        # No analytics notice; the stages' own programs (papermill for complexity and aggregate) come through the
        # filter with DVC's output.
        env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
        with log.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "dvc", *args],
                cwd=self.root,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            copier = threading.Thread(target=copy_output, args=(process.stdout, output), daemon=True)
            copier.start()
            try:
                while process.poll() is None:
                    if self.stop is not None:
                        process.terminate()
                        process.wait()
                        raise Interrupted
                    time.sleep(0.2)
            finally:
                copier.join(timeout=10)  # a stage's kernel may hold the pipe a moment after DVC exits
        text = log.read_text(errors="replace")
        if process.returncode != 0:
            raise StudyError(command_failed(f"dvc {' '.join(args)}", process.returncode, text, log))
        return text

    def run(self, grid: Grid) -> Outcome:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._signal)
        outcome = Outcome(total=grid.size)
        # A running scheduler is reached first, so an unreachable one is reported before anything else happens;
        # a cluster of our own starts only when there are runs for it.
        self.cluster = self.client = None
        if self.settings.scheduler_address and not self.dry_run:
            self.cluster, self.client = start_cluster(self.settings, self.logs / "dask")
        try:
            if self.dry_run:
                print("dry run: nothing is prepared, trained or recorded (the stale runs as DVC sees them now)")
            else:
                print("preparing the data (dvc repro prepare) ...", flush=True)
                # prepare@<dataset> and prepare_custom@<name> (params.yaml's custom_datasets). Not quiet: DVC's
                # --quiet also hides the error that says why a stage could not run.
                self._dvc(["repro", "--glob", "prepare*"], "prepare.log")
            self._check_stop()
            stages, self.retrained = train_stages(self.root, grid, self.only, self.trained_on, self.retrain)
            selected = selected_runs(self.root, grid, self.only, self.trained_on)
            aimed = bool(self.only) or self.trained_on is not None
            outcome.selected = len(selected) if aimed else None
            outcome.only = self.aim
            outcome.up_to_date = (grid.size if outcome.selected is None else outcome.selected) - len(stages)
            committed = committed_runs(self.root, [stage for stage in stages if stage.addressing not in self.retrained])
            print(
                plan(grid, len(stages), len(committed), self.only, len(self.retrained), outcome.selected, self.filters),
                flush=True,
            )
            # The runs --trained-on selects were timed on the device they leave: their times say little of the new.
            leave_out = set(selected) if self.trained_on is not None else set()
            estimate = Estimate.of_runs(self.root, grid, [stage.addressing for stage in stages], leave_out)
            slots = self._expected_slots()
            if self.dry_run:
                print(dry_run_listing(stages, committed, estimate, slots, self.retrained), flush=True)
                outcome.stopped = "dry run"
                return outcome
            if stages and not self._confirm(len(stages), estimate, slots):
                outcome.stopped = "declined"
                return outcome
            if stages:
                self._train(grid, stages, outcome)
            if outcome.failed or not self.rest or self.filters:
                return outcome
            print("the rest of the pipeline (dvc repro) ...", flush=True)
            # Not quiet: its log names the stages it ran, which are all this screen shows of it.
            ran = re.findall(r"^Running stage '([^']+)'", self._dvc(["repro"], "repro.log"), flags=re.MULTILINE)
            print(f"  ran {', '.join(ran)}" if ran else "  up to date", flush=True)
        except Interrupted:
            outcome.interrupted = True
        finally:
            if self.client is not None:
                self.client.close()
            if self.cluster is not None:
                self.cluster.close()
        return outcome

    def report(self, grid: Grid) -> Outcome:
        """``--report-only``: the aggregate and the report from the runs that exist; no training stage runs, stale or
        not. ``dvc repro --single-item`` runs the stages named and none they follow (without it, DVC would first
        train every stale run whose outputs lie in the aggregate's dependency, results/<scale>/runs)."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._signal)
        outcome = Outcome(total=grid.size, stopped="report only")
        print(
            f"the aggregate and the report from the runs in {grid.results_dir}/runs "
            "(dvc repro --single-item aggregate report; nothing trains) ...",
            flush=True,
        )
        try:
            text = self._dvc(["repro", "--single-item", "aggregate", "report"], "report.log")
        except Interrupted:
            outcome.interrupted = True
            return outcome
        ran = re.findall(r"^Running stage '([^']+)'", text, flags=re.MULTILINE)
        print(f"  ran {', '.join(ran)}" if ran else "  up to date", flush=True)
        stale = stale_train_stages(self.root, grid)
        outcome.up_to_date = grid.size - len(stale)
        if stale:
            print(
                f"  {len(stale)} training run(s) of the grid are stale or missing and were left so (`make study` "
                f"trains them): the aggregate covers the runs in {grid.results_dir}/runs",
                flush=True,
            )
        return outcome

    def _confirm(self, runs: int, estimate: Estimate, slots: int | None) -> bool:
        """:func:`confirm_start`, where Ctrl-C at the question answers no (elsewhere the runner only notes it)."""
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return confirm_start(runs, estimate, slots, self.yes)
        except KeyboardInterrupt:
            print(flush=True)
            return False
        finally:
            signal.signal(signal.SIGINT, previous)

    def _expected_slots(self) -> int | None:
        """Runs the cluster will run at once, for the time estimate: a running scheduler's now, else what the
        settings start; None when unknown."""
        if self.client is not None:
            return self._slots(self.client) or None
        settings = self.settings
        if settings.scheduler_address:
            return None
        if settings.kind == "local":
            return settings.gpus * (settings.runs_per_gpu or 1) if settings.gpus else settings.local_workers
        threads = settings.jobs * settings.cores
        if settings.runs_per_gpu:
            return min(threads, settings.jobs * settings.gpus_per_job * settings.runs_per_gpu) or None
        return threads

    def _train(self, grid: Grid, stages: list, outcome: Outcome) -> None:
        """Train the stale ``stages`` of ``grid`` on the cluster, recording each finished one in dvc.lock."""
        if self.client is None:
            print(f"starting {self.settings.describe()} ...", flush=True)
            self.cluster, self.client = start_cluster(self.settings, self.logs / "dask")
        client = self.client
        progress = None
        # One DVC repository object for every commit (opening one costs as much as a commit): this process alone
        # writes dvc.lock while runs are recorded, and each commit reads the lock file afresh before writing it.
        self.repo = _repo(self.root)
        try:
            print(f"Dask dashboard: {client.dashboard_link}", flush=True)
            names = {stage.addressing for stage in stages}
            cells = {name: cell for name, cell, _ in _grid_runs(grid) if name in names}
            progress = Progress(cells, RunTimes.of_recorded_runs(self.root, grid, names))
            client.subscribe_topic(TOPIC, progress.on_event)
            by_name = {stage.addressing: stage for stage in stages}
            runs = {name: (*cell, seed) for name, cell, seed in _grid_runs(grid) if name in names}

            def submit(name: str):
                if name in self.retrained:
                    # Just before it starts (once: Dask's retries and a lost worker's rerun resume the new run):
                    # the new run must not resume the replaced run's checkpoint, which the run identity accepts
                    # when code, data and settings match, whatever device or software stack wrote it.
                    outcome.replacing[name] = [out.def_path for out in by_name[name].outs]
                    aside = move_checkpoint_aside(self.root, grid, *runs[name])
                    if aside is not None:
                        progress.write(
                            f"afresh   {name}: its checkpoint moved aside to {_rel(aside)}; it trains from its first "
                            "epoch (--retrain)"
                        )
                return client.submit(
                    run_stage,
                    name,
                    by_name[name].cmd,
                    str(self.root),
                    str(self.logs / f"{name}.log"),
                    self.settings.threads_per_run,
                    bool(self.settings.gpus) and not self.settings.scheduler_address,
                    key=name,
                    retries=self.settings.retries,
                    resources=self.settings.run_resources,
                )

            queue = RunQueue(list(by_name), submit)
            while queue:
                slots = self._slots(client)
                # Commit every run that has finished, even when asked to stop: each commit is whole.
                for future in queue.step(slots):
                    self._record(future, by_name[future.key], progress, outcome)
                progress.tick(slots)
                self._check_stop()
        finally:
            self.repo.close()
            if progress:
                progress.close()
            if self.stop is not None:
                print("interrupted: stopping the runs in flight (their checkpoints stay) ...", flush=True)

    def _slots(self, client) -> int:
        """Runs the cluster can run at once: its threads, or its GPUs' shares when runs ask for a GPU."""
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        threads = sum(worker["nthreads"] for worker in workers)
        if self.settings.runs_per_gpu:
            gpus = sum(worker.get("resources", {}).get("GPU", 0) for worker in workers)
            return min(threads, round(gpus * self.settings.runs_per_gpu))
        return threads

    def _record(self, future, stage, progress: Progress, outcome: Outcome) -> None:
        from dvc.exceptions import DvcException

        name = stage.addressing
        if future.status == "finished":
            result = future.result()
            try:
                self.repo.commit(name, force=True)
            except DvcException as error:  # e.g. an output the command did not write: the run stays stale
                outcome.failed[name] = f"`dvc commit` refused it: {error}"
                progress.finished(name, None, f"FAILED   {name}: ran, but {outcome.failed[name]}", False)
                return
            outcome.done.append(name)
            outcome.seconds[name] = result["seconds"]
            dice, metrics = _test_dice(self.root, stage)
            line = f"done     {name}  {_duration(result['seconds'])}  {dice}"
            # A run resumed from a checkpoint trained only its last epochs here: its time is no run's whole cost.
            progress.finished(name, result["seconds"], line, True, whole=not metrics.get("resumed_after_epochs"))
            return
        error = future.exception()
        if self.stop is not None:
            return  # stopped by the interrupt, not failed: the run stays stale and runs again next time
        notebooks = _files(self.root, stage, "*.ipynb")
        logged = None
        if isinstance(error, StageFailed):
            try:
                logged = failure_cause(Path(error.log).read_text(errors="replace"))
            except OSError:
                pass
        reason = (cell_error(notebooks[0]) if notebooks else None) or logged or f"{type(error).__name__}: {error}"
        attempts = self.settings.retries + 1
        lines = [f"FAILED   {name} (after up to {attempts} attempt(s)): {reason}"]
        if notebooks:
            lines.append(f"         notebook: {_rel(notebooks[0])}")
        if isinstance(error, StageFailed):
            lines.append(f"         log: {_rel(Path(error.log))}")
        outcome.failed[name] = reason
        progress.finished(name, None, "\n".join(lines), False)


def _test_dice(root: Path, stage) -> tuple[str, dict]:
    """The run's test Dice as its `done` line shows it, and its metrics.json ({} when there is none)."""
    for path in _files(root, stage, "metrics.json"):
        metrics = _read_json(path) or {}
        try:
            return f"test Dice {metrics['test']['dice']:.4f}", metrics
        except (KeyError, TypeError, ValueError):
            return f"({_rel(path)} unreadable)", metrics
    return "", {}


def command_failed(command: str, returncode: int, text: str, log: Path, lines: int = 8) -> str:
    """The message of a failed command: its log's last lines (without noise), then its cause on the last line."""
    cause = failure_cause(text) or f"(its log is empty; it exited with status {returncode})"
    tail = [line for line in meaningful_lines(text)[-lines:] if line.strip() != cause]
    return "\n".join(
        [f"`{command}` failed (exit status {returncode}); the end of {_rel(log)}:", *(f"    {t}" for t in tail)]
        + [f"cause: {cause}"]
    )


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# --- the command line --------------------------------------------------------------------------------------------


def summary(grid: Grid, params: dict, outcome: Outcome, seconds: float, rest: bool = True) -> str:
    """The closing screen: what ran, what it stands for, where the results are."""
    scale = params["scales"][grid.scale]
    paper = params["scales"].get("paper", scale)
    selected = "" if outcome.selected is None else f", not selected {grid.size - outcome.selected}"
    lines = [
        "",
        f"study: {grid.describe()}" + (f", aimed by {outcome.only}" if outcome.only else ""),
        f"  trained now {len(outcome.done)}, up to date (skipped) {outcome.up_to_date}{selected}, "
        f"failed {len(outcome.failed)}, in {_duration(seconds)}",
    ]
    if grid.scale != "paper":
        training = params.get("training") or {}
        lengths = ", ".join(
            f"{name} {steps} steps"
            if (steps := (training.get(name) or {}).get("train_steps", {}).get(grid.scale))
            else f"{name} {scale['epochs']} epochs"
            for name in dict.fromkeys(dataset for _, datasets, _ in grid.blocks for dataset in datasets)
        )
        lines.append(
            f"  scale {grid.scale} stands in for the papers' settings (scale paper): {scale['image_size']} px instead "
            f"of {paper['image_size']}, widths x{scale['width_mult']} instead of x{paper['width_mult']}, lengths "
            f"{lengths} (training.<dataset>.train_steps) instead of {paper['epochs']} epochs"
        )
    results = grid.results_dir
    lines += [
        f"  results: {results}/runs/<dataset>/<model>/seed<k>/metrics.json, executed notebooks in {results}/notebooks/",
        f"           the aggregate in {results}/aggregate.ipynb, {results}/tables/, {results}/figures/; the report",
        f"           in {results}/report/index.html",
    ]
    if outcome.failed:
        lines.append(
            f"  {len(outcome.failed)} run(s) failed (above); the aggregate was not updated. Fix them and run again:"
            " the finished runs are recorded and will not run again."
        )
    if outcome.interrupted:
        lines.append("  interrupted: the finished runs are recorded; run again to do the rest (runs resume).")
    elif not outcome.failed and outcome.only:
        lines.append(
            "  the selected runs are recorded; the aggregate and the report were not rebuilt: `make report` "
            "(python -m repro.study --report-only) rebuilds them from the runs that exist, a call without filters "
            "finishes the study"
        )
    elif not outcome.failed and not rest:
        lines.append("  every training run is recorded; `dvc repro` runs the rest (complexity, aggregate)")
    elif not outcome.failed:
        lines.append("  everything is up to date (`dvc status` is clean)")
    unfinished = [name for name in outcome.replacing if name not in outcome.done]
    if unfinished:
        folders = " ".join(folder for name in unfinished for folder in outcome.replacing[name])
        lines.append(
            f"  {len(unfinished)} re-trained run(s) did not finish (--retrain); their committed outputs may be partly "
            f"overwritten. Run the call again to train them, or restore the committed ones: git checkout -- {folders}"
        )
    if outcome.failed:
        # The cause last, where the eye lands: the first failed run's (each one's is above).
        name, reason = next(iter(outcome.failed.items()))
        more = len(outcome.failed) - 1
        lines.append(f"{name} failed" + (f" (and {more} more, above)" if more else "") + f": {reason}")
    return "\n".join(lines)


def _overrides(args) -> dict:
    overrides = {"workers": args.workers, "scheduler_address": args.scheduler_address, "kind": args.kind}
    if args.retries is not None:
        overrides["retries"] = args.retries
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise StudyError(f"--set {item}: expected KEY=VALUE, e.g. --set queue=gpu")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m repro.study",
        description=__doc__.split("\n\n")[0],
        epilog="Any setting of params.yaml's `cluster:` section can be given with --set KEY=VALUE. The filters train "
        "only the stale runs that match every filter given, and leave the aggregate and the report to a call without "
        "filters or --report-only; --retrain trains the selected runs that are up to date too.",
    )
    parser.add_argument("-j", "--workers", type=int, help="local worker processes (default: one per core)")
    parser.add_argument("--scheduler-address", help="a running Dask scheduler, e.g. tcp://10.0.0.5:8786")
    parser.add_argument("--kind", help="local, slurm, pbs, sge or lsf")
    parser.add_argument("--retries", type=int, help="attempts after a run's first failure")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a cluster setting")
    aim = parser.add_argument_group("aiming the study")
    aim.add_argument("--datasets", metavar="A,B", help="train only these datasets' runs")
    aim.add_argument("--models", metavar="X,Y", help="train only these model variants' runs")
    aim.add_argument("--seeds", metavar="0,1", help="train only these seeds' runs")
    aim.add_argument(
        "--stages", metavar="GLOB", help="train only the runs whose stage name matches, e.g. 'train@ph2-*'"
    )
    aim.add_argument(
        "--trained-on",
        metavar="DEVICE",
        help="only the committed runs whose metrics.json device starts with this, e.g. cuda (see --retrain)",
    )
    aim.add_argument(
        "--retrain",
        action="store_true",
        help="train the selected runs again even when up to date, each from its first epoch (needs a filter)",
    )
    aim.add_argument(
        "--dry-run", action="store_true", help="list what would train, with a time estimate; train nothing"
    )
    aim.add_argument(
        "-y", "--yes", action="store_true", help=f"start without asking (asked above {CONFIRM_RUNS} runs or 2 h)"
    )
    aim.add_argument(
        "--report-only", action="store_true", help="the aggregate and the report from the runs that exist; no training"
    )
    parser.add_argument("--train-only", action="store_true", help="skip `dvc repro` for the rest of the pipeline")
    parser.add_argument("--logs", type=Path, default=REPO_ROOT / "checkpoints" / "logs", help="per-run logs")
    parser.add_argument("--debug", action="store_true", help=f"tracebacks for every error (or ${DEBUG_ENV}=1)")
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    start = time.perf_counter()
    # DVC's API resolves the stages' paths against the working directory, as its command line does.
    os.chdir(REPO_ROOT)
    try:
        filtered = any(
            value is not None for value in (args.datasets, args.models, args.seeds, args.stages, args.trained_on)
        )
        if args.retrain and not filtered and not args.report_only:
            raise StudyError(
                "--retrain re-trains committed runs that are up to date: say which, with at least one of --datasets, "
                "--models, --seeds, --stages or --trained-on (e.g. --retrain --trained-on cuda)"
            )
        params = load_params(REPO_ROOT / "params.yaml")
        problems = []
        only = RunFilter.parse(args.datasets, args.models, args.seeds, args.stages, problems=problems)
        if args.report_only and (only or args.dry_run or args.train_only or args.retrain or args.trained_on):
            problems.append(
                "--report-only trains nothing: it takes no --datasets, --models, --seeds, --stages, --trained-on, "
                "--retrain, --dry-run or --train-only"
            )
        try:
            grid = check_grid(params)
            problems += only.problems(grid)
            if not args.report_only and not only.problems(grid):
                problems += trained_on_problems(REPO_ROOT, grid, only, args.trained_on)
        except ParamsError as error:
            problems += error.problems
        if not args.report_only:
            problems += missing_splits(params)
        try:
            settings = cluster_settings(params.get("cluster"), _overrides(args))
            problems += missing_programs(settings) if not args.report_only else []
        except ParamsError as error:
            if not args.report_only:  # the report runs here, on no cluster
                problems += error.problems
            settings = ClusterSettings()
        if args.report_only:
            problems += missing_programs(ClusterSettings())
        if problems:
            raise StudyError(
                f"params.yaml and the command line: {len(problems)} problem(s), nothing was run:\n"
                + "\n".join(f"  - {problem}" for problem in problems)
            )
        runner = Runner(
            REPO_ROOT,
            args.logs.resolve(),
            settings,
            rest=not args.train_only,
            only=only,
            dry_run=args.dry_run,
            yes=args.yes,
            trained_on=args.trained_on,
            retrain=args.retrain,
        )
        if args.report_only:
            print(f"study: {grid.describe()}, report only", flush=True)
            outcome = runner.report(grid)
            if not outcome.interrupted:
                print(f"report: {grid.results_dir}/report/index.html", flush=True)
            return 130 if outcome.interrupted else 0
        aim = aim_text(only, args.trained_on, args.retrain)
        aimed = f", aimed by {aim}" if aim else ""
        print(f"study: {grid.describe()}{aimed}, on {settings.describe()}", flush=True)
        outcome = runner.run(grid)
    except (StudyError, ParamsError, OSError, ValueError, yaml.YAMLError) as error:
        if debug:
            raise
        message = f"{error.section}:\n{error}" if isinstance(error, ParamsError) else str(error)
        if not isinstance(error, StudyError | ParamsError):  # unforeseen: the traceback may help
            print(f"(--debug or {DEBUG_ENV}=1 shows the traceback)", file=sys.stderr)
        # The message last: a problem list, or a failed command's cause on its last line.
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 2
    if outcome.stopped == "dry run":
        return 0
    if outcome.stopped == "declined":
        print("not started: nothing was trained", flush=True)
        return 1
    print(summary(grid, params, outcome, time.perf_counter() - start, rest=not args.train_only), flush=True)
    if outcome.interrupted:
        return 130
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    sys.exit(main())
