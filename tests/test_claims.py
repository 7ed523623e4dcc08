"""The paper's Table 9 claims held against paired tests: supported, contradicted, not resolved, not measured."""

from __future__ import annotations

from markdown_text import squash

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
    assert "| LR-Net-26 beats ResNet-26 against targeted attacks | +6.3 | supported |" in squash(claims_md(rows(), tests))


def test_rows_from_outside_never_stand_for_the_papers_models():
    outside = [Row("LR-Net-26 (width 0.125)", "lrnet26", {}, {}, outside=True)] + rows()[1:]
    tests = [comparison("adv_targeted", "ResNet-26 (width 0.125)", 200, 150)]
    assert {a.verdict for a in assess(outside, tests)} == {"not measured"}


def test_a_claim_with_a_side_not_trained_to_convergence_is_not_resolved():
    """Issue 20: a comparison measures the architectures only when both networks finished learning."""
    flagged = [Row("LR-Net-26 (width 0.125)", "lrnet26", {}, {}, unconverged={"adversarial": (0, 2)}),
               Row("ResNet-26 (width 0.125)", "resnet26", {}, {}, unconverged={"regular": (1,)}),
               Row("ResNet-50 (width 0.125)", "resnet50", {}, {})]
    tests = [comparison("adv_untargeted", "ResNet-26 (width 0.125)", 60, 120),  # contradicted by the test alone
             comparison("adv_targeted", "ResNet-50 (width 0.125)", 200, 150)]  # supported by the test alone
    by_claim = {a.claim.text: a for a in assess(flagged, tests)}
    a = by_claim["LR-Net-26 beats ResNet-26 against untargeted attacks"]
    assert a.verdict == "not resolved" and a.reason == "LR-Net-26 (width 0.125) not trained to convergence (seeds 0, 2)"
    assert a.verdict_text == "not resolved: LR-Net-26 (width 0.125) not trained to convergence (seeds 0, 2)"
    assert a.detail.startswith("the paired test alone: contradicted, -20.0 points (paper +12.4)")
    b = by_claim["LR-Net-26 beats ResNet-50 against targeted attacks"]
    assert b.verdict == "not resolved" and b.detail.startswith("the paired test alone: supported")
    md = squash(claims_md(flagged, tests))
    assert "| not resolved: LR-Net-26 (width 0.125) not trained to convergence (seeds 0, 2) |" in md
    assert "leaves 4 open" in claims_sentence(assess(flagged, tests))
    # a flagged regular run does not bear on a claim about adversarially trained models
    only_regular = [Row(r.network, r.model, {}, {}, unconverged={"regular": (0,)}) for r in rows()]
    assert [a.verdict for a in assess(only_regular, tests)][1] == "contradicted"


def clean_row(network: str, model: str, correct: int, n: int = 500) -> Row:
    from lrrobust.evaluation.ledger import Figure
    from lrrobust.report.table9 import Cell, SeedFigure

    seeds = [SeedFigure(0, Figure(correct, n), [True] * correct + [False] * (n - correct), "x", False, network)]
    return Row(network, model, {"reg_clean": Cell(COLUMN["reg_clean"], seeds, [])}, {})


def test_clean_accuracies_ordered_opposite_to_the_papers_are_said_beside_the_verdict():
    """The paper's premise (Table 1, Table 9): regularly trained LR-Net-26 beats ResNet-26 (75.7 vs 72.8) on clean
    accuracy, and ResNet-50 (76.3) beats LR-Net-26."""
    ranked = [clean_row("LR-Net-26", "lrnet26", 470), clean_row("ResNet-26", "resnet26", 488),
              clean_row("ResNet-50", "resnet50", 460)]
    tests = [Comparison(COLUMN["adv_untargeted"], "LR-Net-26", resnet, t.seeds, t.test)
             for resnet, t in (("ResNet-26", comparison("adv_untargeted", "", 60, 120)),
                               ("ResNet-50", comparison("adv_untargeted", "", 60, 120)))]
    _, second, _, fourth = assess(ranked, tests)  # the untargeted claims
    assert second.verdict == "contradicted"
    assert second.caveat == ("regular-training clean accuracy ordered opposite to the paper's: LR-Net-26 94.0 vs "
                             "ResNet-26 97.6 (paper 75.7 vs 72.8)")
    assert second.verdict_text.startswith("contradicted (regular-training clean accuracy ordered opposite")
    assert fourth.caveat is not None and "ResNet-50 92.0 (paper 75.7 vs 76.3)" in fourth.caveat
    in_order = [clean_row("LR-Net-26", "lrnet26", 490), clean_row("ResNet-26", "resnet26", 480),
                clean_row("ResNet-50", "resnet50", 495)]
    assert all(a.caveat is None for a in assess(in_order, tests))


def test_one_training_seed_is_only_indicative():
    """Issue 21: one seed tests image sampling only, so it never supports nor contradicts a claim."""
    tests = [comparison("adv_targeted", "ResNet-26 (width 0.125)", 200, 150, seeds=1),  # far ahead, one seed
             comparison("adv_untargeted", "ResNet-26 (width 0.125)", 60, 120, seeds=1),  # far behind, one seed
             comparison("adv_targeted", "ResNet-50 (width 0.125)", 151, 150, seeds=1)]  # one image apart
    first, second, third, fourth = assess(rows(), tests)
    assert (first.verdict, first.reason) == ("indicative", "1 training seed, in the paper's direction")
    assert (second.verdict, second.reason) == ("indicative", "1 training seed, against the paper's direction")
    assert third.verdict == "not resolved" and fourth.verdict == "not measured"
    sentence = claims_sentence(assess(rows(), tests))
    assert "supports 0, contradicts 0, finds 2 only indicative (one training seed) and leaves 2 open" in sentence
    assert "| LR-Net-26 beats ResNet-26 against targeted attacks | +6.3 | indicative: 1 training seed, in the " \
           "paper's direction |" in squash(claims_md(rows(), tests))


def test_claims_follow_the_holm_adjusted_verdicts():
    """A claim is judged by the verdict of its test after Holm's adjustment over the report's family, and its
    detail prints the adjusted p beside the raw p of the test that decided."""
    from lrrobust.evaluation.stats import adjust_family

    weak = comparison("adv_targeted", "ResNet-26 (width 0.125)", 153, 150, seeds=2)  # 6 discordant: p = 1/32
    assert weak.test.significant and 0.01 < weak.test.p_value < 0.05
    strong = comparison("adv_untargeted", "ResNet-26 (width 0.125)", 60, 120)
    family = adjust_family([weak.test, strong.test] + [weak.test] * 10)
    tests = [Comparison(weak.column, weak.lrnet, weak.resnet, weak.seeds, family[0]),
             Comparison(strong.column, strong.lrnet, strong.resnet, strong.seeds, family[1])]
    first, second, _, _ = assess(rows(), tests)
    assert first.verdict == "not resolved" and second.verdict == "contradicted"
    assert f"Holm-adjusted p = {family[0].p_adjusted:.3f} (pooled McNemar p = 0.031, 12 tests)" in first.detail
