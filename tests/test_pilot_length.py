"""The length a pilot suggests (scripts/pilot_curves.py): the recipe's rule applied to the pilot's curve."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from repro.config import dataset_training, load_params

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "pilot_curves.py"
spec = importlib.util.spec_from_file_location("pilot_curves", SCRIPT)
pilot_curves = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pilot_curves)


def test_a_settled_curve_suggests_its_own_length():
    # Best at epoch 7 of 12, and the last five epochs moved by 0.001.
    curve = [0.2, 0.5, 0.8, 0.85, 0.88, 0.899, 0.902, 0.900, 0.899, 0.900, 0.899, 0.900]
    assert pilot_curves.meets_rule(curve)
    assert pilot_curves.suggest_length(curve, steps_per_epoch=10) == 120


@pytest.mark.parametrize(
    "curve",
    [
        [0.1 * k for k in range(1, 12)],  # still learning: the best epoch is the last
        [0.5, 0.9, 0.8, 0.81, 0.82, 0.83, 0.84, 0.85],  # best early, but still moving by 0.05 over five epochs
        [0.5, 0.6],  # shorter than the rule's window
    ],
)
def test_no_length_when_the_curve_has_not_settled(curve):
    assert pilot_curves.suggest_length(curve, 10) is None
    text = pilot_curves.suggestion_text({"suggested_train_steps": None, "dataset": "x", "scale": "cpu"})
    assert text.endswith("pilot a longer run (--steps)")


def test_the_suggestion_is_the_params_yaml_entry():
    text = pilot_curves.suggestion_text({"suggested_train_steps": 480, "dataset": "my-polyps", "scale": "cpu"})
    assert "    my-polyps: {train_steps: {cpu: 480}, eval_every: 1}" in text.splitlines()


def test_the_suggestion_keeps_the_datasets_other_settings():
    entry = {"train_steps": {"paper": 9000}, "eval_every": 2, "batch_size": {"cpu": 4}}
    text = pilot_curves.suggestion_text({"suggested_train_steps": 2025, "dataset": "my-volumes", "scale": "cpu"}, entry)
    assert "    my-volumes: {train_steps: {paper: 9000, cpu: 2025}, eval_every: 2, batch_size: {cpu: 4}}" in text


PILOTS = sorted((ROOT / "results" / "pilots").glob("*/*/*/seed*/pilot.json"))


@pytest.mark.parametrize(
    "summary", PILOTS, ids=[str(p.parent.relative_to(ROOT / "results" / "pilots")) for p in PILOTS]
)
def test_each_committed_pilot_suggests_the_length_its_dataset_trains(summary):
    """The study's lengths are what their pilots suggest: the same number of epochs (params.yaml gives steps; a run
    trains whole epochs)."""
    pilot = json.loads(summary.read_text())
    history = pd.read_csv(summary.parent / "history.csv")
    steps = pilot_curves.suggest_length(history["val_dice"].tolist(), pilot["optimizer_steps"] // pilot["epochs"])
    configured = dataset_training(pilot["dataset"], load_params(ROOT / "params.yaml")).train_steps[pilot["scale"]]
    per_epoch = pilot["optimizer_steps"] // pilot["epochs"]
    assert steps is not None and -(-configured // per_epoch) == steps // per_epoch
