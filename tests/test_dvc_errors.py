"""A run that fails through plain `dvc repro` (not the runner) states its cause on the last line before DVC's own.

DVC prints its "ERROR: failed to reproduce ..." line last, whatever a stage's command printed; the run's cause must
be the line right above it, not 150 lines up inside a traceback's frames."""

from __future__ import annotations

from study_copy import copy_repository, run_python

STUDY = {"datasets": ["ph2-dermoscopy"], "models": ["unet"], "seeds": [0]}


def test_a_damaged_checkpoint_is_named_just_above_dvcs_own_error_line(tmp_path):
    copy = copy_repository(tmp_path, STUDY)
    prepared = run_python(copy, "-m", "dvc", "repro", "prepare@ph2-dermoscopy")
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    checkpoint = copy / "checkpoints/ph2-dermoscopy/unet/seed0/smoke/last.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"not a checkpoint")
    result = run_python(copy, "-m", "dvc", "repro", "--single-item", "train@ph2-dermoscopy-unet-0")
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    dvc_error = max(i for i, line in enumerate(lines) if line.startswith("ERROR: failed to reproduce"))
    assert "cannot be read" in lines[dvc_error - 1] and str(checkpoint.relative_to(copy)) in lines[dvc_error - 1], (
        lines[dvc_error - 5 : dvc_error + 1]
    )
