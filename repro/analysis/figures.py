"""Figures of the study: seed-level scores, the claims' forest plot, and score against model size."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text

from repro.analysis import verdicts
from repro.analysis.tables import comparison_names

_PALETTE = sns.color_palette("colorblind")
# One colour per label that can have a difference to plot ("not run" has none).
LABEL_COLORS = {
    verdicts.REPRODUCED: _PALETTE[2],
    verdicts.REPRODUCED_SMALLER: _PALETTE[9],
    verdicts.REVERSED: _PALETTE[3],
    verdicts.SMALLER: _PALETTE[4],
    verdicts.UNDERPOWERED: _PALETTE[7],
    verdicts.INCONCLUSIVE: "0.2",
    verdicts.EQUIVALENT: _PALETTE[0],
    verdicts.NOT_EQUIVALENT: _PALETTE[5],
    verdicts.NON_INFERIOR: _PALETTE[8],
    verdicts.INFERIOR: _PALETTE[1],
}


def plot_seed_scores(runs_df: pd.DataFrame, metric: str = "dice") -> Figure:
    """Seed-level scores of every variant, one panel per dataset: seeds as dots, mean ± s.d. as diamonds.

    Args:
        runs_df: ``RunResults.per_seed``.
        metric: the score column.

    Returns:
        The figure.
    """
    datasets = sorted(runs_df["dataset"].unique())
    models = sorted(runs_df["model"].unique())
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(
            1, len(datasets), figsize=(4.5 * len(datasets), 1.2 + 0.35 * len(models)), sharey=True, squeeze=False
        )
        for ax, dataset in zip(axes[0], datasets, strict=True):
            on_dataset = runs_df[runs_df["dataset"] == dataset]
            # seaborn draws the jitter from NumPy's global generator: seed it (and restore it) so the figure
            # is the same bytes on every run and DVC sees an unchanged output.
            state = np.random.get_state()  # noqa: NPY002
            np.random.seed(0)  # noqa: NPY002 - seaborn offers no generator argument
            try:
                sns.stripplot(data=on_dataset, x=metric, y="model", order=models, color="0.45", size=4, ax=ax)
            finally:
                np.random.set_state(state)  # noqa: NPY002
            sns.pointplot(
                data=on_dataset,
                x=metric,
                y="model",
                order=models,
                errorbar="sd",
                linestyle="none",
                marker="D",
                color="C3",
                ax=ax,
            )
            ax.set_title(dataset)
            ax.set_xlabel(f"test {metric} (seeds; mean ± s.d.)")
            ax.locator_params(axis="x", nbins=5)
        fig.tight_layout()
    return fig


# Panels per row of the forest plot: four fit a page's width with every comparison's name in its title.
FOREST_COLUMNS = 4


def plot_forest(claims_table: pd.DataFrame, margin: float) -> Figure:
    """Forest plot of the paired differences, one small panel per comparison (a claim of several, C6's or C7's, has
    one per comparison), each on its own x-scale, datasets as rows, every row coloured by its label.

    One x-axis for all would be set by the largest effect (U-Net against FCN, +0.35) and squeeze every other interval
    into a sliver. Each tested row shows its mean difference, the family-adjusted interval as a thin line with end
    ticks and the unadjusted (1 - alpha) interval as a thick bar over it. Each panel marks zero, the paper's claimed
    difference (dashed) and the margin of an equivalence or non-inferiority claim (dotted); its axis spans those and
    its rows' unadjusted intervals and differences (see :func:`forest_limits`). A family-wise bound beyond it ends in
    a triangle at the axis' edge: with 2 or 3 seeds the family-wise t quantile is large (25.5 for 2 seeds at
    alpha/m = 0.025), and unclipped, one such interval would squeeze the panel's other rows into a few pixels.

    Args:
        claims_table: output of ``evaluate_claims``.
        margin: the study's equivalence and non-inferiority margin.

    Returns:
        The figure.
    """
    tested = claims_table[claims_table["mean_diff"].notna()]
    tested = tested.assign(comparison=comparison_names(tested))
    panels = list(tested.groupby(["claim_id", "comparison", "metric"], sort=False))
    datasets = sorted(tested["dataset"].unique())
    position = {dataset: index for index, dataset in enumerate(datasets)}
    columns = max(min(len(panels), FOREST_COLUMNS), 1)
    rows_of_panels = max(-(-len(panels) // columns), 1)
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(
            rows_of_panels,
            columns,
            figsize=(3.4 * columns + 1.6, (1.0 + 0.3 * len(datasets)) * rows_of_panels + 0.4),
            sharey=True,
            squeeze=False,
        )
        any_clipped = False
        # The grid may have places beyond the last panel: they are removed below.
        for ax, ((claim_id, comparison, metric), rows) in zip(axes.flat, panels, strict=False):
            any_clipped |= _forest_panel(ax, rows, position, _margins(rows["kind"].iloc[0], margin))
            ax.set_title(f"{claim_id} ({metric})\n{comparison}", fontsize=9)
        if not panels:  # one empty panel says so
            axes[0, 0].set_title("(no comparison run)")
        for ax in axes.flat[max(len(panels), 1) :]:
            fig.delaxes(ax)
        axes[0, 0].set_yticks(range(len(datasets)), datasets)
        axes[0, 0].set_ylim(max(len(datasets), 1) - 0.5, -0.5)
        fig.supxlabel("better - baseline, in the claim's metric", fontsize=10)
        fig.tight_layout()
        shown = [label for label in LABEL_COLORS if label in set(tested["verdict"])]
        has_margin = any(_margins(kind, margin) for kind in tested["kind"])
        # Above the panels, outside the figure's box: saving with bbox_inches="tight" takes it in.
        handles = _forest_legend(shown, has_margin, any_clipped)
        fig.legend(
            handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(handles), 5), frameon=False
        )
    return fig


def _margins(kind: str, margin: float) -> tuple[float, ...]:
    """The bounds a claim of ``kind`` is tested against besides zero: ±margin for equivalence, -margin for
    non-inferiority, none for superiority."""
    return {"equivalence": (-margin, margin), "non-inferiority": (-margin,)}.get(kind, ())


def _forest_panel(ax, rows: pd.DataFrame, position: dict[str, int], margins: tuple[float, ...]) -> bool:
    """Draw one comparison's rows (one per dataset at ``position``) with its marks; return whether a family-wise
    bound was clipped at the axis."""
    y = rows["dataset"].map(position).to_numpy()
    colors = [LABEL_COLORS[label] for label in rows["verdict"]]
    claimed = rows["claimed_difference"].dropna().unique()
    low, high = forest_limits(rows, [*claimed, *margins])
    ax.set_xlim(low, high)
    ax.locator_params(axis="x", nbins=4)
    ax.tick_params(axis="x", labelsize=8)
    ax.axvline(0, color="0.3", linewidth=1)
    for value in claimed:
        ax.axvline(value, color="0.1", linestyle="--", linewidth=1)
    for value in margins:
        ax.axvline(value, color="0.45", linestyle=":", linewidth=1.5)
    clipped = False
    for column, edge in (("ci_adj_low", "<"), ("ci_adj_high", ">")):
        bound = rows[column].to_numpy(dtype=float)
        beyond = (bound < low) | (bound > high)
        clipped |= bool(beyond.any())
        for drawn, marker, size in ((~beyond, "|", 60), (beyond, edge, 30)):
            ax.scatter(
                bound.clip(low, high)[drawn],
                y[drawn],
                marker=marker,
                s=size,
                color=_take(colors, drawn),
                zorder=2,
                clip_on=False,  # a triangle at the edge shows whole
            )
    ax.hlines(y, rows["ci_adj_low"].clip(low, high), rows["ci_adj_high"].clip(low, high), colors=colors, linewidth=1)
    ax.hlines(y, rows["ci_low"].clip(low, high), rows["ci_high"].clip(low, high), colors=colors, linewidth=4, alpha=0.9)
    ax.scatter(rows["mean_diff"], y, color=colors, edgecolor="white", s=45, zorder=4)
    return clipped


def _forest_legend(shown: list[str], has_margin: bool, any_clipped: bool) -> list[Line2D]:
    """The forest plot's key: the labels drawn, the two intervals, the claim's marks, and the clipping triangle
    where a panel has one."""
    handles = [Line2D([], [], marker="o", linestyle="", color=LABEL_COLORS[label], label=label) for label in shown]
    handles += [
        Line2D([], [], color="0.4", linewidth=4, label="(1 - alpha) CI"),
        Line2D([], [], color="0.4", linewidth=1, marker="|", markersize=8, label="(1 - alpha/m) CI, family-wise"),
        Line2D([], [], color="0.1", linestyle="--", linewidth=1, label="paper's claimed difference"),
    ]
    if has_margin:
        handles.append(Line2D([], [], color="0.45", linestyle=":", linewidth=1.5, label="margin"))
    if any_clipped:
        handles.append(
            Line2D([], [], marker=">", linestyle="", color="0.4", label="family-wise CI goes on beyond the axis")
        )
    return handles


def forest_limits(rows: pd.DataFrame, marks: list[float], pad: float = 0.25) -> tuple[float, float]:
    """The x-range of one forest-plot panel: its rows' unadjusted (1 - alpha) intervals and mean differences, the
    ``marks`` drawn on it (claimed difference, margins) and zero, widened by ``pad`` of that span on each side, and no
    wider than [-1, 1] (a difference of two scores in [0, 1]). Family-wise intervals do not widen it: they are drawn
    clipped to it.

    Args:
        rows: rows of ``evaluate_claims`` with a mean difference.
        marks: the vertical lines drawn on the panel.
    """
    values = rows[["ci_low", "ci_high", "mean_diff"]].to_numpy(dtype=float).ravel()
    values = np.append(values[np.isfinite(values)], [*marks, 0.0])
    span = max(values.max() - values.min(), 1e-3)
    return max(values.min() - pad * span, -1.0), min(values.max() + pad * span, 1.0)


def _take(colors: list, mask: np.ndarray) -> list:
    return [color for color, keep in zip(colors, mask, strict=True) if keep]


def _spread_labels(targets: np.ndarray, gap: float, low: float, high: float) -> np.ndarray:
    """Positions as close as possible to ``targets`` (any order), at least ``gap`` apart, within [low, high].

    Sorted, each label is pushed up past its predecessor; then, from ``high`` down, each is pushed down below its
    successor, so only the labels in the way move (shifting the whole stack would drag a lone label at the bottom
    out of range). With too many labels to fit, they run past ``low``, never into each other.

    Args:
        targets: preferred positions.
        gap: least distance between neighbours.
        low: lowest position.
        high: highest position.

    Returns:
        The positions, in the order of ``targets``.
    """
    order = np.argsort(targets, kind="stable")
    placed = np.clip(targets[order].astype(float), low, high)
    for k in range(1, placed.size):
        placed[k] = max(placed[k], placed[k - 1] + gap)
    for k in range(placed.size - 1, -1, -1):
        placed[k] = min(placed[k], high if k == placed.size - 1 else placed[k + 1] - gap)
    positions = np.empty_like(placed)
    positions[order] = placed
    return positions


# The efficiency figure's axes as fractions of the figure (left, right, bottom, top), and its names' font size.
_EFFICIENCY_BOX = (0.05, 0.98, 0.12, 0.9)
_LABEL_FONTSIZE = 8
# A name's line height as a multiple of the font size: neighbouring names never touch.
_LINE_SPACING = 1.35


def plot_efficiency(table: pd.DataFrame, metric: str = "dice") -> Figure:
    """Mean test score against parameter count (log scale), one panel per dataset.

    The variants are named in a column at the right of each panel, inside its axes: the x-axis runs on past the
    largest network to make room for the column, the names are spread vertically so that no two overlap, and each
    is joined to its point by a thin leader line. The figure is tall enough for the longest column.

    Args:
        table: output of ``results_table``.
        metric: the score whose ``<metric>_mean`` and ``<metric>_sd`` are plotted.

    Returns:
        The figure.
    """
    datasets = sorted(table["dataset"].unique())
    left, right, bottom, top = _EFFICIENCY_BOX
    most = int(table.groupby("dataset")["model"].nunique().max())
    # Height in inches for ``most`` names and a line to spare, at the axes' share of the figure.
    needed = (most + 1) * _LINE_SPACING * _LABEL_FONTSIZE / 72 / (top - bottom)
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(datasets), figsize=(6.2 * len(datasets), max(4.2, needed)), squeeze=False)
        fig.subplots_adjust(left=left, right=right, bottom=bottom, top=top, wspace=0.25)
        for ax, dataset in zip(axes[0], datasets, strict=True):
            sized = table[(table["dataset"] == dataset) & table["params"].notna()].astype({"params": float})
            ax.errorbar(sized["params"], sized[f"{metric}_mean"], yerr=sized[f"{metric}_sd"], fmt="none", ecolor="0.6")
            sns.scatterplot(data=sized, x="params", y=f"{metric}_mean", hue="model", legend=False, ax=ax, zorder=3)
            ax.set_title(dataset)
            ax.set_xlabel("parameters (millions, log scale)")
            ax.set_ylabel(f"test {metric} (mean ± s.d. over seeds)")
            if not sized.empty:  # a dataset whose runs recorded no parameter count has nothing to name
                _name_points(ax, sized, f"{metric}_mean")
    return fig


def _name_points(ax, sized: pd.DataFrame, score: str) -> None:
    """Name each variant of ``sized`` in a column at the right of ``ax``, inside it, and set the log x-axis so that
    the points lie left of the column."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    # Positions in axes fractions: a line is a known number of points high, the axes a known number of points.
    gap = _LINE_SPACING * _LABEL_FONTSIZE / (box.height * 72 / fig.dpi)
    bottom, top = ax.get_ylim()  # the y axis is linear: data to axes fraction is affine
    y_label = _spread_labels(((sized[score] - bottom) / (top - bottom)).to_numpy(), gap, 0.5 * gap, 1 - 0.5 * gap)
    names = [
        ax.annotate(
            model,
            xy=(params, value),
            xycoords="data",
            xytext=(0, y),
            textcoords="axes fraction",
            fontsize=_LABEL_FONTSIZE,
            va="center",
            # From the name's left end (not its centre, which would cut up through the names above it).
            arrowprops={
                "arrowstyle": "-",
                "color": "0.55",
                "linewidth": 0.6,
                "relpos": (0, 0.5),
                "shrinkA": 2,
                "shrinkB": 3,
            },
        )
        for model, params, value, y in zip(sized["model"], sized["params"], sized[score], y_label, strict=True)
    ]
    # The column ends just inside the axes' right edge; the points end a little left of the widest name's start.
    widest = max(Text.get_window_extent(name, renderer).width for name in names) / box.width
    column = 1 - 0.02 - widest
    for name in names:
        name.set_position((column, name.get_position()[1]))
    _log_axis_left_of(ax, sized["params"].to_numpy(), column - 0.06)


def _log_axis_left_of(ax, params: np.ndarray, end: float) -> None:
    """A log x-axis on which ``params`` lie between 5% of its width and ``end`` (an axes fraction), with ticks at
    1, 2, 5 x 10^k parameters, labelled in millions, only over the points (none under the names' column)."""
    ax.set_xscale("log")
    low, high = np.log10(params.min()), np.log10(params.max())
    widen = max(0.5 - (high - low), 0.0) / 2  # one network, or several of one size: half a decade around them
    low, high = low - widen, high + widen
    width = (high - low) / (end - 0.05)  # the axis' width in decades
    ax.set_xlim(10 ** (low - 0.05 * width), 10 ** (low - 0.05 * width + width))
    ticks = ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)).tick_values(10**low, 10**high)
    ax.xaxis.set_major_locator(ticker.FixedLocator([tick for tick in ticks if 10**low <= tick <= 10**high]))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value / 1e6:g}"))
    ax.xaxis.set_minor_locator(ticker.NullLocator())


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Save a figure as PNG, creating parent folders.

    Args:
        fig: the figure.
        path: output path ending in ``.png``.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path
