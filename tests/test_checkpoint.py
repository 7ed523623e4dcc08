"""Checkpoints: the model is rebuilt from the file alone; bad files give one clear line."""

from __future__ import annotations

import errno
import os
import pickle
from fractions import Fraction

import pytest
import torch

import lrrobust
from lrrobust.checkpoint import (
    FORMAT,
    is_weights_only,
    load_checkpoint,
    read_checkpoint,
    read_resumable,
    save_checkpoint,
    save_weights,
)
from lrrobust.errors import EnvironmentFailure, UserError
from lrrobust.models import create_model


def _state(model) -> dict:
    return {
        "model_spec": model.spec, "model_state": model.state_dict(), "dataset": "digits", "num_classes": 10,
        "training": "regular", "attack": None, "epoch": 1, "config": {"model": model.spec["name"]},
        "manifest": {"torch_version": torch.__version__},  # a str subclass: saved as plain str
    }


@pytest.fixture
def trained(tmp_path):
    torch.manual_seed(0)
    model = create_model("lrnet18", 10, in_chans=1, mean=[0.3], std=[0.4], stem="small", width=0.125)
    model.train()
    model(torch.rand(16, 1, 8, 8))  # move the BatchNorm statistics away from their initial values
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state(model))
    return model.eval(), path


def test_rebuilds_the_model_alone_in_eval_mode(trained):
    model, path = trained
    x = torch.rand(4, 1, 8, 8)
    for loaded in (load_checkpoint(path), lrrobust.load_checkpoint(path, map_location="cpu")):
        assert not loaded.training
        assert loaded.spec == model.spec
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_read_checkpoint_is_checked_and_plain(trained):
    _, path = trained
    state = read_checkpoint(path)
    assert state["format"] == FORMAT and state["epoch"] == 1
    assert type(state["manifest"]["torch_version"]) is str


def test_a_weights_only_file_rebuilds_the_model_without_the_resume_state(trained, tmp_path):
    model, _ = trained
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(2, 1, 8, 8)).sum().backward()
    optimizer.step()
    full = tmp_path / "best.pt"
    history = [{"epoch": 1, "val_acc": 0.5}]
    save_checkpoint(full, {**_state(model), "history": history, "best_epoch": 1, "optimizer": optimizer.state_dict(),
                           "scheduler": {"last_epoch": 3}, "scaler": None, "rng": [{"torch": torch.get_rng_state()}]})
    weights = tmp_path / "weights.pt"
    record = history + [{"epoch": 2, "val_acc": 0.4}]  # the run's whole record, past the checkpoint's epoch
    save_weights(full, weights, history=record)
    state = read_checkpoint(weights)
    assert is_weights_only(state) and not is_weights_only(read_checkpoint(full))
    assert not {"optimizer", "scheduler", "scaler", "rng"} & set(state)
    assert state["history"] == record and state["best_epoch"] == 1 and state["format"] == FORMAT
    assert weights.stat().st_size < 0.6 * full.stat().st_size  # momentum buffers are as large as the weights
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(load_checkpoint(weights)(x), model.eval()(x), rtol=0, atol=0)
    assert read_resumable(full)["scheduler"] == {"last_epoch": 3}
    with pytest.raises(UserError, match="holds weights only .* cannot be resumed") as err:
        read_resumable(weights)
    assert "\n" not in str(err.value)
    save_weights(full, weights)  # without a record: the checkpoint's own
    assert read_checkpoint(weights)["history"] == history


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")


def test_truncated_file(trained):
    _, path = trained
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable lrrobust checkpoint") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


def test_foreign_files(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, plain)
    with pytest.raises(UserError, match="not an lrrobust checkpoint"):
        read_checkpoint(plain)
    code = tmp_path / "code.pt"
    with open(code, "wb") as f:  # a pickle that would run code: weights_only refuses it
        pickle.dump({"format": FORMAT, "x": Fraction(1, 3)}, f, protocol=2)
    with pytest.raises(UserError, match="not a readable lrrobust checkpoint"):
        read_checkpoint(code)
    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(UserError, match="not a readable lrrobust checkpoint"):
        read_checkpoint(noise)


def test_other_format_version_and_missing_keys(trained, tmp_path):
    _, path = trained
    state = torch.load(path, weights_only=True)
    future = tmp_path / "future.pt"
    torch.save({**state, "format": "lrrobust-checkpoint/99"}, future)
    with pytest.raises(UserError, match="checkpoint format 'lrrobust-checkpoint/99'"):
        read_checkpoint(future)
    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in state.items() if k != "model_state"}, partial)
    with pytest.raises(UserError, match="missing model_state"):
        read_checkpoint(partial)


def test_weights_that_do_not_fit_the_spec(trained, tmp_path):
    _, path = trained
    state = torch.load(path, weights_only=True)
    state["model_spec"] = {**state["model_spec"], "num_classes": 7}
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(UserError, match="weights do not fit"):
        load_checkpoint(bad)


def test_a_failed_write_keeps_the_previous_checkpoint(trained, monkeypatch):
    model, path = trained
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(EnvironmentFailure, match="No space left on device") as err:
        save_checkpoint(path, _state(model))
    assert str(err.value) == f"cannot write {path}: No space left on device"
    assert isinstance(err.value, OSError)  # callers catching OSError still catch it
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_torch_runtime_error_on_a_failed_write_names_the_path(trained, monkeypatch):
    """torch.save reports a failed write as RuntimeError('[enforce fail at inline_container.cc ...]'); when no
    OSError underneath says more, that is still one line naming the path (a real one: tests/test_cli_errors.py)."""
    model, path = trained
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(EnvironmentFailure) as err:
        save_checkpoint(path, _state(model))
    assert str(err.value).startswith(f"cannot write {path}: the write failed (")
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "the file is empty"),
        (b"epoch,loss\n1,0.5\n" * 6, "not a PyTorch checkpoint file but text"),
        (bytes(range(256)) * 2, "not a PyTorch checkpoint file;"),
    ],
)
def test_foreign_files_say_what_they_are(tmp_path, content, reason):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="not a readable lrrobust checkpoint") as err:
        read_checkpoint(path)
    assert reason in str(err.value) and "101" not in str(err.value)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo this should never run",))


def write_evil_checkpoint(path, kind: str):
    """A checkpoint whose unpickling would call os.system, written by torch.save or plain pickle."""
    if kind == "torch.save":
        torch.save({"format": FORMAT, "x": _Evil()}, path)
    else:
        with open(path, "wb") as f:
            pickle.dump({"format": FORMAT, "x": _Evil()}, f)
    return path


@pytest.mark.parametrize("kind", ["torch.save", "pickle"])
def test_a_malicious_checkpoint_names_the_refused_global(tmp_path, kind):
    path = write_evil_checkpoint(tmp_path / "evil.pt", kind)
    with pytest.raises(UserError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert f"it would import {os.system.__module__}.system" in message  # posix.system
    assert "weights_only" in message and "\n" not in message and "PyTorch 2.6" not in message
