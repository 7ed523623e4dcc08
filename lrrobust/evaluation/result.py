"""What ``lrrobust.evaluate`` returns: the figures of one evaluation, in memory (paper Sec. 6.2, Table 9).

Every figure is an accuracy over the evaluated images with its 95% Wilson interval (``ledger.Figure``); ``robust``
is the per-image worst case over every attack at the threat model's eps (AutoAttack's and RobustBench's robust
accuracy), never one attack's figure.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from lrrobust.evaluation.ledger import Figure, Ledger, figure
from lrrobust.evaluation.standard import NORM_NAMES, describe_eps


def percent(fig: Figure) -> str:
    """'41.0% [36.1, 46.1]': an accuracy in % with its 95% interval."""
    low, high = fig.interval
    return f"{100 * fig.accuracy:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """One evaluation's figures.

    Attributes:
        eps, norm: the threat model ("Linf" or "L2"; eps on [0, 1] pixels).
        suite: the suite that ran (its name).
        clean: clean accuracy.
        robust: worst-case accuracy: clean prediction right and no adversarial image found for it at ``eps``, by any
            attack (targeted or not, every restart and AutoAttack component, the checks' attacks at that eps).
        targeted: worst-case accuracy over the targeted attacks alone (None without one).
        attacks: each attack's own robust accuracy (clean right and its adversarial image right), by attack name,
            the checks' attacks (``check/...``, some at other eps) included.
        robust_mask: (n,) bool: per image, ``robust``'s verdict.
        indices: (n,) the images' positions in the data (the dataset index; the row of ``x`` for tensors).
        labels: (n,) their labels.
        adv_images: with ``return_adv``, (n, C, H, W) on the CPU: the adversarial image that broke each image (the
            first attack's at ``eps`` to do so), the clean image where none did (AutoAttack's ``x_adv``).
        notes: the warnings beside the worst case (checks that say more effort would lower it).
        summary: everything summary.json holds (every attack's settings, the checks, the model, provenance).
        out: the evaluation directory, when one was written.
    """

    eps: float
    norm: str
    suite: str
    clean: Figure
    robust: Figure
    targeted: Figure | None
    attacks: dict[str, Figure]
    robust_mask: torch.Tensor
    indices: torch.Tensor
    labels: torch.Tensor
    adv_images: torch.Tensor | None
    notes: list[str]
    summary: dict[str, Any] = dataclasses.field(repr=False)
    out: Path | None = None

    @property
    def clean_accuracy(self) -> float:
        return self.clean.accuracy

    @property
    def robust_accuracy(self) -> float:
        return self.robust.accuracy

    def __str__(self) -> str:
        eps = f"{describe_eps(self.eps)} Linf" if self.norm == "Linf" else describe_eps(self.eps, "l2")
        text = (f"clean {percent(self.clean)}, robust {percent(self.robust)} at eps {eps}, {self.clean.n} images, "
                f"suite {self.suite}")
        return text + "".join(f"; {note}" for note in self.notes)


def build_result(ledger: Ledger, summary: dict[str, Any], adversarial: dict[int, torch.Tensor] | None,
                 clean_image: Any, out: Path | None) -> EvalResult:
    """The result of an evaluation from its ledger and summary; ``adversarial`` (dataset index -> image) and
    ``clean_image(index)`` make ``adv_images`` when given."""
    norm = summary["suite_norm"]
    worst = ledger.worst_case(float(summary["suite_eps"]), norm)
    adv = None
    if adversarial is not None:
        adv = torch.stack([adversarial[i] if i in adversarial else torch.as_tensor(clean_image(i)).float().cpu()
                           for i in ledger.indices])
    return EvalResult(
        eps=float(summary["suite_eps"]), norm=NORM_NAMES[norm], suite=str(summary["suite"]),
        clean=figure(worst.clean), robust=figure(worst.untargeted),
        targeted=None if worst.targeted is None else figure(worst.targeted),
        attacks={o.name: figure(ledger.robust(o)) for o in ledger.outcomes},
        robust_mask=torch.tensor(worst.untargeted, dtype=torch.bool), indices=torch.tensor(ledger.indices),
        labels=torch.tensor(ledger.labels), adv_images=adv, notes=list(summary["worst_case"].get("notes", [])),
        summary=summary, out=out,
    )
