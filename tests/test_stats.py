"""Tests of repro.analysis.stats against scipy and against hand-worked arithmetic."""

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from repro.analysis.stats import (
    bootstrap_two_level,
    holm_bonferroni,
    minimal_detectable_difference,
    paired_t_power,
    paired_ttest,
    seeds_needed,
    tost_paired,
    wilcoxon_floor,
    wilcoxon_signed_rank,
)

BASELINE = np.array([0.71, 0.74, 0.69, 0.73, 0.70])
# Differences 0.01, 0.02, 0.03, 0.04, 0.05 (float rounding of the sums aside).
BETTER = BASELINE + np.array([0.01, 0.02, 0.03, 0.04, 0.05])


def test_paired_ttest_by_hand():
    # d = 1, 2, 3, 4, 5: mean 3; squared deviations 4+1+0+1+4 = 10, var = 10/4 = 2.5, sd = sqrt(2.5) = 1.5811;
    # se = sd/sqrt(5) = sqrt(0.5) = 0.70711; t = 3/sqrt(0.5) = 3 sqrt(2) = 4.2426; d_z = 3/sqrt(2.5) = 1.8974;
    # 95% CI = 3 ± t_{0.975,4} se = 3 ± 2.77645 * 0.70711 = 3 ± 1.96324 = [1.03676, 4.96324].
    result = paired_ttest([1, 2, 3, 4, 5], [0, 0, 0, 0, 0])
    assert result.n == 5 and result.df == 4
    assert result.mean_diff == pytest.approx(3.0)
    assert result.sd_diff == pytest.approx(math.sqrt(2.5))
    assert result.t == pytest.approx(3 * math.sqrt(2))
    assert result.dz == pytest.approx(3 / math.sqrt(2.5))
    assert (result.ci_low, result.ci_high) == pytest.approx((1.03676, 4.96324), abs=1e-5)
    # Two-sided p = 2 P(T_4 > 4.2426) = 0.013236.
    assert result.p == pytest.approx(0.013236, abs=1e-6)


def test_paired_ttest_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.8, 0.02, 7), rng.normal(0.79, 0.02, 7)
    result = paired_ttest(a, b, confidence_level=0.9)
    reference = stats.ttest_rel(a, b)
    interval = reference.confidence_interval(0.9)
    assert result.t == pytest.approx(reference.statistic)
    assert result.p == pytest.approx(reference.pvalue)
    assert (result.ci_low, result.ci_high) == pytest.approx((interval.low, interval.high))
    one_sided = paired_ttest(a, b, alternative="greater")
    assert one_sided.p == pytest.approx(stats.ttest_rel(a, b, alternative="greater").pvalue)


def test_paired_ttest_zero_spread_takes_the_limit_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        identical = paired_ttest(BASELINE, BASELINE)
        shifted = paired_ttest([1.5, 2.5, 3.5], [1.0, 2.0, 3.0])
    assert (identical.t, identical.p, identical.dz) == (0.0, 1.0, 0.0)
    assert (identical.ci_low, identical.ci_high) == (0.0, 0.0)
    assert shifted.t == math.inf and shifted.p == 0.0 and shifted.dz == math.inf
    assert (shifted.ci_low, shifted.ci_high) == (0.5, 0.5)


@pytest.mark.parametrize(("a", "b"), [([1.0, 2.0], [1.0]), ([1.0], [2.0]), ([1.0, math.nan], [1.0, 2.0])])
def test_paired_ttest_rejects_bad_samples(a, b):
    with pytest.raises(ValueError):
        paired_ttest(a, b)


def test_wilcoxon_smallest_exact_p_with_five_pairs():
    # All 5 differences positive: W- = 0, and only 1 of the 2^5 equally likely sign patterns reaches it
    # under H0, so one-sided p = 1/32 and two-sided p = 2/32 = 0.0625 -- never below 0.05 with 5 seeds.
    result = wilcoxon_signed_rank(BETTER, BASELINE)
    assert result.statistic == 0.0
    assert result.p == pytest.approx(0.0625)


def test_wilcoxon_matches_scipy_by_hand():
    # Differences 1, 2, -3, 4, 5: ranks 1..5, W- = 3. Sign patterns with W- <= 3: {}, {1}, {2}, {3}, {1,2}
    # = 5 of 32, so two-sided p = 2 * 5/32 = 0.3125.
    a, b = np.array([1.0, 2.0, -3.0, 4.0, 5.0]), np.zeros(5)
    result = wilcoxon_signed_rank(a, b)
    assert result.statistic == 3.0
    assert result.p == pytest.approx(0.3125)
    assert result.p == pytest.approx(stats.wilcoxon(a, b).pvalue)


def test_wilcoxon_all_zero_differences():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = wilcoxon_signed_rank(BASELINE, BASELINE)
    assert (result.n, result.n_nonzero, result.statistic, result.p) == (5, 0, 0.0, 1.0)


def test_holm_bonferroni_by_hand():
    # m = 4, sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04);
    # running max: 0.02, 0.03, 0.06, 0.06 -> back in input order:
    adjusted = holm_bonferroni([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])


def test_holm_bonferroni_caps_at_one_and_keeps_order():
    # 0.5 x 2 = 1.0, 0.6 x 1 = 0.6 -> running max 1.0, 1.0.
    np.testing.assert_allclose(holm_bonferroni([0.6, 0.5]), [1.0, 1.0])
    raw = np.random.default_rng(1).uniform(0, 0.2, 12)
    adjusted = holm_bonferroni(raw)
    order = np.argsort(raw)
    assert np.all(np.diff(adjusted[order]) >= 0)
    assert np.all(adjusted >= raw) and np.all(adjusted <= 1)
    assert holm_bonferroni([]).size == 0
    with pytest.raises(ValueError):
        holm_bonferroni([0.1, math.nan])


def test_tost_by_hand():
    # d = 0.01..0.05: mean 0.03, sd = sqrt(2.5)/100, se = sqrt(0.5)/100 = 0.0070711, df = 4.
    # Margin 0.05: t_lower = (0.03 + 0.05)/se = 11.314, p_lower = P(T_4 > 11.314) = 0.000174;
    #              t_upper = (0.03 - 0.05)/se = -2.8284, p_upper = P(T_4 < -2.8284) = 0.02371; p = 0.02371.
    # 90% CI = 0.03 ± t_{0.95,4} se = 0.03 ± 2.13185 * 0.0070711 = [0.014925, 0.045075], inside ±0.05.
    result = tost_paired(BETTER, BASELINE, margin=0.05)
    assert result.p_lower == pytest.approx(0.000174, abs=1e-6)
    assert result.p_upper == pytest.approx(0.02371, abs=1e-5)
    assert result.p == result.p_upper
    assert result.equivalent
    assert result.confidence_level == pytest.approx(0.9)
    assert (result.ci_low, result.ci_high) == pytest.approx((0.014925, 0.045075), abs=1e-6)
    # Margin 0.04: t_upper = -0.01/se = -1.4142, p_upper = 0.1151 > 0.05; the 90% CI reaches past 0.04.
    narrow = tost_paired(BETTER, BASELINE, margin=0.04)
    assert narrow.p == pytest.approx(0.1151, abs=1e-4)
    assert not narrow.equivalent


def test_tost_matches_scipy_one_sided_tests():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.9, 0.01, 6), rng.normal(0.9, 0.01, 6)
    result = tost_paired(a, b, margin=0.02)
    assert result.p_lower == pytest.approx(stats.ttest_rel(a + 0.02, b, alternative="greater").pvalue)
    assert result.p_upper == pytest.approx(stats.ttest_rel(a - 0.02, b, alternative="less").pvalue)
    assert result.equivalent == (-0.02 < result.ci_low and result.ci_high < 0.02)


def _power_by_noncentral_t(dz, n, alpha=0.05):
    # Written out independently of repro.analysis.stats: T ~ nct(n - 1, dz sqrt(n)), reject when |T| > t_crit.
    t_crit = stats.t.ppf(1 - alpha / 2, n - 1)
    nc = dz * math.sqrt(n)
    return stats.nct.sf(t_crit, n - 1, nc) + stats.nct.cdf(-t_crit, n - 1, nc)


def test_mdd_reaches_the_target_power():
    mdd = minimal_detectable_difference(sd_diff=0.01, n=5)
    assert _power_by_noncentral_t(mdd / 0.01, 5) == pytest.approx(0.8, abs=1e-6)
    # The normal approximation (1.96 + 0.8416) * sd / sqrt(5) = 1.253 sd underestimates the exact 1.682 sd.
    assert mdd == pytest.approx(0.01682, abs=1e-5)
    assert minimal_detectable_difference(0.02, 5) == pytest.approx(2 * mdd)
    assert minimal_detectable_difference(0.01, 10) < mdd
    assert minimal_detectable_difference(0.0, 5) == 0.0


def test_mdd_power_by_simulation():
    # 20,000 simulated 5-seed experiments with a true difference equal to the MDD (sd 1) reject H0 about
    # 80% of the time (binomial s.e. 0.003).
    mdd = minimal_detectable_difference(sd_diff=1.0, n=5)
    diffs = np.random.default_rng(3).normal(mdd, 1.0, size=(20_000, 5))
    t = diffs.mean(axis=1) / (diffs.std(axis=1, ddof=1) / math.sqrt(5))
    rejected = np.abs(t) > stats.t.ppf(0.975, 4)
    assert rejected.mean() == pytest.approx(0.8, abs=0.015)


def test_paired_t_power_matches_noncentral_t():
    assert paired_t_power(1.2, 6) == pytest.approx(_power_by_noncentral_t(1.2, 6))
    assert paired_t_power(0.0, 6) == pytest.approx(0.05)
    assert paired_t_power(math.inf, 3) == 1.0
    # Far in the tail scipy's nct.cdf answers nan; power must still come out as ~1.
    assert paired_t_power(5.0, 10) == pytest.approx(1.0)


def test_seeds_needed_is_the_smallest_sufficient_n():
    needed = seeds_needed(sd_diff=0.01, delta=0.01)
    assert needed.n is not None
    assert _power_by_noncentral_t(1.0, needed.n) >= 0.8 > _power_by_noncentral_t(1.0, needed.n - 1)
    assert str(needed) == "10"


def test_seeds_needed_is_monotone():
    by_sd = [seeds_needed(sd, 0.01).n for sd in (0.002, 0.005, 0.01, 0.02)]
    assert by_sd == sorted(by_sd)
    by_delta = [seeds_needed(0.01, delta).n for delta in (0.005, 0.01, 0.02, 0.04)]
    assert by_delta == sorted(by_delta, reverse=True)
    assert seeds_needed(0.01, 0.01, power=0.9).n > seeds_needed(0.01, 0.01, power=0.8).n


def test_seeds_needed_cap_and_edges():
    beyond = seeds_needed(sd_diff=0.05, delta=0.001, cap=50)
    assert beyond.exceeds_cap and str(beyond) == "> 50"
    assert seeds_needed(0.01, 0.0).exceeds_cap
    assert seeds_needed(0.0, 0.01).n == 2
    assert seeds_needed(0.01, -0.01).n == seeds_needed(0.01, 0.01).n


def test_holm_bonferroni_over_a_claim_family_by_hand():
    # A family of 3 rows with a direction and a magnitude test each (m = 6), in row order:
    # direction 0.3395, magnitude 0.0030, direction 0.7583, magnitude 0.3154, direction 0.1345, magnitude 0.0063.
    # Sorted: 0.0030 x6 = 0.0180, 0.0063 x5 = 0.0315, 0.1345 x4 = 0.5380, 0.3154 x3 = 0.9462,
    # 0.3395 x2 = 0.6790 -> running max 0.9462, 0.7583 x1 -> running max 0.9462.
    adjusted = holm_bonferroni([0.3395, 0.0030, 0.7583, 0.3154, 0.1345, 0.0063])
    np.testing.assert_allclose(adjusted, [0.9462, 0.0180, 0.9462, 0.9462, 0.5380, 0.0315], atol=1e-12)


def test_paired_ttest_against_a_claimed_difference_is_one_sided():
    # d = 0.01..0.05: mean 0.03, se = 0.0070711; H0 mean >= 0.06: t = (0.03 - 0.06)/se = -4.2426,
    # p = P(T_4 < -4.2426) = 0.006617.
    result = paired_ttest(BETTER, BASELINE, alternative="less", null_difference=0.06)
    assert result.t == pytest.approx(-4.2426, abs=1e-4)
    assert result.p == pytest.approx(0.006617, abs=1e-6)
    assert result.p == pytest.approx(stats.ttest_rel(BETTER - 0.06, BASELINE, alternative="less").pvalue)
    assert result.mean_diff == pytest.approx(0.03) and result.dz == paired_ttest(BETTER, BASELINE).dz
    # A claimed gain below the observed one cannot be ruled out.
    assert paired_ttest(BETTER, BASELINE, alternative="less", null_difference=0.01).p > 0.9


@pytest.mark.parametrize("n", [3, 4, 5, 6])
def test_wilcoxon_floor_is_the_exact_p_of_one_signed_differences(n):
    diffs = np.arange(1, n + 1) / 100
    assert wilcoxon_floor(n) == pytest.approx(stats.wilcoxon(diffs).pvalue)
    assert wilcoxon_floor(5) == 0.0625


def test_bootstrap_two_level_is_deterministic_and_covers_both_levels():
    rng = np.random.default_rng(3)
    diffs = 0.01 + rng.normal(0, 0.005, (5, 1)) + rng.normal(0, 0.05, (5, 40))
    first = bootstrap_two_level(diffs, 0.95, 10_000, seed=[0, 7])
    assert first == bootstrap_two_level(diffs, 0.95, 10_000, seed=[0, 7])
    assert first != bootstrap_two_level(diffs, 0.95, 10_000, seed=[1, 7])
    assert first[0] < diffs.mean() < first[1]
    # Constant differences: every resample has the same mean.
    assert bootstrap_two_level(np.full((5, 10), 0.02), 0.95, 500) == pytest.approx((0.02, 0.02))
    # Seed-level spread alone (identical images) or image-level spread alone (identical seeds) both widen it.
    seeds_only = np.repeat(np.array([[0.0], [0.01], [0.02], [0.03], [0.04]]), 10, axis=1)
    images_only = np.repeat(np.linspace(-0.05, 0.05, 10)[None, :], 5, axis=0)
    for spread in (seeds_only, images_only):
        low, high = bootstrap_two_level(spread, 0.95, 2_000)
        assert high - low > 0.01


def test_bootstrap_two_level_matches_a_loop_over_resamples():
    diffs = np.random.default_rng(4).normal(0, 1, (4, 7))
    n_resamples = 50
    generator = np.random.default_rng(11)
    seed_counts = generator.multinomial(4, np.full(4, 1 / 4), size=n_resamples)
    image_counts = generator.multinomial(7, np.full(7, 1 / 7), size=n_resamples)
    means = [
        np.mean(
            [diffs[s][np.repeat(np.arange(7), image_counts[b])].mean() for s in np.repeat(np.arange(4), seed_counts[b])]
        )
        for b in range(n_resamples)
    ]
    expected = np.percentile(means, [5, 95])
    assert bootstrap_two_level(diffs, 0.9, n_resamples, seed=11) == pytest.approx(tuple(expected), rel=1e-12)


def test_bootstrap_two_level_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        bootstrap_two_level(np.zeros(5))
    with pytest.raises(ValueError, match="finite"):
        bootstrap_two_level(np.array([[0.0, np.nan]]))
