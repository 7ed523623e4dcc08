"""Residual blocks whose spatial layer is chosen by configuration (paper Sec. 5, Fig. 3, Appendix A1).

The spatial layer is a k x k convolution (ResNet), a k x k depthwise convolution (ResNet-DW, Table 3), a
local relation layer (LR-Net) or a non-local layer (NL-26, Table 7). Every layer is followed by BN and ReLU (the ReLU of the last layer of a
block comes after the residual sum); shortcuts across stages are a 1x1 projection with BN.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lrrobust.models.fold import FoldingSequential, then_bn
from lrrobust.models.local_relation import LocalRelation2d, PointwiseConv2d
from lrrobust.models.nonlocal_block import NonLocal2d

SPATIAL_KINDS = ("conv", "dw", "lr", "nl")


def spatial_layer(kind: str, in_ch: int, out_ch: int, stride: int, kernel_size: int | str, **lr: Any) -> nn.Module:
    """The block's spatial layer: "conv", "dw" (depthwise, needs in_ch == out_ch), "lr" (local relation, ``lr``
    its options) or "nl" (non-local, ``lr`` holds its ``subsample``; no window, so ``kernel_size`` is unused)."""
    if kind == "lr":
        return LocalRelation2d(in_ch, out_ch, kernel_size=kernel_size, stride=stride, **lr)
    if kind == "nl":
        return NonLocal2d(in_ch, out_ch, stride=stride, **lr)
    pad = (int(kernel_size) - 1) // 2
    groups = in_ch if kind == "dw" else 1
    return nn.Conv2d(in_ch, out_ch, int(kernel_size), stride=stride, padding=pad, groups=groups, bias=False)


def projection(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    """A 1x1 channel transform followed by BN (the projection shortcut)."""
    return FoldingSequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))


class Bottleneck(nn.Module):
    """1x1 channel transform to ``width``, the spatial layer (stride here), 1x1 back to ``out_ch`` (Fig. 3b).

    ``width`` is 64 alpha at res2 (Table 2: alpha = 100/64 for LR-Net-50).
    """

    def __init__(self, in_ch: int, width: int, out_ch: int, stride: int, spatial: str, kernel_size, **lr) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = spatial_layer(spatial, width, width, stride, kernel_size, **lr)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = projection(in_ch, out_ch, stride) if stride != 1 or in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(then_bn(self.conv1, self.bn1, x))
        y = self.act(then_bn(self.conv2, self.bn2, y))
        y = then_bn(self.conv3, self.bn3, y)
        return self.act(y + self.shortcut(x))


class BasicBlock(nn.Module):
    """Two spatial layers (Fig. 3c); ``width`` must equal ``out_ch`` (64 alpha at res2 for LR-Net-18).

    With "lr" each k x k conv becomes a 1x1 channel transform followed by a local relation layer, both of
    ``out_ch`` channels; with "conv"/"dw" the block is the ResNet-18 one.
    """

    def __init__(self, in_ch: int, width: int, out_ch: int, stride: int, spatial: str, kernel_size, **lr) -> None:
        super().__init__()
        if width != out_ch:
            raise ValueError(f"BasicBlock needs width == out_ch, got {width} and {out_ch}")
        self.layer1 = self._spatial(in_ch, out_ch, stride, spatial, kernel_size, lr)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.layer2 = self._spatial(out_ch, out_ch, 1, spatial, kernel_size, lr)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = projection(in_ch, out_ch, stride) if stride != 1 or in_ch != out_ch else nn.Identity()

    @staticmethod
    def _spatial(in_ch: int, out_ch: int, stride: int, spatial: str, kernel_size, lr: dict) -> nn.Module:
        if spatial != "lr":
            return spatial_layer(spatial, in_ch, out_ch, stride, kernel_size, **lr)
        return FoldingSequential(
            PointwiseConv2d(in_ch, out_ch, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            LocalRelation2d(out_ch, out_ch, kernel_size=kernel_size, stride=stride, **lr),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(then_bn(self.layer1, self.bn1, x))
        y = then_bn(self.layer2, self.bn2, y)
        return self.act(y + self.shortcut(x))
