"""Datasets: the embedded digits split, CIFAR-10 and ImageFolder roots, errors that say what was expected where."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lrrobust.data import DATASETS, dataset_info, digits_split_indices, load_dataset
from lrrobust.errors import UserError


def test_digits_split_is_fixed_disjoint_and_complete():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    assert set(train.indices).isdisjoint(test.indices)
    assert sorted(np.concatenate([train.indices, test.indices]).tolist()) == list(range(1797))
    # numpy's legacy RandomState(0) stream is frozen: these indices are the same on every machine
    assert test.indices[:8].tolist() == [4, 5, 6, 9, 14, 17, 18, 19]
    assert np.array_equal(digits_split_indices(1797)["test"], test.indices)
    assert set(test.targets) == set(range(10)) and set(train.targets) == set(range(10))


def test_digits_items_are_unit_range_chw_with_int_labels():
    ds = load_dataset("digits", "test")
    image, label = ds[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label < 10
    assert float(ds.images.min()) == 0.0 and float(ds.images.max()) == 1.0
    # the pixels are sklearn's 0..16 counts scaled by 1/16
    assert torch.equal(ds.images * 16, (ds.images * 16).round())


def test_digits_info_matches_the_data():
    info = dataset_info("digits")
    train = load_dataset("digits", "train")
    assert (info.num_classes, info.in_chans, info.image_size, info.stem) == (10, 1, 8, "small")
    assert info.mean[0] == pytest.approx(float(train.images.mean()), abs=1e-3)
    assert info.std[0] == pytest.approx(float(train.images.std()), abs=1e-3)


@pytest.mark.parametrize("name", DATASETS)
def test_every_dataset_has_info(name):
    info = dataset_info(name)
    assert len(info.mean) == len(info.std) == info.in_chans


def test_unknown_dataset_and_split():
    with pytest.raises(UserError, match="unknown dataset 'mnist'.*digits"):
        load_dataset("mnist", "train")
    with pytest.raises(UserError, match="unknown split 'val'"):
        load_dataset("digits", "val")


def test_cifar10_missing_root_says_what_and_where(tmp_path):
    with pytest.raises(UserError, match="needs --root"):
        load_dataset("cifar10", "train")
    with pytest.raises(UserError) as err:
        load_dataset("cifar10", "train", root=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in message and "--download" in message and "\n" not in message


def test_cifar10_malformed_root(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"not a batch")
    with pytest.raises(UserError, match="unreadable") as err:
        load_dataset("cifar10", "test", root=tmp_path)
    assert "\n" not in str(err.value)


def test_image_folder_paper_augmentation(tmp_path, make_image_tree):
    root = make_image_tree(tmp_path)
    train, test = load_dataset("imagefolder", "train", root), load_dataset("imagenet", "test", root)
    assert len(train) == 4 and len(test) == 4
    for ds in (train, test):
        image, label = ds[0]
        assert image.shape == (3, 224, 224) and label in (0, 1)
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    # evaluation is deterministic (resize 256, centre crop 224); training is random (crop and flip)
    assert torch.equal(test[0][0], test[0][0])
    assert not all(torch.equal(train[0][0], train[0][0]) for _ in range(3))
    assert dataset_info("imagefolder", root).num_classes == 2


def test_image_folder_missing_or_empty_split(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path / "val")):
        (tmp_path / "train" / "a").mkdir(parents=True)
        load_dataset("imagefolder", "test", tmp_path)
    (tmp_path / "val").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        load_dataset("imagefolder", "test", tmp_path)
    with pytest.raises(UserError, match="malformed ImageFolder"):  # a class folder without images
        load_dataset("imagefolder", "train", tmp_path)


def _cifar_tree(root: Path, per_batch: int = 6) -> Path:
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), "labels": [i % 10 for i in
                                                                                           range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return root


def test_cifar10_from_a_local_root(tmp_path, monkeypatch):
    from torchvision.datasets import cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)  # fake batches: no official md5
    root = _cifar_tree(tmp_path)
    train, test = load_dataset("cifar10", "train", root), load_dataset("cifar10", "test", root)
    assert (len(train), len(test)) == (30, 6)
    image, label = test[1]
    assert image.shape == (3, 32, 32) and label == 1 and 0 <= float(image.min()) and float(image.max()) <= 1
    raw = torch.from_numpy(test.data[1]).permute(2, 0, 1).float() / 255  # the test split is not augmented
    assert torch.equal(image, raw)
    assert train[0][0].shape == (3, 32, 32)
