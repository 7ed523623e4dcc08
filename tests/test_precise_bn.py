"""Precise BN (``TrainConfig.precise_bn``): batch norm's running statistics recomputed on fixed training batches
before each validation. Regular training itself is unchanged, the saved statistics are those of the saved weights
(over the training attack's images in adversarial runs), runs resume exactly, and runs from before the option resume
with it off."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from test_train import _assert_same_weights, _metrics, _without_timing
from typer.testing import CliRunner

from lrrobust import load_checkpoint
from lrrobust.attacks.pgd import PGD
from lrrobust.checkpoint import read_checkpoint
from lrrobust.cli import app
from lrrobust.core.seeding import derive_seed
from lrrobust.data import dataset_info, load_dataset
from lrrobust.training import TrainConfig, resolve_config, train
from lrrobust.training.adversarial import adversarial_examples
from lrrobust.training.distributed import DistContext
from lrrobust.training.loop import build_model, precise_bn_loader, recompute_bn_statistics

TINY = {"model": "resnet18", "model_kwargs": {"width": 0.125}, "epochs": 2, "batch_size": 256, "device": "cpu"}
TINY_ADV = {**TINY, "adversarial": True, "steps": 1, "eps": 0.2}
ONE_EPOCH_ADV = {**TINY_ADV, "epochs": 1, "steps": 2}  # targeted PGD-2 from a random start: every seed is used
BATCHES = 3
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def runs(trained_run):
    """The tiny regular run without and with precise BN, and the tiny adversarial run with it (read-only)."""
    return {"off": trained_run(**TINY, precise_bn=0), "on": trained_run(**TINY, precise_bn=BATCHES),
            "adversarial": trained_run(**TINY_ADV, precise_bn=BATCHES)}


def test_the_images_are_fixed_and_the_pass_takes_nothing_from_training_streams():
    cfg = resolve_config(TrainConfig(**TINY, precise_bn=2))
    train_set = load_dataset("digits", "train")
    cpu = torch.device("cpu")
    loaders = [precise_bn_loader(cfg, DistContext(rank, 2, rank, cpu), train_set) for rank in (0, 1)]
    indices = loaders[0].dataset.indices
    assert indices == loaders[1].dataset.indices  # every rank recomputes on the same images
    assert len(loaders[0]) == 2 and loaders[0].batch_size == 128 and sorted(indices) != list(range(256))
    assert precise_bn_loader(resolve_config(TrainConfig(**TINY)), DistContext(0, 1, 0, cpu), train_set) is None
    model = build_model(cfg, dataset_info("digits"), 10).train()
    before = torch.get_rng_state()
    recompute_bn_statistics(model, loaders[0], cfg, cpu, epoch=0, num_classes=10)
    assert torch.equal(torch.get_rng_state(), before)  # training's stream is where it was
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(int(m.num_batches_tracked) == 2 and m.momentum == 0.1 for m in norms) and model.training
    assert not all(torch.equal(m.running_mean, torch.zeros_like(m.running_mean)) for m in norms)


def _chosen_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The run's fixed training batches (images, labels), drawn as precise_bn_loader draws them (seed 0)."""
    train_set = load_dataset("digits", "train")
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(derive_seed(0, 6)))
    chosen = order[:BATCHES * TINY["batch_size"]].tolist()
    return [(torch.stack([train_set[i][0] for i in chosen[b:b + TINY["batch_size"]]]),
             torch.tensor([train_set[i][1] for i in chosen[b:b + TINY["batch_size"]]]))
            for b in range(0, len(chosen), TINY["batch_size"])]


def _bn_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.endswith(BN_BUFFERS)}


def _statistics_of_the_weights(path) -> dict[str, torch.Tensor]:
    """The BN buffers update_bn computes from the checkpoint's weights over the run's chosen training images."""
    model = load_checkpoint(path)
    torch.optim.swa_utils.update_bn([images for images, _ in _chosen_batches()], model)
    return _bn_buffers(model)


def _adversarial_statistics_of_the_weights(path, epoch: int) -> dict[str, torch.Tensor]:
    """The BN buffers over the training attack's images of the chosen batches, in two steps: every batch attacked
    on the checkpoint's own running statistics first, then update_bn over the attacked batches. Seeds as the run's
    (random starts from (seed, epoch, 9), targets from (seed, epoch, 8)); the attack from the checkpoint."""
    model = load_checkpoint(path)
    attack = PGD.from_settings("training", read_checkpoint(path)["attack"])
    assert attack.targeted and attack.random_start and attack.steps == 2
    targets = torch.Generator().manual_seed(derive_seed(0, epoch, 8))
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(0, epoch, 9))
        attacked = [adversarial_examples(model, images, labels, attack, 10, targets)[0]
                    for images, labels in _chosen_batches()]
    torch.optim.swa_utils.update_bn(attacked, model)
    return _bn_buffers(model)


def test_regular_training_is_unchanged_and_the_saved_statistics_are_recomputed(runs):
    plain, precise = _metrics(runs["off"]), _metrics(runs["on"])
    assert [(m["loss"], m["train_acc"]) for m in precise] == [(m["loss"], m["train_acc"]) for m in plain]
    a, b = (read_checkpoint(runs[k] / "last.pt")["model_state"] for k in ("off", "on"))
    for key in a:
        if not key.endswith(BN_BUFFERS):
            assert torch.equal(a[key], b[key]), key  # the same weights: train mode normalises with batch statistics
    assert not all(torch.equal(a[k], b[k]) for k in a if k.endswith("running_mean"))
    for name in ("last.pt", "best.pt"):
        saved = read_checkpoint(runs["on"] / name)["model_state"]
        for key, value in _statistics_of_the_weights(runs["on"] / name).items():
            assert torch.equal(saved[key], value), (name, key)
        assert all(int(v) == BATCHES for k, v in saved.items() if k.endswith("num_batches_tracked"))
    assert json.loads((runs["on"] / "config.json").read_text())["precise_bn"] == BATCHES


def test_adversarial_runs_recompute_over_the_training_attacks_images(trained_run):
    """An adversarial run trains on the attack's images, so its statistics are averages over those, not clean ones.
    Epoch 1 trains the same with and without precise BN (it recomputes after the epoch's steps), so the run without
    it holds the weights and the running statistics the recomputation started from."""
    plain, precise = (trained_run(**ONE_EPOCH_ADV, precise_bn=n) for n in (0, BATCHES))
    a, b = (read_checkpoint(run / "last.pt")["model_state"] for run in (plain, precise))
    for key in a:
        if not key.endswith(BN_BUFFERS):
            assert torch.equal(a[key], b[key]), key
    assert not all(torch.equal(a[k], b[k]) for k in a if k.endswith("running_mean"))
    expected = _adversarial_statistics_of_the_weights(plain / "last.pt", epoch=0)
    for key, value in expected.items():
        assert torch.equal(b[key], value), key
    assert all(int(v) == BATCHES for k, v in b.items() if k.endswith("num_batches_tracked"))
    clean = _statistics_of_the_weights(plain / "last.pt")  # what recomputing over the clean images would give
    assert not any(torch.allclose(b[k], clean[k]) for k in b if k.endswith("running_mean"))


@pytest.mark.parametrize("kind", ["on", "adversarial"])
def test_a_resumed_run_ends_with_the_same_weights(runs, kind, tmp_path):
    """In adversarial runs the attack runs in eval mode, on the recomputed statistics: they steer training."""
    config = TINY if kind == "on" else TINY_ADV
    run = tmp_path / "run"
    train(TrainConfig(**{**config, "epochs": 1}, precise_bn=BATCHES, out=str(run)), progress=False)
    train(TrainConfig(**config, precise_bn=BATCHES, out=str(run), resume=True), progress=False)
    _assert_same_weights(run / "last.pt", runs[kind] / "last.pt")
    assert _without_timing(_metrics(run)) == _without_timing(_metrics(runs[kind]))


def test_a_run_from_before_precise_bn_resumes_with_it_off(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["off"], run)
    config = json.loads((run / "config.json").read_text())
    del config["precise_bn"]
    (run / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(app, ["train", "-o", str(run), "--resume", "--precise-bn", "2"])
    assert result.exit_code == 2 and "--precise-bn 2 differs" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(app, ["train", "-o", str(run), "--resume", "--precise-bn", "0", "--epochs", "3",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["precise_bn"] == 0
    assert [m["epoch"] for m in _metrics(run)] == [1, 2, 3]
