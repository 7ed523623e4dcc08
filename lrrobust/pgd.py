"""White-box L-inf PGD through torchattacks (paper Sec. 6.2), with targets drawn by lrrobust.

Targets follow Feature Denoising (Xie et al.): target = (label + U{1..C-1}) mod C, never the true class,
drawn from a seeded generator so a run can be reproduced and the targets recorded.
"""

from __future__ import annotations

import torch
import torchattacks
from torch import nn


def default_step_size(eps: float, steps: int) -> float:
    """Feature Denoising's step: 1/255, raised to eps/steps when that is larger."""
    return max(1.0 / 255.0, eps / steps)


def random_targets(labels: torch.Tensor, num_classes: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random wrong class per label: (label + U{1..C-1}) mod C. ``generator`` lives on the CPU."""
    if num_classes < 2:
        raise ValueError(f"a targeted attack needs at least 2 classes, got {num_classes}")
    offsets = torch.randint(1, num_classes, tuple(labels.shape), generator=generator)
    return (labels + offsets.to(labels.device)) % num_classes


def make_pgd(
    model: nn.Module, eps: float, alpha: float, steps: int, random_start: bool = True, targeted: bool = False
) -> torchattacks.PGD:
    """A torchattacks PGD on images in [0, 1]; targeted attacks take their targets as the labels passed in.

    torchattacks puts the model in eval mode (BatchNorm frozen) during the attack and restores its mode after.
    """
    attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start)
    if targeted:
        attack.set_mode_targeted_by_label(quiet=True)
    return attack


def pgd_perturb(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    random_start: bool = True,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Adversarial images: towards ``targets`` when given (targeted), else away from ``labels`` (untargeted)."""
    attack = make_pgd(model, eps, alpha, steps, random_start, targeted=targets is not None)
    return attack(images, targets if targets is not None else labels)
