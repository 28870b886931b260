"""Checks of the study as committed: dvc.lock and results/<scale>/ agree, and every committed run comes from one
version of the training code, the current one (issue 13: the grid is re-run once, so that no comparison mixes code
versions; README: results/<scale>/ only ever holds runs of the current training code). A change of the training
code therefore removes the runs it makes stale, in the same commit, until they are trained again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from repro.config import load_params
from repro.grid import TRAIN_STAGES
from repro.run_identity import code_files
from repro.run_results import training_code_version

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "results" / load_params()["scale"]


def _train_entries() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    return {name: stage for name, stage in stages.items() if name.partition("@")[0] in TRAIN_STAGES}


def _code_hashes(stage: dict) -> dict[str, str]:
    """The stage's code dependencies (everything but its prepared dataset under data/) and their hashes."""
    return {dep["path"]: dep["md5"] for dep in stage["deps"] if not dep["path"].startswith("data/")}


def test_every_locked_run_is_committed_and_every_committed_run_is_locked():
    entries = _train_entries()
    locked = {out["path"] for stage in entries.values() for out in stage["outs"]}
    missing = sorted(path for path in locked if not (ROOT / path).is_dir())
    assert not missing, f"dvc.lock records runs whose outputs are not in the repository: {missing}"
    committed = {
        path.relative_to(ROOT).as_posix()
        for path in STUDY.glob("runs/*/*/seed*")
        if (path / "metrics.json").is_file()
    }
    assert not committed - locked, f"runs without a dvc.lock entry: {sorted(committed - locked)}"


def test_every_locked_run_ran_the_same_training_code():
    versions: dict[tuple, list[str]] = {}
    for name, stage in _train_entries().items():
        versions.setdefault(tuple(sorted(_code_hashes(stage).items())), []).append(name)
    assert len(versions) <= 1, "dvc.lock records runs of several training-code versions: " + "; ".join(
        f"{len(names)} run(s) such as {names[0]} with {dict(code)}" for code, names in versions.items()
    )


def test_every_committed_run_ran_the_current_training_code():
    current = code_files(ROOT)
    stale = {}
    for metrics in sorted(STUDY.glob("runs/*/*/seed*/metrics.json")):
        recorded = json.loads(metrics.read_text())["code_files"]
        changed = sorted(path for path in set(recorded) | set(current) if recorded.get(path) != current.get(path))
        if changed:
            stale[metrics.parent.relative_to(ROOT).as_posix()] = changed
    assert not stale, f"committed runs of other training code (the files that differ): {stale}"


def test_the_committed_report_names_one_training_code_version_the_current_one():
    """The report's "what was run" says which training code the runs ran (commits move on while a grid trains, so
    they cannot say it): one version, the current code's, for every committed run."""
    index = STUDY / "report" / "index.html"
    if not index.exists():
        pytest.skip(f"{index} not built yet")
    n_runs = len(list(STUDY.glob("runs/*/*/seed*/metrics.json")))
    items = [item.partition("</li>")[0] for item in index.read_text().split("<li>")[1:]]
    line = next(item for item in items if item.startswith("training code versions"))
    assert line.endswith(f": {training_code_version(code_files(ROOT))} ({n_runs})"), line
