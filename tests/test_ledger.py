"""The worst-case ledger against hand-built records: what counts as robust, which attacks enter which figure."""

from __future__ import annotations

import pytest

from lrrobust.evaluation.checks import convergence_notes, evaluate_checks
from lrrobust.evaluation.ledger import Figure, Ledger, Outcome
from lrrobust.evaluation.suite import parse_suite

LABELS = [0, 1, 2, 3, 4, 5, 6]
CLEAN = [0, 1, 2, 3, 4, 5, 0]  # image 6 is wrong before any attack


def outcome(name, adv_pred, *, eps=0.2, targeted=False, target=None, success=None, found_at=None, norm="linf"):
    success = success if success is not None else [
        (p == t) if targeted else (p != y) for p, y, t in zip(adv_pred, LABELS, target or LABELS)]
    return Outcome(name, {"kind": "pgd", "norm": norm, "eps": eps, "targeted": targeted}, adv_pred, success,
                   target, found_at or [-1] * len(adv_pred))


def ledger(*outcomes):
    return Ledger(list(range(100, 107)), LABELS, CLEAN, list(outcomes))


def test_untargeted_is_the_share_no_attack_at_eps_fooled():
    pgd = outcome("pgd", [0, 9, 2, 3, 4, 5, 6])  # fools image 1
    aa = outcome("aa", [0, 1, 9, 3, 4, 5, 6])  # fools image 2
    far = outcome("eps-0.5", [9, 9, 9, 9, 9, 9, 9], eps=0.5)  # another eps: never in the headline
    worst = ledger(pgd, aa, far).worst_case(0.2)
    figures = worst.figures()
    assert worst.untargeted == [True, False, False, True, True, True, False]  # image 6: wrong when clean
    assert figures["untargeted"] == Figure(4, 7)
    assert worst.untargeted_attacks == ["pgd", "aa"]
    assert figures["clean"] == Figure(6, 7)
    assert figures["targeted"] is None and figures["targeted_success"] is None  # no targeted attack at 0.2


def test_targeted_restarts_that_miss_the_target_count_as_wrong_but_not_as_reached():
    targets = [3, 4, 5, 6, 0, 1, 2]
    # image 3: target reached; image 4: a wrong class that is not the target (a restart that missed)
    targeted = outcome("pgd-t", [0, 1, 2, 6, 9, 5, 2], targeted=True, target=targets)
    assert targeted.success == [False, False, False, True, False, False, True]
    worst = ledger(targeted).worst_case(0.2)
    assert worst.targeted == [True, True, True, False, False, True, False]  # top-1 accuracy under the attack
    assert worst.target_reached == [False, False, False, True, False, False, True]
    assert worst.figures()["targeted_success"] == Figure(2, 7)
    # its misclassified images are misclassified images within eps: the untargeted figure counts them too
    assert worst.untargeted == [True, True, True, False, False, True, False]
    assert worst.targeted_attacks == ["pgd-t"] and worst.untargeted_attacks == ["pgd-t"]


def test_l2_and_linf_figures_never_meet_in_one_worst_case():
    linf = outcome("pgd", [9, 1, 2, 3, 4, 5, 6], eps=0.5)  # fools image 0 at L-inf 0.5
    l2 = outcome("pgd-l2", [0, 9, 2, 3, 4, 5, 6], eps=0.5, norm="l2")  # fools image 1 at L2 0.5
    book = ledger(linf, l2)
    assert book.worst_case(0.5).untargeted == [False, True, True, True, True, True, False]
    assert book.worst_case(0.5).untargeted_attacks == ["pgd"]
    assert book.worst_case(0.5, "l2").untargeted == [True, False, True, True, True, True, False]
    assert book.worst_case(0.5, "l2").untargeted_attacks == ["pgd-l2"]


def test_worst_case_is_never_above_any_single_attack():
    a = outcome("a", [9, 1, 2, 3, 4, 5, 6])
    b = outcome("b", [0, 1, 2, 9, 4, 9, 6])
    book = ledger(a, b)
    worst = book.worst_case(0.2).figures()["untargeted"]
    assert worst.correct <= min(sum(book.robust(o)) for o in (a, b))
    assert worst == Figure(3, 7)


def test_a_figure_carries_its_wilson_interval():
    low, high = Figure(81, 263).interval
    assert low == pytest.approx(0.2553, abs=1e-3) and high == pytest.approx(0.3662, abs=1e-3)
    assert Figure(81, 263).to_dict()["n"] == 263


def _plan_and_accuracy(single, multi, steps_curve):
    plan = {"steps": [(n, f"s{n}") for n, _ in steps_curve], "fgsm": [("fgsm", "f"), ("pgd", "s20")],
            "eps": [(0.1, "e1"), (0.5, "e5")], "restarts": [(1, "s20"), (2, "r2")]}
    accuracy = {f"s{n}": acc for n, acc in steps_curve} | {"f": 0.9, "e1": 0.5, "e5": 0.0, "r2": multi}
    accuracy["s20"] = single
    return plan, accuracy


def test_convergence_flags_reach_the_headline():
    suite = parse_suite({"attack": [{"name": "a", "eps": 0.2}], "checks": {"steps": [5, 20]}})
    plan, accuracy = _plan_and_accuracy(0.30, 0.245, [(5, 0.40), (20, 0.30)])
    checks = evaluate_checks(suite, plan, accuracy, 200, None, clean_accuracy=0.9)
    status = {c["check"]: c["status"] for c in checks}
    assert status["restarts"] == "flag" and status["steps"] == "flag"
    notes = convergence_notes(checks)
    assert "not converged: 2 restarts lower it by 5.5 points" in notes
    assert "not converged: 20 steps lower it by 10.0 points from 5" in notes


def test_checks_on_a_model_that_gets_few_images_right_say_n_a():
    suite = parse_suite({"attack": [{"name": "a", "eps": 0.2}], "checks": {"steps": [5, 20]}})
    plan, accuracy = _plan_and_accuracy(0.05, 0.05, [(5, 0.05), (20, 0.05)])
    low_accuracy = evaluate_checks(suite, plan, accuracy, 200, None, clean_accuracy=0.15)
    assert {c["status"] for c in low_accuracy} == {"n/a", "skipped"}  # skipped: no transfer source given
    assert all("cannot mean anything" in c["detail"] for c in low_accuracy if c["status"] == "n/a")
    few_images = evaluate_checks(suite, plan, accuracy, 20, None, clean_accuracy=0.9)  # 18 right < 30
    assert {c["status"] for c in few_images} == {"n/a", "skipped"}
    assert not convergence_notes(low_accuracy)  # n/a never becomes a headline warning
    fine = evaluate_checks(suite, plan, accuracy, 200, None, clean_accuracy=0.9)
    assert "n/a" not in {c["status"] for c in fine}


def test_square_breaking_what_gradients_missed_is_flagged_as_gradient_masking():
    """The pattern of the MNIST LR-Nets: APGD-CE 26.8%, APGD-T and FAB-T 19.6%, then gradient-free Square 5.8%."""
    suite = parse_suite({"attack": [{"name": "a", "eps": 0.2}, {"name": "aa", "kind": "autoattack", "eps": 0.2}],
                         "checks": {"steps": [5, 20]}})
    plan, accuracy = _plan_and_accuracy(0.30, 0.30, [(5, 0.30), (20, 0.30)])
    masked = evaluate_checks(suite, plan, accuracy, 500, None, 0.9, {"aa": [0.268, 0.196, 0.196, 0.058]})
    verdict = next(c for c in masked if c["check"] == "black-box")
    assert verdict["status"] == "flag" and verdict["figures"] == {"attack": "aa", "gradient": 0.196, "square": 0.058}
    assert "after APGD-CE, APGD-T, FAB-T" in verdict["detail"]
    assert convergence_notes(masked) == [
        "gradient masking: Square (no gradients) lowers it by 13.8 points after the gradient attacks"]
    fine = evaluate_checks(suite, plan, accuracy, 500, None, 0.9, {"aa": [0.268, 0.196, 0.196, 0.19]})
    assert next(c for c in fine if c["check"] == "black-box")["status"] == "pass"  # 0.6 points: within slack
    no_stages = evaluate_checks(suite, plan, accuracy, 500, None, 0.9)
    assert next(c for c in no_stages if c["check"] == "black-box")["status"] == "skipped"
