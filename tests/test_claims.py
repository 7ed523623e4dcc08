"""The paper's Table 9 claims held against paired tests: supported, contradicted, not resolved, not measured."""

from __future__ import annotations

from lrrobust.evaluation.stats import combine_paired, exact_mcnemar
from lrrobust.report.claims import PAPER_CLAIMS, assess, claims_md, claims_sentence
from lrrobust.report.table9 import COLUMN, Comparison, Row


def rows():
    return [Row("LR-Net-26 (width 0.125)", "lrnet26", {}, {}), Row("ResNet-26 (width 0.125)", "resnet26", {}, {}),
            Row("ResNet-50 (width 0.125)", "resnet50", {}, {})]


def comparison(column, resnet, a_right, b_right, n=300, seeds=3):
    """Seeds with the same per-image outcome: LR-Net right on ``a_right`` images, the ResNet on ``b_right``."""
    a = [i < a_right for i in range(n)]
    b = [i < b_right for i in range(n)]
    test = combine_paired([exact_mcnemar(a, b) for _ in range(seeds)])
    return Comparison(COLUMN[column], "LR-Net-26 (width 0.125)", resnet, list(range(seeds)), test)


def test_each_claim_gets_the_verdict_of_its_own_paired_test():
    tests = [
        comparison("adv_targeted", "ResNet-26 (width 0.125)", 200, 150),  # LR-Net far ahead: supported
        comparison("adv_untargeted", "ResNet-26 (width 0.125)", 60, 120),  # far behind: contradicted
        comparison("adv_targeted", "ResNet-50 (width 0.125)", 151, 150),  # one image apart: not resolved
    ]  # no untargeted ResNet-50 test: not measured
    verdicts = [a.verdict for a in assess(rows(), tests)]
    assert verdicts == ["supported", "contradicted", "not resolved", "not measured"]
    assert [(c.column, c.lrnet, c.resnet) for c in PAPER_CLAIMS] == [
        ("adv_targeted", "lrnet26", "resnet26"), ("adv_untargeted", "lrnet26", "resnet26"),
        ("adv_targeted", "lrnet26", "resnet50"), ("adv_untargeted", "lrnet26", "resnet50")]
    sentence = claims_sentence(assess(rows(), tests))
    assert sentence.startswith("Of the paper's 4 Table 9 claims (Sec. 6.2), this data supports 1, contradicts 1 and "
                               "leaves 2 open.")
    assert "-20.0 points (paper +12.4)" in sentence and "over 900 paired images, 3 seeds" in sentence
    assert "| LR-Net-26 beats ResNet-26 against targeted attacks | +6.3 | supported |" in claims_md(rows(), tests)


def test_rows_from_outside_never_stand_for_the_papers_models():
    outside = [Row("LR-Net-26 (width 0.125)", "lrnet26", {}, {}, outside=True)] + rows()[1:]
    tests = [comparison("adv_targeted", "ResNet-26 (width 0.125)", 200, 150)]
    assert {a.verdict for a in assess(outside, tests)} == {"not measured"}
