"""The compiled local relation op (paper Sec. 4): loads ``lrrobust._C`` and registers its fake and autograd kernels.

``lrrobust._C`` defines ``lrrobust::local_relation_forward`` and ``lrrobust::local_relation_backward`` with CPU
(and, when built with nvcc, CUDA) kernels. This module adds what PyTorch needs around them, following
pytorch/extension-cpp: fake (meta) kernels, so ``torch.compile`` traces the op without a graph break, and an
autograd formula whose backward is the backward op. The forward returns the output and ``lse``, the log-sum-exp of
each output's logits in base 2 (N, G, Ho, Wo, float; double for double); autograd keeps both for the backward, which
on CUDA reads its weights from ``lse`` and FlashAttention's "delta" D = sum_c grad_out * out from the output instead
of recomputing the softmax's statistics (the weights themselves are recomputed, never stored).

``fused_forward`` and ``fused_backward`` are the only Python calls of the two ops: ``local_relation``, its autograd
formula and the self-check (``lrrobust.ops.self_check``) all go through them. ``LRROBUST_REFERENCE_OP=1`` makes
the pure-PyTorch reference serve every device instead (``reference_forced``).
"""

from __future__ import annotations

import os

import torch
from torch._prims_common import suggest_memory_format

from lrrobust.ops.checks import check_one_device, check_window

try:
    from lrrobust import _C  # noqa: F401  (loading the library runs its TORCH_LIBRARY registrations)

    LOAD_ERROR: str | None = None
except (ImportError, OSError) as error:  # not built, or built against another torch
    LOAD_ERROR = f"{type(error).__name__}: {error}"

LOADED = LOAD_ERROR is None
FORWARD = "lrrobust::local_relation_forward"
BACKWARD = "lrrobust::local_relation_backward"

# composability name -> the schema's int (csrc/local_relation.cpp)
PHI_CODES = {"sqdiff": 0, "absdiff": 1, "product": 2}

REFERENCE_OP_VARIABLE = "LRROBUST_REFERENCE_OP"


def env_flag(name: str) -> bool:
    """Whether the environment variable ``name`` is set to something other than "" or "0" (e.g. ``=1``)."""
    return os.environ.get(name, "") not in ("", "0")


def reference_forced() -> bool:
    """Whether ``LRROBUST_REFERENCE_OP=1`` asks for the pure-PyTorch reference on every device.

    Read at every eager call of ``local_relation``; a graph ``torch.compile`` traced keeps the choice of its tracing.
    """
    return env_flag(REFERENCE_OP_VARIABLE)


def fused_forward(query, key, value, geo_prior, kernel_size: int, stride: int, dilation: int, phi: int):
    """The compiled forward: the output (N, C, Ho, Wo) and its log-sum-exp ``lse`` (N, G, Ho, Wo). ``phi`` is the
    composability's code in ``PHI_CODES``."""
    return torch.ops.lrrobust.local_relation_forward(
        query, key, value, geo_prior, int(kernel_size), int(stride), int(dilation), int(phi)
    )


def fused_backward(grad_out, query, key, value, geo_prior, out, lse, kernel_size: int, stride: int, dilation: int,
                   phi: int):
    """The compiled backward: the gradients of (query, key, value, geo_prior) for ``grad_out``, given the forward's
    ``out`` and ``lse`` for these inputs."""
    return torch.ops.lrrobust.local_relation_backward(
        grad_out, query, key, value, geo_prior, out, lse, int(kernel_size), int(stride), int(dilation), int(phi)
    )


def _has_kernel(dispatch_key: str) -> bool:
    return LOADED and torch._C._dispatch_has_kernel_for_dispatch_key(FORWARD, dispatch_key)


# Looked up once: torch.compile reads this dict while tracing, it could not trace the dispatcher query.
KERNELS = {"cpu": _has_kernel("CPU"), "cuda": _has_kernel("CUDA")}


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the forward's log-sum-exp for inputs of ``dtype``: the accumulation type (float64 for float64,
    else float32), as ``lse_dtype_of`` in csrc/local_relation_checks.h."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_fake(kernel_size, stride, dilation, composability, grad_out=None, **tensors):
    """What the C++ kernels check that does not depend on sizes: one device (a meta tensor among CPU tensors is
    sent here by the dispatcher, and must be an error, not uninitialised output), one floating dtype of the four
    inputs, ranks, the window bounds and the composability."""
    dtypes = {tensor.dtype for tensor in tensors.values()}
    if grad_out is not None:
        tensors = {"grad_out": grad_out, **tensors}
    check_one_device(**tensors)
    if len(dtypes) > 1 or not next(iter(dtypes)).is_floating_point:
        raise ValueError(f"local_relation: query, key, value and geo_prior must have one floating dtype; got {dtypes}")
    for name, tensor in tensors.items():
        rank = 3 if name == "geo_prior" else 4
        if tensor.dim() != rank:
            raise ValueError(f"local_relation: {name} must be {rank}-D; got shape {tuple(tensor.shape)}")
    check_window(kernel_size, stride, dilation)
    if composability not in PHI_CODES.values():
        raise ValueError(f"local_relation: composability must be 0, 1 or 2; got {composability}")


def _empty_in_format_of(shape, like: torch.Tensor) -> torch.Tensor:
    """An empty tensor in the memory format of ``like``, as the compiled kernels return their results (a
    channels-last input gives a channels-last output and gradient; C++'s ``suggest_memory_format``)."""
    return like.new_empty(shape).contiguous(memory_format=suggest_memory_format(like))


def _forward_fake(query, key, value, geo_prior, kernel_size, stride, dilation, composability):
    _check_fake(kernel_size, stride, dilation, composability, query=query, key=key, value=value, geo_prior=geo_prior)
    n, channels, height, width = value.shape
    torch._check(query.shape[0] == n and key.shape[0] == n, lambda: "local_relation: batch sizes differ")
    out_size = (-(-height // stride), -(-width // stride))
    out = _empty_in_format_of((n, channels, *out_size), value)
    lse = value.new_empty((n, key.shape[1], *out_size), dtype=lse_dtype(value.dtype))
    return out, lse


def _backward_fake(grad_out, query, key, value, geo_prior, out, lse, kernel_size, stride, dilation, composability):
    _check_fake(kernel_size, stride, dilation, composability, grad_out=grad_out, query=query, key=key, value=value,
                geo_prior=geo_prior)
    check_one_device(value=value, out=out, lse=lse)
    torch._check(grad_out.shape[1] == value.shape[1], lambda: "local_relation_backward: grad_out has wrong channels")
    torch._check(out.shape == grad_out.shape, lambda: "local_relation_backward: out must have grad_out's shape")
    torch._check(lse.dtype == lse_dtype(value.dtype) and lse.dim() == 4 and lse.shape[1] == key.shape[1],
                 lambda: "local_relation_backward: lse must be the forward's (N, G, Ho, Wo) log-sum-exp")
    return (
        _empty_in_format_of(query.shape, query),
        _empty_in_format_of(key.shape, key),
        _empty_in_format_of(value.shape, value),
        geo_prior.new_empty(geo_prior.shape),
    )


def _setup_context(ctx, inputs, output):
    query, key, value, geo_prior, kernel_size, stride, dilation, composability = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(query, key, value, geo_prior, out, lse)
    ctx.options = (kernel_size, stride, dilation, composability)


def _backward(ctx, grad_out, _grad_lse):
    grads = fused_backward(grad_out, *ctx.saved_tensors, *ctx.options)
    return (*grads, None, None, None, None)


if LOADED:
    torch.library.register_fake(FORWARD)(_forward_fake)
    torch.library.register_fake(BACKWARD)(_backward_fake)
    torch.library.register_autograd(FORWARD, _backward, setup_context=_setup_context)


def kernel_info() -> str:
    """Which compiled kernels this installation has (the first part of ``lrrobust.ops.build_info``)."""
    if not LOADED:
        return f"lrrobust._C not loaded ({LOAD_ERROR}); the pure-PyTorch reference serves every device"
    kernels = ", ".join(f"{name.upper()} kernel {'compiled' if has else 'not compiled'}" for name, has in KERNELS.items())
    return f"lrrobust._C loaded: {kernels}"
