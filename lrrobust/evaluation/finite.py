"""Non-finite model outputs stop an evaluation (issue 23).

A prediction is an argmax over the logits: on a NaN row it is class 0, which differs from most labels and would be
scored as a successful attack, so a model that turns NaN on perturbed images (or after some calls) would get a
robust accuracy near zero that says nothing about robustness. ``check_module`` tries the first batch only; a
``FiniteGuard`` watches every forward pass of the model (and of a transfer attack's source models) for the whole
evaluation: the clean pass, every step of every attack, the masking diagnostics. After each stage the evaluation
asks it (``check``), and the first non-finite output stops the evaluation with one line naming the model, the
attack and the batch; nothing of that stage is recorded, so a resumed run meets the same line.

The hooks add no synchronisation with the GPU: each forward pass ORs "any value not finite" into a flag on the
output's device, read once per stage.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, final

import torch
from torch import nn

from lrrobust.errors import UserError


class NonFiniteOutput(UserError):
    """A model gave NaN or inf: the user's model, whose figures would otherwise be wrong (exit code 2)."""


@final
class FiniteGuard:
    """Forward hooks on ``models`` (a name for messages -> module) that record any non-finite floating-point output.

    Use as a context manager (the hooks are removed on exit) and call ``check(where)`` after each stage.
    """

    def __init__(self, models: dict[str, nn.Module]) -> None:
        self._flags: dict[str, dict[torch.device, torch.Tensor]] = {name: {} for name in models}
        self._handles = [module.register_forward_hook(self._hook(name)) for name, module in models.items()]

    def _hook(self, name: str) -> Any:
        flags = self._flags[name]

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            for tensor in _tensors(output):
                bad = ~torch.isfinite(tensor.detach()).all()
                seen = flags.get(tensor.device)
                flags[tensor.device] = bad if seen is None else seen | bad

        return hook

    def bad(self) -> str | None:
        """The name of the first model that gave a non-finite output so far (reads the flags: one device sync)."""
        for name, flags in self._flags.items():
            if any(bool(flag) for flag in flags.values()):
                return name
        return None

    def check(self, where: str) -> None:
        """Raise ``NonFiniteOutput`` naming the model and ``where`` ("attack X on batch 2 of 5") if any output so
        far was not finite."""
        name = self.bad()
        if name is not None:
            raise NonFiniteOutput(f"{name} gave a non-finite output (NaN or inf) in {where}; its predictions there "
                                  "cannot be scored (a NaN row would count as a broken image): make the model's "
                                  "logits finite for every input in the eps ball, then run again")

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> FiniteGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tensors(output: Any) -> Iterator[torch.Tensor]:
    """The floating-point tensors of a module's output (a tensor, or a tuple, list or dict of them)."""
    if isinstance(output, torch.Tensor):
        if output.is_floating_point() or output.is_complex():
            yield output
    elif isinstance(output, (tuple, list)):
        for item in output:
            yield from _tensors(item)
    elif isinstance(output, dict):
        for item in output.values():
            yield from _tensors(item)
