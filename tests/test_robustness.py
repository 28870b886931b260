"""The secondary analyses beside the verdict rule (repro.analysis.evaluation, repro.analysis.tables,
repro.analysis.report): leave-one-seed-out
stability of the decisive labels, each comparison's own label (C7's steps), C6 at other margins with its one-sided
non-inferiority reading, and the study-wide Benjamini-Hochberg q-values; on hand-built runs, checked against
computations made here from scipy."""

import html
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_report import write_run

from repro.analysis import evaluation, html_report, report, tables, verdicts
from repro.analysis.claims import Claim, Comparison
from repro.analysis.run_results import load_runs
from repro.analysis.stats import holm_bonferroni, paired_ttest

ALPHA = 0.05
# A toy superiority claim without a number, so that its family is the direction tests alone (m = its datasets).
TOY = Claim("T1", "better beats base", "superiority", "dice", (Comparison("better", "base", None, "constructed"),))
# Another toy claim on a-set only, of its own family: a noisy difference, so no decisive label.
NOISY = Claim("T2", "noisy beats base", "superiority", "dice", (Comparison("noisy", "base", None, "c"),), ("a-set",))
BASE = 0.8 + np.array([0.010, -0.005, 0.000, 0.004, -0.009, 0.006])
# Per-seed differences b - a. On a-set alone (m = 1): t-test p = 0.038, significant, but not without every seed.
A_SET = np.array([0.02, 0.005, 0.012, 0.001, 0.012])
# On b-set, a sixth seed that a-set lacks: with it p = 0.022, without it 0.063. With both datasets in the family,
# Holm gives a-set 0.044 with seed 5 (b-set's p is the smaller) and 2 x 0.038 = 0.076 without it: leaving out a seed
# a-set does not even have changes a-set's label, through the family alone.
B_SET = np.array([0.008, -0.001, 0.01, 0.002, 0.007, 0.008])
# A large, steady gain: significant whichever seed is left out.
CLEAR = 0.05 + np.array([0.002, -0.001, 0.001, -0.002, 0.0])


def write_pairs(
    runs_dir: Path, dataset: str, diffs: np.ndarray, better: str = "better", baseline: str = "base"
) -> None:
    for seed, diff in enumerate(diffs):
        if not (runs_dir / dataset / baseline / f"seed{seed}").exists():
            write_run(runs_dir, dataset, baseline, seed, BASE[seed])
        write_run(runs_dir, dataset, better, seed, BASE[seed] + diff)


def significant_by_hand(diffs_by_dataset: dict[str, np.ndarray]) -> dict[str, bool]:
    """Per dataset: is the toy claim's row reproduced (Holm over the datasets' t-test p-values, mean > 0)?"""
    p = [stats.ttest_1samp(d, 0.0).pvalue for d in diffs_by_dataset.values()]
    adjusted = holm_bonferroni(p)
    return {
        dataset: bool(q < ALPHA and d.mean() > 0)
        for (dataset, d), q in zip(diffs_by_dataset.items(), adjusted, strict=True)
    }


def test_a_label_that_one_left_out_seed_changes_is_fragile_and_counted(tmp_path):
    write_pairs(tmp_path, "a-set", A_SET)
    stability = evaluation.leave_one_seed_out(load_runs(tmp_path), [TOY])
    (row,) = stability.to_dict("records")
    assert (row["claim_id"], row["dataset"], row["verdict"]) == ("T1", "a-set", verdicts.REPRODUCED)
    kept = [significant_by_hand({"a-set": np.delete(A_SET, seed)})["a-set"] for seed in range(5)]
    assert 0 < sum(kept) < 5  # the case is built so: some left-out seeds keep the label, some do not
    assert row["loo_cases"] == 5 and row["loo_kept"] == sum(kept) and row["fragile"]
    for seed, keeps in enumerate(kept):
        assert (row[f"without_seed_{seed}"] == verdicts.REPRODUCED) == keeps


def test_a_label_every_left_out_seed_keeps_is_not_fragile(tmp_path):
    write_pairs(tmp_path, "a-set", CLEAR)
    stability = evaluation.leave_one_seed_out(load_runs(tmp_path), [TOY])
    (row,) = stability.to_dict("records")
    assert row["verdict"] == verdicts.REPRODUCED and (row["loo_kept"], row["loo_cases"]) == (5, 5)
    assert not row["fragile"]
    assert [row[f"without_seed_{seed}"] for seed in range(5)] == [verdicts.REPRODUCED] * 5


def test_leaving_a_seed_out_recomputes_the_claims_whole_family(tmp_path):
    """Seed 5 exists on b-set only: without it a-set's data are the same, yet its Holm-adjusted p rises above alpha,
    so a-set's label changes. An analysis that recomputed the cell's row alone would keep it."""
    write_pairs(tmp_path, "a-set", A_SET)
    write_pairs(tmp_path, "b-set", B_SET)
    runs = load_runs(tmp_path)
    full = evaluation.evaluate_claims(runs, [TOY], n_resamples=0)
    assert list(full["verdict"]) == [verdicts.REPRODUCED, verdicts.REPRODUCED]
    stability = evaluation.leave_one_seed_out(runs, [TOY]).set_index("dataset")
    a_set = stability.loc["a-set"]
    assert a_set["loo_cases"] == 6  # the claim's seeds: those of every dataset of its family
    assert a_set["without_seed_5"] != verdicts.REPRODUCED and a_set["fragile"]
    expected = []
    for seed in range(6):
        reduced = {"a-set": np.delete(A_SET, seed) if seed < 5 else A_SET, "b-set": np.delete(B_SET, seed)}
        expected.append(significant_by_hand(reduced))
    for dataset in ("a-set", "b-set"):
        keeps = [case[dataset] for case in expected]
        assert stability.loc[dataset, "loo_kept"] == sum(keeps)
        got = [stability.loc[dataset, f"without_seed_{seed}"] == verdicts.REPRODUCED for seed in range(6)]
        assert got == keeps


def test_only_decisive_labels_are_tested_and_the_verdict_table_marks_the_fragile_ones(tmp_path):
    write_pairs(tmp_path, "a-set", A_SET)
    write_pairs(tmp_path, "a-set", np.array([0.03, -0.04, 0.02, -0.01, -0.005]), better="noisy")
    runs = load_runs(tmp_path)
    claims_table = evaluation.evaluate_claims(runs, [TOY, NOISY], n_resamples=0)
    stability = evaluation.leave_one_seed_out(runs, [TOY, NOISY])
    per_claim = evaluation.claim_verdicts(claims_table, stability).set_index("claim_id")
    assert per_claim.loc["T2", "verdict"] not in verdicts.DECISIVE
    assert list(stability["claim_id"]) == ["T1"]
    assert pd.isna(per_claim.loc["T2", "loo_kept"]) and pd.isna(per_claim.loc["T2", "fragile"])
    kept, cases = per_claim.loc["T1", "loo_kept"], per_claim.loc["T1", "loo_cases"]
    assert kept < cases and per_claim.loc["T1", "fragile"]
    shown = tables.format_claim_verdicts(per_claim.reset_index()).set_index("claim_id")
    assert shown.loc["T1", "verdict"] == f"{verdicts.REPRODUCED} (fragile: {kept}/{cases})"
    assert shown.loc["T2", "verdict"] == per_claim.loc["T2", "verdict"]  # no mark where none was tested
    assert shown.loc["T1", "leave-one-seed-out kept"] == f"{kept}/{cases}"
    assert shown.loc["T2", "leave-one-seed-out kept"] == ""
    # The existing columns keep their places; the new ones come last.
    assert list(per_claim.reset_index().columns[:7]) == [
        "claim_id",
        "title",
        "dataset",
        "n_comparisons",
        "n_failed",
        "verdict",
        "verdict_without_failed",
    ]
    assert list(per_claim.columns[-4:]) == ["comparison_verdicts", "loo_cases", "loo_kept", "fragile"]
    conclusions = report.conclusions(claims_table, stability)
    assert f"on `a-set` **{verdicts.REPRODUCED}**" in conclusions
    assert f"fragile: {kept}/{cases} of the analyses leaving one seed out keep it" in conclusions
    text = report.stability_text(stability)
    assert "1 decisive label(s); 1 fragile" in text and "**T1** on `a-set`" in text


def test_c7_shows_each_steps_label_beside_the_weakest(tmp_path):
    for seed in range(5):
        unet = BASE[seed]
        write_run(tmp_path, "a-set", "unet", seed, unet)
        write_run(tmp_path, "a-set", "unet_plus", seed, unet + CLEAR[seed])  # step 1: a clear gain
        write_run(tmp_path, "a-set", "unetpp", seed, unet + CLEAR[seed] - CLEAR[::-1][seed])  # step 2: none at all
    runs = load_runs(tmp_path)
    claims_table = evaluation.evaluate_claims(runs, n_resamples=0)
    c7 = claims_table[claims_table["claim_id"] == "C7"].set_index("better")
    first, second = c7.loc["unet_plus", "verdict"], c7.loc["unetpp", "verdict"]
    assert first == verdicts.REPRODUCED and second != verdicts.REPRODUCED
    stability = evaluation.leave_one_seed_out(runs)
    per_claim = evaluation.claim_verdicts(claims_table, stability).set_index("claim_id")
    assert per_claim.loc["C7", "verdict"] == second
    assert per_claim.loc["C7", "comparison_verdicts"] == f"unet_plus - unet: {first}; unetpp - unet_plus: {second}"
    assert per_claim.loc["C1", "comparison_verdicts"] == ""  # one comparison: its label is the claim's
    c7_line = next(line for line in report.conclusions(claims_table).splitlines() if line.startswith("- **C7**"))
    assert f"iou: {first}" in c7_line and f"iou: {second}" in c7_line
    # The HTML report's verdict table, from stats.json, shows each step's label and effect under the claim's label.
    summary = json.loads(json.dumps(report.stats_summary(
        tables.results_table(runs.per_seed), claims_table, pd.DataFrame(), n_resamples=0, stability=stability
    )))  # fmt: skip
    path = Path("stats.json")
    cells = html_report._verdict_table(
        html_report._claims(summary, path), html_report._comparisons(summary, path), html_report._margin(summary, path)
    )
    text = html.unescape(re.sub(r"<[^>]+>", "", cells))
    for (_, row), label in zip(c7.reset_index().iterrows(), (first, second), strict=True):
        assert f"{row['better']} - {row['baseline']}: {label}, iou {tables.effect_text(row)} vs claimed > 0" in text


# C6 on one dataset: U-Net (bilinear) and three light networks, each at a constant offset with a small spread.
SPREAD = np.array([0.0005, -0.0004, 0.0002, -0.0003, 0.0])
C6_DIFFS = {
    "light_unet": 0.001 + SPREAD,  # equivalent at every margin
    "lighter_unet_128": 0.008 + SPREAD,  # better by more than 0.005: not equivalent there, yet non-inferior
    "lighter_unet_1": -0.015 + SPREAD,  # worse by 0.015: only the margin 0.02 takes it
}


def test_c6_margin_table_on_constructed_runs(tmp_path):
    for seed in range(5):
        write_run(tmp_path, "a-set", "unet_bilinear", seed, BASE[seed])
        for model, diffs in C6_DIFFS.items():
            write_run(tmp_path, "a-set", model, seed, BASE[seed] + diffs[seed])
    runs = load_runs(tmp_path)
    margins = evaluation.margin_sensitivity(runs, "C6", (0.005, 0.01), declared_margin=0.02)
    assert list(margins.columns) == evaluation.MARGIN_COLUMNS
    assert sorted(set(margins["margin"])) == [0.005, 0.01, 0.02]  # the declared margin is always there
    labels = margins.set_index(["comparison", "margin"])
    equivalence = {
        ("light_unet - unet_bilinear", 0.005): verdicts.EQUIVALENT,
        ("light_unet - unet_bilinear", 0.02): verdicts.EQUIVALENT,
        ("lighter_unet_128 - unet_bilinear", 0.005): verdicts.NOT_EQUIVALENT,
        ("lighter_unet_128 - unet_bilinear", 0.01): verdicts.EQUIVALENT,
        ("lighter_unet_1 - unet_bilinear", 0.01): verdicts.NOT_EQUIVALENT,
        ("lighter_unet_1 - unet_bilinear", 0.02): verdicts.EQUIVALENT,
        (evaluation.CLAIM_LINE, 0.005): verdicts.NOT_EQUIVALENT,
        (evaluation.CLAIM_LINE, 0.01): verdicts.NOT_EQUIVALENT,
        (evaluation.CLAIM_LINE, 0.02): verdicts.EQUIVALENT,
    }
    assert {key: labels.loc[key, "equivalence"] for key in equivalence} == equivalence
    non_inferiority = {
        ("lighter_unet_128 - unet_bilinear", 0.005): verdicts.NON_INFERIOR,  # a better network counts for it
        ("lighter_unet_1 - unet_bilinear", 0.005): verdicts.INFERIOR,
        ("lighter_unet_1 - unet_bilinear", 0.01): verdicts.INFERIOR,
        ("lighter_unet_1 - unet_bilinear", 0.02): verdicts.NON_INFERIOR,
        (evaluation.CLAIM_LINE, 0.01): verdicts.INFERIOR,
        (evaluation.CLAIM_LINE, 0.02): verdicts.NON_INFERIOR,
    }
    assert {key: labels.loc[key, "non_inferiority"] for key in non_inferiority} == non_inferiority
    # By hand at margin 0.01: each row's TOST p and one-sided p, Holm over the claim's three rows.
    at = margins[(margins["margin"] == 0.01) & (margins["comparison"] != evaluation.CLAIM_LINE)]
    tost, one_sided = [], []
    for diffs in C6_DIFFS.values():
        se = diffs.std(ddof=1) / np.sqrt(5)
        lower = stats.t.sf((diffs.mean() + 0.01) / se, df=4)
        tost.append(max(lower, stats.t.cdf((diffs.mean() - 0.01) / se, df=4)))
        one_sided.append(lower)
    np.testing.assert_allclose(at["equivalence_p_holm"], holm_bonferroni(tost), rtol=1e-6)
    np.testing.assert_allclose(at["non_inferiority_p_holm"], holm_bonferroni(one_sided), rtol=1e-6)
    # The declared margin's equivalence labels are the primary analysis's own.
    primary = evaluation.evaluate_claims(runs, n_resamples=0)
    primary = primary[primary["claim_id"] == "C6"]
    declared = margins[(margins["margin"] == 0.02) & (margins["comparison"] != evaluation.CLAIM_LINE)]
    assert list(declared["equivalence"]) == list(primary["verdict"]) and declared["declared"].all()
    shown = tables.format_margin_table(margins)
    assert "equivalence ±0.02 (primary)" in shown.columns and "non-inferiority 0.005" in shown.columns
    assert "equivalence ±0.01 (primary)" not in shown.columns


def test_benjamini_hochberg_by_hand():
    # Sorted 0.001, 0.04, 0.041, 0.5 (m = 4): m p / rank = 0.004, 0.08, 0.0547, 0.5; the step-up takes the smallest
    # from the right: 0.004, 0.0547, 0.0547, 0.5 (0.04's own 0.08 comes down to 0.041's 0.0547).
    q = evaluation.benjamini_hochberg([0.04, 0.041, 0.5, 0.001])
    np.testing.assert_allclose(q, [4 * 0.041 / 3, 4 * 0.041 / 3, 0.5, 0.004], rtol=1e-12)
    np.testing.assert_allclose(evaluation.benjamini_hochberg([0.9, 0.95]), [0.95, 0.95])  # capped at 1, monotone
    assert evaluation.benjamini_hochberg([]).shape == (0,)
    with pytest.raises(ValueError):
        evaluation.benjamini_hochberg([0.1, float("nan")])
    p = np.random.default_rng(0).uniform(0, 0.2, 40) ** 2
    np.testing.assert_allclose(evaluation.benjamini_hochberg(p), stats.false_discovery_control(p), rtol=1e-12)


def test_study_wide_bh_runs_over_every_claims_direction_tests_together(tmp_path):
    write_pairs(tmp_path, "a-set", A_SET)
    write_pairs(tmp_path, "b-set", B_SET)
    write_pairs(tmp_path, "a-set", CLEAR, better="unetpp", baseline="unet")  # C1 on a-set; C2 has no wide_unet
    runs = load_runs(tmp_path)
    table = evaluation.evaluate_claims(runs, [TOY, *evaluation.CLAIMS[:2]], n_resamples=0)
    tested = table["p_direction"].notna()
    assert tested.sum() == 3 and table.loc[~tested, "q_direction_bh"].isna().all()
    expected = stats.false_discovery_control(table.loc[tested, "p_direction"].to_numpy())
    np.testing.assert_allclose(table.loc[tested, "q_direction_bh"], expected, rtol=1e-12)
    # Not per claim: BH over the toy claim's two rows alone would give other q-values.
    toy = table["claim_id"] == "T1"
    alone = stats.false_discovery_control(table.loc[toy, "p_direction"].to_numpy())
    assert not np.allclose(table.loc[toy, "q_direction_bh"], alone)
    counts = evaluation.multiple_testing_summary(table, ALPHA)
    holm = (table.loc[tested, "p_direction_holm"] < ALPHA).sum()
    bh = (table.loc[tested, "q_direction_bh"] < ALPHA).sum()
    assert (counts["tests"], counts["holm"], counts["bh"]) == (3, holm, bh)
    assert counts["both"] + counts["bh_only"] == bh and counts["both"] + counts["holm_only"] == holm
    assert f"{holm} are significant under the rule's Holm" in report.multiple_testing_text(table, ALPHA)
    shown = tables.format_claims_table(table)
    assert shown.columns[-1] == "q direction (BH, study-wide; secondary)"


def test_the_paired_statistic_of_the_constructed_cases_is_what_the_comments_say():
    """The p-values the cases above are built on (a guard against an edit of the numbers)."""
    p = {name: paired_ttest(BASE[: len(d)] + d, BASE[: len(d)]).p for name, d in (("a", A_SET), ("b", B_SET))}
    assert p["a"] == pytest.approx(0.0378, abs=1e-3) and p["b"] == pytest.approx(0.0219, abs=1e-3)
    assert paired_ttest(BASE[:5] + B_SET[:5], BASE[:5]).p == pytest.approx(0.0629, abs=1e-3)


def _update_readme():
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("update_readme", root / "scripts" / "update_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_optional_blocks_copy_the_stability_and_margin_tables_where_the_readme_has_markers(tmp_path):
    update_readme = _update_readme()
    readme = "".join(f"<!-- {name}:start -->\nold\n<!-- {name}:end -->\n" for name in update_readme.OPTIONAL_TABLES)
    (tmp_path / "claim_stability.md").write_text("| stability |\n")
    blocks = update_readme.optional_blocks(readme, tmp_path)
    assert blocks["stability-table"] == "| stability |\n"
    assert blocks["c6-margins-table"].startswith("*Not yet written: ") and "c6_margins.md" in blocks["c6-margins-table"]
    assert update_readme.optional_blocks("no markers here\n", tmp_path) == {}
