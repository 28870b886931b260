"""What a call of the runner would train: the stale training stages as DVC sees them, the grid's filters, the runs a
``--retrain`` selects, the checks made before a start (splits, programs), the time estimate and the question asked
before a long start. Nothing here trains."""

from __future__ import annotations

import csv
import logging
import os
import shutil
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from repro.data.registry import REPO_ROOT
from repro.runner.cluster import ClusterSettings
from repro.runner.grid import (
    DOMAIN_SEPARATOR,
    NNUNET_MODEL,
    NNUNET_STAGE,
    Grid,
    RunFilter,
    record_paths,
    run_name,
    run_of_record,
)
from repro.runner.progress import duration, grid_runs, read_json

# The programs the training stages' commands in dvc.yaml call by name.
STAGE_PROGRAMS = ("papermill",)

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


def dvc_repo(root: Path):
    """DVC's API on the repository at ``root``."""
    from dvc.repo import Repo

    # Importing dvc sets up its console logging at INFO: its in-process commit would announce every lock-file update.
    logging.getLogger("dvc").setLevel(logging.WARNING)
    # DVC's progress bars ("Collecting files and computing hashes", "Waiting to acquire lock") draw on a terminal
    # unless their logger is above ERROR: inside the runner's own bar they are noise.
    logging.getLogger("dvc.progress").setLevel(logging.CRITICAL)
    return Repo(str(root))


def stale_train_stages(root: Path, grid: Grid, only: RunFilter | None = None) -> list:
    """The training stages of the grid's blocks (:data:`repro.runner.grid.GRID_STAGES`: `train@...`,
    `train_extra@...` and the others, nnU-Net's `nnunet@<seed>` too) `dvc repro` would run (DVC's own status), in the
    grid's order (:meth:`repro.runner.grid.Grid.runs`): seed by seed, then block by block, each variant in the order
    ``study.models`` (then ``study.extra.models`` and the other blocks' lists) lists it, then each dataset. The study
    lists its variants in the order their claims matter, so a study cut short has every variant at the same number of
    seeds, the first ones at one more. With ``only``, the stale stages it selects."""
    return train_stages(root, grid, only)[0]


def train_stages(
    root: Path, grid: Grid, only: RunFilter | None = None, trained_on: str | None = None, retrain: bool = False
) -> tuple[list, set[str]]:
    """The training stages one call trains, in the grid's order (:func:`stale_train_stages`), and which of them are
    up to date: the stale runs among those selected (:func:`selected_runs`), and with ``retrain`` the selected runs
    that are up to date too (``--retrain``: committed runs to train again, e.g. those of another device)."""
    targets = [stage for stage, _, _ in grid.blocks]
    selected = set(selected_runs(root, grid, only, trained_on))
    with dvc_repo(root) as repo:
        stale = set(repo.status(targets=targets))
        wanted = selected if retrain else stale & selected
        stages = [stage for stage in repo.index.stages if stage.addressing in wanted]
    rank = {name: i for i, (name, _, _) in enumerate(grid_runs(grid))}
    return (
        sorted(stages, key=lambda stage: rank[stage.addressing]),
        {stage.addressing for stage in stages if stage.addressing not in stale},
    )


def trained_on_device(root: Path, grid: Grid, runs: list[tuple[str, str, str, int]] | None = None) -> dict[str, str]:
    """Each run of ``grid`` (of ``runs``, :meth:`Grid.runs`'s tuples, when given) that holds a finished run (a
    metrics.json: :func:`repro.runner.grid.record_paths`) -> the device its metrics.json records; a universal run's,
    which its records (one per domain, written by one training) share.

    Raises:
        StudyError: records of one universal run that name different devices (both named).
    """
    devices = {}
    for stage, dataset, model, seed in grid.runs() if runs is None else runs:
        name = run_name(stage, dataset, model, seed)
        recorded = {}
        for path in record_paths(root / grid.results_dir, dataset, model, seed):
            metrics = read_json(path)
            if metrics is not None:
                recorded[path] = str(metrics.get("device", "(none recorded)"))
        if not recorded:
            continue
        first, device = next(iter(recorded.items()))
        for other, different in recorded.items():
            if different != device:
                raise StudyError(
                    f"{name}: {first.relative_to(root)} records device '{device}' but {other.relative_to(root)} "
                    f"records '{different}'; the records of one universal run come from one training and must "
                    "agree: restore them from git, or train the run again"
                )
        devices[name] = device
    return devices


def selected_runs(root: Path, grid: Grid, only: RunFilter | None = None, trained_on: str | None = None) -> list[str]:
    """The runs of ``grid`` (their stage names, in its order) that the filters select: ``only``'s, and with
    ``trained_on`` (``--trained-on``) the committed runs whose metrics.json ``device`` starts with it (a universal
    run's records, one per domain: :func:`trained_on_device`)."""
    runs = only.select(grid) if only else grid.runs()
    names = [run_name(*run) for run in runs]
    if trained_on is None:
        return names
    devices = trained_on_device(root, grid, runs)
    return [name for name in names if devices.get(name, "").startswith(trained_on)]


def trained_on_problems(root: Path, grid: Grid, only: RunFilter | None, trained_on: str | None) -> list[str]:
    """``--trained-on`` given as nothing, or selecting no run (with the devices the selected runs record)."""
    if trained_on is None:
        return []
    if not trained_on.strip():
        return ["--trained-on: give the start of a device as metrics.json records it, e.g. cuda or cpu"]
    if selected_runs(root, grid, only, trained_on):
        return []
    runs = only.select(grid) if only else grid.runs()
    devices = trained_on_device(root, grid, runs)
    names = [run_name(*run) for run in runs]
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
    return {
        stage.addressing for stage in stages if stage.addressing in locked or stage_files(root, stage, "metrics.json")
    }


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


def run_seconds(run_dir: Path, metrics: dict) -> float | None:
    """A committed run's training + evaluation seconds: the sums of its history's ``seconds`` and ``eval_seconds``
    (every epoch's, across resumptions: the checkpoint keeps the history), else its record's (``metrics``, its
    ``metrics.json`` as read) ``train_seconds`` + ``eval_seconds`` when it was never resumed; None when neither
    tells."""
    history = run_dir / "history.csv"
    if history.is_file():
        with history.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows and "seconds" in rows[0]:
            return sum(float(row["seconds"]) + float(row.get("eval_seconds") or 0.0) for row in rows)
    seconds = metrics.get("train_seconds")
    if metrics.get("resumed_after_epochs") or not isinstance(seconds, int | float):
        return None  # a resumed run's record without its history timed its last part only
    extra = metrics.get("eval_seconds")
    return float(seconds) + (extra if isinstance(extra, int | float) else 0.0)


def variant_flops(root: Path, grid: Grid, dataset: str, model: str, image_size: Any) -> float | None:
    """FLOPs of one forward pass of variant ``model`` as the study builds it for ``dataset`` at the grid's scale (the
    scale's width, the prepared data's channels and classes) on an input of ``image_size``; None when the dataset is
    not prepared or the network cannot be built. Imports torch: called only for cells without a committed run."""
    meta = read_json(root / "data" / "processed" / grid.scale / dataset / "meta.json")
    if not meta:
        return None
    from repro.complexity import count_flops
    from repro.config import load_params, model_variant, scale_preset
    from repro.models import create_variant

    params = load_params(root / "params.yaml")
    variant = model_variant(model, params)
    width_mult = scale_preset(grid.scale, params).width_mult
    try:
        network = create_variant(
            variant.arch,
            variant.options,
            width_mult=width_mult,
            in_channels=meta["in_channels"],
            num_classes=len(meta["class_names"]),
        )
        return float(
            count_flops(network, tuple(image_size) if isinstance(image_size, list) else image_size, meta["in_channels"])
        )
    except (ValueError, RuntimeError):
        return None


@dataclass
class Estimate:
    """How long runs take, from the committed runs of the same scale (:func:`run_seconds`): each run its cell's
    (dataset x variant) median; for a cell without a committed run, its dataset's median seconds per FLOP times the
    variant's FLOPs (:func:`variant_flops`: a dataset's runs share its length and input size, so their time follows
    their FLOPs), else its dataset's median over every variant, else unknown. A universal run's records (one under
    each domain, each with the whole run's time) time it once, as a run of its cell (its domains joined), and no run
    of either domain alone.

    nnU-Net's runs (model ``nnunet``) train by a schedule of their own (``nnunet.scales``), not their dataset's
    length: such a run is timed by its own cell's committed runs only, else unknown, and its times count for no other
    variant of its dataset (neither in the dataset's median nor in its seconds per FLOP).

    Notebook start-up and data loading (seconds) are left out. benchmarks/grid_cost.py's step model would time every
    variant's training steps first: minutes before a question.
    """

    seconds: dict[str, float] = field(default_factory=dict)  # each run with an estimate -> expected seconds
    from_flops: set[str] = field(default_factory=set)  # those scaled from their dataset's seconds per FLOP
    from_dataset: set[str] = field(default_factory=set)  # those from their dataset's median
    unknown: list[str] = field(default_factory=list)  # runs of a dataset without any committed run
    left_out: int = 0  # committed runs whose times were left out (those --trained-on replaces)

    @classmethod
    def of_runs(
        cls,
        root: Path,
        grid: Grid,
        names: list[str],
        leave_out: set[str] = frozenset(),
        flops_of: Callable[[str, str, Any], float | None] | None = None,
    ) -> Estimate:
        """The estimate of the runs ``names``; the committed runs ``leave_out`` (stage names) do not count: the
        runs ``--trained-on`` selects were timed on the device they are re-trained to leave. ``flops_of(dataset,
        model, image_size)`` gives a variant's FLOPs (default :func:`variant_flops`)."""
        flops_of = flops_of or (lambda dataset, model, size: variant_flops(root, grid, dataset, model, size))
        results = root / grid.results_dir
        skip = {  # each record folder of the runs left out -> its run
            path.parent: run_name(stage, dataset, model, seed)
            for stage, dataset, model, seed in grid.runs()
            if run_name(stage, dataset, model, seed) in leave_out
            for path in record_paths(results, dataset, model, seed)
        }
        by_cell: dict[tuple[str, str], list[float]] = {}
        per_flop: dict[str, list[float]] = {}  # dataset -> seconds per FLOP of its timed runs
        sizes: dict[str, Any] = {}  # dataset -> the input size its runs' FLOPs were counted at
        left_out: set[str] = set()
        universal: set[tuple[str, str, str]] = set()  # the universal runs timed: (joined domains, model, seed<k>)
        for path in sorted((results / "runs").glob("*/*/seed*/metrics.json")):
            if path.parent in skip:
                left_out.add(skip[path.parent])
                continue
            metrics = read_json(path) or {}
            run = dataset, model, _ = run_of_record(path, metrics)
            if DOMAIN_SEPARATOR in dataset:
                # A universal run's record: each of its domains' holds the whole run's time, a time of the run's
                # cell (its domains joined), counted once, and of neither domain's runs.
                if run in universal:
                    continue
                universal.add(run)
            seconds = run_seconds(path.parent, metrics)
            if seconds is None:
                continue
            by_cell.setdefault((dataset, model), []).append(seconds)
            if model == NNUNET_MODEL:
                continue  # nnU-Net's schedule and FLOPs (per patch) are its own: they time no other variant
            if isinstance(metrics.get("flops"), int | float) and metrics["flops"] > 0 and "image_size" in metrics:
                per_flop.setdefault(dataset, []).append(seconds / metrics["flops"])
                sizes[dataset] = metrics["image_size"]
        by_dataset: dict[str, list[float]] = {}
        for (dataset, model), times in by_cell.items():
            if model != NNUNET_MODEL:
                by_dataset.setdefault(dataset, []).extend(times)
        cells = {name: cell for name, cell, _ in grid_runs(grid)}
        flops: dict[tuple[str, str], float | None] = {}
        estimate = cls(left_out=len(left_out))
        for name in names:
            dataset, model = cells[name]
            if (dataset, model) in by_cell:
                estimate.seconds[name] = statistics.median(by_cell[dataset, model])
                continue
            if model == NNUNET_MODEL:
                estimate.unknown.append(name)
                continue
            if dataset in per_flop and (dataset, model) not in flops:
                flops[dataset, model] = flops_of(dataset, model, sizes[dataset])
            if flops.get((dataset, model)):
                estimate.seconds[name] = statistics.median(per_flop[dataset]) * flops[dataset, model]
                estimate.from_flops.add(name)
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
        if self.from_flops:
            source += f", for {len(self.from_flops)} run(s) without one their dataset's seconds per FLOP x their FLOPs"
        if self.from_dataset:
            source += f", for {len(self.from_dataset)} run(s) without one the median of their dataset"
        nnunet = [name for name in self.unknown if name.startswith(f"{NNUNET_STAGE}@")]
        if len(self.unknown) > len(nnunet):
            source += (
                f"; {len(self.unknown) - len(nnunet)} run(s) of datasets without any committed run have no estimate"
            )
        if nnunet:
            source += f"; {len(nnunet)} nnU-Net run(s) have no estimate before a committed nnU-Net run of this scale"
        if self.left_out:
            source += f"; the times of the {self.left_out} committed run(s) they replace left out (another device)"
        return f"~{duration(self.wall(slots))} {where} ({duration(self.total)} of training), {source}"


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
            guess = "?" if seconds is None else f"~{duration(seconds)}"
            source = " (dataset median)" if name in estimate.from_dataset else ""
            source = " (scaled by FLOPs)" if name in estimate.from_flops else source
            lines.append(f"    {name:<{width}}  {guess}{source}")
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


def stage_files(root: Path, stage, pattern: str) -> list[Path]:
    """The files of a stage's outputs that match ``pattern``."""
    return sorted(path for out in stage.outs for path in (root / out.def_path).glob(pattern))
