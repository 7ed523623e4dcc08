"""Attack evaluation (paper Sec. 6.2, Table 9): suites, the resumable attack loop, the ledger, checks, summaries.

- ``suite``: attack suites as TOML; ``checks``: the checks against gradient masking;
- ``state``: the resumable state; ``loop``: the attack loop; ``ledger``: the per-image worst case;
- ``summary``: summary.json / summary.csv / samples.csv and their readers; ``stats``: intervals and paired tests;
- ``evaluate``: a checkpoint in, an evaluation directory out; ``display``: the printed tables;
- ``target``: what is evaluated (the model, where it came from, what is known of it) and the checks every model
  passes before any attack (logits, a gradient, no randomness, no mode-dependent module in train mode);
- ``standard``: each dataset's standard eps and the eps-matched standard suite;
- ``api``: ``lrrobust.evaluate`` (tensors, a DataLoader or a dataset name in, an ``EvalResult`` out, ``result``).
"""

from lrrobust.evaluation.loop import run_evaluation
from lrrobust.evaluation.suite import CheckConfig, Suite, load_suite, parse_suite
from lrrobust.evaluation.target import EvalTarget, Origin

__all__ = ["CheckConfig", "EvalTarget", "Origin", "Suite", "load_suite", "parse_suite", "run_evaluation"]
