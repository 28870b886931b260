"""README.md: its two commands exist, and its headline tables are the generated ones (those of the current study,
or a line saying it has not been run at this version yet); results/v1/README.md holds the archived study's."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
V1_README = (ROOT / "results" / "v1" / "README.md").read_text()


def _update_readme():
    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "scripts" / "update_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_match_the_generated_ones():
    assert _update_readme().render(README) == README, "run `python scripts/update_readme.py`"
    assert _update_readme().render_archive(V1_README) == V1_README, "run `python scripts/update_readme.py`"


def _block(text: str, name: str) -> str:
    return re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", text, re.DOTALL).group(1)


def test_a_study_not_run_at_this_version_is_one_line_in_place_of_its_tables(tmp_path):
    """Without results/<scale>/tables/ (the grid not re-run yet), each table's block says so in one line; with the
    folder, the blocks hold its tables."""
    update_readme = _update_readme()
    missing = tmp_path / "results" / "cpu" / "tables"
    rendered = update_readme.render(README, tables=missing)
    for name in update_readme.STUDY_TABLES:
        (line,) = _block(rendered, name).splitlines()
        assert line.startswith("*Not yet run at this version of the training code: ") and f"`{missing}/`" in line
    written = tmp_path / "tables"
    written.mkdir()
    for name, source in update_readme.STUDY_TABLES.items():
        (written / source).write_text(f"| the {name} |\n")
    rendered = update_readme.render(README, tables=written)
    for name, source in update_readme.STUDY_TABLES.items():
        assert _block(rendered, name) == (written / source).read_text()


def test_readme_two_commands_are_make_targets_and_ci_runs_the_test_one():
    commands = re.findall(r"^make (\w+)", README, flags=re.MULTILINE)
    assert commands[:2] == ["study", "test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^study:", makefile, re.MULTILINE) and re.search(r"^test:", makefile, re.MULTILINE)
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")


def test_readme_explains_every_verdict_label_in_one_line_and_uses_only_those_labels():
    from repro import verdicts

    block = re.search(r"<!-- verdict-labels:start -->\n(.*?)<!-- verdict-labels:end -->", README, re.DOTALL)
    lines = block.group(1).splitlines()
    assert [line.split("`")[1] for line in lines] == list(verdicts.MEANINGS)
    claims = re.search(r"<!-- claims-table:start -->\n(.*?)<!-- claims-table:end -->", README, re.DOTALL).group(1)
    rows = [[cell.strip() for cell in row.strip("|").split("|")] for row in claims.splitlines()]
    verdict = rows[0].index("verdict")
    # A decisive label that dropping one seed can change is marked "(fragile: kept/cases)".
    used = {re.sub(r" \(fragile: \d+/\d+\)$", "", row[verdict]) for row in rows[2:]}
    assert used <= set(verdicts.LABELS), used - set(verdicts.LABELS)


def test_readme_tables_name_the_script_that_copies_them():
    for text in (README, V1_README):
        results = text.index("<!-- results-table:start -->")
        assert "scripts/update_readme.py" in text[results - 600 : results]
    assert re.search(r"\| 0\.124 \| 0\.115 \|", V1_README), "parameters in millions at 3 significant figures"


def test_the_progress_line_counts_the_grid_s_runs_in_the_tables_by_cell(tmp_path):
    """Runs outside the grid (another variant, a seed beyond the grid's) do not count; a cell without runs is
    counted as such; the whole grid is said to be complete."""
    update_readme = _update_readme()
    study = {"datasets": ["a", "b"], "models": ["unet", "unetpp"], "seeds": [0, 1, 2]}
    rows = "dataset,model,n_seeds\na,unet,3\na,unetpp,1\nb,unet,4\nb,fcn,3\n"
    (tmp_path / "results.csv").write_text(rows)
    assert update_readme.progress_line(tmp_path, study) == (
        "*Progress: 7 of the study's 12 runs (2 datasets × 2 variants × 3 seeds) are in the tables below; of its 4 "
        "cells (dataset × variant), 2 with 3 seeds, 1 with 1 seed, 1 with none.*\n"
    )
    (tmp_path / "results.csv").write_text("dataset,model,n_seeds\na,unet,3\na,unetpp,3\nb,unet,3\nb,unetpp,3\n")
    assert update_readme.progress_line(tmp_path, study) == (
        "*Progress: all 12 runs of the study's grid (2 datasets × 2 variants × 3 seeds) are in the tables below.*\n"
    )
    assert "0 of the study's 12 runs" in update_readme.progress_line(tmp_path / "missing", study)


def test_the_training_time_line_sums_train_seconds_by_device_and_names_issue_14_s_share(tmp_path):
    import json

    update_readme = _update_readme()
    assert update_readme.training_time_line(tmp_path) == "*Training time: no runs yet.*\n"
    runs = {("a", "unet", 0, "cpu", 5400), ("a", "fcn", 0, "cpu", 1800), ("b", "unet", 1, "cuda:0 (GPU)", 900)}
    for dataset, model, seed, device, seconds in runs:
        run = tmp_path / dataset / model / f"seed{seed}"
        run.mkdir(parents=True)
        metrics = {"dataset": dataset, "model": model, "seed": seed, "device": device, "train_seconds": seconds}
        (run / "metrics.json").write_text(json.dumps(metrics))
    assert update_readme.training_time_line(tmp_path) == (
        "*Training time (the sum of the runs' `train_seconds`, which the budget counts): 2.0 core-hours for 2 runs "
        "on the CPU, one thread each (0.5 of them for `fcn` and `multiresunet`, issue 14's rows); 0.25 hours for 1 "
        "run on a GPU.*\n"
    )


def test_the_training_time_line_names_a_malformed_metrics_file(tmp_path):
    update_readme = _update_readme()
    run = tmp_path / "a" / "unet" / "seed0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text('{"model": "unet", "device": "cpu"}')
    with pytest.raises(ValueError, match=r"seed0/metrics\.json: missing or malformed field 'train_seconds'"):
        update_readme.training_time_line(tmp_path)
    (run / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"seed0/metrics\.json: not valid JSON"):
        update_readme.training_time_line(tmp_path)
