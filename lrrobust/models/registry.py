"""The model registry: ``create_model(name, num_classes, **overrides)`` and ``list_models()`` (paper Tables 3-9).

Each entry point is a configuration of ``ResNet``; caller keywords override its defaults, so every cell of
Tables 3-6 is a name plus keywords, e.g. ``create_model("lrnet26", kernel_size=5, geo_prior="none")``.
Every model carries ``model.spec`` (JSON-able) from which ``create_model(**spec)`` rebuilds it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from lrrobust.errors import UserError
from lrrobust.models.local_relation import (
    COMPOSABILITIES,
    GEO_PRIORS,
    KERNEL_SIZES,
    NORMALIZATIONS,
    QK_DIMS,
    check_choice,
)
from lrrobust.models.resnet import IMAGENET_MEAN, IMAGENET_STD, STEM_LAYERS, STEMS, ResNet

_REGISTRY: dict[str, dict[str, Any]] = {}

COMMON_OPTIONS = ("in_chans", "mean", "std", "stem", "width", "alpha", "kernel_size")
LR_OPTIONS = ("m", "composability", "geo_prior", "normalize", "qk_dim", "stem_layer")


def register_model(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """Record an entry point: a function returning the default configuration of ``ResNet``."""
    _REGISTRY[fn.__name__] = fn()
    return fn


def list_models() -> list[str]:
    """Names accepted by ``create_model``, sorted."""
    return sorted(_REGISTRY)


def default_config(name: str) -> dict[str, Any]:
    """The registered configuration of ``name`` (block, layers, spatial, alpha, kernel_size, ...)."""
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    return dict(_REGISTRY[name])


def create_model(name: str, num_classes: int = 1000, **overrides: Any) -> nn.Module:
    """Build a registered model; ``overrides`` replace its defaults (see ``ResNet`` and ``LocalRelation2d``).

    Args:
        name: one of ``list_models()``.
        num_classes: classifier outputs.
        **overrides: in_chans, mean, std, stem, width, alpha, kernel_size and, for LR-Nets, m,
            composability, geo_prior, normalize, qk_dim, stem_layer.

    Returns:
        The model, with ``model.spec = {"name", "num_classes", "kwargs"}``.

    Raises:
        UserError: unknown name, unknown option or a bad option value (the message lists the valid ones).
    """
    config = default_config(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer; got {num_classes!r}")
    allowed = COMMON_OPTIONS + (LR_OPTIONS if config["spatial"] == "lr" else ())
    if config["spatial"] == "nl":
        allowed = tuple(key for key in allowed if key != "kernel_size")  # a non-local layer has no window
    for key in overrides:
        if key not in allowed:
            raise UserError(f"{name} has no option {key!r}; valid options: {', '.join(allowed)}")
    kwargs = _check(name, config["spatial"], dict(overrides))
    model = ResNet(num_classes=num_classes, **{**config, **kwargs})
    model.spec = {"name": name, "num_classes": num_classes, "kwargs": kwargs}
    return model


def _check(name: str, spatial: str, kw: dict[str, Any]) -> dict[str, Any]:
    """Validate overrides and turn them into JSON-able values; mean/std are always made explicit."""
    in_chans = kw.setdefault("in_chans", 3)
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise UserError(f"in_chans must be a positive integer; got {in_chans!r}")
    for key, default in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
        if key not in kw and in_chans != 3:
            raise UserError(f"{name} with in_chans={in_chans} needs {key}= as a list of {in_chans} numbers")
        kw[key] = _floats(key, kw.get(key, default), in_chans)
    if any(s <= 0 for s in kw["std"]):
        raise UserError(f"std must be positive; got {kw['std']}")
    if "stem" in kw:
        check_choice("stem", kw["stem"], STEMS)
    for key in ("width", "alpha"):
        if key in kw:
            kw[key] = _positive(key, kw[key])
    if "kernel_size" in kw:
        check_choice("kernel_size", kw["kernel_size"], KERNEL_SIZES if spatial == "lr" else KERNEL_SIZES[:-1])
    if "m" in kw and (isinstance(kw["m"], bool) or not isinstance(kw["m"], int) or kw["m"] < 1):
        raise UserError(f"m (channels per aggregation) must be a positive integer such as 8; got {kw['m']!r}")
    lr_choices = (
        ("composability", COMPOSABILITIES),
        ("geo_prior", GEO_PRIORS),
        ("normalize", NORMALIZATIONS),
        ("qk_dim", QK_DIMS),
        ("stem_layer", STEM_LAYERS),
    )
    for key, choices in lr_choices:
        if key in kw:
            check_choice(key, kw[key], choices)
    return kw


def _floats(key: str, values: Any, length: int) -> list[float]:
    if isinstance(values, (int, float)) or not isinstance(values, Sequence) or isinstance(values, str):
        raise UserError(f"{key} must be a list of {length} numbers; got {values!r}")
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise UserError(f"{key} must be a list of {length} numbers; got {values!r}") from None
    if len(out) != length:
        raise UserError(f"{key} must have in_chans={length} numbers; got {len(out)}")
    return out


def _positive(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UserError(f"{key} must be a positive number; got {value!r}")
    return float(value)


def _bottleneck(layers: Sequence[int], spatial: str, alpha: float, kernel_size: int) -> dict[str, Any]:
    return {
        "block": "bottleneck",
        "layers": list(layers),
        "spatial": spatial,
        "alpha": alpha,
        "kernel_size": kernel_size,
    }


def _basic(spatial: str, alpha: float, kernel_size: int) -> dict[str, Any]:
    return {"block": "basic", "layers": [2, 2, 2, 2], "spatial": spatial, "alpha": alpha, "kernel_size": kernel_size}


@register_model
def resnet18() -> dict[str, Any]:
    return _basic("conv", 1.0, 3)


@register_model
def resnet26() -> dict[str, Any]:
    return _bottleneck((2, 2, 2, 2), "conv", 1.0, 3)


@register_model
def resnet50() -> dict[str, Any]:
    return _bottleneck((3, 4, 6, 3), "conv", 1.0, 3)


@register_model
def resnet101() -> dict[str, Any]:
    return _bottleneck((3, 4, 23, 3), "conv", 1.0, 3)


@register_model
def resnet26_dw() -> dict[str, Any]:
    """ResNet-DW-26 (Table 3): depthwise spatial layers, alpha raised to ResNet-26's FLOPs."""
    return _bottleneck((2, 2, 2, 2), "dw", 2.0, 3)


@register_model
def lrnet18() -> dict[str, Any]:
    """LR-Net-18 (Table 8): alpha = 130/64 splits the gap between 14.4M parameters and 2.5G FLOPs."""
    return _basic("lr", 130 / 64, 7)


@register_model
def lrnet26() -> dict[str, Any]:
    """LR-Net-26 (Tables 3-7, 9): the widths of LR-Net-50 (100, 200, 400, 800), 14.7M parameters."""
    return _bottleneck((2, 2, 2, 2), "lr", 100 / 64, 7)


@register_model
def nl26() -> dict[str, Any]:
    """NL-26 (Table 7): every 3x3 conv of ResNet-26 replaced by a non-local layer; alpha = 85/64 gives
    ResNet-26's FLOPs (A1: the ablations adapt alpha to equal FLOPs; the kernel_size entry is unused)."""
    return _bottleneck((2, 2, 2, 2), "nl", 85 / 64, 3)


@register_model
def resnet26_nl() -> dict[str, Any]:
    """ResNet-26-NL (Table 7): a non-local block after every residual block of ResNet-26."""
    return {**_bottleneck((2, 2, 2, 2), "conv", 1.0, 3), "nonlocal_blocks": True}


@register_model
def lrnet26_nl() -> dict[str, Any]:
    """LR-Net-26-NL (Table 7): a non-local block after every residual block of LR-Net-26."""
    return {**_bottleneck((2, 2, 2, 2), "lr", 100 / 64, 7), "nonlocal_blocks": True}


@register_model
def lrnet50() -> dict[str, Any]:
    """LR-Net-50 of Table 2: spatial widths 100, 200, 400, 800 (alpha = 100/64)."""
    return _bottleneck((3, 4, 6, 3), "lr", 100 / 64, 7)


@register_model
def lrnet101() -> dict[str, Any]:
    """LR-Net-101 (Table 8): alpha = 103/64 gives ResNet-101's FLOPs (Sec. 5) and 42.0M parameters."""
    return _bottleneck((3, 4, 23, 3), "lr", 103 / 64, 7)
