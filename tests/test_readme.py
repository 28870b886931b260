"""README.md: its two commands exist; README.md and the docs/ pages hold the generated blocks scripts/update_readme.py
says they hold (PAGES), and each is the generated one (the current study's tables, or a line saying it has not been
run at this version yet); results/v1/README.md holds the archived study's."""

import importlib.util
import re
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
V1_README = (ROOT / "results" / "v1" / "README.md").read_text()


def _update_readme():
    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "scripts" / "update_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _from_aggregate_files(update_readme) -> set[str]:
    """The blocks built from one file of results/<scale>/tables/ that a study aggregated before the file existed may
    lack (each is then one line saying where it will come from)."""
    return {*update_readme.OPTIONAL_TABLES, "effects-table", "stability-summary"}


def _from_tables(update_readme) -> set[str]:
    """Every block built from results/<scale>/tables/: the study's tables and those above."""
    return {*update_readme.STUDY_TABLES, *_from_aggregate_files(update_readme)}


def _pages() -> dict[str, str]:
    """Each page of update_readme's PAGES -> its text."""
    return {page: (ROOT / page).read_text() for page in _update_readme().PAGES}


def test_every_page_holds_its_generated_blocks_once_and_they_match_the_generated_ones():
    update_readme = _update_readme()
    for page, text in _pages().items():
        for name in update_readme.PAGES[page]:
            assert text.count(f"<!-- {name}:start -->") == 1 and text.count(f"<!-- {name}:end -->") == 1, (page, name)
        assert update_readme.render_page(page, text) == text, f"{page}: run `python scripts/update_readme.py`"
    assert update_readme.render_archive(V1_README) == V1_README, "run `python scripts/update_readme.py`"


def test_every_generated_table_has_a_page_and_a_page_lacking_a_block_it_must_hold_is_an_error():
    update_readme = _update_readme()
    placed = {name for names in update_readme.PAGES.values() for name in names}
    assert {*update_readme.STUDY_TABLES, *update_readme.OPTIONAL_TABLES, "progress", "effects-table"} <= placed
    assert "verdict-labels" in update_readme.PAGES["README.md"]
    for name in ("claims-table", "verdict-labels"):  # a page that lost a block's markers
        without = re.sub(rf"<!-- {name}:start -->\n.*?<!-- {name}:end -->", "", README, flags=re.DOTALL)
        with pytest.raises(SystemExit, match=name):
            update_readme.render_page("README.md", without)
    stats = (ROOT / "docs" / "claims-and-statistics.md").read_text()
    without = re.sub(r"<!-- stability-table:start -->\n.*?<!-- stability-table:end -->", "", stats, flags=re.DOTALL)
    with pytest.raises(SystemExit, match="stability-table"):
        update_readme.render_page("docs/claims-and-statistics.md", without)


def _block(text: str, name: str) -> str:
    return re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", text, re.DOTALL).group(1)


def test_a_study_not_run_at_this_version_is_one_line_in_place_of_its_tables(tmp_path):
    """Without results/<scale>/tables/ (the grid not re-run yet), each table's block says so in one line, on
    whichever page it lies; with the folder, the blocks hold its tables, and a table it lacks is one line saying
    where it will come from."""
    update_readme = _update_readme()
    missing = tmp_path / "results" / "cpu" / "tables"
    tables = _from_tables(update_readme)
    for page, text in _pages().items():
        rendered = update_readme.render_page(page, text, tables=missing)
        for name in tables & set(update_readme.PAGES[page]):
            (line,) = _block(rendered, name).splitlines()
            assert line.startswith("*Not yet run at this version of the training code: ") and f"`{missing}/`" in line
    written = tmp_path / "tables"
    written.mkdir()
    for name, source in update_readme.STUDY_TABLES.items():
        (written / source).write_text(f"| the {name} |\n")
    for page, text in _pages().items():
        rendered = update_readme.render_page(page, text, tables=written)
        for name in update_readme.PAGES[page]:
            if name in update_readme.STUDY_TABLES:
                assert _block(rendered, name) == (written / update_readme.STUDY_TABLES[name]).read_text()
            elif name in _from_aggregate_files(update_readme):
                (line,) = _block(rendered, name).splitlines()
                assert line.startswith("*Not yet written: ") and "(`dvc repro aggregate`)" in line


def _claims_rows() -> pd.DataFrame:
    """A claims.csv of three claims: a superiority claim with a claimed difference on two datasets, an equivalence
    claim of two comparisons (one scored at a pruned depth), and a claim not run anywhere."""
    columns = ["claim_id", "dataset", "better", "baseline", "better_level", "baseline_level", "metric",
               "claimed_difference", "kind", "mean_diff", "ci_adj_low", "ci_adj_high", "tost_ci_low", "tost_ci_high",
               "verdict"]  # fmt: skip
    rows = [
        ("C1", "a", "unetpp", "unet", None, None, "iou", 0.0186, "superiority", -0.0019, -0.0082, 0.0044, None, None,
         "smaller than claimed"),
        ("C1", "b", "unetpp", "unet", None, None, "iou", 0.0186, "superiority", 0.03, 0.01, 0.05, None, None,
         "reproduced"),
        ("C6", "a", "light", "bilinear", None, None, "dice", -0.002, "equivalence", 0.006, -0.0001, 0.0121, 0.0031,
         0.0089, "equivalent"),
        ("C6", "a", "lighter", "bilinear", "L3", None, "dice", None, "equivalence", -0.11, -0.24, 0.01, -0.17, -0.06,
         "not equivalent"),
        ("C4a", "a", "tinyunet", "tinyunet_plain", None, None, "miou_bg", None, "superiority", None, None, None, None,
         None, "not run"),
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def test_the_effects_table_gives_each_comparison_s_difference_interval_and_label_per_dataset(tmp_path):
    update_readme = _update_readme()
    _claims_rows().to_csv(tmp_path / "claims.csv", index=False)
    margin = update_readme.params()["aggregate"]["tost_margin"]
    assert update_readme.effects_table(tmp_path) == (
        "| claim | comparison | metric | claimed | a | b |\n"
        "| :--- | :--- | :--- | :--- | :--- | :--- |\n"
        "| C1 | unetpp - unet | iou | +0.0186 | -0.0019 [-0.0082, +0.0044]: smaller than claimed "
        "| +0.0300 [+0.0100, +0.0500]: reproduced |\n"
        f"| C6 | light - bilinear | dice | within ±{margin:g} (paper: -0.0020) "
        "| +0.0060 [+0.0031, +0.0089]: equivalent |  |\n"
        f"| C6 | lighter@L3 - bilinear | dice | within ±{margin:g} | -0.1100 [-0.1700, -0.0600]: not equivalent |  |\n"
        "\n*Not run (a variant without runs): C4a.*\n"
    )


def test_the_stability_sentence_counts_the_decisive_cells_and_names_each_fragile_one_per_dataset(tmp_path):
    update_readme = _update_readme()
    assert update_readme.stability_summary(tmp_path / "absent").startswith("*Not yet run at this version ")
    assert update_readme.stability_summary(tmp_path).startswith("*Not yet written: ")
    columns = ["claim_id", "dataset", "verdict", "loo_cases", "loo_kept", "fragile"]
    pd.DataFrame(columns=columns).to_csv(tmp_path / "claim_stability.csv", index=False)
    assert update_readme.stability_summary(tmp_path) == "0 of the 0 decisive cells are fragile.\n"
    rows = [
        ("C1", "kvasir-seg", "smaller than claimed", 5, 3, True),
        ("C3", "ph2-dermoscopy", "reproduced", 5, 5, False),
        ("C3", "kvasir-seg", "reversed", 5, 4, True),
        ("C5a", "dsb2018-nuclei-96", "reversed", 5, 2, True),
    ]
    pd.DataFrame(rows, columns=columns).to_csv(tmp_path / "claim_stability.csv", index=False)
    assert update_readme.stability_summary(tmp_path) == (
        '3 of the 4 decisive cells are fragile: on kvasir-seg C1 "smaller than claimed" (3/5), C3 "reversed" (4/5); '
        'on dsb2018-nuclei-96 C5a "reversed" (2/5).\n'
    )


def test_readme_two_commands_are_make_targets_and_ci_runs_the_test_one():
    commands = re.findall(r"^make (\w+)", README, flags=re.MULTILINE)
    assert commands[:2] == ["study", "test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^study:", makefile, re.MULTILINE) and re.search(r"^test:", makefile, re.MULTILINE)
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")


def test_readme_explains_every_verdict_label_in_one_line_and_uses_only_those_labels():
    from repro.analysis import verdicts

    lines = _block(README, "verdict-labels").splitlines()
    assert [line.split("`")[1] for line in lines] == list(verdicts.MEANINGS)
    rows = [[cell.strip() for cell in row.strip("|").split("|")] for row in _block(README, "claims-table").splitlines()]
    verdict = rows[0].index("verdict")
    # A decisive label that dropping one seed can change is marked "(fragile: kept/cases)".
    used = {re.sub(r" \(fragile: \d+/\d+\)$", "", row[verdict]) for row in rows[2:]}
    assert used <= set(verdicts.LABELS), used - set(verdicts.LABELS)
    effects = [line for line in _block(README, "effects-table").splitlines()[2:] if line.startswith("|")]
    used = {label for line in effects for label in re.findall(r"\]: ([^|]+?) \|", line)}
    assert used <= set(verdicts.LABELS), used - set(verdicts.LABELS)


def test_the_generated_tables_name_the_script_that_copies_them():
    update_readme = _update_readme()
    tables = _from_tables(update_readme)
    tables |= set(update_readme.REPRODUCTION_BLOCKS)
    for page, text in [*_pages().items(), ("results/v1/README.md", V1_README)]:
        names = tables & set(update_readme.PAGES.get(page, update_readme.TABLES))
        first = min(text.index(f"<!-- {name}:start -->") for name in names)
        assert "scripts/update_readme.py" in text[max(0, first - 600) : first], page
    assert re.search(r"\| 0\.124 \| 0\.115 \|", V1_README), "parameters in millions at 3 significant figures"


def test_the_progress_line_counts_the_runs_of_every_block_of_the_grid(tmp_path):
    """A run counts when its records are there (a universal run's one under each domain); runs outside the grid
    (another variant, a seed beyond the grid's) do not count; the whole grid is said to be complete."""
    from repro.runner.grid import Grid, record_paths

    update_readme = _update_readme()
    grid = Grid(
        "smoke",
        ("a", "b"),
        ("unet", "unetpp"),
        (0, 1),
        extra_datasets=("a",),
        extra_models=("unet_2018",),
        control_datasets=("b",),
        control_models=("tinyunet_plain",),
        universal_domains=("h", "l"),
        universal_models=("u2net3d_universal",),
    )

    def record(dataset: str, model: str, seed: int) -> None:
        for path in record_paths(tmp_path, dataset, model, seed):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")

    for dataset, model, seed in (("a", "unet", 0), ("a", "unet", 1), ("b", "unetpp", 0), ("a", "fcn", 0)):
        record(dataset, model, seed)
    record("a", "unet", 5)
    record("h", "u2net3d_universal", 0)  # one domain's record of a universal run: not the run
    assert update_readme.progress_line(tmp_path, grid) == (
        "*Progress: 3 of the study's 14 runs are in the tables below: the image study 3 of 8 (2 datasets × 2 "
        "variants × 2 seeds), its extra rows 0 of 2 (1 dataset × 1 variant × 2 seeds), its controls 0 of 2 (1 dataset "
        "× 1 variant × 2 seeds), the universal models 0 of 2 (2 domains together × 1 variant × 2 seeds).*\n"
    )
    for _, dataset, model, seed in grid.runs():
        record(dataset, model, seed)
    assert update_readme.progress_line(tmp_path, grid) == (
        "*Progress: all 14 runs of the study's grid are in the tables below (the image study: 2 datasets × 2 variants "
        "× 2 seeds; its extra rows: 1 dataset × 1 variant × 2 seeds; its controls: 1 dataset × 1 variant × 2 seeds; "
        "the universal models: 2 domains together × 1 variant × 2 seeds).*\n"
    )
    assert "0 of the study's 14 runs" in update_readme.progress_line(tmp_path / "missing", grid)


def test_the_progress_line_names_every_block_of_the_grid():
    """A block the progress line has no name for would end scripts/update_readme.py with a KeyError once it has
    runs."""
    from repro.runner.grid import GRID_STAGES

    assert tuple(_update_readme().BLOCK_NAMES) == GRID_STAGES


def _write_runs(runs_dir: Path, runs: set[tuple[str, str, int, str, float]]) -> None:
    """A ``metrics.json`` under ``runs_dir`` for each (dataset, model, seed, device, train_seconds) in ``runs``."""
    import json

    for dataset, model, seed, device, seconds in runs:
        run = runs_dir / dataset / model / f"seed{seed}"
        run.mkdir(parents=True)
        metrics = {"dataset": dataset, "model": model, "seed": seed, "device": device, "train_seconds": seconds}
        (run / "metrics.json").write_text(json.dumps(metrics))


def test_the_training_time_line_sums_train_seconds_by_device_and_names_fcn_and_multiresunet_s_share(tmp_path):
    update_readme = _update_readme()
    assert update_readme.training_time_line(tmp_path) == "*Training time: no runs yet.*\n"
    runs = {("a", "unet", 0, "cpu", 5400), ("a", "fcn", 0, "cpu", 1800), ("b", "unet", 1, "cuda:0 (GPU)", 900)}
    _write_runs(tmp_path, runs)
    assert update_readme.training_time_line(tmp_path) == (
        "*Training time (the sum of the runs' `train_seconds`, which the budget counts): 2.0 core-hours for 2 runs "
        "on the CPU, one thread each (0.5 of them for `fcn` and `multiresunet`, which count to the budget of C10-C14); "
        "0.25 hours for 1 run on a GPU.*\n"
    )


def test_a_universal_model_s_training_counts_once_across_its_domains_records(tmp_path):
    import json

    update_readme = _update_readme()
    for dataset in ("hippocampus", "atrium"):  # one 2-hour run, recorded under each domain with the whole time
        run = tmp_path / dataset / "u2net3d_universal" / "seed0"
        run.mkdir(parents=True)
        metrics = {"model": "u2net3d_universal", "device": "cpu", "train_seconds": 7200, "domains": ["h", "a"]}
        (run / "metrics.json").write_text(json.dumps(metrics))
    # ... is one run, not one per record, and the line says that it counts once
    assert update_readme.training_time_line(tmp_path).startswith(
        "*Training time (the sum of the runs' `train_seconds`, which the budget counts): 2.0 core-hours for 1 run on "
        "the CPU (a universal model's run, recorded under each of its domains, counts once), one thread each"
    )
    run = tmp_path / "b" / "unet" / "seed0"  # beside a one-dataset run on a GPU, the line says it where it applies
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"model": "unet", "device": "cuda:0", "train_seconds": 900}))
    assert update_readme.training_time_line(tmp_path).endswith("; 0.25 hours for 1 run on a GPU.*\n")


def test_the_training_time_line_splits_the_cpu_core_hours_by_block_of_the_grid(tmp_path):
    """Given the grid, the CPU runs' core-hours per block (GPU runs are not core-hours; a run no block lists is
    "outside the grid"); with one block only, no split."""
    from repro.runner.grid import Grid

    update_readme = _update_readme()
    grid = Grid(
        scale="cpu",
        datasets=("a",),
        models=("unet",),
        seeds=(0, 1),
        control_datasets=("b",),
        control_models=("tinyunet_plain",),
    )
    runs = {("a", "unet", 0, "cpu", 3600), ("a", "unet", 1, "cuda:0", 900), ("b", "tinyunet_plain", 0, "cpu", 1800)}
    _write_runs(tmp_path, runs)
    assert update_readme.training_time_line(tmp_path, grid).endswith(
        "; 0.25 hours for 1 run on a GPU; on the CPU by block: the image study 1.0 (1 run), its controls 0.5 "
        "(1 run).*\n"
    )
    _write_runs(tmp_path, {("a", "dropped", 0, "cpu", 360)})
    assert update_readme.training_time_line(tmp_path, grid).endswith(
        "its controls 0.5 (1 run), outside the grid 0.1 (1 run).*\n"
    )
    (tmp_path / "b" / "tinyunet_plain" / "seed0" / "metrics.json").unlink()
    (tmp_path / "a" / "dropped" / "seed0" / "metrics.json").unlink()
    assert "by block" not in update_readme.training_time_line(tmp_path, grid)


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


def test_the_reproduction_blocks_summarise_the_log_per_pair_of_machines_and_list_it_run_by_run(tmp_path):
    """README's summary groups the log's test Dice rows by (committed machine, re-training machine): runs, bit for
    bit, the median and largest absolute drift in cell s.d. and how many stayed within one; docs/running.md lists each
    run. The IoU rows are not counted again, and an empty log is one line."""
    update_readme = _update_readme()
    log = tmp_path / "reproduction.csv"
    header = "date,run,metric,committed,reproduced,drift,cell_sd,drift_in_sd,best_epoch,bit_identical,"
    header += "committed_machine,machine\n"
    rows = [
        ("d/unet/seed4", "dice", 0.90, 0.91, 0.01, 0.02, 0.5, "False", "cuda:0 (NVIDIA H200)"),
        ("d/unet/seed4", "iou", 0.80, 0.85, 0.05, 0.02, 2.5, "False", "cuda:0 (NVIDIA H200)"),
        ("d/unetpp/seed4", "dice", 0.90, 0.86, -0.04, 0.02, -2.0, "False", "cuda:0 (NVIDIA H200)"),
        ("d/fcn/seed4", "dice", 0.70, 0.72, 0.02, 0.01, 2.0, "False", "cuda:0 (NVIDIA H200)"),
        ("k/unet/seed0", "dice", 0.80, 0.80, 0.0, 0.01, 0.0, "True", "not recorded"),
    ]
    log.write_text(
        header
        + "".join(
            f"2026-12-07,{run},test {metric},{a},{b},{d},{sd},{dsd},30 -> 31,{bit},{trained},Xeon (AVX512)\n"
            for run, metric, a, b, d, sd, dsd, bit, trained in rows
        )
    )
    summary = update_readme.reproduction_summary(log).splitlines()
    assert summary[2] == "| cuda:0 (NVIDIA H200) | Xeon (AVX512) | 3 | 0 of 3 | 2.00 | 2.00 | 1 of 3 |"
    assert summary[3] == "| not recorded | Xeon (AVX512) | 1 | 1 of 1 | 0.00 | 0.00 | 1 of 1 |"
    assert len(summary) == 4
    runs = update_readme.reproduction_runs(log).splitlines()
    assert runs[2] == (
        "| d / unet / seed 4 | 0.9000 | 0.9100 | +0.0100 | +0.50 | 30 -> 31 | no | cuda:0 (NVIDIA H200) "
        "| Xeon (AVX512) | 2026-12-07 |"
    )
    assert runs[5].startswith("| k / unet / seed 0 | 0.8000 | 0.8000 | 0 | 0 | 30 -> 31 | yes |") and len(runs) == 6
    log.write_text(header)
    assert update_readme.reproduction_summary(log).startswith("*No run re-trained yet:")
