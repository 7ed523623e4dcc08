"""The local relation aggregation at one output pixel, term by term (paper Sec. 4, Eq. 2-5).

For the query pixel p' of a layer and each position p of its K x K window, per group g:
appearance composability Phi(q_p', k_p) (Eq. 3-5), geometric prior f_g(p - p'), and the aggregation weight
omega(p', p) = softmax over the window of their sum (Eq. 2; positions outside the image take no part). Computed
from the layer's own query, key and prior modules, the way ``lrrobust.ops.reference`` computes the whole map,
for scalar query and key (d = 1, the paper's default) and d-vectors (Table 4: Phi summed over the d components
and scaled by 1/sqrt(d)).
"""

from __future__ import annotations

import dataclasses

import torch

from lrrobust.errors import UserError
from lrrobust.models.local_relation import LocalRelation2d, relative_positions
from lrrobust.ops.reference import composability


@dataclasses.dataclass(frozen=True)
class Relation:
    """The aggregation of one layer at output pixel ``pixel`` for one input, per group g and window offset.

    Window tensors are (G, K, K), indexed [g, dy + r, dx + r] with r = (K - 1) // 2; offsets outside the image
    are NaN in ``appearance`` and ``logits`` and 0 in ``weights``.
    """

    pixel: tuple[int, int]  # (y, x) on the layer's output grid
    centre: tuple[int, int]  # (y, x) of the query on the layer's input grid: pixel * stride
    window: int  # K
    query_map: torch.Tensor  # (G, d, Ho, Wo): q at every output pixel
    key_map: torch.Tensor  # (G, d, H, W): k at every input pixel
    inside: torch.Tensor  # (K, K) bool: the window position lies in the image
    appearance: torch.Tensor  # Phi(q_p', k_p)
    prior: torch.Tensor  # f_g(p - p')
    logits: torch.Tensor  # appearance + prior
    weights: torch.Tensor  # omega(p', p)


def output_grid(layer: LocalRelation2d, height: int, width: int) -> tuple[int, int]:
    """The layer's output size on an H x W input: ceil(H / stride) x ceil(W / stride)."""
    s = layer.stride
    return -(-height // s), -(-width // s)


def check_pixel(layer_name: str, pixel: tuple[int, int], grid: tuple[int, int]) -> None:
    """A UserError unless ``pixel`` lies on the layer's output grid."""
    (y, x), (ho, wo) = pixel, grid
    if not (0 <= y < ho and 0 <= x < wo):
        raise UserError(f"--pixel {y},{x} lies outside the {ho}x{wo} output of layer {layer_name}; give Y,X with "
                        f"0 <= Y < {ho} and 0 <= X < {wo}")


@torch.no_grad()
def relation_at(layer: LocalRelation2d, x: torch.Tensor, pixel: tuple[int, int]) -> Relation:
    """The terms of Eq. 2 at output ``pixel`` of ``layer`` for its input ``x`` (1, C, H, W), in float64."""
    h, w = x.shape[-2:]
    k, s = layer.window(h, w), layer.stride
    groups, d = layer.groups, getattr(layer, "qk_dim", 1)
    query_map = layer.query(x[:, :, ::s, ::s] if s > 1 else x)[0].double()
    query_map = query_map.reshape(groups, d, *query_map.shape[-2:])
    key_map = layer.key(x)[0].double().reshape(groups, d, h, w)
    prior = layer.prior(k, x).double()
    y, x_ = pixel
    cy, cx = y * s, x_ * s
    offsets = relative_positions(k, key_map.device, torch.long)
    ys, xs = cy + offsets[:, 0], cx + offsets[:, 1]
    inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    keys = key_map[:, :, ys.clamp(0, h - 1), xs.clamp(0, w - 1)]  # (G, d, K*K)
    phi = composability(query_map[:, :, y, x_].unsqueeze(-1), keys, layer.composability)
    appearance = (phi.sum(dim=1) / d**0.5).masked_fill(~inside, float("nan"))  # (G, K*K)
    logits = appearance + prior.reshape(groups, k * k)
    if layer.normalize == "softmax":
        weights = logits.masked_fill(~inside, float("-inf")).softmax(dim=1)
    else:  # Table 6, "none": the logits themselves weigh the window
        weights = logits.masked_fill(~inside, 0.0)
    shape = (groups, k, k)
    return Relation((y, x_), (cy, cx), k, query_map, key_map, inside.reshape(k, k), appearance.reshape(shape),
                    prior, logits.reshape(shape), weights.reshape(shape))
