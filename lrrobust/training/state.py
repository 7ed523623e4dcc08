"""Random number generator states: captured into checkpoints and restored on ``--resume``.

Every source of randomness a run draws from is here: torch (CPU and CUDA: initialisation, random starts,
augmentation in the main process), numpy, Python's ``random`` and lrrobust's own target generator. The data
order comes from ``DistributedSampler(seed)`` and a loader generator reseeded from (seed, epoch, rank), so it
needs no state. All values are tensors or plain Python types, so ``torch.load(weights_only=True)`` reads them.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture_rng(device: torch.device, generator: torch.Generator) -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
        "targets": generator.get_state(),
    }


def restore_rng(state: dict[str, Any], device: torch.device, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    generator.set_state(state["targets"].cpu())
