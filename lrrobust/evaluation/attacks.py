"""Running one attack of a suite on a batch: torchattacks underneath, restarts kept per sample (paper Sec. 6.2).

- PGD (Madry et al.) and FGSM through torchattacks; targeted attacks get lrrobust's seeded targets by label.
- AutoAttack (Croce and Hein 2020, "standard": APGD-CE, APGD-T, FAB-T, Square) through torchattacks' parts,
  with the dataset's class count and the authors' iteration counts (torchattacks' AutoAttack assumes 10 classes
  and runs 10 iterations).
- Restarts keep the per-sample worst case for the defender: untargeted, a restart counts when it misclassifies;
  targeted, only when it hits the target (torchattacks' MultiAttack rule, prediction != label, is untargeted).
- torchattacks' random start draws from the global RNG, so each restart seeds it from a caller-given seed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Callable, Iterator

import torch
import torchattacks
from torch import nn

from lrrobust.evaluation.suite import AttackSpec
from lrrobust.pgd import make_pgd

# The original AutoAttack attacks the 9 most likely wrong classes in APGD-T and FAB-T.
AUTOATTACK_TARGET_CLASSES = 9


@dataclasses.dataclass
class AttackOutcome:
    """Per-sample result of one attack on one batch (worst case over restarts)."""

    adv_images: torch.Tensor
    adv_pred: torch.Tensor
    success: torch.Tensor  # targeted: prediction == target; untargeted: prediction != label
    targets: torch.Tensor | None


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (run seed, batch index, attack key, restart): stable across machines."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put models in eval mode (BatchNorm frozen) and restore every submodule's own mode afterwards."""
    saved = [[(m, m.training) for m in model.modules()] for model in models]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for modes in saved:
            for module, training in modes:
                module.training = training


@contextlib.contextmanager
def frozen(*models: nn.Module) -> Iterator[None]:
    """Parameters need no gradient while an attack runs (only the input's); restored afterwards."""
    saved = [(p, p.requires_grad) for model in models for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Top-1 class of each image."""
    return model(images).argmax(dim=1)


def build_attack(model: nn.Module, spec: AttackSpec, num_classes: int, seed: int) -> torchattacks.Attack:
    """The torchattacks attack for ``spec`` against ``model``; targeted attacks take targets as labels."""
    if spec.kind == "pgd":
        return make_pgd(model, spec.eps, spec.step_size, spec.steps, spec.random_start, targeted=spec.targeted)
    if spec.kind == "fgsm":
        attack = torchattacks.FGSM(model, eps=spec.eps)
        if spec.targeted:
            attack.set_mode_targeted_by_label(quiet=True)
        return attack
    if spec.kind == "autoattack":
        return build_autoattack(model, spec.eps, num_classes, seed, steps=spec.steps, n_queries=spec.n_queries)
    raise ValueError(f"unknown attack kind {spec.kind!r}")


def build_autoattack(
    model: nn.Module, eps: float, num_classes: int, seed: int, steps: int = 100, n_queries: int | None = 5000
) -> torchattacks.MultiAttack:
    """AutoAttack "standard" (L-inf) with the original settings and ``num_classes`` classes."""
    seed = seed % (2**32)
    targets = max(1, min(AUTOATTACK_TARGET_CLASSES, num_classes - 1))
    apgd = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, loss="ce")
    apgdt = torchattacks.APGDT(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, n_classes=num_classes)
    fab = torchattacks.FAB(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, multi_targeted=True,
                           n_classes=num_classes)
    square = torchattacks.Square(model, norm="Linf", eps=eps, n_queries=n_queries or 5000, n_restarts=1, seed=seed)
    apgdt.n_target_classes = targets
    fab.n_target_classes = targets
    return torchattacks.MultiAttack([apgd, apgdt, fab, square])


def run_attack(
    model: nn.Module,
    spec: AttackSpec,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    targets: torch.Tensor | None = None,
    seed_for: Callable[[int], int] = lambda restart: restart,
    source: nn.Module | None = None,
    first: AttackOutcome | None = None,
) -> AttackOutcome:
    """Attack ``model`` on a batch with ``spec.restarts`` restarts, keeping each sample's worst case.

    Args:
        model: the model under evaluation (it takes [0, 1] images); its train/eval modes are restored after.
        spec: the attack.
        images, labels: the batch, images in [0, 1].
        num_classes: the dataset's class count (AutoAttack's targets).
        targets: one wrong class per sample, required when ``spec.targeted``.
        seed_for: the global-RNG seed of restart r (torchattacks' random start uses the global RNG).
        source: craft the examples on this model instead (a transfer attack); predictions are ``model``'s.
        first: the outcome of restart 0, when already computed (the same attack with one restart and the same
            seeds); restart 0 is then not run again.

    Returns:
        AttackOutcome with the kept adversarial images, their predictions by ``model`` and success flags.
    """
    if spec.targeted and targets is None:
        raise ValueError("a targeted attack needs targets")
    if targets is not None and bool((targets == labels).any()):
        raise ValueError("a target equals the true label")
    crafter = source if source is not None else model
    goal = targets if spec.targeted else labels
    with eval_mode(model, crafter), frozen(model, crafter):
        kept = images.clone()
        kept_pred = torch.empty_like(labels)
        success = torch.zeros_like(labels, dtype=torch.bool)
        if first is not None:
            kept, kept_pred, success = first.adv_images.clone(), first.adv_pred.clone(), first.success.clone()
        for restart in range(0 if first is None else 1, spec.restarts):
            todo = torch.arange(len(labels), device=labels.device) if restart == 0 else (~success).nonzero()[:, 0]
            if len(todo) == 0:
                break
            seed = seed_for(restart)
            torch.manual_seed(seed)
            attack = build_attack(crafter, spec, num_classes, seed)
            adv = attack(images[todo], goal[todo]).detach()
            pred = predict(model, adv)
            hit = pred == goal[todo] if spec.targeted else pred != labels[todo]
            keep = todo if restart == 0 else todo[hit]
            new = slice(None) if restart == 0 else hit
            kept[keep] = adv[new]
            kept_pred[keep] = pred[new]
            success[keep] = hit[new]
    return AttackOutcome(kept, kept_pred, success, targets if spec.targeted else None)
