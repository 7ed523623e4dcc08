"""``cifar10``: torchvision's CIFAR-10 (32x32, 3 channels, 10 classes) from a local root; downloaded only when
asked (``download=True``, ``--download``).

Validation: a fixed seeded 5,000 of the 50,000 training images (not augmented); train: the other 45,000 (random
crop with padding 4 and flips); test: the 10,000 test images (not augmented).
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from lrrobust.data.registry import DatasetEntry, DatasetInfo, Preset, register_dataset
from lrrobust.data.splits import VALIDATION_SEED, SplitSubset, carve
from lrrobust.errors import UserError

VAL_SIZE = 5000
FOLDER = "cifar-10-batches-py"  # the python version of CIFAR-10, as torchvision unpacks it

PRESET = Preset(
    "cifar10", epochs=60, batch_size=128, lr=0.1, base_batch=128, weight_decay=5e-4, momentum=0.9,
    warmup_epochs=2, milestones=(30, 45), num_workers=4, model_kwargs={"stem": "small"}, eps=8 / 255, steps=10,
)
"""The ImageNet recipe scaled to CIFAR-10's 50k 32x32 images: 60 epochs, lr 0.1 per 128, x0.1 at 30/45, weight decay
5e-4 (the usual CIFAR value). Attack: targeted PGD-10 at eps 8/255, the customary CIFAR-10 budget (Madry et al.)."""


def check_root(root: Path, download: bool, option: str) -> None:
    if not download and not (root / FOLDER).is_dir():
        raise UserError(f"CIFAR-10 not found: expected {root / FOLDER} (the python version of CIFAR-10) under "
                        f"{option}")


def load(split: str, root: Path | None, download: bool) -> Dataset:
    from torchvision import datasets, transforms

    if not download and not (root / FOLDER).is_dir():
        raise UserError(
            f"CIFAR-10 not found: expected {root / FOLDER} (the python version of CIFAR-10); "
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
    train, val = carve(data, VAL_SIZE)
    return SplitSubset(data, train if split == "train" else val)


register_dataset(DatasetEntry(
    info=DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "small"),
    title="CIFAR-10",
    load=load,
    validation={"source": "CIFAR-10 training images", "seed": VALIDATION_SEED, "size": VAL_SIZE},
    preset=PRESET,
    suites={"l2": "cifar10-l2"},
    root=f"holds {FOLDER}",
    check_root=check_root,
    pixel_units=True,
))
