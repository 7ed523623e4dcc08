"""What is evaluated (paper Sec. 6.2, Table 9): the model, where it came from, and the checks it must pass first.

``EvalTarget`` is the model with its facts (summary.json's ``model``); ``Origin`` says who made it (summary.json's
``model.origin``): lrrobust (a checkpoint of the zoo), or someone outside (``lrrobust.external``: a model file,
torchvision, the Python API). Every model, the zoo's included, passes the same checks before any attack.

The attacks assume a deterministic module that maps [0, 1] images to (N, classes) logits with a gradient back to
the images. ``check_module`` tries the module on the first images of the split and refuses, in one line that says
what to do, what would make the figures meaningless (the failure modes AutoAttack's own checks warn about, Croce
and Hein 2020, and RobustBench refuses):

- images outside [0, 1] (the data normalised instead of the model);
- an output that is not a finite (N, classes) tensor, or has no gradient back to the images;
- probabilities instead of logits (every row non-negative and summing to 1): a softmax before the loss flattens
  the gradients the attacks follow;
- randomness (two forward passes on the same images differ): a randomised model needs attacks with expectation
  over transformation, which lrrobust does not run;
- a module left in train mode whose output depends on the mode (BatchNorm, dropout and their kin, or any module
  whose output in train mode differs from eval mode): the attacks run in eval mode, so the model evaluated would
  not be the one given. A model in train mode whose output does not depend on it is accepted.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from lrrobust.core.modes import eval_mode, frozen
from lrrobust.core.trainings import TRAININGS
from lrrobust.errors import UserError, first_line

LABEL_MAX = 80
CHECK_BATCH = 2  # images in the batch every module is tried on before the attacks
PROBABILITY_TOLERANCE = 1e-4  # |row sum - 1| below this on every row (and no negative entry): probabilities
RANDOM_TOLERANCE = 1e-4  # largest change between two passes, relative to the largest output: randomness

# Who made a model: lrrobust, or one of the three ways in from outside. How messages name it, and its default label.
ORIGIN_KINDS = ("lrrobust", "model-py", "torchvision", "python-api")
WHAT = {"lrrobust": "the checkpoint", "model-py": "--model-py {name}", "torchvision": "--torchvision {name}",
        "python-api": "lrrobust.evaluate"}
DEFAULT_LABEL = {"model-py": "{name}", "torchvision": "torchvision {name}", "python-api": "{name}"}

# Modules whose output depends on train/eval mode whenever they are in train mode (batch statistics, dropout).
_MODE_DEPENDENT: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


# ---------------------------------------------------------------- where a model came from


@dataclasses.dataclass(frozen=True)
class Origin:
    """summary.json's ``model.origin``: who made the model. Trained by lrrobust, only ``label`` (the report row's
    name, None for the network's own); from outside, the way in (``kind``), what was loaded and its hashes."""

    kind: str = "lrrobust"
    label: str | None = None
    name: str | None = None  # FILE.py:FACTORY, torchvision's model name, or the module's class name
    path: str | None = None  # the model file or the weights file; None for a module in memory or a download
    sha256: str | None = None  # of that file
    factory: str | None = None  # model-py: the function called
    weights: str | None = None  # torchvision: the weights loaded
    class_name: str | None = None  # the module's class, written as "class"
    mean: list[float] | None = None  # the normalisation lrrobust puts in front, if any
    std: list[float] | None = None
    training: str | None = None  # how its owner says it was trained
    state_sha256: str | None = None  # of its weights (``model_digest``)

    @property
    def outside(self) -> bool:
        """A model lrrobust did not train."""
        return self.kind != "lrrobust"

    @property
    def what(self) -> str:
        """How messages name the model: the checkpoint, the option that gave it, or ``lrrobust.evaluate``."""
        return WHAT[self.kind].format(name=self.name or "")

    def default_label(self) -> str:
        """An outside model's report row name when the user gives none."""
        return DEFAULT_LABEL[self.kind].format(name=self.name)

    def to_dict(self) -> dict[str, Any]:
        """As summary.json writes it: kind and label for lrrobust's models; every field for outside ones, factory
        and weights where the way in has them."""
        if not self.outside:
            return {"kind": self.kind, "label": self.label}
        out = {"kind": self.kind, "name": self.name, "path": self.path, "sha256": self.sha256, "label": self.label,
               "class": self.class_name, "mean": self.mean, "std": self.std, "training": self.training,
               "state_sha256": self.state_sha256}
        out.update({k: v for k, v in (("factory", self.factory), ("weights", self.weights)) if v is not None})
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Origin:
        """summary.json's ``model.origin`` read back; a ValueError saying what is wrong with it."""
        if not isinstance(data, dict) or data.get("kind") not in ORIGIN_KINDS:
            raise ValueError(f"model.origin must be an object whose kind is one of {', '.join(ORIGIN_KINDS)}")
        label = data.get("label")
        if not (label is None or isinstance(label, str)):
            raise ValueError("model.origin.label must be text")
        if data["kind"] != "lrrobust" and not all(isinstance(data.get(k), str) and data[k] for k in ("label", "name")):
            raise ValueError("model.origin of a model from outside needs its label and name")
        fields = {f.name for f in dataclasses.fields(cls)} - {"class_name"}
        return cls(**{k: v for k, v in data.items() if k in fields}, class_name=data.get("class"))


# ---------------------------------------------------------------- what is evaluated


@dataclasses.dataclass(frozen=True)
class CheckpointFacts:
    """What a checkpoint lrrobust wrote says about its model (``lrrobust.checkpoint``)."""

    path: str
    run_dir: str | None  # the training run directory holding it, when it is best.pt or last.pt
    model_spec: dict[str, Any]
    epoch: int
    training_attack: dict[str, Any] | None
    config: dict[str, Any]
    manifest: dict[str, Any]
    metrics: dict[str, Any] | None

    @property
    def in_chans(self) -> int:
        return int(self.model_spec.get("kwargs", {}).get("in_chans", 3))


@dataclasses.dataclass
class EvalTarget:
    """What is evaluated: the model, its class count, who made it and what is known about it."""

    model: nn.Module
    num_classes: int
    origin: Origin = Origin()
    training: str | None = None  # regular or adversarial
    dataset: str | None = None  # the dataset it was trained on
    sha256: str | None = None  # of its checkpoint or model file, else of its weights
    checkpoint: CheckpointFacts | None = None  # a checkpoint of lrrobust's

    def facts(self) -> dict[str, Any]:
        """summary.json's ``model``: its class count, training, dataset, hash and origin, and a checkpoint's facts."""
        out: dict[str, Any] = {"num_classes": self.num_classes, "training": self.training, "dataset": self.dataset,
                               "sha256": self.sha256, "origin": self.origin.to_dict()}
        if self.checkpoint is not None:
            c = self.checkpoint
            out.update(checkpoint=c.path, run_dir=c.run_dir, model_spec=c.model_spec, epoch=c.epoch,
                       training_attack=c.training_attack, config=c.config, manifest=c.manifest, metrics=c.metrics)
        return out


def model_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state (names, shapes and values): which weights an evaluation belongs to."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- what the user gives


def check_label(label: Any) -> str:
    """A report row's name: one line of text, no '|' (it is a markdown table cell)."""
    if not isinstance(label, str) or not label.strip() or len(label) > LABEL_MAX or "|" in label or \
            not label.isprintable():
        raise UserError(f"the label (--label) must be one line of 1 to {LABEL_MAX} printable characters without '|', "
                        f"got {label!r}")
    return label.strip()


def check_training(training: Any) -> str:
    """How an outside model was trained, as its owner declares it: the report's columns it fills."""
    if training not in TRAININGS:
        raise UserError(f"--training must be {' or '.join(TRAININGS)} (how the outside model was trained: the "
                        f"report's columns it fills), got {training!r}")
    return training


# ---------------------------------------------------------------- the checks before any attack


def _depends_on_mode(module: nn.Module) -> bool:
    """True when ``module``'s own output changes between train and eval mode."""
    if isinstance(module, _MODE_DEPENDENT):
        return True
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return module.track_running_stats  # running statistics are used in eval mode only
    if isinstance(module, (nn.MultiheadAttention, nn.RNNBase)):
        return float(getattr(module, "dropout", 0.0) or 0.0) > 0
    return False


def mode_dependent_in_train(model: nn.Module) -> str | None:
    """The first module in train mode whose output depends on the mode, as 'NAME (Class)'; None when there is none."""
    for name, module in model.named_modules():
        if module.training and _depends_on_mode(module):
            return f"{name or 'the module'} ({type(module).__name__})"
    return None


def check_modes(model: nn.Module, what: str) -> None:
    """Refuse a model with a BatchNorm, dropout or kin left in train mode (checked without running the model)."""
    found = mode_dependent_in_train(model)
    if found is not None:
        raise UserError(f"{what}: {found} is in train mode, where its output depends on the mode (batch statistics, "
                        "dropout) and the attacks would evaluate another model; call model.eval() on it first")


def _relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = max(float(a.abs().max()), float(b.abs().max()), 1e-12)
    return float((a - b).abs().max()) / scale


def _is_probabilities(output: torch.Tensor) -> bool:
    rows = output.detach().double()
    return bool((rows >= 0).all()) and bool(((rows.sum(dim=1) - 1).abs() < PROBABILITY_TOLERANCE).all())


def _output_in_own_modes(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The output with every module in the mode it was given in; buffers a train-mode forward might update (running
    statistics) are put back."""
    saved = {name: buffer.clone() for name, buffer in model.named_buffers()}
    try:
        with torch.no_grad():
            return model(images)
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(saved[name])


def check_module(model: nn.Module, data: Dataset, num_classes: int, dataset: str, device: torch.device,
                 what: str = "the model") -> None:
    """Try the module on the first images of ``data`` before any attack (see the module docstring); ``what`` names
    the model in the messages."""
    n = min(CHECK_BATCH, len(data))
    if n == 0:
        return  # the evaluation says the split is empty
    images = torch.stack([torch.as_tensor(data[i][0]) for i in range(n)]).float().to(device)
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        raise UserError(f"{dataset} gives pixels in [{low:.3g}, {high:.3g}], not [0, 1]: attacks and eps work on "
                        "[0, 1] pixels; give the model its normalisation (mean, std) instead of the data")
    check_modes(model, what)
    shape = f"({n}, {num_classes})"
    images.requires_grad_(True)
    try:
        with eval_mode(model), frozen(model), torch.enable_grad():
            output = model(images)
            if not isinstance(output, torch.Tensor):
                raise UserError(f"{what} returned a {type(output).__name__} on a batch of {n} {dataset} images; "
                                f"expected a tensor of logits of shape {shape}")
            if tuple(output.shape) != (n, num_classes):
                raise UserError(f"{what}: the output on a batch of {n} {dataset} images of shape "
                                f"{tuple(images.shape)} has shape {tuple(output.shape)}; expected logits of shape "
                                f"{shape}, one per class of {dataset}")
            if not output.is_floating_point() or not torch.isfinite(output).all():
                raise UserError(f"{what}: the output on {n} {dataset} images is not finite floating-point logits "
                                f"({output.dtype}); check the model on its own data")
            grad = None
            if output.requires_grad:
                (grad,) = torch.autograd.grad(output.sum(), images, allow_unused=True)
            with torch.no_grad():
                again = model(images.detach())
        own = _output_in_own_modes(model, images.detach()) if any(m.training for m in model.modules()) else None
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a module that cannot take these images: say why in one line
        raise UserError(f"{what} failed on a batch of {n} {dataset} images of shape {tuple(images.shape)}: "
                        f"{first_line(e)}") from None
    if grad is None:
        raise UserError(f"{what}: no gradient flows from the output back to the images ({dataset}): white-box "
                        "attacks need one; do not compute the forward pass under torch.no_grad or outside torch")
    if _is_probabilities(output):
        raise UserError(f"{what} returns probabilities (every row non-negative and summing to 1), not logits: the "
                        "attacks' losses take their own softmax and a softmax output flattens their gradients; "
                        "return the scores before the softmax")
    change = _relative_change(output.detach(), again)
    if change > RANDOM_TOLERANCE:
        raise UserError(f"{what} is random: two forward passes on the same {dataset} images differ (by {change:.2g} of "
                        "the largest output); attacks on a randomised model need expectation over transformation, "
                        "which lrrobust does not run: make the forward pass deterministic in eval mode")
    if own is not None:
        change = _relative_change(output.detach(), own)
        if change > RANDOM_TOLERANCE:
            raise UserError(f"{what}: some module is in train mode and the output depends on it (train mode differs "
                            f"from eval mode by {change:.2g} of the largest output); call model.eval() first")
