"""Copy the generated tables, a line on how much of the grid they cover and how long its runs trained, the
verdicts with their effects, the meaning of each verdict label and the reproduction log (results/reproduction.csv)
into README.md and the docs/ pages between their
markers (``<!-- name:start -->`` ... ``<!-- name:end -->``), so the pages never drift from `results/` and
`repro/analysis/verdicts.py` (tests/test_readme.py checks that they have not). ``PAGES`` says which page holds which
blocks. They get the tables of the current study, `results/<scale>/tables/` at params.yaml's scale, or one line saying
that it has not been run at this version yet; results/v1/README.md gets the archived first version's tables from
`results/v1/tables/`.

    python scripts/update_readme.py
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from repro.analysis import verdicts  # noqa: E402 - the repository root must be importable first
from repro.analysis.run_results import naming_the_metrics_file  # noqa: E402
from repro.analysis.tables import claimed_text, comparison_names, effect_text, markdown_table  # noqa: E402
from repro.runner.grid import (  # noqa: E402
    DOMAIN_SEPARATOR,
    NNUNET_STAGE,
    UNIVERSAL_STAGE,
    Grid,
    record_paths,
    run_of_record,
)

# Marker name -> the table's file in a study's tables/ folder; the archived first version has the first two only.
TABLES = {"results-table": "results.md", "claims-table": "claim_verdicts.md"}
STUDY_TABLES = TABLES | {"pruning-table": "pruning.md"}
# Tables of the secondary analyses, copied only into a README that has their markers: each decisive verdict's
# leave-one-seed-out stability, C6's labels at other margins, and the UNet++ paper's DSB2018 row in its own metric with
# how far that metric reads from the study's and the answer it gives (unetpp_paper_reading.md, prose). (The
# claims-table block, claim_verdicts.md, already marks a fragile verdict "(fragile: k/n)" and gives each comparison's
# own label.)
OPTIONAL_TABLES = {
    "stability-table": "claim_stability.md",
    "c6-margins-table": "c6_margins.md",
    "unetpp-paper-table": "unetpp_paper_dsb2018.md",
    "unetpp-paper-bridge": "unetpp_paper_metric_bridge.md",
    "unetpp-paper-reading": "unetpp_paper_reading.md",
}
ARCHIVE = ROOT / "results" / "v1"
# Each page (relative to the repository root) -> the generated blocks it holds, each exactly once. A block may sit on
# several pages (the labels are on two); results/v1/README.md is rendered by :func:`render_archive`.
PAGES = {
    "README.md": (
        "progress",
        "claims-table",
        "verdict-labels",
        "effects-table",
        "unetpp-paper-reading",
        "reproduction-summary",
    ),
    "docs/results.md": ("results-table", "pruning-table"),
    "docs/running.md": ("reproduction-runs",),
    "docs/claims-and-statistics.md": (
        "verdict-labels",
        "stability-summary",
        "stability-table",
        "c6-margins-table",
        "unetpp-paper-table",
        "unetpp-paper-bridge",
        "unetpp-paper-reading",
    ),
}
# The reproduction log (repro.runner.equivalence: `reproduce` and `retrained` append to it), summarised in README and
# listed run by run in docs/running.md; both read its test Dice rows, one per re-trained run.
REPRODUCTION_LOG = ROOT / "results" / "reproduction.csv"
REPRODUCTION_BLOCKS = ("reproduction-summary", "reproduction-runs")
# Variants whose training counts to the budget of the claims added with them (C10-C14: the volumetric networks, FCN
# and MultiResUNet), not to the 2D claims' (docs/recipe.md, "What the CPU budget covers").
OWN_BUDGET_VARIANTS = ("fcn", "multiresunet")


def block_pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- {name}:start -->\n)(.*?)(<!-- {name}:end -->)", re.DOTALL)


def shown_path(path: Path) -> Path:
    """``path`` as a page names it: relative to the repository where it lies inside it."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def label_lines() -> str:
    """One line per verdict label: what it means."""
    return "".join(f"- `{label}`: {meaning}.\n" for label, meaning in verdicts.MEANINGS.items())


def params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def current_tables() -> Path:
    """`results/<scale>/tables` at params.yaml's scale: where the aggregate stage writes the current study's."""
    return ROOT / "results" / str(params()["scale"]) / "tables"


# What the progress line calls each block of the grid (repro.runner.grid.GRID_STAGES).
BLOCK_NAMES = {
    "train": "the image study",
    "train_extra": "its extra rows",
    "train_ablations": "its ablations",
    "train_controls": "its controls",
    "train_volumes": "the volumetric rows",
    NNUNET_STAGE: "nnU-Net",
    "train_independent": "the independent models",
    UNIVERSAL_STAGE: "the universal models",
}


def progress_line(results_dir: Path, grid: Grid) -> str:
    """How much of the study's grid (``grid``: every block params.yaml lists, the runner's) the tables of
    ``results_dir`` (``results/<scale>``) cover: the runs whose records (``runs/.../metrics.json``, a universal run's
    one under each domain) are there, the tables' input, in all and per block."""

    def block_text(stage: str, datasets: tuple, models: tuple) -> str:
        n_data = f"{len(datasets)} dataset{'s' if len(datasets) != 1 else ''}"
        if stage == UNIVERSAL_STAGE:
            n_data = f"{len(grid.universal_domains)} domains together"
        seeds = grid.seeds_of(stage)
        return (
            f"{n_data} × {len(models)} variant{'s' if len(models) != 1 else ''} × {len(seeds)} "
            f"seed{'s' if len(seeds) != 1 else ''}"
        )

    runs = grid.runs()
    planned = Counter(stage for stage, *_ in runs)
    done = Counter(
        stage
        for stage, dataset, model, seed in runs
        if all(path.is_file() for path in record_paths(results_dir, dataset, model, seed))
    )
    if done == planned:
        blocks = "; ".join(f"{BLOCK_NAMES[stage]}: {block_text(stage, *rest)}" for stage, *rest in grid.blocks)
        return f"*Progress: all {len(runs)} runs of the study's grid are in the tables below ({blocks}).*\n"
    blocks = ", ".join(
        f"{BLOCK_NAMES[stage]} {done[stage]} of {planned[stage]} ({block_text(stage, *rest)})"
        for stage, *rest in grid.blocks
    )
    return f"*Progress: {sum(done.values())} of the study's {len(runs)} runs are in the tables below: {blocks}.*\n"


def training_time_line(runs_dir: Path, grid: Grid | None = None) -> str:
    """The training time of the runs under ``runs_dir`` (``<dataset>/<model>/seed<k>/metrics.json``), the figure
    the study's budget counts: the sum of their ``train_seconds`` (the optimizer steps), in core-hours for the CPU
    runs (one thread per run) with the share of ``OWN_BUDGET_VARIANTS`` (FCN and MultiResUNet, which count to the
    budget of C10-C14), and in hours for runs on a GPU. Given the study's ``grid``, and where its CPU runs lie in more
    than one of its blocks, the line splits their core-hours by block (the blocks added later were budgeted apart from
    the image study), so that no page repeats a block's figure by hand. A universal model's run is one training
    recorded under each of its domains, each record with the whole run's time: its records (the same ``domains``,
    model and seed) count once, as one run with that time, and the line says so where there is one. A
    ``metrics.json`` that is not JSON or lacks a field raises ``ValueError`` naming it."""
    runs: dict[tuple, tuple[float, str, str]] = {}  # one entry per run: its hours, device and model
    universal: set[tuple] = set()
    for path in sorted(runs_dir.glob("*/*/seed*/metrics.json")):
        with naming_the_metrics_file(path):
            metrics = json.loads(path.read_text())
            hours, device, model = float(metrics["train_seconds"]) / 3600, str(metrics["device"]), metrics["model"]
        key = run_of_record(path, metrics)
        runs.setdefault(key, (hours, device, model))
        if DOMAIN_SEPARATOR in key[0]:
            universal.add(key)
    if not runs:
        return "*Training time: no runs yet.*\n"
    cpu = [key for key, (_, device, _) in runs.items() if device.startswith("cpu")]
    gpu = [key for key, (_, device, _) in runs.items() if not device.startswith("cpu")]
    own_budget = [key for key in cpu if runs[key][2] in OWN_BUDGET_VARIANTS]

    def total(keys: list[tuple]) -> float:
        return sum(runs[key][0] for key in keys)

    def counted(keys: list[tuple], where: str) -> str:
        text = f"{len(keys)} run{'s' if len(keys) != 1 else ''} {where}"
        if universal.intersection(keys):
            text += " (a universal model's run, recorded under each of its domains, counts once)"
        return text

    names = " and ".join(f"`{name}`" for name in OWN_BUDGET_VARIANTS)
    parts = [
        f"{total(cpu):.1f} core-hours for {counted(cpu, 'on the CPU')}, one thread each ({total(own_budget):.1f} of "
        f"them for {names}, which count to the budget of C10-C14)"
    ]
    if gpu:
        parts.append(f"{total(gpu):.2f} hours for {counted(gpu, 'on a GPU')}")
    by_block = cpu_hours_by_block(cpu, grid) if grid is not None else {}
    if len(by_block) > 1:
        parts.append(
            "on the CPU by block: "
            + ", ".join(
                f"{name} {total(keys):.1f} ({len(keys)} run{'s' if len(keys) != 1 else ''})"
                for name, keys in by_block.items()
            )
        )
    return f"*Training time (the sum of the runs' `train_seconds`, which the budget counts): {'; '.join(parts)}.*\n"


def cpu_hours_by_block(cpu_runs: list[tuple], grid: Grid) -> dict[str, list[tuple]]:
    """``cpu_runs`` (keys of :func:`repro.runner.grid.run_of_record`) grouped by the block of ``grid`` they belong
    to, named as the progress line names it, in the grid's order; a run that no block lists (a variant since dropped
    from params.yaml) under "outside the grid", last."""
    block_of = {(dataset, model, f"seed{seed}"): stage for stage, dataset, model, seed in grid.runs()}
    groups: dict[str, list[tuple]] = {BLOCK_NAMES[stage]: [] for stage, *_ in grid.blocks}
    groups["outside the grid"] = []
    for key in cpu_runs:
        stage = block_of.get(key)
        groups[BLOCK_NAMES[stage] if stage else "outside the grid"].append(key)
    return {name: keys for name, keys in groups.items() if keys}


def effects_table(tables: Path) -> str:
    """The verdicts with their effects, from ``claims.csv`` in ``tables``: one row per comparison that ran on some
    dataset, one column per dataset with the mean paired difference (better - baseline, in the claim's metric), its
    interval (the family's, at alpha/m; for an equivalence claim the TOST's own 1 - 2 alpha one, from which "not
    equivalent" is read) and the comparison's label, beside what is claimed (the paper's difference, or "> 0" where
    it gives none; the margin for equivalence and non-inferiority); then one line naming the claims not run
    anywhere. While the folder or the file does not exist, one line saying so."""
    missing = missing_table_line(tables, "claims.csv")
    if missing:
        return missing
    claims = pd.read_csv(tables / "claims.csv")
    claims["comparison"] = comparison_names(claims)
    ran = claims[claims["verdict"] != "not run"]
    datasets = list(dict.fromkeys(ran["dataset"]))
    margin = float(params()["aggregate"]["tost_margin"])
    rows = []
    for (claim, comparison), group in ran.groupby(["claim_id", "comparison"], sort=False):
        first = group.iloc[0]
        # A comparison without a difference yet (fewer than two matched seeds) shows its label alone.
        cells = {
            row["dataset"]: ": ".join(part for part in (effect_text(row), row["verdict"]) if part)
            for _, row in group.iterrows()
        }
        claimed = claimed_text(first, margin)
        rows.append(
            {"claim": claim, "comparison": comparison, "metric": first["metric"], "claimed": claimed}
            | {dataset: cells.get(dataset, "") for dataset in datasets}
        )
    table = markdown_table(pd.DataFrame(rows, columns=["claim", "comparison", "metric", "claimed", *datasets]))
    not_run = [
        claim for claim, group in claims.groupby("claim_id", sort=False) if (group["verdict"] == "not run").all()
    ]
    if not_run:
        table += f"\n*Not run (a variant without runs): {', '.join(not_run)}.*\n"
    return table


def _reproduced(log: Path) -> pd.DataFrame | None:
    """The log's test Dice rows (one per re-trained run), or None while it has none."""
    if not log.is_file():
        return None
    rows = pd.read_csv(log)
    rows = rows[rows["metric"] == "test dice"]
    return rows if len(rows) else None


def _no_rows_line(log: Path) -> str:
    return f"*No run re-trained yet: `{shown_path(log)}` has no test Dice row.*\n"


def _bit_for_bit(value: object) -> bool:
    return str(value) == "True"


def reproduction_summary(log: Path = REPRODUCTION_LOG) -> str:
    """The reproduction log in brief: per pair of machines (the one a committed run names, the one that re-trained
    it), how many runs were re-trained, how many repeated bit for bit, and how far test Dice moved, in units of the
    cell's seed-to-seed s.d. (median and largest absolute drift, and how many stayed within one s.d.)."""
    rows = _reproduced(log)
    if rows is None:
        return _no_rows_line(log)
    lines = []
    for (trained, again), group in rows.groupby(["committed_machine", "machine"], sort=False):
        drift = group["drift_in_sd"].abs()
        lines.append(
            {
                "trained on": trained,
                "re-trained on": again,
                "runs": len(group),
                "bit for bit": f"{sum(_bit_for_bit(v) for v in group['bit_identical'])} of {len(group)}",
                "test Dice drift, median (cell s.d.)": f"{drift.median():.2f}",
                "largest": f"{drift.max():.2f}",
                "within 1 s.d.": f"{int((drift <= 1).sum())} of {len(group)}",
            }
        )
    return markdown_table(pd.DataFrame(lines))


def reproduction_runs(log: Path = REPRODUCTION_LOG) -> str:
    """The reproduction log run by run: test Dice as committed and re-trained, the drift (also in the cell's s.d.),
    the best epochs, whether every number repeated bit for bit, and both machines."""
    rows = _reproduced(log)
    if rows is None:
        return _no_rows_line(log)
    shown = pd.DataFrame(
        {
            "run": [run.replace("/", " / ").replace("seed", "seed ") for run in rows["run"]],
            "test Dice committed": [f"{v:.4f}" for v in rows["committed"]],
            "re-trained": [f"{v:.4f}" for v in rows["reproduced"]],
            "drift": [f"{v:+.4f}" if v else "0" for v in rows["drift"]],
            "in cell s.d.": [f"{v:+.2f}" if v else "0" for v in rows["drift_in_sd"]],
            "best epoch": rows["best_epoch"],
            "bit for bit": ["yes" if _bit_for_bit(v) else "no" for v in rows["bit_identical"]],
            "trained on": rows["committed_machine"],
            "re-trained on": rows["machine"],
            "date": rows["date"],
        }
    )
    return markdown_table(shown)


def stability_summary(tables: Path) -> str:
    """One sentence on the leave-one-seed-out check (``tables``/claim_stability.csv): how many decisive cells there
    are, how many are fragile, and which, per dataset, with the share of cases that keep each label."""
    missing = missing_table_line(tables, "claim_stability.csv")
    if missing:
        return missing
    cells = pd.read_csv(tables / "claim_stability.csv")
    fragile = cells[cells["fragile"].astype(bool)]
    sentence = f"{len(fragile)} of the {len(cells)} decisive cells are fragile"
    if fragile.empty:
        return sentence + ".\n"
    per_dataset = [
        f"on {dataset} "
        + ", ".join(f'{row.claim_id} "{row.verdict}" ({row.loo_kept}/{row.loo_cases})' for row in group.itertuples())
        for dataset, group in fragile.groupby("dataset", sort=False)
    ]
    return f"{sentence}: " + "; ".join(per_dataset) + ".\n"


def table_blocks(tables: Path, names: dict[str, str]) -> dict[str, str]:
    """Marker name -> its table (``names``: marker -> file) from the folder ``tables``; while the folder does not
    exist (the grid has not been run with this version of the training code), one line that says so, in every
    table's place."""
    if not tables.is_dir():
        return dict.fromkeys(names, _not_run_line(tables))
    return {name: (tables / source).read_text() for name, source in names.items()}


def _not_run_line(tables: Path) -> str:
    return (
        f"*Not yet run at this version of the training code: `{shown_path(tables)}/` does not exist yet (`make study` "
        "trains the grid and writes it).*\n"
    )


def missing_table_line(tables: Path, source: str) -> str | None:
    """The line a generated block holds in place of what it would read from ``tables``/``source`` while the folder
    (the grid not run at this version) or the file (an aggregate from before the table existed) is missing; None
    while the file is there."""
    if not tables.is_dir():
        return _not_run_line(tables)
    if not (tables / source).is_file():
        where = f"{shown_path(tables)}/{source}"
        return f"*Not yet written: `{where}` comes from the aggregate stage (`dvc repro aggregate`).*\n"
    return None


def optional_blocks(readme: str, tables: Path) -> dict[str, str]:
    """The ``OPTIONAL_TABLES`` blocks ``readme`` has markers for, as :func:`table_blocks` gives them; a table the
    folder lacks (a study aggregated before the table existed) is one line saying where it will come from."""
    names = {name: source for name, source in OPTIONAL_TABLES.items() if block_pattern(name).search(readme)}
    return {name: missing_table_line(tables, source) or (tables / source).read_text() for name, source in names.items()}


def substitute(text: str, blocks: dict[str, str]) -> str:
    """``text`` with each marker block's content replaced; a block that is missing or repeated is an error."""
    for name, content in blocks.items():
        text, count = block_pattern(name).subn(lambda m, c=content: m.group(1) + c + m.group(3), text)
        if count != 1:
            raise SystemExit(f"needs exactly one <!-- {name}:start --> ... <!-- {name}:end --> block")
    return text


def has_block(text: str, name: str) -> bool:
    return bool(block_pattern(name).search(text))


def render(text: str, tables: Path | None = None, required: tuple[str, ...] = ()) -> str:
    """``text`` (README.md or a docs/ page) with every generated block it has markers for filled from the current
    study's tables (``tables``; default :func:`current_tables`) and the labels; a block in ``required`` that the
    text lacks, or any block it has twice, is an error."""
    tables = tables or current_tables()
    names = {name for name in (*STUDY_TABLES, "progress", "effects-table", "verdict-labels") if has_block(text, name)}
    names |= set(required) - set(OPTIONAL_TABLES)
    blocks = table_blocks(tables, {name: STUDY_TABLES[name] for name in STUDY_TABLES if name in names})
    blocks |= optional_blocks(text, tables)
    if "progress" in names:
        grid = Grid.from_params(params())
        blocks["progress"] = (
            progress_line(tables.parent, grid) + "\n" + training_time_line(tables.parent / "runs", grid)
        )
    if "effects-table" in names:
        blocks["effects-table"] = effects_table(tables)
    if "verdict-labels" in names:
        blocks["verdict-labels"] = label_lines()
    if has_block(text, "stability-summary") or "stability-summary" in required:
        blocks["stability-summary"] = stability_summary(tables)
    for name, block in zip(REPRODUCTION_BLOCKS, (reproduction_summary, reproduction_runs), strict=True):
        if has_block(text, name) or name in required:
            blocks[name] = block()
    missing = [name for name in required if name in OPTIONAL_TABLES and name not in blocks]
    if missing:
        raise SystemExit(f"needs exactly one <!-- {missing[0]}:start --> ... <!-- {missing[0]}:end --> block")
    return substitute(text, blocks)


def render_page(page: str, text: str, tables: Path | None = None) -> str:
    """``text``, the page ``page`` of :data:`PAGES`, with its generated blocks, every one it must hold included."""
    return render(text, tables, required=PAGES[page])


def render_archive(readme: str) -> str:
    """results/v1/README.md with the archived first version's tables."""
    return substitute(readme, table_blocks(ARCHIVE / "tables", TABLES))


if __name__ == "__main__":
    for page in PAGES:
        path = ROOT / page
        path.write_text(render_page(page, path.read_text()))
    (ARCHIVE / "README.md").write_text(render_archive((ARCHIVE / "README.md").read_text()))
