"""The model registry, as timm's (``timm/models/_registry.py``): ``@register_model`` records a builder function with
its metadata, ``create_model(name, num_classes, **options)`` builds it, ``list_models()`` names them (paper
Tables 2-9).

A builder is ``fn(num_classes, **options) -> nn.Module`` taking images in [0, 1] (it normalises inside with the
``mean`` and ``std`` it is given). Its metadata says what the rest of lrrobust needs to know of a network without
reading its name: its ``family`` (the report pairs "lrnet" rows against "resnet" rows in its significance tests),
its ``display`` name in reports, the ``paper``'s parameters and FLOPs for it and, for the networks of Table 9, the
paper's robustness figures (``table9``). A network of another
architecture is one file of this package that defines its module and registers its builders.

Every network takes the input options the dataset sets (``INPUT_OPTIONS``): ``in_chans``, ``mean``, ``std``,
``stem`` (the stem that fits the image size) and ``width`` (a channel multiplier the small presets use); they are
checked here, the rest by the builder. Every model carries ``model.spec`` (JSON-able), from which
``create_model(**spec)`` rebuilds it.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from lrrobust.errors import UserError
from lrrobust.models.paper import PaperFigure, PaperRobustness

INPUT_OPTIONS = ("in_chans", "mean", "std", "stem", "width")
STEMS = ("imagenet", "half", "small")  # res2 at 1/4 of the input (224x224), at 1/2 (28x28), at full size (32x32, 8x8)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the normalisation of a 3-channel network given none
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """A registered network: its builder and what lrrobust knows of it."""

    name: str
    build: Callable[..., nn.Module]
    family: str  # "resnet", "lrnet", "nl", ...: which side of the report's LR-Net/ResNet tests its rows are on
    display: str  # how reports name it: "LR-Net-26"
    paper: PaperFigure | None = None  # the paper's parameters and FLOPs at 1000 classes and 224x224
    table9: PaperRobustness | None = None  # the paper's ImageNet robustness figures (Table 9)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(*, family: str, display: str, paper: PaperFigure | None = None,
                   table9: PaperRobustness | None = None
                   ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: record a builder ``fn(num_classes, **options)`` under its function's name, with its metadata."""

    def record(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if fn.__name__ in _REGISTRY:
            raise ValueError(f"model {fn.__name__!r} registered twice")
        _REGISTRY[fn.__name__] = ModelInfo(fn.__name__, fn, family, display, paper, table9)
        return fn

    return record


def list_models() -> list[str]:
    """Names accepted by ``create_model``, sorted."""
    return sorted(_REGISTRY)


def registered_models() -> list[ModelInfo]:
    """Every registered network in the order its file registers them (``lrrobust models`` lists them so)."""
    return list(_REGISTRY.values())


def find_model(name: str) -> ModelInfo | None:
    """The metadata of ``name``; None when no network of that name is registered (a checkpoint of another
    version)."""
    return _REGISTRY.get(name)


def model_info(name: str) -> ModelInfo:
    """The metadata of ``name``; a UserError listing the registered names."""
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int = 1000, **options: Any) -> nn.Module:
    """Build a registered model; ``options`` replace its defaults (each builder documents its own).

    Args:
        name: one of ``list_models()``.
        num_classes: classifier outputs.
        **options: the input options every network takes (``INPUT_OPTIONS``) and the builder's own.

    Returns:
        The model, with ``model.spec = {"name", "num_classes", "kwargs"}``.

    Raises:
        UserError: unknown name, unknown option or a bad option value (the message lists the valid ones).
    """
    info = model_info(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer; got {num_classes!r}")
    _check_known(info, options)
    kwargs = input_options(name, dict(options))
    model = info.build(num_classes, **kwargs)
    model.spec = {"name": name, "num_classes": num_classes, "kwargs": kwargs}
    return model


def _check_known(info: ModelInfo, options: dict[str, Any]) -> None:
    """A builder with named options only: refuse any other (a builder taking ``**options`` checks its own)."""
    params = inspect.signature(info.build).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return
    allowed = [p.name for p in params if p.name != "num_classes"]
    for key in options:
        if key not in allowed:
            raise UserError(f"{info.name} has no option {key!r}; valid options: {', '.join(allowed)}")


def input_options(name: str, kw: dict[str, Any]) -> dict[str, Any]:
    """The input options checked and JSON-able: ``in_chans`` (default 3), ``mean`` and ``std`` always explicit (a
    network of other than 3 channels needs them given), ``stem`` one of ``STEMS``, ``width`` a positive number."""
    in_chans = kw.setdefault("in_chans", 3)
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise UserError(f"in_chans must be a positive integer; got {in_chans!r}")
    for key, default in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
        if key not in kw and in_chans != 3:
            raise UserError(f"{name} with in_chans={in_chans} needs {key}= as a list of {in_chans} numbers")
        kw[key] = _floats(key, kw.get(key, default), in_chans)
    if any(s <= 0 for s in kw["std"]):
        raise UserError(f"std must be positive; got {kw['std']}")
    if "stem" in kw and (not isinstance(kw["stem"], str) or kw["stem"] not in STEMS):
        raise UserError(f"stem must be one of {', '.join(repr(s) for s in STEMS)}; got {kw['stem']!r}")
    if "width" in kw:
        kw["width"] = positive("width", kw["width"])
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


def positive(key: str, value: Any) -> float:
    """``value`` as a float when it is a positive finite number; a UserError naming ``key`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UserError(f"{key} must be a positive number; got {value!r}")
    return float(value)
