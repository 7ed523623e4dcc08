"""The split rules datasets share: an in-memory split, and a validation split carved from training data.

Three splits, never overlapping: ``train`` for training, ``val`` for choosing the checkpoint (best.pt), ``test``
for evaluation only. Validation is carved with numpy's frozen legacy ``RandomState`` streams, the same on every
machine.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from lrrobust.errors import UserError

VALIDATION_SEED = 1  # the validation split's seed, every dataset


class EmbeddedDataset(Dataset):
    """A split of a small dataset held in memory: images (N, 1, H, W) in [0, 1], labels 0..num_classes - 1, the
    source indices."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, num_classes: int) -> None:
        self.indices = indices
        self.images = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.classes = [str(c) for c in range(num_classes)]
        self.targets = self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


class SplitSubset(Subset):
    """A ``Subset`` that keeps its dataset's ``classes`` and lists its own ``targets``."""

    def __init__(self, dataset: Dataset, indices: list[int]) -> None:
        super().__init__(dataset, indices)
        self.classes = dataset.classes
        self.targets = [dataset.targets[i] for i in indices]


def carve(dataset: Dataset, size: int) -> tuple[list[int], list[int]]:
    """(train, val) indices: ``size`` seeded indices for validation, the rest for training."""
    if len(dataset) <= size:
        raise UserError(f"the training set has {len(dataset)} images, too few to carve a validation split of {size}")
    order = np.random.RandomState(VALIDATION_SEED).permutation(len(dataset))
    return sorted(order[size:].tolist()), sorted(order[:size].tolist())


def carve_per_class(targets: list[int], per_class: int) -> tuple[list[int], list[int]]:
    """(train, val) indices: ``per_class`` seeded images of each class for validation (at most half of a class)."""
    rng = np.random.RandomState(VALIDATION_SEED)
    labels = np.asarray(targets)
    val: list[int] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        val += members[rng.permutation(len(members))[: min(per_class, len(members) // 2)]].tolist()
    chosen = set(val)
    return [i for i in range(len(labels)) if i not in chosen], sorted(val)
