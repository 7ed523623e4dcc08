"""Models from outside lrrobust, evaluated like the zoo's (paper Sec. 6.2, Table 9): bring your own model.

Three ways in, each recorded as ``model.origin`` in summary.json (its ``kind``):

- ``model-py``: ``lrrobust eval-attack --model-py FILE.py:FACTORY``; FACTORY() takes no arguments and returns
  either an ``nn.Module`` that takes images in [0, 1] (normalising inside, as the zoo's models do), or a tuple
  ``(module, mean, std)``: lrrobust then feeds ``module`` with ``(x - mean) / std`` of the [0, 1] images ``x``
  (per-channel lists, or one number for every channel). Any affine input convention fits the tuple: a module that
  expects pixels in 0..255 is ``(module, 0, 1/255)``, one that expects [-1, 1] is ``(module, 0.5, 0.5)``.
- ``torchvision``: ``--torchvision NAME --weights FILE``: ``torchvision.models.get_model(NAME,
  num_classes=<the dataset's>)`` with a local state dict, normalised with the dataset's mean and std; or
  ``--download``: torchvision's own ImageNet weights and their mean and std (downloaded only when asked).
- ``python-api``: ``lrrobust.evaluate(module, data, eps=...)`` on an in-memory module (``lrrobust.evaluation.api``;
  the same contract: [0, 1] images, or ``mean``/``std`` given).

Attacks work on [0, 1] pixels and eps is in those units, so the module must take them; before any attack the
module is tried on one small batch (``lrrobust.evaluation.target``: logits with a gradient, deterministic, no
mode-dependent module left in train mode). The figures, per-sample records, checks and ledger are then exactly the
zoo's (``evaluation.evaluate``).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.machinery
import importlib.util
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrrobust.data import DatasetInfo
from lrrobust.errors import UserError, first_line
from lrrobust.evaluation.evaluate import evaluate_target, open_dataset
from lrrobust.evaluation.suite import Suite
from lrrobust.evaluation.target import EvalTarget, Origin, check_label, check_modes, check_training, model_digest
from lrrobust.io import file_sha256


class Normalized(nn.Module):
    """``model((x - mean) / std)``: an outside module behind the normalisation it expects, taking [0, 1] images."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


# ---------------------------------------------------------------- what the user gives


def _per_channel(value: Any, what: str, in_chans: int, positive: bool) -> list[float]:
    """mean or std: one finite number, or one per channel (std positive); one per channel out."""
    values = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number or a list of {in_chans} numbers, got {value!r}") from None
    if len(out) not in (1, in_chans) or not all(math.isfinite(v) for v in out):
        raise UserError(f"{what} must be one finite number or {in_chans} (one per channel of the dataset), got "
                        f"{value!r}")
    if positive and any(v <= 0 for v in out):
        raise UserError(f"{what} must be positive, got {value!r}")
    return out * in_chans if len(out) == 1 else out


# ---------------------------------------------------------------- the ways in


def parse_model_py(spec: str) -> tuple[Path, str]:
    """``FILE.py:FACTORY`` as (file, factory name)."""
    path, sep, factory = spec.rpartition(":")
    if not sep or not path or not factory.isidentifier():
        raise UserError(f"--model-py must be FILE.py:FACTORY (a Python file and a function in it, e.g. "
                        f"mymodels.py:build), got {spec!r}")
    if not Path(path).is_file():
        raise UserError(f"--model-py: no file {path}")
    return Path(path), factory


def load_model_py(spec: str) -> tuple[nn.Module | Any, Origin]:
    """Import FILE.py (its folder on sys.path meanwhile, so it may import its neighbours) and call FACTORY();
    returns what it returned and the origin (file, its sha256, the factory)."""
    path, factory = parse_model_py(spec)
    digest = file_sha256(path)
    name = f"lrrobust_model_py_{digest[:16]}"
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        try:
            loader.exec_module(module)
        except (Exception, SystemExit, KeyboardInterrupt) as e:  # noqa: BLE001 - whatever the user's file raises
            sys.modules.pop(name, None)
            raise UserError(f"--model-py: importing {path} failed: {_raised(e)}") from None
        fn = getattr(module, factory, None)
        if not callable(fn):
            found = sorted(k for k, v in vars(module).items() if callable(v) and getattr(v, "__module__", "") == name)
            raise UserError(f"--model-py: {path} has no function {factory!r}; callables defined there: "
                            f"{', '.join(found) or '(none)'}")
        try:
            made = fn()
        except (Exception, SystemExit, KeyboardInterrupt) as e:  # noqa: BLE001
            raise UserError(f"--model-py: {path.name}:{factory}() raised {_raised(e)}") from None
    finally:
        sys.path.remove(folder)
    return made, Origin("model-py", name=f"{path.name}:{factory}", path=str(path), sha256=digest, factory=factory)


def _raised(error: BaseException) -> str:
    """An exception of the user's code in words; sys.exit and KeyboardInterrupt say what they are, since a model file
    must return a model, never end or interrupt the evaluation."""
    if isinstance(error, SystemExit):
        return f"SystemExit (it called sys.exit({error.code!r}); a model file and its factory must return, not exit)"
    if isinstance(error, KeyboardInterrupt):
        return "KeyboardInterrupt (a model file and its factory must return, not interrupt)"
    return first_line(error)


@dataclasses.dataclass(frozen=True)
class OutsideModel:
    """The outside model eval-attack was given, as ``load(info)`` takes it: ``--model-py FILE.py:FACTORY``, or
    ``--torchvision NAME`` with ``weights`` or ``download``. Plain data, so a child process can load it
    (``lrrobust.isolation``)."""

    model_py: str | None = None
    torchvision: str | None = None
    weights: str | None = None
    download: bool = False

    @property
    def what(self) -> str:
        """How messages name it: the option and its value."""
        return f"--model-py {self.model_py}" if self.model_py is not None else f"--torchvision {self.torchvision}"

    def __call__(self, info: DatasetInfo) -> tuple[Any, Origin]:
        if self.model_py is not None:
            return load_model_py(self.model_py)
        return load_torchvision(self.torchvision, self.weights, self.download, info)


def torchvision_names() -> list[str]:
    """torchvision's classification models."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def load_torchvision(name: str, weights: str | os.PathLike | None, download: bool, info: DatasetInfo
                     ) -> tuple[tuple[nn.Module, list[float], list[float]], Origin]:
    """A torchvision classification model with ``info.num_classes`` outputs and a local state dict, normalised
    with the dataset's mean and std; or, when ``download``, torchvision's own ImageNet weights with their mean and
    std. Returns ((module, mean, std), origin)."""
    from torchvision import models

    from lrrobust.checkpoint import refused_global

    names = torchvision_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see torchvision.models.list_models()"
        raise UserError(f"--torchvision: torchvision has no classification model {name!r} ({hint})")
    if (weights is None) == (not download):
        raise UserError("--torchvision needs --weights FILE (a state dict) or --download (torchvision's own weights), "
                        "one of them")
    if download:
        chosen = models.get_model_weights(name).DEFAULT
        categories = len(chosen.meta["categories"])
        if categories != info.num_classes:
            raise UserError(f"--download: torchvision's {name} weights have {categories} classes but {info.name} has "
                            f"{info.num_classes}; give --weights trained on it")
        model = models.get_model(name, weights=chosen)  # the download, into torchvision's cache
        transform = chosen.transforms()
        origin = Origin("torchvision", name=name, weights=f"torchvision {chosen}")
        return (model.eval(), list(transform.mean), list(transform.std)), origin
    path = Path(weights)
    if not path.is_file():
        raise UserError(f"--weights: no file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated zip, a pickle of code, random bytes...
        refused = refused_global(str(e))
        why = (f"it would import {refused}, which safe loading (weights_only) refuses" if refused else
               "not a file torch.save wrote, or a damaged one")
        raise UserError(f"--weights {path} is not a readable state dict ({why}); save it with "
                        "torch.save(model.state_dict(), FILE)") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--weights {path} is not a state dict (names to tensors); save it with "
                        "torch.save(model.state_dict(), FILE)")
    model = models.get_model(name, weights=None, num_classes=info.num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))[:300]
        raise UserError(f"--weights {path} does not fit torchvision {name} with {info.num_classes} classes: "
                        f"{detail}") from None
    origin = Origin("torchvision", name=name, path=str(path), sha256=file_sha256(path), weights=str(path))
    return (model.eval(), list(info.mean), list(info.std)), origin


# ---------------------------------------------------------------- the module, checked


def outside_target(made: Any, origin: Origin, info: DatasetInfo, *, label: str | None, training: str,
                   mean: Any = None, std: Any = None) -> EvalTarget:
    """The EvalTarget of an outside module: ``made`` is a module or (module, mean, std) (the factory contract);
    ``mean``/``std`` the normalisation to put in front when ``made`` does not give one."""
    what = origin.what
    if isinstance(made, tuple):
        if len(made) != 3:
            raise UserError(f"{what} gave a tuple of {len(made)}; give a module taking [0, 1] images, or "
                            "(module, mean, std)")
        if mean is not None or std is not None:
            raise UserError(f"{what} gave (module, mean, std) and mean/std were given too; give them once")
        made, mean, std = made
    if not isinstance(made, nn.Module):
        raise UserError(f"{what} gave a {type(made).__name__}; give a torch.nn.Module taking images in [0, 1], or "
                        "(module, mean, std)")
    if (mean is None) != (std is None):
        raise UserError(f"{what}: give mean and std together (or neither, for a module taking [0, 1] images)")
    check_modes(made, what)  # named before the normalisation wraps it; check_module tries the rest
    model = made
    if mean is not None:
        mean = _per_channel(mean, f"{what}: mean", info.in_chans, positive=False)
        std = _per_channel(std, f"{what}: std", info.in_chans, positive=True)
        model = Normalized(made, mean, std)
        model.training = made.training  # the wrapper's own mode changes nothing; it mirrors the module's
    origin = dataclasses.replace(
        origin, label=check_label(label if label is not None else origin.default_label()),
        class_name=f"{type(made).__module__}.{type(made).__qualname__}", mean=mean, std=std,
        training=check_training(training), state_sha256=model_digest(model))
    return EvalTarget(model, info.num_classes, origin, training=training, dataset=info.name,
                      sha256=origin.sha256 or origin.state_sha256)


# ---------------------------------------------------------------- evaluation


def evaluate_outside(load: Callable[[DatasetInfo], tuple[Any, Origin]], dataset: str, suite: Suite,
                     out: str | os.PathLike, *, label: str | None = None, training: str = "regular",
                     mean: Any = None, std: Any = None, root: str | None = None, transfer_from: str | None = None,
                     device: str = "auto", progress: bool | str = True, workers: int = 0,
                     ready: Callable[[], None] | None = None) -> dict[str, Any] | None:
    """Load an outside model with ``load(info)`` (the dataset's facts: classes, channels, mean, std) and evaluate
    it exactly as the zoo's; returns the summary on rank 0, None on the other ranks. ``ready`` is called once the
    model is loaded and has passed its checks on the first batch (``lrrobust.isolation`` times that part).

    This runs the model's code in this process; ``lrrobust eval-attack`` runs it in a child process instead
    (``lrrobust.isolation.evaluate_in_child``), which also catches a model that exits or hangs."""
    if label is not None:
        check_label(label)
    check_training(training)
    data, info = open_dataset(dataset, root, suite.split)
    made, origin = load(info)
    target = outside_target(made, origin, info, label=label, training=training, mean=mean, std=std)
    return evaluate_target(target, data, info, suite, out, root=root, transfer_from=transfer_from, device=device,
                           progress=progress, workers=workers, ready=ready)
