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
settings of cluster.yaml first (one message lists every problem), prepares the data (`dvc repro prepare`), asks DVC
which training stages (`train@...`, then `train_extra@...`, `train_ablations@...`, `train_controls@...`,
`train_volumes@...`, nnU-Net's `nnunet@<seed>`, `train_independent@...`, `train_universal@...`: one per block of the
grid) are stale, and submits each one's exact command from dvc.yaml as a Dask task keyed by the stage's name, so no
run is ever submitted twice. Seeds go first, then variants in the order ``study.models`` lists them: an interrupted
study has every variant at the same number of seeds. nnU-Net's runs have seeds of their own (``nnunet.seeds``); in a
seed they have, they train after the volumetric rows. This process alone records a finished run in dvc.lock (`dvc
commit`, one at a time), and Ctrl-C or SIGTERM only stops it between two commits, so dvc.lock never holds half an
entry and a second call runs exactly the stages still stale. Finally `dvc repro` runs complexity and aggregate.

Before it trains, it prints the scale, how many runs it trains (new, or replacing stale runs of that scale) and
where the results go: dvc.yaml writes every output of the study below results/<scale>/, so a study at another
scale writes beside the committed one, never over it.

Aiming it: ``--datasets``, ``--models``, ``--seeds`` (comma-separated) and ``--stages`` (globs over the stage names)
train only the stale runs that match every filter given (``--datasets`` selects a universal model's run when it names
either of its domains); the rest of the pipeline (aggregate, report) then waits for a call without filters, or
``--report-only``, which rebuilds the aggregate and the report from the runs that exist (``dvc repro --single-item
aggregate report``: the stages themselves, none of the training stages they follow). ``--trained-on DEVICE`` selects
the committed runs whose metrics.json ``device`` starts with DEVICE (``cuda``, ``cpu``; a universal run by its
records, one under each domain). ``--retrain`` (refused without a filter) also trains the selected runs that are up
to date: each moves its checkpoint aside (``last.pt.replaced``) just before it starts, so it trains from its first
epoch whatever device or software stack wrote that checkpoint; its committed outputs stay until the new run
overwrites them, and it is recorded in dvc.lock as any finished run. ``--dry-run`` lists the runs a call would train,
new ones apart from those replacing a committed run, with a time estimate, and stops. A call that would train more
than ten runs or for more than two hours asks first (on a terminal; elsewhere it refuses unless given ``--yes``). The
estimate is each run's dataset x variant's median ``train_seconds`` (+ ``eval_seconds``) over the committed runs of
the scale (less those ``--trained-on`` selects: another device's times; a universal run's records count once, as
its run's), else its dataset's median, spread over the cluster's slots; benchmarks/grid_cost.py's step model would
time every variant first (minutes), too long for a question asked before a start.

The runs' logs (checkpoints/logs/<stage>.log) and DVC's (prepare.log, repro.log, report.log) keep the runs'
settings, epoch lines and errors, not papermill's cell markers, the kernel's transport warning or DVC's progress
bars (:data:`repro.runner.stage_task.NOISE`), and the runner's screen shows none of them. A command that fails ends the
runner's output with its cause: the last line of its log that states an error.

A worker killed mid-run loses only its current epoch: the scheduler gives the run to another worker, which
resumes from the run's checkpoint (an nnU-Net run starts over: nnU-Net's training here always starts afresh, so
``--retrain`` has no checkpoint of it to move aside). A run that fails is retried (``cluster.retries``), then
reported with its executed notebook and the failing cell's error; the other runs go on.

Errors a user causes end with one line (or one list) and no traceback; ``--debug`` or ``UNET_REPRO_DEBUG=1``
shows it.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import sys
import time
from pathlib import Path

import yaml

from repro.config import load_params
from repro.data.registry import REPO_ROOT
from repro.runner.cluster import ClusterSettings, ParamsError, cluster_settings, read_cluster_file
from repro.runner.execute import Outcome, Runner
from repro.runner.grid import NNUNET_STAGE, Grid, RunFilter, check_grid, domains_of
from repro.runner.plan import CONFIRM_RUNS, StudyError, aim_text, missing_programs, missing_splits, trained_on_problems
from repro.runner.progress import duration

DEBUG_ENV = "UNET_REPRO_DEBUG"


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
        f"failed {len(outcome.failed)}, in {duration(seconds)}",
    ]
    if grid.scale != "paper":
        training = params.get("training") or {}
        # A universal run's dataset is its domains joined by '+': each domain trains its own length in it (the steps
        # of its one-domain run), so the line states the domains' lengths, each dataset once. nnU-Net's runs train
        # its trainer's length (nnunet.scales), stated apart.
        names = dict.fromkeys(
            name
            for stage, datasets, _ in grid.blocks
            if stage != NNUNET_STAGE
            for dataset in datasets
            for name in domains_of(dataset)
        )
        lengths = ", ".join(
            f"{name} {steps} steps"
            if (steps := ((training.get(name) or {}).get("train_steps") or {}).get(grid.scale))
            else f"{name} {scale['epochs']} epochs"
            for name in names
        )
        trainers = ((params.get("nnunet") or {}).get("scales")) or {}
        nnunet = (
            f"; nnU-Net {(trainers.get(grid.scale) or {}).get('trainer')} (nnunet.scales.{grid.scale}) instead of "
            f"{(trainers.get('paper') or {}).get('trainer')}"
            if any(stage == NNUNET_STAGE for stage, _, _ in grid.blocks)
            else ""
        )
        lines.append(
            f"  scale {grid.scale} stands in for the papers' settings (scale paper): {scale['image_size']} px instead "
            f"of {paper['image_size']}, widths x{scale['width_mult']} instead of x{paper['width_mult']}, lengths "
            f"{lengths} (training.<dataset>.train_steps) instead of {paper['epochs']} epochs{nnunet}"
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
        epilog="Any setting of cluster.yaml can be given with --set KEY=VALUE. The filters train "
        "only the stale runs that match every filter given, and leave the aggregate and the report to a call without "
        "filters or --report-only; --retrain trains the selected runs that are up to date too.",
    )
    parser.add_argument("-j", "--workers", type=int, help="local worker processes (default: one per core)")
    parser.add_argument("--scheduler-address", help="a running Dask scheduler, e.g. tcp://10.0.0.5:8786")
    parser.add_argument("--kind", help="local, slurm, pbs, sge or lsf")
    parser.add_argument("--retries", type=int, help="attempts after a run's first failure")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a cluster setting")
    aim = parser.add_argument_group("aiming the study")
    aim.add_argument(
        "--datasets",
        metavar="A,B",
        help="train only these datasets' runs; a universal model's run when any of its domains is named",
    )
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
    # A runner that seems stuck can be asked where it is: `kill -USR1 <pid>` prints every thread's stack to stderr.
    # (The process's own stderr: a caller may have replaced sys.stderr with an object that has no file descriptor.)
    faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)
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
            settings = cluster_settings(read_cluster_file(REPO_ROOT), _overrides(args))
            problems += missing_programs(settings) if not args.report_only else []
        except ParamsError as error:
            if not args.report_only:  # the report runs here, on no cluster
                problems += error.problems
            settings = ClusterSettings()
        if args.report_only:
            problems += missing_programs(ClusterSettings())
        if problems:
            raise StudyError(
                f"params.yaml, cluster.yaml and the command line: {len(problems)} problem(s), nothing was run:\n"
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
