"""benchmarks/eval_cost.py's choice of eval_every: one validation per N epochs within the budget of their training."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_cost.py"
spec = importlib.util.spec_from_file_location("eval_cost", SCRIPT)
eval_cost = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eval_cost)


@pytest.mark.parametrize(
    ("train", "evaluation", "expected"),
    [(18.9, 19.3, 5), (17.1, 23.1, 6), (10.0, 2.5, 1), (10.0, 2.6, 2), (10.0, 0.1, 1)],
)
def test_the_smallest_interval_within_a_quarter_of_training(train, evaluation, expected):
    every = eval_cost.suggested_eval_every(train, evaluation, budget=0.25)
    assert every == expected
    assert evaluation <= 0.25 * every * train  # within the budget ...
    assert every == 1 or evaluation > 0.25 * (every - 1) * train  # ... and no smaller interval is
