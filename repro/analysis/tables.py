"""Tables of the study: results per dataset × model, deep supervision's pruned depths, the claims table for
reading, the universal models' parameters, and their files.

Every table is written three ways (``write_table``, through the study's one table writer, ``repro.table_files``):
CSV at full precision for machines, Markdown and LaTeX for people. p-values print as ``< 0.0001`` rather than a
misleading 0.0000.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from repro import table_files
from repro.analysis.claims import CLAIMS
from repro.analysis.run_results import naming_the_metrics_file
from repro.analysis.stats import mean_interval

# Rendered by the aggregate notebook and scripts/update_readme.py as tables.markdown_table.
from repro.table_files import markdown_table as markdown_table

TABLE_METRICS = ("dice", "iou", "miou_bg")
# Beside Dice for volumes: the 95th-percentile Hausdorff distance (voxels), which sees boundaries a Dice score does not.
# A column of the table only when some run recorded it, so the 2D study's tables stay as they are.
VOLUME_METRICS = ("hd95",)
P_DIGITS = 4


def results_table(runs_df: pd.DataFrame) -> pd.DataFrame:
    """Mean and s.d. over seeds of the test metrics, per dataset × model, with model size and cost.

    Parameters and FLOPs are those the runs recorded: the networks as trained, at the study's widths and
    input size (``results/complexity.csv`` has the official configurations at the papers' sizes instead).

    Args:
        runs_df: ``RunResults.per_seed``.

    Returns:
        Columns ``dataset``, ``model``, ``n_seeds``, ``<metric>_mean`` and ``<metric>_sd`` for foreground
        Dice, foreground IoU and mIoU with background (and HD95 where volume runs recorded it), ``params`` and
        ``gflops``. The s.d. is the sample s.d. (ddof=1), NaN with a single seed.
    """
    grouped = runs_df.groupby(["dataset", "model"], sort=True)
    recorded = [m for m in VOLUME_METRICS if m in runs_df and runs_df[m].notna().any()]
    table = grouped[[*TABLE_METRICS, *recorded]].agg(["mean", "std"])
    table.columns = [f"{metric}_{'sd' if statistic == 'std' else 'mean'}" for metric, statistic in table.columns]
    table.insert(0, "n_seeds", grouped.size())
    table["params"] = grouped["params"].first()
    table["gflops"] = grouped["flops"].first() / 1e9
    table = table.reset_index()
    table["params"] = pd.to_numeric(table["params"]).round().astype("Int64")
    return table


def significant_figures(value: float, figures: int = 3) -> str:
    """A positive quantity at a few significant figures, without exponent or trailing point.

    0.12369 -> "0.124", 1.944 -> "1.94", 3.499 -> "3.50", 123.4 -> "123", 2266.0 -> "2266".

    Args:
        value: the number (NaN gives "").
        figures: significant figures kept (whole numbers keep all their digits).

    Returns:
        The text.
    """
    if pd.isna(value):
        return ""
    if value == 0:
        return "0"
    decimals = max(0, figures - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def _mean_sd(mean: float, sd: float, digits: int) -> str:
    """Format ``mean ± sd``, or the mean alone when the s.d. is undefined (one seed); blank without a mean (a
    metric the cell's runs do not record, such as HD95 on images)."""
    if pd.isna(mean):
        return ""
    return f"{mean:.{digits}f}" if pd.isna(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def format_results_table(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Human-readable version of ``results_table``: ``mean ± s.d.`` strings, params and GFLOPs at 3
    significant figures (params in millions).

    Args:
        table: output of ``results_table``.
        digits: decimals for the metrics.

    Returns:
        Columns dataset, model, seeds, Dice, IoU, mIoU (bg), HD95 (voxels; where recorded), params (M), GFLOPs.
    """
    labels = {"dice": "Dice", "iou": "IoU", "miou_bg": "mIoU (bg)"}
    if "hd95_mean" in table:
        labels["hd95"] = "HD95 (voxels)"
    formatted = table[["dataset", "model", "n_seeds"]].rename(columns={"n_seeds": "seeds"})
    for metric, label in labels.items():
        formatted[label] = [
            _mean_sd(mean, sd, digits) for mean, sd in zip(table[f"{metric}_mean"], table[f"{metric}_sd"], strict=True)
        ]
    formatted["params (M)"] = [significant_figures(params / 1e6) for params in table["params"].astype("Float64")]
    formatted["GFLOPs"] = [significant_figures(gflops) for gflops in table["gflops"]]
    return formatted


_PRUNED = re.compile(r"pruned_(?P<depth>[^_]+)_(?P<metric>.+)")


def _depth_order(depth: str) -> tuple[int, str]:
    """L1, L2, ... by their number, then named modes (``average``: every head's output averaged)."""
    return (int(depth[1:]), "") if re.fullmatch(r"L\d+", depth) else (10**6, depth)


def pruning_accuracy_table(runs_df: pd.DataFrame) -> pd.DataFrame:
    """Deep-supervision runs scored at every depth they can be pruned to at inference, per dataset × model.

    The accuracy side of the UNet++ paper's pruning table (claim C9), from the same runs at each depth: each seed's
    score at a depth is paired with that seed's score at full depth (the deepest ``L<k>``), so ``iou_vs_full`` is the
    mean over seeds of the same networks' loss from pruning. FLOPs are those the runs recorded at the study's input
    size. The cost side, each depth's FLOPs and CPU latency at the papers' size, is
    :func:`repro.pruning.pruning_table`
    (``results/pruning.md``). Depth ``average`` is every head's output averaged, the network's own output (its test
    scores).

    Args:
        runs_df: ``RunResults.per_seed``; runs without ``pruned_<depth>_<metric>`` columns are left out.

    Returns:
        Columns ``dataset``, ``model``, ``depth``, ``n_seeds``, ``dice_mean``, ``dice_sd``, ``iou_mean``,
        ``iou_sd``, ``iou_vs_full``, ``gflops`` and ``gflops_vs_full``; no rows when no run was pruned.
    """
    depths = sorted({m["depth"] for c in runs_df.columns if (m := _PRUNED.fullmatch(c))}, key=_depth_order)
    levels = [depth for depth in depths if re.fullmatch(r"L\d+", depth)]
    columns = ["dataset", "model", "depth", "n_seeds", "dice_mean", "dice_sd", "iou_mean", "iou_sd", "iou_vs_full"]
    columns += ["gflops", "gflops_vs_full"]
    rows = []
    if levels:
        full = levels[-1]
        pruned = runs_df[runs_df[f"pruned_{full}_iou"].notna()]
        for (dataset, model), cell in pruned.groupby(["dataset", "model"], sort=True):
            full_flops = cell.get(f"pruned_{full}_flops", pd.Series(dtype=float)).dropna()
            full_gflops = full_flops.iloc[0] / 1e9 if len(full_flops) else np.nan
            # The depths this variant was scored at (U-Net v2's runs add `final`, their last head alone).
            for depth in [depth for depth in depths if cell[f"pruned_{depth}_iou"].notna().any()]:
                dice, iou = cell[f"pruned_{depth}_dice"], cell[f"pruned_{depth}_iou"]
                flops = cell.get(f"pruned_{depth}_flops", pd.Series(dtype=float)).dropna()
                gflops = flops.iloc[0] / 1e9 if len(flops) else np.nan
                rows.append(
                    {
                        "dataset": dataset,
                        "model": model,
                        "depth": depth,
                        "n_seeds": int(iou.notna().sum()),
                        "dice_mean": dice.mean(),
                        "dice_sd": dice.std(),
                        "iou_mean": iou.mean(),
                        "iou_sd": iou.std(),
                        "iou_vs_full": (iou - cell[f"pruned_{full}_iou"]).mean(),
                        "gflops": gflops,
                        "gflops_vs_full": gflops / full_gflops,
                    }
                )
    return pd.DataFrame(rows, columns=columns)


def format_pruning_accuracy_table(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Human-readable version of ``pruning_accuracy_table``: ``mean ± s.d.`` strings, the loss from pruning signed.

    Args:
        table: output of ``pruning_accuracy_table``.
        digits: decimals for the metrics.

    Returns:
        Columns dataset, model, depth, seeds, Dice, IoU, IoU vs full depth, GFLOPs, GFLOPs vs full depth.
    """
    formatted = table[["dataset", "model", "depth", "n_seeds"]].rename(columns={"n_seeds": "seeds"})
    for metric, label in (("dice", "Dice"), ("iou", "IoU")):
        formatted[label] = [
            _mean_sd(mean, sd, digits) for mean, sd in zip(table[f"{metric}_mean"], table[f"{metric}_sd"], strict=True)
        ]
    formatted["IoU vs full depth"] = [f"{value:+.{digits}f}" for value in table["iou_vs_full"]]
    formatted["GFLOPs"] = [significant_figures(gflops) for gflops in table["gflops"]]
    formatted["GFLOPs vs full depth"] = [significant_figures(ratio) for ratio in table["gflops_vs_full"]]
    return formatted


# The UNet++ paper's DSB2018 IoU (Zhou et al., DLMIA 2018, Table 2), in its own metric: the official Keras
# ``mean_iou`` (two-class mIoU averaged over the thresholds 0.5-0.95; repro.training.metrics.keras_mean_iou).
UNETPP_PAPER_DSB2018 = {"unet": 90.77, "wide_unet": 90.92, "unetpp": 92.63}
# The study's networks behind each paper row: its own recipe (default grid) and the paper's 2018 configuration.
_PAPER_ROWS = {
    "unet": ("unet", "unet_2018"),
    "wide_unet": ("wide_unet", "wide_unet_2018"),
    "unetpp": ("unetpp", "unetpp_2018"),
}


def paper_metric_table(runs_df: pd.DataFrame, dataset: str = "dsb2018-nuclei-96", alpha: float = 0.05) -> pd.DataFrame:
    """The UNet++ paper's DSB2018 row beside the study's, in percent with (1 - alpha) intervals over seeds.

    Per paper network, two study rows: the paper's own 2018 configuration (``<name>_2018``) in the paper's metric
    (``keras_mean_iou``), and the study's default-grid network, which records no such metric, in the nearest one it
    records, the two-class mIoU at the arg-max (``miou_bg``: background and nuclei IoU averaged per image). Both
    rows also give the study's foreground IoU. A row whose variant has no runs says so (n_seeds 0).
    """
    rows = []
    on_dataset = runs_df[runs_df["dataset"] == dataset]
    for network, paper in UNETPP_PAPER_DSB2018.items():
        for variant in _PAPER_ROWS[network][::-1]:
            seeds = on_dataset[on_dataset["model"] == variant]
            metric = "keras_mean_iou" if variant.endswith("_2018") else "miou_bg"
            values = seeds[metric].dropna() if metric in seeds else pd.Series(dtype=float)
            mean, low, high = mean_interval(values * 100, alpha) if len(values) else (np.nan, np.nan, np.nan)
            iou = mean_interval(seeds["iou"] * 100, alpha) if len(seeds) else (np.nan, np.nan, np.nan)
            rows.append(
                {
                    "network": network,
                    "paper_iou": paper,
                    "study_variant": variant,
                    "configuration": "the paper's (2018)" if variant.endswith("_2018") else "the study's recipe",
                    "metric": metric,
                    "n_seeds": len(values),
                    "mean": mean,
                    "ci_low": low,
                    "ci_high": high,
                    "gap_to_paper": mean - paper,
                    "foreground_iou": iou[0],
                    "foreground_iou_ci_low": iou[1],
                    "foreground_iou_ci_high": iou[2],
                }
            )
    return pd.DataFrame(rows)


def _interval_cell(mean: float, low: float, high: float, digits: int, sign: str = "") -> str:
    """A mean with its interval for reading (``sign="+"`` writes signed values); "no runs yet" for a missing mean,
    the mean alone without an interval."""
    if mean != mean:
        return "no runs yet"
    shown = f"{mean:{sign}.{digits}f}"
    return shown if low != low else f"{shown} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def format_paper_metric_table(table: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """The paper-metric table for reading: percent with intervals; variants without runs say so."""

    def cell(mean: float, low: float, high: float) -> str:
        return _interval_cell(mean, low, high, digits)

    return pd.DataFrame(
        {
            "network": table["network"],
            "paper (Keras mean_iou)": table["paper_iou"].map(lambda v: f"{v:.2f}"),
            "study variant": table["study_variant"],
            "metric": table["metric"],
            "seeds": table["n_seeds"],
            "study": [cell(*r) for r in table[["mean", "ci_low", "ci_high"]].itertuples(index=False)],
            "study - paper": table["gap_to_paper"].map(lambda v: "" if v != v else f"{v:+.{digits}f}"),
            "foreground IoU": [
                cell(*r)
                for r in table[["foreground_iou", "foreground_iou_ci_low", "foreground_iou_ci_high"]].itertuples(
                    index=False
                )
            ],
        }
    )


# The paper's own 2018 networks record both the paper's metric and the study's: the runs that measure how far apart
# the metrics read on the same predictions.
_PAPER_METRIC_VARIANTS = tuple(variant for _, variant in _PAPER_ROWS.values())
# Reading the level gap: the share of the paper-minus-foreground-IoU gap that the metric closes, averaged over the
# paper's networks. "Mostly" where every estimate of it reaches 3/4, "in large part" where one does and none is under
# 1/4, "partly" where the highest reaches 1/4, and otherwise the metric does not explain the gap.
_MOSTLY, _PARTLY = 0.75, 0.25


def paper_metric_bridge(runs_df: pd.DataFrame, dataset: str = "dsb2018-nuclei-96", alpha: float = 0.05) -> pd.DataFrame:
    """How far the paper's metric reads from the study's on the same predictions, in points, over the runs that
    record both (the paper's own 2018 networks): per variant and over all of them, the mean of each run's
    ``keras_mean_iou - miou_bg`` (the paper's metric against its nearest, which the default grid records) and
    ``keras_mean_iou - iou`` (against the foreground IoU of the study's tables), with (1 - alpha) Student-t
    intervals over runs. A variant without runs has n_runs 0."""
    on_dataset = runs_df[runs_df["dataset"] == dataset]
    rows = []
    for variant in (*_PAPER_METRIC_VARIANTS, "all"):
        chosen = _PAPER_METRIC_VARIANTS if variant == "all" else (variant,)
        runs = on_dataset[on_dataset["model"].isin(chosen)]
        runs = runs[runs["keras_mean_iou"].notna()] if "keras_mean_iou" in runs else runs.iloc[:0]
        row = {"study_variant": variant, "n_runs": len(runs)}
        for against in ("miou_bg", "iou"):
            interval = (
                mean_interval(100 * (runs["keras_mean_iou"] - runs[against]), alpha)
                if len(runs)
                else (np.nan, np.nan, np.nan)
            )
            name = f"keras_minus_{against}"
            row |= dict(zip((name, f"{name}_ci_low", f"{name}_ci_high"), interval, strict=True))
        rows.append(row)
    return pd.DataFrame(rows)


def format_paper_metric_bridge(bridge: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """The metric bridge for reading: signed points with intervals; a variant without runs says so."""
    shown = {"study variant": bridge["study_variant"], "runs": bridge["n_runs"]}
    for against, label in (("miou_bg", "paper's metric - two-class mIoU"), ("iou", "paper's metric - foreground IoU")):
        columns = [f"keras_minus_{against}", f"keras_minus_{against}_ci_low", f"keras_minus_{against}_ci_high"]
        shown[label] = [_interval_cell(*r, digits, sign="+") for r in bridge[columns].itertuples(index=False)]
    return pd.DataFrame(shown)


def paper_gap_reading(paper_table: pd.DataFrame, bridge: pd.DataFrame, digits: int = 2) -> str:
    """Whether the study's level gap to the UNet++ paper's DSB2018 row was the metric, in plain words, from
    :func:`paper_metric_table` and :func:`paper_metric_bridge` (both in points).

    The study's recipe (the default grid) is compared with the paper in foreground IoU and in the nearest metric its
    runs record, the two-class mIoU; they predate the paper's exact metric and keep no weights to be scored in it.
    The 2018 networks' runs record both, so a second estimate shifts the recipe's two-class mIoU by the mean
    difference measured there. The share of the gap the metric closes (averaged over the paper's networks) under
    each estimate gives the answer (:data:`_MOSTLY`, :data:`_PARTLY`). Then UNet++'s lead over U-Net in the paper
    and in the study, and what the paper's own 2018 networks score in its metric here. Empty until the default grid
    has DSB2018 runs of all three networks."""
    rows = paper_table.set_index("study_variant")
    networks = list(UNETPP_PAPER_DSB2018)
    if any(rows.loc[network, "n_seeds"] == 0 for network in networks):
        return ""

    def points(value: float) -> str:
        return f"{value:+.{digits}f}"

    def listed(values) -> str:
        return ", ".join(points(value) for value in values)

    paper = np.array([UNETPP_PAPER_DSB2018[network] for network in networks])
    foreground = np.array([rows.loc[network, "foreground_iou"] for network in networks])
    nearest = np.array([rows.loc[network, "mean"] for network in networks])
    if (paper <= foreground).all():
        return (
            "**Was the level gap the metric?** There is none to explain: the study's recipe is at or above the "
            "paper's numbers in foreground IoU already."
        )

    def closed(estimate: np.ndarray) -> float:
        return float(np.mean((estimate - foreground) / (paper - foreground)))

    everything = bridge.set_index("study_variant").loc["all"]
    bridged = everything["n_runs"] > 1
    shares = [closed(nearest)] + ([closed(nearest + everything["keras_minus_miou_bg"])] if bridged else [])
    low, high = min(shares), max(shares)
    if low >= _MOSTLY:
        answer = "Mostly, yes"
    elif high >= _MOSTLY and low >= _PARTLY:
        answer = "In large part"
    elif high >= _PARTLY:
        answer = "Partly"
    else:
        answer = "No"
    closes = f"{100 * low:.0f}" if f"{100 * low:.0f}" == f"{100 * high:.0f}" else f"{100 * low:.0f}-{100 * high:.0f}"
    lines = [
        f"**Was the level gap the metric? {answer}: the metric closes {closes}% of it.** In foreground IoU, the "
        f"study's recipe ({', '.join(networks)}) is {listed(foreground - paper)} points from the paper's "
        f"{', '.join(f'{value:.2f}' for value in paper)}. In the two-class mIoU of the same runs, the metric nearest "
        f"the paper's, it is {listed(nearest - paper)} ({100 * shares[0]:.0f}% of the gap closed)."
    ]
    if bridged:
        shift = everything["keras_minus_miou_bg"]
        lines.append(
            "Those runs predate the paper's exact metric (its Keras `mean_iou`) and keep no weights to be scored in "
            f"it. On the {everything['n_runs']:.0f} runs that record both (the paper's own 2018 networks), it reads "
            f"{points(shift)} [{points(everything['keras_minus_miou_bg_ci_low'])}, "
            f"{points(everything['keras_minus_miou_bg_ci_high'])}] points from the two-class mIoU; were the recipe's "
            f"runs as far apart, the gaps would be {listed(nearest + shift - paper)} ({100 * shares[1]:.0f}% closed)."
        )
    lines.append(
        "UNet++'s lead over U-Net is another matter, which a metric both networks share hardly moves: "
        f"{points(paper[-1] - paper[0])} points in the paper, {points(nearest[-1] - nearest[0])} in the study's "
        "recipe (two-class mIoU; C1 tests it in foreground IoU)."
    )
    own = [network for network in networks if rows.loc[f"{network}_2018", "n_seeds"] > 0]
    if own:
        variants = [f"{network}_2018" for network in own]
        recipe_iou = dict(zip(networks, foreground, strict=True))
        behind = [rows.loc[variant, "foreground_iou"] - recipe_iou[n] for variant, n in zip(variants, own, strict=True)]
        scores = ", ".join(f"{rows.loc[variant, 'mean']:.{digits}f}" for variant in variants)
        lines.append(
            f"The paper's own 2018 networks ({', '.join(variants)}), trained at the study's length, score {scores} "
            f"in the paper's metric ({listed(rows.loc[variant, 'gap_to_paper'] for variant in variants)} against the "
            "paper), and "
            f"{listed(behind)} points from the study's recipe in foreground IoU"
            + (
                ": they fall short in the study's own metric too, so that shortfall is how they train here, not the "
                "metric."
                if all(difference < 0 for difference in behind)
                else "."
            )
        )
    return " ".join(lines)


# 3D U²-Net's parameter claim (Huang et al., MICCAI 2019): the universal model has about 1% of the parameters of the
# independent models (C15 tests its accuracy; this is its size, reported beside the claim, not tested).
U2NET_PAPER_PARAMETERS = "about 1%"
UNIVERSAL_PARAMETER_COLUMNS = [
    "scale",
    "variant",
    "domains",
    "n_seeds",
    "params",
    "shared",
    "per_domain",
    "independent_variant",
    "independent_params",
    "independent_missing",
    "ratio_to_independent",
    "independent_standard",
    "ratio_to_standard",
    "paper",
]


def _independent_variant(variant: str) -> str:
    """The network a universal variant is compared with on each domain: the baseline of its claim's comparison
    (C15: ``u2net3d``), else its name without ``_universal``."""
    for claim in CLAIMS:
        for comparison in claim.comparisons:
            if comparison.better == variant:
                return comparison.baseline
    return variant.removesuffix("_universal")


def _read_records(runs_dir: Path) -> list[tuple[Path, dict]]:
    """Every ``<dataset>/<model>/seed<k>/metrics.json`` under ``runs_dir`` with its record, in path order."""
    records = []
    for path in sorted(runs_dir.glob("*/*/seed*/metrics.json")):
        with naming_the_metrics_file(path):
            records.append((path, json.loads(path.read_text())))
    return records


def universal_parameters_table(runs_dir: str | Path) -> pd.DataFrame:
    """The universal models' size (C15) against their independent models', beside the 3D U²-Net paper's ~1%.

    One row per scale × universal variant (a run whose record has ``params_split``; one record per domain and seed).
    Two ratios: against the independent models the study trained (the variant's comparison baseline, e.g.
    ``u2net3d``, one run per domain: the sum of their recorded ``params``), and against the paper's independent
    models, one standard-convolution network per domain of the same depth and widths (``independent_standard`` of
    the record, as the official code counts them). Parameters are deterministic, so every record of a variant
    must give the same numbers, and every independent run of a domain the same ``params``.

    Args:
        runs_dir: the runs root, e.g. ``results/cpu/runs``.

    Returns:
        Columns ``scale``, ``variant``, ``domains`` (joined by ``+``), ``n_seeds``, ``params`` (the whole universal
        network), ``shared``, ``per_domain`` (each domain's own, joined by `` + ``), ``independent_variant``,
        ``independent_params`` (missing when a domain has no independent run), ``independent_missing`` (those
        domains, joined by ``+``), ``ratio_to_independent``, ``independent_standard`` (the paper-style total),
        ``ratio_to_standard`` and ``paper`` (the paper's claim, as text); no rows when there is no universal run.

    Raises:
        ValueError: a record that is malformed, or whose parameters disagree with another record of its variant
            (or, for an independent run, of its domain): the file is named.
    """
    records = _read_records(Path(runs_dir))
    universal: dict[tuple[str, str], tuple[Path, tuple, set[int]]] = {}
    for path, record in records:
        if "params_split" not in record:
            continue
        with naming_the_metrics_file(path):
            split = record["params_split"]
            shared, per_domain = int(split["shared"]), tuple(int(n) for n in split["per_domain"])
            standard = tuple(int(n) for n in split["independent_standard"])
            numbers = (int(record["params"]), tuple(record["domains"]), shared, per_domain, standard)
            key, seed = (record["scale"], record["model"]), int(record["seed"])
        if not len(per_domain) == len(standard) == len(numbers[1]):
            raise ValueError(f"{path}: params_split {split} does not give one number per domain of {numbers[1]}")
        if numbers[0] != shared + sum(per_domain):
            raise ValueError(f"{path}: params_split {split} does not add up to its params {numbers[0]}")
        if key in universal and universal[key][1] != numbers:
            fields = ("params", "domains", "shared", "per_domain", "independent_standard")
            differ = [
                f"{name} {a} against {b}"
                for name, a, b in zip(fields, numbers, universal[key][1], strict=True)
                if a != b
            ]
            raise ValueError(
                f"{path}: {', '.join(differ)} in {universal[key][0]}, another record of the same universal variant"
            )
        universal.setdefault(key, (path, numbers, set()))[2].add(seed)
    independent: dict[tuple[str, str, str], tuple[Path, int]] = {}
    wanted = {(scale, _independent_variant(variant)) for scale, variant in universal}
    for path, record in records:
        if (record.get("scale"), record.get("model")) not in wanted or "params_split" in record:
            continue
        with naming_the_metrics_file(path):
            key, params = (record["scale"], record["model"], record["dataset"]), int(record["params"])
        if key in independent and independent[key][1] != params:
            raise ValueError(
                f"{path}: params {params} differ from those of {independent[key][0]} ({independent[key][1]}), "
                "another run of the same variant on the same dataset"
            )
        independent.setdefault(key, (path, params))
    rows = []
    for (scale, variant), (_, (params, domains, shared, per_domain, standard), seeds) in sorted(universal.items()):
        baseline = _independent_variant(variant)
        trained = [independent.get((scale, baseline, domain)) for domain in domains]
        missing = [domain for domain, run in zip(domains, trained, strict=True) if run is None]
        trained_total = None if missing else sum(run[1] for run in trained)
        rows.append(
            {
                "scale": scale,
                "variant": variant,
                "domains": "+".join(domains),
                "n_seeds": len(seeds),
                "params": params,
                "shared": shared,
                "per_domain": " + ".join(map(str, per_domain)),
                "independent_variant": baseline,
                "independent_params": trained_total,
                "independent_missing": "+".join(missing),
                "ratio_to_independent": np.nan if trained_total is None else params / trained_total,
                "independent_standard": sum(standard),
                "ratio_to_standard": params / sum(standard),
                "paper": U2NET_PAPER_PARAMETERS,
            }
        )
    table = pd.DataFrame(rows, columns=UNIVERSAL_PARAMETER_COLUMNS)
    table["independent_params"] = table["independent_params"].astype("Int64")
    return table


def format_universal_parameters_table(table: pd.DataFrame) -> pd.DataFrame:
    """The universal models' parameters for reading: millions at 3 significant figures, ratios in percent, a domain
    without an independent run named in place of the independent models' total.

    Args:
        table: output of ``universal_parameters_table``.

    Returns:
        Columns scale, variant, domains, seeds, params (M), shared (M), per domain (M), independent (trained, M),
        universal / trained, independent (standard conv., M), universal / standard conv., paper.
    """

    def millions(value: object) -> str:
        return significant_figures(float(value) / 1e6)

    def percent(ratio: float) -> str:
        return "" if pd.isna(ratio) else significant_figures(100 * ratio) + "%"

    columns = table[["independent_variant", "independent_params", "independent_missing"]].itertuples(index=False)
    trained = pd.Series(
        [
            f"no {variant} run on {missing.replace('+', ', ')}" if missing else millions(total)
            for variant, total, missing in columns
        ],
        index=table.index,
        dtype=object,
    )
    return pd.DataFrame(
        {
            "scale": table["scale"],
            "variant": table["variant"],
            "domains": table["domains"].str.replace("+", ", ", regex=False),
            "seeds": table["n_seeds"],
            "params (M)": table["params"].map(millions),
            "shared (M)": table["shared"].map(millions),
            "per domain (M)": table["per_domain"].map(
                lambda text: " + ".join(millions(n) for n in str(text).split(" + "))
            ),
            "independent (trained, M)": trained,
            "universal / trained": table["ratio_to_independent"].map(percent),
            "independent (standard conv., M)": table["independent_standard"].map(millions),
            "universal / standard conv.": table["ratio_to_standard"].map(percent),
            "paper": table["paper"],
        }
    )


def format_p(p: float, digits: int = P_DIGITS) -> str:
    """A p-value for people: fixed decimals, ``< 0.0001`` (at 4 decimals) instead of 0.0000, "" when missing.

    Args:
        p: the p-value.
        digits: decimals.

    Returns:
        The text.
    """
    if pd.isna(p):
        return ""
    floor = 10.0**-digits
    return f"< {floor:.{digits}f}" if p < floor else f"{p:.{digits}f}"


def _interval(low: float, high: float, digits: int) -> str:
    """``[low, high]`` at fixed decimals, "" when missing."""
    return "" if pd.isna(low) else f"[{low:.{digits}f}, {high:.{digits}f}]"


def comparison_names(claims_table: pd.DataFrame) -> pd.Series:
    """``better - baseline`` per row, each side followed by ``@<level>`` where it is scored at a pruned depth.

    Args:
        claims_table: output of ``evaluate_claims``.

    Returns:
        The texts, on the table's index.
    """

    def side(role: str) -> pd.Series:
        levels = claims_table[f"{role}_level"]
        return claims_table[role] + ("@" + levels.astype("string")).fillna("")

    return side("better") + " - " + side("baseline")


def effect_text(row: Mapping, digits: int = 4) -> str:
    """A comparison's mean paired difference (better - baseline, in its metric) with the interval its label is read
    from, as the README's effects table and the HTML report's verdict cells print it: ``"-0.0019 [-0.0082, +0.0044]"``.

    The interval is the family's (``ci_adj``, at level alpha/m), or for an equivalence row the TOST's own
    (1 - 2 alpha), from which "not equivalent" is read. A row with fewer than 2 matched seeds has a mean but no
    interval: the mean alone; a comparison that did not run: "".

    Args:
        row: one row of ``evaluate_claims`` (a Series, or a dict of stats.json's ``comparisons``).
        digits: decimals kept.
    """
    if pd.isna(row["mean_diff"]):
        return ""
    low, high = ("tost_ci_low", "tost_ci_high") if row["kind"] == "equivalence" else ("ci_adj_low", "ci_adj_high")
    mean = f"{row['mean_diff']:+.{digits}f}"
    if pd.isna(row[low]):
        return mean
    return f"{mean} [{row[low]:+.{digits}f}, {row[high]:+.{digits}f}]"


def claimed_text(row: Mapping, margin: float, digits: int = 4) -> str:
    """What a comparison is tested against, as the README's effects table and the HTML report print it: the paper's
    difference (``"+0.0186"``), or ``"> 0"`` where the paper gives none; for an equivalence claim the margin with the
    paper's difference beside (``"within ±0.02 (paper: -0.0020)"``), for non-inferiority ``"> -0.02"``.

    Args:
        row: one row of ``evaluate_claims`` (a Series, or a dict of stats.json's ``comparisons``).
        margin: the study's equivalence and non-inferiority margin.
        digits: decimals of the paper's difference.
    """
    paper = None if pd.isna(row["claimed_difference"]) else f"{row['claimed_difference']:+.{digits}f}"
    if row["kind"] == "equivalence":
        return f"within ±{margin:g}" + (f" (paper: {paper})" if paper else "")
    if row["kind"] == "non-inferiority":
        return f"> -{margin:g}"
    return paper or "> 0"


def format_claims_table(claims_table: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Compact view of ``evaluate_claims`` for reading (stable text for output checks).

    Args:
        claims_table: output of ``evaluate_claims``.
        digits: decimals kept.

    Returns:
        Columns claim, dataset, comparison (``@L3``: scored at pruned depth L3), metric, claimed (with the
        dataset it was claimed on), seeds, diff, the three intervals, the four p-values of the rule, m, MDD and
        seeds needed at alpha/m, the Wilcoxon p, the per-image p (conditional on the trained models), devices,
        failed runs, verdict, the verdict without failed runs, the design note where the comparison is the
        study's own construction rather than the paper's, and the secondary study-wide Benjamini-Hochberg q-value
        of the direction test.
    """
    numbers = claims_table.select_dtypes("number").round(digits)

    def intervals(prefix: str) -> list[str]:
        bounds = zip(claims_table[f"{prefix}_low"], claims_table[f"{prefix}_high"], strict=True)
        return [_interval(low, high, digits) for low, high in bounds]

    def p_values(column: str) -> list[str]:
        return [format_p(p, digits) for p in claims_table[column]]

    return pd.DataFrame(
        {
            "claim": claims_table["claim_id"],
            "dataset": claims_table["dataset"],
            "comparison": comparison_names(claims_table),
            "metric": claims_table["metric"],
            "claimed": numbers["claimed_difference"],
            "claimed on": claims_table["claimed_on"].fillna(""),
            "seeds": claims_table["n_seeds"].astype("Int64"),
            "diff": numbers["mean_diff"],
            "CI": intervals("ci"),
            "CI (alpha/m)": intervals("ci_adj"),
            "bootstrap CI": intervals("boot_ci"),
            "p direction": p_values("p_direction"),
            "p direction (Holm)": p_values("p_direction_holm"),
            "p magnitude": p_values("p_magnitude"),
            "p magnitude (Holm)": p_values("p_magnitude_holm"),
            "m": claims_table["family_size"].astype("Int64"),
            "MDD (alpha/m)": numbers["mdd_adj"],
            "seeds needed (alpha/m)": claims_table["seeds_needed_adj"].fillna(""),
            "Wilcoxon p": p_values("wilcoxon_p"),
            "image p (given the models)": p_values("image_p"),
            "devices": claims_table["devices"].fillna(""),
            "failed runs": claims_table["n_failed"].astype("Int64"),
            "verdict": claims_table["verdict"],
            "verdict without failed runs": claims_table["verdict_without_failed"],
            "design": claims_table["design"].fillna(""),
            # Secondary, outside the rule (which is Holm within each claim); last, so earlier columns keep their place.
            "q direction (BH, study-wide; secondary)": p_values("q_direction_bh"),
        }
    )


def kept_text(kept: object, cases: object) -> str:
    """``"3/5"``: of ``cases`` leave-one-seed-out analyses, ``kept`` keep the label; "" when not computed."""
    return "" if pd.isna(kept) or pd.isna(cases) else f"{int(kept)}/{int(cases)}"


def marked_verdict(verdict: str, kept: object, cases: object) -> str:
    """A verdict with its fragility: ``"reversed (fragile: 3/5)"`` when fewer than all of the leave-one-seed-out
    analyses keep it, the label alone otherwise (or when its stability was not computed)."""
    if pd.isna(kept) or pd.isna(cases) or int(kept) >= int(cases):
        return verdict
    return f"{verdict} (fragile: {kept_text(kept, cases)})"


def format_claim_verdicts(per_claim: pd.DataFrame) -> pd.DataFrame:
    """The verdict table for people: the columns of ``repro.analysis.evaluation.claim_verdicts`` in place, the verdict
    marked ``(fragile: k/n)`` where leaving one seed out changes it, each comparison's label where the claim has
    several (C7's two steps), and how many leave-one-seed-out analyses keep the label.

    Args:
        per_claim: output of ``claim_verdicts`` (with its stability columns).

    Returns:
        Columns claim_id, title, dataset, n_comparisons, n_failed, verdict (marked), verdict_without_failed,
        comparison verdicts, leave-one-seed-out kept.
    """
    shown = per_claim[
        ["claim_id", "title", "dataset", "n_comparisons", "n_failed", "verdict", "verdict_without_failed"]
    ].copy()
    marks = zip(per_claim["verdict"], per_claim["loo_kept"], per_claim["loo_cases"], strict=True)
    shown["verdict"] = [marked_verdict(verdict, kept, cases) for verdict, kept, cases in marks]
    shown["comparison verdicts"] = per_claim["comparison_verdicts"].fillna("")
    counts = zip(per_claim["loo_kept"], per_claim["loo_cases"], strict=True)
    shown["leave-one-seed-out kept"] = [kept_text(kept, cases) for kept, cases in counts]
    return shown


def format_stability_table(stability: pd.DataFrame) -> pd.DataFrame:
    """``repro.analysis.evaluation.leave_one_seed_out`` for people: per decisive claim × dataset, its label, how many
    of the leave-one-seed-out analyses keep it (``3/5``), "fragile" where not all do, and its label without each seed.

    Args:
        stability: output of ``leave_one_seed_out``.

    Returns:
        Columns claim, dataset, verdict, kept, fragile, then ``without seed <k>`` per seed.
    """
    shown = pd.DataFrame(
        {
            "claim": stability["claim_id"],
            "dataset": stability["dataset"],
            "verdict": stability["verdict"],
            "kept": [kept_text(k, n) for k, n in zip(stability["loo_kept"], stability["loo_cases"], strict=True)],
            "fragile": ["fragile" if fragile else "" for fragile in stability["fragile"]],
        }
    )
    for column in [c for c in stability.columns if c.startswith("without_seed_")]:
        shown[column.replace("_", " ")] = stability[column].fillna("")
    return shown


def format_margin_table(margins: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """``repro.analysis.evaluation.margin_sensitivity`` for people: one line per dataset × comparison (then the claim's
    weakest), the mean difference, and per margin the equivalence label and the one-sided non-inferiority label
    (secondary), the declared margin's equivalence column marked primary.

    Args:
        margins: output of ``margin_sensitivity``.
        digits: decimals of the mean difference.

    Returns:
        Columns dataset, comparison, diff, ``equivalence ±<margin>`` per margin, ``non-inferiority <margin>``
        per margin.
    """
    keys = ["dataset", "comparison"]
    lines = margins.drop_duplicates(keys)[keys].reset_index(drop=True)
    diffs = margins.drop_duplicates(keys)["mean_diff"].to_numpy()
    shown = lines.assign(diff=[f"{d:+.{digits}f}" if pd.notna(d) else "" for d in diffs])
    steps = margins.drop_duplicates("margin").sort_values("margin")[["margin", "declared"]]
    for reading, title in (("equivalence", "equivalence ±{:g}"), ("non_inferiority", "non-inferiority {:g}")):
        for margin, declared in steps.itertuples(index=False):
            at = margins[margins["margin"] == margin].set_index(keys)[reading]
            name = title.format(margin) + (" (primary)" if declared and reading == "equivalence" else "")
            shown[name] = [at[(dataset, comparison)] for dataset, comparison in lines.itertuples(index=False)]
    return shown


def write_table(
    table: pd.DataFrame, stem: str | Path, display: pd.DataFrame | None = None, float_digits: int = 4
) -> list[Path]:
    """Write a table as ``<stem>.csv``, ``<stem>.md`` and ``<stem>.tex`` (:func:`repro.table_files.write_table`).

    Args:
        table: the table; the CSV keeps it at full precision.
        stem: output path without suffix, e.g. ``results/cpu/tables/results``; parent folders are created.
        display: a formatted version (e.g. from ``format_results_table``) for the Markdown and LaTeX
            files; default ``table`` itself.
        float_digits: decimals of float cells in the Markdown and LaTeX files.

    Returns:
        The three paths written.
    """
    stem = Path(stem)
    csv_path, markdown_path, latex_path = (stem.with_suffix(suffix) for suffix in (".csv", ".md", ".tex"))
    return table_files.write_table(table, csv_path, markdown_path, latex_path, display, float_digits)
