"""The run manifest: the provenance record (``lrrobust.core.provenance``) with the run's seed and world size."""

from __future__ import annotations

from typing import Any

import torch

from lrrobust.core.provenance import provenance


def build_manifest(device: torch.device, seed: int, world_size: int) -> dict[str, Any]:
    from lrrobust.ops import kernel_available

    return {**provenance(device), "compiled_op_kernel": kernel_available(device.type), "seed": seed,
            "world_size": world_size}
