"""The verdict rule (repro.analysis.verdicts) on constructed cases, one per label and per boundary."""

import pytest

from repro.analysis import verdicts

ALPHA = 0.05


@pytest.mark.parametrize(
    ("mean_diff", "p_direction_holm", "p_magnitude_holm", "mdd_adj", "claimed", "label"),
    [
        (0.03, 0.01, 0.60, 0.02, 0.02, verdicts.REPRODUCED),
        (0.03, 0.01, None, 0.02, None, verdicts.REPRODUCED),  # no D: the direction alone
        (0.005, 0.01, 0.02, 0.004, 0.02, verdicts.REPRODUCED_SMALLER),
        (-0.02, 0.001, 0.001, 0.01, 0.02, verdicts.REVERSED),
        (-0.02, 0.001, None, 0.01, None, verdicts.REVERSED),
        (0.003, 0.40, 0.01, 0.015, 0.02, verdicts.SMALLER),
        (0.003, 0.40, 0.20, 0.05, 0.02, verdicts.UNDERPOWERED),  # MDD 0.05 > |D| 0.02
        (0.003, 0.40, 0.20, 0.015, 0.02, verdicts.INCONCLUSIVE),  # could have detected 0.02, did not
        (0.003, 0.40, None, 0.012, None, verdicts.UNDERPOWERED),  # no D: judged against 0.01
        (0.003, 0.40, None, 0.008, None, verdicts.INCONCLUSIVE),
        (0.03, 0.05, 0.60, 0.02, 0.02, verdicts.INCONCLUSIVE),  # p = alpha is not below alpha
        (-0.02, 0.40, 0.01, 0.03, -0.01, verdicts.SMALLER),  # |D| for a claimed loss
    ],
)
def test_superiority_label(mean_diff, p_direction_holm, p_magnitude_holm, mdd_adj, claimed, label):
    assert verdicts.superiority_label(mean_diff, p_direction_holm, p_magnitude_holm, mdd_adj, claimed, ALPHA) == label


@pytest.mark.parametrize(
    ("p_holm", "ci_low", "ci_high", "label"),
    [
        (0.01, -0.01, 0.01, verdicts.EQUIVALENT),
        (0.30, 0.021, 0.05, verdicts.NOT_EQUIVALENT),
        (0.30, -0.09, -0.03, verdicts.NOT_EQUIVALENT),
        (0.30, 0.02, 0.05, verdicts.INCONCLUSIVE),  # touching the margin is not strictly outside it
        (0.30, -0.03, 0.01, verdicts.INCONCLUSIVE),
    ],
)
def test_equivalence_label(p_holm, ci_low, ci_high, label):
    assert verdicts.equivalence_label(p_holm, ci_low, ci_high, margin=0.02, alpha=ALPHA) == label


@pytest.mark.parametrize(
    ("p_holm", "upper_adj", "mdd_adj", "label"),
    [
        (0.01, 0.01, 0.03, verdicts.NON_INFERIOR),  # significant: the power figure no longer matters
        (0.05, 0.01, 0.01, verdicts.INCONCLUSIVE),  # p = alpha is not below alpha
        (0.90, -0.021, 0.01, verdicts.INFERIOR),  # the upper bound strictly below -margin
        (0.90, -0.021, 0.05, verdicts.INFERIOR),  # a clear loss needs no power argument
        (0.60, -0.02, 0.01, verdicts.INCONCLUSIVE),  # touching -margin is not below it
        (0.30, 0.01, 0.05, verdicts.UNDERPOWERED),  # MDD 0.05 > margin 0.02: these seeds could not have told
        (0.30, 0.01, 0.02, verdicts.INCONCLUSIVE),  # MDD equal to the margin is not above it
    ],
)
def test_non_inferiority_label(p_holm, upper_adj, mdd_adj, label):
    assert verdicts.non_inferiority_label(p_holm, upper_adj, mdd_adj, margin=0.02, alpha=ALPHA) == label


def test_non_inferiority_labels_rank_refutation_first():
    labels = [verdicts.NON_INFERIOR, verdicts.INCONCLUSIVE, verdicts.UNDERPOWERED, verdicts.INFERIOR]
    assert verdicts.weakest(labels) == verdicts.INFERIOR
    assert verdicts.weakest(labels[:3]) == verdicts.UNDERPOWERED
    assert verdicts.weakest(labels[:2] + [verdicts.NOT_RUN]) == verdicts.INCONCLUSIVE
    assert verdicts.weakest([verdicts.NON_INFERIOR, verdicts.NOT_RUN]) == verdicts.NON_INFERIOR


def test_the_rule_text_states_the_non_inferiority_labels():
    rule = verdicts.verdict_rule(alpha=0.01, tost_margin=0.03)
    assert "Non-inferiority labels (margin 0.03" in rule
    assert "non-inferior: Holm-adjusted p < 0.01" in rule and "strictly below -0.03" in rule


def test_a_claim_takes_its_weakest_row_that_ran():
    order = [
        verdicts.REVERSED,
        verdicts.SMALLER,
        verdicts.UNDERPOWERED,
        verdicts.INCONCLUSIVE,
        verdicts.REPRODUCED_SMALLER,
        verdicts.REPRODUCED,
    ]
    for weaker_index, weaker in enumerate(order):
        for stronger in order[weaker_index:]:
            assert verdicts.weakest([stronger, weaker, verdicts.NOT_RUN]) == weaker
    assert verdicts.weakest([verdicts.NOT_RUN, verdicts.NOT_RUN]) == verdicts.NOT_RUN
    assert verdicts.weakest([verdicts.EQUIVALENT, verdicts.NOT_EQUIVALENT]) == verdicts.NOT_EQUIVALENT
    assert verdicts.weakest([verdicts.EQUIVALENT, verdicts.INCONCLUSIVE]) == verdicts.INCONCLUSIVE


def test_every_label_has_a_one_line_meaning():
    assert set(verdicts.MEANINGS) == set(verdicts.LABELS)
    assert all("\n" not in meaning for meaning in verdicts.MEANINGS.values())


def test_the_rule_text_states_the_intervals_each_equivalence_label_reads():
    """``equivalent`` is Holm over the TOST p-values, whose first step is the (1 - 2 alpha/m) interval inside the
    margin; ``not equivalent`` reads the TOST's own, unadjusted (1 - 2 alpha) interval, as the evaluation passes it
    (``tost_ci_low``, ``tost_ci_high``); the printed family interval of such a row is the (1 - 2 alpha/m) one."""
    rule = verdicts.verdict_rule(alpha=0.01, tost_margin=0.03)
    section = rule[rule.index("Equivalence labels") : rule.index("Non-inferiority labels")]
    equivalent = next(line for line in section.splitlines() if line.startswith(f"  {verdicts.EQUIVALENT}:"))
    assert "Holm-adjusted TOST p < 0.01" in equivalent and "(1 - 2 alpha/m) interval" in equivalent
    assert "(1 - 2 alpha/(m - k + 1))" in equivalent
    not_equivalent = next(line for line in section.splitlines() if line.startswith(f"  {verdicts.NOT_EQUIVALENT}:"))
    assert "unadjusted 98% CI (1 - 2 alpha" in not_equivalent and "tost_ci_low" in not_equivalent
    assert "(1 - 2 alpha/m) t-interval for an equivalence or non-inferiority row" in rule
    assert "Benjamini-Hochberg" in rule and "leave-one-seed-out" in rule


def test_decisive_labels_are_the_confirmations_and_refutations():
    assert set(verdicts.DECISIVE) == set(verdicts.LABELS) - {
        verdicts.UNDERPOWERED,
        verdicts.INCONCLUSIVE,
        verdicts.NOT_RUN,
    }
