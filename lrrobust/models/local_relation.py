"""Local Relation Networks for Image Recognition (Hu et al., ICCV 2019, https://arxiv.org/abs/1904.11491).

The local relation layer of Sec. 4 (Fig. 2): scalar query and key per group of m channels (d-vectors for the
query/key dimension ablation of Table 4), a geometric prior on the relative position, softmax over a k x k
window, aggregation of the input through ``lrrobust.ops.local_relation``, then a value channel transform.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lrrobust.errors import UserError
from lrrobust.ops import local_relation
from lrrobust.ops.reference import local_relation_reference

KERNEL_SIZES = (3, 5, 7, 9, "full")
COMPOSABILITIES = ("sqdiff", "absdiff", "product")
GEO_PRIORS = ("mlp", "table", "none")
NORMALIZATIONS = ("softmax", "none")
QK_DIMS = (1, 2, 4, 8, 16)  # query/key dimension d, the columns of Table 4
FULL_TABLE_SIZE = 15  # side of the learned "table" prior used with kernel_size="full" (see GeometricPrior)


def check_choice(name: str, value: object, choices: tuple) -> None:
    """Raise a UserError naming the option and its valid values unless ``value`` is one of ``choices``."""
    if isinstance(value, bool) or value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise UserError(f"{name} must be one of {valid}; got {value!r}")


def full_kernel_size(height: int, width: int) -> int:
    """Window side that covers the whole feature map from every pixel: 2 * max(H, W) - 1 (Table 3, "full")."""
    return 2 * max(height, width) - 1


# Below this many pixels per image a 1x1 convolution is left to oneDNN: a product per image of a few pixels is
# slower than its convolution (2x2 maps of res5: 2-7x, BENCHMARKS.md).
POINTWISE_MIN_PIXELS = 16


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x1 convolution with ``weight`` (O, C): one matrix product per image (``torch.baddbmm``).

    On the CPU oneDNN's 1x1 convolution of a few channels (a local relation layer's query and key, its value
    transform, the LR stem's transform of 1-3 input channels) costs 1.3-40x this product, forward and backward
    (BENCHMARKS.md). Channels-last inputs and maps below ``POINTWISE_MIN_PIXELS`` pixels take ``F.conv2d``; the
    result is in ``x``'s memory format either way.
    """
    n, _, h, w = x.shape
    if not x.is_contiguous() or h * w < POINTWISE_MIN_PIXELS:
        return F.conv2d(x, weight[:, :, None, None], bias)
    rows = weight.expand(n, -1, -1)
    if bias is None:
        y = torch.bmm(rows, x.flatten(2))
    else:
        y = torch.baddbmm(bias[None, :, None], rows, x.flatten(2))
    # A reshape that autograd does not treat as a view (as torch.matmul's own): the in-place ReLU that follows a
    # transform would otherwise make the backward copy the whole gradient (CopySlices), 2.3x this call's cost.
    return torch.ops.aten._unsafe_view(y, [n, y.shape[1], h, w])


class PointwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(in_channels, out_channels, 1)`` computed by ``pointwise``: the same parameters and state-dict
    keys, so checkpoints of either load in the other."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return pointwise(x, weight.flatten(1), bias)


def relative_positions(kernel_size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(K*K, 2) offsets (dy, dx) of a K x K window from its centre, row-major like the op's window."""
    r = torch.arange(kernel_size, device=device, dtype=dtype) - (kernel_size - 1) // 2
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([dy.reshape(-1), dx.reshape(-1)], dim=1)


class GeometricPrior(nn.Module):
    """The geometric prior f_g(p - p') of Eq. 2, one value per group and relative position (Sec. 4).

    ``kind="mlp"``: two channel transforms on the relative position (dy, dx) with a ReLU between; it
    serves any window size. At inference (eval mode) its output is a fixed table: it is computed once,
    without autograd, and cached until the weights change (keyed on the parameters' ``_version`` counters
    and storage), as Sec. 4 describes. Train and eval mode give the same values.
    ``kind="table"``: the values are parameters (G* in Table 3). For ``kernel_size="full"`` the table has a
    fixed side ``FULL_TABLE_SIZE`` and offsets beyond it take the value at the table's border (clamped).
    ``kind="none"``: zeros (NG in Table 3).

    Args:
        groups: number of groups G (one prior map per group).
        kernel_size: window side, or "full".
        kind: "mlp", "table" or "none".
        hidden: width of the MLP's hidden layer.
    """

    def __init__(self, groups: int, kernel_size: int | str, kind: str = "mlp", hidden: int = 0) -> None:
        super().__init__()
        check_choice("geo_prior", kind, GEO_PRIORS)
        self.groups = groups
        self.kind = kind
        self.kernel_size = kernel_size
        self._cache: tuple[tuple, torch.Tensor] | None = None
        if kind == "mlp":
            hidden = hidden or groups
            self.weight1 = nn.Parameter(torch.empty(hidden, 2))
            self.bias1 = nn.Parameter(torch.empty(hidden))
            self.weight2 = nn.Parameter(torch.empty(groups, hidden))
            self.bias2 = nn.Parameter(torch.zeros(groups))
            nn.init.normal_(self.weight1, std=1.0)
            nn.init.uniform_(self.bias1, -1.0, 1.0)
            nn.init.normal_(self.weight2, std=hidden**-0.5)
        elif kind == "table":
            side = FULL_TABLE_SIZE if kernel_size == "full" else int(kernel_size)
            self.table = nn.Parameter(torch.zeros(groups, side, side))

    def forward(self, kernel_size: int, like: torch.Tensor) -> torch.Tensor:
        """The prior for a ``kernel_size`` window: (G, K, K), in the dtype and on the device of ``like``."""
        if self.kind == "none":
            return like.new_zeros(self.groups, kernel_size, kernel_size)
        if self.kind == "table":
            return self._table(kernel_size).to(like.dtype)
        if self.training or torch.compiler.is_compiling():
            return self._mlp(kernel_size).to(like.dtype)
        key = (kernel_size, like.dtype) + tuple((p._version, p.data_ptr(), p.device) for p in self.parameters())
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self._mlp(kernel_size).to(like.dtype))
        return self._cache[1]

    def train(self, mode: bool = True) -> GeometricPrior:
        """Switching mode drops the eval-mode table (optimizers with fused kernels keep ``_version``)."""
        self._cache = None
        return super().train(mode)

    def _mlp(self, kernel_size: int) -> torch.Tensor:
        pos = relative_positions(kernel_size, self.weight1.device, self.weight1.dtype)
        hidden = F.relu(F.linear(pos, self.weight1, self.bias1))
        return F.linear(hidden, self.weight2, self.bias2).t().reshape(self.groups, kernel_size, kernel_size)

    def _table(self, kernel_size: int) -> torch.Tensor:
        side = self.table.shape[-1]
        if kernel_size == side:
            return self.table
        offsets = torch.arange(kernel_size, device=self.table.device) - (kernel_size - 1) // 2
        idx = (offsets + (side - 1) // 2).clamp(0, side - 1)
        return self.table.index_select(1, idx).index_select(2, idx)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, kind={self.kind!r}, kernel_size={self.kernel_size!r}"


class LocalRelation2d(nn.Module):
    """The local relation layer (Sec. 4, Fig. 2, Eq. 2).

    Query and key are 1x1 channel transforms to one scalar per group of ``m`` channels (G = ceil(C/m)), or
    to a d-vector per group with ``qk_dim`` = d (Table 4); the aggregation weights are softmax(Phi(q, k) + f_g(p - p')) over a k x k window (Eq. 2-5); the input
    is aggregated with them and a 1x1 value channel transform maps it to ``out_channels``. The value
    transform is applied after aggregation, at the output resolution, which is where Eq. 6 counts its
    C^2 HW / s^2 cost; the paper's parameter counts (Table 2, 8) need it (see docs/model_zoo.md).

    Args:
        in_channels: input channels C.
        out_channels: output channels (default C).
        kernel_size: 3, 5, 7, 9 or "full" (the whole feature map: K = 2 max(H, W) - 1 at forward time).
        stride: stride of the aggregation; the query is taken at the output pixels.
        m: channels sharing one aggregation (Table 5).
        composability: "sqdiff" (Eq. 3), "absdiff" (Eq. 4) or "product" (Eq. 5).
        geo_prior: "mlp", "table" (G*) or "none" (NG), see ``GeometricPrior``.
        normalize: "softmax" or "none" (Table 6; "none" runs on the slow pure-PyTorch path).
        qk_dim: query/key dimension d in 1, 2, 4, 8, 16 (Table 4). d > 1 sums Phi over the d components and
            scales it by 1/sqrt(d), as self-attention does (the paper's [25]); it runs on the pure-PyTorch path.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        kernel_size: int | str = 7,
        stride: int = 1,
        m: int = 8,
        composability: str = "sqdiff",
        geo_prior: str = "mlp",
        normalize: str = "softmax",
        qk_dim: int = 1,
    ) -> None:
        super().__init__()
        check_choice("kernel_size", kernel_size, KERNEL_SIZES)
        check_choice("qk_dim", qk_dim, QK_DIMS)
        check_choice("composability", composability, COMPOSABILITIES)
        check_choice("normalize", normalize, NORMALIZATIONS)
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise UserError(f"m (channels per aggregation) must be a positive integer such as 8; got {m!r}")
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise UserError(f"stride must be a positive integer; got {stride!r}")
        out_channels = out_channels or in_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.m = m
        self.groups = -(-in_channels // m)
        self.composability = composability
        self.normalize = normalize
        self.qk_dim = qk_dim
        self.query = PointwiseConv2d(in_channels, self.groups * qk_dim)
        self.key = PointwiseConv2d(in_channels, self.groups * qk_dim)
        self.prior = GeometricPrior(self.groups, kernel_size, geo_prior)
        self.value = PointwiseConv2d(in_channels, out_channels, bias=False)

    def reset_query_key(self) -> None:
        """Query zero, key PyTorch's default: the aggregation starts close to the geometric prior and the
        appearance term grows from there (the paper gives no init; this keeps early training stable)."""
        nn.init.zeros_(self.query.weight)
        nn.init.zeros_(self.query.bias)
        self.key.reset_parameters()

    def window(self, height: int, width: int) -> int:
        """The window side K used for an H x W input.

        A window wider than 2 max(H, W) - 1 reaches only positions outside the image, which take no part
        in the aggregation, so it is cut to that size: the output is the same, the work smaller (8x8 inputs).
        """
        full = full_kernel_size(height, width)
        return full if self.kernel_size == "full" else min(int(self.kernel_size), full)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value(self.aggregate(x))

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        """The local relation aggregation of ``x`` (Eq. 2), before the 1x1 value transform.

        The value transform is linear and per pixel, so it is applied after the aggregation, to the
        (smaller, when strided) output: the same result as aggregating transformed values.
        """
        k = self.window(x.shape[-2], x.shape[-1])
        s = self.stride
        query, key = self.query_key(x)
        prior = self.prior(k, x)
        if self.normalize == "softmax" and self.qk_dim == 1:
            return local_relation(query, key, x, prior, k, s, 1, self.composability)
        normalize = self.normalize == "softmax"
        return local_relation_reference(query, key, x, prior, k, s, 1, self.composability, normalize, self.qk_dim)

    def query_key(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Query (at the output pixels) and key of ``x``: the two 1x1 transforms as one product with their weights
        stacked, 2 G d outputs split afterwards. A strided layer's query is taken from the full-resolution product
        at every s-th pixel: (1 - 1/s^2) G d C HW more multiply-adds than transforming the subsampled input, and
        one product instead of two."""
        weight = torch.cat([self.query.weight, self.key.weight]).flatten(1)
        bias = torch.cat([self.query.bias, self.key.bias])
        # under autocast the product may return another dtype than x: the op takes one dtype
        query, key = pointwise(x, weight, bias).to(x.dtype).split(self.groups * self.qk_dim, dim=1)
        s = self.stride
        return (query[:, :, ::s, ::s] if s > 1 else query), key

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size!r}, stride={self.stride}, "
            f"m={self.m}, groups={self.groups}, composability={self.composability!r}, normalize={self.normalize!r}, "
            f"qk_dim={self.qk_dim}"
        )
