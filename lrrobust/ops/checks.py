"""Input checks of the local relation op (paper Sec. 4): every mistake is one ValueError or TypeError that names
the problem and the fix, raised before any kernel runs. The compiled kernels check again in C++."""

from __future__ import annotations

import numbers

import torch

from lrrobust.ops.reference import COMPOSABILITIES, output_size

# Bounds of the window parameters, the same as in csrc/local_relation_checks.h (see ``local_relation``): no index
# arithmetic of the CPU (int64) or CUDA (int32) kernels can overflow within them.
MAX_KERNEL_SIZE = 2**15 - 1
MAX_STRIDE = 2**28
MAX_DILATION = 2**28
MAX_REACH = 2**28  # (kernel_size - 1) // 2 * dilation: how far the window reaches from its centre


def _fail(message: str) -> None:
    raise ValueError(f"local_relation: {message}")


def check_window(kernel_size: int, stride: int, dilation: int) -> None:
    """Raise unless kernel_size, stride and dilation are ints within the bounds above (K odd)."""
    for name, number in (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)):
        if isinstance(number, bool) or not isinstance(number, numbers.Integral):
            raise TypeError(f"local_relation: {name} must be an int; got {number!r}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        _fail(f"kernel_size must be odd and >= 1 (the window is centred on its pixel); got {kernel_size}")
    if kernel_size > MAX_KERNEL_SIZE:
        _fail(f"kernel_size must be at most {MAX_KERNEL_SIZE}; got {kernel_size}")
    if stride < 1:
        _fail(f"stride must be >= 1; got {stride}")
    if stride > MAX_STRIDE:
        _fail(f"stride must be at most 2^28 = {MAX_STRIDE}; got {stride}")
    if dilation < 1:
        _fail(f"dilation must be >= 1; got {dilation}")
    if dilation > MAX_DILATION:
        _fail(f"dilation must be at most 2^28 = {MAX_DILATION}; got {dilation}")
    reach = (kernel_size - 1) // 2 * dilation
    if reach > MAX_REACH:
        _fail(
            f"the window reaches (kernel_size - 1) / 2 * dilation = {reach} pixels from its centre; at most "
            f"2^28 = {MAX_REACH} (kernel_size {kernel_size}, dilation {dilation})"
        )


def check_one_device(**tensors: torch.Tensor) -> None:
    """Raise unless all tensors are on one device (a meta tensor among CPU tensors included)."""
    devices = {tensor.device for tensor in tensors.values()}
    if len(devices) > 1:
        where = ", ".join(f"{name} on {tensor.device}" for name, tensor in tensors.items())
        names = list(tensors)
        _fail(f"{', '.join(names[:-1])} and {names[-1]} must be on one device; got {where}: move them with .to(device)")


def check_inputs(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    geo_prior: torch.Tensor,
    kernel_size: int,
    stride: int,
    dilation: int,
    composability: str,
) -> None:
    """Raise if the arguments do not describe one local relation aggregation (shapes as in ``local_relation``)."""
    tensors = (("query", query), ("key", key), ("value", value), ("geo_prior", geo_prior))
    for name, tensor in tensors:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"local_relation: {name} must be a torch.Tensor; got {type(tensor).__name__}")
    check_window(kernel_size, stride, dilation)
    if composability not in COMPOSABILITIES:
        valid = ", ".join(repr(kind) for kind in COMPOSABILITIES)
        _fail(f"composability must be one of {valid}; got {composability!r}")

    layouts = {"query": "(N, G, Ho, Wo)", "key": "(N, G, H, W)", "value": "(N, C, H, W)", "geo_prior": "(G, K, K)"}
    for name, tensor in tensors:
        rank = 3 if name == "geo_prior" else 4
        if tensor.dim() != rank:
            _fail(f"{name} must be {rank}-D {layouts[name]}; got shape {tuple(tensor.shape)}")
    check_one_device(**dict(tensors))
    for name, tensor in tensors:
        if not tensor.is_floating_point():
            _fail(f"{name} must be a floating-point tensor; got {tensor.dtype}: convert it with .float()")

    n, groups, height, width = key.shape
    channels = value.shape[1]
    if groups < 1:
        _fail(f"key must have at least one group (dimension 1); got shape {tuple(key.shape)}")
    if channels < 1:
        _fail(f"value must have at least one channel (dimension 1); got shape {tuple(value.shape)}")
    if value.shape[0] != n or value.shape[2] != height or value.shape[3] != width:
        _fail(f"value {tuple(value.shape)} and key {tuple(key.shape)} must agree in N, H and W")
    expected = (n, groups, output_size(height, stride), output_size(width, stride))
    if tuple(query.shape) != expected:
        _fail(
            f"query must be (N, G, ceil(H/stride), ceil(W/stride)) = {expected} for key {tuple(key.shape)} "
            f"and stride {stride}; got {tuple(query.shape)}"
        )
    if tuple(geo_prior.shape) != (groups, kernel_size, kernel_size):
        _fail(f"geo_prior must be (G, K, K) = {(groups, kernel_size, kernel_size)}; got {tuple(geo_prior.shape)}")
    per_group = -(-channels // groups)
    if (groups - 1) * per_group >= channels:
        _fail(
            f"{groups} groups for {channels} channels leave the last group without channels (m = ceil(C/G) = "
            f"{per_group}); choose G with (G-1) * ceil(C/G) < C, e.g. G = ceil(C/m) for the m you want"
        )
