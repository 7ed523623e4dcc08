"""``imagenet`` and ``imagefolder``: an ImageFolder tree ``root/train`` and ``root/val`` (ImageNet's 1000 classes,
or any tree), with the paper's augmentation (appendix: random-resized crop 224 and flips in training; resize 256
and centre crop 224 in evaluation).

Validation: a fixed seeded 10 images per class of ``root/train`` (10,000 for ImageNet), at most half of a class;
train: the rest of ``root/train``; test: ``root/val``.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from lrrobust.data.registry import DatasetEntry, DatasetInfo, Preset, register_dataset
from lrrobust.data.splits import VALIDATION_SEED, SplitSubset, carve_per_class
from lrrobust.errors import UserError

VAL_PER_CLASS = 10
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

PRESET = Preset(
    "imagenet", epochs=110, batch_size=1024, lr=0.4, base_batch=1024, weight_decay=1e-4, momentum=0.9,
    warmup_epochs=5, milestones=(30, 60, 90), num_workers=8, model_kwargs={}, eps=16 / 255, steps=16,
)
"""The paper's recipe (appendix): SGD momentum 0.9, weight decay 1e-4, lr 0.4 per 1024 images, linear warm-up over
5 epochs, x0.1 at 30/60/90, 110 epochs; adversarial training with targeted PGD-16 at eps 16/255 (Sec. 6.2)."""


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


def check_root(root: Path, download: bool, option: str) -> None:
    for split in ("train", "test"):
        _class_dirs(_split_dir(root, split))


def count_classes(root: Path) -> int:
    """The class folders of ``root/train``."""
    return len(_class_dirs(_split_dir(root, "train")))


def load(split: str, root: Path | None, download: bool) -> Dataset:
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
    train, val = carve_per_class(data.targets, VAL_PER_CLASS)
    if not val:
        raise UserError(f"every class of {folder} has fewer than 2 images: too few to carve a validation split")
    return SplitSubset(data, train if split == "train" else val)


def _entry(info: DatasetInfo, title: str, suites: dict[str, str]) -> DatasetEntry:
    size = VAL_PER_CLASS * info.num_classes or None  # a tree's class count is known once it is read
    return DatasetEntry(
        info=info, title=title, load=load,
        validation={"source": "root/train", "seed": VALIDATION_SEED, "size": size, "per_class": VAL_PER_CLASS},
        preset=PRESET, suites=suites, root="holds train/ and val/", check_root=check_root,
        count_classes=None if info.num_classes else count_classes, pixel_units=True,
    )


register_dataset(_entry(DatasetInfo("imagenet", 1000, 3, 224, MEAN, STD, "imagenet"), "ImageNet", {"linf": "table9"}))
register_dataset(_entry(DatasetInfo("imagefolder", 0, 3, 224, MEAN, STD, "imagenet"), "ImageFolder",
                        {"linf": "table9"}))
