"""Test every published claim on every dataset: the statistics of each row, its family, and its label.

One row per claim × comparison × dataset (a claim restricted to some datasets has rows on those only). The
statistics come from ``repro.analysis.stats``; the label from ``repro.analysis.verdicts`` (the rule, in one short
module).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

from repro.analysis import verdicts
from repro.analysis.claims import CLAIMS, Claim, Comparison
from repro.analysis.run_results import RUN_KEYS, RunResults, failed_runs
from repro.analysis.stats import (
    bootstrap_two_level,
    holm_bonferroni,
    minimal_detectable_difference,
    paired_ttest,
    seeds_needed,
    tost_paired,
    wilcoxon_signed_rank,
)
from repro.analysis.tables import comparison_names

CLAIM_COLUMNS = [
    "claim_id",
    "title",
    "kind",
    "dataset",
    "better",
    "baseline",
    "metric",
    "claimed_difference",
    "claimed_on",
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
    "p_direction",
    "p_magnitude",
    "p_direction_holm",
    "p_magnitude_holm",
    "family_size",
    "ci_adj_low",
    "ci_adj_high",
    "mdd_adj",
    "seeds_needed_adj",
    "boot_ci_low",
    "boot_ci_high",
    "devices",
    "n_failed",
    "verdict",
    "verdict_without_failed",
    # Added with the UNet++ claims; last, so that the rows of the earlier claims keep their columns in place.
    "sensitivity_of",
    "better_level",
    "baseline_level",
    "design",
    # Secondary, outside the rule: the study-wide Benjamini-Hochberg q-value of p_direction (every row that ran,
    # all claims together). Last, so that every earlier column keeps its place.
    "q_direction_bh",
]
BOOTSTRAP_RESAMPLES = 10_000
# The margins of C6's sensitivity table (the declared one, params.yaml's aggregate.tost_margin, is always added).
C6_MARGINS = (0.005, 0.01, 0.02)


def score_column(metric: str, level: str | None) -> str:
    """The ``RunResults.per_seed`` column of a metric, at a pruned depth or (level None) the run's own score."""
    return metric if level is None else f"pruned_{level}_{metric}"


def seed_pairs(runs_df: pd.DataFrame, row: dict) -> pd.DataFrame:
    """Seed-matched scores of a row's two sides on its dataset.

    Args:
        runs_df: ``RunResults.per_seed``.
        row: a claims-table row: ``dataset``, ``better``, ``baseline``, ``metric``, ``better_level`` and
            ``baseline_level`` (None or NaN: the run's own score).

    Returns:
        Columns ``better`` and ``baseline`` indexed by the seeds both variants have (possibly empty).

    Raises:
        ValueError: a side is scored at a pruned depth that some of its runs were not evaluated at.
    """
    on_dataset = runs_df[runs_df["dataset"] == row["dataset"]].set_index("seed")
    by_variant = {}
    for role in ("better", "baseline"):
        model, level = row[role], row[f"{role}_level"]
        column = score_column(row["metric"], None if pd.isna(level) else level)
        runs = on_dataset[on_dataset["model"] == model]
        missing = runs.index if column not in runs else runs.index[runs[column].isna()]
        if len(missing):
            score = f"test {row['metric']}" if column == row["metric"] else f"test_pruned[{level}] {row['metric']}"
            raise ValueError(
                f"runs of {row['dataset']}/{model}: seeds {sorted(missing)} have no {score} in metrics.json, "
                f"which the {row['claim_id']} comparison scores them by"
            )
        by_variant[role] = runs[column]
    return pd.concat(by_variant, axis=1, join="inner").sort_index()


def _image_scores(per_image: pd.DataFrame, dataset: str, model: str, seeds: Sequence[int]) -> pd.DataFrame:
    """The per-image rows of one variant's runs with the given seeds on one dataset."""
    return per_image[(per_image["dataset"] == dataset) & (per_image["model"] == model) & per_image["seed"].isin(seeds)]


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
    by_variant = {
        role: _image_scores(per_image, dataset, model, seeds).groupby("id")[metric].mean()
        for role, model in (("better", better), ("baseline", baseline))
    }
    return pd.concat(by_variant, axis=1, join="inner")


def image_differences(
    per_image: pd.DataFrame, dataset: str, better: str, baseline: str, metric: str, seeds: Sequence[int]
) -> pd.DataFrame:
    """Per seed and test image, the score of ``better`` minus that of ``baseline`` (same seed, same image).

    Args:
        per_image: ``RunResults.per_image``.
        dataset: the dataset.
        better: first variant.
        baseline: second variant.
        metric: the score column.
        seeds: the matched seeds.

    Returns:
        Seeds as rows, the image ids every run of both variants was scored on as columns.
    """

    def scores(model: str) -> pd.DataFrame:
        return _image_scores(per_image, dataset, model, seeds).pivot(index="seed", columns="id", values=metric)

    return (scores(better) - scores(baseline)).reindex(list(seeds)).dropna(axis=1)


def _row_seed(bootstrap_seed: int, *key: str) -> list[int]:
    """Generator seed of one row's bootstrap: the study's seed and a stable hash of the row, so a row's
    interval does not depend on which other rows exist."""
    return [bootstrap_seed, zlib.crc32("/".join(key).encode())]


def _devices(per_seed: pd.DataFrame, dataset: str, models: Sequence[str], seeds: Sequence[int]) -> str:
    """The devices the pair's runs were trained on, sorted and joined by "; "."""
    rows = per_seed[(per_seed["dataset"] == dataset) & per_seed["model"].isin(models) & per_seed["seed"].isin(seeds)]
    return "; ".join(sorted({str(device) for device in rows["device"]}))


def _compare(
    runs: RunResults,
    claim: Claim,
    comparison: Comparison,
    dataset: str,
    *,
    alpha: float,
    tost_margin: float,
    power: float,
    seeds_cap: int,
    n_resamples: int,
    bootstrap_seed: int,
) -> dict:
    """The statistics of one row that need nothing from the rest of its family.

    Args:
        runs: the loaded runs.
        claim: the claim.
        comparison: the comparison of the claim.
        dataset: the dataset.
        alpha: significance level.
        tost_margin: equivalence margin.
        power: power for the MDD and the seeds needed.
        seeds_cap: largest number of seeds ``seeds_needed`` considers.
        n_resamples: bootstrap resamples (0: no bootstrap).
        bootstrap_seed: the study's bootstrap seed.

    Returns:
        A row of the claims table (a subset of ``CLAIM_COLUMNS``).
    """
    better, baseline, claimed = comparison.better, comparison.baseline, comparison.claimed_difference
    row = {
        "claim_id": claim.id,
        "title": claim.title,
        "kind": claim.kind,
        "dataset": dataset,
        "better": better,
        "baseline": baseline,
        "metric": claim.metric,
        "claimed_difference": claimed,
        "claimed_on": comparison.claimed_on,
        "sensitivity_of": claim.sensitivity_of,
        "better_level": comparison.better_level,
        "baseline_level": comparison.baseline_level,
        "design": comparison.design,
    }
    models = set(runs.per_seed.loc[runs.per_seed["dataset"] == dataset, "model"])
    if not {better, baseline} <= models:
        return row | {"verdict": verdicts.NOT_RUN}
    pairs = seed_pairs(runs.per_seed, row)
    row |= {
        "n_seeds": len(pairs),
        "better_mean": pairs["better"].mean(),
        "baseline_mean": pairs["baseline"].mean(),
        "devices": _devices(runs.per_seed, dataset, [better, baseline], pairs.index),
    }
    if len(pairs) < 2:
        return row | {"verdict": verdicts.INCONCLUSIVE}
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
    if claim.kind == "equivalence":
        tost = tost_paired(pairs["better"], pairs["baseline"], tost_margin, alpha)
        row |= {"tost_p": tost.p, "tost_ci_low": tost.ci_low, "tost_ci_high": tost.ci_high, "p_direction": tost.p}
    elif claim.kind == "non-inferiority":
        # H0: mean d <= -margin against H1: mean d > -margin.
        non_inferiority = paired_ttest(
            pairs["better"], pairs["baseline"], alternative="greater", null_difference=-tost_margin
        )
        row["p_direction"] = non_inferiority.p
    else:
        row["p_direction"] = ttest.p
        if claimed is not None:
            row["seeds_needed"] = str(seeds_needed(ttest.sd_diff, claimed, alpha, power, seeds_cap))
            magnitude = paired_ttest(pairs["better"], pairs["baseline"], alternative="less", null_difference=claimed)
            row["p_magnitude"] = magnitude.p
    if comparison.better_level is not None or comparison.baseline_level is not None:
        # The training stage writes per-image scores of the run's own output only (per_image.csv), none per
        # pruned depth: such a row has neither the per-image test nor the bootstrap.
        return row
    images = _image_pairs(runs.per_image, dataset, better, baseline, claim.metric, pairs.index)
    if len(images) >= 2:
        image_ttest = paired_ttest(images["better"], images["baseline"])
        row |= {"n_images": len(images), "image_mean_diff": image_ttest.mean_diff, "image_p": image_ttest.p}
    if n_resamples:
        diffs = image_differences(runs.per_image, dataset, better, baseline, claim.metric, pairs.index)
        if diffs.shape[1]:
            seed = _row_seed(bootstrap_seed, claim.id, dataset, better, baseline)
            low, high = bootstrap_two_level(diffs.to_numpy(), 1 - alpha, n_resamples, seed)
            row |= {"boot_ci_low": low, "boot_ci_high": high}
    return row


def _family(
    rows: list[dict],
    runs: RunResults,
    *,
    kind: str,
    alpha: float,
    tost_margin: float,
    power: float,
    seeds_cap: int,
) -> None:
    """Holm over one claim's family, the intervals and power at alpha/m, and each row's label (in place).

    Args:
        rows: the claim's rows from ``_compare``.
        runs: the loaded runs.
        kind: the claim's kind.
        alpha: family-wise level.
        tost_margin: equivalence margin.
        power: power for the MDD and the seeds needed.
        seeds_cap: largest number of seeds ``seeds_needed`` considers.
    """
    family = [row for row in rows if "p_direction" in row]
    tests = [(row, key) for row in family for key in ("p_direction", "p_magnitude") if key in row]
    adjusted = holm_bonferroni([row[key] for row, key in tests])
    for (row, key), p_adjusted in zip(tests, adjusted, strict=True):
        row[f"{key}_holm"] = float(p_adjusted)
    m = len(tests)
    for row in family:
        pairs = seed_pairs(runs.per_seed, row)
        # The interval that matches the family test: Bonferroni at alpha/m, two-sided for superiority; for
        # equivalence the TOST at alpha/m, whose interval is (1 - 2 alpha/m); for non-inferiority the same
        # interval, whose ends are the one-sided (1 - alpha/m) bounds.
        level = 1 - alpha / m if kind == "superiority" else 1 - 2 * alpha / m
        adjusted_ttest = paired_ttest(pairs["better"], pairs["baseline"], confidence_level=level)
        row |= {
            "family_size": m,
            "ci_adj_low": adjusted_ttest.ci_low,
            "ci_adj_high": adjusted_ttest.ci_high,
            "mdd_adj": minimal_detectable_difference(row["sd_diff"], row["n_seeds"], alpha / m, power),
        }
        if kind == "equivalence":
            row["verdict"] = verdicts.equivalence_label(
                row["p_direction_holm"], row["tost_ci_low"], row["tost_ci_high"], tost_margin, alpha
            )
            continue
        if kind == "non-inferiority":
            row["seeds_needed_adj"] = str(seeds_needed(row["sd_diff"], tost_margin, alpha / m, power, seeds_cap))
            row["verdict"] = verdicts.non_inferiority_label(
                row["p_direction_holm"], row["ci_adj_high"], row["mdd_adj"], tost_margin, alpha
            )
            continue
        row["p_holm"] = row["p_direction_holm"]
        claimed = row["claimed_difference"]
        target = verdicts.DEFAULT_DIFFERENCE if claimed is None else claimed
        row["seeds_needed_adj"] = str(seeds_needed(row["sd_diff"], target, alpha / m, power, seeds_cap))
        row["verdict"] = verdicts.superiority_label(
            row["mean_diff"], row["p_direction_holm"], row.get("p_magnitude_holm"), row["mdd_adj"], claimed, alpha
        )


def _evaluate(
    runs: RunResults,
    claims: Sequence[Claim],
    *,
    alpha: float,
    tost_margin: float,
    power: float,
    seeds_cap: int,
    n_resamples: int,
    bootstrap_seed: int,
) -> pd.DataFrame:
    """Every row of every claim, with its family statistics and label (no failed-run columns)."""
    study_datasets = sorted(runs.per_seed["dataset"].unique())
    table = []
    for claim in claims:
        datasets = study_datasets if claim.datasets is None else list(claim.datasets)
        rows = [
            _compare(
                runs,
                claim,
                comparison,
                dataset,
                alpha=alpha,
                tost_margin=tost_margin,
                power=power,
                seeds_cap=seeds_cap,
                n_resamples=n_resamples,
                bootstrap_seed=bootstrap_seed,
            )
            for comparison in claim.comparisons
            for dataset in datasets
        ]
        _family(rows, runs, kind=claim.kind, alpha=alpha, tost_margin=tost_margin, power=power, seeds_cap=seeds_cap)
        table += rows
    return pd.DataFrame(table, columns=CLAIM_COLUMNS)


def _count_failed(table: pd.DataFrame, runs: RunResults, failed: pd.DataFrame) -> list[int]:
    """Per row, how many of the pair's seed-matched runs failed."""
    failed_keys = set(failed[RUN_KEYS].itertuples(index=False, name=None))
    counts = []
    for row in table.to_dict("records"):
        if pd.isna(row["n_seeds"]):
            counts.append(0)
            continue
        seeds = seed_pairs(runs.per_seed, row).index
        # A comparison of one variant at two depths counts each failed run once.
        models = dict.fromkeys((row["better"], row["baseline"]))
        counts.append(sum((row["dataset"], model, int(seed)) in failed_keys for model in models for seed in seeds))
    return counts


def evaluate_claims(
    runs: RunResults,
    claims: Sequence[Claim] = CLAIMS,
    *,
    alpha: float = 0.05,
    tost_margin: float = 0.02,
    power: float = 0.8,
    seeds_cap: int = 100,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    bootstrap_seed: int = 0,
    failed: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Test every claim comparison on every dataset and label it by ``repro.analysis.verdicts``.

    Per row, on seed-matched runs (d = better - baseline in the claim's metric, each side at its pruned depth
    where the comparison names one): the paired t-test with its
    ``1 - alpha`` CI and Cohen's d_z (``p`` = ``p_direction`` for superiority), the Wilcoxon p, the MDD and
    seeds needed at ``alpha`` (as before) and at ``alpha/m`` (``mdd_adj``, ``seeds_needed_adj``; for a
    difference of 0.01 without a claimed D), the one-sided ``p_magnitude`` against the claimed D, Holm over the
    claim's family (``p_direction_holm``, ``p_magnitude_holm``; ``p_holm`` repeats ``p_direction_holm``), the
    Bonferroni interval at the family's level, TOST for equivalence (``p_direction`` is then the TOST p), the
    one-sided test of H0 mean d <= -margin for non-inferiority (``p_direction`` is then its p), the
    per-image t-test (each image averaged over the matched seeds; conditional on the trained models), a
    two-level bootstrap interval (seeds, then test images; ``1 - alpha``), the devices of the pair's runs, the
    number of failed runs among them, the verdict with the failed runs left out of the whole analysis, and, as a
    secondary column outside the rule, the Benjamini-Hochberg q-value of ``p_direction`` over every row of the
    study that ran (``q_direction_bh``, :func:`study_wide_bh`).

    Args:
        runs: the loaded runs.
        claims: the claims to evaluate.
        alpha: family-wise significance level.
        tost_margin: equivalence and non-inferiority margin in the claim's metric.
        power: power for the MDD and the seeds needed.
        seeds_cap: largest number of seeds reported by ``seeds_needed`` (beyond: "> cap").
        n_resamples: bootstrap resamples per row.
        bootstrap_seed: seed of the bootstrap (with each row's key), so the table is the same on every run.
        failed: the failed runs (default: ``failed_runs(runs.per_seed)``).

    Returns:
        One row per claim × comparison × dataset with ``CLAIM_COLUMNS``.
    """
    settings = {"alpha": alpha, "tost_margin": tost_margin, "power": power, "seeds_cap": seeds_cap}
    table = _evaluate(runs, claims, n_resamples=n_resamples, bootstrap_seed=bootstrap_seed, **settings)
    failed = failed_runs(runs.per_seed) if failed is None else failed
    table["n_failed"] = _count_failed(table, runs, failed)
    without = _evaluate(runs.without(failed), claims, n_resamples=0, bootstrap_seed=bootstrap_seed, **settings)
    table["verdict_without_failed"] = without["verdict"].to_numpy()
    table["q_direction_bh"] = study_wide_bh(table)
    return table.astype({"n_seeds": "Int64", "n_images": "Int64", "family_size": "Int64"})


def _cell_labels(claims_table: pd.DataFrame) -> pd.Series:
    """The label of each claim × dataset (its weakest row that ran), indexed by (claim_id, dataset) in table order."""
    grouped = claims_table.groupby(["claim_id", "dataset"], sort=False)["verdict"]
    return grouped.agg(lambda labels: verdicts.weakest(list(labels)))


def _comparison_verdicts(claims_table: pd.DataFrame) -> pd.Series:
    """Per claim × dataset, ``better - baseline: label`` of each of its comparisons joined by "; " (the steps of an
    ordering such as C7's); "" for a claim with one comparison, whose row label is the claim's."""
    names = comparison_names(claims_table)
    texts = {}
    for key, rows in claims_table.groupby(["claim_id", "dataset"], sort=False):
        if len(rows) < 2:
            texts[key] = ""
            continue
        texts[key] = "; ".join(f"{names[index]}: {label}" for index, label in rows["verdict"].items())
    return pd.Series(texts, dtype=object)


def claim_verdicts(claims_table: pd.DataFrame, stability: pd.DataFrame | None = None) -> pd.DataFrame:
    """One verdict per claim × dataset: the label of its weakest row that ran (``verdicts.weakest``).

    Args:
        claims_table: output of ``evaluate_claims``.
        stability: output of ``leave_one_seed_out`` for the same runs and settings (None: not computed, the
            stability columns stay empty).

    Returns:
        Columns claim_id, title, dataset, n_comparisons, n_failed, verdict, verdict_without_failed, then (added
        later, last) comparison_verdicts (each comparison's own label where the claim has several: the steps of
        C7's ordering, C6's three light networks), loo_cases, loo_kept (of the leave-one-seed-out analyses, how
        many keep a decisive label; empty for a label that is not decisive) and fragile (loo_kept < loo_cases).
    """
    grouped = claims_table.groupby(["claim_id", "title", "dataset"], sort=False)
    combined = grouped.agg(
        n_comparisons=("verdict", "size"),
        n_failed=("n_failed", "sum"),
        verdict=("verdict", lambda labels: verdicts.weakest(list(labels))),
        verdict_without_failed=("verdict_without_failed", lambda labels: verdicts.weakest(list(labels))),
    )
    combined = combined.reset_index().astype({"n_failed": "int64"})
    steps = _comparison_verdicts(claims_table)
    keys = zip(combined["claim_id"], combined["dataset"], strict=True)
    combined["comparison_verdicts"] = [steps[key] for key in keys]
    stability_columns = ["claim_id", "dataset", "loo_cases", "loo_kept"]
    kept = pd.DataFrame(columns=stability_columns) if stability is None else stability[stability_columns]
    combined = combined.merge(kept, on=["claim_id", "dataset"], how="left", validate="one_to_one")
    combined = combined.astype({"loo_cases": "Int64", "loo_kept": "Int64"})
    combined["fragile"] = (combined["loo_kept"] < combined["loo_cases"]).astype("boolean")
    return combined


def _claim_seeds(claims_table: pd.DataFrame, runs: RunResults) -> dict[str, list[int]]:
    """Per claim, the seeds matched in any of its rows that ran (every dataset of the claim together)."""
    seeds: dict[str, set[int]] = {}
    for row in claims_table.to_dict("records"):
        if pd.isna(row["n_seeds"]):
            continue
        matched = seed_pairs(runs.per_seed, row).index
        seeds.setdefault(row["claim_id"], set()).update(int(seed) for seed in matched)
    return {claim_id: sorted(claim_seeds) for claim_id, claim_seeds in seeds.items()}


def leave_one_seed_out(
    runs: RunResults,
    claims: Sequence[Claim] = CLAIMS,
    *,
    alpha: float = 0.05,
    tost_margin: float = 0.02,
    power: float = 0.8,
    seeds_cap: int = 100,
) -> pd.DataFrame:
    """How stable each decisive label of a claim × dataset is when one seed is left out.

    For each seed of a claim (every seed matched in any of its rows, on any of its datasets), that seed's runs are
    dropped from every variant and dataset, and the whole analysis is redone on what remains exactly as
    ``evaluate_claims`` does it: each row's tests, the claim's family and Holm over it, the intervals and power at
    alpha/m, each row's label and the claim's weakest label per dataset. A decisive label (``verdicts.DECISIVE``)
    is **fragile** when any of these leave-one-out analyses gives its cell another label.

    Args:
        runs: the loaded runs.
        claims: the claims.
        alpha: family-wise significance level.
        tost_margin: equivalence and non-inferiority margin.
        power: power for the MDD and the seeds needed.
        seeds_cap: largest number of seeds ``seeds_needed`` considers.

    Returns:
        One row per claim × dataset with a decisive label, in the claims table's order: claim_id, dataset,
        verdict, loo_cases (the claim's seeds: one analysis without each), loo_kept (how many keep the label),
        fragile, then ``without_seed_<k>``: the cell's label without seed k (empty for a seed the claim has not).
    """
    settings = {"alpha": alpha, "tost_margin": tost_margin, "power": power, "seeds_cap": seeds_cap}
    full = _evaluate(runs, claims, n_resamples=0, bootstrap_seed=0, **settings)
    labels = _cell_labels(full)
    decisive = [key for key, label in labels.items() if label in verdicts.DECISIVE]
    claim_seeds = _claim_seeds(full, runs)
    tested = [claim for claim in claims if any(claim.id == claim_id for claim_id, _ in decisive)]
    all_seeds = sorted({seed for claim_id, _ in decisive for seed in claim_seeds[claim_id]})
    without = {}
    for seed in all_seeds:
        dropped = runs.per_seed.loc[runs.per_seed["seed"] == seed, RUN_KEYS]
        reduced = _evaluate(runs.without(dropped), tested, n_resamples=0, bootstrap_seed=0, **settings)
        without[seed] = _cell_labels(reduced)
    columns = ["claim_id", "dataset", "verdict", "loo_cases", "loo_kept", "fragile"]
    columns += [f"without_seed_{seed}" for seed in all_seeds]
    rows = []
    for claim_id, dataset in decisive:
        label = labels[(claim_id, dataset)]
        cases = {seed: without[seed][(claim_id, dataset)] for seed in claim_seeds[claim_id]}
        kept = sum(other == label for other in cases.values())
        rows.append(
            {
                "claim_id": claim_id,
                "dataset": dataset,
                "verdict": label,
                "loo_cases": len(cases),
                "loo_kept": kept,
                "fragile": kept < len(cases),
            }
            | {f"without_seed_{seed}": other for seed, other in cases.items()}
        )
    table = pd.DataFrame(rows, columns=columns)
    return table.astype({"loo_cases": "int64", "loo_kept": "int64", "fragile": "bool"})


def benjamini_hochberg(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) of independent or positively dependent tests.

    With p sorted ascending, q_(i) = min over j >= i of min(1, m p_(j) / j); a test is significant at false
    discovery rate alpha iff q < alpha (equivalently <=, up to ties at alpha).

    Args:
        pvalues: the p-values, each in [0, 1].

    Returns:
        The q-values in the input order.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1 or np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"p-values must be a 1-d sequence of numbers in [0, 1], got {pvalues!r}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    q = np.empty(m)
    q[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return q


def study_wide_bh(claims_table: pd.DataFrame) -> pd.Series:
    """The Benjamini-Hochberg q-value of each row's ``p_direction`` over every row of the study that has one (all
    claims together; NaN for rows that did not run): a secondary, study-wide reading beside the rule's Holm
    within each claim, which it does not replace.

    Args:
        claims_table: a claims table with ``p_direction``.

    Returns:
        The q-values on the table's index.
    """
    tested = claims_table["p_direction"].notna()
    q = pd.Series(np.nan, index=claims_table.index)
    q[tested] = benjamini_hochberg(claims_table.loc[tested, "p_direction"].to_numpy(dtype=float))
    return q


def multiple_testing_summary(claims_table: pd.DataFrame, alpha: float = 0.05) -> dict:
    """How many rows' direction tests are significant under the rule's Holm (within each claim) and under the
    secondary study-wide Benjamini-Hochberg, at ``alpha``.

    Args:
        claims_table: output of ``evaluate_claims``.
        alpha: the level (family-wise for Holm, false discovery rate for BH).

    Returns:
        Keys tests (rows with a direction test), holm (p_direction_holm < alpha), bh (q_direction_bh < alpha),
        both, bh_only and holm_only.
    """
    tested = claims_table[claims_table["p_direction"].notna()]
    holm = tested["p_direction_holm"] < alpha
    bh = tested["q_direction_bh"] < alpha
    return {
        "tests": int(len(tested)),
        "holm": int(holm.sum()),
        "bh": int(bh.sum()),
        "both": int((holm & bh).sum()),
        "bh_only": int((bh & ~holm).sum()),
        "holm_only": int((holm & ~bh).sum()),
    }


def _as_non_inferiority(claim: Claim) -> Claim:
    """The claim read one-sided: each comparison's better side at most the margin below its baseline (no number)."""
    comparisons = tuple(
        dataclasses.replace(comparison, claimed_difference=None, claimed_on=None) for comparison in claim.comparisons
    )
    return dataclasses.replace(claim, kind="non-inferiority", comparisons=comparisons)


MARGIN_COLUMNS = [
    "claim_id",
    "dataset",
    "comparison",
    "margin",
    "declared",
    "n_seeds",
    "mean_diff",
    "tost_ci_low",
    "tost_ci_high",
    "ci_adj_low",
    "ci_adj_high",
    "equivalence_p_holm",
    "equivalence",
    "non_inferiority_p_holm",
    "non_inferiority",
]
CLAIM_LINE = "all comparisons (weakest)"


def margin_sensitivity(
    runs: RunResults,
    claim_id: str = "C6",
    margins: Sequence[float] = C6_MARGINS,
    *,
    declared_margin: float = 0.02,
    alpha: float = 0.05,
    power: float = 0.8,
    seeds_cap: int = 100,
    claims: Sequence[Claim] = CLAIMS,
) -> pd.DataFrame:
    """An equivalence claim's labels at several margins, and its one-sided non-inferiority reading beside.

    At each margin the claim's whole family is evaluated as ``evaluate_claims`` does it (TOST, Holm over the
    family, the labels), and again read as a non-inferiority claim (H0: mean d <= -margin, Holm over the same
    rows): a lighter network that is better than its baseline does not count against "matches" there. The
    declared margin's equivalence labels are the primary ones; everything else is secondary.

    Args:
        runs: the loaded runs.
        claim_id: an equivalence claim.
        margins: the margins (the declared one is added when missing).
        declared_margin: the study's margin (params.yaml's aggregate.tost_margin).
        alpha: family-wise level.
        power: power for the MDD.
        seeds_cap: largest number of seeds ``seeds_needed`` considers.
        claims: where to find the claim.

    Returns:
        ``MARGIN_COLUMNS``: per dataset, each comparison and then the claim's weakest label (``comparison`` is
        ``CLAIM_LINE``, numbers empty), at each margin ascending; ``declared`` marks the declared margin. The
        intervals are the unadjusted (1 - 2 alpha) TOST interval and the family's (1 - 2 alpha/m) one.
    """
    (claim,) = [claim for claim in claims if claim.id == claim_id]
    if claim.kind != "equivalence":
        raise ValueError(f"{claim_id} is a {claim.kind} claim, not an equivalence claim")
    settings = {"alpha": alpha, "power": power, "seeds_cap": seeds_cap, "n_resamples": 0, "bootstrap_seed": 0}
    margins = sorted({*margins, declared_margin})
    evaluated = {
        margin: (
            _evaluate(runs, [claim], tost_margin=margin, **settings),
            _evaluate(runs, [_as_non_inferiority(claim)], tost_margin=margin, **settings),
        )
        for margin in margins
    }
    first, _ = evaluated[margins[0]]
    names = comparison_names(first)
    rows = []
    for dataset in dict.fromkeys(first["dataset"]):
        for index in first.index[first["dataset"] == dataset]:
            for margin, (equivalence, one_sided) in evaluated.items():
                row = equivalence.loc[index]
                rows.append(
                    {
                        "claim_id": claim_id,
                        "dataset": dataset,
                        "comparison": names[index],
                        "margin": margin,
                        "declared": margin == declared_margin,
                        "n_seeds": row["n_seeds"],
                        "mean_diff": row["mean_diff"],
                        "tost_ci_low": row["tost_ci_low"],
                        "tost_ci_high": row["tost_ci_high"],
                        "ci_adj_low": row["ci_adj_low"],
                        "ci_adj_high": row["ci_adj_high"],
                        "equivalence_p_holm": row["p_direction_holm"],
                        "equivalence": row["verdict"],
                        "non_inferiority_p_holm": one_sided.loc[index, "p_direction_holm"],
                        "non_inferiority": one_sided.loc[index, "verdict"],
                    }
                )
        for margin, (equivalence, one_sided) in evaluated.items():
            rows.append(
                {
                    "claim_id": claim_id,
                    "dataset": dataset,
                    "comparison": CLAIM_LINE,
                    "margin": margin,
                    "declared": margin == declared_margin,
                    "equivalence": _cell_labels(equivalence)[(claim_id, dataset)],
                    "non_inferiority": _cell_labels(one_sided)[(claim_id, dataset)],
                }
            )
    return pd.DataFrame(rows, columns=MARGIN_COLUMNS).astype({"n_seeds": "Int64"})
