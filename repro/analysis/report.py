"""The study in words and in ``stats.json``: what was run, a worked example of the rule, conclusions per claim.

Every sentence is generated from the tables of ``repro.analysis.evaluation`` and ``repro.analysis.tables``, so it
cannot drift from them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from repro.analysis import verdicts
from repro.analysis.evaluation import claim_verdicts, multiple_testing_summary, seed_pairs
from repro.analysis.run_results import RunResults
from repro.analysis.tables import comparison_names, format_p, kept_text


def _counts(values: pd.Series) -> str:
    """``value (count)`` for each distinct value, most frequent first."""
    counts = values.astype(str).value_counts(sort=False).sort_index()
    counts = counts.sort_values(ascending=False, kind="stable")
    return ", ".join(f"`{value}` ({count})" for value, count in counts.items())


def study_overview(runs: RunResults) -> str:
    """What was run, in Markdown: scale, epochs, image size, datasets, variants, seeds, devices, commits and the
    training code's versions.

    Args:
        runs: the loaded runs.

    Returns:
        A Markdown bullet list.
    """
    per_seed = runs.per_seed
    n_cells = per_seed.groupby(["dataset", "model"]).ngroups
    lines = [
        f"- **{len(per_seed)} runs**: {per_seed['dataset'].nunique()} datasets × {per_seed['model'].nunique()} "
        f"variants ({n_cells} cells), seeds {', '.join(str(s) for s in sorted(per_seed['seed'].unique()))}.",
        f"- Datasets: {', '.join(f'`{d}`' for d in sorted(per_seed['dataset'].unique()))}.",
        f"- Variants: {', '.join(f'`{m}`' for m in sorted(per_seed['model'].unique()))}.",
        f"- Scale: {_counts(per_seed['scale'])}; epochs: {_counts(per_seed['epochs'])}; "
        f"image size: {_counts(per_seed['image_size'])}.",
        f"- Devices (runs): {_counts(per_seed['device'])}.",
        f"- Git commits recorded by the runs (runs): {_counts(per_seed['git_commit'].str.slice(0, 12))}.",
        f"- Training code (`training_code_version`; runs): {_counts(per_seed['training_code'].fillna('none'))}.",
    ]
    return "\n".join(lines) + "\n"


def _signed(value: float, digits: int = 4) -> str:
    return f"{value:+.{digits}f}"


def _tested_rows(claims_table: pd.DataFrame, claim_id: str) -> pd.DataFrame:
    """The rows of ``claim_id`` that were tested (at least 2 matched seeds), in table order."""
    rows = claims_table[claims_table["claim_id"] == claim_id]
    return rows[rows["p_direction"].notna()]


def _no_example(claim_id: str) -> str:
    return f"{claim_id} has no row with at least 2 matched seeds in this study: no worked example.\n"


def _seed_differences(runs: RunResults, row: pd.Series) -> pd.Series:
    """Per matched seed, ``better - baseline`` of a claims-table row, scored as the evaluation scored it."""
    pairs = seed_pairs(runs.per_seed, row)
    return pairs["better"] - pairs["baseline"]


def worked_example(claims_table: pd.DataFrame, runs: RunResults, alpha: float, claim_id: str = "C1") -> str:
    """The rule applied step by step to one row of ``claim_id``, from the data, in Markdown.

    The row is the claim's first tested row (at least 2 matched seeds) in table order.

    Args:
        claims_table: output of ``evaluate_claims``.
        runs: the loaded runs (for the per-seed scores).
        alpha: the family-wise level the table was evaluated at.
        claim_id: the claim.

    Returns:
        The worked example.
    """
    tested = _tested_rows(claims_table, claim_id)
    if tested.empty:
        return _no_example(claim_id)
    row = tested.iloc[0]
    diffs = _seed_differences(runs, row)
    family_p = [
        (f"{r.dataset} {test.split('_')[1]}", getattr(r, test), getattr(r, f"{test}_holm"))
        for r in tested.itertuples(index=False)
        for test in ("p_direction", "p_magnitude")
        if pd.notna(getattr(r, test))
    ]
    m = int(row["family_size"])
    alpha_over_m = alpha / m
    d_text = ", ".join(f"seed {seed}: {_signed(d)}" for seed, d in diffs.items())
    family_text = "; ".join(f"{name} p = {format_p(p)} → Holm {format_p(holm)}" for name, p, holm in family_p)
    claimed = row["claimed_difference"]
    lines = [
        f"**{claim_id} on `{row['dataset']}`** ({row['better']} - {row['baseline']}, {row['metric']}). "
        f"Per-seed differences d: {d_text}; mean d = {_signed(row['mean_diff'])}, s.d. {row['sd_diff']:.4f}.",
        f"1. Direction: two-sided paired t-test of mean d = 0 gives t = {row['t']:.3f}, "
        f"p_direction = {format_p(row['p_direction'])}.",
    ]
    if pd.notna(claimed):
        lines.append(
            f"2. Magnitude: the paper claims D = {_signed(claimed)} (on {row['claimed_on']}); the one-sided test "
            f"of H0 mean d >= D gives p_magnitude = {format_p(row['p_magnitude'])}."
        )
    else:
        lines.append("2. Magnitude: the paper gives no number for this comparison, so there is no p_magnitude.")
    lines += [
        f"3. The family of {claim_id} has m = {m} tests: {family_text}.",
        f"   For this row: p_direction_holm = {format_p(row['p_direction_holm'])}, p_magnitude_holm = "
        f"{format_p(row['p_magnitude_holm']) or 'none'} (compared with alpha = {alpha:g}).",
        f"4. At level alpha/m = {alpha_over_m:.4g}: interval [{row['ci_adj_low']:.4f}, {row['ci_adj_high']:.4f}], "
        f"MDD {row['mdd_adj']:.4f} (power 0.8) against |D| = "
        f"{abs(claimed) if pd.notna(claimed) else verdicts.DEFAULT_DIFFERENCE:.4f}.",
        f"5. Label: **{row['verdict']}**: {verdicts.MEANINGS[row['verdict']]}.",
    ]
    return "\n".join(lines) + "\n"


def non_inferiority_example(
    claims_table: pd.DataFrame, runs: RunResults, alpha: float, margin: float, claim_id: str = "C9"
) -> str:
    """The non-inferiority rule applied step by step to the first tested row of ``claim_id``, in Markdown.

    Args:
        claims_table: output of ``evaluate_claims``.
        runs: the loaded runs (for the per-seed scores).
        alpha: the family-wise level the table was evaluated at.
        margin: the margin it was evaluated at.
        claim_id: a non-inferiority claim.

    Returns:
        The worked example.
    """
    tested = _tested_rows(claims_table, claim_id)
    if tested.empty:
        return _no_example(claim_id)
    row = tested.iloc[0]
    diffs = _seed_differences(runs, row)
    n = len(diffs)
    t_non_inferiority = (row["mean_diff"] + margin) / (row["sd_diff"] / math.sqrt(n))
    m = int(row["family_size"])
    family_text = "; ".join(
        f"{r.dataset} p = {format_p(r.p_direction)} → Holm {format_p(r.p_direction_holm)}"
        for r in tested.itertuples(index=False)
    )
    (name,) = comparison_names(tested.iloc[[0]])
    lines = [
        f"**{claim_id} on `{row['dataset']}`** ({name}, {row['metric']}). Per-seed differences d: "
        + ", ".join(f"seed {seed}: {_signed(d)}" for seed, d in diffs.items())
        + f"; mean d = {_signed(row['mean_diff'])}, s.d. {row['sd_diff']:.4f}.",
        f"1. Non-inferiority: the one-sided paired t-test of H0 mean d <= {-margin:g} against mean d > {-margin:g} "
        f"gives t = {t_non_inferiority:.3f} on {n - 1} degrees of freedom, p_direction = "
        f"{format_p(row['p_direction'])}.",
        f"2. The family of {claim_id} has m = {m} tests: {family_text}.",
        f"3. At level alpha/m = {alpha / m:.4g}: the one-sided upper bound of mean d is {row['ci_adj_high']:.4f} "
        f"(inferior only if below {-margin:g}); MDD {row['mdd_adj']:.4f} (power 0.8) against the margin {margin:g}.",
        f"4. Label: **{row['verdict']}**: {verdicts.MEANINGS[row['verdict']]}.",
    ]
    return "\n".join(lines) + "\n"


def _claim_notes(claim_table: pd.DataFrame, sensitivity_analyses: list[str]) -> str:
    """What a reader needs beside a claim's verdicts: its sensitivity analyses, or whose sensitivity analysis it
    is, and each comparison's design where it is the study's own (empty when none applies)."""
    notes = []
    if sensitivity_analyses:
        notes.append(f" Sensitivity analysis: {', '.join(f'**{claim_id}**' for claim_id in sensitivity_analyses)}.")
    sensitivity_of = claim_table["sensitivity_of"].dropna().unique()
    if len(sensitivity_of):
        datasets = ", ".join(f"`{d}`" for d in claim_table["dataset"].unique())
        notes.append(
            f" A sensitivity analysis of {sensitivity_of[0]} on {datasets}: a claim of its own with its own "
            f"family, so it leaves {sensitivity_of[0]}'s error control unchanged."
        )
    designs = claim_table.assign(comparison=comparison_names(claim_table)).dropna(subset=["design"])
    for comparison, design in dict(zip(designs["comparison"], designs["design"], strict=True)).items():
        notes.append(f" Design of {comparison}: {design}.")
    return "".join(notes)


def conclusions(claims_table: pd.DataFrame, stability: pd.DataFrame | None = None) -> str:
    """One paragraph per claim, in words, following from the verdict table (Markdown).

    Args:
        claims_table: output of ``evaluate_claims``.
        stability: output of ``leave_one_seed_out`` (None: not computed): a fragile label says so.

    Returns:
        The conclusions.
    """
    per_claim = claim_verdicts(claims_table, stability)
    paragraphs = []
    for (claim_id, title), claim_rows in per_claim.groupby(["claim_id", "title"], sort=False):
        claim_table = claims_table[claims_table["claim_id"] == claim_id]
        analyses = claims_table.loc[claims_table["sensitivity_of"] == claim_id, "claim_id"].unique().tolist()
        notes = _claim_notes(claim_table, analyses)
        ran = claim_rows[claim_rows["verdict"] != verdicts.NOT_RUN]
        if ran.empty:
            paragraphs.append(
                f"- **{claim_id}** ({title}): not run; a variant it needs is not in this study's grid.{notes}"
            )
            continue
        parts = []
        for verdict_row in ran.itertuples(index=False):
            rows = claim_table[claim_table["dataset"] == verdict_row.dataset]
            several = len(rows) > 1  # each step's own label beside its number (C7's ordering, C6's networks)
            numbers = "; ".join(
                f"{name} {_signed(r.mean_diff)} {r.metric}"
                + (f" (claimed {_signed(r.claimed_difference)})" if pd.notna(r.claimed_difference) else "")
                + (f": {r.verdict}" if several else "")
                for name, r in zip(comparison_names(rows), rows.itertuples(index=False), strict=True)
                if pd.notna(r.mean_diff)
            )
            text = f"on `{verdict_row.dataset}` **{verdict_row.verdict}**" + (f" ({numbers})" if numbers else "")
            if pd.notna(verdict_row.fragile) and bool(verdict_row.fragile):
                text += (
                    f", fragile: {kept_text(verdict_row.loo_kept, verdict_row.loo_cases)} of the analyses leaving "
                    "one seed out keep it"
                )
            if verdict_row.verdict_without_failed != verdict_row.verdict:
                text += f", **{verdict_row.verdict_without_failed}** without its {verdict_row.n_failed} failed run(s)"
            parts.append(text)
        labels = list(dict.fromkeys(ran["verdict"]))
        meaning = "; ".join(f"*{label}*: {verdicts.MEANINGS[label]}" for label in labels)
        paragraphs.append(f"- **{claim_id}** ({title}): " + "; ".join(parts) + f". ({meaning}.){notes}")
    return "\n".join(paragraphs) + "\n"


def stability_text(stability: pd.DataFrame) -> str:
    """The leave-one-seed-out result in words (Markdown): how many decisive labels there are, and each fragile one
    with the labels it takes without each seed.

    Args:
        stability: output of ``leave_one_seed_out``.

    Returns:
        The text.
    """
    if stability.empty:
        return "No claim has a decisive label on any dataset: nothing to test for stability.\n"
    fragile = stability[stability["fragile"]]
    head = (
        f"{len(stability)} decisive label(s); {len(fragile)} fragile (leaving out one seed, with the claim's whole "
        "family recomputed, changes the label in at least one case)"
    )
    if fragile.empty:
        return head + ".\n"
    seeds = [column for column in stability.columns if column.startswith("without_seed_")]
    lines = [head + ":"]
    for row in fragile.to_dict("records"):
        changes = "; ".join(
            f"without seed {column.removeprefix('without_seed_')}: {row[column]}"
            for column in seeds
            if pd.notna(row[column]) and row[column] != row["verdict"]
        )
        lines.append(
            f"- **{row['claim_id']}** on `{row['dataset']}` **{row['verdict']}**: kept in "
            f"{kept_text(row['loo_kept'], row['loo_cases'])} ({changes})."
        )
    return "\n".join(lines) + "\n"


def multiple_testing_text(claims_table: pd.DataFrame, alpha: float) -> str:
    """The secondary study-wide Benjamini-Hochberg reading against the rule's Holm within each claim, in words.

    Args:
        claims_table: output of ``evaluate_claims``.
        alpha: the level.

    Returns:
        The text (Markdown).
    """
    counts = multiple_testing_summary(claims_table, alpha)
    return (
        f"Of the {counts['tests']} rows with a direction test (`p_direction`: the t-test, the TOST or the "
        f"non-inferiority test of the row's claim), {counts['holm']} are significant under the rule's Holm within "
        f"each claim (`p_direction_holm` < {alpha:g}) and {counts['bh']} under Benjamini-Hochberg over all of them "
        f"together (`q_direction_bh` < {alpha:g}, false discovery rate; secondary, it labels nothing): "
        f"{counts['both']} under both, {counts['bh_only']} under BH only, {counts['holm_only']} under Holm only.\n"
    )


def _json_value(value: object) -> object:
    """A table cell as plain JSON: exact floats (repr round-trips), None for missing or infinite values."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, np.integer | int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    return value


def records(df: pd.DataFrame) -> list[dict]:
    """JSON-safe records of a table at full precision (NaN and inf become null).

    Args:
        df: the table.

    Returns:
        One dict per row.
    """
    return [
        {str(column): _json_value(value) for column, value in zip(df.columns, values, strict=True)}
        for values in df.itertuples(index=False)
    ]


def stats_summary(
    table: pd.DataFrame,
    claims_table: pd.DataFrame,
    failed: pd.DataFrame,
    *,
    alpha: float = 0.05,
    tost_margin: float = 0.02,
    power: float = 0.8,
    n_resamples: int,
    stability: pd.DataFrame | None = None,
    margins: pd.DataFrame | None = None,
) -> dict:
    """Everything the report concludes, as a JSON-ready dict for ``results/<scale>/stats.json``.

    Args:
        table: output of ``results_table``.
        claims_table: output of ``evaluate_claims`` (run with the same settings).
        failed: output of ``failed_runs``.
        alpha: family-wise significance level used.
        tost_margin: equivalence margin used.
        power: power used for the MDD and the seeds needed.
        n_resamples: bootstrap resamples per row.
        stability: output of ``leave_one_seed_out`` (None: not computed).
        margins: output of ``margin_sensitivity`` (None: not computed).

    Returns:
        Keys ``settings``, ``verdict_rule``, ``labels`` (label -> meaning), ``results`` (per dataset × model),
        ``comparisons`` (per claim comparison × dataset), ``claims`` (per claim × dataset, with each decisive
        label's leave-one-seed-out counts), ``failed_runs``, ``verdict_counts``, then (added later)
        ``multiple_testing`` (rows significant under Holm within each claim and under the secondary study-wide
        Benjamini-Hochberg), and, where computed, ``claim_stability`` and ``margin_sensitivity``.
    """
    per_claim = claim_verdicts(claims_table, stability)
    secondary = {
        "multiple_testing": {
            "primary": "Holm within each claim (p_direction_holm)",
            "secondary": "Benjamini-Hochberg over every row's p_direction, all claims together (q_direction_bh)",
            "alpha": alpha,
        }
        | multiple_testing_summary(claims_table, alpha)
    }
    if stability is not None:
        secondary["claim_stability"] = records(stability)
    if margins is not None:
        secondary["margin_sensitivity"] = records(margins)
    return {
        "settings": {"alpha": alpha, "tost_margin": tost_margin, "power": power, "bootstrap_resamples": n_resamples},
        "verdict_rule": verdicts.verdict_rule(alpha, tost_margin),
        "labels": dict(verdicts.MEANINGS),
        "results": records(table),
        "comparisons": records(claims_table),
        "claims": records(per_claim),
        "failed_runs": records(failed),
        "verdict_counts": {label: int((per_claim["verdict"] == label).sum()) for label in verdicts.LABELS},
    } | secondary


def write_stats_json(summary: dict, path: str | Path) -> Path:
    """Write ``stats_summary`` output as indented JSON at full precision, creating parent folders.

    Args:
        summary: the summary dict.
        path: output path, e.g. ``results/cpu/stats.json``.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return path
