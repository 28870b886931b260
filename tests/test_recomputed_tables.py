"""An independent recomputation of the study's statistics from the committed runs' records.

The `aggregate` stage writes results/<scale>/tables/*.csv from the runs' records under results/<scale>/runs/
(`metrics.json`, `per_image.csv` and `history.csv` of each dataset/model/seed). This module recomputes every
statistic of those tables from the records alone and checks that the committed tables agree to a relative 1e-9
(absolute 1e-12 near zero), labels exactly. It imports nothing of `repro`: the formulas are written here with numpy,
scipy.stats and pandas from the written rule (docs/claims-and-statistics.md, README's "Verdicts with effects",
docs/results.md's pruning table, and the rule as the aggregate notebook states it in prose, section "The verdict
rule" of results/<scale>/aggregate.ipynb, which docs/claims-and-statistics.md points to for the rule in full).

Specification taken from the tables, not recomputed: which claim compares which variants (`better`, `baseline`, and
for C9 `better_level`, `baseline_level`) on which `dataset` and `metric`, its `kind` and `claimed_difference`;
`title`, `claimed_on`, `design`, `sensitivity_of`; C6's margins (c6_margins.csv `margin`); the UNet++ paper's row
(unetpp_paper_dsb2018.csv `network`, `paper_iou`, `study_variant`, `configuration`, `metric`; the rows of
unetpp_paper_metric_bridge.csv, `study_variant`). alpha and the
equivalence / non-inferiority margin come from params.yaml (`aggregate`). Each claim's family (its rows with at
least 2 matched seeds) and so `family_size` are recomputed, not read.

Recomputed and compared, every row (a number present on one side only is a disagreement too):
- claims.csv: n_seeds, better_mean, baseline_mean, mean_diff, sd_diff, ci_low, ci_high, t, p, p_holm, dz,
  wilcoxon_p, mdd, seeds_needed, n_images, image_mean_diff, image_p, tost_p, tost_ci_low, tost_ci_high,
  p_direction, p_magnitude, p_direction_holm, p_magnitude_holm, family_size, ci_adj_low, ci_adj_high, mdd_adj,
  seeds_needed_adj, devices, n_failed, q_direction_bh, verdict, verdict_without_failed; and `not run` exactly where
  a variant has no runs on the dataset.
- claim_verdicts.csv: one row per claim and dataset; n_comparisons, n_failed, verdict, verdict_without_failed,
  comparison_verdicts, loo_cases, loo_kept, fragile.
- claim_stability.csv: which cells are decisive; verdict, loo_cases, loo_kept, fragile, without_seed_<k>.
- c6_margins.csv: every comparison and the weakest at each margin; declared, n_seeds, mean_diff, tost_ci_low,
  tost_ci_high, ci_adj_low, ci_adj_high, equivalence_p_holm, equivalence, non_inferiority_p_holm, non_inferiority.
- results.csv: its rows (every dataset/model with runs), n_seeds, <metric>_mean, <metric>_sd, params, gflops.
- pruning.csv: its rows, n_seeds, dice_mean, dice_sd, iou_mean, iou_sd, iou_vs_full, gflops, gflops_vs_full.
- unetpp_paper_dsb2018.csv: n_seeds, mean, ci_low, ci_high, gap_to_paper, foreground_iou and its interval.
- unetpp_paper_metric_bridge.csv: n_runs, the mean of each run's keras_mean_iou - miou_bg and keras_mean_iou - iou
  with their intervals, per variant and over all the paper table's variants in the paper's metric (`all`).
- failed_runs.csv: which runs failed, with best_val_dice, others_median, threshold, dice.

Not recomputed: claims.csv `boot_ci_low` / `boot_ci_high`, a seeded random resampling whose draws are the
implementation's own (an independent bootstrap agrees only to Monte Carlo error, never to 1e-9);
universal_parameters.csv, empty until universal runs exist, and parameter counts rather than statistics; stats.json,
which is not a table; unetpp_paper_reading.md, prose worded from two tables recomputed here.

Where the written rule leaves a detail open, this module takes the reading stated here:
- MDD (`mdd` at alpha, `mdd_adj` at alpha/m): the smallest true mean difference the two-sided paired t-test on
  these n seeds, with this s.d. of the differences, detects with power 0.8, the power exact from the noncentral t.
- Seeds needed (`seeds_needed` at alpha, `seeds_needed_adj` at alpha/m): the fewest seeds, 2 to 100, for which that
  test has power 0.8 against the target difference at the observed s.d., else "> 100". The target: |D| for a
  superiority row (0.01 for `seeds_needed_adj` where the paper gives no D, and no `seeds_needed` then), the margin
  for a non-inferiority row; none for an equivalence row.
- The per-image test: each test image's score averaged over the matched seeds per variant, paired t-test over the
  images both variants scored (the pruned depths of C9 have no per-image scores, so none there).
- `devices`: the distinct devices of the pair's matched runs, sorted, joined by "; ", on every row that ran (one
  matched seed is enough).
- Leave one seed out: the seeds are those of the claim's matched pairs; each is dropped from every variant and
  dataset in turn and the claim's family re-tested, labels only.
- A failed run's "best validation Dice" is the highest `val_dice` of its history.csv.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.optimize
import scipy.stats as st
import yaml

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
STUDY = ROOT / "results" / PARAMS["scale"]
RUNS = STUDY / "runs"
TABLES = STUDY / "tables"
ALPHA = PARAMS["aggregate"]["alpha"]
MARGIN = PARAMS["aggregate"]["tost_margin"]

RELATIVE_TOLERANCE = 1e-9
ABSOLUTE_TOLERANCE = 1e-12
POWER = 0.8  # the power the rule's MDD and seeds needed are read at
NO_D_TARGET = 0.01  # the difference an "underpowered" superiority row without a claimed D is judged against
MAX_SEEDS = 100  # seeds needed beyond this are written "> 100"
FAILED_FRACTION = 0.5  # a run failed below half the median best validation Dice of its cell's other seeds
SCORE_METRICS = ("dice", "iou", "miou_bg")
PAPER_DATASET = "dsb2018-nuclei-96"  # the dataset of unetpp_paper_dsb2018.csv, which its name gives

# The rule's order of labels, weakest first: a claim on a dataset takes its weakest row's.
LABEL_ORDER = (
    "reversed",
    "not equivalent",
    "inferior",
    "smaller than claimed",
    "inconclusive (underpowered)",
    "inconclusive",
    "reproduced, smaller than claimed",
    "reproduced",
    "non-inferior",
    "equivalent",
)
NOT_RUN = "not run"
INDECISIVE = {"inconclusive", "inconclusive (underpowered)", NOT_RUN}

pytestmark = pytest.mark.skipif(not TABLES.is_dir(), reason=f"no study tables at {TABLES} yet")


# --- the records ------------------------------------------------------------------------------------------------------


def load_records(runs_dir: Path) -> pd.DataFrame:
    """One row per run: dataset, model, seed, its test scores (`<metric>` at the network's own output and
    `<metric>@<depth>` at each pruned depth it was scored at, `keras_mean_iou` where recorded), params, flops
    (`flops@<depth>` per depth), best validation Dice over its epochs (history.csv) and its folder."""
    rows = []
    for path in sorted(runs_dir.glob("*/*/seed*/metrics.json")):
        record = json.loads(path.read_text())
        # The folder and the record must name the same run, or pairing by seed would pair the wrong runs.
        assert (record["dataset"], record["model"], f"seed{record['seed']}") == path.parts[-4:-1], path
        row = {
            "dataset": record["dataset"],
            "model": record["model"],
            "seed": int(record["seed"]),
            "device": record["device"],
            "params": record["params"],
            "flops": record["flops"],
            "keras_mean_iou": record["test"].get("keras_mean_iou", np.nan),
            "best_val_dice": pd.read_csv(path.parent / "history.csv")["val_dice"].max(),
            "folder": path.parent,
        }
        row |= {metric: record["test"][metric] for metric in SCORE_METRICS}
        for depth, scores in record.get("test_pruned", {}).items():
            row |= {f"{metric}@{depth}": scores[metric] for metric in SCORE_METRICS}
            row[f"flops@{depth}"] = scores["flops"]
        rows.append(row)
    return pd.DataFrame(rows)


def score_column(metric: str, level) -> str:
    """The records' column of a metric at a pruned depth (`level`, e.g. L3), or at the network's own output."""
    return metric if pd.isna(level) else f"{metric}@{level}"


def seed_scores(records: pd.DataFrame, dataset: str, model: str, column: str) -> pd.Series:
    """A variant's score per seed on a dataset (seeds without that score left out)."""
    cell = records[(records["dataset"] == dataset) & (records["model"] == model)]
    if column not in cell:
        return pd.Series(dtype=float)
    return cell.set_index("seed")[column].dropna().sort_index()


@cache
def per_image_scores(folder: Path) -> pd.DataFrame:
    """A run's per-image test scores, indexed by image id."""
    return pd.read_csv(folder / "per_image.csv", index_col="id")


# --- the tests of one row ---------------------------------------------------------------------------------------------


def t_interval(mean: float, sd: float, n: int, level: float) -> tuple[float, float]:
    """The two-sided (1 - level) Student-t interval of a mean of n values with s.d. sd."""
    half = st.t.ppf(1 - level / 2, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def t_test_power(difference: float, sd: float, n, level: float):
    """Power of the two-sided one-sample t-test at `level` on n values of s.d. sd against a true mean `difference`,
    exact from the noncentral t (n may be an array)."""
    n = np.asarray(n, dtype=float)
    df = n - 1
    critical = st.t.ppf(1 - level / 2, df)
    noncentrality = difference / (sd / np.sqrt(n))
    # P(T < -c) for noncentrality nc is P(T > c) for -nc; scipy's nct.cdf returns nan deep in that tail.
    return st.nct.sf(critical, df, noncentrality) + st.nct.sf(critical, df, -noncentrality)


def minimum_detectable_difference(sd: float, n: int, level: float) -> float:
    """The true mean difference the two-sided t-test at `level` detects with power POWER (n values, s.d. sd)."""
    standard_error = sd / math.sqrt(n)
    high = 1.0
    while t_test_power(high * standard_error, sd, n, level) < POWER:
        high *= 2
    noncentrality = scipy.optimize.brentq(
        lambda x: t_test_power(x * standard_error, sd, n, level) - POWER, 0.0, high, xtol=1e-13, rtol=1e-15
    )
    return noncentrality * standard_error


def seeds_needed(target: float, sd: float, level: float) -> str:
    """The fewest seeds (2 to MAX_SEEDS) whose two-sided t-test at `level` has power POWER against `target`, at the
    s.d. sd of the differences; "> MAX_SEEDS" when none."""
    n = np.arange(2, MAX_SEEDS + 1)
    enough = n[t_test_power(target, sd, n, level) >= POWER]
    return str(int(enough[0])) if len(enough) else f"> {MAX_SEEDS}"


def per_image_test(better_runs: list[Path], baseline_runs: list[Path], metric: str) -> dict:
    """The per-image t-test: each image's score averaged over a variant's runs, paired over images."""
    better = pd.concat([per_image_scores(folder)[metric] for folder in better_runs], axis=1).mean(axis=1)
    baseline = pd.concat([per_image_scores(folder)[metric] for folder in baseline_runs], axis=1).mean(axis=1)
    images = better.index.intersection(baseline.index)
    differences = better[images] - baseline[images]
    return {
        "n_images": len(images),
        "image_mean_diff": differences.mean(),
        "image_p": st.ttest_rel(better[images], baseline[images]).pvalue,
    }


def row_tests(differences: pd.Series, kind: str, claimed: float, margin: float) -> dict:
    """The seed-level tests of one row (d = better - baseline over matched seeds) that do not depend on its family:
    the plain two-sided t-test, its (1 - alpha) interval, and the rule's direction test (superiority: the same
    t-test; equivalence: the TOST at the margin; non-inferiority: one-sided against -margin) and, for superiority
    with a claimed D, the magnitude test of H0 mean d >= D."""
    d = differences.to_numpy()
    n, mean, sd = len(d), d.mean(), d.std(ddof=1)
    plain = st.ttest_1samp(d, 0.0)
    tests = {"mean_diff": mean, "sd_diff": sd, "t": plain.statistic, "p": plain.pvalue, "dz": mean / sd}
    tests["ci_low"], tests["ci_high"] = t_interval(mean, sd, n, ALPHA)
    if kind == "superiority":
        tests["p_direction"] = plain.pvalue
        if not pd.isna(claimed):
            tests["p_magnitude"] = st.ttest_1samp(d, claimed, alternative="less").pvalue
    elif kind == "equivalence":
        above_lower = st.ttest_1samp(d, -margin, alternative="greater").pvalue
        below_upper = st.ttest_1samp(d, margin, alternative="less").pvalue
        tests["tost_p"] = tests["p_direction"] = max(above_lower, below_upper)
        tests["tost_ci_low"], tests["tost_ci_high"] = t_interval(mean, sd, n, 2 * ALPHA)
    elif kind == "non-inferiority":
        tests["p_direction"] = st.ttest_1samp(d, -margin, alternative="greater").pvalue
    else:
        raise ValueError(f"unknown kind of claim: {kind}")
    return tests


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values: the k-th smallest of m times (m - k + 1), made non-decreasing in that
    order, capped at 1."""
    p_values = np.asarray(p_values, dtype=float)
    order = np.argsort(p_values, kind="stable")
    m = len(p_values)
    stepped = np.minimum(1.0, np.maximum.accumulate(p_values[order] * (m - np.arange(m))))
    adjusted = np.empty(m)
    adjusted[order] = stepped
    return adjusted


# --- a claim's family and its labels ----------------------------------------------------------------------------------


def power_target(kind: str, claimed: float, margin: float) -> float:
    """The difference whose detectability separates `inconclusive (underpowered)` from `inconclusive`: |D| (0.01
    without one) for superiority, the margin for non-inferiority; none for equivalence."""
    if kind == "superiority":
        return NO_D_TARGET if pd.isna(claimed) else abs(claimed)
    return margin if kind == "non-inferiority" else np.nan


def row_label(row: dict, kind: str, margin: float) -> str:
    """A tested row's label by the rule (its family's Holm p-values and level alpha/m in `row`)."""
    if row["n_seeds"] < 2:
        return "inconclusive"
    significant = row["p_direction_holm"] < ALPHA
    if kind == "equivalence":
        if significant:
            return "equivalent"
        outside = row["tost_ci_high"] < -margin or row["tost_ci_low"] > margin
        return "not equivalent" if outside else "inconclusive"
    # The MDD at alpha/m exceeds the target exactly when the power at the target falls short of POWER.
    underpowered = t_test_power(row["target"], row["sd_diff"], row["n_seeds"], row["level"]) < POWER
    if kind == "non-inferiority":
        if significant:
            return "non-inferior"
        if row["ci_adj_high"] < -margin:
            return "inferior"
        return "inconclusive (underpowered)" if underpowered else "inconclusive"
    magnitude_ruled_out = row.get("p_magnitude_holm", np.nan) < ALPHA
    if significant:
        if row["mean_diff"] < 0:
            return "reversed"
        return "reproduced, smaller than claimed" if magnitude_ruled_out else "reproduced"
    if magnitude_ruled_out:
        return "smaller than claimed"
    return "inconclusive (underpowered)" if underpowered else "inconclusive"


def weakest(labels) -> str:
    """The weakest of a claim's row labels on a dataset by the rule's order; `not run` only when no row ran."""
    ran = [label for label in labels if label != NOT_RUN]
    return min(ran, key=LABEL_ORDER.index) if ran else NOT_RUN


def matched_runs(spec, records: pd.DataFrame, seeds) -> pd.DataFrame:
    """The records of both variants of a row at its matched seeds."""
    return records[
        (records["dataset"] == spec.dataset)
        & records["model"].isin({spec.better, spec.baseline})
        & records["seed"].isin(set(seeds))
    ]


def row_extras(spec, pair: pd.DataFrame, differences: pd.Series, row: dict) -> dict:
    """The readings beside the rule that no label needs, for a row with two or more matched seeds (`pair`: their
    `matched_runs`): Wilcoxon, unadjusted power figures, the per-image test."""
    extras = {
        "wilcoxon_p": st.wilcoxon(differences.to_numpy()).pvalue,
        "mdd": minimum_detectable_difference(row["sd_diff"], row["n_seeds"], ALPHA),
    }
    if spec.kind == "superiority" and not pd.isna(spec.claimed_difference):
        extras["seeds_needed"] = seeds_needed(abs(spec.claimed_difference), row["sd_diff"], ALPHA)
    if pd.isna(spec.better_level) and pd.isna(spec.baseline_level):
        extras |= per_image_test(
            list(pair.loc[pair["model"] == spec.better, "folder"]),
            list(pair.loc[pair["model"] == spec.baseline, "folder"]),
            spec.metric,
        )
    return extras


def evaluate_claim(comparisons: pd.DataFrame, records: pd.DataFrame, margin: float, full: bool = True) -> pd.DataFrame:
    """Every row of one claim (its claims.csv rows: the specification), tested over seed-matched pairs, with the
    claim's family (every row with at least 2 matched seeds; all its direction and magnitude p-values) Holm-adjusted
    together, the family-level intervals and power figures, and each row's label. `full` False skips what no label
    needs (Wilcoxon, per-image test, MDD, seeds needed)."""
    rows = []
    for spec in comparisons.itertuples():
        better = seed_scores(records, spec.dataset, spec.better, score_column(spec.metric, spec.better_level))
        baseline = seed_scores(records, spec.dataset, spec.baseline, score_column(spec.metric, spec.baseline_level))
        seeds = better.index.intersection(baseline.index)
        row = {"seeds": list(seeds)}
        if better.empty or baseline.empty:
            rows.append(row | {"verdict": NOT_RUN})
            continue
        row |= {"n_seeds": len(seeds), "better_mean": better[seeds].mean(), "baseline_mean": baseline[seeds].mean()}
        row["target"] = power_target(spec.kind, spec.claimed_difference, margin)
        if full:  # a row that ran names its devices, even with one matched seed
            pair = matched_runs(spec, records, seeds)
            row["devices"] = "; ".join(sorted(set(pair["device"])))
        if len(seeds) >= 2:
            differences = better[seeds] - baseline[seeds]
            row |= row_tests(differences, spec.kind, spec.claimed_difference, margin)
            if full:
                row |= row_extras(spec, pair, differences, row)
        rows.append(row)

    in_family = [i for i, row in enumerate(rows) if row.get("n_seeds", 0) >= 2]
    family = [(i, name) for i in in_family for name in ("p_direction", "p_magnitude") if name in rows[i]]
    adjusted = holm([rows[i][name] for i, name in family])
    for (i, name), p_holm in zip(family, adjusted, strict=True):
        rows[i][f"{name}_holm"] = p_holm
    for i in in_family:
        row, kind = rows[i], comparisons.iloc[i]["kind"]
        row["family_size"] = len(family)
        row["level"] = ALPHA / len(family)
        # The family's interval: two-sided (1 - alpha/m) for superiority, (1 - 2 alpha/m) otherwise.
        interval_level = row["level"] if kind == "superiority" else 2 * row["level"]
        row["ci_adj_low"], row["ci_adj_high"] = t_interval(
            row["mean_diff"], row["sd_diff"], row["n_seeds"], interval_level
        )
        if kind == "superiority":
            row["p_holm"] = row["p_direction_holm"]  # its plain t-test is its direction test
        if full:
            row["mdd_adj"] = minimum_detectable_difference(row["sd_diff"], row["n_seeds"], row["level"])
            if not pd.isna(row["target"]):
                row["seeds_needed_adj"] = seeds_needed(row["target"], row["sd_diff"], row["level"])
    for i, row in enumerate(rows):
        spec = comparisons.iloc[i]
        if row.get("verdict") != NOT_RUN:
            row["verdict"] = row_label(row, spec["kind"], margin)
    return pd.DataFrame(rows, index=comparisons.index)


def evaluate_study(spec: pd.DataFrame, records: pd.DataFrame, full: bool = True) -> pd.DataFrame:
    """Every claim's rows, each claim its own family, with the study-wide Benjamini-Hochberg q of the direction
    tests."""
    evaluated = pd.concat(
        [evaluate_claim(rows, records, MARGIN, full) for _, rows in spec.groupby("claim_id", sort=False)]
    ).loc[spec.index]
    if full:
        tested = evaluated["p_direction"].notna()
        evaluated.loc[tested, "q_direction_bh"] = st.false_discovery_control(evaluated.loc[tested, "p_direction"])
    return evaluated


# --- failed runs ------------------------------------------------------------------------------------------------------


def failed_runs(records: pd.DataFrame) -> pd.DataFrame:
    """The runs whose best validation Dice is below FAILED_FRACTION of the median of their cell's other seeds'."""
    rows = []
    for _, cell in records.groupby(["dataset", "model"]):
        for index, run in cell.iterrows():
            others = cell.drop(index)["best_val_dice"]
            if others.empty:
                continue
            threshold = FAILED_FRACTION * others.median()
            if run["best_val_dice"] < threshold:
                rows.append(
                    run[["dataset", "model", "seed", "best_val_dice"]].to_dict()
                    | {"others_median": others.median(), "threshold": threshold, "dice": run["dice"]}
                )
    columns = ["dataset", "model", "seed", "best_val_dice", "others_median", "threshold", "dice"]
    return pd.DataFrame(rows, columns=columns)


# --- leave one seed out -----------------------------------------------------------------------------------------------


def leave_one_seed_out(
    spec: pd.DataFrame, claims: pd.DataFrame, records: pd.DataFrame
) -> dict[tuple[str, str], dict[int, str]]:
    """For each decisive cell (claim, dataset) of the recomputed claims, its label with each of the claim's seeds left
    out of every variant and dataset in turn (the claim's whole family recomputed)."""
    cells = {}
    for claim_id, rows in spec.groupby("claim_id", sort=False):
        labels = claims.loc[rows.index].groupby(rows["dataset"], sort=False)["verdict"].agg(weakest)
        decisive = [dataset for dataset, label in labels.items() if label not in INDECISIVE]
        if not decisive:
            continue
        seeds = sorted({seed for row_seeds in claims.loc[rows.index, "seeds"] for seed in row_seeds})
        per_seed = {}
        for seed in seeds:
            evaluated = evaluate_claim(rows, records[records["seed"] != seed], MARGIN, full=False)
            per_seed[seed] = evaluated.groupby(rows["dataset"], sort=False)["verdict"].agg(weakest)
        for dataset in decisive:
            cells[(claim_id, dataset)] = {seed: per_seed[seed][dataset] for seed in seeds}
    return cells


# --- the study, once per module ---------------------------------------------------------------------------------------


@dataclass
class Study:
    """The committed tables, the records, and what this module recomputes from them."""

    tables: dict[str, pd.DataFrame]
    records: pd.DataFrame
    failed: pd.DataFrame
    claims: pd.DataFrame  # claims.csv's rows recomputed, aligned with the committed table
    claims_without_failed: pd.DataFrame
    stability: dict[tuple[str, str], dict[int, str]]  # (claim, dataset) -> seed left out -> label


def run_keys(frame: pd.DataFrame) -> list[tuple]:
    """Each row's run: (dataset, model, seed)."""
    return list(zip(frame["dataset"], frame["model"], frame["seed"], strict=True))


def count_failed(spec: pd.DataFrame, claims: pd.DataFrame, failed: pd.DataFrame) -> list[int]:
    """Per claims row, how many of the pair's matched runs (both variants, its seeds) failed."""
    failed_keys = set(run_keys(failed))
    return [
        sum((row.dataset, model, seed) in failed_keys for model in {row.better, row.baseline} for seed in seeds)
        for row, seeds in zip(spec.itertuples(), claims["seeds"], strict=True)
    ]


@pytest.fixture(scope="module")
def study() -> Study:
    tables = {path.stem: pd.read_csv(path) for path in sorted(TABLES.glob("*.csv"))}
    records = load_records(RUNS)
    failed = failed_runs(records)
    spec = tables["claims"]
    claims = evaluate_study(spec, records)
    claims["n_failed"] = count_failed(spec, claims, failed)
    # Failed runs left out of the whole analysis, families and Holm recomputed (run even when none failed).
    kept = records[[key not in set(run_keys(failed)) for key in run_keys(records)]]
    claims_without_failed = evaluate_study(spec, kept, full=False)
    return Study(tables, records, failed, claims, claims_without_failed, leave_one_seed_out(spec, claims, records))


# --- the tables recomputed --------------------------------------------------------------------------------------------


def comparison_name(row) -> str:
    """A comparison as the tables write it: better - baseline, `@<depth>` on a side scored at a pruned depth."""
    better = row["better"] if pd.isna(row["better_level"]) else f"{row['better']}@{row['better_level']}"
    baseline = row["baseline"] if pd.isna(row["baseline_level"]) else f"{row['baseline']}@{row['baseline_level']}"
    return f"{better} - {baseline}"


def recompute_claims(study: Study) -> tuple[pd.DataFrame, list[str]]:
    """claims.csv: every row's tests, family, power figures and labels, with and without failed runs."""
    recomputed = study.claims.copy()
    recomputed["verdict_without_failed"] = study.claims_without_failed["verdict"]
    columns = [
        "n_seeds", "better_mean", "baseline_mean", "mean_diff", "sd_diff", "ci_low", "ci_high", "t", "p", "p_holm",
        "dz", "wilcoxon_p", "mdd", "seeds_needed", "n_images", "image_mean_diff", "image_p", "tost_p", "tost_ci_low",
        "tost_ci_high", "p_direction", "p_magnitude", "p_direction_holm", "p_magnitude_holm", "family_size",
        "ci_adj_low", "ci_adj_high", "mdd_adj", "seeds_needed_adj", "devices", "n_failed", "q_direction_bh",
        "verdict", "verdict_without_failed",
    ]  # fmt: skip
    return recomputed.reindex(columns=columns), columns


def recompute_claim_verdicts(study: Study) -> tuple[pd.DataFrame, list[str]]:
    """claim_verdicts.csv: each claim on each dataset, its weakest row's label, each comparison's, and stability."""
    spec, claims = study.tables["claims"], study.claims
    committed = study.tables["claim_verdicts"]
    cells = list(dict.fromkeys(zip(spec["claim_id"], spec["dataset"], strict=True)))
    assert list(zip(committed["claim_id"], committed["dataset"], strict=True)) == cells, (
        "not one row per claim and dataset"
    )
    stability = study.stability
    rows = []
    for claim_id, dataset in zip(committed["claim_id"], committed["dataset"], strict=True):
        chosen = (spec["claim_id"] == claim_id) & (spec["dataset"] == dataset)
        verdict = weakest(claims.loc[chosen, "verdict"])
        row = {
            "n_comparisons": int(chosen.sum()),
            "n_failed": int(claims.loc[chosen, "n_failed"].sum()),
            "verdict": verdict,
            "verdict_without_failed": weakest(study.claims_without_failed.loc[chosen, "verdict"]),
            "comparison_verdicts": "",
        }
        if chosen.sum() > 1:
            row["comparison_verdicts"] = "; ".join(
                f"{comparison_name(spec.loc[i])}: {claims.loc[i, 'verdict']}" for i in spec.index[chosen]
            )
        if (claim_id, dataset) in stability:
            kept = list(stability[(claim_id, dataset)].values()).count(verdict)
            row |= {"loo_cases": len(stability[(claim_id, dataset)]), "loo_kept": kept}
            row["fragile"] = kept < row["loo_cases"]
        rows.append(row)
    columns = list(rows[0])[:5] + ["loo_cases", "loo_kept", "fragile"]
    return pd.DataFrame(rows, index=committed.index).reindex(columns=columns), columns


def recompute_claim_stability(study: Study) -> tuple[pd.DataFrame, list[str]]:
    """claim_stability.csv: each decisive cell's label with each seed left out."""
    spec, claims = study.tables["claims"], study.claims
    committed = study.tables["claim_stability"]
    stability = study.stability
    found = set(zip(committed["claim_id"], committed["dataset"], strict=True))
    assert found == set(stability), f"decisive cells: table {sorted(found)}, recomputed {sorted(stability)}"
    rows = []
    for claim_id, dataset in zip(committed["claim_id"], committed["dataset"], strict=True):
        chosen = (spec["claim_id"] == claim_id) & (spec["dataset"] == dataset)
        verdict = weakest(claims.loc[chosen, "verdict"])
        labels = stability[(claim_id, dataset)]
        kept = list(labels.values()).count(verdict)
        row = {"verdict": verdict, "loo_cases": len(labels), "loo_kept": kept, "fragile": kept < len(labels)}
        rows.append(row | {f"without_seed_{seed}": label for seed, label in labels.items()})
    columns = ["verdict", "loo_cases", "loo_kept", "fragile"]
    columns += [column for column in committed.columns if column.startswith("without_seed_")]
    return pd.DataFrame(rows, index=committed.index).reindex(columns=columns), columns


def recompute_c6_margins(study: Study) -> tuple[pd.DataFrame, list[str]]:
    """c6_margins.csv: C6's family re-tested at each margin, as equivalence (TOST) and as non-inferiority."""
    committed = study.tables["c6_margins"]
    spec = study.tables["claims"]
    c6 = spec[spec["claim_id"].isin(committed["claim_id"])]
    expected = (len(c6) + c6["dataset"].nunique()) * committed["margin"].nunique()  # each comparison, and the weakest
    assert len(committed) == expected, f"c6_margins.csv has {len(committed)} rows, not {expected}"
    rows = pd.DataFrame(index=committed.index, dtype=object)
    for claim_id, margin in committed[["claim_id", "margin"]].drop_duplicates().itertuples(index=False):
        comparisons = spec[spec["claim_id"] == claim_id]
        equivalence = evaluate_claim(comparisons.assign(kind="equivalence"), study.records, margin, full=False)
        non_inferiority = evaluate_claim(comparisons.assign(kind="non-inferiority"), study.records, margin, full=False)
        names = comparisons.apply(comparison_name, axis=1)
        for i in comparisons.index:
            at = committed.index[
                (committed["claim_id"] == claim_id)
                & (committed["dataset"] == comparisons.loc[i, "dataset"])
                & (committed["comparison"] == names[i])
                & (committed["margin"] == margin)
            ]
            assert len(at) == 1, (claim_id, names[i], margin)
            tested = equivalence.loc[i]
            for column in ("n_seeds", "mean_diff", "tost_ci_low", "tost_ci_high", "ci_adj_low", "ci_adj_high"):
                rows.loc[at, column] = tested.get(column, np.nan)
            rows.loc[at, "equivalence_p_holm"] = tested.get("p_direction_holm", np.nan)
            rows.loc[at, "equivalence"] = tested["verdict"]
            rows.loc[at, "non_inferiority_p_holm"] = non_inferiority.loc[i].get("p_direction_holm", np.nan)
            rows.loc[at, "non_inferiority"] = non_inferiority.loc[i, "verdict"]
        for dataset in comparisons["dataset"].unique():
            at = committed.index[
                (committed["claim_id"] == claim_id)
                & (committed["dataset"] == dataset)
                & (committed["comparison"] == "all comparisons (weakest)")
                & (committed["margin"] == margin)
            ]
            on_dataset = comparisons.index[comparisons["dataset"] == dataset]
            rows.loc[at, "equivalence"] = weakest(equivalence.loc[on_dataset, "verdict"])
            rows.loc[at, "non_inferiority"] = weakest(non_inferiority.loc[on_dataset, "verdict"])
    rows["declared"] = committed["margin"] == MARGIN
    columns = [
        "declared", "n_seeds", "mean_diff", "tost_ci_low", "tost_ci_high", "ci_adj_low", "ci_adj_high",
        "equivalence_p_holm", "equivalence", "non_inferiority_p_holm", "non_inferiority",
    ]  # fmt: skip
    return rows.reindex(columns=columns), columns


def recompute_results(study: Study) -> tuple[pd.DataFrame, list[str]]:
    """results.csv: every dataset/model's mean and s.d. over its seeds, its parameters and GFLOPs."""
    grouped = study.records.groupby(["dataset", "model"])
    recomputed = grouped.size().rename("n_seeds").to_frame()
    for metric in SCORE_METRICS:
        recomputed[f"{metric}_mean"] = grouped[metric].mean()
        recomputed[f"{metric}_sd"] = grouped[metric].std(ddof=1)
    assert (grouped["params"].nunique() == 1).all() and (grouped["flops"].nunique() == 1).all()
    recomputed["params"] = grouped["params"].first()
    recomputed["gflops"] = grouped["flops"].first() / 1e9
    return recomputed.reset_index(), list(recomputed.columns)


def recompute_pruning(study: Study) -> tuple[pd.DataFrame, list[str]]:
    """pruning.csv: the runs scored at pruned depths, each depth's scores, its IoU against full depth, its GFLOPs."""
    depths = sorted(column.partition("@")[2] for column in study.records if column.startswith("iou@L"))
    full_depth = depths[-1]  # the deepest head is the network at full depth
    rows = []
    for (dataset, model), cell in study.records.groupby(["dataset", "model"]):
        if cell[f"iou@{full_depth}"].isna().all():
            continue
        for depth in [*depths, "average"]:
            iou, full = cell[f"iou@{depth}"], cell[f"iou@{full_depth}"]
            rows.append(
                {
                    "dataset": dataset,
                    "model": model,
                    "depth": depth,
                    "n_seeds": int(iou.notna().sum()),
                    "dice_mean": cell[f"dice@{depth}"].mean(),
                    "dice_sd": cell[f"dice@{depth}"].std(ddof=1),
                    "iou_mean": iou.mean(),
                    "iou_sd": iou.std(ddof=1),
                    "iou_vs_full": (iou - full).mean(),  # each seed against the same run at full depth
                    "gflops": cell[f"flops@{depth}"].iloc[0] / 1e9,
                    "gflops_vs_full": cell[f"flops@{depth}"].iloc[0] / cell[f"flops@{full_depth}"].iloc[0],
                }
            )
    recomputed = pd.DataFrame(rows)
    return recomputed, [column for column in recomputed if column not in ("dataset", "model", "depth")]


def recompute_unetpp_paper_dsb2018(study: Study) -> tuple[pd.DataFrame, list[str]]:
    """unetpp_paper_dsb2018.csv: each listed variant on DSB2018 in the listed metric and in foreground IoU, x 100."""
    committed = study.tables["unetpp_paper_dsb2018"]
    rows = []
    for spec in committed.itertuples():
        scores = 100 * seed_scores(study.records, PAPER_DATASET, spec.study_variant, spec.metric)
        foreground = 100 * seed_scores(study.records, PAPER_DATASET, spec.study_variant, "iou")
        n = len(scores)
        row = {"n_seeds": n, "mean": scores.mean(), "gap_to_paper": scores.mean() - spec.paper_iou}
        row["ci_low"], row["ci_high"] = t_interval(scores.mean(), scores.std(ddof=1), n, ALPHA)
        row["foreground_iou"] = foreground.mean()
        row["foreground_iou_ci_low"], row["foreground_iou_ci_high"] = t_interval(
            foreground.mean(), foreground.std(ddof=1), len(foreground), ALPHA
        )
        rows.append(row)
    columns = [
        "n_seeds", "mean", "ci_low", "ci_high", "gap_to_paper", "foreground_iou", "foreground_iou_ci_low",
        "foreground_iou_ci_high",
    ]  # fmt: skip
    return pd.DataFrame(rows, index=committed.index).reindex(columns=columns), columns


def recompute_unetpp_paper_metric_bridge(study: Study) -> tuple[pd.DataFrame, list[str]]:
    """unetpp_paper_metric_bridge.csv: per listed variant (`all`: every variant the paper table lists in the paper's
    metric), over its runs that record keras_mean_iou, the mean paired difference to miou_bg and to iou, x 100."""
    committed = study.tables["unetpp_paper_metric_bridge"]
    paper = study.tables["unetpp_paper_dsb2018"]
    own = list(paper.loc[paper["metric"] == "keras_mean_iou", "study_variant"])
    on_dataset = study.records[study.records["dataset"] == PAPER_DATASET]
    rows = []
    for variant in committed["study_variant"]:
        runs = on_dataset[on_dataset["model"].isin(own if variant == "all" else [variant])]
        runs = runs[runs["keras_mean_iou"].notna()] if "keras_mean_iou" in runs else runs.iloc[:0]
        row = {"n_runs": len(runs)}
        for against in ("miou_bg", "iou"):
            differences = 100 * (runs["keras_mean_iou"] - runs[against]) if len(runs) else pd.Series(dtype=float)
            name = f"keras_minus_{against}"
            row[name] = differences.mean() if len(differences) else np.nan
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = (
                t_interval(differences.mean(), differences.std(ddof=1), len(differences), ALPHA)
                if len(differences) > 1
                else (np.nan, np.nan)
            )
        rows.append(row)
    columns = [f"keras_minus_{against}{end}" for against in ("miou_bg", "iou") for end in ("", "_ci_low", "_ci_high")]
    return pd.DataFrame(rows, index=committed.index), ["n_runs", *columns]


def recompute_failed_runs(study: Study) -> tuple[pd.DataFrame, list[str]]:
    """failed_runs.csv: the runs that failed."""
    return study.failed, ["best_val_dice", "others_median", "threshold", "dice"]


RECOMPUTE = {
    "claims": recompute_claims,
    "claim_verdicts": recompute_claim_verdicts,
    "claim_stability": recompute_claim_stability,
    "c6_margins": recompute_c6_margins,
    "results": recompute_results,
    "pruning": recompute_pruning,
    "unetpp_paper_dsb2018": recompute_unetpp_paper_dsb2018,
    "unetpp_paper_metric_bridge": recompute_unetpp_paper_metric_bridge,
    "failed_runs": recompute_failed_runs,
}
# Tables whose rows are recomputed from the records (the others' rows are the specification): the key columns.
ROW_KEYS = {
    "results": ["dataset", "model"],
    "pruning": ["dataset", "model", "depth"],
    "failed_runs": ["dataset", "model", "seed"],
}


# --- comparing --------------------------------------------------------------------------------------------------------


def as_text(value) -> str:
    """A label-like cell as text: empty for a missing value, an integral float as an integer, a bool as True/False."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def row_name(committed: pd.DataFrame, index) -> str:
    """A committed row named by its identifying columns, for a readable message."""
    keys = ("claim_id", "dataset", "model", "seed", "depth", "comparison", "margin", "network")
    named = [f"{committed.loc[index, key]}" for key in keys if key in committed]
    if "better" in committed:
        named.append(comparison_name(committed.loc[index]))
    if "metric" in committed and "network" in committed:
        named.append(f"{committed.loc[index, 'study_variant']} ({committed.loc[index, 'metric']})")
    elif "study_variant" in committed:
        named.append(str(committed.loc[index, "study_variant"]))
    return " ".join(named)


def disagreements(committed: pd.DataFrame, recomputed: pd.DataFrame, columns: list[str]) -> list[str]:
    """Each cell of `columns` where the committed table and the recomputation (aligned on the index) differ: numbers
    beyond the tolerance, or present in one and missing in the other; text (labels) not identical."""
    found = []
    for column in columns:
        ours, theirs = recomputed[column], committed[column] if column in committed else None
        if theirs is None:
            found.append(f"column {column} missing from the committed table")
            continue
        numeric = pd.api.types.is_numeric_dtype(theirs) and not pd.api.types.is_bool_dtype(theirs)
        for index in committed.index:
            mine, table = ours.get(index, np.nan), theirs[index]
            if numeric and not isinstance(mine, str | bool):
                mine, table = float(mine), float(table)
                if math.isnan(mine) and math.isnan(table):
                    continue
                if math.isclose(table, mine, rel_tol=RELATIVE_TOLERANCE, abs_tol=ABSOLUTE_TOLERANCE):
                    continue
            elif as_text(mine) == as_text(table):
                continue
            found.append(f"{row_name(committed, index)}: {column}: table {table!r}, recomputed {mine!r}")
    return found


@pytest.mark.parametrize("table", list(RECOMPUTE))
def test_the_committed_table_agrees_with_the_recomputation_from_the_records(study, table):
    committed = study.tables[table]
    recomputed, columns = RECOMPUTE[table](study)
    if table in ROW_KEYS:
        keys = ROW_KEYS[table]
        theirs = set(committed[keys].itertuples(index=False, name=None))
        ours = set(recomputed[keys].itertuples(index=False, name=None))
        assert theirs == ours, (
            f"{table}: rows only in the table {sorted(theirs - ours)}, only recomputed {sorted(ours - theirs)}"
        )
        recomputed = committed[keys].merge(recomputed, on=keys, how="left").set_index(committed.index)
    found = disagreements(committed, recomputed, columns)
    assert not found, f"{table}.csv disagrees with the recomputation in {len(found)} cell(s):\n" + "\n".join(found)


def test_a_claim_row_is_not_run_exactly_when_a_variant_has_no_runs_on_its_dataset(study):
    """The tables' `not run` rows are the specification's rows the records cannot test, and no others."""
    spec, records = study.tables["claims"], study.records
    cells = set(zip(records["dataset"], records["model"], strict=True))
    untestable = [
        (dataset, better) not in cells or (dataset, baseline) not in cells
        for dataset, better, baseline in zip(spec["dataset"], spec["better"], spec["baseline"], strict=True)
    ]
    assert list(spec["verdict"] == NOT_RUN) == untestable


def test_a_value_changed_beyond_the_tolerance_is_found(study):
    """The comparison can fail: a claims table that is the recomputation itself but for one p-value moved by ten
    times the tolerance and one label changed differs in exactly those two cells (whatever the committed table)."""
    recomputed, columns = recompute_claims(study)
    altered = study.tables["claims"].drop(columns=columns).join(recomputed)
    tested = altered.index[altered["p_direction"].notna()][0]
    altered.loc[tested, "p_direction"] *= 1 + 10 * RELATIVE_TOLERANCE
    altered.loc[tested, "verdict"] = "reproduced" if altered.loc[tested, "verdict"] != "reproduced" else "reversed"
    found = disagreements(altered, recomputed, columns)
    assert len(found) == 2 and ": p_direction: " in found[0] and ": verdict: " in found[1], found
