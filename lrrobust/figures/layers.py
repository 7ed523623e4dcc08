"""The local relation layers of a trained model, named by module and stage, and the inputs they see.

A stage is where a layer lies in the network of Fig. 3: ``stem`` (the 7x7 local relation layer that replaces the
stem conv, Fig. 3a) or ``res2`` .. ``res5``. The figures of Sec. 6 (Fig. 4, Fig. 5) are drawn per layer.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from lrrobust.core.modes import eval_mode
from lrrobust.errors import UserError
from lrrobust.models.local_relation import LocalRelation2d


@dataclasses.dataclass(frozen=True)
class NamedLayer:
    """A local relation layer with its module name (``stages.0.0.conv2``) and stage (``res2``)."""

    name: str
    stage: str
    layer: LocalRelation2d


def stage_of(name: str) -> str:
    """``stem`` for the stem, ``res{i + 2}`` for ``stages.{i}...`` (Table 2's stage names), else the name."""
    parts = name.split(".")
    if parts[0] == "stem":
        return "stem"
    if parts[0] == "stages" and len(parts) > 1 and parts[1].isdigit():
        return f"res{int(parts[1]) + 2}"
    return parts[0]


def lr_layers(model: nn.Module, what: str) -> list[NamedLayer]:
    """Every local relation layer of ``model`` in forward order; a UserError naming ``what`` when it has none."""
    layers = [NamedLayer(name, stage_of(name), module) for name, module in model.named_modules()
              if isinstance(module, LocalRelation2d)]
    if not layers:
        network = getattr(model, "spec", {}).get("name", type(model).__name__)
        raise UserError(f"{what} is a {network} without local relation layers; pass the checkpoint of an LR-Net "
                        "(lrnet18, lrnet26, lrnet50, lrnet101)")
    return layers


def choose_layer(layers: list[NamedLayer], name: str | None) -> NamedLayer:
    """The layer called ``name``; by default the first layer of res2 (else the first layer)."""
    if name is None:
        return next((entry for entry in layers if entry.stage == "res2"), layers[0])
    for entry in layers:
        if entry.name == name:
            return entry
    raise UserError(f"--layer {name!r} is not a local relation layer of this model; choose one of "
                    f"{', '.join(entry.name for entry in layers)}")


@torch.no_grad()
def layer_inputs(model: nn.Module, images: torch.Tensor, layers: list[NamedLayer]) -> dict[str, torch.Tensor]:
    """The input of each layer when ``model``, in eval mode, reads ``images``, captured by forward pre-hooks.

    A hooked layer runs unfolded (``lrrobust.models.fold``), as its own ``forward``.
    """
    seen: dict[str, torch.Tensor] = {}
    handles = [entry.layer.register_forward_pre_hook(
        lambda module, args, name=entry.name: seen.__setitem__(name, args[0].detach().clone())) for entry in layers]
    try:
        with eval_mode(model):
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return seen
