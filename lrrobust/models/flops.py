"""Parameter and FLOP counts (paper Tables 2, 7, 8; the local relation layer's cost from Eq. 6).

FLOPs here are multiply-adds: convolutions and linear layers by their output size, the local
relation aggregation by the k^2 term of Eq. 6, and the two matrix products of a non-local layer (Table 7). The shapes come from a forward pass on the "meta" device,
so nothing is computed and a 224x224 LR-Net-101 is counted in a fraction of a second.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lrrobust.models.local_relation import LocalRelation2d
from lrrobust.models.nonlocal_block import NonLocal2d


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN statistics and mean/std excluded)."""
    return sum(p.numel() for p in model.parameters())


def local_relation_flops(
    channels: int, kernel_size: int, m: int, stride: int, height: int, width: int, qk_dim: int = 1
) -> float:
    """Eq. 6 with its constant set to 1: ((1 + s^2)/m + 1) C (C + k^2) HW / s^2.

    The C^2 part is the layer's three channel transforms (query at the output and key at the input
    resolution, C/m channels each; value at the output resolution); the k^2 part is the aggregation.
    With a query/key dimension d (Table 4) query and key have C d / m channels: m becomes m / d.
    """
    s2 = stride * stride
    return ((1 + s2) * qk_dim / m + 1) * channels * (channels + kernel_size**2) * height * width / s2


def aggregation_flops(layer: LocalRelation2d, height: int, width: int) -> float:
    """The k^2 (aggregation) part of Eq. 6 for ``layer`` on an H x W input (m / d for a query/key dimension d)."""
    k = layer.window(height, width)
    s2 = layer.stride**2
    m = layer.in_channels / (layer.groups * layer.qk_dim)
    return ((1 + s2) / m + 1) * layer.in_channels * k * k * height * width / s2


def count_flops(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> int:
    """Multiply-adds of one image: convs, linear layers, the LR aggregation (Eq. 6's k^2 term) and the
    non-local attention (theta^T phi and its product with g).

    Batch norm, ReLU, pooling, the residual sums and the geometric prior (a fixed table at inference,
    Sec. 4) are not counted.
    """
    meta = copy.deepcopy(model).to("meta").eval()
    total = [0.0]

    def conv_hook(mod: nn.Conv2d, inputs, output) -> None:
        per_out = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        total[0] += per_out * output.numel()

    def linear_hook(mod: nn.Linear, inputs, output) -> None:
        total[0] += mod.in_features * output.numel()

    def lr_hook(mod: LocalRelation2d, inputs, output) -> None:
        # the aggregation, and the query (at the output pixels) and key transforms, which the layer computes as one
        # product of its stacked weights (LocalRelation2d.query_key), so their modules' hooks do not fire
        h, w = inputs[0].shape[-2:]
        out_pixels = -(-h // mod.stride) * -(-w // mod.stride)
        transforms = mod.in_channels * mod.groups * mod.qk_dim * (h * w + out_pixels)
        total[0] += (aggregation_flops(mod, h, w) + transforms) * inputs[0].shape[0]

    def nonlocal_hook(mod: NonLocal2d, inputs, output) -> None:
        h, w = inputs[0].shape[-2:]
        total[0] += mod.attention_flops(h, w) * inputs[0].shape[0]

    for mod in meta.modules():
        if isinstance(mod, NonLocal2d):
            mod.register_forward_hook(nonlocal_hook)
        elif isinstance(mod, nn.Conv2d):
            mod.register_forward_hook(conv_hook)
        elif isinstance(mod, nn.Linear):
            mod.register_forward_hook(linear_hook)
        elif isinstance(mod, LocalRelation2d):
            mod.register_forward_hook(lr_hook)
    with torch.no_grad():
        meta(torch.zeros(1, *input_size, device="meta"))
    return round(total[0])


def alpha_for_flops(name: str, flops: float, input_size: tuple[int, int, int] = (3, 224, 224), **overrides) -> float:
    """The bottleneck ratio alpha that gives ``name`` (with ``overrides``) about ``flops`` multiply-adds.

    The paper adapts alpha so that every architecture of an ablation has the FLOPs of ResNet-26 (Sec. 5,
    Table 3, A1). FLOPs are a quadratic in alpha (1x1 transforms and the aggregation grow with it, the
    spatial layer's channel mixing with its square), so three counts fix it; the result is rounded so that
    res2's spatial layer has a whole number of channels (alpha = w / 64).
    """
    from lrrobust.models.registry import create_model

    overrides.pop("alpha", None)
    points = (0.5, 1.0, 2.0)
    counts = []
    for alpha in points:
        with torch.device("meta"):
            counts.append(count_flops(create_model(name, alpha=alpha, **overrides), input_size))
    a, b, c = torch.linalg.solve(
        torch.tensor([[p * p, p, 1.0] for p in points], dtype=torch.float64, device="cpu"),
        torch.tensor(counts, dtype=torch.float64, device="cpu"),
    ).tolist()
    c -= flops
    alpha = (-b + (b * b - 4 * a * c) ** 0.5) / (2 * a) if a > 0 else -c / b
    return max(1, round(64 * alpha)) / 64
