"""Aggregate finished training runs into tables, claim verdicts, figures and a JSON summary.

Reads what the training stage writes under ``results/runs/<dataset>/<model>/seed<k>/`` (``metrics.json``
and ``per_image.csv``); never imports torch, so it runs on an analysis-only environment.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from repro.claims import CLAIMS, Claim
from repro.stats import (
    holm_bonferroni,
    minimal_detectable_difference,
    paired_ttest,
    seeds_needed,
    tost_paired,
    wilcoxon_signed_rank,
)

RUN_KEYS = ["dataset", "model", "seed"]
TABLE_METRICS = ("dice", "iou", "miou_bg")
# Run-level fields copied from metrics.json next to the flattened test metrics.
RUN_FIELDS = (
    "arch",
    "scale",
    "image_size",
    "epochs",
    "best_epoch",
    "params",
    "flops",
    "train_seconds",
    "images_per_second",
    "git_commit",
)
VERDICTS = ("reproduced", "contradicted", "inconclusive", "not run")
CLAIM_COLUMNS = [
    "claim_id",
    "title",
    "kind",
    "dataset",
    "better",
    "baseline",
    "metric",
    "claimed_difference",
    "n_seeds",
    "better_mean",
    "baseline_mean",
    "mean_diff",
    "sd_diff",
    "ci_low",
    "ci_high",
    "t",
    "p",
    "p_holm",
    "dz",
    "wilcoxon_p",
    "mdd",
    "seeds_needed",
    "n_images",
    "image_mean_diff",
    "image_p",
    "tost_p",
    "tost_ci_low",
    "tost_ci_high",
    "verdict",
]


@dataclass(frozen=True)
class RunResults:
    """Tidy test results of all runs.

    Attributes:
        per_seed: one row per dataset × model × seed: ``RUN_KEYS``, ``RUN_FIELDS``, the test metrics
            (``dice``, ``iou``, ``miou_bg``, ``dice_pooled``, ``iou_pooled``), ``dice_<class>`` and
            ``iou_<class>`` per foreground class, and ``pruned_<level>_<metric>`` for deep-supervision
            runs evaluated at pruned depths.
        per_image: one row per dataset × model × seed × test image: ``RUN_KEYS``, ``id`` and the
            columns of ``per_image.csv``.
    """

    per_seed: pd.DataFrame
    per_image: pd.DataFrame


def _flatten_test_metrics(test: dict, test_pruned: dict) -> dict[str, float]:
    """Flatten the nested test metrics of one run into scalar columns.

    Args:
        test: ``metrics.json["test"]``.
        test_pruned: ``metrics.json["test_pruned"]`` (empty when the run has no pruned evaluation).

    Returns:
        Column name to value.
    """
    flat = {name: value for name, value in test.items() if name != "per_class"}
    for class_name, class_metrics in test.get("per_class", {}).items():
        flat.update({f"{metric}_{class_name}": value for metric, value in class_metrics.items()})
    for level, level_metrics in test_pruned.items():
        flat.update(
            {f"pruned_{level}_{metric}": value for metric, value in level_metrics.items() if metric != "per_class"}
        )
    return flat


def load_runs(runs_dir: str | Path) -> RunResults:
    """Read every ``<dataset>/<model>/seed<k>/`` run under ``runs_dir``.

    Args:
        runs_dir: the runs root, e.g. ``results/runs``.

    Returns:
        The per-seed and per-image tables, sorted by dataset, model, seed (and image id).
    """
    runs_dir = Path(runs_dir)
    metric_files = sorted(runs_dir.glob("*/*/seed*/metrics.json"))
    if not metric_files:
        raise FileNotFoundError(f"no <dataset>/<model>/seed<k>/metrics.json under {runs_dir}")
    seed_rows, image_tables = [], []
    for metrics_path in metric_files:
        metrics = json.loads(metrics_path.read_text())
        run_dir = metrics_path.parent
        keys = {"dataset": metrics["dataset"], "model": metrics["model"], "seed": int(metrics["seed"])}
        # A run copied to the wrong folder would silently pair with the wrong variant.
        expected_dir = (keys["dataset"], keys["model"], f"seed{keys['seed']}")
        if (run_dir.parent.parent.name, run_dir.parent.name, run_dir.name) != expected_dir:
            raise ValueError(f"{metrics_path} describes {expected_dir}, which does not match its folder")
        run_fields = {field: metrics.get(field) for field in RUN_FIELDS}
        seed_rows.append(keys | run_fields | _flatten_test_metrics(metrics["test"], metrics.get("test_pruned", {})))
        images = pd.read_csv(run_dir / "per_image.csv", dtype={"id": str})
        image_tables.append(images.assign(**keys)[[*RUN_KEYS, *images.columns]])
    per_seed = pd.DataFrame(seed_rows).sort_values(RUN_KEYS, ignore_index=True)
    per_image = pd.concat(image_tables, ignore_index=True).sort_values([*RUN_KEYS, "id"], ignore_index=True)
    return RunResults(per_seed=per_seed, per_image=per_image)


def results_table(runs_df: pd.DataFrame) -> pd.DataFrame:
    """Mean and s.d. over seeds of the test metrics, per dataset × model, with model size and cost.

    Parameters and FLOPs are those the runs recorded: the networks as trained, at the study's widths and
    input size (``results/complexity.csv`` has the official configurations at the papers' sizes instead).

    Args:
        runs_df: ``RunResults.per_seed``.

    Returns:
        Columns ``dataset``, ``model``, ``n_seeds``, ``<metric>_mean`` and ``<metric>_sd`` for foreground
        Dice, foreground IoU and mIoU with background, ``params`` and ``gflops``. The s.d. is the sample
        s.d. (ddof=1), NaN with a single seed.
    """
    grouped = runs_df.groupby(["dataset", "model"], sort=True)
    table = grouped[list(TABLE_METRICS)].agg(["mean", "std"])
    table.columns = [f"{metric}_{'sd' if statistic == 'std' else 'mean'}" for metric, statistic in table.columns]
    table.insert(0, "n_seeds", grouped.size())
    table["params"] = grouped["params"].first()
    table["gflops"] = grouped["flops"].first() / 1e9
    table = table.reset_index()
    table["params"] = pd.to_numeric(table["params"]).round().astype("Int64")
    return table


def _mean_sd(mean: float, sd: float, digits: int) -> str:
    """Format ``mean ± sd``, or the mean alone when the s.d. is undefined (one seed).

    Args:
        mean: the mean.
        sd: the standard deviation (may be NaN).
        digits: decimals.

    Returns:
        The formatted string.
    """
    return f"{mean:.{digits}f}" if pd.isna(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def format_results_table(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Human-readable version of ``results_table``: ``mean ± s.d.`` strings, params in millions.

    Args:
        table: output of ``results_table``.
        digits: decimals for the metrics.

    Returns:
        Columns dataset, model, seeds, Dice, IoU, mIoU (bg), params (M), GFLOPs.
    """
    labels = {"dice": "Dice", "iou": "IoU", "miou_bg": "mIoU (bg)"}
    formatted = table[["dataset", "model", "n_seeds"]].rename(columns={"n_seeds": "seeds"})
    for metric, label in labels.items():
        formatted[label] = [
            _mean_sd(mean, sd, digits) for mean, sd in zip(table[f"{metric}_mean"], table[f"{metric}_sd"], strict=True)
        ]
    formatted["params (M)"] = (table["params"].astype("Float64") / 1e6).round(3)
    formatted["GFLOPs"] = table["gflops"].round(3)
    return formatted


def _cell_text(value: object, float_digits: int) -> str:
    """Text of one table cell: floats at fixed decimals, missing values empty.

    Args:
        value: the cell.
        float_digits: decimals for floats.

    Returns:
        The text.
    """
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float | np.floating):
        return f"{value:.{float_digits}f}"
    return str(value)


def markdown_table(df: pd.DataFrame, float_digits: int = 4) -> str:
    """Render a DataFrame as a GitHub-flavoured Markdown pipe table.

    ``DataFrame.to_markdown`` would need ``tabulate``, which is not a project dependency.

    Args:
        df: the table (its index is not written).
        float_digits: decimals for float cells.

    Returns:
        The Markdown text, numeric columns right-aligned.
    """

    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    alignments = ["---:" if pd.api.types.is_numeric_dtype(dtype) else ":---" for dtype in df.dtypes]
    lines = [row([str(column) for column in df.columns]), row(alignments)]
    lines += [row([_cell_text(value, float_digits) for value in values]) for values in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_table(
    table: pd.DataFrame, stem: str | Path, display: pd.DataFrame | None = None, float_digits: int = 4
) -> list[Path]:
    """Write a table as ``<stem>.csv``, ``<stem>.md`` and ``<stem>.tex``.

    Args:
        table: the table; the CSV keeps it at full precision.
        stem: output path without suffix, e.g. ``results/tables/results``; parent folders are created.
        display: a formatted version (e.g. from ``format_results_table``) for the Markdown and LaTeX
            files; default ``table`` itself.
        float_digits: decimals of float cells in the Markdown and LaTeX files.

    Returns:
        The three paths written.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    shown = table if display is None else display
    csv_path, markdown_path, latex_path = (stem.with_suffix(suffix) for suffix in (".csv", ".md", ".tex"))
    table.to_csv(csv_path, index=False)
    markdown_path.write_text(markdown_table(shown, float_digits))
    column_format = "".join("r" if pd.api.types.is_numeric_dtype(dtype) else "l" for dtype in shown.dtypes)
    cells = shown.map(lambda value: _cell_text(value, float_digits))
    latex_path.write_text(cells.to_latex(index=False, escape=True, column_format=column_format))
    return [csv_path, markdown_path, latex_path]


def verdict_rule(alpha: float = 0.05, tost_margin: float = 0.02) -> str:
    """The verdict rule applied by ``evaluate_claims``, in words.

    Args:
        alpha: significance level.
        tost_margin: equivalence margin (Dice).

    Returns:
        The rule text.
    """
    confidence = f"{100 * (1 - alpha):g}%"
    return (
        f"Each comparison is a paired test over seed-matched runs (better - baseline in the claim's metric).\n"
        f"not run: a variant of the comparison has no runs on the dataset.\n"
        f"Superiority (Holm-Bonferroni over all superiority comparisons x datasets, paired t-test):\n"
        f"  reproduced   - Holm-adjusted p < {alpha:g} and the mean difference is positive (claimed sign);\n"
        f"  contradicted - Holm-adjusted p < {alpha:g} with a negative mean difference, OR the upper bound of "
        f"the (unadjusted) {confidence} CI is below the paper's claimed difference (the claimed gain is "
        f"ruled out and no significant gain was found);\n"
        f"  inconclusive - otherwise, including fewer than 2 matched seeds.\n"
        f"Equivalence (TOST at margin +/-{tost_margin:g}, each comparison at level {alpha:g}, no adjustment):\n"
        f"  reproduced   - TOST p < {alpha:g} (the {100 * (1 - 2 * alpha):g}% CI lies inside the margin);\n"
        f"  contradicted - the {confidence} CI lies entirely outside the margin;\n"
        f"  inconclusive - otherwise, including fewer than 2 matched seeds.\n"
        f"A claim with several comparisons is reproduced on a dataset if all are reproduced, contradicted if "
        f"any is contradicted, not run if none was run, and inconclusive otherwise.\n"
        f"The Wilcoxon p, the per-image test (scores averaged over seeds, paired over test images), the MDD "
        f"and the seeds needed are reported but do not enter the verdict."
    )


def _seed_pairs(runs_df: pd.DataFrame, dataset: str, better: str, baseline: str, metric: str) -> pd.DataFrame:
    """Seed-matched scores of two variants on one dataset.

    Args:
        runs_df: ``RunResults.per_seed``.
        dataset: the dataset.
        better: first variant.
        baseline: second variant.
        metric: the score column.

    Returns:
        Columns ``better`` and ``baseline`` indexed by the seeds both variants have (possibly empty).
    """
    on_dataset = runs_df[runs_df["dataset"] == dataset].set_index("seed")
    by_variant = {
        role: on_dataset.loc[on_dataset["model"] == model, metric]
        for role, model in (("better", better), ("baseline", baseline))
    }
    return pd.concat(by_variant, axis=1, join="inner").sort_index()


def _image_pairs(
    per_image: pd.DataFrame, dataset: str, better: str, baseline: str, metric: str, seeds: Sequence[int]
) -> pd.DataFrame:
    """Per-image scores of two variants on one dataset, each averaged over the matched seeds.

    Args:
        per_image: ``RunResults.per_image``.
        dataset: the dataset.
        better: first variant.
        baseline: second variant.
        metric: the score column.
        seeds: the seeds used in the seed-level comparison.

    Returns:
        Columns ``better`` and ``baseline`` indexed by the image ids both variants were scored on.
    """
    selected = per_image[(per_image["dataset"] == dataset) & per_image["seed"].isin(seeds)]
    by_variant = {
        role: selected[selected["model"] == model].groupby("id")[metric].mean()
        for role, model in (("better", better), ("baseline", baseline))
    }
    return pd.concat(by_variant, axis=1, join="inner")


def _compare(
    runs: RunResults,
    claim: Claim,
    dataset: str,
    better: str,
    baseline: str,
    claimed_difference: float | None,
    *,
    alpha: float,
    tost_margin: float,
    power: float,
    seeds_cap: int,
) -> dict:
    """All statistics of one comparison on one dataset (the verdict and Holm p are added later).

    Args:
        runs: the loaded runs.
        claim: the claim the comparison belongs to.
        dataset: the dataset.
        better: the favoured variant.
        baseline: the variant it is compared with.
        claimed_difference: the paper's ``better - baseline``, or None.
        alpha: significance level.
        tost_margin: equivalence margin.
        power: power for the MDD and the seeds needed.
        seeds_cap: largest number of seeds ``seeds_needed`` considers.

    Returns:
        A row of the claims table (a subset of ``CLAIM_COLUMNS``).
    """
    row = {
        "claim_id": claim.id,
        "title": claim.title,
        "kind": claim.kind,
        "dataset": dataset,
        "better": better,
        "baseline": baseline,
        "metric": claim.metric,
        "claimed_difference": claimed_difference,
    }
    models = set(runs.per_seed.loc[runs.per_seed["dataset"] == dataset, "model"])
    if not {better, baseline} <= models:
        return row | {"verdict": "not run"}
    pairs = _seed_pairs(runs.per_seed, dataset, better, baseline, claim.metric)
    row |= {
        "n_seeds": len(pairs),
        "better_mean": pairs["better"].mean(),
        "baseline_mean": pairs["baseline"].mean(),
    }
    if len(pairs) < 2:
        return row
    ttest = paired_ttest(pairs["better"], pairs["baseline"], confidence_level=1 - alpha)
    row |= {
        "mean_diff": ttest.mean_diff,
        "sd_diff": ttest.sd_diff,
        "ci_low": ttest.ci_low,
        "ci_high": ttest.ci_high,
        "t": ttest.t,
        "p": ttest.p,
        "dz": ttest.dz,
        "wilcoxon_p": wilcoxon_signed_rank(pairs["better"], pairs["baseline"]).p,
        "mdd": minimal_detectable_difference(ttest.sd_diff, ttest.n, alpha, power),
    }
    if claim.kind == "superiority" and claimed_difference is not None:
        row["seeds_needed"] = str(seeds_needed(ttest.sd_diff, claimed_difference, alpha, power, seeds_cap))
    if claim.kind == "equivalence":
        tost = tost_paired(pairs["better"], pairs["baseline"], tost_margin, alpha)
        row |= {"tost_p": tost.p, "tost_ci_low": tost.ci_low, "tost_ci_high": tost.ci_high}
    images = _image_pairs(runs.per_image, dataset, better, baseline, claim.metric, pairs.index)
    if len(images) >= 2:
        image_ttest = paired_ttest(images["better"], images["baseline"])
        row |= {"n_images": len(images), "image_mean_diff": image_ttest.mean_diff, "image_p": image_ttest.p}
    return row


def _verdict(row: pd.Series, alpha: float, tost_margin: float) -> str:
    """Verdict of one tested comparison by the rule of ``verdict_rule``.

    Args:
        row: a claims-table row with its statistics and Holm-adjusted p.
        alpha: significance level.
        tost_margin: equivalence margin.

    Returns:
        "reproduced", "contradicted" or "inconclusive".
    """
    if pd.isna(row["p"]):
        return "inconclusive"
    if row["kind"] == "equivalence":
        if row["tost_p"] < alpha:
            return "reproduced"
        if row["ci_low"] > tost_margin or row["ci_high"] < -tost_margin:
            return "contradicted"
        return "inconclusive"
    if row["p_holm"] < alpha:
        return "reproduced" if row["mean_diff"] > 0 else "contradicted"
    if pd.notna(row["claimed_difference"]) and row["ci_high"] < row["claimed_difference"]:
        return "contradicted"
    return "inconclusive"


def evaluate_claims(
    runs: RunResults,
    claims: Sequence[Claim] = CLAIMS,
    *,
    alpha: float = 0.05,
    tost_margin: float = 0.02,
    power: float = 0.8,
    seeds_cap: int = 100,
) -> pd.DataFrame:
    """Test every claim comparison on every dataset and give it a verdict.

    Per comparison × dataset, on seed-matched runs (``better - baseline`` in the claim's metric): paired
    t-test with its ``1 - alpha`` CI and Cohen's d_z, Wilcoxon signed-rank p, the minimal detectable
    difference at ``power`` given the observed s.d. of the differences, the seeds needed to detect the
    paper's claimed difference, TOST for equivalence claims, and a secondary per-image paired t-test
    (each test image's score averaged over the matched seeds, then paired over images; it reflects
    test-set sampling only, not training variability). Holm-Bonferroni runs over every tested
    superiority comparison on every dataset as one family. Verdicts follow ``verdict_rule``:

    - not run: a variant has no runs on the dataset.
    - superiority: reproduced if the Holm-adjusted paired-t p < alpha and the mean difference is
      positive; contradicted if Holm p < alpha with a negative difference, or if the upper bound of the
      ``1 - alpha`` CI is below the claimed difference; otherwise (or with < 2 seeds) inconclusive.
    - equivalence: reproduced if TOST p < alpha at ``±tost_margin``; contradicted if the ``1 - alpha``
      CI lies entirely outside the margin; otherwise (or with < 2 seeds) inconclusive.

    Args:
        runs: the loaded runs.
        claims: the claims to evaluate.
        alpha: significance level (the CI level is ``1 - alpha``, TOST's interval ``1 - 2 alpha``).
        tost_margin: equivalence margin in the claim's metric.
        power: power for the MDD and the seeds needed.
        seeds_cap: largest number of seeds reported by ``seeds_needed`` (beyond: "> cap").

    Returns:
        One row per claim × comparison × dataset with ``CLAIM_COLUMNS``.
    """
    datasets = sorted(runs.per_seed["dataset"].unique())
    rows = [
        _compare(
            runs,
            claim,
            dataset,
            comparison.better,
            comparison.baseline,
            comparison.claimed_difference,
            alpha=alpha,
            tost_margin=tost_margin,
            power=power,
            seeds_cap=seeds_cap,
        )
        for claim in claims
        for comparison in claim.comparisons
        for dataset in datasets
    ]
    table = pd.DataFrame(rows, columns=CLAIM_COLUMNS)
    family = (table["kind"] == "superiority") & table["p"].notna()
    table.loc[family, "p_holm"] = holm_bonferroni(table.loc[family, "p"].to_numpy())
    tested = table["verdict"].isna()
    table.loc[tested, "verdict"] = [_verdict(row, alpha, tost_margin) for _, row in table[tested].iterrows()]
    return table


def claim_verdicts(claims_table: pd.DataFrame) -> pd.DataFrame:
    """Combine comparison verdicts into one verdict per claim × dataset.

    A claim is reproduced if all its comparisons are, contradicted if any is, not run if none was run,
    and inconclusive otherwise.

    Args:
        claims_table: output of ``evaluate_claims``.

    Returns:
        Columns claim_id, title, dataset, n_comparisons, verdict.
    """

    def combine(verdicts: pd.Series) -> str:
        if (verdicts == "reproduced").all():
            return "reproduced"
        if (verdicts == "contradicted").any():
            return "contradicted"
        if (verdicts == "not run").all():
            return "not run"
        return "inconclusive"

    grouped = claims_table.groupby(["claim_id", "title", "dataset"], sort=False)["verdict"]
    return grouped.agg(n_comparisons="size", verdict=combine).reset_index()


def format_claims_table(claims_table: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Compact, rounded view of ``evaluate_claims`` for display (stable numbers for output checks).

    Args:
        claims_table: output of ``evaluate_claims``.
        digits: decimals kept.

    Returns:
        Columns claim, dataset, comparison, metric, claimed, seeds, diff, CI, p, p (Holm), Wilcoxon p,
        d_z, MDD, seeds needed, image p, TOST p, verdict.
    """

    def interval(low: float, high: float) -> str:
        return "" if pd.isna(low) else f"[{low:.{digits}f}, {high:.{digits}f}]"

    numbers = claims_table.select_dtypes("number").round(digits)
    return pd.DataFrame(
        {
            "claim": claims_table["claim_id"],
            "dataset": claims_table["dataset"],
            "comparison": claims_table["better"] + " - " + claims_table["baseline"],
            "metric": claims_table["metric"],
            "claimed": numbers["claimed_difference"],
            "seeds": claims_table["n_seeds"].astype("Int64"),
            "diff": numbers["mean_diff"],
            "CI": [interval(*bounds) for bounds in zip(claims_table["ci_low"], claims_table["ci_high"], strict=True)],
            "p": numbers["p"],
            "p (Holm)": numbers["p_holm"],
            "Wilcoxon p": numbers["wilcoxon_p"],
            "d_z": numbers["dz"],
            "MDD": numbers["mdd"],
            "seeds needed": claims_table["seeds_needed"].fillna(""),
            "image p": numbers["image_p"],
            "TOST p": numbers["tost_p"],
            "verdict": claims_table["verdict"],
        }
    )


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


def plot_forest(claims_table: pd.DataFrame) -> Figure:
    """Forest plot of the paired differences with their CIs, one panel per dataset.

    Each tested comparison shows its mean difference coloured by verdict, its CI as a bar, and the
    paper's claimed difference as a cross.

    Args:
        claims_table: output of ``evaluate_claims``.

    Returns:
        The figure.
    """
    tested = claims_table[claims_table["mean_diff"].notna()].assign(
        label=lambda df: df["claim_id"] + " " + df["better"] + " - " + df["baseline"] + " (" + df["metric"] + ")"
    )
    datasets = sorted(tested["dataset"].unique()) or ["(no comparison run)"]
    labels = list(dict.fromkeys(tested["label"]))
    position = {label: index for index, label in enumerate(labels)}
    palette = sns.color_palette("colorblind")
    # Untested ("not run") comparisons have no difference to plot, so only three verdicts get a colour.
    colors = {"reproduced": palette[2], "contradicted": palette[3], "inconclusive": palette[7]}
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(
            1, len(datasets), figsize=(4.5 * len(datasets) + 3, 1.5 + 0.4 * len(labels)), sharey=True, squeeze=False
        )
        for ax, dataset in zip(axes[0], datasets, strict=True):
            rows = tested[tested["dataset"] == dataset].assign(y=lambda df: df["label"].map(position))
            ax.axvline(0, color="0.3", linewidth=1)
            ax.hlines(rows["y"], rows["ci_low"], rows["ci_high"], colors=[colors[v] for v in rows["verdict"]])
            sns.scatterplot(
                data=rows, x="mean_diff", y="y", hue="verdict", palette=colors, s=50, legend=False, ax=ax, zorder=3
            )
            ax.scatter(rows["claimed_difference"], rows["y"], marker="x", color="0.1", zorder=4)
            ax.set_title(dataset)
            ax.set_xlabel("better - baseline (CI)")
            ax.set_ylabel("")
        axes[0, 0].set_yticks(range(len(labels)), labels)
        axes[0, 0].set_ylim(max(len(labels), 1) - 0.5, -0.5)
        handles = [Line2D([], [], marker="o", linestyle="", color=color, label=v) for v, color in colors.items()]
        handles.append(Line2D([], [], marker="x", linestyle="", color="0.1", label="paper's claim"))
        fig.legend(handles=handles, loc="upper center", ncol=len(handles), frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


def plot_efficiency(table: pd.DataFrame, metric: str = "dice") -> Figure:
    """Mean test score against parameter count (log scale), one panel per dataset.

    Args:
        table: output of ``results_table``.
        metric: the score whose ``<metric>_mean`` and ``<metric>_sd`` are plotted.

    Returns:
        The figure.
    """
    datasets = sorted(table["dataset"].unique())
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
        for ax, dataset in zip(axes[0], datasets, strict=True):
            sized = table[(table["dataset"] == dataset) & table["params"].notna()].astype({"params": float})
            ax.errorbar(sized["params"], sized[f"{metric}_mean"], yerr=sized[f"{metric}_sd"], fmt="none", ecolor="0.6")
            sns.scatterplot(data=sized, x="params", y=f"{metric}_mean", hue="model", legend=False, ax=ax)
            for model, params, score in zip(sized["model"], sized["params"], sized[f"{metric}_mean"], strict=True):
                ax.annotate(model, (params, score), textcoords="offset points", xytext=(4, 3), fontsize=7)
            ax.set_xscale("log")
            ax.set_title(dataset)
            ax.set_xlabel("parameters")
            ax.set_ylabel(f"test {metric} (mean ± s.d. over seeds)")
        fig.tight_layout()
    return fig


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


def _records(df: pd.DataFrame) -> list[dict]:
    """JSON-safe records of a table (NaN and inf become null, numpy scalars plain numbers).

    Args:
        df: the table.

    Returns:
        One dict per row.
    """
    return json.loads(df.to_json(orient="records"))


def stats_summary(
    table: pd.DataFrame,
    claims_table: pd.DataFrame,
    *,
    alpha: float = 0.05,
    tost_margin: float = 0.02,
    power: float = 0.8,
) -> dict:
    """Everything the report concludes, as a JSON-ready dict for ``results/stats.json``.

    Args:
        table: output of ``results_table``.
        claims_table: output of ``evaluate_claims`` (run with the same alpha, margin and power).
        alpha: significance level used.
        tost_margin: equivalence margin used.
        power: power used for the MDD and the seeds needed.

    Returns:
        Keys ``settings``, ``verdict_rule``, ``results`` (per dataset × model), ``comparisons`` (per
        claim comparison × dataset), ``claims`` (per claim × dataset) and ``verdict_counts``.
    """
    per_claim = claim_verdicts(claims_table)
    return {
        "settings": {"alpha": alpha, "tost_margin": tost_margin, "power": power},
        "verdict_rule": verdict_rule(alpha, tost_margin),
        "results": _records(table),
        "comparisons": _records(claims_table),
        "claims": _records(per_claim),
        "verdict_counts": {verdict: int((per_claim["verdict"] == verdict).sum()) for verdict in VERDICTS},
    }


def write_stats_json(summary: dict, path: str | Path) -> Path:
    """Write ``stats_summary`` output as indented JSON, creating parent folders.

    Args:
        summary: the summary dict.
        path: output path, e.g. ``results/stats.json``.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return path
