"""Checks against gradient masking (Carlini et al. 2019, "On Evaluating Adversarial Robustness"; Athalye et al.
2018), run beside a suite so a robust figure comes with the evidence that the attack worked:

- steps: more PGD steps must not raise accuracy, and the longest PGD must have converged (no large fall between
  the two longest step counts);
- fgsm: iterative PGD must beat one-step FGSM (FGM, one L2-normalised step of size eps, in an L2 suite);
- eps: accuracy must fall towards zero as eps grows (eps = 0.5 allows a grey image);
- restarts: random restarts (per-sample worst case) must not find many more adversarial examples;
- transfer: examples crafted on a second model must be weaker than white-box ones;
- black-box: AutoAttack's gradient-free Square, run last, must find few adversarial examples that its gradient
  attacks (APGD-CE, APGD-T, FAB-T) missed: when a black-box attack succeeds where gradients fail, the gradients are
  masked (Carlini et al. 2019, Sec. 5; Croce and Hein 2020).

The checks are ordinary attacks (named ``check/...``) evaluated by the runner, so they are resumable, sharded
and recorded per sample; ``evaluate_checks`` turns their accuracies into pass/flag verdicts with figures. On a model
that classifies few images correctly (``min_clean_accuracy``, ``min_correct`` in [checks]) every check is "n/a":
a check of an attack that has nothing to break proves nothing.
"""

from __future__ import annotations

import itertools
from typing import Any

from lrrobust.attacks import AttackSpec
from lrrobust.attacks.fgsm import FGSM
from lrrobust.attacks.pgd import PGD, madry_step_size
from lrrobust.attacks.pgd_l2 import PGDL2, l2_step_size
from lrrobust.evaluation.suite import CheckConfig, Suite


def base_eps(suite: Suite) -> float:
    """The eps the checks work at: [checks] eps, else the suite's."""
    return suite.checks.eps if suite.checks.eps is not None else suite.eps


def _pgd(norm: str, name: str, eps: float, steps: int, restarts: int = 1, source: str | None = None) -> AttackSpec:
    """The checks' PGD in the suite's norm: untargeted, from a random start, step 2.5 eps / steps."""
    if norm == "l2":
        return PGDL2(name=name, eps=eps, role="check", step_size=l2_step_size(eps, steps), steps=steps,
                     random_start=True, restarts=restarts, source=source)
    return PGD(name=name, eps=eps, role="check", step_size=madry_step_size(eps, steps), steps=steps, random_start=True,
               restarts=restarts, source=source)


def _one_step(norm: str, eps: float) -> AttackSpec:
    """The one-step baseline: FGSM, or in L2 the fast gradient method (one normalised step of size eps)."""
    if norm == "l2":
        return PGDL2(name="check/fgm", eps=eps, role="check", step_size=eps, steps=1, random_start=False)
    return FGSM(name="check/fgsm", eps=eps, role="check")


def check_attacks(suite: Suite, transfer_from: str | None = None) -> dict[str, list[tuple[Any, AttackSpec]]]:
    """The attacks each check needs, as (x value, attack) pairs per check: untargeted PGD in the suite's norm with
    random start and step 2.5 eps / steps, and the one-step baseline."""
    cfg: CheckConfig = suite.checks
    eps = base_eps(suite)
    norm = suite.norm
    longest = max(cfg.steps)
    plan: dict[str, list[tuple[Any, AttackSpec]]] = {
        "steps": [(n, _pgd(norm, f"check/steps-{n}", eps, n)) for n in cfg.steps],
        "fgsm": [("fgsm", _one_step(norm, eps)), ("pgd", _pgd(norm, f"check/steps-{longest}", eps, longest))],
        "eps": [(e, _pgd(norm, f"check/eps-{e:.4g}", e, cfg.eps_steps)) for e in cfg.eps_grid],
        "restarts": [(1, _pgd(norm, f"check/steps-{longest}", eps, longest)),
                     (cfg.restarts, _pgd(norm, f"check/restarts-{cfg.restarts}", eps, longest, cfg.restarts))],
    }
    if transfer_from is not None:
        plan["transfer"] = [("white-box", _pgd(norm, f"check/steps-{longest}", eps, longest)),
                            ("transfer", _pgd(norm, "check/transfer", eps, longest, source=transfer_from))]
    return plan


def plan_attacks(suite: Suite, transfer_from: str | None = None) -> tuple[list[AttackSpec], dict[str, list]]:
    """All attacks to run (the suite's, then the checks' not already among them) and each check's attack names.

    A check attack identical to a suite attack (same parameters and restarts) reuses the suite attack's results.
    """
    attacks = list(suite.attacks)
    plan: dict[str, list] = {}
    if suite.checks.enabled:
        for check, pairs in check_attacks(suite, transfer_from).items():
            plan[check] = []
            for x, spec in pairs:
                same = next((a for a in attacks if a.identity() == spec.identity()), None)
                if same is None:
                    attacks.append(spec)
                    same = spec
                plan[check].append((x, same.name))
    return attacks, plan


def _slack(tolerance: float, num_samples: int) -> float:
    """Allowed noise: the configured tolerance, and never less than one sample."""
    return max(tolerance, 1.0 / max(num_samples, 1))


def meaningless(cfg: CheckConfig, clean_accuracy: float, num_samples: int) -> str | None:
    """Why the checks cannot mean anything on this model (too few correctly classified images), or None."""
    correct = round(clean_accuracy * num_samples)
    if clean_accuracy < cfg.min_clean_accuracy:
        return f"clean accuracy {100 * clean_accuracy:.1f}% is below {100 * cfg.min_clean_accuracy:.0f}%"
    if correct < cfg.min_correct:
        return f"only {correct} images are classified correctly (fewer than {cfg.min_correct})"
    return None


def evaluate_checks(
    suite: Suite, plan: dict[str, list], accuracy: dict[str, float], num_samples: int, transfer_from: str | None,
    clean_accuracy: float = 1.0, stage_accuracy: dict[str, list[float]] | None = None,
) -> list[dict[str, Any]]:
    """Pass/flag/n/a verdicts with figures, one per check; ``accuracy`` maps attack names to accuracies,
    ``stage_accuracy`` an attack with stages (AutoAttack) to its accuracy after each stage, in order."""
    if not suite.checks.enabled:
        return []
    cfg = suite.checks
    slack = _slack(cfg.tolerance, num_samples)
    results = _verdicts(cfg, plan, accuracy, slack, transfer_from, "FGM" if suite.norm == "l2" else "FGSM")
    results.append(_black_box(suite, stage_accuracy or {}, slack))
    why = meaningless(cfg, clean_accuracy, num_samples)
    if why is not None:
        for result in results:
            if result["status"] != "skipped":
                result["status"] = "n/a"
                result["detail"] = f"{why}: the check cannot mean anything ({result['detail']})"
    return results


def _verdicts(cfg: CheckConfig, plan: dict[str, list], accuracy: dict[str, float], slack: float,
              transfer_from: str | None, one_step: str = "FGSM") -> list[dict[str, Any]]:
    results = []

    def curve(check: str) -> list[tuple[Any, float]]:
        return [(x, accuracy[name]) for x, name in plan[check]]

    steps = curve("steps")
    rises = [(a, b) for (a, acc_a), (b, acc_b) in itertools.pairwise(steps) if acc_b > acc_a + slack]
    (next_to_last, acc_before), (longest, acc_last) = steps[-2], steps[-1]
    falling = acc_before - acc_last > slack
    results.append(_verdict(
        "steps", "accuracy does not rise with more PGD steps and has converged at the most steps",
        not rises and not falling,
        "accuracy " + ", ".join(f"{acc:.3f}@{n}" for n, acc in steps)
        + ("" if not rises else "; rises from " + ", ".join(f"{a} to {b} steps" for a, b in rises))
        + ("" if not falling else f"; still falling: {longest} steps lower it by "
           f"{100 * (acc_before - acc_last):.1f} points from {next_to_last}"),
        {"steps": [n for n, _ in steps], "accuracy": [acc for _, acc in steps]},
    ))

    (_, fgsm), (_pgd_steps_x, pgd) = curve("fgsm")
    results.append(_verdict(
        "fgsm", f"PGD is stronger than {one_step}", pgd <= fgsm + slack,
        f"PGD-{max(cfg.steps)} accuracy {pgd:.3f} vs {one_step} {fgsm:.3f}", {"pgd": pgd, "fgsm": fgsm},
    ))

    eps_curve = curve("eps")
    last_eps, last_acc = eps_curve[-1]
    eps_rises = [(a, b) for (a, acc_a), (b, acc_b) in itertools.pairwise(eps_curve) if acc_b > acc_a + slack]
    results.append(_verdict(
        "eps", f"accuracy falls towards zero as eps grows (<= {cfg.zero_accuracy:.2f} at eps {last_eps:.3g})",
        last_acc <= cfg.zero_accuracy and not eps_rises,
        "accuracy " + ", ".join(f"{acc:.3f}@{e:.3g}" for e, acc in eps_curve),
        {"eps": [e for e, _ in eps_curve], "accuracy": [acc for _, acc in eps_curve]},
    ))

    (_, single), (restarts, multi) = curve("restarts")
    results.append(_verdict(
        "restarts", f"{restarts} random restarts find few more adversarial examples than one",
        single - multi <= slack,
        f"accuracy {single:.3f} with 1 start, {multi:.3f} with {restarts} (per-sample worst case)",
        {"restarts": [1, restarts], "accuracy": [single, multi]},
    ))

    if "transfer" in plan:
        (_, white), (_, transfer) = curve("transfer")
        results.append(_verdict(
            "transfer", "a transfer attack from a second model is weaker than white-box", transfer + slack >= white,
            f"accuracy {transfer:.3f} under transfer from {transfer_from} vs {white:.3f} white-box",
            {"white_box": white, "transfer": transfer, "source": transfer_from},
        ))
    else:
        results.append({"check": "transfer", "claim": "a transfer attack from a second model is weaker than white-box",
                        "status": "skipped", "detail": "no second model given (--transfer-from CHECKPOINT)",
                        "figures": {}})
    return results


GRADIENT_FREE = "square"  # the stage of AutoAttack that uses no gradient
BLACK_BOX_CLAIM = "the gradient-free Square attack finds few adversarial examples that the gradient attacks missed"


def _black_box(suite: Suite, stage_accuracy: dict[str, list[float]], slack: float) -> dict[str, Any]:
    """Square, run after the gradient attacks of AutoAttack, must lower accuracy by at most the slack."""
    for attack in suite.attacks:
        names = attack.stages()
        if GRADIENT_FREE not in names or names.index(GRADIENT_FREE) == 0 or attack.name not in stage_accuracy:
            continue
        k = names.index(GRADIENT_FREE)
        before, after = stage_accuracy[attack.name][k - 1], stage_accuracy[attack.name][k]
        return _verdict(
            "black-box", BLACK_BOX_CLAIM, before - after <= slack,
            f"{attack.name}: accuracy {before:.3f} after {', '.join(n.upper() for n in names[:k])}, {after:.3f} after "
            f"Square" + ("" if before - after <= slack else " (gradient masking: a black-box attack succeeds where "
                                                              "gradients fail)"),
            {"attack": attack.name, "gradient": before, "square": after},
        )
    return {"check": "black-box", "claim": BLACK_BOX_CLAIM, "status": "skipped",
            "detail": "no AutoAttack in the suite (its Square component is the gradient-free attack)", "figures": {}}


def convergence_notes(checks: list[dict[str, Any]]) -> list[str]:
    """The headline's warnings: what the flagged steps, restarts and black-box checks say."""
    notes = []
    for check in checks:
        if check["status"] != "flag":
            continue
        figures = check["figures"]
        if check["check"] == "restarts":
            single, multi = figures["accuracy"]
            notes.append(f"not converged: {figures['restarts'][1]} restarts lower it by {100 * (single - multi):.1f} "
                         "points")
        elif check["check"] == "steps":
            acc, steps = figures["accuracy"], figures["steps"]
            if acc[-2] > acc[-1]:
                notes.append(f"not converged: {steps[-1]} steps lower it by {100 * (acc[-2] - acc[-1]):.1f} points "
                             f"from {steps[-2]}")
            else:
                notes.append("accuracy rises with more steps (gradient masking?)")
        elif check["check"] == "black-box":
            notes.append(f"gradient masking: Square (no gradients) lowers it by "
                         f"{100 * (figures['gradient'] - figures['square']):.1f} points after the gradient attacks")
    return notes


def _verdict(check: str, claim: str, ok: bool, detail: str, figures: dict[str, Any]) -> dict[str, Any]:
    return {"check": check, "claim": claim, "status": "pass" if ok else "flag", "detail": detail, "figures": figures}
