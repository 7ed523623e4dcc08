"""The dataset registry: one ``DatasetEntry`` per dataset, everything lrrobust knows of it in one place.

An entry holds the dataset's facts (``DatasetInfo``: classes, channels, size, mean, std, the model stem that fits
it), how reports name it and write its budgets, its loader (which also applies its split rule), how its
validation split is carved, what a local root must hold when it needs one, its training preset and its standard
suite in each norm; the standard eps follows (the preset's eps, or the radius of its L2 suite). Every other
place derives from the entries: the CLI's help texts, ``--preset``, the standard suite and eps of
``lrrobust.evaluate`` and ``eval-attack``, the report's names and units. An unknown name is a one-line UserError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from lrrobust.errors import UserError

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about its data."""

    name: str
    num_classes: int  # 0: read from the data (an ImageFolder tree)
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    stem: str  # the model stem that fits the image size: "small" (8x8, 32x32), "half" (28x28), "imagenet" (224x224)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A dataset's training defaults (paper appendix; Sec. 6.2 for the attack). ``lr`` is for ``base_batch`` images
    and scales linearly with the batch size."""

    name: str
    epochs: int
    batch_size: int
    lr: float
    base_batch: int
    weight_decay: float
    momentum: float
    warmup_epochs: float
    milestones: tuple[int, ...]
    num_workers: int
    model_kwargs: dict[str, Any]
    eps: float  # adversarial training's L-inf eps: the dataset's standard eps
    steps: int
    grad_clip: float = 0.0
    precise_bn: int = 0  # training batches batch norm's statistics are recomputed over before each validation
    random_start: bool = True
    targeted: bool = True


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """Everything lrrobust knows of one dataset.

    Args:
        info: its facts.
        title: how reports name it ("MNIST").
        load: ``load(split, root, download)``, the split ("train", "val" or "test") as (image in [0, 1], label)
            pairs; the three splits never overlap.
        validation: how its validation split is carved from the training data (a run's config.json records it):
            source, seed, size and, for per-class rules, per_class.
        preset: its training defaults.
        suites: its standard suite (a shipped suite's name) per norm, "linf" and "l2"; a norm without one takes
            the template suite at the standard eps (``lrrobust.evaluation.standard``).
        root: what a local root must hold, in words; None for data lrrobust carries (no root).
        check_root: ``check_root(root, download, option)``: a UserError unless the root holds the data, reading no
            image.
        count_classes: ``count_classes(root)``: the class count read from the data, when ``info`` says 0.
        pixel_units: budgets customarily written in 1/255 units (16/255) rather than as numbers (0.3).
    """

    info: DatasetInfo
    title: str
    load: Callable[[str, Path | None, bool], Dataset]
    validation: dict[str, Any]
    preset: Preset
    suites: dict[str, str]
    root: str | None = None
    check_root: Callable[[Path, bool, str], None] | None = None
    count_classes: Callable[[Path], int] | None = None
    pixel_units: bool = False

    @property
    def name(self) -> str:
        return self.info.name


_REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(entry: DatasetEntry) -> DatasetEntry:
    """Make ``entry`` known by its name."""
    if entry.name in _REGISTRY:
        raise ValueError(f"dataset {entry.name!r} registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def dataset_names() -> list[str]:
    """Every registered dataset, from the smallest images to the largest (a tree of any class count last)."""
    entries = sorted(_REGISTRY.values(), key=lambda e: (e.info.image_size, e.info.num_classes == 0, e.name))
    return [e.name for e in entries]


def dataset_entry(name: Any) -> DatasetEntry:
    """The entry of dataset ``name``; a UserError listing the known ones."""
    if name not in _REGISTRY:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(dataset_names())}")
    return _REGISTRY[name]


def check_dataset_name(name: Any) -> str:
    return dataset_entry(name).name


def presets() -> dict[str, Preset]:
    """Every dataset's preset by name, in ``dataset_names`` order (datasets may share one)."""
    return {entry.preset.name: entry.preset for entry in map(dataset_entry, dataset_names())}


def dataset_info(name: str, root: str | Path | None = None) -> DatasetInfo:
    """Facts about dataset ``name``; a class count read from the data (an ImageFolder tree) when ``root`` is given."""
    entry = dataset_entry(name)
    if entry.count_classes is not None and root is not None:
        return dataclasses.replace(entry.info, num_classes=entry.count_classes(Path(root)))
    return entry.info


def check_root(name: str, root: str | Path | None, download: bool = False, option: str = "--root") -> None:
    """Check, without reading any image, that dataset ``name`` can be found where ``load_dataset`` will look; a
    dataset lrrobust carries needs nothing. ``option`` names the root in messages."""
    entry = dataset_entry(name)
    if entry.root is None:
        return
    if root is None:
        raise UserError(f"dataset {name} needs {option} (a local copy of the data)")
    entry.check_root(Path(root), download, option)


def validation_split(name: str) -> dict[str, Any]:
    """How the validation split of dataset ``name`` is carved from its training data (for the run's config.json).

    ``size`` is None where the class count depends on the data; training fills in the real size.
    """
    return dict(dataset_entry(name).validation)


def load_dataset(name: str, split: str, root: str | Path | None = None, download: bool = False) -> Dataset:
    """The ``split`` ("train", "val" or "test") of dataset ``name`` as (image in [0, 1], label) pairs."""
    entry = dataset_entry(name)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if entry.root is not None and root is None:
        raise UserError(f"dataset {name} needs --root DIR (a local copy of the data)")
    return entry.load(split, None if root is None else Path(root), download)


def dataset_title(name: str) -> str:
    """How reports name a dataset ("MNIST"); a name lrrobust does not know (tensors given to
    ``lrrobust.evaluate``) as it is."""
    return _REGISTRY[name].title if name in _REGISTRY else name


def eps_text(eps: float, dataset: str, norm: str | None = "linf") -> str:
    """A budget in the dataset's own unit: '0.3' on MNIST and digits, '16/255' on CIFAR-10 and ImageNet, '0.5 (L2)'."""
    if norm == "l2":
        return f"{eps:.3g} (L2)"
    if dataset in _REGISTRY and _REGISTRY[dataset].pixel_units:
        return f"{eps * 255:.3g}/255"
    return f"{eps:.4g}"
