"""Adversarial training examples: targeted (default) or untargeted L-inf PGD (paper Sec. 6.2; Feature Denoising).

Targets are drawn by lrrobust from a seeded generator, never the true class, and handed to torchattacks by label;
torchattacks puts the model in eval mode (BatchNorm frozen) while it attacks and restores train mode after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from lrrobust.pgd import pgd_perturb, random_targets


@dataclass(frozen=True)
class AttackSettings:
    """The training attack: L-inf PGD in pixel units on [0, 1] images."""

    eps: float
    alpha: float
    steps: int
    random_start: bool = True
    targeted: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"name": "pgd", "norm": "linf", **asdict(self)}


def adversarial_examples(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attack: AttackSettings,
    num_classes: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """PGD images for one batch and the targets used (None when untargeted). ``generator`` is a CPU generator.

    The parameters are frozen while the attack runs: its backward passes then compute input gradients only.
    """
    targets = random_targets(labels, num_classes, generator) if attack.targeted else None
    with frozen_parameters(model):
        adv = pgd_perturb(
            model, images, labels, eps=attack.eps, alpha=attack.alpha, steps=attack.steps,
            random_start=attack.random_start, targets=targets,
        )
    return adv, targets


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Turn ``requires_grad`` off for the model's trainable parameters, and back on after."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)
