"""Where a step's time goes: torch.profiler self time of ``lrrobust bench train``'s steps summed by kind (1x1, 3x3
and 7x7 convolutions, the local relation op, the 1x1 products of ``PointwiseConv2d``, everything else), per model,
one thread. This is the breakdown BENCHMARKS.md gives for LR-Net beside ResNet (issue 19).

Run: python -m lrrobust.bench.step_profile DATASET WIDTH BATCH train|adv_train|attack [models]
"""

from __future__ import annotations

import collections
import sys

import torch
from torch.profiler import profile

from lrrobust.attacks.pgd import PGD, default_step_size
from lrrobust.bench.train import BENCH_MODELS, _Bench

CONVOLUTIONS = {"aten::convolution_backward": 2, "aten::mkldnn_convolution": 1}  # the weight's position in the inputs


def kind_of(event) -> str:
    if event.name in CONVOLUTIONS:
        weight = event.input_shapes[CONVOLUTIONS[event.name]] if event.input_shapes else []
        return f"conv {weight[2]}x{weight[3]}" if len(weight) == 4 else "conv"
    if "local_relation" in event.name:  # the op and its autograd node, whose self time is the forward kernel's
        return "local relation op"
    if event.name in ("aten::bmm", "aten::baddbmm"):
        return "1x1 products"
    return "other"


def breakdown(bench: _Bench, step: str, repeats: int = 3) -> dict[str, float]:
    """Milliseconds of profiler self time per step, by kind; operators called inside another aten operator are
    counted in their caller."""
    for _ in range(2):
        bench.step(step)
    with profile(record_shapes=True) as prof:
        for _ in range(repeats):
            bench.step(step)
    totals: collections.Counter = collections.Counter()
    for event in prof.events():
        parent = event.cpu_parent
        if parent is not None and parent.name.startswith("aten::"):
            continue
        totals[kind_of(event)] += event.self_cpu_time_total / 1e3 / repeats
    return dict(totals.most_common())


def main(dataset: str, width: float, batch: int, step: str, models: tuple[str, ...] = BENCH_MODELS) -> None:
    torch.set_num_threads(1)
    eps = 16 / 255
    attack = PGD(name="training", eps=eps, role="training", step_size=default_step_size(eps, 16), steps=16,
                 random_start=True, targeted=True)
    for name in models:
        bench = _Bench(name, torch.device("cpu"), dataset, width, None, batch, attack, False, False)
        parts = breakdown(bench, step)
        print(f"{name} {step}: {sum(parts.values()):.1f} ms = " + " + ".join(f"{k} {v:.1f}" for k, v in parts.items()))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
         tuple(sys.argv[5].split(",")) if len(sys.argv) > 5 else BENCH_MODELS)
