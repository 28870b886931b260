"""Paired statistics for comparing segmentation models trained with matched seeds.

Every test here works on pairs: seed-matched runs of two variants (same seed, same split) or, for the
secondary analysis, the same test image scored by two variants. Differences are always ``a - b``.

Deliberately free of torch so the reporting stage runs on a bare analysis environment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import optimize, stats

Alternative = Literal["two-sided", "greater", "less"]


@dataclass(frozen=True)
class PairedTTestResult:
    """Paired t-test of ``a - b``.

    Attributes:
        n: number of pairs.
        mean_diff: mean of the differences ``a - b``.
        sd_diff: sample standard deviation of the differences (ddof=1).
        ci_low: lower bound of the t-based confidence interval for the mean difference.
        ci_high: upper bound of that interval.
        confidence_level: level of the interval, e.g. 0.95.
        t: t statistic.
        df: degrees of freedom, ``n - 1``.
        p: p-value for the requested alternative (two-sided by default).
        dz: Cohen's d_z, ``mean_diff / sd_diff``.
    """

    n: int
    mean_diff: float
    sd_diff: float
    ci_low: float
    ci_high: float
    confidence_level: float
    t: float
    df: int
    p: float
    dz: float


@dataclass(frozen=True)
class SignedRankResult:
    """Wilcoxon signed-rank test of ``a - b``.

    Attributes:
        n: number of pairs.
        n_nonzero: pairs with a non-zero difference (zeros are dropped, scipy's ``zero_method="wilcox"``).
        statistic: scipy's statistic (the smaller of the positive and negative rank sums, two-sided).
        p: two-sided p-value.
    """

    n: int
    n_nonzero: int
    statistic: float
    p: float


@dataclass(frozen=True)
class TostResult:
    """Paired two one-sided tests (TOST) for equivalence of ``a`` and ``b`` within ``±margin``.

    Attributes:
        n: number of pairs.
        margin: equivalence margin, in the units of the data.
        alpha: level of each one-sided test.
        mean_diff: mean of ``a - b``.
        p_lower: p-value of H0 ``mean_diff <= -margin`` against ``mean_diff > -margin``.
        p_upper: p-value of H0 ``mean_diff >= margin`` against ``mean_diff < margin``.
        p: ``max(p_lower, p_upper)``, the TOST p-value.
        ci_low: lower bound of the ``1 - 2 alpha`` (90% at alpha 0.05) t-interval of the mean difference.
        ci_high: upper bound of that interval.
        confidence_level: ``1 - 2 alpha``.
        equivalent: ``p < alpha``; equivalently, the interval lies inside ``(-margin, margin)``.
    """

    n: int
    margin: float
    alpha: float
    mean_diff: float
    p_lower: float
    p_upper: float
    p: float
    ci_low: float
    ci_high: float
    confidence_level: float
    equivalent: bool


@dataclass(frozen=True)
class SeedsNeeded:
    """Smallest number of paired seeds reaching a target power, searched up to a cap.

    Attributes:
        n: the smallest sufficient number of pairs, or None when even ``cap`` pairs are not enough.
        cap: the largest number of pairs considered.
    """

    n: int | None
    cap: int

    @property
    def exceeds_cap(self) -> bool:
        """Whether more than ``cap`` pairs would be needed."""
        return self.n is None

    def __str__(self) -> str:
        return f"> {self.cap}" if self.n is None else str(self.n)


def mean_interval(values: Sequence[float], alpha: float = 0.05) -> tuple[float, float, float]:
    """The mean of ``values`` (e.g. one variant's seeds) and its two-sided (1 - alpha) Student-t interval; the
    interval is (nan, nan) for fewer than two values."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(1 - alpha / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def _differences(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """Validate two paired samples and return ``a - b`` as a float array.

    Args:
        a: first sample.
        b: second sample, paired element-wise with ``a``.

    Returns:
        The differences.
    """
    a_arr = np.asarray(a, dtype=float)
    b_arr = np.asarray(b, dtype=float)
    if a_arr.ndim != 1 or a_arr.shape != b_arr.shape:
        raise ValueError(f"paired samples must be 1-D and of equal length, got {a_arr.shape} and {b_arr.shape}")
    if a_arr.size < 2:
        raise ValueError(f"need at least 2 pairs, got {a_arr.size}")
    if not (np.all(np.isfinite(a_arr)) and np.all(np.isfinite(b_arr))):
        raise ValueError("paired samples must be finite")
    return a_arr - b_arr


def _t_test_of_mean(
    diffs: np.ndarray, null_mean: float, alternative: Alternative, confidence_level: float
) -> tuple[float, float, float, float]:
    """One-sample t-test of the differences' mean against ``null_mean``, plus its confidence interval.

    scipy answers nan (all differences equal to the null) or inf with precision warnings when the
    differences have zero spread, which happens when two variants give identical scores on every seed.
    That case is taken as the limit ``sd -> 0``: t is 0 or ±inf and the p-value follows from it.

    Args:
        diffs: paired differences.
        null_mean: mean under the null hypothesis.
        alternative: "two-sided", "greater" or "less".
        confidence_level: level of the interval for the mean (two-sided for "two-sided").

    Returns:
        ``(t, p, ci_low, ci_high)``.
    """
    df = diffs.size - 1
    if np.ptp(diffs) > 0:
        result = stats.ttest_1samp(diffs, null_mean, alternative=alternative)
        interval = result.confidence_interval(confidence_level)
        return float(result.statistic), float(result.pvalue), float(interval.low), float(interval.high)
    gap = float(diffs[0]) - null_mean
    t = 0.0 if gap == 0 else math.copysign(math.inf, gap)
    p = {
        "two-sided": 2 * stats.t.sf(abs(t), df),
        "greater": stats.t.sf(t, df),
        "less": stats.t.cdf(t, df),
    }[alternative]
    return t, float(p), float(diffs[0]), float(diffs[0])


def paired_ttest(
    a: Sequence[float],
    b: Sequence[float],
    confidence_level: float = 0.95,
    alternative: Alternative = "two-sided",
    null_difference: float = 0.0,
) -> PairedTTestResult:
    """Paired t-test of ``a - b`` with a t-based confidence interval and Cohen's d_z.

    Identical to ``scipy.stats.ttest_rel`` on ``a - null_difference`` and ``b``, except that differences
    with zero spread give the ``sd -> 0`` limit (t = 0, p = 1 two-sided, when every difference equals the
    null; t = ±inf, p = 0 otherwise) instead of nan.

    Args:
        a: scores of the first variant, one per pair (e.g. per seed).
        b: scores of the second variant, paired element-wise with ``a``.
        confidence_level: level of the interval for the mean difference.
        alternative: alternative hypothesis about the mean of ``a - b`` relative to ``null_difference``;
            the interval is one-sided (as in scipy) for "greater" and "less".
        null_difference: mean difference under H0, e.g. a paper's claimed gain D for the one-sided test of
            H0 ``mean >= D`` against ``mean < D`` (``alternative="less"``).

    Returns:
        The test result; ``dz`` is ``mean_diff / sd_diff`` (0 when all differences are 0), whatever the null.
    """
    diffs = _differences(a, b)
    mean_diff = float(diffs.mean())
    sd_diff = float(diffs.std(ddof=1))
    t, p, ci_low, ci_high = _t_test_of_mean(diffs, null_difference, alternative, confidence_level)
    if sd_diff > 0:
        dz = mean_diff / sd_diff
    else:
        dz = 0.0 if mean_diff == 0 else math.copysign(math.inf, mean_diff)
    return PairedTTestResult(
        n=int(diffs.size),
        mean_diff=mean_diff,
        sd_diff=sd_diff,
        ci_low=ci_low,
        ci_high=ci_high,
        confidence_level=confidence_level,
        t=t,
        df=int(diffs.size - 1),
        p=p,
        dz=dz,
    )


def wilcoxon_signed_rank(a: Sequence[float], b: Sequence[float]) -> SignedRankResult:
    """Two-sided Wilcoxon signed-rank test of ``a - b`` (scipy, zeros dropped).

    With few pairs the exact distribution is coarse: 5 pairs cannot give a two-sided p below 0.0625, so
    this test alone can never reach 0.05 at the typical 3-5 seeds. When every difference is zero there
    is nothing to rank and the result is statistic 0, p = 1 (scipy would warn and divide by zero).

    Args:
        a: scores of the first variant.
        b: scores of the second variant, paired element-wise with ``a``.

    Returns:
        The test result.
    """
    diffs = _differences(a, b)
    n_nonzero = int(np.count_nonzero(diffs))
    if n_nonzero == 0:
        return SignedRankResult(n=int(diffs.size), n_nonzero=0, statistic=0.0, p=1.0)
    result = stats.wilcoxon(diffs, zero_method="wilcox", alternative="two-sided")
    return SignedRankResult(
        n=int(diffs.size), n_nonzero=n_nonzero, statistic=float(result.statistic), p=float(result.pvalue)
    )


def wilcoxon_floor(n: int) -> float:
    """Smallest two-sided p-value the exact signed-rank test can give with ``n`` non-zero differences.

    It is reached when every difference has the same sign: 2 of the ``2**n`` equally likely sign patterns
    are that extreme, so p = ``2 / 2**n`` (0.0625 at n = 5: never below 0.05, whatever the data).

    Args:
        n: number of pairs (>= 1).

    Returns:
        The floor of the exact two-sided p-value.
    """
    if n < 1:
        raise ValueError(f"need at least 1 pair, got {n}")
    return min(1.0, 2.0 * 0.5**n)


def holm_bonferroni(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (controls the family-wise error rate).

    Sorted ascending, the i-th smallest p (0-based) is multiplied by ``m - i``; a running maximum keeps
    the adjusted values monotone in the raw ones, and they are capped at 1. scipy has no Holm
    adjustment (``false_discovery_control`` only does BH/BY), hence this implementation.

    Args:
        pvalues: raw p-values, each in [0, 1].

    Returns:
        Adjusted p-values in the input order; reject H0_i at level alpha iff adjusted_i < alpha
        (equivalently <=, up to ties at alpha).
    """
    raw = np.asarray(pvalues, dtype=float)
    if raw.ndim != 1:
        raise ValueError("pvalues must be 1-D")
    if np.any(~np.isfinite(raw)) or np.any((raw < 0) | (raw > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {raw}")
    order = np.argsort(raw, kind="stable")
    multipliers = raw.size - np.arange(raw.size)
    adjusted_sorted = np.minimum(np.maximum.accumulate(multipliers * raw[order]), 1.0)
    adjusted = np.empty_like(raw)
    adjusted[order] = adjusted_sorted
    return adjusted


def tost_paired(a: Sequence[float], b: Sequence[float], margin: float, alpha: float = 0.05) -> TostResult:
    """Paired equivalence test: two one-sided paired t-tests against ``-margin`` and ``+margin``.

    Equivalence is declared when both one-sided nulls are rejected at ``alpha``, i.e. when the
    ``1 - 2 alpha`` confidence interval of the mean difference lies inside ``(-margin, margin)``.

    Args:
        a: scores of the candidate variant.
        b: scores of the reference variant, paired element-wise with ``a``.
        margin: equivalence margin (> 0), in the units of the scores.
        alpha: level of each one-sided test.

    Returns:
        The TOST result with the ``1 - 2 alpha`` interval.
    """
    if margin <= 0:
        raise ValueError(f"margin must be positive, got {margin}")
    diffs = _differences(a, b)
    confidence_level = 1 - 2 * alpha
    _, p_lower, _, _ = _t_test_of_mean(diffs, -margin, "greater", confidence_level)
    _, p_upper, _, _ = _t_test_of_mean(diffs, margin, "less", confidence_level)
    _, _, ci_low, ci_high = _t_test_of_mean(diffs, 0.0, "two-sided", confidence_level)
    p = max(p_lower, p_upper)
    return TostResult(
        n=int(diffs.size),
        margin=float(margin),
        alpha=float(alpha),
        mean_diff=float(diffs.mean()),
        p_lower=p_lower,
        p_upper=p_upper,
        p=p,
        ci_low=ci_low,
        ci_high=ci_high,
        confidence_level=confidence_level,
        equivalent=bool(p < alpha),
    )


def _check_design(n: int, alpha: float, power: float) -> None:
    """Reject impossible power-analysis inputs.

    Args:
        n: number of pairs.
        alpha: two-sided significance level.
        power: target power.
    """
    if n < 2:
        raise ValueError(f"a paired t-test needs at least 2 pairs, got {n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if not alpha < power < 1:
        raise ValueError(f"power must lie in (alpha, 1), got {power}")


def paired_t_power(effect_size_dz: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test, from the noncentral t distribution.

    Under a true standardized mean difference d_z the statistic follows a noncentral t with ``n - 1``
    degrees of freedom and noncentrality ``d_z sqrt(n)``; power is the mass beyond ``±t_crit``.

    Args:
        effect_size_dz: true mean difference divided by the s.d. of the differences (may be inf).
        n: number of pairs (>= 2).
        alpha: two-sided significance level.

    Returns:
        The probability of rejecting H0 ``mean = 0``.
    """
    if n < 2:
        raise ValueError(f"a paired t-test needs at least 2 pairs, got {n}")
    if math.isinf(effect_size_dz):
        return 1.0
    df = n - 1
    noncentrality = abs(effect_size_dz) * math.sqrt(n)
    t_crit = stats.t.ppf(1 - alpha / 2, df)
    # The wrong-sign tail P(T < -t_crit) is taken as P(T > t_crit) at -noncentrality: scipy's nct.cdf
    # answers nan instead of ~0 far in the lower tail (e.g. n = 10, d_z = 5).
    return float(stats.nct.sf(t_crit, df, noncentrality) + stats.nct.sf(t_crit, df, -noncentrality))


def minimal_detectable_difference(sd_diff: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference the two-sided paired t-test detects with the given power.

    Power depends on the difference only through d_z, so the d_z reaching ``power`` is solved for
    numerically on the noncentral t (Brent's method) and scaled by ``sd_diff``. The normal
    approximation ``(z_{1-alpha/2} + z_power) sd / sqrt(n)`` is only used as a starting bracket; at
    n = 3-5 seeds it underestimates the exact answer badly.

    Args:
        sd_diff: standard deviation of the paired differences (e.g. observed across seeds).
        n: number of pairs.
        alpha: two-sided significance level.
        power: target power.

    Returns:
        The minimal detectable difference, in the units of ``sd_diff``.
    """
    if sd_diff < 0:
        raise ValueError(f"sd_diff must be non-negative, got {sd_diff}")
    _check_design(n, alpha, power)

    def power_gap(dz: float) -> float:
        return paired_t_power(dz, n, alpha) - power

    upper = 2 * (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) / math.sqrt(n)
    while power_gap(upper) < 0:
        upper *= 2
    detectable_dz = optimize.brentq(power_gap, 0.0, upper, xtol=1e-10)
    return float(sd_diff * detectable_dz)


def seeds_needed(sd_diff: float, delta: float, alpha: float = 0.05, power: float = 0.8, cap: int = 100) -> SeedsNeeded:
    """Smallest number of paired seeds for which the two-sided paired t-test has at least ``power``.

    Power grows with n at fixed d_z, so a bisection over ``[2, cap]`` finds the smallest sufficient n.

    Args:
        sd_diff: standard deviation of the paired differences.
        delta: true mean difference to detect (its sign is irrelevant).
        alpha: two-sided significance level.
        power: target power.
        cap: largest number of seeds considered.

    Returns:
        The number of seeds, or ``n=None`` (printed "> cap") when ``cap`` seeds are not enough.
    """
    if sd_diff < 0:
        raise ValueError(f"sd_diff must be non-negative, got {sd_diff}")
    _check_design(cap, alpha, power)
    if delta == 0:
        return SeedsNeeded(n=None, cap=cap)
    dz = math.inf if sd_diff == 0 else abs(delta) / sd_diff
    if paired_t_power(dz, cap, alpha) < power:
        return SeedsNeeded(n=None, cap=cap)
    too_few, enough = 1, cap
    while enough - too_few > 1:
        middle = (too_few + enough) // 2
        if paired_t_power(dz, middle, alpha) >= power:
            enough = middle
        else:
            too_few = middle
    return SeedsNeeded(n=enough, cap=cap)


def bootstrap_two_level(
    differences: np.ndarray,
    confidence_level: float = 0.95,
    n_resamples: int = 10_000,
    seed: int | Sequence[int] = 0,
) -> tuple[float, float]:
    """Percentile interval of the mean paired difference, resampling seeds and test images together.

    ``differences[s, i]`` is the score difference of the two variants trained with seed ``s`` on test image
    ``i``. Each resample draws the seeds with replacement (training variability) and, independently, the
    test images with replacement (test-set sampling); the images are one test set shared by every seed, so
    one image draw serves all seeds of a resample. The statistic is the mean over the drawn seeds of the
    mean over the drawn images. Draws are multinomial counts, so the whole bootstrap is two matrix products.

    Args:
        differences: array of shape (seeds, images), finite.
        confidence_level: level of the two-sided percentile interval.
        n_resamples: number of bootstrap resamples.
        seed: seed (or seed sequence) of NumPy's generator, so the interval is the same on every run.

    Returns:
        ``(low, high)``.
    """
    diffs = np.asarray(differences, dtype=float)
    if diffs.ndim != 2 or min(diffs.shape) < 1:
        raise ValueError(f"differences must be a non-empty (seeds, images) array, got shape {diffs.shape}")
    if not np.all(np.isfinite(diffs)):
        raise ValueError("differences must be finite")
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level must lie in (0, 1), got {confidence_level}")
    n_seeds, n_images = diffs.shape
    rng = np.random.default_rng(seed)
    seed_weights = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=n_resamples) / n_seeds
    image_weights = rng.multinomial(n_images, np.full(n_images, 1 / n_images), size=n_resamples) / n_images
    means = ((seed_weights @ diffs) * image_weights).sum(axis=1)
    tail = 100 * (1 - confidence_level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)
