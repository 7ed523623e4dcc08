"""The local relation op (paper Sec. 4). Public API: ``local_relation`` and ``kernel_available``.

(Initial version: serves the pure-PyTorch reference; the compiled kernels are wired in by the op work.)
"""

from __future__ import annotations

import torch

from lrrobust.ops.reference import local_relation_reference


def kernel_available(device_type: str) -> bool:
    """Whether the compiled kernel (not the fallback) serves ``device_type`` ("cpu" or "cuda")."""
    return False


def build_info() -> str:
    return "reference only"


def local_relation(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    geo_prior: torch.Tensor,
    kernel_size: int,
    stride: int = 1,
    dilation: int = 1,
    composability: str = "sqdiff",
) -> torch.Tensor:
    return local_relation_reference(query, key, value, geo_prior, kernel_size, stride, dilation, composability)
