"""Pure-PyTorch local relation aggregation (paper Sec. 4, Eq. 2-5): the test oracle and the fallback.

It unfolds key and value into K*K copies, so it is simple and slow and uses K*K times the memory of the
input. The compiled kernels in ``csrc/`` compute the same thing without that copy.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

COMPOSABILITIES = ("sqdiff", "absdiff", "product")


def output_size(size: int, stride: int) -> int:
    """Output length along one axis: ceil(size / stride), windows centred on input pixel i * stride."""
    return (size + stride - 1) // stride


def composability(query: torch.Tensor, key: torch.Tensor, kind: str) -> torch.Tensor:
    """Appearance composability Phi(q, k): Eq. 3 (sqdiff), Eq. 4 (absdiff) or Eq. 5 (product)."""
    if kind == "sqdiff":
        return -(query - key) ** 2
    if kind == "absdiff":
        return -(query - key).abs()
    if kind == "product":
        return query * key
    raise ValueError(f"composability must be one of {', '.join(COMPOSABILITIES)}, got {kind!r}")


def _unfold(x: torch.Tensor, kernel_size: int, stride: int, dilation: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, K*K, Ho, Wo): the window of every output pixel, zero outside the image."""
    n, c, h, w = x.shape
    pad = (kernel_size - 1) // 2 * dilation
    cols = F.unfold(x, kernel_size, dilation=dilation, padding=pad, stride=stride)
    return cols.view(n, c, kernel_size * kernel_size, output_size(h, stride), output_size(w, stride))


def window_logits(query, key, geo_prior, kernel_size, stride, dilation, composability_kind, qk_dim):
    """(N, G, K*K, Ho, Wo) logits Phi(q, k) + geo_prior of every window offset, and which offsets lie in the image."""
    n, qk_channels, h, w = key.shape
    groups = qk_channels // qk_dim
    kk = kernel_size * kernel_size
    ho, wo = output_size(h, stride), output_size(w, stride)
    keys = _unfold(key, kernel_size, stride, dilation)  # (N, G*d, KK, Ho, Wo)
    inside = _unfold(torch.ones(1, 1, h, w, dtype=key.dtype, device=key.device), kernel_size, stride, dilation) > 0
    if qk_dim == 1:
        logits = composability(query.unsqueeze(2), keys, composability_kind)
    else:
        vectors = (n, groups, qk_dim, kk, ho, wo)
        phi = composability(query.reshape(n, groups, qk_dim, 1, ho, wo), keys.reshape(vectors), composability_kind)
        logits = phi.sum(dim=2) / qk_dim**0.5
    return logits + geo_prior.reshape(1, groups, kk, 1, 1), inside


def local_relation_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    geo_prior: torch.Tensor,
    kernel_size: int,
    stride: int = 1,
    dilation: int = 1,
    composability_kind: str = "sqdiff",
    normalize: bool = True,
    qk_dim: int = 1,
) -> torch.Tensor:
    """Local relation aggregation, the plain way. Shapes as in ``lrrobust.ops.local_relation``.

    With ``normalize=False`` the logits themselves are the aggregation weights (the "none" column of
    Table 6); positions outside the image still take no part.

    With ``qk_dim`` = d > 1 query and key hold d-vectors per group, (N, G*d, ...) with group g's vector in
    channels g*d .. g*d + d - 1 (Table 4); Phi is summed over the d components and scaled by 1/sqrt(d), the
    scaling of self-attention (the paper's [25]); for d = 1 it is Eq. 3-5 unchanged.

    Non-finite inputs propagate as in ``torch.softmax`` (IEEE): this function defines the semantics the compiled
    kernels follow (see ``lrrobust.ops.local_relation``): a window whose in-image logits are all -inf, or hold a
    +inf or NaN, gets NaN weights; 0 * inf in the weighted sum is NaN.
    """
    n, channels = value.shape[:2]
    groups = key.shape[1] // qk_dim
    per_group = -(-channels // groups)
    logits, inside = window_logits(query, key, geo_prior, kernel_size, stride, dilation, composability_kind, qk_dim)
    if normalize:
        weights = logits.masked_fill(~inside, float("-inf")).softmax(dim=2)
    else:
        weights = logits.masked_fill(~inside, 0.0)

    values = _unfold(value, kernel_size, stride, dilation)  # (N, C, KK, Ho, Wo)
    channel_group = torch.arange(channels, device=value.device) // per_group
    weights = weights.index_select(1, channel_group)  # (N, C, KK, Ho, Wo)
    out = (weights * values).sum(dim=2)
    assert out.shape == (n, channels, *values.shape[3:])
    return out


def log_sum_exp_reference(query, key, geo_prior, kernel_size: int, stride: int = 1, dilation: int = 1,
                          composability_kind: str = "sqdiff") -> torch.Tensor:
    """(N, G, Ho, Wo): log2 of sum exp(logit) over each output's in-image offsets, the compiled forward's second
    result (``torch.ops.lrrobust.local_relation_forward``), which its backward reads the weights from."""
    logits, inside = window_logits(query, key, geo_prior, kernel_size, stride, dilation, composability_kind, 1)
    return logits.masked_fill(~inside, float("-inf")).logsumexp(dim=2) / math.log(2)
