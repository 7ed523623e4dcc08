"""Model modes while an attack runs: eval mode (BatchNorm frozen) and parameters without gradients.

Both context managers restore exactly what they found, submodule by submodule, whatever happens inside
(torchattacks and MadryLab/robustness record and restore ``model.training`` the same way).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put models in eval mode and restore every submodule's own mode afterwards."""
    saved = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for module, training in saved:
            module.training = training


@contextlib.contextmanager
def frozen(*models: nn.Module) -> Iterator[None]:
    """Parameters need no gradient inside (an attack wants the input's only); restored afterwards."""
    saved = [(p, p.requires_grad) for model in models for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
