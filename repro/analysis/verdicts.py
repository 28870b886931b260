"""The verdict rule: from a comparison's family-adjusted tests to one label, and from labels to a claim's.

Everything a verdict depends on is computed in ``repro.analysis.evaluation``; this module only reads it. Per claim,
the **family** is every (comparison, dataset) row of the claim that was run with at least 2 matched seeds.
Holm-Bonferroni runs over all the family's p-values together (``p_direction`` and, where the paper gives a
number D, ``p_magnitude``); ``m`` is their count. For equivalence and non-inferiority claims ``p_direction``
holds the TOST p or the non-inferiority p, and there is no ``p_magnitude``.
"""

from __future__ import annotations

REPRODUCED = "reproduced"
REPRODUCED_SMALLER = "reproduced, smaller than claimed"
REVERSED = "reversed"
SMALLER = "smaller than claimed"
UNDERPOWERED = "inconclusive (underpowered)"
INCONCLUSIVE = "inconclusive"
NOT_RUN = "not run"
EQUIVALENT = "equivalent"
NOT_EQUIVALENT = "not equivalent"
NON_INFERIOR = "non-inferior"
INFERIOR = "inferior"

# Weakest first: a claim tested by several comparisons on one dataset takes the label of its weakest row.
# A claim has one kind, so labels of different kinds never meet in one ranking; each kind's refutation sits
# with the others at the weak end, its confirmation at the strong end, the inconclusive labels between.
STRENGTH = (
    REVERSED,
    NOT_EQUIVALENT,
    INFERIOR,
    SMALLER,
    UNDERPOWERED,
    INCONCLUSIVE,
    REPRODUCED_SMALLER,
    REPRODUCED,
    NON_INFERIOR,
    EQUIVALENT,
)
LABELS = (*STRENGTH, NOT_RUN)
# The labels that conclude something (a confirmation or a refutation), whose stability leaving one seed out
# (``repro.analysis.evaluation.leave_one_seed_out``) is reported; the inconclusive ones and "not run" conclude nothing.
DECISIVE = (
    REPRODUCED,
    REPRODUCED_SMALLER,
    REVERSED,
    SMALLER,
    EQUIVALENT,
    NOT_EQUIVALENT,
    NON_INFERIOR,
    INFERIOR,
)
# Every label by what it says of the claim, as the report's one-line summary of a dataset (`dvc metrics show`) counts
# them: a significant gain (even if smaller than claimed), equivalence or non-inferiority confirms; a significant loss,
# a ruled-out claimed size, non-equivalence or inferiority refutes.
OUTCOMES = {
    "confirmed": (REPRODUCED, REPRODUCED_SMALLER, NON_INFERIOR, EQUIVALENT),
    "refuted": (REVERSED, SMALLER, NOT_EQUIVALENT, INFERIOR),
    "inconclusive": (UNDERPOWERED, INCONCLUSIVE),
    "not_run": (NOT_RUN,),
}
# With no claimed number, "underpowered" asks whether the test could have found a gain of one point.
DEFAULT_DIFFERENCE = 0.01

MEANINGS = {
    REPRODUCED: "the gain is significant (family-wise) in the claimed direction and the claimed size is not ruled out",
    REPRODUCED_SMALLER: "the gain is significant in the claimed direction but significantly smaller than claimed",
    REVERSED: "the difference is significant in the opposite direction",
    SMALLER: "no significant gain, and a gain as large as claimed is ruled out",
    UNDERPOWERED: "nothing is significant, and the seeds run could not reliably have detected the claimed size "
    "(0.01 without one; the margin for non-inferiority)",
    INCONCLUSIVE: "nothing is significant although the claimed size was detectable (or fewer than 2 seeds)",
    EQUIVALENT: "within the equivalence margin, family-wise (TOST)",
    NOT_EQUIVALENT: "the interval lies entirely outside the equivalence margin",
    NON_INFERIOR: "any loss against the baseline is significantly (family-wise) smaller than the margin",
    INFERIOR: "worse than the baseline by more than the margin, family-wise (the upper confidence bound at "
    "alpha/m lies below minus the margin)",
    NOT_RUN: "a variant of the comparison has no runs on the dataset",
}


def superiority_label(
    mean_diff: float,
    p_direction_holm: float,
    p_magnitude_holm: float | None,
    mdd_adj: float,
    claimed_difference: float | None,
    alpha: float,
) -> str:
    """Label of one tested superiority row (better - baseline), from its Holm-adjusted p-values.

    Args:
        mean_diff: mean paired difference.
        p_direction_holm: Holm-adjusted two-sided p of mean = 0.
        p_magnitude_holm: Holm-adjusted one-sided p of H0 mean >= D (None without a claimed D).
        mdd_adj: minimal detectable difference at level alpha/m (two-sided, power 0.8).
        claimed_difference: the paper's D, or None.
        alpha: family-wise level.

    Returns:
        One of the superiority labels.
    """
    magnitude_ruled_out = p_magnitude_holm is not None and p_magnitude_holm < alpha
    if p_direction_holm < alpha and mean_diff > 0:
        return REPRODUCED_SMALLER if magnitude_ruled_out else REPRODUCED
    if p_direction_holm < alpha and mean_diff < 0:
        return REVERSED
    if magnitude_ruled_out:
        return SMALLER
    target = DEFAULT_DIFFERENCE if claimed_difference is None else abs(claimed_difference)
    return UNDERPOWERED if mdd_adj > target else INCONCLUSIVE


def equivalence_label(tost_p_holm: float, ci_low: float, ci_high: float, margin: float, alpha: float) -> str:
    """Label of one tested equivalence row.

    Args:
        tost_p_holm: Holm-adjusted TOST p over the claim's family.
        ci_low: lower bound of the unadjusted (1 - 2 alpha) interval of the mean difference (the TOST's own,
            ``tost_ci_low``; not the family's (1 - 2 alpha/m) interval).
        ci_high: upper bound of that interval.
        margin: equivalence margin.
        alpha: family-wise level.

    Returns:
        "equivalent", "not equivalent" or "inconclusive".
    """
    if tost_p_holm < alpha:
        return EQUIVALENT
    if ci_low > margin or ci_high < -margin:
        return NOT_EQUIVALENT
    return INCONCLUSIVE


def non_inferiority_label(p_holm: float, upper_adj: float, mdd_adj: float, margin: float, alpha: float) -> str:
    """Label of one tested non-inferiority row (d = better - baseline; the claim: d > -margin).

    ``non-inferior`` rejects H0: mean d <= -margin (one-sided paired t-test, Holm over the claim's family).
    ``inferior`` is the opposite one-sided conclusion, H0: mean d >= -margin rejected at the same family-wise
    level: the one-sided (1 - alpha/m) upper bound (Bonferroni, the level of the family's intervals) lies
    strictly below -margin. Both conclusions are thus held to the family-wise alpha; the two one-sided tests
    share one statistic, so at most one of them can reject. An unadjusted bound would call a row inferior
    on evidence that could not make a sibling row non-inferior.

    Args:
        p_holm: Holm-adjusted one-sided p of H0 mean d <= -margin.
        upper_adj: upper bound of the one-sided (1 - alpha/m) interval of mean d (the upper end of the
            two-sided (1 - 2 alpha/m) one).
        mdd_adj: minimal detectable difference at level alpha/m (two-sided, power 0.8).
        margin: the non-inferiority margin (> 0).
        alpha: family-wise level.

    Returns:
        "non-inferior", "inferior", "inconclusive (underpowered)" or "inconclusive".
    """
    if p_holm < alpha:
        return NON_INFERIOR
    if upper_adj < -margin:
        return INFERIOR
    # Could these seeds have shown non-inferiority at all? Only if they detect a difference of one margin (the
    # distance from the null -margin to no difference); the two-sided MDD is a slightly conservative proxy.
    return UNDERPOWERED if mdd_adj > margin else INCONCLUSIVE


def weakest(labels: list[str]) -> str:
    """A claim's label on a dataset: its weakest row that ran, or "not run" when none ran.

    Args:
        labels: the row labels.

    Returns:
        The combined label.
    """
    ran = [label for label in labels if label != NOT_RUN]
    return min(ran, key=STRENGTH.index) if ran else NOT_RUN


def verdict_rule(alpha: float = 0.05, tost_margin: float = 0.02) -> str:
    """The rule in words, with the thresholds it is applied at.

    Args:
        alpha: family-wise significance level.
        tost_margin: equivalence margin.

    Returns:
        The rule text.
    """
    level = f"{alpha:g}"
    lines = [
        "Per row (one comparison on one dataset), over seed-matched pairs, d = better - baseline in the claim's "
        "metric.",
        "  p_direction: two-sided paired t-test of mean d = 0.",
        "  p_magnitude: where the paper gives a number D, one-sided paired t-test of H0 mean d >= D "
        "against mean d < D.",
        "Family = every row of the claim run with >= 2 matched seeds; Holm-Bonferroni over all its p_direction "
        "and p_magnitude values together; m = their number. Intervals and power at level alpha/m match it: the "
        "printed family interval (ci_adj) is the two-sided (1 - alpha/m) t-interval for a superiority row and the "
        "(1 - 2 alpha/m) t-interval for an equivalence or non-inferiority row.",
        "Superiority labels:",
        f"  {REPRODUCED}: p_direction_holm < {level}, mean d > 0, magnitude not ruled out (or no D);",
        f"  {REPRODUCED_SMALLER}: p_direction_holm < {level}, mean d > 0, p_magnitude_holm < {level};",
        f"  {REVERSED}: p_direction_holm < {level} and mean d < 0;",
        f"  {SMALLER}: direction not significant, p_magnitude_holm < {level};",
        f"  {UNDERPOWERED}: none of the above, and the MDD at alpha/m (two-sided, power 0.8) exceeds |D| "
        f"(or {DEFAULT_DIFFERENCE:g} without D);",
        f"  {INCONCLUSIVE}: none of the above, or fewer than 2 matched seeds (such a row stays out of its family);",
        f"  {NOT_RUN}: a variant has no runs on the dataset.",
        f"Equivalence labels (TOST at margin +/-{tost_margin:g}, p_direction = the TOST p, Holm over the claim's "
        "family):",
        f"  {EQUIVALENT}: Holm-adjusted TOST p < {level}; in intervals, Holm's step-down: the row with the smallest "
        "TOST p needs its (1 - 2 alpha/m) interval strictly inside the margin, the k-th smallest its "
        "(1 - 2 alpha/(m - k + 1)) interval as well as the k - 1 rows before it theirs;",
        f"  {NOT_EQUIVALENT}: the unadjusted {100 * (1 - 2 * alpha):g}% CI (1 - 2 alpha, the TOST's own interval: "
        "tost_ci_low, tost_ci_high), not the family's (1 - 2 alpha/m) one, lies entirely (strictly) outside the "
        "margin;",
        f"  {INCONCLUSIVE}: otherwise.",
        f"Non-inferiority labels (margin {tost_margin:g}, d = better - baseline; p_direction is the one-sided "
        "paired t-test of H0 mean d <= -margin, Holm over the claim's family):",
        f"  {NON_INFERIOR}: Holm-adjusted p < {level};",
        f"  {INFERIOR}: the one-sided (1 - alpha/m) upper bound of mean d (the upper end of the (1 - 2 alpha/m) "
        f"interval) is strictly below -{tost_margin:g};",
        f"  {UNDERPOWERED}: neither, and the MDD at alpha/m exceeds the margin;",
        f"  {INCONCLUSIVE}: otherwise.",
        "A claim on a dataset takes the label of its weakest row that ran: " + " < ".join(STRENGTH) + ".",
        "Reported beside, outside the rule: the Wilcoxon p, the per-image t-test (conditional on the trained "
        "models), the two-level bootstrap interval, the verdict without failed runs, each decisive label's "
        "leave-one-seed-out stability (fragile when leaving out any one seed, with the whole family recomputed, "
        "changes it), and the study-wide Benjamini-Hochberg q-value of p_direction over every row that ran "
        "(q_direction_bh; secondary: the rule's error control is Holm within each claim).",
    ]
    return "\n".join(lines)
