"""The runner: submits each stale training stage's command to a Dask cluster (one task per stage, keyed by its
name), records each finished run in dvc.lock (``dvc commit``, one at a time, in this process only), stops cleanly
between two commits on Ctrl-C or SIGTERM, then runs the rest of the pipeline; and the summary it prints at the end.
``repro.study`` is its command line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from repro.runner.cluster import ClusterSettings, start_cluster
from repro.runner.grid import Grid, RunFilter
from repro.runner.plan import (
    Estimate,
    Interrupted,
    Outcome,
    StudyError,
    aim_text,
    committed_runs,
    confirm_start,
    dry_run_listing,
    dvc_repo,
    move_checkpoint_aside,
    plan,
    selected_runs,
    stage_files,
    stale_train_stages,
    train_stages,
)
from repro.runner.progress import Progress, RunTimes, duration, grid_runs, read_json
from repro.runner.stage_task import TOPIC, StageFailed, copy_output, failure_cause, meaningful_lines, run_stage


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
        """A DVC command, its output (less :data:`repro.runner.stage_task.NOISE`) in a log, returned; a failure shows
        the
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
        self.repo = dvc_repo(self.root)
        try:
            print(f"Dask dashboard: {client.dashboard_link}", flush=True)
            names = {stage.addressing for stage in stages}
            cells = {name: cell for name, cell, _ in grid_runs(grid) if name in names}
            progress = Progress(cells, RunTimes.of_recorded_runs(self.root, grid, names))
            client.subscribe_topic(TOPIC, progress.on_event)
            by_name = {stage.addressing: stage for stage in stages}
            runs = {name: (*cell, seed) for name, cell, seed in grid_runs(grid) if name in names}

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
            line = f"done     {name}  {duration(result['seconds'])}  {dice}"
            # A run resumed from a checkpoint trained only its last epochs here: its time is no run's whole cost.
            progress.finished(name, result["seconds"], line, True, whole=not metrics.get("resumed_after_epochs"))
            return
        error = future.exception()
        if self.stop is not None:
            return  # stopped by the interrupt, not failed: the run stays stale and runs again next time
        notebooks = stage_files(self.root, stage, "*.ipynb")
        logged = error.cause if isinstance(error, StageFailed) else None
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
    """The run's test Dice as its `done` line shows it, and its metrics.json ({} when there is none).

    A universal model's run writes one record per domain (``runs/<domain>/<model>/seed<k>/metrics.json``, each with
    the whole run's timings and resumption): the line names each domain with its Dice, and the first record is
    returned."""
    records = [(path, read_json(path) or {}) for path in stage_files(root, stage, "metrics.json")]
    texts = []
    for path, metrics in records:
        try:
            text = f"{metrics['test']['dice']:.4f}"
        except (KeyError, TypeError, ValueError):
            text = f"({_rel(path)} unreadable)"
        texts.append(f"{path.parents[2].name} {text}" if len(records) > 1 else text)
    return ("test Dice " + ", ".join(texts), records[0][1]) if records else ("", {})


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
