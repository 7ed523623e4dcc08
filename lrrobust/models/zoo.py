"""The paper's networks (Tables 2-9): every ResNet and LR-Net variant, each a configuration of ``ResNet`` registered
with its family, its name in reports and the paper's parameters and FLOPs (``lrrobust.models.registry``).

Caller options override a variant's defaults, so every cell of Tables 3-6 is a name plus options, e.g.
``create_model("lrnet26", kernel_size=5, geo_prior="none")``. Besides the input options every network takes, a
variant takes ``alpha`` and ``kernel_size`` (a non-local spatial layer has no window) and, for LR-Nets, the local
relation options ``LR_OPTIONS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lrrobust.errors import UserError
from lrrobust.models.local_relation import (
    COMPOSABILITIES,
    GEO_PRIORS,
    KERNEL_SIZES,
    NORMALIZATIONS,
    QK_DIMS,
    check_choice,
)
from lrrobust.models.paper import PaperFigure, PaperRobustness
from lrrobust.models.registry import INPUT_OPTIONS, positive, register_model
from lrrobust.models.resnet import STEM_LAYERS, ResNet

COMMON_OPTIONS = (*INPUT_OPTIONS, "alpha", "kernel_size")  # every variant's
LR_OPTIONS = ("m", "composability", "geo_prior", "normalize", "qk_dim", "stem_layer")  # an LR-Net's too
LR_CHOICES = {"composability": COMPOSABILITIES, "geo_prior": GEO_PRIORS, "normalize": NORMALIZATIONS,
              "qk_dim": QK_DIMS, "stem_layer": STEM_LAYERS}


def build(name: str, config: dict[str, Any], num_classes: int, options: dict[str, Any]) -> ResNet:
    """The ``ResNet`` of ``config`` (block, layers, spatial, alpha, kernel_size, ...) with the caller's ``options``
    checked and put over it."""
    spatial = config["spatial"]
    allowed = COMMON_OPTIONS + (LR_OPTIONS if spatial == "lr" else ())
    if spatial == "nl":
        allowed = tuple(key for key in allowed if key != "kernel_size")  # a non-local layer has no window
    for key in options:
        if key not in allowed:
            raise UserError(f"{name} has no option {key!r}; valid options: {', '.join(allowed)}")
    if "alpha" in options:
        options["alpha"] = positive("alpha", options["alpha"])
    if "kernel_size" in options:
        check_choice("kernel_size", options["kernel_size"], KERNEL_SIZES if spatial == "lr" else KERNEL_SIZES[:-1])
    m = options.get("m", 1)
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise UserError(f"m (channels per aggregation) must be a positive integer such as 8; got {m!r}")
    for key, choices in LR_CHOICES.items():
        if key in options:
            check_choice(key, options[key], choices)
    return ResNet(num_classes=num_classes, **{**config, **options})


def _bottleneck(layers: Sequence[int], spatial: str, alpha: float, kernel_size: int) -> dict[str, Any]:
    return {"block": "bottleneck", "layers": list(layers), "spatial": spatial, "alpha": alpha,
            "kernel_size": kernel_size}


def _basic(spatial: str, alpha: float, kernel_size: int) -> dict[str, Any]:
    return {"block": "basic", "layers": [2, 2, 2, 2], "spatial": spatial, "alpha": alpha, "kernel_size": kernel_size}


# Registered in the order `lrrobust models` lists them: by depth, each ResNet beside its LR-Net.


@register_model(family="resnet", display="ResNet-18", paper=PaperFigure(11.7e6, 3.1e9, "Table 8"))
def resnet18(num_classes: int = 1000, **options: Any) -> ResNet:
    return build("resnet18", _basic("conv", 1.0, 3), num_classes, options)


@register_model(family="lrnet", display="LR-Net-18", paper=PaperFigure(14.4e6, 2.5e9, "Table 8"))
def lrnet18(num_classes: int = 1000, **options: Any) -> ResNet:
    """LR-Net-18 (Table 8): alpha = 130/64 splits the gap between 14.4M parameters and 2.5G FLOPs."""
    return build("lrnet18", _basic("lr", 130 / 64, 7), num_classes, options)


@register_model(family="resnet", display="ResNet-26", paper=PaperFigure(16.0e6, 2.6e9, "Table 7"),
                table9=PaperRobustness(44.9, 37.9, 14.4, 72.8))
def resnet26(num_classes: int = 1000, **options: Any) -> ResNet:
    return build("resnet26", _bottleneck((2, 2, 2, 2), "conv", 1.0, 3), num_classes, options)


@register_model(family="resnet", display="ResNet-26 DW")
def resnet26_dw(num_classes: int = 1000, **options: Any) -> ResNet:
    """ResNet-DW-26 (Table 3): depthwise spatial layers, alpha raised to ResNet-26's FLOPs."""
    return build("resnet26_dw", _bottleneck((2, 2, 2, 2), "dw", 2.0, 3), num_classes, options)


@register_model(family="resnet", display="ResNet-26-NL", paper=PaperFigure(38.2e6, 5.6e9, "Table 7"))
def resnet26_nl(num_classes: int = 1000, **options: Any) -> ResNet:
    """ResNet-26-NL (Table 7): a non-local block after every residual block of ResNet-26."""
    config = {**_bottleneck((2, 2, 2, 2), "conv", 1.0, 3), "nonlocal_blocks": True}
    return build("resnet26_nl", config, num_classes, options)


@register_model(family="nl", display="NL-26", paper=PaperFigure(17.3e6, 2.6e9, "Table 7"))
def nl26(num_classes: int = 1000, **options: Any) -> ResNet:
    """NL-26 (Table 7): every 3x3 conv of ResNet-26 replaced by a non-local layer; alpha = 85/64 gives
    ResNet-26's FLOPs (A1: the ablations adapt alpha to equal FLOPs; the kernel_size entry is unused)."""
    return build("nl26", _bottleneck((2, 2, 2, 2), "nl", 85 / 64, 3), num_classes, options)


@register_model(family="lrnet", display="LR-Net-26", paper=PaperFigure(14.7e6, 2.6e9, "Table 7"),
                table9=PaperRobustness(52.1, 44.2, 26.8, 75.7))
def lrnet26(num_classes: int = 1000, **options: Any) -> ResNet:
    """LR-Net-26 (Tables 3-7, 9): the widths of LR-Net-50 (100, 200, 400, 800), 14.7M parameters."""
    return build("lrnet26", _bottleneck((2, 2, 2, 2), "lr", 100 / 64, 7), num_classes, options)


@register_model(family="lrnet", display="LR-Net-26-NL", paper=PaperFigure(37.1e6, 5.6e9, "Table 7"))
def lrnet26_nl(num_classes: int = 1000, **options: Any) -> ResNet:
    """LR-Net-26-NL (Table 7): a non-local block after every residual block of LR-Net-26."""
    config = {**_bottleneck((2, 2, 2, 2), "lr", 100 / 64, 7), "nonlocal_blocks": True}
    return build("lrnet26_nl", config, num_classes, options)


@register_model(family="resnet", display="ResNet-50", paper=PaperFigure(25.5e6, 4.3e9, "Table 2, 8"),
                table9=PaperRobustness(52.0, 43.0, 22.5, 76.3))
def resnet50(num_classes: int = 1000, **options: Any) -> ResNet:
    return build("resnet50", _bottleneck((3, 4, 6, 3), "conv", 1.0, 3), num_classes, options)


@register_model(family="lrnet", display="LR-Net-50", paper=PaperFigure(23.3e6, 4.3e9, "Table 2, 8"))
def lrnet50(num_classes: int = 1000, **options: Any) -> ResNet:
    """LR-Net-50 of Table 2: spatial widths 100, 200, 400, 800 (alpha = 100/64)."""
    return build("lrnet50", _bottleneck((3, 4, 6, 3), "lr", 100 / 64, 7), num_classes, options)


@register_model(family="resnet", display="ResNet-101", paper=PaperFigure(44.4e6, 8.0e9, "Table 8"))
def resnet101(num_classes: int = 1000, **options: Any) -> ResNet:
    return build("resnet101", _bottleneck((3, 4, 23, 3), "conv", 1.0, 3), num_classes, options)


@register_model(family="lrnet", display="LR-Net-101", paper=PaperFigure(42.0e6, 8.0e9, "Table 8"))
def lrnet101(num_classes: int = 1000, **options: Any) -> ResNet:
    """LR-Net-101 (Table 8): alpha = 103/64 gives ResNet-101's FLOPs (Sec. 5) and 42.0M parameters."""
    return build("lrnet101", _bottleneck((3, 4, 23, 3), "lr", 103 / 64, 7), num_classes, options)
