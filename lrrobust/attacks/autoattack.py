"""AutoAttack "standard", L-inf (Croce and Hein 2020): APGD-CE, APGD-T, FAB-T and Square, through torchattacks.

As its authors run it: each component attacks only the images that the clean model classifies correctly and
that the previous components did not break, and the result is the per-image worst case. The components are
built here (not torchattacks' ``AutoAttack``, which assumes 10 classes and 10 iterations) with the dataset's
class count, 100 iterations and 5,000 Square queries; APGD-T and FAB-T attack the 9 most likely wrong classes.
A suite may lower ``steps``, ``n_queries`` and ``target_classes`` to fit a budget; the report describes each.
``found_at`` records which component broke each image, so the report gives each component's accuracy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from lrrobust.attacks.base import COUNT, AttackOutcome, AttackSpec, predict, setting
from lrrobust.attacks.registry import register
from lrrobust.core.modes import eval_mode, frozen

if TYPE_CHECKING:
    import torchattacks

STEPS = 100
QUERIES = 5000
TARGET_CLASSES = 9
COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")


@register
@dataclasses.dataclass(frozen=True)
class AutoAttack(AttackSpec):
    """The four components in sequence; untargeted (APGD-T and FAB-T choose their own target classes)."""

    targeted: bool = False  # a plain field, not a setting: always untargeted, never given by a table or option
    steps: int = setting(COUNT, f"AutoAttack iterations of APGD and FAB (default {STEPS}).", STEPS, shown=True)
    n_queries: int = setting(COUNT, f"AutoAttack Square queries (default {QUERIES}).", QUERIES)
    target_classes: int = setting(COUNT, f"AutoAttack target classes of APGD-T and FAB-T (default {TARGET_CLASSES}).",
                                  TARGET_CLASSES)

    kind = "autoattack"
    torchattacks_norm: ClassVar[str] = "Linf"  # the norm as torchattacks names it
    example = 'eps = "8/255"'

    def describe(self) -> str:
        return (f"{self.name}: AutoAttack standard{' L2' if self.norm == 'l2' else ''} (APGD-CE, APGD-T, FAB-T, "
                f"Square), untargeted, eps {self.eps_text()}, {self.steps} iterations, {self.n_queries} Square "
                f"queries, {self.target_classes} target classes")

    def stages(self) -> list[str]:
        return list(COMPONENTS)

    def components(self, model: nn.Module, num_classes: int, seed: int) -> list[torchattacks.Attack]:
        """APGD-CE, APGD-T, FAB-T, Square against ``model`` with ``num_classes`` classes."""
        import torchattacks  # here, not at the top: importing it costs every process about 1.5 s of start-up
        seed = seed % (2**32)
        targets = max(1, min(self.target_classes, num_classes - 1))
        norm = self.torchattacks_norm
        apgd = torchattacks.APGD(model, norm=norm, eps=self.eps, steps=self.steps, n_restarts=1, seed=seed, loss="ce")
        apgdt = torchattacks.APGDT(model, norm=norm, eps=self.eps, steps=self.steps, n_restarts=1, seed=seed,
                                   n_classes=num_classes)
        fab = torchattacks.FAB(model, norm=norm, eps=self.eps, steps=self.steps, n_restarts=1, seed=seed,
                               multi_targeted=True, n_classes=num_classes)
        square = torchattacks.Square(model, norm=norm, eps=self.eps, n_queries=self.n_queries, n_restarts=1,
                                     seed=seed)
        apgdt.n_target_classes = targets
        fab.n_target_classes = targets
        return [apgd, apgdt, fab, square]

    def build(self, model: nn.Module, num_classes: int, seed: int) -> torchattacks.MultiAttack:
        import torchattacks  # here, not at the top: importing it costs every process about 1.5 s of start-up
        return torchattacks.MultiAttack(self.components(model, num_classes, seed))

    def run(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        num_classes: int,
        targets: torch.Tensor | None = None,
        seed_for: Callable[[int], int] = lambda stage: stage,
        source: nn.Module | None = None,
        first: AttackOutcome | None = None,
        on_stage: Callable[[int], None] | None = None,
    ) -> AttackOutcome:
        """The cascade on one batch; component k is seeded with ``seed_for(k)``; ``on_stage(k)`` is called as
        component k finishes (progress), not for components left with nothing to attack."""
        if source is not None:
            raise ValueError("autoattack is white-box only")
        with eval_mode(model), frozen(model):
            kept = images.clone()
            kept_pred = predict(model, images)
            found_at = torch.full_like(labels, -1)
            robust = kept_pred == labels
            for k in range(len(COMPONENTS)):
                todo = robust.nonzero()[:, 0]
                if len(todo) == 0:
                    break
                seed = seed_for(k)
                torch.manual_seed(seed)
                component = self.components(model, num_classes, seed)[k]
                adv = component(images[todo], labels[todo]).detach()
                pred = predict(model, adv)
                broken = pred != labels[todo]
                kept[todo[broken]] = adv[broken]
                kept_pred[todo[broken]] = pred[broken]
                found_at[todo[broken]] = k
                robust[todo[broken]] = False
                if on_stage is not None:
                    on_stage(k)
        return AttackOutcome(kept, kept_pred, kept_pred != labels, None, found_at)
