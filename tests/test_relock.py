"""scripts/relock_training_code.py: every training stage gets the reference stage's code deps, nothing else changes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("relock", ROOT / "scripts" / "relock_training_code.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def entry(name: str, data: list[str], code: dict[str, str]) -> str:
    deps = "".join(f"    - path: {path}\n      hash: md5\n      md5: d{k}\n" for k, path in enumerate(data))
    deps += "".join(f"    - path: {path}\n      hash: md5\n      md5: {md5}\n" for path, md5 in code.items())
    params = "    params:\n      params.yaml:\n        scale: cpu\n"
    return f"  {name}:\n    cmd: run {name}\n    deps:\n{deps}{params}    outs:\n    - path: out/{name}\n      md5: o\n"


def test_every_training_stage_gets_the_reference_code_and_keeps_its_own_data_params_and_outputs():
    relock = _script()
    old, new = {"repro/training": "old", "notebooks/train.ipynb": "old"}, {"repro/training": "new", "repro/x.py": "n"}
    lock = "schema: '2.0'\nstages:\n" + "".join(
        [
            entry("prepare@a", ["raw/a"], {"repro/data/prepare.py": "p"}),
            entry("train@a-unet-0", ["data/processed/cpu/a"], new),
            entry("train@b-unet-0", ["data/processed/cpu/b"], old),
            entry("train_controls@b-tinyunet_plain-0", ["data/processed/cpu/b"], old),
            entry("train_independent@b-u-0", ["data/processed/cpu/b"], old),
            entry("train_universal@u-0", ["data/processed/cpu/a", "data/processed/cpu/b"], old),
            entry("aggregate", ["results/cpu/runs"], {"repro/analysis/stats.py": "s"}),
        ]
    )
    text, count = relock.relock(lock, "train@a-unet-0")
    assert count == 5
    stages = yaml.safe_load(text)["stages"]
    for name in (
        "train@a-unet-0",
        "train@b-unet-0",
        "train_controls@b-tinyunet_plain-0",
        "train_independent@b-u-0",
        "train_universal@u-0",
    ):
        code = {d["path"]: d["md5"] for d in stages[name]["deps"] if not d["path"].startswith("data/")}
        assert code == new, name
        assert stages[name]["outs"] == [{"path": f"out/{name}", "md5": "o"}]
    assert [d["path"] for d in stages["train_universal@u-0"]["deps"]][:2] == [
        "data/processed/cpu/a",
        "data/processed/cpu/b",
    ]
    assert stages["prepare@a"] == yaml.safe_load(lock)["stages"]["prepare@a"]
    assert stages["aggregate"] == yaml.safe_load(lock)["stages"]["aggregate"]
    with pytest.raises(ValueError, match="no stage 'train@c-unet-0'"):
        relock.relock(lock, "train@c-unet-0")


def test_the_committed_lock_is_a_fixed_point():
    """On the committed dvc.lock, whose training stages all ran one code, relocking from any of them changes nothing."""
    relock = _script()
    lock = (ROOT / "dvc.lock").read_text()
    text, count = relock.relock(lock, "train@ph2-dermoscopy-unet-0")
    assert count > 0 and text == lock


def test_the_script_knows_every_training_stage_of_the_grid():
    """The script imports nothing of the package; its list of training stages is the runner's, stage for stage."""
    from repro.runner.grid import TRAIN_STAGES

    assert _script().TRAINING_STAGES == TRAIN_STAGES
