"""Tests of repro.runner.equivalence: the re-record rule's comparison of two runs and its provenance log."""

from __future__ import annotations

import csv
import json

import pytest

from repro.provenance import LOG_FIELDS, equivalent_to, read_log
from repro.runner.equivalence import compare, differences


def _run(folder, test_dice=0.9, seconds=3.0, code="a" * 32, loss=0.5):
    folder.mkdir(parents=True)
    metrics = {
        "test": {"dice": test_dice, "hd95": float("nan")},
        "best_epoch": 4,
        "train_seconds": seconds,
        "code_files": {"repro/training/trainer.py": code},
        "versions": {"torch": "2.13.0+cpu"},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "per_image.csv").write_text("id,dice\nimg1,0.8\nimg2,0.9\n")
    (folder / "history.csv").write_text(f"epoch,train_loss,val_dice,seconds\n1,{loss},0.7,{seconds}\n")
    return folder


def test_runs_that_differ_only_in_timings_and_provenance_are_number_equivalent(tmp_path):
    old = _run(tmp_path / "old", seconds=3.0, code="a" * 32)
    new = _run(tmp_path / "new", seconds=7.5, code="b" * 32)
    assert compare(old, new) == []


def test_any_other_difference_is_named_by_its_path(tmp_path):
    old = _run(tmp_path / "old")
    assert compare(old, _run(tmp_path / "dice", test_dice=0.9000001)) == [
        "metrics.json test.dice: old 0.9, new 0.9000001"
    ]
    assert compare(old, _run(tmp_path / "loss", loss=0.25)) == ["history.csv[0].train_loss: old 0.5, new 0.25"]


def test_a_key_present_on_one_side_only_is_a_difference():
    assert differences({"test": {"dice": 1.0}}, {"test": {"dice": 1.0, "iou": 1.0}}) == ["test.iou: only in new"]
    assert differences({"a": [1, 2]}, {"a": [1, 2, 3]}) == ["a: old [1, 2], new [1, 2, 3]"]


def _log(path, rows):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows({field: row.get(field, "x") for field in LOG_FIELDS} for row in rows)
    return path


def test_code_versions_are_equivalent_through_a_chain_of_logged_changes(tmp_path):
    log = read_log(
        _log(tmp_path / "log.csv", [{"from_code": "v1", "to_code": "v2"}, {"from_code": "v2", "to_code": "v3"}])
    )
    assert equivalent_to("v3", log) == {"v1", "v2", "v3"}
    assert equivalent_to("v2", log) == {"v1", "v2"}  # a change is recorded forwards only
    assert equivalent_to("v4", log) == {"v4"}
    assert read_log(tmp_path / "absent.csv") == []


def test_a_log_row_with_an_empty_field_is_refused_naming_its_line(tmp_path):
    path = _log(tmp_path / "log.csv", [{"from_code": "v1", "to_code": "v2"}, {"from_code": "v2", "to_code": ""}])
    with pytest.raises(ValueError, match=r"log.csv, line 3"):
        read_log(path)


def test_reproduce_chooses_a_seeded_sample_of_the_cheapest_cpu_runs_cheapest_first(tmp_path):
    from repro.runner.equivalence import choose_runs

    for k in range(12):
        run = tmp_path / "runs" / "d" / f"m{k}" / "seed0"
        run.mkdir(parents=True)
        device = "cuda:0 (GPU)" if k == 0 else "cpu"
        (run / "metrics.json").write_text(
            json.dumps({"device": device, "train_seconds": 100 - k, "code_files": {"a": "b"}})
        )
    chosen = choose_runs(tmp_path, 3, seed=1)
    assert chosen == choose_runs(tmp_path, 3, seed=1) and len(chosen) == 3
    seconds = [json.loads((run / "metrics.json").read_text())["train_seconds"] for run in chosen]
    assert seconds == sorted(seconds) and all(s <= 91 for s in seconds)  # the cheapest quarter of the 11 CPU runs
    assert all(json.loads((run / "metrics.json").read_text())["device"] == "cpu" for run in chosen)


def test_reproduce_never_chooses_a_universal_models_record(tmp_path):
    """A universal run's records (one per domain, each with ``domains``) come from train_universal.ipynb, one network
    over both domains: train.ipynb cannot re-train either of them alone, so they are no candidates, however cheap."""
    from repro.runner.equivalence import choose_runs

    domains = ["msd-task04-hippocampus", "la2018-atrium-lgemri"]
    for dataset, model, seconds, extra in (
        ("ph2-dermoscopy", "unet", 50, {}),
        ("kvasir-seg", "unet", 60, {}),
        *((domain, "u2net3d_universal", 1, {"domains": domains, "dataset": domain}) for domain in domains),
    ):
        run = tmp_path / "runs" / dataset / model / "seed0"
        run.mkdir(parents=True)
        metrics = {"device": "cpu", "train_seconds": seconds, "code_files": {"a": "b"}, **extra}
        (run / "metrics.json").write_text(json.dumps(metrics))
    assert choose_runs(tmp_path, 10) == [
        tmp_path / "runs" / "ph2-dermoscopy" / "unet" / "seed0",
        tmp_path / "runs" / "kvasir-seg" / "unet" / "seed0",
    ]
