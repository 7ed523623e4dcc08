"""Training configuration (paper appendix; Sec. 6.2 for adversarial training).

A ``TrainConfig`` field left as ``None`` takes its value from the preset (by default the dataset's: each dataset's
entry in ``lrrobust.data`` holds its preset);
``resolve_config`` fills every field in and checks it, so the run directory's ``config.json`` is complete.
``validation`` is derived, never given: the validation split (``lrrobust.data.validation_split``) and the rule that
chooses best.pt on it (clean accuracy; for adversarial runs accuracy under a short untargeted PGD).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrrobust.attacks.pgd import PGD, default_step_size, madry_step_size
from lrrobust.core.seeding import MAX_SEED
from lrrobust.data import DATASETS, Preset, dataset_entry, presets, validation_split
from lrrobust.errors import UserError


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``batch_size`` is global (summed over processes)."""

    model: str = "lrnet26"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # overrides for create_model (width, stem, ...)
    dataset: str = "digits"
    root: str | None = None
    download: bool = False
    preset: str | None = None  # default: the dataset's preset
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None  # None: the preset's lr, scaled linearly with batch_size
    weight_decay: float | None = None
    momentum: float | None = None
    warmup_epochs: float | None = None
    milestones: list[int] | None = None
    grad_clip: float | None = None  # max gradient norm; 0 turns clipping off
    # training batches BN statistics are recomputed on before validating (attacked in adversarial runs); 0: off
    precise_bn: int | None = None
    seed: int | None = None
    out: str | None = None  # run directory; default runs/DATASET-MODEL-TRAINING
    resume: bool = False
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False
    num_workers: int | None = None
    device: str | None = None  # default: cuda when available, else cpu
    adversarial: bool = False
    eps: float | None = None
    step_size: float | None = None  # None: 1/255 raised to eps/steps (Feature Denoising)
    steps: int | None = None
    random_start: bool | None = None
    targeted: bool | None = None
    validation: dict[str, Any] | None = None  # derived by resolve_config: split (source, seed, size), metric, attack

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A stored config (a run's config.json): known keys only, ``model`` and ``dataset`` at least (every lrrobust
        wrote them), each value of its field's type. A UserError naming the first thing that is wrong."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"unknown training config keys {unknown}; valid keys: {', '.join(sorted(names))}")
        missing = [k for k in ("model", "dataset") if k not in data]
        if missing:
            raise UserError(f"no {' or '.join(missing)}: not a training config written by lrrobust")
        for f in dataclasses.fields(cls):
            if f.name in data and not _has_type(data[f.name], str(f.type)):
                raise UserError(f"{f.name} must be {_TYPE_WORDS[_kind(str(f.type))]}, got {data[f.name]!r}")
        return cls(**data)


_TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "text", "bool": "true or false",
               "dict": "an object", "list": "a list of integers"}


def _kind(annotation: str) -> str:
    """'float | None' -> 'float', 'dict[str, Any]' -> 'dict', 'list[int] | None' -> 'list'."""
    return annotation.split("|")[0].split("[")[0].strip()


def _has_type(value: Any, annotation: str) -> bool:
    """Whether a JSON value fits a TrainConfig field's annotation (None where the field allows it)."""
    if value is None:
        return "None" in annotation
    kind = _kind(annotation)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "list":
        return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return isinstance(value, {"str": str, "dict": dict}[kind])


PRESETS = presets()  # every dataset's training defaults by name (each dataset's module in lrrobust.data)

# The PGD that chooses best.pt of adversarial runs: untargeted, the run's eps, at most this many steps of 2.5 eps/steps.
VAL_PGD_STEPS = 10

# Fields that may change when a run is resumed (they do not change what is computed, or extend it).
RUNTIME_FIELDS = ("root", "download", "out", "resume", "epochs", "amp", "channels_last", "compile", "sync_bn",
                  "num_workers", "device")


def resolve_config(config: TrainConfig, world_size: int = 1) -> TrainConfig:
    """A complete copy of ``config``: preset defaults filled in, lr scaled, every value checked.

    Every number must be finite and in its range (a UserError naming the option otherwise), whether it comes from
    the command line or from a ``TrainConfig`` built in Python: ``nan`` or ``inf`` never reaches training.
    """
    entry = dataset_entry(config.dataset)
    preset_name = config.preset or entry.preset.name
    known = presets()
    if preset_name not in known:
        raise UserError(f"unknown preset {preset_name!r}; choose one of: {', '.join(known)}")
    p = known[preset_name]
    if not isinstance(config.model_kwargs, dict):
        raise UserError(f"model_kwargs must be a dict of create_model options, got {config.model_kwargs!r}")
    _check_given(config)
    c = dataclasses.replace(config, preset=preset_name, model_kwargs={**p.model_kwargs, **config.model_kwargs})
    pick = lambda value, default: default if value is None else value
    c.epochs = pick(c.epochs, p.epochs)
    c.batch_size = pick(c.batch_size, p.batch_size)
    c.lr = pick(c.lr, p.lr * c.batch_size / p.base_batch)
    c.weight_decay = pick(c.weight_decay, p.weight_decay)
    c.momentum = pick(c.momentum, p.momentum)
    c.warmup_epochs = pick(c.warmup_epochs, p.warmup_epochs)
    c.milestones = [int(m) for m in pick(c.milestones, p.milestones)]
    c.grad_clip = pick(c.grad_clip, p.grad_clip)
    c.precise_bn = pick(c.precise_bn, p.precise_bn)
    c.seed = pick(c.seed, 0)
    c.num_workers = pick(c.num_workers, p.num_workers)
    if c.adversarial:
        c.eps = pick(c.eps, p.eps)
        c.steps = pick(c.steps, p.steps)
        c.random_start = pick(c.random_start, p.random_start)
        c.targeted = pick(c.targeted, p.targeted)
        _check_attack(c)
        c.step_size = pick(c.step_size, default_step_size(c.eps, c.steps))
    else:
        c.eps = c.step_size = c.steps = c.random_start = c.targeted = None
    c.validation = _validation(c)
    c.out = str(pick(c.out, Path("runs") / f"{c.dataset}-{c.model}-{'adv' if c.adversarial else 'regular'}"))
    _check_numbers(c, world_size)
    return c


def _validation(c: TrainConfig) -> dict[str, Any]:
    """The validation split and how best.pt is chosen on it (training fills in the split's real size)."""
    if not c.adversarial:
        return {**validation_split(c.dataset), "metric": "val_acc", "attack": None}
    steps = min(VAL_PGD_STEPS, c.steps)
    attack = PGD(name="validation", eps=c.eps, role="training", step_size=madry_step_size(c.eps, steps), steps=steps,
                 random_start=True).settings()
    return {**validation_split(c.dataset), "metric": "val_robust_acc", "attack": attack}


# The numeric fields, by type: each is checked for its type before any arithmetic on it, then for its range.
_INTEGERS = ("epochs", "batch_size", "seed", "num_workers", "steps", "precise_bn")
_REALS = ("lr", "weight_decay", "momentum", "warmup_epochs", "grad_clip", "eps", "step_size")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_given(c: TrainConfig) -> None:
    """The types of the numbers given (before the preset fills in the rest): integers, real numbers, a list of
    epochs. Ranges are checked on the resolved config (``_check_numbers``)."""
    for name in _INTEGERS:
        value = getattr(c, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise UserError(f"{_flag(name)} must be an integer, got {value!r}")
    for name in _REALS:
        value = getattr(c, name)
        if value is not None and not _is_real(value):
            raise UserError(f"{_flag(name)} must be a number, got {value!r}")
    if c.milestones is not None:
        items = c.milestones
        if isinstance(items, (str, bytes)) or not isinstance(items, (list, tuple)) or not all(
                _is_real(m) and math.isfinite(m) and int(m) == m for m in items):
            raise UserError(f"--milestones must be a list of whole epochs like 30,60,90, got {items!r}")
    for key, option in (("width", "--width"), ("alpha", "--model-opt alpha")):
        value = c.model_kwargs.get(key)
        if value is not None and not (_is_real(value) and math.isfinite(value) and value > 0):
            raise UserError(f"{option} must be a positive number, got {value!r}")


def _check_attack(c: TrainConfig) -> None:
    if not (math.isfinite(c.eps) and 0 < c.eps <= 1):
        raise UserError(f"--eps must lie in (0, 1] (pixels are in [0, 1]), got {c.eps:g}")
    if c.steps < 1:
        raise UserError(f"--steps must be at least 1, got {c.steps}")
    if c.step_size is not None and not (math.isfinite(c.step_size) and 0 < c.step_size <= 1):
        raise UserError(f"--step-size must lie in (0, 1], got {c.step_size:g}")


def _check_numbers(c: TrainConfig, world_size: int) -> None:
    if c.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {c.epochs}")
    if c.batch_size < 1 or c.batch_size % world_size:
        raise UserError(f"--batch-size must be a positive multiple of the {world_size} processes, got {c.batch_size}")
    if not (math.isfinite(c.lr) and c.lr > 0):
        raise UserError(f"--lr must be a positive finite number, got {c.lr:g}")
    if not (math.isfinite(c.weight_decay) and c.weight_decay >= 0):
        raise UserError(f"--weight-decay must be a finite number >= 0, got {c.weight_decay:g}")
    if not (math.isfinite(c.momentum) and 0 <= c.momentum < 1):
        raise UserError(f"--momentum must lie in [0, 1), got {c.momentum:g}")
    if not (math.isfinite(c.warmup_epochs) and c.warmup_epochs >= 0):
        raise UserError(f"--warmup-epochs must be a finite number of epochs >= 0 (0: no warm-up), got "
                        f"{c.warmup_epochs:g}")
    milestones = ",".join(str(m) for m in c.milestones)
    if any(m < 1 for m in c.milestones):
        raise UserError(f"--milestones must be epochs >= 1, got {milestones}")
    if any(b <= a for a, b in zip(c.milestones, c.milestones[1:])):
        raise UserError(f"--milestones must be increasing, like 30,60,90; got {milestones}")
    if not (math.isfinite(c.grad_clip) and c.grad_clip >= 0):
        raise UserError(f"--grad-clip must be >= 0 and finite (0 turns it off), got {c.grad_clip:g}")
    if c.precise_bn < 0:
        raise UserError(f"--precise-bn must be a number of batches >= 0 (0 turns it off), got {c.precise_bn}")
    if not 0 <= c.seed <= MAX_SEED:
        raise UserError(f"--seed must lie in [0, 2**63), got {c.seed}")
    if c.num_workers < 0:
        raise UserError(f"--num-workers must be >= 0, got {c.num_workers}")


def merge_for_resume(old: TrainConfig, given: TrainConfig) -> TrainConfig:
    """The stored run's config with the runtime fields the user set now; a changed recipe is a UserError."""
    if given.adversarial != old.adversarial:
        kind, command = ("an adversarial", "train-adv") if old.adversarial else ("a regular", "train")
        raise UserError(f"{given.out or old.out} holds {kind} run; resume it with `lrrobust {command} --resume`")
    changes = {}
    for f in dataclasses.fields(TrainConfig):
        value, before = getattr(given, f.name), getattr(old, f.name)
        if f.name in RUNTIME_FIELDS:
            if value is not None and value != f.default:
                changes[f.name] = value
        elif value in (None, {}, f.default) or value == before:  # not given (or the default): keep the stored value
            continue
        elif not (f.name == "model_kwargs" and _within(value, before)):
            flag = "--" + f.name.replace("_", "-")
            raise UserError(f"{flag} {value} differs from the run being resumed ({before}); "
                            f"drop it to resume, or start a new run with another --out")
    return dataclasses.replace(old, resume=True, **{k: v for k, v in changes.items() if k != "resume"})


def _within(new: dict, old: dict) -> bool:
    return all(old.get(k) == v for k, v in new.items())


__all__ = ["DATASETS", "PRESETS", "VAL_PGD_STEPS", "Preset", "TrainConfig", "merge_for_resume", "resolve_config"]
