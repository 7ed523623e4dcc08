"""Adversarial training's attacks (paper Sec. 6.2; Feature Denoising): the same PGD spec evaluation uses.

- ``training_attack``: the attack of every training step, targeted (default) or untargeted L-inf PGD; targets are
  drawn by lrrobust from a seeded generator, never the true class, and handed to torchattacks by label.
- ``validation_attack``: the short untargeted PGD that chooses best.pt of an adversarial run on the validation
  split (``config.validation``).
"""

from __future__ import annotations

import torch
from torch import nn

from lrrobust.attacks import AttackSpec, random_targets
from lrrobust.attacks.pgd import PGD
from lrrobust.core.modes import eval_mode, frozen


def training_attack(cfg) -> PGD | None:
    """The run's training attack (None for regular training); ``cfg`` is a resolved TrainConfig."""
    if not cfg.adversarial:
        return None
    return PGD(name="training", eps=cfg.eps, targeted=cfg.targeted, role="training", step_size=cfg.step_size,
               steps=cfg.steps, random_start=cfg.random_start)


def validation_attack(cfg) -> PGD | None:
    """The PGD that chooses best.pt of an adversarial run (``cfg.validation["attack"]``); None for regular runs."""
    settings = cfg.validation["attack"]
    return None if settings is None else PGD.from_settings("validation", settings)


def perturb(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: AttackSpec,
            targets: torch.Tensor | None = None) -> torch.Tensor:
    """``attack``'s images for one batch, towards ``targets`` when targeted; the model in eval mode with frozen
    parameters (input gradients only), both restored after."""
    with eval_mode(model), frozen(model):
        return attack.build(model, 0, 0)(images, targets if attack.targeted else labels).detach()


def adversarial_examples(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attack: AttackSpec,
    num_classes: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """PGD images for one training batch and the targets used (None when untargeted). ``generator`` is a CPU
    generator for the targets."""
    targets = random_targets(labels, num_classes, generator) if attack.targeted else None
    return perturb(model, images, labels, attack, targets), targets
