"""Checks of the study as committed: dvc.lock and results/<scale>/ agree, and every committed run comes from the
current training code or from code that is number-equivalent to it (docs/versions.md, "Recording a change that alters no
number"): no comparison mixes code versions that compute different numbers. A change of the training code either
removes the runs it makes stale, in the same commit, until they are trained again, or is proven to change no number
and logged in results/provenance.csv, which these tests read. Nor does a cell (one dataset and variant, all its
seeds) mix devices or software stacks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from repro.config import load_params
from repro.provenance import PROVENANCE_LOG, equivalent_to, read_log, training_code_version
from repro.runner.grid import TRAIN_STAGES, Grid
from repro.training.identity import code_files

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
        path.relative_to(ROOT).as_posix() for path in STUDY.glob("runs/*/*/seed*") if (path / "metrics.json").is_file()
    }
    assert not committed - locked, f"runs without a dvc.lock entry: {sorted(committed - locked)}"


def test_every_locked_run_ran_the_same_training_code():
    versions: dict[tuple, list[str]] = {}
    for name, stage in _train_entries().items():
        versions.setdefault(tuple(sorted(_code_hashes(stage).items())), []).append(name)
    assert len(versions) <= 1, "dvc.lock records runs of several training-code versions: " + "; ".join(
        f"{len(names)} run(s) such as {names[0]} with {dict(code)}" for code, names in versions.items()
    )


def test_every_committed_run_ran_the_current_or_number_equivalent_training_code():
    current = code_files(ROOT)
    accepted = equivalent_to(training_code_version(current), read_log())
    stale = {}
    for metrics in sorted(STUDY.glob("runs/*/*/seed*/metrics.json")):
        recorded = json.loads(metrics.read_text())["code_files"]
        if training_code_version(recorded) not in accepted:
            changed = sorted(path for path in set(recorded) | set(current) if recorded.get(path) != current.get(path))
            stale[metrics.parent.relative_to(ROOT).as_posix()] = changed
    assert not stale, (
        f"committed runs of other training code, with no proof in {PROVENANCE_LOG.name} that it computes the same "
        f"numbers (the files that differ): {stale}"
    )


def test_every_logged_change_was_proven_on_committed_runs():
    """A provenance row names its proof runs (dataset/model/seed at a scale, old and new code, one machine) and the
    code versions it links: the proof must cover runs of the study (its `from_code`), not some other code."""
    log = read_log()
    versions = {
        training_code_version(json.loads(path.read_text())["code_files"])
        for path in STUDY.glob("runs/*/*/seed*/metrics.json")
    }
    for row in log:
        assert row["from_code"] != row["to_code"], row
        assert row["proof_runs"].count("/") >= 2, f"{PROVENANCE_LOG.name}: proof runs not named: {row}"
    if log:
        assert versions & {row["from_code"] for row in log} or versions == {training_code_version(code_files(ROOT))}


def test_the_committed_report_names_the_training_code_versions_the_runs_ran():
    """The report's "what was run" says which training code the runs ran (commits move on while a grid trains, so
    they cannot say it): the versions of the committed runs' code, each the current code's or number-equivalent to
    it."""
    index = STUDY / "report" / "index.html"
    if not index.exists():
        pytest.skip(f"{index} not built yet")
    n_runs = len(list(STUDY.glob("runs/*/*/seed*/metrics.json")))
    items = [item.partition("</li>")[0] for item in index.read_text().split("<li>")[1:]]
    line = next(item for item in items if item.startswith("training code versions"))
    accepted = equivalent_to(training_code_version(code_files(ROOT)), read_log())
    named = dict(part.rsplit(" (", 1) for part in line.partition(": ")[2].split(", "))
    assert set(named) <= accepted, line
    assert sum(int(count.rstrip(")")) for count in named.values()) == n_runs, line


# The software stack a run's numbers depend on. `platform` (the kernel build) and `processor` are left out: they name
# the machine, which the reproduction check measures separately (README, "Does a run reproduce?").
STACK = ("python", "torch", "numpy", "scipy")


def test_no_cell_mixes_devices_or_software_stacks():
    stacks: dict[tuple[str, str], dict[tuple, list[str]]] = {}
    for metrics in sorted(STUDY.glob("runs/*/*/seed*/metrics.json")):
        record = json.loads(metrics.read_text())
        stack = (record["device"], *(record["versions"][name] for name in STACK))
        cell = (record["dataset"], record["model"])
        stacks.setdefault(cell, {}).setdefault(stack, []).append(metrics.parent.name)
    assert stacks, f"no committed run under {STUDY}"
    mixed = {cell: seen for cell, seen in stacks.items() if len(seen) > 1}
    assert not mixed, "cells whose seeds ran on different devices or stacks: " + "; ".join(
        f"{dataset}/{model}: " + ", ".join(f"{seeds} on {stack}" for stack, seeds in seen.items())
        for (dataset, model), seen in mixed.items()
    )


def test_the_core_hours_docs_say_a_later_block_used_are_its_committed_runs_train_seconds():
    """docs/recipe.md's budget table says what each later block (`study.extra`, `.ablations`, `.controls`) used;
    a hand-kept figure there drifts unless it is checked against the runs (README's training-time line is generated)."""
    grid = Grid.from_params(load_params())
    block_of = {(dataset, model, seed): stage for stage, dataset, model, seed in grid.runs()}
    hours: dict[str, float] = {}
    for metrics in STUDY.glob("runs/*/*/seed*/metrics.json"):
        record = json.loads(metrics.read_text())
        stage = block_of.get((record["dataset"], record["model"], record["seed"]))
        if stage and record["device"].startswith("cpu"):
            hours[stage] = hours.get(stage, 0.0) + record["train_seconds"] / 3600
    stated = re.findall(r"`study\.(\w+)`; ([\d.]+) used", (ROOT / "docs" / "recipe.md").read_text())
    assert stated, "docs/recipe.md states no block's core-hours used"
    pairs = {block: (used, f"{hours.get(f'train_{block}', 0.0):.1f}") for block, used in stated}
    assert all(used == actual for used, actual in pairs.values()), f"docs/recipe.md (stated, actual): {pairs}"
