"""``digits``: scikit-learn's handwritten digits (8x8, 1 channel, 10 classes), embedded, never downloaded.

A fixed split from numpy's frozen legacy ``RandomState`` streams, the same on every machine: 360 test images
(seed 0), then 180 validation images drawn from the other 1437 (seed 1), and 1257 train.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from lrrobust.data.registry import DatasetEntry, DatasetInfo, Preset, register_dataset
from lrrobust.data.splits import VALIDATION_SEED, EmbeddedDataset

TEST_SIZE = 360
SPLIT_SEED = 0  # the test split's seed (unchanged since the first release)
VAL_SIZE = 180

PRESET = Preset(
    "digits", epochs=12, batch_size=64, lr=0.1, base_batch=64, weight_decay=5e-4, momentum=0.9,
    warmup_epochs=1, milestones=(8, 11), num_workers=0, model_kwargs={"stem": "small", "width": 0.25},
    eps=0.2, steps=16, grad_clip=1.0,
)
"""The embedded 8x8 digits: a small network (small stem, width 0.25), 12 epochs of 19 steps (1,257 training images),
reaching high accuracy in well under a minute on a laptop CPU. Attack eps 0.2 (51/255): a digits pixel is quantised
in steps of 1/16 and carries far more signal than an ImageNet pixel, so 16/255 barely moves a regular model; at 0.2
regular training is broken by PGD while adversarial training keeps most of its accuracy, which is what Table 9 shows
(MNIST's usual budget is 0.3; 0.2 leaves 8x8 images recognisable to a person). Gradients are clipped to norm 1:
without it SGD at this lr makes small LR-Nets diverge on 8x8 inputs (ResNets train either way)."""


class DigitsDataset(EmbeddedDataset):
    """scikit-learn's 8x8 digits, pixels 0..16 scaled to [0, 1], shape (1, 8, 8); a fixed seeded split."""

    def __init__(self, split: str) -> None:
        from sklearn.datasets import load_digits

        data = load_digits()
        indices = digits_split_indices(len(data.target))[split]
        super().__init__(data.images[indices] / 16.0, data.target[indices], indices, 10)


def digits_split_indices(n: int) -> dict[str, np.ndarray]:
    """Sorted indices of the digits train, val and test splits: frozen-stream permutations, the same everywhere.

    The test split is the first release's (seed 0); validation is a seed-1 draw from the rest.
    """
    order = np.random.RandomState(SPLIT_SEED).permutation(n)
    rest = np.sort(order[TEST_SIZE:])
    val = rest[np.random.RandomState(VALIDATION_SEED).permutation(len(rest))[:VAL_SIZE]]
    return {"train": np.setdiff1d(rest, val), "val": np.sort(val), "test": np.sort(order[:TEST_SIZE])}


def load(split: str, root: Path | None, download: bool) -> Dataset:
    return DigitsDataset(split)


register_dataset(DatasetEntry(
    # mean/std: of the 1437 images outside the test split, pixels scaled to [0, 1]; the 1257-image training split's
    # differ by less than 3e-4 (checked by tests/test_data.py).
    info=DatasetInfo("digits", 10, 1, 8, (0.3056,), (0.3763,), "small"),
    title="digits",
    load=load,
    validation={"source": "digits minus the test split", "seed": VALIDATION_SEED, "size": VAL_SIZE},
    preset=PRESET,
    suites={"linf": "digits", "l2": "digits-l2"},
))
