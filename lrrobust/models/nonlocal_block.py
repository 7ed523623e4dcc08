"""Non-local Neural Networks (Wang et al., CVPR 2018, https://arxiv.org/abs/1711.07971): the baselines of Table 7.

The embedded Gaussian non-local operation: theta, phi and g are 1x1 channel transforms to C/2, every output
pixel takes the softmax over all positions of theta(x_i) . phi(x_j) (scaled by 1/sqrt(C/2), as Wang et al.'s code
does) as the weights of g(x_j), and a 1x1 transform W_z maps the result back to C channels. ``NonLocal2d`` is the
operation as a layer (NL-26 puts it where ResNet-26 has its 3x3 convs); ``NonLocalBlock`` is the residual block
z = BN(W_z y) + x, whose BN weight starts at zero so the block starts as the identity (Wang et al., Sec. 4.1).

Wang et al. subsample phi and g by max pooling (their Sec. 3.3); the LR paper follows them for its "full image"
layers with keys downsampled 4x in res2, 2x in res3 and res4 (footnote 5). ``NL_SUBSAMPLE`` holds those strides,
and the NL networks use them (see docs/model_zoo.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NL_SUBSAMPLE = (4, 2, 2, 1)  # max-pool stride of the keys and values in res2..res5 (paper footnote 5, after [27])


def output_size(size: int, stride: int) -> int:
    """ceil(size / stride): the length of ``x[::stride]`` and of a ceil-mode pooling with kernel = stride."""
    return (size + stride - 1) // stride


class NonLocal2d(nn.Module):
    """The embedded Gaussian non-local operation W_z softmax(theta^T phi) g (Wang et al., Eq. 1-3), no residual.

    Args:
        in_channels: input channels C.
        out_channels: output channels of W_z (default C).
        inner: channels of theta, phi and g (default C/2, as Wang et al.).
        stride: the queries (theta) are taken at every stride-th pixel, like the windows of a strided local
            relation layer; the keys and values at every (pooled) input pixel.
        subsample: stride of the max pooling (kernel = stride, ceil mode) applied to the input of phi and g.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        inner: int | None = None,
        stride: int = 1,
        subsample: int = 1,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        inner = inner or max(1, in_channels // 2)
        self.in_channels, self.out_channels, self.inner = in_channels, out_channels, inner
        self.stride, self.subsample = stride, subsample
        self.theta = nn.Conv2d(in_channels, inner, 1)
        self.phi = nn.Conv2d(in_channels, inner, 1, bias=False)  # a key bias adds a constant per query: it cancels
        self.g = nn.Conv2d(in_channels, inner, 1)
        self.out = nn.Conv2d(inner, out_channels, 1, bias=False)  # a BN follows it in every use

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.attend(x))

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """y_i = sum_j softmax_j(theta(x_i) . phi(x_j) / sqrt(inner)) g(x_j), before W_z: (N, inner, Ho, Wo)."""
        s, p = self.stride, self.subsample
        query = self.theta(x[:, :, ::s, ::s] if s > 1 else x)
        source = F.max_pool2d(x, p, p, ceil_mode=True) if p > 1 else x
        n, _, ho, wo = query.shape
        tokens = [t.flatten(2).transpose(1, 2) for t in (query, self.phi(source), self.g(source))]  # (N, L, inner)
        y = F.scaled_dot_product_attention(*tokens)
        return y.transpose(1, 2).reshape(n, self.inner, ho, wo)

    def attention_flops(self, height: int, width: int) -> int:
        """Multiply-adds of the two matrix products (theta^T phi and the weighted sum of g) on an H x W input."""
        queries = output_size(height, self.stride) * output_size(width, self.stride)
        keys = output_size(height, self.subsample) * output_size(width, self.subsample)
        return 2 * queries * keys * self.inner

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, inner={self.inner}, stride={self.stride}, "
            f"subsample={self.subsample}"
        )


class NonLocalBlock(nn.Module):
    """z = BN(W_z y) + x (Wang et al., Eq. 6); the BN weight starts at zero, so the block starts as the identity.

    Args:
        channels: C, in and out.
        subsample: max-pool stride of the keys and values (see ``NonLocal2d``).
    """

    def __init__(self, channels: int, subsample: int = 1) -> None:
        super().__init__()
        self.op = NonLocal2d(channels, subsample=subsample)
        self.bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn(self.op(x))
