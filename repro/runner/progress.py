"""What the runner shows while it trains: the progress line with its ETA from finished runs' wall times by cell, and
the first error an executed notebook records."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from repro.runner.grid import NNUNET_MODEL, Grid, notebook_path, record_paths, run_name

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
        the second seed on every cell has a time of its own. nnU-Net's runs (model ``nnunet``) train by a schedule
        of their own: neither they nor their dataset's other variants count as each other's dataset."""
        dataset, model = cell
        same_dataset = [
            t
            for (other, variant), ts in self.by_cell.items()
            if other == dataset and model != NNUNET_MODEL and variant != NNUNET_MODEL
            for t in ts
        ]
        for times in (
            self.by_cell.get(cell, []),
            same_dataset,
            [t for ts in self.by_cell.values() for t in ts],
        ):
            if times:
                return sum(times) / len(times)
        return None

    @classmethod
    def of_recorded_runs(cls, root: Path, grid: Grid, stale: set[str]) -> RunTimes:
        """The times of the grid's up-to-date runs (not in ``stale``), so that a study resumed by a second call has an
        ETA from its start: papermill records each executed notebook's duration. A run resumed from a checkpoint
        (its metrics.json lists ``resumed_after_epochs``) is left out: its notebook timed only its last part. A
        universal run counts once, by its notebook, when it has a record under each domain."""
        times = cls()
        results = root / grid.results_dir
        for stage, dataset, model, seed in grid.runs():
            if run_name(stage, dataset, model, seed) in stale:
                continue
            records = [read_json(path) for path in record_paths(results, dataset, model, seed)]
            notebook = read_json(notebook_path(results, stage, dataset, model, seed))
            duration = ((notebook or {}).get("metadata") or {}).get("papermill", {}).get("duration")
            finished = all(metrics is not None and not metrics.get("resumed_after_epochs") for metrics in records)
            if finished and isinstance(duration, int | float):
                times.add((dataset, model), float(duration))
        return times


def grid_runs(grid: Grid) -> list[tuple[str, tuple[str, str], int]]:
    """(DVC stage name, cell (dataset, variant), seed) of every run of ``grid``, in the order the runner trains them."""
    return [
        (run_name(stage, dataset, model, seed), (dataset, model), seed) for stage, dataset, model, seed in grid.runs()
    ]


def read_json(path: Path) -> dict | None:
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
        self.failure_causes: dict[str, str | None] = {}  # each run's last failed attempt's cause (its log's line)
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
                    cause = self.failure_causes.get(stage) or "no output"
                    worker, before = message["worker"], attempt - 1
                    self.write(f"retry    {stage} (attempt {attempt}) on {worker}: attempt {before} failed: {cause}")
                self.running[stage] = time.monotonic()
            elif message["event"] == "failed":
                self.failed_attempts[stage] = self.failed_attempts.get(stage, 0) + 1
                self.failure_causes[stage] = message.get("cause")
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
        return duration(work / max(1, self.slots))

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


def duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
