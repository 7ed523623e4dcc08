"""The CPU kernel's two work units side by side on the local relation layers of a network (paper Sec. 4): row
chunks (``LRROBUST_CPU_LANES=rows``) and batch lanes (``=batch``), forward and autograd backward of
``lrrobust.ops.local_relation`` on each distinct layer shape of LR-Net-26 as the dataset builds it, random inputs,
median of ``repeats`` calls after one warm-up, one thread unless told.

Run: python -m lrrobust.bench.cpu_lanes mnist|imagenet WIDTH BATCH [threads]; prints markdown rows (N, C, G, map,
stride, rows fwd / bwd ms, batch fwd / bwd ms) as recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

from lrrobust.data import dataset_info
from lrrobust.models import LocalRelation2d, create_model
from lrrobust.ops import local_relation


def layer_shapes(dataset: str, width: float, batch: int) -> list[tuple[int, int, int, int, tuple[int, ...]]]:
    """(C, G, K, stride, input shape) of every distinct local relation layer of LR-Net-26, in network order."""
    info = dataset_info(dataset)
    model = create_model("lrnet26", info.num_classes or 1000, in_chans=info.in_chans, stem=info.stem, width=width,
                         mean=list(info.mean), std=list(info.std)).eval()
    shapes: list[tuple[int, int, int, int, tuple[int, ...]]] = []

    def hook(layer: LocalRelation2d, inputs, output) -> None:
        x = inputs[0]
        shape = (layer.in_channels, layer.groups, layer.window(*x.shape[-2:]), layer.stride, tuple(x.shape))
        if shape not in shapes:
            shapes.append(shape)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, LocalRelation2d)]
    with torch.no_grad(), torch.device("meta"):
        model.to("meta")(torch.zeros(batch, info.in_chans, info.image_size, info.image_size))
    for handle in handles:
        handle.remove()
    return shapes


def time_layer(shape, lanes: str, repeats: int) -> tuple[float, float]:
    """Median forward and backward milliseconds of the op on this layer shape with ``LRROBUST_CPU_LANES=lanes``."""
    channels, groups, k, stride, (n, _, h, w) = shape
    gen = torch.Generator().manual_seed(0)
    out_h, out_w = -(-h // stride), -(-w // stride)
    q, key, value, prior = (torch.randn(s, generator=gen).requires_grad_(True) for s in
                            ((n, groups, out_h, out_w), (n, groups, h, w), (n, channels, h, w), (groups, k, k)))
    grad = torch.randn(n, channels, out_h, out_w, generator=gen)
    os.environ["LRROBUST_CPU_LANES"] = lanes
    forward, backward = [], []
    try:
        for i in range(repeats + 1):
            start = time.perf_counter()
            out = local_relation(q, key, value, prior, k, stride)
            middle = time.perf_counter()
            out.backward(grad)
            end = time.perf_counter()
            if i > 0:
                forward.append(middle - start)
                backward.append(end - middle)
    finally:
        del os.environ["LRROBUST_CPU_LANES"]
    return statistics.median(forward) * 1e3, statistics.median(backward) * 1e3


def main(dataset: str, width: float, batch: int, threads: int, repeats: int = 7) -> None:
    torch.set_num_threads(threads)
    print("| N, C, G, map, stride | rows fwd / bwd ms | batch fwd / bwd ms |")
    print("|---|---|---|")
    for shape in layer_shapes(dataset, width, batch):
        channels, groups, _, stride, (n, _, h, w) = shape
        rows, lanes = (time_layer(shape, mode, repeats) for mode in ("rows", "batch"))
        print(f"| {n}, {channels}, {groups}, {h}x{w}, {stride} | {rows[0]:.2f} / {rows[1]:.2f} | "
              f"{lanes[0]:.2f} / {lanes[1]:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 1)
