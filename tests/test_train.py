"""Training on the digits data: it learns, adversarial training resists PGD, best.pt is chosen on the validation split
(never the test split), runs resume exactly, the run files read back typed, bad input is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from lrrobust import load_checkpoint
from lrrobust.attacks.pgd import PGD, default_step_size
from lrrobust.checkpoint import read_checkpoint
from lrrobust.cli import app
from lrrobust.data import load_dataset
from lrrobust.errors import UserError
from lrrobust.models import create_model
from lrrobust.training import PRESETS, TrainConfig, resolve_config, train
from lrrobust.training import loop as loop_module
from lrrobust.training.adversarial import adversarial_examples, perturb
from lrrobust.training.loop import lr_factor, train_step
from lrrobust.training.run_files import EpochRecord, is_run_dir, read_manifest, read_metrics, read_run_config

# A tiny adversarial run (PGD-2) for the resume tests: every RNG stream (init, order, targets, random starts) is used.
RESUME_ARGS = ["train-adv", "-m", "resnet18", "--width", "0.125", "--epochs", "3", "--steps", "2", "--eps", "0.2",
               "--milestones", "2"]
RESUME_CONFIG = {"model": "resnet18", "model_kwargs": {"width": 0.125}, "epochs": 3, "steps": 2, "eps": 0.2,
                 "adversarial": True, "milestones": [2]}
TIMING_KEYS = ("seconds", "images_per_s")


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = read_checkpoint(a), read_checkpoint(b)
    assert sa["epoch"] == sb["epoch"]
    for key, value in sa["model_state"].items():
        assert torch.equal(value, sb["model_state"][key]), key
    for key, value in sa["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], sb["optimizer"]["state"][key]["momentum_buffer"])


def _without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def test_regular_run_learns_and_writes_its_run_directory(digits_runs):
    run = digits_runs["regular"]
    metrics = _metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5]
    assert metrics[-1]["loss"] < 0.5 * metrics[0]["loss"]
    assert metrics[-1]["val_acc"] > 0.8 and metrics[-1]["train_acc"] > 0.8  # chance is 0.1
    assert all(m["images_per_s"] > 0 and m["lr"] > 0 and m["images"] == 1216 for m in metrics)  # 19 batches of 64
    assert all("adv_train_acc" not in m and "val_robust_acc" not in m and "test_acc" not in m for m in metrics)
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == "digits" and config["lr"] == 0.1 and config["model_kwargs"]["stem"] == "small"
    assert config["validation"] == {"source": "digits minus the test split", "seed": 1, "size": 180,
                                    "metric": "val_acc", "attack": None}
    manifest = json.loads((run / "manifest.json").read_text())
    for key in ("lrrobust_version", "git_commit", "torch_version", "device", "seed", "command_line", "world_size"):
        assert key in manifest
    last, best = read_checkpoint(run / "last.pt"), read_checkpoint(run / "best.pt")
    assert last["epoch"] == 5 and last["training"] == "regular" and last["attack"] is None
    assert best["epoch"] == best["best_epoch"] == 1 + max(range(5), key=lambda i: metrics[i]["val_acc"])
    assert best["best_metric"] == last["best_metric"] == "val_acc"
    assert last["best_acc"] == max(m["val_acc"] for m in metrics) and last["best_epoch"] == best["epoch"]
    assert last["num_classes"] == 10 and last["dataset"] == "digits" and last["config"] == config


def test_adversarial_best_checkpoint_has_the_highest_robust_validation_accuracy(digits_runs):
    run = digits_runs["adversarial"]
    metrics = _metrics(run)
    assert all(0 <= m["val_robust_acc"] <= m["val_acc"] + 0.05 for m in metrics)
    assert any(m["val_robust_acc"] < m["val_acc"] for m in metrics)  # the attack did something
    last, best = read_checkpoint(run / "last.pt"), read_checkpoint(run / "best.pt")
    assert best["epoch"] == 1 + max(range(5), key=lambda i: metrics[i]["val_robust_acc"])
    assert last["best_metric"] == "val_robust_acc" and last["best_acc"] == max(m["val_robust_acc"] for m in metrics)
    # untargeted PGD at the training eps, the training's 4 steps (fewer than 10), step 2.5 eps / steps, random start
    attack = PGD.from_settings("validation", read_run_config(run).validation["attack"])
    assert attack == PGD(name="validation", eps=0.2, role="training", step_size=0.125, steps=4, random_start=True)


# Scripted validation results (clean, robust) per epoch: the clean and the robust best are different epochs.
SCRIPTED_VALIDATION = [(0.5, 0.1), (0.9, 0.2), (0.7, 0.4)]


@pytest.mark.parametrize("adversarial, best_epoch", [(False, 2), (True, 3)])
def test_best_checkpoint_follows_the_selection_metric(adversarial, best_epoch, tmp_path, monkeypatch):
    def scripted(model, loader, ctx, cfg, attack, epoch):
        clean, robust = SCRIPTED_VALIDATION[epoch]
        return clean, robust if attack is not None else None

    monkeypatch.setattr(loop_module, "evaluate_validation", scripted)
    config = TrainConfig(model="resnet18", model_kwargs={"width": 0.25}, epochs=3, batch_size=256,
                         adversarial=adversarial, steps=1, out=str(tmp_path / "run"))
    run = train(config, progress=False)
    records = read_metrics(run)
    assert [(r.val_acc, r.val_robust_acc) for r in records] == [
        (clean, robust if adversarial else None) for clean, robust in SCRIPTED_VALIDATION]
    best = read_checkpoint(run / "best.pt")
    assert best["epoch"] == best["best_epoch"] == best_epoch
    assert best["best_metric"] == ("val_robust_acc" if adversarial else "val_acc")
    assert best["best_acc"] == (0.4 if adversarial else 0.9)


def test_training_never_loads_the_test_split(tmp_path, monkeypatch):
    real_load = loop_module.load_dataset
    loaded = []

    def guarded(name, split, *args, **kwargs):
        if split == "test":
            raise AssertionError("training loaded the test split")
        loaded.append(split)
        return real_load(name, split, *args, **kwargs)

    monkeypatch.setattr(loop_module, "load_dataset", guarded)
    config = TrainConfig(model="resnet18", model_kwargs={"width": 0.25}, epochs=1, batch_size=256, adversarial=True,
                         steps=1, out=str(tmp_path / "run"))
    run = train(config, progress=False)
    assert sorted(set(loaded)) == ["train", "val"]
    assert read_metrics(run)[0].val_robust_acc is not None


def test_adversarial_training_raises_pgd_accuracy(digits_runs):
    test = load_dataset("digits", "test")  # evaluation's split: the runs never saw it
    accuracy = {}
    for kind, run in digits_runs.items():
        model = load_checkpoint(run / "last.pt")
        torch.manual_seed(0)
        adv = perturb(model, test.images, test.labels, PGD(name="eval", eps=0.2, step_size=0.02, steps=10))
        with torch.no_grad():
            accuracy[kind] = float((model(adv).argmax(1) == test.labels).float().mean())
    assert accuracy["adversarial"] > accuracy["regular"] + 0.2, accuracy
    state = read_checkpoint(digits_runs["adversarial"] / "last.pt")
    assert state["training"] == "adversarial"
    assert PGD.from_settings("training", state["attack"]) == PGD(
        name="training", eps=0.2, targeted=True, role="training", step_size=default_step_size(0.2, 4), steps=4)
    assert state["attack"]["kind"] == "pgd"
    assert all(0 <= m["adv_train_acc"] <= 1 for m in _metrics(digits_runs["adversarial"]))


class ModeRecorder(nn.Module):
    """Records, for every forward: train mode, gradients on, parameters trainable."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[bool, bool, bool]] = []

    def forward(self, x):
        trainable = all(p.requires_grad for p in self.parameters())
        self.calls.append((self.training, torch.is_grad_enabled(), trainable))
        return self.inner(x)


def test_attack_runs_in_eval_mode_and_the_update_in_train_mode():
    torch.manual_seed(0)
    model = ModeRecorder(create_model("resnet18", 10, in_chans=1, mean=[0.3], std=[0.4], stem="small", width=0.125))
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    tracked = int(bn.num_batches_tracked)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    images, labels = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    attack = PGD(name="t", eps=0.2, targeted=True, step_size=0.05, steps=3)
    out = train_step(model, model, optimizer, images, labels, attack=attack, num_classes=10,
                     generator=torch.Generator().manual_seed(0))
    # clean accuracy pass (eval, no grad), 3 attack passes (eval, input gradients only), one update (train)
    attack_pass = (False, True, False)
    assert model.calls == [(False, False, True), attack_pass, attack_pass, attack_pass, (True, True, True)]
    assert all(p.requires_grad for p in model.parameters())
    assert int(bn.num_batches_tracked) == tracked + 1  # only the update moved the BatchNorm statistics
    assert model.training and set(out) == {"loss", "clean_correct", "adv_correct"}


def test_training_targets_are_seeded_and_never_the_label():
    model = create_model("resnet18", 10, in_chans=1, mean=[0.3], std=[0.4], stem="small", width=0.125).eval()
    images, labels = torch.rand(64, 1, 8, 8), torch.arange(64) % 10
    attack = PGD(name="t", eps=0.1, targeted=True, step_size=0.05, steps=2)
    results = []
    for _ in range(2):
        torch.manual_seed(1)
        results.append(adversarial_examples(model, images, labels, attack, 10, torch.Generator().manual_seed(3)))
    (adv, targets), (adv2, targets2) = results
    assert torch.equal(targets, targets2) and torch.equal(adv, adv2)
    assert not (targets == labels).any() and len(set(targets.tolist())) > 2
    assert (adv - images).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    untargeted, none = adversarial_examples(model, images, labels, PGD(name="u", eps=0.1, step_size=0.05, steps=2), 10)
    assert none is None and untargeted.shape == images.shape


@pytest.fixture(scope="module")
def reference_run(trained_run):
    """The tiny adversarial run, uninterrupted."""
    return trained_run(**RESUME_CONFIG)


def test_resumed_run_ends_with_the_same_weights(reference_run, tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**{**RESUME_CONFIG, "epochs": 1}, out=str(run)), progress=False)
    assert read_checkpoint(run / "last.pt")["epoch"] == 1
    train(TrainConfig(**RESUME_CONFIG, out=str(run), resume=True), progress=False)
    _assert_same_weights(run / "last.pt", reference_run / "last.pt")
    assert _without_timing(_metrics(run)) == _without_timing(_metrics(reference_run))
    assert [m["lr"] for m in _metrics(run)] == pytest.approx([0.1, 0.1, 0.01])  # warm-up done, x0.1 at epoch 2
    assert len(json.loads((run / "manifest.json").read_text())["resumes"]) == 1


def test_sigkill_mid_run_then_resume(reference_run, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lrrobust.cli", *RESUME_ARGS, "-o", str(run)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text().strip():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed_at = read_checkpoint(run / "last.pt")["epoch"]
    assert 1 <= killed_at < 3  # killed mid-run, with a complete checkpoint
    result = CliRunner().invoke(app, [*RESUME_ARGS, "-o", str(run), "--resume"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1] == f"run directory: {run}" and "\x1b" not in result.output  # no progress bars off a terminal
    assert [line.split(":")[0] for line in lines[:-1]] == [f"epoch {e}/3" for e in range(killed_at + 1, 4)]  # a log
    _assert_same_weights(run / "last.pt", reference_run / "last.pt")
    assert [m["epoch"] for m in _metrics(run)] == [1, 2, 3]
    assert not list(run.glob(".*.tmp"))


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_step = loop_module.train_step
    calls = {"n": 0}

    def poisoned_step(model, attack_model, optimizer, images, labels, **kwargs):
        calls["n"] += 1
        if calls["n"] > 19:  # the digits preset makes 19 steps per epoch: poison the second epoch
            images = images * float("nan")
        return real_step(model, attack_model, optimizer, images, labels, **kwargs)

    monkeypatch.setattr(loop_module, "train_step", poisoned_step)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "-m", "resnet18", "--width", "0.125", "--epochs", "3", "--no-progress",
                                      "-o", str(run)])  # without epoch 1's log line: the error alone
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and "nan" in result.output
    assert "keeps epoch 1" in result.output
    state = read_checkpoint(run / "last.pt")
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model_state"].values())
    assert len(_metrics(run)) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "-m", "lrnet27"], "unknown model 'lrnet27'"),
        (["train", "-d", "no-such-dataset"], "unknown dataset 'no-such-dataset'"),
        (["train-adv", "--eps", "0"], "--eps must lie in (0, 1]"),
        (["train-adv", "--eps", "300/255"], "--eps must lie in (0, 1]"),
        (["train-adv", "--eps", "sixteen"], "--eps must be a number or a fraction"),
        (["train-adv", "--steps", "0"], "--steps must be at least 1"),
        (["train", "--epochs", "0"], "--epochs must be at least 1"),
        (["train", "--grad-clip", "-1"], "--grad-clip must be >= 0"),
        (["train", "--model-opt", "geo_prior"], "--model-opt takes KEY=VALUE"),
        (["train", "--model-opt", "geo_prior=cubic"], "geo_prior"),
        (["train", "-d", "cifar10"], "needs --root"),
        (["train", "--device", "tpu"], "--device"),
    ],
)
def test_bad_options_exit_2_with_one_line(args, message, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [*args, "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and message in result.output
    assert not out.exists()  # nothing written


def test_cli_reads_eps_as_a_fraction_and_resolves_the_step_size(tmp_path):
    out = tmp_path / "run"
    args = ["train-adv", "-m", "resnet18", "--width", "0.125", "--epochs", "1", "--eps", "16/255", "--steps", "1",
            "--untargeted", "--no-random-start", "--model-opt", "kernel_size=3", "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["eps"] == pytest.approx(16 / 255) and config["step_size"] == pytest.approx(16 / 255)  # eps/steps > 1/255
    assert (config["steps"], config["targeted"], config["random_start"]) == (1, False, False)
    assert config["model_kwargs"] == {"stem": "small", "width": 0.125, "kernel_size": 3}
    assert read_checkpoint(out / "last.pt")["attack"]["targeted"] is False


def test_existing_run_directory_needs_resume(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = CliRunner().invoke(app, ["train", "-o", str(out)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "exists; pass --resume" in result.output
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_resume_refuses_a_changed_recipe(digits_runs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(digits_runs["regular"], run)
    for args, message in ((["train", "-m", "resnet26"], "--model resnet26 differs"),
                          (["train-adv"], "holds a regular run"), (["train", "--lr", "0.3"], "--lr 0.3 differs"),
                          (["train", "--precise-bn", "4"], "--precise-bn 4 differs")):
        result = CliRunner().invoke(app, [*args, "-o", str(run), "--resume"])
        assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
    config = json.loads((run / "config.json").read_text())
    del config["validation"]  # a run from before the validation split: its best.pt was chosen on the test set
    (run / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(app, ["train", "-o", str(run), "--resume"])
    assert result.exit_code == 2 and "before the validation split" in result.output


def test_run_files_read_back_typed(digits_runs, tmp_path):
    run = digits_runs["adversarial"]
    assert is_run_dir(run) and not is_run_dir(tmp_path) and not is_run_dir(run / "config.json")
    config = read_run_config(run)
    assert isinstance(config, TrainConfig) and config.to_dict() == read_checkpoint(run / "last.pt")["config"]
    assert config.adversarial and config.validation["metric"] == "val_robust_acc"
    assert read_manifest(run) == json.loads((run / "manifest.json").read_text())
    records = read_metrics(run)
    assert all(isinstance(r, EpochRecord) for r in records)
    assert [r.to_dict() for r in records] == _metrics(run)
    assert records[0].adv_train_acc is not None and read_metrics(digits_runs["regular"])[0].adv_train_acc is None


def test_read_metrics_ignores_a_torn_last_line_and_refuses_damage(digits_runs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(digits_runs["regular"], run)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(lines[:3]) + lines[3][:25])  # killed while appending epoch 4
    assert [r.epoch for r in read_metrics(run)] == [1, 2, 3]
    (run / "metrics.jsonl").write_text("".join(lines[:3]) + lines[3][:25] + "\n" + "".join(lines[4:]))
    with pytest.raises(UserError, match=r"metrics.jsonl is damaged: line 4 is not JSON") as err:
        read_metrics(run)
    assert "\n" not in str(err.value)
    (run / "metrics.jsonl").write_text(lines[0].replace('"val_acc"', '"test_acc"'))  # an older run's line
    with pytest.raises(UserError, match="line 1 lacks field 'val_acc'"):
        read_metrics(run)
    (run / "config.json").write_text('{"model": "resnet18", "epochs": ')
    with pytest.raises(UserError, match=r"config.json is damaged: not JSON") as err:
        read_run_config(run)
    assert str(run / "config.json") in str(err.value) and "\n" not in str(err.value)
    (run / "config.json").write_text('{"model": "resnet18", "colour": "blue"}')
    with pytest.raises(UserError, match=r"config.json is damaged: unknown training config keys \['colour'\]"):
        read_run_config(run)
    (run / "config.json").unlink()
    with pytest.raises(UserError, match="not an lrrobust run directory"):
        read_run_config(run)
    result = CliRunner().invoke(app, ["train", "-o", str(run), "--resume"])  # resume refuses it in one line
    assert result.exit_code == 2 and "holds no config.json" in result.output


def test_presets_are_defaults_the_user_overrides():
    paper = resolve_config(TrainConfig(dataset="imagenet", root="/data"))
    assert (paper.epochs, paper.batch_size, paper.lr, paper.momentum, paper.weight_decay) == (110, 1024, 0.4, 0.9, 1e-4)
    assert (paper.warmup_epochs, paper.milestones, paper.model_kwargs) == (5, [30, 60, 90], {})
    assert resolve_config(TrainConfig(dataset="imagenet", batch_size=256)).lr == pytest.approx(0.1)  # linear scaling
    assert resolve_config(TrainConfig(dataset="imagenet", batch_size=256, lr=0.3)).lr == 0.3
    adv = resolve_config(TrainConfig(preset="imagenet", adversarial=True))
    assert (adv.eps, adv.steps, adv.step_size, adv.targeted, adv.random_start) == (16 / 255, 16, 1 / 255, True, True)
    digits = resolve_config(TrainConfig(adversarial=True, model_kwargs={"width": 0.5}, steps=4))
    assert digits.eps == 0.2 and digits.step_size == 0.05 and digits.model_kwargs == {"stem": "small", "width": 0.5}
    assert resolve_config(TrainConfig(eps=0.5)).eps is None  # regular training has no attack
    assert (digits.grad_clip, paper.grad_clip, resolve_config(TrainConfig(grad_clip=0)).grad_clip) == (1.0, 0.0, 0)
    assert {p.precise_bn for p in PRESETS.values()} == {0}  # off unless asked for: earlier runs stay as they were
    assert (digits.precise_bn, resolve_config(TrainConfig(precise_bn=30)).precise_bn) == (0, 30)
    with pytest.raises(UserError, match="unknown preset"):
        resolve_config(TrainConfig(preset="no-such-preset"))


def test_lr_schedule_warms_up_linearly_then_steps_down():
    factors = [lr_factor(step, 10, 2, [5, 8]) for step in range(100)]
    assert factors[:20] == pytest.approx([(s + 1) / 20 for s in range(20)])
    assert factors[20:50] == [1.0] * 30 and factors[50:80] == pytest.approx([0.1] * 30)
    assert factors[80:] == pytest.approx([0.01] * 20)
    assert lr_factor(0, 10, 0, [5]) == 1.0


def test_image_folder_run_uses_the_imagenet_preset(tmp_path, make_image_tree):
    root = make_image_tree(tmp_path / "data", classes=("a", "b", "c"), per_class=2, size=(64, 48))
    config = TrainConfig(model="resnet18", model_kwargs={"width": 0.125}, dataset="imagefolder", root=str(root),
                         epochs=1, batch_size=2, num_workers=0, out=str(tmp_path / "run"))
    run = train(config, progress=False)
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["preset"] == "imagenet" and resolved["lr"] == pytest.approx(0.4 * 2 / 1024)
    assert resolved["validation"]["size"] == 3 and resolved["validation"]["per_class"] == 10  # 1 of each class's 2
    state = read_checkpoint(run / "last.pt")
    assert state["num_classes"] == 3 and state["model_spec"]["kwargs"]["stem"] == "imagenet"
    model = load_checkpoint(run / "best.pt")
    assert model(torch.rand(1, 3, 224, 224)).shape == (1, 3)
