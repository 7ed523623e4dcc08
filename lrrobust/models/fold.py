"""BatchNorm folded into the convolution before it, in eval mode (the attack passes of Sec. 6.2 run in eval mode).

In eval mode BN is a fixed per-channel affine map, y = (x - mean) * gamma / sqrt(var + eps) + beta, so
``bn(conv(x))`` is one convolution with weight ``W * scale`` and bias ``beta + (b - mean) * scale``. That is the
same function (up to float rounding) and autograd still reaches W, gamma and beta through the folded tensors,
but it skips one pass over the activations in the forward and one in the backward: about a tenth of a PGD
step of an LR-Net on CPU (``lrrobust bench train``). In train mode BN runs as usual (batch statistics).

A local relation layer ends in its 1x1 value transform (``LocalRelation2d.value``), so a BN after it folds
into that transform. A layer watched by forward hooks (feature extraction, FLOP counting) is not folded, so
its hooks fire as usual.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lrrobust.models.local_relation import LocalRelation2d


def then_bn(layer: nn.Module, bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``bn(layer(x))``; in eval mode BN is folded into the convolution ``layer`` ends in, when it ends in one.

    ``layer``: an ``nn.Conv2d``, a ``LocalRelation2d`` (its value transform), a ``FoldingSequential`` (its last
    layer) or anything else (then nothing is folded).
    """
    running_stats = isinstance(bn, _BatchNorm) and not bn.training and bn.running_var is not None
    if not running_stats or _hooked(layer, bn):
        return bn(layer(x))
    if isinstance(layer, nn.Conv2d):
        return _folded_conv(layer, bn, x)
    if isinstance(layer, LocalRelation2d):
        return _folded_conv(layer.value, bn, layer.aggregate(x))
    if isinstance(layer, FoldingSequential) and len(layer) > 0:
        *head, last = layer
        return then_bn(last, bn, _run(head, x))
    return bn(layer(x))


def _hooked(*modules: nn.Module) -> bool:
    """Whether forward hooks watch these modules (or all modules): then they run unfolded, so the hooks fire."""
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for mod in modules for m in mod.modules())


def _folded_conv(conv: nn.Conv2d, bn: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale if conv.bias is None else (conv.bias - bn.running_mean) * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    weight = conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype)
    return conv._conv_forward(x, weight, shift.to(conv.weight.dtype))


def _run(layers: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Apply ``layers`` in turn, each BN together with the layer before it."""
    i = 0
    while i < len(layers):
        if i + 1 < len(layers) and isinstance(layers[i + 1], _BatchNorm):
            x = then_bn(layers[i], layers[i + 1], x)
            i += 2
        else:
            x = layers[i](x)
            i += 1
    return x


class FoldingSequential(nn.Sequential):
    """An ``nn.Sequential`` (same children, same state-dict keys) that folds each BN into the convolution
    before it in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run(list(self), x)
