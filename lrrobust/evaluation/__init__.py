"""Attack evaluation (paper Sec. 6.2, Table 9): suites, attacks with restarts, the resumable runner, checks."""

from lrrobust.evaluation.attacks import AttackOutcome, build_attack, derive_seed, eval_mode, run_attack
from lrrobust.evaluation.checks import evaluate_checks, plan_attacks
from lrrobust.evaluation.runner import EvalTarget, run_evaluation
from lrrobust.evaluation.suite import AttackSpec, CheckConfig, Suite, load_suite, make_attack, parse_suite

__all__ = [
    "AttackOutcome", "AttackSpec", "CheckConfig", "EvalTarget", "Suite", "build_attack", "derive_seed", "eval_mode",
    "evaluate_checks", "load_suite", "make_attack", "parse_suite", "plan_attacks", "run_attack", "run_evaluation",
]
