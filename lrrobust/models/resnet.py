"""ResNet and Local Relation Networks built from one configuration (paper Sec. 5, Fig. 3, Table 2).

LR-Net is a ResNet whose spatial layers are local relation layers and whose 7x7 stem conv is a 1x1
channel transform to 64 followed by a 7x7 local relation layer with stride 2 (Fig. 3a). The non-local networks
of Table 7 are the same configuration with non-local spatial layers (NL-26) or a non-local block after every
residual block (ResNet-26-NL, LR-Net-26-NL). ``stem_layer="conv"`` gives an LR-Net the ResNet's conv stem.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lrrobust.models.blocks import BasicBlock, Bottleneck
from lrrobust.models.fold import FoldingSequential
from lrrobust.models.local_relation import LocalRelation2d, PointwiseConv2d
from lrrobust.models.nonlocal_block import NL_SUBSAMPLE, NonLocalBlock
from lrrobust.models.registry import IMAGENET_MEAN, IMAGENET_STD

STEM_LAYERS = ("lr", "conv")  # an LR-Net's stem: the 1x1 + 7x7 local relation stem (Fig. 3a) or the ResNet's conv
BLOCKS = {"basic": (BasicBlock, 1), "bottleneck": (Bottleneck, 4)}  # block class, expansion


def scaled(channels: float) -> int:
    """Round a (multiplied) channel count to an integer, at least 1."""
    return max(1, round(channels))


class ResNet(nn.Module):
    """A ResNet / LR-Net classifier on images in [0, 1] (normalised inside with ``mean``/``std``).

    Args:
        block: "basic" or "bottleneck".
        layers: blocks per stage res2..res5.
        spatial: "conv", "dw", "lr" or "nl" (the spatial layer of every block; "lr" also swaps the stem).
        num_classes: classifier outputs.
        in_chans: input channels.
        mean, std: per-channel normalisation, length ``in_chans``.
        stem: "imagenet" (stride-2 stem and max-pool: res2 at 1/4 of the input), "half" (the same stride-2 stem
            without the max-pool: res2 at 1/2, e.g. 14x14 on MNIST) or "small" (stride 1, a 3x3 conv for ResNets,
            no max-pool: res2 at the input's size, for 32x32 or 8x8 input).
        width: multiplier on every channel count.
        alpha: bottleneck ratio; the spatial layer of res2 has 64 alpha channels (Table 2: 100/64 for LR-Net-50).
        kernel_size: window of the spatial layers (the LR stem keeps 7 unless the window is "full").
        stem_layer: for LR-Nets, "lr" (the 1x1 transform and 7x7 local relation layer of Fig. 3a) or "conv" (the
            ResNet's stem instead: the 7x7 conv, or the 3x3 conv with ``stem="small"``; Sec. 5 compares the two).
            Ignored for the other spatial kinds, whose stem is always the conv.
        nonlocal_blocks: a non-local block after every residual block (Table 7: "-NL"); its keys and values,
            and those of "nl" spatial layers, are max-pooled by ``NL_SUBSAMPLE`` (4, 2, 2, 1 in res2..res5).
        lr: local relation options (m, composability, geo_prior, normalize, qk_dim).
    """

    def __init__(
        self,
        block: str,
        layers: Sequence[int],
        spatial: str,
        num_classes: int = 1000,
        in_chans: int = 3,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        stem: str = "imagenet",
        width: float = 1.0,
        alpha: float = 1.0,
        kernel_size: int | str = 3,
        stem_layer: str = "lr",
        nonlocal_blocks: bool = False,
        **lr: Any,
    ) -> None:
        super().__init__()
        block_cls, expansion = BLOCKS[block]
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        stem_ch = scaled(64 * width)
        lr_stem = spatial == "lr" and stem_layer == "lr"
        self.stem = self._stem(lr_stem, stem, in_chans, stem_ch, kernel_size, lr)
        stages = []
        in_ch = stem_ch
        for i, depth in enumerate(layers):
            mid = scaled(64 * 2**i * alpha * width)
            out_ch = mid if block == "basic" else scaled(64 * 2**i * expansion * width)
            spatial_options = {**lr, "subsample": NL_SUBSAMPLE[i]} if spatial == "nl" else lr
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block_cls(in_ch, mid, out_ch, stride, spatial, kernel_size, **spatial_options))
                if nonlocal_blocks:
                    blocks.append(NonLocalBlock(out_ch, NL_SUBSAMPLE[i]))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        self.num_features = in_ch
        self._init_weights()

    @staticmethod
    def _stem(lr_stem: bool, stem: str, in_chans: int, ch: int, kernel_size: int | str, lr: dict) -> nn.Sequential:
        stride = 1 if stem == "small" else 2
        if lr_stem:
            stem_k = "full" if kernel_size == "full" else 7
            layers = [
                PointwiseConv2d(in_chans, ch, bias=False),
                nn.BatchNorm2d(ch),
                nn.ReLU(inplace=True),
                LocalRelation2d(ch, ch, kernel_size=stem_k, stride=stride, **lr),
            ]
        elif stem in ("imagenet", "half"):
            layers = [nn.Conv2d(in_chans, ch, 7, stride=2, padding=3, bias=False)]
        else:
            layers = [nn.Conv2d(in_chans, ch, 3, padding=1, bias=False)]
        layers += [nn.BatchNorm2d(ch), nn.ReLU(inplace=True)]
        if stem == "imagenet":
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        return FoldingSequential(*layers)

    def _init_weights(self) -> None:
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.BatchNorm2d):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)
        # After every BN is set: a later pass over the same modules would reset these zeros to one.
        for mod in self.modules():
            if isinstance(mod, LocalRelation2d):
                mod.reset_query_key()
            elif isinstance(mod, Bottleneck):
                nn.init.zeros_(mod.bn3.weight)  # each residual block starts as the identity (Goyal et al.)
            elif isinstance(mod, BasicBlock):
                nn.init.zeros_(mod.bn2.weight)
            elif isinstance(mod, NonLocalBlock):
                nn.init.zeros_(mod.bn.weight)  # the non-local block starts as the identity (Wang et al., Sec. 4.1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.forward_features(x)).flatten(1))
