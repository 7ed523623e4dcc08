"""Checkpoints: written atomically by training, read back with ``weights_only=True``.

A checkpoint is a dict holding everything needed to rebuild the model alone (``model_spec`` for
``lrrobust.models.create_model`` and ``model_state``), what it was trained on and how (``dataset``,
``num_classes``, ``training``, ``attack``, ``config``, ``manifest``), and the optimizer, scheduler and RNG
states for ``--resume``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrrobust.errors import UserError
from lrrobust.io import atomic_torch_save

FORMAT = "lrrobust-checkpoint/1"
REQUIRED_KEYS = ("format", "model_spec", "model_state", "dataset", "num_classes", "training", "attack", "epoch",
                 "config", "manifest")


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
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, foreign pickle refused by weights_only, random bytes...
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        reason = next((line for line in lines if "Unpickler error" in line), lines[0])
        raise UserError(f"{path} is not a readable lrrobust checkpoint (truncated or foreign file: {reason[:160]})"
                        ) from None
    if not isinstance(state, dict) or not str(state.get("format", "")).startswith("lrrobust-checkpoint/"):
        raise UserError(f"{path} is not an lrrobust checkpoint (no lrrobust format tag); "
                        "pass a RUN/last.pt or RUN/best.pt written by lrrobust train")
    if state["format"] != FORMAT:
        raise UserError(f"{path} has checkpoint format {state['format']!r}; this lrrobust reads {FORMAT!r}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise UserError(f"{path} is an incomplete lrrobust checkpoint: missing {', '.join(missing)}")
    return state


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
