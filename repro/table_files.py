"""Tables as files: the one writer of the study's tables, as CSV at full precision, a Markdown pipe table and, where
asked, a LaTeX table.

``repro.analysis.tables`` writes the aggregate's tables through it, ``repro.complexity`` the complexity and pruning
tables. It imports pandas and numpy and nothing of the project: ``repro.complexity`` is code of the training stage,
which may not import ``repro.analysis``, and the analysis never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd


def cell_text(value: object, float_digits: int) -> str:
    """Text of one table cell: floats at fixed decimals, missing values empty."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float | np.floating):
        return f"{value:.{float_digits}f}"
    return str(value)


def markdown_table(df: pd.DataFrame, float_digits: int = 4, align: bool = True) -> str:
    """Render a DataFrame as a GitHub-flavoured Markdown pipe table.

    ``DataFrame.to_markdown`` would need ``tabulate``, which is not a project dependency.

    Args:
        df: the table (its index is not written).
        float_digits: decimals for float cells.
        align: right-align numeric columns and left-align the others (``---:``, ``:---``); False: a plain ``---``
            rule under every column, as the complexity tables have it.

    Returns:
        The Markdown text.
    """

    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    if align:
        alignments = ["---:" if pd.api.types.is_numeric_dtype(dtype) else ":---" for dtype in df.dtypes]
        rule = row(alignments)
    else:
        rule = "|" + "|".join("---" for _ in df.columns) + "|"
    lines = [row([str(column) for column in df.columns]), rule]
    lines += [row([cell_text(value, float_digits) for value in values]) for values in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_table(
    table: pd.DataFrame,
    csv_path: str | Path,
    markdown_path: str | Path,
    latex_path: str | Path | None = None,
    display: pd.DataFrame | None = None,
    float_digits: int = 4,
    align: bool = True,
) -> list[Path]:
    """Write a table as CSV, as Markdown and, given ``latex_path``, as LaTeX, creating parent folders.

    Args:
        table: the table; the CSV keeps it at full precision.
        csv_path: where the CSV goes.
        markdown_path: where the Markdown table goes.
        latex_path: where the LaTeX table goes; None: no LaTeX file.
        display: a formatted version (e.g. from ``repro.analysis.tables.format_results_table``) for the Markdown
            and LaTeX files; default ``table`` itself.
        float_digits: decimals of float cells in the Markdown and LaTeX files.
        align: the Markdown table's rule (:func:`markdown_table`).

    Returns:
        The paths written: CSV, Markdown, then LaTeX if asked.
    """
    paths = [Path(path) for path in (csv_path, markdown_path, latex_path) if path is not None]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    shown = table if display is None else display
    table.to_csv(paths[0], index=False)
    paths[1].write_text(markdown_table(shown, float_digits, align))
    if latex_path is not None:
        column_format = "".join("r" if pd.api.types.is_numeric_dtype(dtype) else "l" for dtype in shown.dtypes)
        cells = shown.map(lambda value: cell_text(value, float_digits))
        latex = cells.to_latex(index=False, escape=True, column_format=column_format)
        # In LaTeX's default text font "<" prints as an inverted exclamation mark; pandas does not escape it.
        paths[2].write_text(latex.replace("<", r"\textless{}"))
    return paths
