"""Copy the generated headline tables, a line on how much of the grid they cover and how long its runs trained,
and the meaning of each verdict label into README.md between their markers, so the README never drifts from
`results/` and `repro/verdicts.py` (tests/test_readme.py checks that it has not). README.md gets the tables of the
current study, `results/<scale>/tables/` at params.yaml's scale, or one line saying that it has not been run at this
version yet; results/v1/README.md gets the archived first version's tables from `results/v1/tables/`.

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

from repro import verdicts  # noqa: E402 - the repository root must be importable first
from repro.run_results import naming_the_metrics_file  # noqa: E402

# Marker name -> the table's file in a study's tables/ folder; the archived first version has the first two only.
TABLES = {"results-table": "results.md", "claims-table": "claim_verdicts.md"}
STUDY_TABLES = TABLES | {"pruning-table": "pruning.md"}
# Tables of the secondary analyses, copied only into a README that has their markers: each decisive verdict's
# leave-one-seed-out stability, and C6's labels at other margins. (The claims-table block, claim_verdicts.md,
# already marks a fragile verdict "(fragile: k/n)" and gives each comparison's own label.)
OPTIONAL_TABLES = {"stability-table": "claim_stability.md", "c6-margins-table": "c6_margins.md"}
ARCHIVE = ROOT / "results" / "v1"
# Variants whose training counts to issue 14's budget, not to issue 13's (README, "What the CPU budget covers").
ISSUE_14_VARIANTS = ("fcn", "multiresunet")


def block_pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- {name}:start -->\n)(.*?)(<!-- {name}:end -->)", re.DOTALL)


def label_lines() -> str:
    """One line per verdict label: what it means."""
    return "".join(f"- `{label}`: {meaning}.\n" for label, meaning in verdicts.MEANINGS.items())


def params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def current_tables() -> Path:
    """`results/<scale>/tables` at params.yaml's scale: where the aggregate stage writes the current study's."""
    return ROOT / "results" / str(params()["scale"]) / "tables"


def progress_line(tables: Path, study: dict) -> str:
    """How much of the study's grid (``study``: params.yaml's ``study``, its datasets x models x seeds) the tables
    in ``tables`` cover: runs committed and the cells (dataset x variant) by their number of seeds. From
    ``results.csv`` (its ``n_seeds`` per cell), so the line always describes the tables beside it."""
    datasets, models, seeds = study["datasets"], study["models"], study["seeds"]
    total = len(datasets) * len(models) * len(seeds)
    grid = f"{len(datasets)} datasets × {len(models)} variants × {len(seeds)} seeds"
    results = tables / "results.csv"
    table = pd.read_csv(results) if results.is_file() else pd.DataFrame(columns=["dataset", "model", "n_seeds"])
    n_seeds = {(row.dataset, row.model): min(int(row.n_seeds), len(seeds)) for row in table.itertuples()}
    per_cell = Counter(n_seeds.get((dataset, model), 0) for dataset in datasets for model in models)
    runs = sum(k * count for k, count in per_cell.items())
    if runs == total:
        return f"*Progress: all {total} runs of the study's grid ({grid}) are in the tables below.*\n"
    cells = ", ".join(
        f"{count} with {k} seed{'s' if k != 1 else ''}" if k else f"{count} with none"
        for k, count in sorted(per_cell.items(), reverse=True)
    )
    return (
        f"*Progress: {runs} of the study's {total} runs ({grid}) are in the tables below; of its "
        f"{len(datasets) * len(models)} cells (dataset × variant), {cells}.*\n"
    )


def training_time_line(runs_dir: Path) -> str:
    """The training time of the runs under ``runs_dir`` (``<dataset>/<model>/seed<k>/metrics.json``), the figure
    the study's budget counts: the sum of their ``train_seconds`` (the optimizer steps), in core-hours for the CPU
    runs (one thread per run) with issue 14's variants' share, and in hours for runs on a GPU. A ``metrics.json``
    that is not JSON or lacks a field raises ``ValueError`` naming it."""
    cpu, issue_14, gpu = [], [], []
    for path in sorted(runs_dir.glob("*/*/seed*/metrics.json")):
        with naming_the_metrics_file(path):
            metrics = json.loads(path.read_text())
            hours, device, model = float(metrics["train_seconds"]) / 3600, str(metrics["device"]), metrics["model"]
        if device.startswith("cpu"):
            cpu.append(hours)
            if model in ISSUE_14_VARIANTS:
                issue_14.append(hours)
        else:
            gpu.append(hours)
    if not cpu and not gpu:
        return "*Training time: no runs yet.*\n"

    def runs(count: int) -> str:
        return f"{count} run{'s' if count != 1 else ''}"

    names = " and ".join(f"`{name}`" for name in ISSUE_14_VARIANTS)
    parts = [
        f"{sum(cpu):.1f} core-hours for {runs(len(cpu))} on the CPU, one thread each ({sum(issue_14):.1f} of them "
        f"for {names}, issue 14's rows)"
    ]
    if gpu:
        parts.append(f"{sum(gpu):.2f} hours for {runs(len(gpu))} on a GPU")
    return f"*Training time (the sum of the runs' `train_seconds`, which the budget counts): {'; '.join(parts)}.*\n"


def table_blocks(tables: Path, names: dict[str, str]) -> dict[str, str]:
    """Marker name -> its table (``names``: marker -> file) from the folder ``tables``; while the folder does not
    exist (the grid has not been run with this version of the training code), one line that says so, in every
    table's place."""
    if not tables.is_dir():
        where = tables.relative_to(ROOT) if tables.is_relative_to(ROOT) else tables
        line = (
            f"*Not yet run at this version of the training code: `{where}/` does not exist yet (`make study` "
            "trains the grid and writes it).*\n"
        )
        return dict.fromkeys(names, line)
    return {name: (tables / source).read_text() for name, source in names.items()}


def optional_blocks(readme: str, tables: Path) -> dict[str, str]:
    """The ``OPTIONAL_TABLES`` blocks ``readme`` has markers for, as :func:`table_blocks` gives them; a table the
    folder lacks (a study aggregated before the table existed) is one line saying where it will come from."""
    names = {name: source for name, source in OPTIONAL_TABLES.items() if block_pattern(name).search(readme)}
    if not tables.is_dir():
        return table_blocks(tables, names)
    where = tables.relative_to(ROOT) if tables.is_relative_to(ROOT) else tables
    return {
        name: (tables / source).read_text()
        if (tables / source).is_file()
        else f"*Not yet written: `{where}/{source}` comes from the aggregate stage (`dvc repro aggregate`).*\n"
        for name, source in names.items()
    }


def substitute(text: str, blocks: dict[str, str]) -> str:
    """``text`` with each marker block's content replaced; a block that is missing or repeated is an error."""
    for name, content in blocks.items():
        text, count = block_pattern(name).subn(lambda m, c=content: m.group(1) + c + m.group(3), text)
        if count != 1:
            raise SystemExit(f"needs exactly one <!-- {name}:start --> ... <!-- {name}:end --> block")
    return text


def render(readme: str, tables: Path | None = None) -> str:
    """README.md with the current study's tables (from ``tables``; default :func:`current_tables`) and the labels."""
    tables = tables or current_tables()
    progress = progress_line(tables, params()["study"]) + "\n" + training_time_line(tables.parent / "runs")
    blocks = table_blocks(tables, STUDY_TABLES) | optional_blocks(readme, tables) | {"progress": progress}
    return substitute(readme, blocks | {"verdict-labels": label_lines()})


def render_archive(readme: str) -> str:
    """results/v1/README.md with the archived first version's tables."""
    return substitute(readme, table_blocks(ARCHIVE / "tables", TABLES))


if __name__ == "__main__":
    for path, rendered in ((ROOT / "README.md", render), (ARCHIVE / "README.md", render_archive)):
        path.write_text(rendered(path.read_text()))
