"""FGSM (Goodfellow et al. 2015): one signed-gradient step of size eps; the checks' one-step baseline."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from torch import nn

from lrrobust.attacks.base import CHECKPOINT, AttackSpec, setting
from lrrobust.attacks.registry import register

if TYPE_CHECKING:
    import torchattacks


@register
@dataclasses.dataclass(frozen=True)
class FGSM(AttackSpec):
    """One step of size eps from the clean image."""

    source: str | None = setting(CHECKPOINT, "Craft the examples on this checkpoint: a transfer attack (default: "
                                             "white-box).", None)

    kind = "fgsm"
    example = "eps = 0.2"

    def describe(self) -> str:
        return (f"{self.name}: FGSM {'targeted' if self.targeted else 'untargeted'}, eps {self.eps_text()}"
                + (f", transfer from {self.source}" if self.source else ""))

    def build(self, model: nn.Module, num_classes: int, seed: int) -> torchattacks.FGSM:
        import torchattacks  # here, not at the top: importing it costs every process about 1.5 s of start-up
        attack = torchattacks.FGSM(model, eps=self.eps)
        if self.targeted:
            attack.set_mode_targeted_by_label(quiet=True)
        return attack
