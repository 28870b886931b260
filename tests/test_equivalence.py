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


def test_reproduce_takes_named_runs_and_refuses_each_one_it_cannot_retrain_naming_it(tmp_path):
    """``reproduce --runs``: the runs another machine reproduced can be re-trained again here; a missing run, a GPU
    run and a universal model's record are refused together, before anything trains."""
    from repro.runner.equivalence import named_runs

    for dataset, model, extra in (
        ("ph2", "unet", {"device": "cpu"}),
        ("ph2", "unetpp", {"device": "cuda:0 (NVIDIA H200)"}),
        ("hippo", "u2net3d_universal", {"device": "cpu", "domains": ["hippo", "atrium"]}),
    ):
        run = tmp_path / "runs" / dataset / model / "seed0"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"train_seconds": 5, "code_files": {"a": "b"}, **extra}))
    assert named_runs(tmp_path, ["ph2/unet/seed0"]) == [tmp_path / "runs" / "ph2" / "unet" / "seed0"]
    with pytest.raises(ValueError) as refused:
        named_runs(tmp_path, ["ph2/unet/seed0", "ph2/unet/seed7", "ph2/unetpp/seed0", "hippo/u2net3d_universal/seed0"])
    message = str(refused.value)
    assert "ph2/unet/seed7: no committed run" in message
    assert "ph2/unetpp/seed0: trained on cuda:0 (NVIDIA H200)" in message
    assert "hippo/u2net3d_universal/seed0: a universal model's record" in message
    assert "ph2/unet/seed0:" not in message


def _record(folder, dice, iou, device="cpu", machine=None, best_epoch=4):
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {"test": {"dice": dice, "iou": iou}, "best_epoch": best_epoch, "device": device, "train_seconds": 5.0}
    if machine:
        metrics["machine"] = machine
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "per_image.csv").write_text(f"id,dice\nimg1,{dice}\n")
    (folder / "history.csv").write_text("epoch,train_loss\n1,0.5\n")
    return folder


XEON = {"cpu": "Intel Xeon", "cpu_capability": "AVX512", "cpu_count": 2, "gpu": None}


def test_retrained_drift_compares_each_archived_run_with_its_retrained_record(tmp_path, monkeypatch):
    """The archived GPU run against the CPU run that replaced it, in units of the cell's s.d. over the study's seeds
    now; both machines named (the GPU record, from before runs named their machine, by its device)."""
    from repro.runner import equivalence

    monkeypatch.setattr(equivalence, "REPRODUCTION_LOG", tmp_path / "reproduction.csv")
    cell = tmp_path / "study" / "runs" / "ph2" / "unet"
    for seed, dice in enumerate([0.80, 0.82, 0.84]):
        _record(cell / f"seed{seed}", dice, dice - 0.1, machine=XEON)
    _record(
        tmp_path / "h200" / "runs" / "ph2" / "unet" / "seed2", 0.83, 0.70, device="cuda:0 (NVIDIA H200)", best_epoch=9
    )
    rows = equivalence.retrained_drift(tmp_path / "h200", tmp_path / "study")
    assert [(row["metric"], row["committed"], row["reproduced"]) for row in rows] == [
        ("test dice", 0.83, 0.84),
        ("test iou", 0.70, 0.74),
    ]
    assert rows[0]["run"] == "ph2/unet/seed2" and rows[0]["cell_sd"] == 0.02
    assert rows[0]["drift_in_sd"] == pytest.approx(0.5) and rows[1]["drift_in_sd"] == pytest.approx(2.0)
    assert rows[0]["best_epoch"] == "9 -> 4" and rows[0]["bit_identical"] is False
    assert rows[0]["committed_machine"] == "cuda:0 (NVIDIA H200)" and rows[0]["machine"] == "Intel Xeon (AVX512)"
    with (tmp_path / "reproduction.csv").open(newline="") as handle:
        assert [row["drift"] for row in csv.DictReader(handle)] == ["0.01", "0.04"]


def test_retrained_drift_is_refused_while_an_archived_run_is_not_retrained(tmp_path, monkeypatch):
    from repro.runner import equivalence

    monkeypatch.setattr(equivalence, "REPRODUCTION_LOG", tmp_path / "reproduction.csv")
    for seed in (0, 1):
        _record(tmp_path / "h200" / "runs" / "kvasir" / "unet" / f"seed{seed}", 0.8, 0.7, device="cuda:0 (H200)")
    _record(tmp_path / "study" / "runs" / "kvasir" / "unet" / "seed0", 0.8, 0.7, device="cuda:0 (H200)")
    with pytest.raises(ValueError, match=r"seed0: still the archived one; .*seed1: no record"):
        equivalence.retrained_drift(tmp_path / "h200", tmp_path / "study")
    with pytest.raises(ValueError, match="no archived run"):
        equivalence.retrained_drift(tmp_path / "study" / "runs", tmp_path / "study")
    assert not (tmp_path / "reproduction.csv").exists()
