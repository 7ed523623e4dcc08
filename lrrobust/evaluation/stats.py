"""Statistics of a robustness report: how sure is an accuracy, and is one model really more robust than another?

A robust accuracy is measured on a finite sample of test images and for a finite number of training seeds, so a
report gives it with its uncertainty and says "A beats B" only when the data support it:

- ``wilson_interval``: the Wilson score interval of a proportion (E. B. Wilson 1927, "Probable inference, the law
  of succession, and statistical inference", JASA 22:209-212). Unlike the normal (Wald) interval it stays inside
  [0, 1] and keeps its coverage near 0 and 1, where robust accuracies often lie.
- ``exact_mcnemar``: two models evaluated on the SAME images are paired, so their accuracies are compared on the
  discordant images only (right for one model, wrong for the other): McNemar's test (Q. McNemar 1947, "Note on
  the sampling error of the difference between correlated proportions or percentages", Psychometrika
  12:153-157), here in its exact form, a two-sided binomial test of ``a_only`` out of ``a_only + b_only`` at
  p = 1/2, which is valid for the small discordant counts of a robustness table where the chi-square form is not.
- ``summarize_seeds``: mean, sample standard deviation, range and a t-interval of an accuracy over training seeds.
- ``combine_paired``: several seeds' paired tests into one verdict. The pooled exact McNemar test (discordant
  counts summed over seeds) covers image sampling; the t-test of the per-seed differences (3 seeds or more) covers
  training-seed variation; and the per-seed differences must not point in opposite directions. A difference is
  significant only when every one of these rejects (an intersection-union test, Berger 1982), so its p-value is the
  largest of the component p-values: the p of the test that decided, which is the one a report prints.
- ``holm`` and ``adjust_family``: a report makes one paired comparison per pair of rows and column, a dozen or more,
  so some would pass at 5% by chance alone. Holm's step-down procedure (S. Holm 1979, "A simple sequentially
  rejective multiple test procedure", Scand. J. Statist. 6:65-70) bounds the chance of any false "significant" in
  the family at 5% under any dependence between the tests; Benjamini-Hochberg would bound only the expected share
  of false ones, and only under positive dependence. The comparisons of one report share models and images (the
  targeted and untargeted columns of one pair are strongly dependent), and each one is read as a finding of its own
  (the paper's claims are four of them), so the family-wise guarantee is the one that fits.

scipy.stats supplies the numerics (``binomtest``, ``t``, ``ttest_1samp``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CombinedTest", "PairedTest", "SeedSummary", "adjust_family", "combine_paired", "exact_mcnemar", "format_p",
    "holm", "summarize_seeds", "wilson_interval",
]

_MIN_SEEDS_FOR_T = 3
_ONE_SEED_NOTE = "1 seed: image sampling only, training-seed variation untested"


def _check_level(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}")


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion ``successes / n`` as fractions in [0, 1]; ``n == 0`` gives (0, 1)."""
    from scipy import stats  # here, not at the top: importing it costs every process about 1.2 s of start-up
    _check_level("confidence", confidence)
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return (min(max(float(ci.low), 0.0), 1.0), min(max(float(ci.high), 0.0), 1.0))


@dataclass(frozen=True)
class PairedTest:
    """Exact McNemar test of two models on the same images.

    ``n``: images compared; ``a_only``/``b_only``: images right for A and wrong for B / the reverse;
    ``difference``: accuracy of A minus accuracy of B (fraction); ``p_value``: two-sided;
    ``significant``: ``p_value < alpha``.
    """

    n: int
    a_only: int
    b_only: int
    difference: float
    p_value: float
    significant: bool
    alpha: float


def _paired_from_counts(n: int, a_only: int, b_only: int, alpha: float) -> PairedTest:
    from scipy import stats  # here, not at the top: importing it costs every process about 1.2 s of start-up
    discordant = a_only + b_only
    if n <= 0 or a_only < 0 or b_only < 0 or discordant > n:
        raise ValueError(f"inconsistent counts: n={n}, a_only={a_only}, b_only={b_only}")
    p = 1.0 if discordant == 0 else min(1.0, float(stats.binomtest(a_only, discordant, 0.5).pvalue))
    return PairedTest(n=n, a_only=a_only, b_only=b_only, difference=(a_only - b_only) / n, p_value=p,
                      significant=p < alpha, alpha=alpha)


def exact_mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool], alpha: float = 0.05) -> PairedTest:
    """Exact McNemar test from per-image correctness of models A and B on the same images, in the same order."""
    _check_level("alpha", alpha)
    a = np.asarray(correct_a, dtype=bool).reshape(-1)
    b = np.asarray(correct_b, dtype=bool).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"correct_a and correct_b differ in length: {a.size} vs {b.size}")
    if a.size == 0:
        raise ValueError("no images to compare")
    return _paired_from_counts(int(a.size), int(np.sum(a & ~b)), int(np.sum(~a & b)), alpha)


@dataclass(frozen=True)
class SeedSummary:
    """An accuracy over training seeds (fractions): ``std`` is the sample std (ddof=1, 0.0 for one seed);
    ``interval`` the t-interval of the mean, only with 3 seeds or more (else None)."""

    values: tuple[float, ...]
    mean: float
    std: float
    minimum: float
    maximum: float
    interval: tuple[float, float] | None


def summarize_seeds(values: Sequence[float], confidence: float = 0.95) -> SeedSummary:
    """Mean, sample std, range and (3 seeds or more) t-interval of the mean of per-seed accuracies, clipped to
    [0, 1] (with 3 seeds and a large spread the t-interval reaches past what an accuracy can be)."""
    from scipy import stats  # here, not at the top: importing it costs every process about 1.2 s of start-up
    _check_level("confidence", confidence)
    vals = tuple(float(v) for v in values)
    if not vals:
        raise ValueError("no seed values to summarize")
    k = len(vals)
    mean = float(np.mean(vals))
    std = float(np.std(vals, ddof=1)) if k > 1 else 0.0
    interval: tuple[float, float] | None = None
    if k >= _MIN_SEEDS_FOR_T:
        half = float(stats.t.ppf((1.0 + confidence) / 2.0, df=k - 1)) * std / math.sqrt(k)
        interval = (max(0.0, mean - half), min(1.0, mean + half))  # an accuracy lies in [0, 1]
    return SeedSummary(values=vals, mean=mean, std=std, minimum=min(vals), maximum=max(vals), interval=interval)


@dataclass(frozen=True)
class CombinedTest:
    """Paired tests over several training seeds combined into one verdict.

    ``pooled``: exact McNemar on the discordant counts summed over seeds; ``seeds_p_value``: one-sample t-test of
    the per-seed differences against 0 (3 seeds or more, else None); ``consistent``: no two seeds' differences
    have opposite signs; ``p_value``: the p of the test that decided, the larger of the pooled and the seeds' p
    (``decided_by`` names it); ``p_adjusted``: ``p_value`` adjusted by Holm over the report's family of
    ``family_size`` tests (None until ``adjust_family``); ``significant``: consistent and the adjusted p (the raw
    one before adjustment) below alpha.
    """

    per_seed: tuple[PairedTest, ...]
    pooled: PairedTest
    seeds_p_value: float | None
    consistent: bool
    significant: bool
    verdict: str
    p_value: float = 1.0
    decided_by: str = "pooled McNemar"
    p_adjusted: float | None = None
    family_size: int | None = None
    alpha: float = 0.05

    @property
    def seeds(self) -> int:
        return len(self.per_seed)

    def decision_text(self) -> str:
        """'Holm-adjusted p = 0.012 (t-test over seeds p = 0.004, 12 tests)', or the raw p before adjustment."""
        raw = f"{self.decided_by} {format_p(self.p_value)}"
        if self.p_adjusted is None:
            return raw
        return f"Holm-adjusted {format_p(self.p_adjusted)} ({raw}, {self.family_size} tests)"


def _seeds_t_test(diffs: Sequence[float]) -> float:
    from scipy import stats  # here, not at the top: importing it costs every process about 1.2 s of start-up
    if max(diffs) - min(diffs) <= 1e-12:  # zero variance: the t statistic is undefined
        return 1.0 if abs(diffs[0]) <= 1e-12 else 0.0
    return float(stats.ttest_1samp(diffs, 0.0).pvalue)


def _verdict(test: CombinedTest) -> str:
    """The verdict in words, with the p of the test that decided (adjusted when the family has been)."""
    k = test.seeds
    p = test.p_value if test.p_adjusted is None else test.p_adjusted
    decided = test.decision_text()
    if not test.consistent:
        verdict = f"not significant: seeds disagree in sign ({decided})"
    elif p >= test.alpha:
        across = " across seeds" if test.decided_by == "t-test over seeds" else ""
        verdict = f"not significant{across} ({decided})"
    elif k >= _MIN_SEEDS_FOR_T:
        verdict = f"significant ({decided}, {k} seeds agree)"
    elif k == 2:
        verdict = f"significant ({decided}, 2 seeds agree; too few for a t-test over seeds)"
    else:
        verdict = f"significant ({decided})"
    if k == 1:
        verdict = f"{verdict[:-1]}; {_ONE_SEED_NOTE})"
    return verdict


def _decide(test: CombinedTest) -> CombinedTest:
    p = test.p_value if test.p_adjusted is None else test.p_adjusted
    decided = dataclasses.replace(test, significant=test.consistent and p < test.alpha)
    return dataclasses.replace(decided, verdict=_verdict(decided))


def combine_paired(tests: Sequence[PairedTest], alpha: float = 0.05) -> CombinedTest:
    """Combine per-seed paired tests (one per training seed) into a pooled test, a seed t-test and a verdict."""
    _check_level("alpha", alpha)
    per_seed = tuple(tests)
    if not per_seed:
        raise ValueError("no paired tests to combine")
    k = len(per_seed)
    pooled = _paired_from_counts(sum(t.n for t in per_seed), sum(t.a_only for t in per_seed),
                                 sum(t.b_only for t in per_seed), alpha)
    diffs = [t.difference for t in per_seed]
    seeds_p = _seeds_t_test(diffs) if k >= _MIN_SEEDS_FOR_T else None
    consistent = not (any(d > 0 for d in diffs) and any(d < 0 for d in diffs))
    by_seeds = seeds_p is not None and seeds_p > pooled.p_value
    combined = CombinedTest(per_seed=per_seed, pooled=pooled, seeds_p_value=seeds_p, consistent=consistent,
                            significant=False, verdict="", p_value=seeds_p if by_seeds else pooled.p_value,
                            decided_by="t-test over seeds" if by_seeds else "pooled McNemar", alpha=alpha)
    return _decide(combined)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the i-th smallest p times (m - i + 1), made
    non-decreasing along that order and capped at 1. A test is significant at level alpha, with the chance of any
    false one in the family at most alpha, when its adjusted p is below alpha."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted


def adjust_family(tests: Sequence[CombinedTest]) -> list[CombinedTest]:
    """The tests of one family (one report's paired comparisons) with Holm-adjusted p-values and the verdicts they
    give."""
    adjusted = holm([t.p_value for t in tests])
    return [_decide(dataclasses.replace(t, p_adjusted=p, family_size=len(tests))) for t, p in zip(tests, adjusted)]


def format_p(p: float) -> str:
    """``"p < 0.001"`` below 0.001, else ``"p = 0.xxx"`` with 3 decimals."""
    if math.isnan(p):
        return "p = nan"
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}"
