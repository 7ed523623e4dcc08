"""Datasets for training and evaluation: images in [0, 1] (CHW float), integer labels.

- ``digits``: scikit-learn's handwritten digits (8x8, 1 channel, 10 classes), embedded, never downloaded; a fixed
  split (numpy's frozen legacy ``RandomState(0)`` permutation: 360 test, 1437 train), the same on every machine.
- ``cifar10``: torchvision's CIFAR-10 from a local root; downloads only with ``download=True``.
- ``imagenet`` / ``imagefolder``: an ImageFolder tree ``root/train`` and ``root/val`` with the paper's augmentation
  (appendix: random-resized crop 224 and flips in training; resize 256 and centre crop 224 in evaluation).

Normalisation is not done here: models hold their dataset's mean and std and normalise inside, so attacks work
in pixel units (``../shared/PROTOCOL.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lrrobust.errors import UserError

SPLITS = ("train", "test")
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about its data."""

    name: str
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    stem: str  # the model stem that fits the image size: "small" (8x8, 32x32) or "imagenet" (224x224)


_INFOS = {
    # digits mean/std: of the training split, pixels scaled to [0, 1] (checked by tests/test_data.py).
    "digits": DatasetInfo("digits", 10, 1, 8, (0.3056,), (0.3763,), "small"),
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


def load_dataset(name: str, split: str, root: str | Path | None = None, download: bool = False) -> Dataset:
    """The ``split`` ("train" or "test") of dataset ``name`` as (image in [0, 1], label) pairs."""
    check_dataset_name(name)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if name == "digits":
        return DigitsDataset(split)
    if root is None:
        raise UserError(f"dataset {name} needs --root DIR (a local copy of the data)")
    if name == "cifar10":
        return _cifar10(Path(root), split, download)
    return _image_folder(Path(root), split)


class DigitsDataset(Dataset):
    """scikit-learn's 8x8 digits, pixels 0..16 scaled to [0, 1], shape (1, 8, 8); a fixed seeded split."""

    def __init__(self, split: str) -> None:
        from sklearn.datasets import load_digits

        data = load_digits()
        indices = digits_split_indices(len(data.target))[split]
        self.indices = indices
        self.images = torch.from_numpy(data.images[indices].astype(np.float32) / 16.0).unsqueeze(1)
        self.labels = torch.from_numpy(data.target[indices].astype(np.int64))
        self.classes = [str(c) for c in range(10)]
        self.targets = self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def digits_split_indices(n: int) -> dict[str, np.ndarray]:
    """Indices of the digits test and train splits: a frozen-stream permutation, identical on every machine."""
    order = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(n)
    return {"test": np.sort(order[:DIGITS_TEST_SIZE]), "train": np.sort(order[DIGITS_TEST_SIZE:])}


def _cifar10(root: Path, split: str, download: bool) -> Dataset:
    from torchvision import datasets, transforms

    if not download and not (root / "cifar-10-batches-py").is_dir():
        raise UserError(
            f"CIFAR-10 not found: expected {root / 'cifar-10-batches-py'} (the python version of CIFAR-10); "
            "pass --download to fetch it into --root"
        )
    if split == "train":
        transform = transforms.Compose(
            [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
        )
    else:
        transform = transforms.ToTensor()
    try:
        return datasets.CIFAR10(str(root), train=split == "train", transform=transform, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise UserError(f"CIFAR-10 under {root} is unreadable ({e}); remove it and pass --download") from None


def _split_dir(root: Path, split: str) -> Path:
    folder = root / ("train" if split == "train" else "val")
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
        return datasets.ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, RuntimeError) as e:
        raise UserError(f"malformed ImageFolder tree {folder}: {e}") from None
