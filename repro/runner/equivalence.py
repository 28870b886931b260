"""The re-record rule's proof: does a change of training code or train-stage params alter any number of a run?

DVC re-runs a stage whose code or params changed. ``dvc commit`` instead records the change without re-running,
which is right only when the stage's outputs would be the same. A run is bit-identical on one machine with the
same code, thread count and seed (``repro.training``'s determinism), but not across machines (oneDNN picks its
kernels by instruction set), so the proof compares old and new code on one machine, never a re-run against the
committed files:

    python -m repro.runner.equivalence run --code 3dd9771 --out /tmp/old ph2-dermoscopy unetv2_stride4 0 cpu
    python -m repro.runner.equivalence run --code WORKTREE --out /tmp/new ph2-dermoscopy unetv2_stride4 0 cpu
    python -m repro.runner.equivalence compare /tmp/old/ph2-dermoscopy/unetv2_stride4/seed0 /tmp/new/...

``run`` executes the training notebook exactly as the ``train`` stage does (papermill, one thread), from a git
worktree of the given commit (or from this working tree), into a scratch folder; nothing of the study is touched.
``compare`` checks every value of ``metrics.json``, ``per_image.csv`` and ``history.csv`` except timings and
provenance (:data:`TIMING_FIELDS`, :data:`PROVENANCE_FIELDS`) and exits non-zero on the first difference.

``reproduce N`` is the check across machines: it re-trains N committed CPU runs (a seeded choice among the cheapest
quarter, cheapest first; runs of train.ipynb alone, not a universal model's) with the current code on the machine at
hand, and reports each test number's drift from the committed run in units of its cell's seed-to-seed standard deviation
(:func:`reproduce`); ``reproduce --runs D/M/seedK ...`` re-trains the named runs instead (:func:`named_runs`), e.g.
the runs another machine reproduced, so that three machines can be set side by side. ``retrained ARCHIVE`` reports
the same drift for committed runs that were archived and then re-trained in the study (``results/h200``: the seed-4
GPU runs, re-trained on the CPU; :func:`retrained_drift`).
The proof of each recorded change is a row of ``results/provenance.csv`` (docs/versions.md,
"Recording a change that alters no number"); ``tests/test_committed_study.py`` accepts a committed run's code only if it
is the current code or a code state that row declares number-equivalent to it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

from repro.config import THREADS_ENV
from repro.data.registry import REPO_ROOT
from repro.training.device import DEVICE_ENV

WORKTREE = "WORKTREE"

# Seconds and throughput differ from run to run on any machine.
TIMING_FIELDS = frozenset({"train_seconds", "images_per_second", "seconds", "eval_seconds"})
# Where a run comes from, not what it computed: the code's hashes and commit, library versions, the machine, where
# its data and outputs lay, and how its settings are written down (a preset key moved to its own parameter is the
# same setting: the numbers show whether it still acts the same). The dataset's registry entry is a description
# too: all it does to the data is in the prepared files' md5s (``data_files``), which are compared.
PROVENANCE_FIELDS = frozenset(
    {
        "code_files",
        "git_commit",
        "versions",
        "machine",
        "data_root",
        "out_dir",
        "checkpoint_dir",
        "scale_settings",
        "dataset_settings",
        "dataset_definition",
        "resumed_after_epochs",
        "resumed_from_code",
    }
)
EXCLUDED = TIMING_FIELDS | PROVENANCE_FIELDS


def differences(old: Any, new: Any, where: str = "") -> list[str]:
    """Every differing leaf of two JSON values, by dotted path, skipping :data:`EXCLUDED` keys at any depth."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        lines = []
        for key in sorted(set(old) | set(new)):
            if key in EXCLUDED:
                continue
            path = f"{where}.{key}" if where else str(key)
            if key not in old or key not in new:
                lines.append(f"{path}: only in {'new' if key not in old else 'old'}")
            else:
                lines += differences(old[key], new[key], path)
        return lines
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        pairs = enumerate(zip(old, new, strict=True))
        return [line for k, (a, b) in pairs for line in differences(a, b, f"{where}[{k}]")]
    # Identical means identical: NaN equals NaN here (an empty class's Dice), nothing else is tolerated.
    same = old == new or (isinstance(old, float) and isinstance(new, float) and old != old and new != new)
    return [] if same else [f"{where}: old {json.dumps(old)}, new {json.dumps(new)}"]


def _csv_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as handle:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def compare(old_dir: Path | str, new_dir: Path | str) -> list[str]:
    """The differences between two run folders' outputs (empty: number-equivalent)."""
    old_dir, new_dir = Path(old_dir), Path(new_dir)
    lines = differences(
        json.loads((old_dir / "metrics.json").read_text()), json.loads((new_dir / "metrics.json").read_text()), ""
    )
    for name in ("per_image.csv", "history.csv"):
        lines += differences(_csv_rows(old_dir / name), _csv_rows(new_dir / name), name)
    return [f"metrics.json {line}" if not line.startswith(("per_image", "history")) else line for line in lines]


REPRODUCTION_LOG = REPO_ROOT / "results" / "reproduction.csv"
REPRODUCED_METRICS = ("dice", "iou")


def _why_not_reproducible(metrics: Mapping) -> str | None:
    """Why :func:`run` cannot re-train the run a ``metrics.json`` records, or None when it can."""
    # A universal model's record (it names its run's ``domains``) is one domain's share of one network trained on
    # every domain at once by train_universal.ipynb: :func:`run` re-trains with train.ipynb on one dataset, which
    # would train another network (an independent model's), so its numbers could not be compared with the record.
    if metrics.get("domains"):
        return "a universal model's record, which train.ipynb cannot re-train alone"
    if metrics.get("device") != "cpu" or not metrics.get("code_files"):
        return f"trained on {metrics.get('device')}, not a CPU run with its code recorded"
    return None


def choose_runs(study: Path | str, n: int, seed: int = 0) -> list[Path]:
    """``n`` committed CPU runs of ``study`` (``results/<scale>``): a seeded sample of the cheapest quarter by
    ``train_seconds``, cheapest first. A universal model's records are none of them (see below)."""
    runs = []
    for path in sorted(Path(study).glob("runs/*/*/seed*/metrics.json")):
        metrics = json.loads(path.read_text())
        if _why_not_reproducible(metrics) is None:
            runs.append((metrics["train_seconds"], path.parent))
    runs.sort()
    pool = runs[: max(n, len(runs) // 4)]
    return [run_dir for _, run_dir in sorted(random.Random(seed).sample(pool, min(n, len(pool))))]


def named_runs(study: Path | str, names: list[str]) -> list[Path]:
    """The committed runs ``names`` (``<dataset>/<model>/seed<k>``) of ``study``, each checked by the rule
    :func:`choose_runs` chooses by (:func:`_why_not_reproducible`). Every name that fails is refused at once."""
    runs, problems = [], []
    for name in names:
        run_dir = Path(study) / "runs" / name
        path = run_dir / "metrics.json"
        if not path.is_file():
            problems.append(f"{name}: no committed run ({path} does not exist)")
            continue
        why_not = _why_not_reproducible(json.loads(path.read_text()))
        if why_not:
            problems.append(f"{name}: {why_not}")
        else:
            runs.append(run_dir)
    if problems:
        raise ValueError("cannot reproduce these runs: " + "; ".join(problems))
    return runs


def reproduce(committed_runs: list[Path], out: Path, scale: str = "cpu", data_root: str | None = None) -> list[dict]:
    """Re-train ``committed_runs`` (:func:`choose_runs` or :func:`named_runs`) with this working tree's code into
    ``out`` and return, per run and test metric, the committed and the reproduced value, their difference, the
    cell's seed-to-seed standard deviation (its committed seeds) and the difference in units of it; each row also says
    whether every number of the run was reproduced bit for bit (:func:`compare`) and names the machine. The rows are
    appended to ``results/reproduction.csv``."""
    rows = []
    for committed in committed_runs:
        model_dir = committed.parent
        dataset, model, run_seed = model_dir.parent.name, model_dir.name, int(committed.name.removeprefix("seed"))
        mine = run(WORKTREE, out, dataset, model, run_seed, scale, data_root or _default_data_root())
        rows += drift_rows(committed, mine, model_dir)
    _append_to_log(rows)
    return rows


def retrained_drift(archive: Path | str, study: Path | str) -> list[dict]:
    """The drift of every run archived below ``archive`` (``runs/<dataset>/<model>/seed<k>``: committed records that
    have since been re-trained, e.g. on another device) to its re-trained record in ``study`` (``results/<scale>``), as
    :func:`reproduce` reports it; the cell's s.d. is that of the study's seeds now. The rows are appended to
    ``results/reproduction.csv``. Refused, naming the runs, while any of them is not re-trained yet (its record in
    the study is still the archived one), so that the log never holds a half-done comparison."""
    archived = sorted(path.parent for path in Path(archive).glob("runs/*/*/seed*/metrics.json"))
    if not archived:
        raise ValueError(f"{archive}: no archived run (runs/<dataset>/<model>/seed<k>/metrics.json) below it")
    pairs = [(old, Path(study) / old.relative_to(Path(archive))) for old in archived]
    problems = []
    for old, new in pairs:
        if not (new / "metrics.json").exists():
            problems.append(f"{new}: no record")
        elif _record(old) == _record(new):
            problems.append(f"{new}: still the archived one")
    if problems:
        raise ValueError("not every archived run has a re-trained record in the study yet: " + "; ".join(problems))
    rows = []
    for old, new in pairs:
        rows += drift_rows(old, new, new.parent)
    _append_to_log(rows)
    return rows


def drift_rows(committed: Path, mine: Path, cell_dir: Path) -> list[dict]:
    """Per test metric, one row of ``results/reproduction.csv``: the committed run ``committed`` against the run
    ``mine`` that re-trained it, in units of the seed-to-seed s.d. of the runs in ``cell_dir``
    (``<dataset>/<model>``); each run's machine as its record names it."""
    old, new = _record(committed), _record(mine)
    identical = not compare(committed, mine)
    cell = [json.loads(path.read_text())["test"] for path in sorted(cell_dir.glob("seed*/metrics.json"))]
    rows = []
    for metric in REPRODUCED_METRICS:
        sd = statistics.stdev(test[metric] for test in cell) if len(cell) > 1 else float("nan")
        drift = new["test"][metric] - old["test"][metric]
        rows.append(
            {
                "date": date.today().isoformat(),
                "run": f"{cell_dir.parent.name}/{cell_dir.name}/{mine.name}",
                "metric": f"test {metric}",
                "committed": round(old["test"][metric], 6),
                "reproduced": round(new["test"][metric], 6),
                "drift": round(drift, 6),
                "cell_sd": round(sd, 6),
                "drift_in_sd": round(drift / sd, 3) if sd > 0 else float("nan"),
                "best_epoch": f"{old['best_epoch']} -> {new['best_epoch']}",
                "bit_identical": identical,
                "committed_machine": _machine_label(old),
                "machine": _machine_label(new),
            }
        )
    return rows


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _machine_label(record: Mapping) -> str:
    """The machine a record names: its GPU, else its CPU and the instruction set torch dispatched to; a record from
    before runs named their machine gives its device where that was a GPU (``cuda:0 (NVIDIA H200)``)."""
    recorded = record.get("machine") or {}
    if recorded.get("gpu"):
        return recorded["gpu"]
    if recorded.get("cpu"):
        return f"{recorded['cpu']} ({recorded['cpu_capability']})"
    device = str(record.get("device", ""))
    return device if device.startswith("cuda") else "not recorded"


def _append_to_log(rows: list[dict]) -> None:
    if not rows:
        return
    new_log = not REPRODUCTION_LOG.exists()
    with REPRODUCTION_LOG.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        if new_log:
            writer.writeheader()
        writer.writerows(rows)


def _default_data_root() -> str:
    return str((REPO_ROOT / "../shared/datasets").resolve())


def _checkout(code: str, scratch: Path) -> Path:
    """The tree to run: this working tree, or a detached git worktree of commit ``code`` below ``scratch``."""
    if code == WORKTREE:
        return REPO_ROOT
    tree = scratch / f"code-{code}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), code], cwd=REPO_ROOT, check=True)
    return tree


def run(code: str, out: Path, dataset: str, model: str, seed: int, scale: str, data_root: str) -> Path:
    """Train one run with the code of ``code`` into ``out/<dataset>/<model>/seed<k>`` (one thread, the CPU)."""
    out = out.resolve()
    tree = _checkout(code, out)
    run_dir = out / dataset / model / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree), THREADS_ENV: "1", DEVICE_ENV: "cpu"}
    command = [
        sys.executable, "-m", "papermill", str(tree / "notebooks" / "train.ipynb"), str(run_dir / "train.ipynb"),
        "--no-progress-bar", "--cwd", str(tree),
        "-p", "dataset", dataset, "-p", "model", model, "-p", "seed", str(seed), "-p", "scale", scale,
        "-p", "data_root", data_root, "-p", "out_dir", str(run_dir),
        "-p", "checkpoint_dir", str(run_dir / "checkpoint"),
    ]  # fmt: skip
    subprocess.run(command, cwd=tree, env=env, check=True)
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repro.runner.equivalence", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run", help="train one run with the code of a commit (or WORKTREE)")
    runner.add_argument("--code", required=True, help=f"a git commit, or {WORKTREE} for this working tree")
    runner.add_argument("--out", required=True, type=Path)
    runner.add_argument("--data-root", default=_default_data_root())
    for name in ("dataset", "model"):
        runner.add_argument(name)
    runner.add_argument("seed", type=int)
    runner.add_argument("scale")
    comparer = commands.add_parser("compare", help="compare two run folders' numbers")
    comparer.add_argument("old", type=Path)
    comparer.add_argument("new", type=Path)
    again = commands.add_parser("reproduce", help="re-train N committed runs here; report the drift")
    again.add_argument("n", type=int, nargs="?", help="how many runs to choose (or name them with --runs)")
    again.add_argument("--runs", nargs="+", metavar="D/M/seedK", help="re-train these committed runs instead")
    again.add_argument("--out", required=True, type=Path, help="scratch folder for the re-trained runs")
    again.add_argument("--seed", type=int, default=0, help="seed of the choice of runs")
    again.add_argument("--scale", default="cpu")
    retrained = commands.add_parser(
        "retrained", help="the drift of archived runs (e.g. GPU runs) to their re-trained records in the study"
    )
    retrained.add_argument("archive", type=Path, help="a folder with runs/<dataset>/<model>/seed<k>, e.g. results/h200")
    retrained.add_argument("--scale", default="cpu")
    args = parser.parse_args(argv)
    if args.command in ("reproduce", "retrained"):
        if args.command == "reproduce":
            if (args.n is None) == (args.runs is None):
                parser.error("reproduce: give either N or --runs")
            study = REPO_ROOT / "results" / args.scale
            try:
                chosen = named_runs(study, args.runs) if args.runs else choose_runs(study, args.n, args.seed)
            except ValueError as error:
                parser.error(str(error))
            rows = reproduce(chosen, args.out, args.scale)
        else:
            try:
                rows = retrained_drift(args.archive, REPO_ROOT / "results" / args.scale)
            except ValueError as error:
                parser.error(str(error))
        for row in rows:
            print(
                f"{row['run']} {row['metric']}: committed {row['committed']:.4f} ({row['committed_machine']}), "
                f"re-trained {row['reproduced']:.4f} ({row['machine']}), drift {row['drift']:+.4f} = "
                f"{row['drift_in_sd']:+.2f} cell s.d.; best epoch {row['best_epoch']}; "
                f"bit-identical: {row['bit_identical']}"
            )
        print(
            f"appended to {REPRODUCTION_LOG}; `python scripts/update_readme.py` copies the log into README.md (per "
            "pair of machines) and docs/running.md (run by run)"
        )
        return 0
    if args.command == "run":
        print(run(args.code, args.out, args.dataset, args.model, args.seed, args.scale, args.data_root))
        return 0
    lines = compare(args.old, args.new)
    if lines:
        print(f"{len(lines)} difference(s) between {args.old} and {args.new}:\n  " + "\n  ".join(lines[:50]))
        return 1
    print(f"number-equivalent: {args.old} and {args.new} (timings and provenance aside)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
