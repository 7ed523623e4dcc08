"""Table 4 query/key dimension: time LocalRelation2d(qk_dim=d) for d in 1, 2, 4, 8, 16 at the four LR-Net-26 stage
shapes (batch 8, K = 7, m = 8). Run: python -m lrrobust.bench.qk_dim cpu|cuda [threads]; prints markdown rows
(C, map, d, fwd ms, fwd+bwd ms, peak MB) as recorded in BENCHMARKS.md."""

from __future__ import annotations

import sys

import torch

from lrrobust.bench.timing import measure
from lrrobust.models import LocalRelation2d


def main(dev: str, threads: int) -> None:
    torch.set_num_threads(threads)
    for c, s in ((100, 56), (200, 28), (400, 14), (800, 7)):
        x = torch.randn(8, c, s, s, device=dev, requires_grad=True)
        for d in (1, 2, 4, 8, 16):
            layer = LocalRelation2d(c, kernel_size=7, m=8, qk_dim=d).to(dev)

            def fwd(layer=layer, x=x):
                with torch.no_grad():
                    layer(x)

            def fwd_bwd(layer=layer, x=x):
                layer(x).sum().backward()

            a, b = measure(fwd, dev, repeats=5, max_seconds=4), measure(fwd_bwd, dev, repeats=5, max_seconds=4)
            print(f"| {c} | {s}x{s} | {d} | {a.ms:.2f} | {b.ms:.2f} | {b.peak_mb:.0f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cpu", int(sys.argv[2]) if len(sys.argv) > 2 else 2)
