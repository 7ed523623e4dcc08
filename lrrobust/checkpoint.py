"""Checkpoints: written atomically by training, read back with ``weights_only=True``.

A checkpoint is a dict holding everything needed to rebuild the model alone (``model_spec`` for
``lrrobust.models.create_model`` and ``model_state``), what it was trained on and how (``dataset``,
``num_classes``, ``training``, ``attack``, ``config``, ``manifest``), and the optimizer, scheduler and RNG
states for ``--resume``.

A weights-only file (``save_weights``: what ``lrrobust study`` keeps of each cell, small enough to commit) is the
same format without the resume states, marked ``weights_only``: the model, its spec, what it was trained on and
how (the training attack's eps in ``attack`` and ``config``), its epoch and the run's training record in
``history``. ``read_checkpoint`` and ``load_checkpoint`` read both kinds, so ``lrrobust eval-attack`` takes either;
``read_resumable`` refuses a weights-only file.
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrrobust.errors import UserError
from lrrobust.io import atomic_torch_save

FORMAT = "lrrobust-checkpoint/1"
REQUIRED_KEYS = ("format", "model_spec", "model_state", "dataset", "num_classes", "training", "attack", "epoch",
                 "config", "manifest")
# What a weights-only file keeps: everything but the optimizer, scheduler, scaler and RNG states of --resume.
WEIGHTS_KEYS = (*REQUIRED_KEYS[1:], "metrics", "history", "best_acc", "best_epoch", "best_metric")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file, fsynced, renamed over ``path``)."""
    plain = {k: _plain(v) if k in _JSON_KEYS else v for k, v in state.items()}
    atomic_torch_save(path, {"format": FORMAT, **plain})


_JSON_KEYS = ("model_spec", "dataset", "training", "attack", "config", "manifest", "metrics", "history")


def _plain(value: Any) -> Any:
    """JSON types only (str subclasses such as torch's version become str), so weights_only loading accepts them."""
    return json.loads(json.dumps(value, default=str))


def read_checkpoint(path: str | os.PathLike, map_location: Any = None) -> dict[str, Any]:
    """The checkpoint's dict, checked; a missing, truncated or foreign file raises UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (expected RUN/last.pt or RUN/best.pt from lrrobust train)")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of foreign files: the error says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, foreign pickle refused by weights_only, random bytes...
        raise UserError(f"{path} is not a readable lrrobust checkpoint: {load_failure(path, e)}") from None
    if not isinstance(state, dict) or not str(state.get("format", "")).startswith("lrrobust-checkpoint/"):
        raise UserError(f"{path} is not an lrrobust checkpoint (no lrrobust format tag); "
                        "pass a RUN/last.pt or RUN/best.pt written by lrrobust train")
    if state["format"] != FORMAT:
        raise UserError(f"{path} has checkpoint format {state['format']!r}; this lrrobust reads {FORMAT!r}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise UserError(f"{path} is an incomplete lrrobust checkpoint: missing {', '.join(missing)}")
    return state


def save_weights(checkpoint: str | os.PathLike, path: str | os.PathLike,
                 history: list[dict[str, Any]] | None = None) -> None:
    """Write the model of ``checkpoint`` to ``path`` weights only (atomically), for keeping and re-attacking.

    Args:
        checkpoint: a checkpoint written by training (RUN/best.pt).
        path: the weights-only file to write.
        history: the run's training record (its metrics.jsonl lines) to keep in place of the checkpoint's, which
            ends at the checkpoint's epoch; with the whole record, the training-convergence check of the file is
            the run's.
    """
    state = read_checkpoint(checkpoint, map_location="cpu")
    kept = {k: state[k] for k in WEIGHTS_KEYS if k in state}
    if history is not None:
        kept["history"] = history
    save_checkpoint(path, {**kept, "weights_only": True})


def is_weights_only(state: dict[str, Any]) -> bool:
    """Whether a checkpoint's dict is a weights-only file (``save_weights``)."""
    return bool(state.get("weights_only"))


def read_resumable(path: str | os.PathLike, map_location: Any = None) -> dict[str, Any]:
    """A checkpoint training can resume from; a weights-only file raises UserError."""
    state = read_checkpoint(path, map_location=map_location)
    if is_weights_only(state):
        raise UserError(f"{path} holds weights only (no optimizer state) and cannot be resumed; start a new run "
                        "with another --out")
    return state


def load_failure(path: Path, error: BaseException) -> str:
    """Why torch.load(weights_only=True) failed on ``path``, in a few words a user can act on."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        return f"it cannot be read ({e.strerror or e})"
    if not head:
        return "the file is empty (a failed or killed copy?); pass RUN/last.pt or RUN/best.pt from lrrobust train"
    refused = refused_global(str(error)) or _pickle_global(path, zipfile.is_zipfile(path))
    if refused is not None:
        return (f"it would import {refused}, which weights_only loading refuses (a file that imports code can run "
                "it); pass a checkpoint written by lrrobust train")
    if zipfile.is_zipfile(path):
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        return f"a damaged PyTorch file ({first[:100]}); pass an intact RUN/last.pt or RUN/best.pt"
    if head.startswith(b"PK"):
        return "a truncated or damaged PyTorch file (its zip directory is missing); pass an intact checkpoint"
    if head[:1] == b"\x80":
        return "a plain Python pickle, not a PyTorch checkpoint file; pass RUN/last.pt or RUN/best.pt"
    text = head.decode("utf-8", errors="replace")[:-1]  # the last character may be cut in two
    kind = " but text" if all(ch.isprintable() or ch in "\n\r\t" for ch in text) else ""
    return f"not a PyTorch checkpoint file{kind}; pass RUN/last.pt or RUN/best.pt written by lrrobust train"


_REFUSED = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")


def refused_global(message: str) -> str | None:
    """The global (``posix.system``) that a weights_only error message says it refused, if it names one."""
    found = _REFUSED.search(message)
    return found.group(1).rstrip(".") if found else None


_SAFE_MODULES = ("torch", "collections", "_codecs", "builtins")  # what PyTorch's own checkpoints import


def _pickle_global(path: Path, is_zip: bool) -> str | None:
    """The first global outside PyTorch's own that the pickle in ``path`` (or in its zip archive) would import.

    Read with ``pickletools.genops``, which lists opcodes without running any: nothing in the file is executed.
    """
    try:
        if is_zip:
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                if name is None:
                    return None
                data = archive.read(name)
        else:
            data = path.read_bytes()
        strings: list[str] = []
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            found = None
            if opcode.name in ("GLOBAL", "INST"):
                found = ".".join(str(arg).split(" ", 1))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found = f"{strings[-2]}.{strings[-1]}"
            elif isinstance(arg, str):
                strings.append(arg)
            if found is not None and found.split(".", 1)[0] not in _SAFE_MODULES:
                return found
    except Exception:  # noqa: BLE001 - a damaged pickle: nothing more to say about it
        return None
    return None


def model_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Build an untrained model from ``model.spec`` (name, num_classes, kwargs) through the model zoo."""
    from lrrobust.models import create_model

    return create_model(spec["name"], spec["num_classes"], **spec.get("kwargs", {}))


def load_checkpoint(path: str | os.PathLike, map_location: Any = None) -> nn.Module:
    """Rebuild the trained model from the checkpoint alone, in eval mode; it takes images in [0, 1]."""
    state = read_checkpoint(path, map_location=map_location)
    model = model_from_spec(state["model_spec"])
    try:
        model.load_state_dict(state["model_state"])
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not fit model {state['model_spec']['name']} "
                        f"({str(e).splitlines()[0]})") from None
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()
