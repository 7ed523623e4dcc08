"""FGSM (Goodfellow et al. 2015): one signed-gradient step of size eps; the checks' one-step baseline."""

from __future__ import annotations

import dataclasses
from typing import Any

import torchattacks
from torch import nn

from lrrobust.attacks.base import AttackSpec
from lrrobust.attacks.registry import register
from lrrobust.core.numbers import check_bool
from lrrobust.errors import UserError


@register
@dataclasses.dataclass(frozen=True)
class FGSM(AttackSpec):
    """One step of size eps from the clean image."""

    source: str | None = None

    kind = "fgsm"
    keys = frozenset({"targeted", "eps", "source"})
    example = "eps = 0.2"

    @classmethod
    def from_table(cls, name: str, table: dict[str, Any], role: str = "suite") -> FGSM:
        where = f"attack {name!r}"
        source = table.get("source")
        if source is not None and not isinstance(source, str):
            raise UserError(f"{where}: source must be a checkpoint path")
        return cls(name=name, eps=cls.read_eps(table, where),
                   targeted=check_bool(table.get("targeted", False), f"{where}: targeted"), role=role, source=source)

    def describe(self) -> str:
        return (f"{self.name}: FGSM {'targeted' if self.targeted else 'untargeted'}, eps {self.eps_text()}"
                + (f", transfer from {self.source}" if self.source else ""))

    def build(self, model: nn.Module, num_classes: int, seed: int) -> torchattacks.FGSM:
        attack = torchattacks.FGSM(model, eps=self.eps)
        if self.targeted:
            attack.set_mode_targeted_by_label(quiet=True)
        return attack
