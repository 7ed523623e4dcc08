"""Cheap diagnostics of gradient masking beside every evaluation (Athalye et al. 2018, Carlini et al.
2019): what the relation softmax and the input gradients look like on clean images, and whether the step from
PGD to APGD-CE is out of line with the other networks of a report.

Recorded in summary.json (``diagnose``), on the first ``DIAGNOSTIC_IMAGES`` images of the evaluation's sample:

- per local relation layer (Sec. 4, Eq. 2; ``LocalRelation2d``), recomputed from its query, key and prior the way
  ``lrrobust.ops.reference`` computes the logits: the softmax's largest weight per window (median and maximum over
  images, groups and pixels), its entropy (median, beside the entropy of a uniform weight over the window's most
  in-image positions), and the range of the logits split into the appearance term Phi(q, k) (Eq. 3-5; minimum,
  maximum, median spread within a window) and the geometric prior (minimum, maximum, largest spread over a window).
  Windows with a single position in the image (a 1x1 map) are left out: they are one-hot by construction;
- for every model, the L2 norm of each image's input gradient of the cross-entropy loss (median, 90th percentile)
  and the share of images whose gradient is exactly zero (a float32 softmax saturated on the true class).

The rule that turns them into the report's line per model (``signs``, ``drop_signs``, ``masking_line``):

- **a saturated relation softmax**: a layer whose median largest weight exceeds ``SATURATED_WEIGHT`` (0.9). Such a
  window is nearly one-hot, its softmax's gradient w (1 - w) nearly vanishes, and the attack's gradient through
  the layer's query and key with it: the first-order signal PGD follows is cut where the network still depends on
  the input (the issue measured medians of 0.08-0.40 on the demo's LR-Nets);
- **vanishing input gradients**: more than ``ZERO_GRADIENT_SHARE`` (25%) of the images with an input gradient of
  exactly zero, where a gradient attack started at the clean image has nothing to follow;
- **a PGD -> APGD-CE drop out of line** (at report time, from each evaluation's attacks): the fall from the
  suite's strongest untargeted PGD to AutoAttack's first component, APGD-CE (the same loss with a step-size
  schedule), exceeds by more than ``DROP_EXCESS_POINTS`` (10) points the median drop of the other networks' models
  of the same training kind and threat model in the report. Both attacks use the same loss on the same images, so a
  large fall means PGD's fixed steps were stalled by the loss surface rather than stopped by robustness; the
  paired outcome on 500 images carries far less noise than 10 points (a 500-image accuracy's standard error is at
  most 2.2 points), and on the issue's digits models both networks fell alike (6.4 and 7.0 points) while the MNIST
  LR-Nets fell 43 and 50 points against the ResNets' 2.6-5.2.

None of these proves masking, and their absence does not prove its absence: each says where to look with stronger
attacks (more restarts and steps, a surrogate backward), which these diagnostics are too cheap to replace.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from lrrobust.attacks import is_pgd
from lrrobust.core.modes import eval_mode, frozen
from lrrobust.models.local_relation import LocalRelation2d
from lrrobust.ops.reference import window_logits

DIAGNOSTIC_IMAGES = 256
DIAGNOSTIC_BATCH = 32
SATURATED_WEIGHT = 0.9
ZERO_GRADIENT_SHARE = 0.25
DROP_EXCESS_POINTS = 10.0
_CHUNK_ELEMENTS = 1 << 22  # logits held at once per layer: images are taken in chunks below this


def _median(values: torch.Tensor) -> float:
    return float(values.median())


class _LayerStats:
    """What one local relation layer's windows looked like over the images seen so far."""

    def __init__(self, name: str, layer: LocalRelation2d) -> None:
        self.name, self.layer = name, layer
        self.window = 0
        self.positions = 0  # the most in-image offsets of a window
        self.largest: list[torch.Tensor] = []
        self.entropy: list[torch.Tensor] = []
        self.phi_spread: list[torch.Tensor] = []
        self.phi_range = [math.inf, -math.inf]
        self.prior: torch.Tensor | None = None

    @torch.no_grad()
    def see(self, x: torch.Tensor) -> None:
        layer = self.layer
        x = x.detach()
        h, w = x.shape[-2:]
        k = layer.window(h, w)
        prior = layer.prior(k, x).float()
        self.window, self.prior = k, prior
        groups, kk = layer.groups, k * k
        ho, wo = -(-h // layer.stride), -(-w // layer.stride)
        chunk = max(1, _CHUNK_ELEMENTS // (groups * kk * ho * wo))
        for part in x.split(chunk):
            query, key = layer.query_key(part)
            phi, inside = window_logits(query.float(), key.float(), torch.zeros_like(prior), k, layer.stride, 1,
                                  layer.composability, layer.qk_dim)
            positions = inside.sum(2)  # (1, 1, Ho, Wo): in-image offsets per window
            self.positions = max(self.positions, int(positions.max()))
            # a window with one position in the image (a 1x1 map) is one-hot by construction: it says nothing
            several = (positions > 1).expand(len(part), groups, ho, wo)
            self.phi_range[0] = min(self.phi_range[0], float(phi.masked_fill(~inside, math.inf).amin()))
            self.phi_range[1] = max(self.phi_range[1], float(phi.masked_fill(~inside, -math.inf).amax()))
            spread = phi.masked_fill(~inside, -math.inf).amax(2) - phi.masked_fill(~inside, math.inf).amin(2)
            self.phi_spread.append(spread[several].cpu())
            if layer.normalize != "softmax":
                continue
            logits = (phi + prior.reshape(1, groups, kk, 1, 1)).masked_fill(~inside, -math.inf)
            weights = logits.softmax(dim=2)
            self.largest.append(weights.amax(2)[several].cpu())
            self.entropy.append(torch.special.entr(weights).sum(2)[several].cpu())

    def result(self) -> dict[str, Any]:
        prior = self.prior.reshape(self.prior.shape[0], -1)
        spread = torch.cat(self.phi_spread)
        out: dict[str, Any] = {
            "layer": self.name, "window": self.window, "positions": self.positions, "groups": self.layer.groups,
            "phi": {"min": self.phi_range[0], "max": self.phi_range[1],
                    "spread_median": _median(spread) if len(spread) else None},
            "prior": {"min": float(prior.min()), "max": float(prior.max()),
                      "spread_max": float((prior.amax(1) - prior.amin(1)).max())},
            "largest_weight": None, "entropy": None,
        }
        largest = torch.cat(self.largest) if self.largest else torch.empty(0)
        if len(largest):  # none without a softmax (Table 6, "none") or on 1x1 maps
            out["largest_weight"] = {"median": _median(largest), "max": float(largest.max())}
            out["entropy"] = {"median": _median(torch.cat(self.entropy)), "uniform": math.log(self.positions)}
        return out


def diagnose(model: nn.Module, data: Dataset, indices: list[int], device: torch.device | str,
             images: int = DIAGNOSTIC_IMAGES, batch_size: int = DIAGNOSTIC_BATCH) -> dict[str, Any]:
    """The diagnostics of the module docstring on the clean images ``indices[:images]`` of ``data``.

    Args:
        model: takes [0, 1] images, returns logits; run in eval mode, its modes and ``requires_grad`` restored.
        data: (image, label) pairs.
        indices: the evaluation's sample, in order.
        device: where the model is.
        images: how many images at most.
        batch_size: images per forward and backward pass.

    Returns:
        ``{"images": n, "input_gradient": {...}, "lr_layers": [...], "signs": [...]}``, JSON-ready.
    """
    device = torch.device(device)
    chosen = list(indices[:images])
    stats = [_LayerStats(name, m) for name, m in model.named_modules() if isinstance(m, LocalRelation2d)]
    hooks = [s.layer.register_forward_pre_hook(lambda _m, args, s=s: s.see(args[0])) for s in stats]
    norms = []
    try:
        with eval_mode(model), frozen(model):
            for start in range(0, len(chosen), batch_size):  # no DataLoader: it would draw from the global RNG
                items = [data[i] for i in chosen[start:start + batch_size]]
                batch = torch.stack([torch.as_tensor(image) for image, _ in items]).to(device).requires_grad_(True)
                labels = torch.tensor([int(label) for _, label in items], device=device)
                loss = F.cross_entropy(model(batch), labels, reduction="sum")  # each image's own loss gradient
                (grad,) = torch.autograd.grad(loss, batch)
                norms.append(grad.flatten(1).double().norm(dim=1).cpu())
    finally:
        for hook in hooks:
            hook.remove()
    norm = torch.cat(norms)
    result = {
        "images": len(chosen),
        "input_gradient": {"norm": "l2", "median": _median(norm), "p90": float(torch.quantile(norm, 0.9)),
                           "zero_share": float((norm == 0).double().mean())},
        "lr_layers": [s.result() for s in stats],
    }
    result["signs"] = signs(result)
    return result


def signs(diagnostics: dict[str, Any]) -> list[str]:
    """What one model's own diagnostics show (the first two rules of the module docstring)."""
    out = []
    for layer in diagnostics.get("lr_layers", []):
        largest = layer.get("largest_weight")
        if largest and largest["median"] > SATURATED_WEIGHT:
            out.append(f"relation softmax near one-hot in {layer['layer']} (median largest weight "
                       f"{largest['median']:.2f} > {SATURATED_WEIGHT})")
    gradient = diagnostics.get("input_gradient") or {}
    if gradient.get("zero_share", 0) > ZERO_GRADIENT_SHARE:
        out.append(f"input gradient exactly zero on {100 * gradient['zero_share']:.0f}% of the images")
    return out


# ---------------------------------------------------------------- at report time


def pgd_apgd_drop(attacks: list[dict[str, Any]], eps: float) -> float | None:
    """Points lost from the strongest untargeted PGD to APGD-CE (AutoAttack's first component) at ``eps``, from
    summary.json's attack rows; None when the evaluation lacks one of them."""
    at_eps = [a for a in attacks if math.isclose(float(a["eps"]), eps, rel_tol=1e-9)]
    pgd = [a["accuracy"] for a in at_eps
           if is_pgd(a) and not a["targeted"] and not a.get("source")]  # white-box only
    apgd = [s["accuracy"] for a in at_eps for s in a.get("stages", []) if s["stage"] == "apgd-ce"]
    if not pgd or not apgd:
        return None
    return 100 * (min(pgd) - min(apgd))


def drop_signs(drops: dict[Any, tuple[str, float | None]]) -> dict[Any, str]:
    """Per model key, the PGD -> APGD-CE sign (the third rule) among the models of one training kind and threat
    model: ``drops`` maps each to (network, drop in points or None)."""
    out = {}
    for key, (network, drop) in drops.items():
        others = [d for n, d in drops.values() if n != network and d is not None]
        if drop is None or not others:
            continue
        reference = statistics.median(others)
        if drop - reference > DROP_EXCESS_POINTS:
            out[key] = (f"PGD -> APGD-CE drop of {drop:.1f} points against a median of {reference:.1f} for the other "
                        "networks")
    return out


def masking_line(diagnostics: dict[str, Any] | None, drop_sign: str | None) -> str:
    """The report's line for one model: 'no sign of masking (...)' or what was seen."""
    seen = signs(diagnostics) if diagnostics else []
    seen += [drop_sign] if drop_sign else []
    if seen:
        return "; ".join(seen)
    if not diagnostics:
        return "no sign of masking in the PGD -> APGD-CE drop (no layer or gradient diagnostics recorded)"
    facts = []
    weights = [layer["largest_weight"]["median"] for layer in diagnostics.get("lr_layers", [])
               if layer.get("largest_weight")]
    if weights:
        facts.append(f"median largest relation weight {min(weights):.2f}-{max(weights):.2f} over {len(weights)} "
                     "LR layers")
    gradient = diagnostics.get("input_gradient")
    if gradient:
        facts.append(f"input-gradient norm median {gradient['median']:.3g}, 90th percentile {gradient['p90']:.3g}")
    return "no sign of masking" + (f" ({'; '.join(facts)})" if facts else "")
