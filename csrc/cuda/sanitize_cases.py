"""A handful of small local relation problems (paper Sec. 4, Eq. 2-5) for compute-sanitizer: the fused op's forward
and backward on each, checked against the float64 reference on the CPU or against each image run alone.

csrc/cuda/gpu_check.sh runs this script under memcheck, racecheck, synccheck and initcheck with PyTorch's caching
allocator off (PYTORCH_NO_CUDA_MEMORY_CACHING=1, so a read past a tensor's end leaves its allocation). One process
with a few cases is far cheaper under the sanitizer than pytest. The cases aim at the launch plans of
csrc/cuda/lr_plan.cuh (48 KiB of shared memory, geo_prior partial sums budgeted at 2^22 entries): shared-memory
tiles (partial ones included), stride 2 (d < s) and stride 2 with dilation 2 (d = s: the gather's inverse index
steps differently), two channel chunks, a full window on a small map, a window too wide for any tile
(global-memory reads in every dtype, even with the 227 KiB an sm_90 block may opt into), and a 1-row map whose
gather pass puts both images in one batch chunk. Several tiles per gather block (when the partial sums would pass
their cap) takes over 2^25 offset-tile steps, too slow under the sanitizer: the planner's unit tests and the
emulator cover it. Every case runs in each dtype asked for (float32 and bfloat16 by default). The self-check on
first use is skipped (LRROBUST_SKIP_SELF_CHECK=1): its reference runs PyTorch kernels the sanitizer need not see.

    python csrc/cuda/sanitize_cases.py [--device cuda|cpu] [--dtypes float32,bfloat16]

Prints one line per case and dtype; exits 1 if a result is not finite or differs from its check, 2 on bad options.
``--device cpu`` runs the same cases through the CPU kernel (a dry run of this script on a machine without a GPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

os.environ["LRROBUST_SKIP_SELF_CHECK"] = "1"  # read at every call of local_relation

import torch

from lrrobust.core.seeding import generator
from lrrobust.ops import local_relation, local_relation_reference
from lrrobust.ops.self_check import TOLERANCES, Problem  # (the self-check's problems and tolerances)

DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
NAMES = ("output", "grad_query", "grad_key", "grad_value", "grad_geo_prior")


# A case: one small problem (the self-check's Problem: N images, C channels in G groups, H x W, a K x K window,
# stride, dilation, composability) and its check, "reference" (the float64 reference on the CPU) or "images" (the
# batch against each image alone, for windows whose reference would unfold gigabytes).
CASES = (
    (Problem("tiled 7x7, m = 8, partial tiles", 2, 16, 2, 20, 34, 7, 1, 1, "sqdiff"), "reference"),
    (Problem("stride 2, m = 4", 2, 12, 3, 11, 13, 5, 2, 1, "absdiff"), "reference"),
    (Problem("dilation 2, m = 10 (two channel chunks)", 1, 19, 2, 12, 10, 3, 1, 2, "product"), "reference"),
    (Problem("stride 2, dilation 2, K = 9", 2, 16, 2, 15, 17, 9, 2, 2, "sqdiff"), "reference"),
    (Problem("full window K = 23 on 5 x 12", 1, 4, 2, 5, 12, 23, 1, 1, "sqdiff"), "reference"),
    # Reach 60 on 120 x 120: the smallest tile clipped to the map holds ~14,000 pixels, over 227 KiB in bfloat16.
    (Problem("untiled: K = 9, dilation 15 on 120 x 120", 1, 8, 1, 120, 120, 9, 1, 15, "absdiff"), "reference"),
    # Gather pass: G*K*K*tiles = 3969 * 532 geo_prior partial sums per image, over half the budget, and its 532
    # blocks already make 4 waves of an H200's 132 multiprocessors, so both images share one batch chunk (the image
    # loop inside a block, and its barrier); tiled. The largest case (~4 * 10^6
    # warp-offset steps): last, so a time limit cuts it, not the others.
    (Problem("two images per gather chunk: K = 63 on 1 x 17024", 2, 8, 1, 1, 17024, 63, 1, 1, "product"), "images"),
)


def make_inputs(case: Problem, dtype: torch.dtype) -> list[torch.Tensor]:
    """query, key, value, geo_prior and grad_out on the CPU in ``dtype``, from a generator of the case's own."""
    ho, wo = -(-case.h // case.s), -(-case.w // case.s)
    shapes = [
        (case.n, case.g, ho, wo),
        (case.n, case.g, case.h, case.w),
        (case.n, case.c, case.h, case.w),
        (case.g, case.k, case.k),
        (case.n, case.c, ho, wo),
    ]
    gen = generator("lrrobust sanitize cases", case.name)
    return [torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype) for shape in shapes]


def fused(case: Problem, inputs: list[torch.Tensor], device: str) -> list[torch.Tensor]:
    """Output and the four gradients of ``local_relation`` on ``device``, back on the CPU (copies made by memcpy,
    so PyTorch launches no kernel of its own around the op's)."""
    *tensors, grad_out = inputs
    leaves = [t.detach().to(device).requires_grad_() for t in tensors]
    out = local_relation(*leaves, case.k, case.s, case.d, case.composability)
    grads = torch.autograd.grad(out, leaves, grad_out.to(device))
    return [t.detach().cpu() for t in (out, *grads)]


def reference(case: Problem, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The same five results from the float64 reference on the CPU."""
    *tensors, grad_out = inputs
    leaves = [t.double().requires_grad_() for t in tensors]
    out = local_relation_reference(*leaves, case.k, case.s, case.d, case.composability)
    return [out.detach(), *torch.autograd.grad(out, leaves, grad_out.double())]


def image_by_image(case: Problem, inputs: list[torch.Tensor], device: str) -> list[torch.Tensor]:
    """The five results of the batch assembled from each image run alone: per-image results concatenated, the
    geo_prior gradient summed (in float64)."""
    *tensors, grad_out = inputs
    runs = [
        fused(replace(case, n=1), [t[i : i + 1] for t in tensors[:3]] + [tensors[3], grad_out[i : i + 1]], device)
        for i in range(case.n)
    ]
    joined = [torch.cat([run[j] for run in runs]) for j in range(4)]
    return [*joined, sum(run[4].double() for run in runs)]


def worst(got: list[torch.Tensor], want: list[torch.Tensor], dtype: torch.dtype) -> tuple[float, str]:
    """The largest |got - want| / (TOLERANCES[dtype] * (1 + max|want|)) over the five results, and where."""
    ratios = []
    for name, a, b in zip(NAMES, got, want):
        if a.shape != b.shape or not torch.isfinite(a).all():
            return float("inf"), f"{name} ({'shape' if a.shape != b.shape else 'not finite'})"
        bound = TOLERANCES[dtype] * (1.0 + b.double().abs().max().item())
        ratios.append(((a.double() - b.double()).abs().max().item() / bound, name))
    return max(ratios)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: " + ", ".join(DTYPES))
    args = parser.parse_args(argv)
    dtypes = [x.strip() for x in args.dtypes.split(",") if x.strip()]
    if not dtypes or any(x not in DTYPES for x in dtypes):
        print(
            f"error: --dtypes takes a comma-separated list of {', '.join(DTYPES)}; got {args.dtypes!r}", file=sys.stderr
        )
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA GPU is available on this machine; use --device cpu", file=sys.stderr)
        return 2
    failed = 0
    for case, check in CASES:
        for name in dtypes:
            dtype = DTYPES[name]
            start = time.perf_counter()
            inputs = make_inputs(case, dtype)
            got = fused(case, inputs, args.device)
            want = reference(case, inputs) if check == "reference" else image_by_image(case, inputs, args.device)
            ratio, where = worst(got, want, dtype)
            ok = ratio <= 1.0
            failed += not ok
            print(
                f"{'ok  ' if ok else 'FAIL'} {case.name}, {name}: worst {where} at {ratio:.3g} of its tolerance "
                f"(against {'the reference' if check == 'reference' else 'each image alone'}), "
                f"{time.perf_counter() - start:.2f} s",
                flush=True,
            )
    if args.device == "cuda":
        torch.cuda.synchronize()
    print(f"{len(CASES) * len(dtypes) - failed} of {len(CASES) * len(dtypes)} case runs agree ({args.device})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
