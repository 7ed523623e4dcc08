"""Statistics of a robustness report against known values (Wilson interval, exact McNemar, seeds, combination)."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from lrrobust.evaluation.stats import (
    PairedTest,
    adjust_family,
    combine_paired,
    exact_mcnemar,
    format_p,
    holm,
    summarize_seeds,
    wilson_interval,
)


def _wilson_closed(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    z = stats.norm.ppf((1 + confidence) / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def _vectors(a_only: int, b_only: int, both: int = 0, neither: int = 0) -> tuple[list[bool], list[bool]]:
    a = [True] * a_only + [False] * b_only + [True] * both + [False] * neither
    b = [False] * a_only + [True] * b_only + [True] * both + [False] * neither
    return a, b


def _paired(a_only: int, b_only: int, n: int) -> PairedTest:
    return exact_mcnemar(*_vectors(a_only, b_only, both=n - a_only - b_only))


# --- Wilson ---------------------------------------------------------------------------------------------------


def test_wilson_81_of_263_known_value():
    low, high = wilson_interval(81, 263)
    assert round(low, 3) == 0.255 and round(high, 3) == 0.366
    assert low == pytest.approx(0.2553, abs=1e-4) and high == pytest.approx(0.3662, abs=1e-4)
    ref = stats.binomtest(81, 263).proportion_ci(0.95, method="wilson")
    assert (low, high) == pytest.approx((ref.low, ref.high), abs=1e-12)


@pytest.mark.parametrize("k,n", [(81, 263), (1, 10), (5, 10), (9, 10), (3, 1000), (500, 1000)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_agrees_with_closed_formula(k, n, confidence):
    assert wilson_interval(k, n, confidence) == pytest.approx(_wilson_closed(k, n, confidence), abs=1e-9)


def test_wilson_edges():
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(0.7225, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_wider_at_higher_confidence():
    lo90, hi90 = wilson_interval(81, 263, 0.90)
    lo99, hi99 = wilson_interval(81, 263, 0.99)
    assert lo99 < lo90 and hi99 > hi90


@pytest.mark.parametrize("k,n", [(-1, 10), (11, 10), (0, -1)])
def test_wilson_rejects_bad_counts(k, n):
    with pytest.raises(ValueError):
        wilson_interval(k, n)


# --- exact McNemar --------------------------------------------------------------------------------------------


def test_mcnemar_10_vs_2():
    a, b = _vectors(10, 2, both=50, neither=38)
    t = exact_mcnemar(a, b)
    assert (t.n, t.a_only, t.b_only) == (100, 10, 2)
    assert t.p_value == pytest.approx(158 / 4096, rel=1e-9)  # 2 * P(X <= 2), X ~ Bin(12, 1/2)
    assert t.p_value == pytest.approx(0.03857, abs=1e-5)
    assert t.difference == pytest.approx(0.08)
    assert t.significant and t.alpha == 0.05
    assert not exact_mcnemar(a, b, alpha=0.01).significant


def test_mcnemar_is_symmetric_in_sign():
    a, b = _vectors(10, 2, both=5)
    ab, ba = exact_mcnemar(a, b), exact_mcnemar(b, a)
    assert ab.p_value == pytest.approx(ba.p_value)
    assert ab.difference == pytest.approx(-ba.difference) == pytest.approx(8 / 17)
    assert (ba.a_only, ba.b_only) == (2, 10)


def test_mcnemar_balanced_discordance():
    t = exact_mcnemar(*_vectors(5, 5, both=3, neither=7))
    assert t.p_value == 1.0 and t.difference == 0.0 and not t.significant


def test_mcnemar_identical_vectors():
    v = [True, False, True, True, False]
    t = exact_mcnemar(v, list(v))
    assert (t.a_only, t.b_only, t.p_value, t.significant) == (0, 0, 1.0, False)


def test_mcnemar_accepts_numpy():
    np = pytest.importorskip("numpy")
    a, b = _vectors(7, 0, both=1)
    t = exact_mcnemar(np.array(a), np.array(b))
    assert t.p_value == pytest.approx(2 / 2**7)  # all 7 discordant for A: 2 * (1/2)^7


def test_mcnemar_rejects_mismatch_and_empty():
    with pytest.raises(ValueError, match="length"):
        exact_mcnemar([True, False], [True])
    with pytest.raises(ValueError):
        exact_mcnemar([], [])


# --- seeds ----------------------------------------------------------------------------------------------------


def test_summarize_three_seeds():
    s = summarize_seeds([0.30, 0.25, 0.35])
    assert s.values == (0.30, 0.25, 0.35)
    assert s.mean == pytest.approx(0.30) and s.std == pytest.approx(0.05)
    assert (s.minimum, s.maximum) == (0.25, 0.35)
    half = 4.302653 * 0.05 / math.sqrt(3)
    assert s.interval == pytest.approx((0.30 - half, 0.30 + half), abs=1e-6)
    assert s.interval[0] == pytest.approx(0.1758, abs=1e-4)


def test_summarize_one_and_two_seeds():
    one = summarize_seeds([0.4])
    assert (one.mean, one.std, one.minimum, one.maximum, one.interval) == (0.4, 0.0, 0.4, 0.4, None)
    two = summarize_seeds([0.2, 0.4])
    assert two.std == pytest.approx(math.sqrt(0.02)) and two.interval is None


def test_summarize_rejects_empty():
    with pytest.raises(ValueError):
        summarize_seeds([])


# --- combination ----------------------------------------------------------------------------------------------


def test_combine_three_seeds_agreeing():
    tests = [_paired(30, 10, 1000), _paired(25, 8, 1000), _paired(28, 12, 1000)]
    c = combine_paired(tests)
    assert (c.pooled.n, c.pooled.a_only, c.pooled.b_only) == (3000, 83, 30)
    assert c.pooled.p_value == pytest.approx(stats.binomtest(83, 113, 0.5).pvalue)
    assert c.pooled.difference == pytest.approx(53 / 3000)
    diffs = [0.020, 0.017, 0.016]
    assert c.seeds_p_value == pytest.approx(stats.ttest_1samp(diffs, 0).pvalue)
    assert c.seeds_p_value < 0.05
    assert c.consistent and c.significant
    assert c.verdict.startswith("significant") and "3 seeds agree" in c.verdict
    assert c.per_seed == tuple(tests)


def test_combine_seeds_disagree():
    tests = [_paired(40, 5, 1000), _paired(5, 30, 1000), _paired(40, 5, 1000)]
    c = combine_paired(tests)
    assert (c.pooled.a_only, c.pooled.b_only) == (85, 40)
    assert c.pooled.p_value < 0.05  # pooled alone would call it
    assert not c.consistent and not c.significant
    assert "disagree" in c.verdict and c.verdict.startswith("not significant")


def test_combine_pooled_not_significant():
    c = combine_paired([_paired(6, 5, 500), _paired(7, 6, 500), _paired(5, 5, 500)])
    assert (c.pooled.a_only, c.pooled.b_only) == (18, 16)
    assert c.consistent and not c.significant
    assert c.verdict == f"not significant (pooled McNemar {format_p(c.pooled.p_value)})"
    assert c.pooled.p_value == pytest.approx(stats.binomtest(18, 34).pvalue)


def test_combine_pooled_significant_but_seeds_t_test_not():
    # pooled count is huge for A, but the per-seed differences vary too much for 3 seeds
    c = combine_paired([_paired(200, 0, 1000), _paired(1, 0, 1000), _paired(1, 0, 1000)])
    assert c.pooled.p_value < 1e-50 and c.consistent
    assert c.seeds_p_value == pytest.approx(stats.ttest_1samp([0.2, 0.001, 0.001], 0).pvalue)
    assert c.seeds_p_value > 0.05 and not c.significant
    assert c.verdict.startswith("not significant across seeds (t-test over seeds p = ")
    assert c.p_value == c.seeds_p_value and c.decided_by == "t-test over seeds"  # the p printed is the one that decided


def test_combine_identical_seeds_zero_variance():
    c = combine_paired([_paired(20, 2, 1000)] * 3)
    assert c.seeds_p_value == 0.0 and c.significant
    z = combine_paired([_paired(4, 4, 1000)] * 3)
    assert z.seeds_p_value == 1.0 and not z.significant


def test_combine_single_seed():
    c = combine_paired([_paired(10, 2, 100)])
    assert c.seeds_p_value is None and c.significant
    assert c.pooled.p_value == pytest.approx(158 / 4096)
    assert "1 seed: image sampling only, training-seed variation untested" in c.verdict
    assert c.verdict.startswith("significant (pooled McNemar p = 0.039")
    n = combine_paired([_paired(5, 5, 100)])
    assert not n.significant and n.verdict.startswith("not significant (pooled McNemar p = 1.000") and "1 seed" in \
        n.verdict


def test_combine_two_seeds_no_t_test():
    c = combine_paired([_paired(20, 2, 1000), _paired(15, 3, 1000)])
    assert c.seeds_p_value is None and c.significant and "2 seeds" in c.verdict


def test_combine_rejects_empty():
    with pytest.raises(ValueError):
        combine_paired([])


def test_format_p():
    assert format_p(0.0004) == "p < 0.001"
    assert format_p(0.0) == "p < 0.001"
    assert format_p(0.03857) == "p = 0.039"
    assert format_p(0.41) == "p = 0.410"
    assert format_p(1.0) == "p = 1.000"


def test_a_t_interval_over_seeds_never_leaves_the_unit_interval():
    from lrrobust.evaluation.stats import summarize_seeds

    wide = summarize_seeds([0.058, 0.092, 0.282])  # the MNIST LR-Nets' untargeted figures: the t-interval reaches -0.16
    assert wide.interval[0] == 0.0 and 0.144 < wide.interval[1] < 1.0
    high = summarize_seeds([0.912, 0.918, 0.768])
    assert high.interval[1] == 1.0 and high.interval[0] < high.mean


# --- the p that decided, and Holm over a report's family -----------------------------------------------------


def test_the_p_of_a_combined_test_is_the_largest_of_its_parts():
    """Significant needs the pooled test and the seeds' t-test both: the p printed is the larger, named."""
    c = combine_paired([_paired(30, 10, 1000), _paired(25, 8, 1000), _paired(28, 12, 1000)])
    assert c.p_value == max(c.pooled.p_value, c.seeds_p_value)
    assert c.decided_by == ("t-test over seeds" if c.seeds_p_value > c.pooled.p_value else "pooled McNemar")
    assert f"{c.decided_by} {format_p(c.p_value)}" in c.verdict
    two = combine_paired([_paired(20, 2, 1000), _paired(15, 3, 1000)])
    assert two.p_value == two.pooled.p_value and two.decided_by == "pooled McNemar"


def test_holm_step_down():
    # the textbook example: p = 0.01, 0.04, 0.03, 0.005 -> 4 x 0.005, 3 x 0.01, 2 x 0.03, then monotone
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == [] and holm([0.2]) == [0.2]
    p = [0.001, 0.2, 0.013, 0.04, 0.0004]
    adjusted = holm(p)
    assert all(a >= q for a, q in zip(adjusted, p))  # never below the raw p
    order = sorted(range(len(p)), key=p.__getitem__)
    assert [adjusted[i] for i in order] == sorted(adjusted)  # monotone in the raw p


def test_adjust_family_turns_chance_findings_into_not_significant():
    """Twelve tests at raw p about 0.02: each passes alone, none after Holm over the family."""
    borderline = combine_paired([_paired(14, 4, 500)])  # exact McNemar p = 0.031
    strong = combine_paired([_paired(60, 5, 500)])
    assert borderline.significant and 0.01 < borderline.p_value < 0.05
    family = adjust_family([borderline] * 11 + [strong])
    assert [t.family_size for t in family] == [12] * 12
    assert [t.p_adjusted for t in family] == pytest.approx(holm([borderline.p_value] * 11 + [strong.p_value]))
    assert not any(t.significant for t in family[:11]) and family[11].significant
    assert family[0].verdict.startswith("not significant (Holm-adjusted p = ")
    assert "pooled McNemar p = 0.031, 12 tests" in family[0].verdict
    assert family[11].verdict.startswith("significant (Holm-adjusted p < 0.001")
    assert family[0].p_value == borderline.p_value  # the raw p stays beside the adjusted one
