"""The local relation op (Hu et al., "Local Relation Networks for Image Recognition", ICCV 2019, Sec. 4).

Public API: ``local_relation`` (Eq. 2-5, fused compiled kernels with a pure-PyTorch fallback),
``kernel_available`` and ``build_info``. The CPU kernel carries AVX-512, AVX2 and SSE2 copies and runs the widest
the CPU supports; the environment variable ``LRROBUST_CPU_ISA=avx2`` (or ``baseline``) forces a narrower one. Its vector
lanes run along an output row on wide maps and across the batch's images on narrow maps and strided layers;
``LRROBUST_CPU_LANES=rows`` (or ``batch``) forces one.

The first fused call per CUDA device and dtype compares the kernels with the reference on a few small problems
(``lrrobust.ops.self_check``) and raises RuntimeError if they disagree; ``LRROBUST_SKIP_SELF_CHECK=1`` skips that
check, ``LRROBUST_REFERENCE_OP=1`` makes the reference serve every device (both read at every eager call).
"""

from __future__ import annotations

import warnings

import torch

from lrrobust.ops import library, self_check
from lrrobust.ops.checks import check_inputs
from lrrobust.ops.library import KERNELS, LOAD_ERROR, LOADED, PHI_CODES, REFERENCE_OP_VARIABLE, reference_forced
from lrrobust.ops.reference import COMPOSABILITIES, local_relation_reference

__all__ = ["COMPOSABILITIES", "build_info", "kernel_available", "local_relation", "local_relation_reference"]

_warned_fallback = False


def kernel_available(device_type: str | torch.device) -> bool:
    """Whether the compiled kernel (not the reference) serves ``device_type`` ("cpu" or "cuda"): compiled in, and
    not overridden by ``LRROBUST_REFERENCE_OP=1``."""
    if isinstance(device_type, torch.device):
        device_type = device_type.type
    return KERNELS.get(device_type, False) and not reference_forced()


def build_info() -> str:
    """One line: which compiled kernels this installation has, and what the self-check found so far."""
    kernels = library.kernel_info()
    if reference_forced():
        kernels += f"; {REFERENCE_OP_VARIABLE}=1: the pure-PyTorch reference serves every device"
    return f"{kernels}; {self_check.summary()}"


def _warn_fallback(device_type: str) -> None:
    global _warned_fallback
    if _warned_fallback:
        return
    _warned_fallback = True
    reason = LOAD_ERROR if not LOADED else f"lrrobust._C has no {device_type} kernel"
    warnings.warn(
        f"lrrobust: no compiled local relation kernel for {device_type} ({reason}); using the slow pure-PyTorch "
        "reference. Build the extension with `pip install --no-build-isolation -e .` (or `make install`).",
        RuntimeWarning,
        stacklevel=3,
    )


def _common_dtype(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return tuple(tensor if tensor.dtype == dtype else tensor.to(dtype) for tensor in tensors)


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
    """Local relation aggregation (Sec. 4, Eq. 2-5), differentiable in all four tensors.

    Output pixel (i, j) looks at the K x K window centred on input pixel (i*stride, j*stride), offsets
    ``dilation`` apart. Its weights are the softmax, over the offsets inside the image, of
    Phi(query, key) + geo_prior; channel c of ``value`` uses the weights of group c // ceil(C/G).

    Args:
        query: (N, G, ceil(H/stride), ceil(W/stride)), one scalar per group and output pixel.
        key: (N, G, H, W).
        value: (N, C, H, W); every group must get at least one channel.
        geo_prior: (G, K, K), the geometric prior term per group and window offset.
        kernel_size: K, odd, 1 <= K <= 32767 (2^15 - 1); up to and beyond the whole map (K >= 2*max(H, W) - 1).
        stride: output pixel spacing s, 1 <= s <= 2^28.
        dilation: spacing d of the window's offsets, 1 <= d <= 2^28, and the window's reach (K-1)/2 * d at
            most 2^28 pixels. These bounds keep every index computation of the kernels (int64 on the CPU, int32
            on CUDA, which also needs maps below 2^29 pixels a side) from overflowing; beyond them the call
            raises ValueError (RuntimeError from ``torch.ops.lrrobust.*`` called directly).
        composability: "sqdiff" -(q-k)^2 (Eq. 3), "absdiff" -|q-k| (Eq. 4) or "product" q*k (Eq. 5).

    Returns:
        (N, C, ceil(H/stride), ceil(W/stride)). Tensors of different floating dtypes are promoted to a common
        one. On the CPU, float16 and bfloat16 are computed in float32 and returned in their own dtype. Where no
        compiled kernel serves the device, the pure-PyTorch reference computes the same (one warning; none when
        ``LRROBUST_REFERENCE_OP=1`` asked for it).

    Raises:
        RuntimeError: on a CUDA device and dtype whose fused kernel disagreed with the reference in the self-check
            that the first fused call there runs (``lrrobust.ops.self_check``).

    Non-finite inputs (inf, -inf, NaN) propagate by IEEE arithmetic, as in ``torch.softmax`` and the reference:
    the logits are Phi(q, k) + geo_prior (inf - inf and 0 * inf are NaN); a window whose in-image logits are all
    -inf, or include +inf or NaN, has NaN weights, so all channels of its group are NaN at that pixel; a -inf
    logit among finite ones has weight 0; the output is sum(weight * value) over the in-image offsets, so an
    infinite value under weight 0 gives NaN, under a positive weight +-inf (NaN if +inf meets -inf). With a
    finite grad_out the four gradients are NaN, infinite and finite where the reference's autograd gives NaN,
    infinite and finite. Outside this contract: finite inputs so large that Phi overflows (|q - k| beyond about
    1e19 in float32; the CPU kernel computes sqdiff as k*(2q - k), equal to -(q-k)^2 up to a term constant over
    the window, so the softmax is the same where both are finite), and weights below about e^-87 in float32,
    which the kernels may round to 0 (an infinite value under such a weight gives NaN, not inf).
    """
    check_inputs(query, key, value, geo_prior, kernel_size, stride, dilation, composability)
    query, key, value, geo_prior = _common_dtype(query, key, value, geo_prior)
    device_type = value.device.type
    if kernel_available(device_type) or (device_type == "meta" and LOADED and not reference_forced()):
        if not torch.compiler.is_compiling():  # checked at the next eager call, never while tracing
            self_check.check_before_use(value.device, value.dtype)
        phi = PHI_CODES[composability]
        out, _lse = library.fused_forward(query, key, value, geo_prior, kernel_size, stride, dilation, phi)
        return out
    if not torch.compiler.is_compiling() and not reference_forced():
        _warn_fallback(device_type)
    return local_relation_reference(query, key, value, geo_prior, kernel_size, stride, dilation, composability)
