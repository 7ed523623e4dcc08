"""Runs the CUDA kernels of the local relation op (paper Sec. 4) in the CPU emulator and checks them.

A development check for machines without a GPU: the kernel and launcher source of csrc/cuda is compiled
for the host against emu/lr_emu.cuh (fibers for threads, barriers, warp shuffles, NaN-filled shared
memory) and compared with lrrobust.ops.reference: forward and all four gradients, in both the shared-memory and
the global-memory variants (the row-stacked stride-1 kernels included), the planner's clipped tiles, batch
splits and tile runs, memory layouts read in place, under several thread and block schedules; inputs sit
inside NaN-filled buffers so an out-of-bounds read shows as NaN. It checks what can be checked without a GPU (index math, tiles, halos,
barriers, reductions, determinism), not speed, the real warp scheduler or the hardware exp.

    .venv/bin/python csrc/cuda/emu/check_emulated.py [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import random
import sys
import tempfile
import time

import torch
from torch.utils.cpp_extension import load

from lrrobust.ops.reference import local_relation_reference, log_sum_exp_reference

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = ("sqdiff", "absdiff", "product")
BIG = 1 << 40  # a shared-memory limit that lets every tile fit
SMEM = 48 * 1024
BUDGET = 1 << 22
CAP = 1 << 25


def build():
    # One build folder per checkout: ninja rebuilds when this checkout's kernel headers change.
    tag = hashlib.sha1(HERE.encode()).hexdigest()[:10]
    build_dir = os.path.join(tempfile.gettempdir(), f"lr_cuda_emu_build_{tag}")
    os.makedirs(build_dir, exist_ok=True)
    return load(
        name="lr_cuda_emu",
        sources=[os.path.join(HERE, "emu_ext.cpp")],
        extra_cflags=["-O2", "-Wno-unknown-pragmas"],
        build_directory=build_dir,
        verbose=False,
    )


def padded(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of t in the middle of a NaN-filled buffer: reads past either end give NaN."""
    pad = 4096
    buf = torch.full((t.numel() + 2 * pad,), float("nan"), dtype=t.dtype)
    out = buf[pad : pad + t.numel()].view(t.shape)
    out.copy_(t)
    return out


def make_inputs(n, c, g, h, w, k, s, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ho, wo = -(-h // s), -(-w // s)
    q = torch.randn(n, g, ho, wo, generator=gen, dtype=torch.float64)
    key = torch.randn(n, g, h, w, generator=gen, dtype=torch.float64)
    v = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    geo = torch.randn(g, k, k, generator=gen, dtype=torch.float64)
    go = torch.randn(n, c, ho, wo, generator=gen, dtype=torch.float64)
    return [x.to(dtype) for x in (q, key, v, geo, go)]


def reference_grads(q, key, v, geo, go, k, s, d, kind):
    leaves = [x.detach().double().requires_grad_(True) for x in (q, key, v, geo)]
    out = local_relation_reference(*leaves, k, s, d, kind)
    grads = torch.autograd.grad(out, leaves, go.double())
    return out.detach(), grads


def check_case(ext, n, c, g, h, w, k, s, d, kind, smem_limit, budget=BUDGET, dtype=torch.float64, seed=0,
               schedule=(0, 0, 0), want_tiled=None, cap=CAP, min_blocks=0):
    """Emulated forward and backward against the reference; returns the plan used."""
    ext.set_schedule(*schedule)
    q, key, v, geo, go = make_inputs(n, c, g, h, w, k, s, dtype, seed)
    ki = KINDS.index(kind)
    plan = ext.plan(q, key, v, geo, k, s, d, ki, smem_limit, budget, cap, min_blocks)
    if want_tiled is not None:
        assert plan[2] == want_tiled and plan[10] == want_tiled, (plan, want_tiled)
        # The forward's row-stacked fast path serves every tiled stride-1, dilation-1 window (plan[18] rows).
        assert plan[18] == (4 if want_tiled and s == 1 and d == 1 and k > 1 else 1), plan
    out, lse = ext.forward_lse(padded(q), padded(key), padded(v), padded(geo), k, s, d, ki, smem_limit)
    grads = ext.backward(padded(go), padded(q), padded(key), padded(v), padded(geo), k, s, d, ki, smem_limit, budget,
                         cap, min_blocks)
    ref_out, ref_grads = reference_grads(q, key, v, geo, go, k, s, d, kind)
    tol = {torch.float64: 1e-10, torch.float32: 2e-4, torch.float16: 3e-2, torch.bfloat16: 1.5e-1}[dtype]
    label = f"n={n} c={c} g={g} {h}x{w} K={k} s={s} d={d} {kind} {dtype} smem={smem_limit} plan={plan}"
    # The forward's second result, which the backward reads its weights from: log2 sum exp(logits), in opmath.
    ref_lse = log_sum_exp_reference(q.double(), key.double(), geo.double(), k, s, d, kind)
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32), (label, lse.dtype)
    lse_err = (lse.double() - ref_lse).abs().max().item() / (ref_lse.abs().max().item() + 1.0)
    assert lse.shape == ref_lse.shape and lse_err < min(tol, 1e-4), f"{label}: lse max error {lse_err:.3g}"
    for name, got, ref in zip(("out", "grad_query", "grad_key", "grad_value", "grad_geo"), [out, *grads],
                              [ref_out, *ref_grads]):
        assert got.shape == ref.shape and got.dtype == dtype, (label, name, got.shape, ref.shape)
        assert torch.isfinite(got).all(), f"{label}: {name} has NaN/inf (out-of-bounds or unsynchronised read)"
        scale = ref.abs().max().item() + 1.0
        err = (got.double() - ref).abs().max().item() / scale
        assert err < tol, f"{label}: {name} max error {err:.3g} (relative to {scale:.3g})"
    return plan, out, grads


def same_pattern(got: torch.Tensor, ref: torch.Tensor, tol: float) -> bool:
    """Same NaN, +inf and -inf positions, and the finite values equal within tol (relative to their scale)."""
    if not (torch.equal(got.isnan(), ref.isnan()) and torch.equal(got == float("inf"), ref == float("inf"))
            and torch.equal(got == -float("inf"), ref == -float("inf"))):
        return False
    finite = torch.isfinite(ref)
    if not finite.any():
        return True
    return (got[finite].double() - ref[finite]).abs().max().item() <= tol * (ref[finite].abs().max().item() + 1.0)


def check_nonfinite(ext, quick: bool) -> int:
    """inf, -inf and NaN inputs: the forward and all four gradients follow the reference (torch.softmax's IEEE
    propagation: a window of -inf logits, or with a +inf or NaN logit, gives NaN), in both variants."""
    special = torch.tensor([float("inf"), -float("inf"), float("nan")], dtype=torch.float64)
    cases = [(1, 4, 2, 6, 7, 3, 1, 1), (1, 6, 3, 9, 8, 5, 2, 1), (2, 3, 1, 7, 9, 3, 1, 2), (1, 4, 2, 5, 5, 1, 1, 1)]
    count = 0
    for seed in range(6 if quick else 30):
        cfg = cases[seed % len(cases)]
        *_, k, s, d = cfg
        kind = KINDS[seed % 3]
        q, key, v, geo, go = make_inputs(*cfg[:7], seed=seed)
        gen = torch.Generator().manual_seed(seed)
        tensors = [q, key, v, geo]
        for i, t in enumerate(tensors):  # one input (or all, every fifth seed) gets ~10% non-finite entries
            if seed % 5 == 4 or i == seed % 4:
                hit = torch.rand(t.shape, generator=gen) < 0.1
                t[hit] = special[torch.randint(0, 3, (int(hit.sum()),), generator=gen)]
        if seed % 3 == 0:
            geo[0] = -float("inf")  # group 0: every window's logits are -inf
        ref_out, ref_grads = reference_grads(q, key, v, geo, go, k, s, d, kind)
        for smem, dtype in itertools.product((BIG, 0), (torch.float64, torch.float32)):
            x = [t.to(dtype) for t in (q, key, v, geo, go)]
            ki = KINDS.index(kind)
            out = ext.forward(*x[:4], k, s, d, ki, smem)
            grads = ext.backward(x[4], *x[:4], k, s, d, ki, smem, BUDGET)
            tol = 1e-10 if dtype == torch.float64 else 1e-3
            for name, got, ref in zip(("out", "grad_query", "grad_key", "grad_value", "grad_geo"), [out, *grads],
                                      [ref_out, *ref_grads]):
                assert same_pattern(got, ref, tol), f"non-finite seed {seed} {cfg} {kind} {dtype} smem={smem}: {name}"
            count += 1
    return count


def check_bounds(ext) -> None:
    """Window parameters beyond the shared bounds (csrc/local_relation_checks.h) are errors, not int32 overflow."""
    _, key, v, _, _ = make_inputs(1, 2, 1, 4, 5, 1, 1)
    for k, s, d in ((1, 1, 2**40), (1, 1, 2**28 + 1), (1, 2**28 + 1, 1), (3, 1, 2**28 + 1), (5, 1, 2**27 + 1)):
        geo = torch.zeros(1, k, k, dtype=torch.float64)
        q = torch.zeros(1, 1, -(-4 // s), -(-5 // s), dtype=torch.float64)
        go = torch.zeros(1, 2, *q.shape[2:], dtype=torch.float64)
        for backward in (False, True):
            try:
                if backward:
                    ext.backward(go, q, key, v, geo, k, s, d, 0, SMEM, BUDGET)
                else:
                    ext.forward(q, key, v, geo, k, s, d, 0, SMEM)
            except RuntimeError as error:
                assert "local_relation" in str(error), error
            else:
                raise AssertionError(f"K={k} s={s} d={d} was accepted (backward={backward})")


def check_layouts(ext) -> int:
    """Channels-last tensors, channel slices and an expanded grad_out are read in place (element (n, c, y, x) at
    n*sn + c*sc + (y*W + x)*pix); results take the memory format of the input they mirror."""
    cl = torch.channels_last
    count = 0
    for cfg, smem in itertools.product([(2, 16, 2, 9, 10, 7, 1, 1), (1, 6, 3, 8, 9, 5, 2, 2), (2, 10, 2, 6, 7, 3, 1, 1)],
                                       (BIG, 0)):
        n, c, g, h, w, k, s, d = cfg
        q, key, v, geo, go = make_inputs(*cfg[:7])
        wide = torch.randn(n, c + 5, h, w, dtype=torch.float64)
        variants = {
            "channels-last": [x.contiguous(memory_format=cl) for x in (q, key, v)] + [go.contiguous(memory_format=cl)],
            "value channels-last": [q, key, v.contiguous(memory_format=cl), go],
            "value a channel slice": [q, key, wide[:, 2:2 + c], go],
            "channels-last slice": [q, key.contiguous(memory_format=cl), wide.contiguous(memory_format=cl)[:, 3:3 + c],
                                    go],
            "expanded grad_out": [q, key, v, torch.ones(1, 1, 1, 1, dtype=torch.float64).expand(go.shape)],
            "transposed (copied)": [q, key, v.transpose(2, 3).contiguous().transpose(2, 3), go],
        }
        for label, (qq, kk, vv, gg) in variants.items():
            out = ext.forward(qq, kk, vv, geo, k, s, d, 0, smem)
            grads = ext.backward(gg, qq, kk, vv, geo, k, s, d, 0, smem, BUDGET)
            ref_out, ref_grads = reference_grads(qq.contiguous(), kk.contiguous(), vv.contiguous(), geo,
                                                 gg.contiguous(), k, s, d, "sqdiff")
            for name, got, ref in zip(("out", "grad_query", "grad_key", "grad_value", "grad_geo"), [out, *grads],
                                      [ref_out, *ref_grads]):
                err = (got - ref).abs().max().item() / (ref.abs().max().item() + 1.0)
                assert err < 1e-10, f"{cfg} {label} smem={smem}: {name} max error {err:.3g}"
            for got, like in ((out, vv), (grads[0], qq), (grads[1], kk), (grads[2], vv)):
                want = cl if like.is_contiguous(memory_format=cl) and not like.is_contiguous() else None
                if want is not None:
                    assert got.is_contiguous(memory_format=cl), f"{cfg} {label}: a result lost channels-last"
            count += 1
    return count


def configs(quick: bool):
    # (n, c, g, h, w, k, s, d)
    base = [
        (2, 6, 3, 7, 9, 3, 1, 1),     # m = 2
        (2, 5, 2, 9, 6, 5, 1, 1),     # m = 3, last group of 2
        (1, 8, 1, 6, 7, 3, 2, 1),     # m = 8, stride 2
        (2, 7, 7, 5, 8, 5, 3, 1),     # m = 1, stride 3
        (1, 4, 2, 11, 10, 7, 1, 2),   # dilation 2
        (1, 6, 2, 10, 13, 9, 2, 2),   # stride 2, dilation 2
        (1, 3, 1, 8, 5, 5, 3, 2),     # stride 3, dilation 2: pixels no window reaches
        (1, 20, 2, 6, 6, 3, 1, 1),    # m = 10: two channel chunks
        (2, 17, 1, 5, 7, 3, 2, 1),    # m = 17: three chunks, the last of 1
        (1, 13, 2, 4, 4, 5, 1, 1),    # m = 7, last group of 6
        (1, 3, 3, 5, 4, 11, 1, 1),    # K = 11 >= 2*max(H, W) - 1: the whole map
        (1, 2, 1, 3, 6, 13, 2, 1),    # K = 13 > full map, stride 2
        (1, 4, 2, 1, 9, 3, 1, 1),     # a single row
        (2, 2, 2, 34, 3, 3, 1, 1),    # several tiles down
        (1, 2, 1, 3, 37, 5, 2, 1),    # several tiles across
        (1, 3, 1, 18, 40, 3, 1, 1),   # several tiles both ways, partial tiles
        (1, 2, 1, 1, 1, 3, 1, 1),     # one pixel
        (1, 2, 2, 4, 5, 1, 1, 1),     # K = 1
    ]
    if quick:
        base = base[:4] + base[10:11]
    return base


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    t0 = time.time()
    ext = build()
    print(f"built in {time.time() - t0:.0f}s", flush=True)
    torch.manual_seed(0)
    count = 0
    t0 = time.time()
    for cfg in configs(args.quick):
        for kind in KINDS:
            for smem in (BIG, 0):
                check_case(ext, *cfg, kind, smem, want_tiled=1 if smem == BIG else 0)
                count += 1
    print(f"float64, tiled and global, every Phi: {count} cases OK ({time.time() - t0:.0f}s)", flush=True)

    # The production limit (48 KiB): what it picks must agree too, including the tile shrinking.
    for cfg in [(1, 8, 1, 20, 40, 7, 1, 1), (1, 16, 2, 12, 12, 9, 3, 2), (1, 4, 1, 9, 9, 17, 1, 3)]:
        plan, _, _ = check_case(ext, *cfg, "sqdiff", SMEM)
        print("48 KiB plan", cfg, plan, flush=True)

    # Batch split of the gather pass: one chunk of all images (n loop in the block), and one image per chunk.
    for budget in (1, BUDGET):
        plan, _, _ = check_case(ext, 3, 4, 2, 6, 5, 3, 1, 1, "sqdiff", BIG, budget=budget)
        assert plan[14] == (1 if budget == 1 else 3), plan
        plan, _, _ = check_case(ext, 3, 18, 2, 5, 6, 5, 2, 1, "absdiff", 0, budget=budget)
    # The waves minimum splits the batch past the budget; a cap under one chunk makes blocks visit runs of tiles
    # (plan[16] tiles per block, plan[17] runs), whose partial sums must come out as with one tile per block.
    plan, _, _ = check_case(ext, 4, 6, 2, 20, 40, 5, 1, 1, "sqdiff", BIG, budget=1, min_blocks=10**6)
    assert plan[14] == 4 and plan[16] == 1, plan
    # 6 tiles of 32 x 8 on 20 x 40, 2 groups x 25 offsets per slot: (batch chunks, tiles per block, runs)
    for cap, want in ((50, (1, 6, 1)), (100, (1, 3, 2)), (200, (1, 2, 3)), (600, (2, 1, 6))):
        for kind, smem in (("sqdiff", BIG), ("product", 0)):
            plan, _, _ = check_case(ext, 3, 6, 2, 20, 40, 5, 1, 1, kind, smem, budget=1, cap=cap, min_blocks=10**6)
            assert (plan[14], plan[16], plan[17]) == want, (cap, plan)
            assert 2 * 25 * plan[14] * plan[17] <= max(cap, 2 * 25), (cap, plan)
        check_case(ext, 2, 3, 1, 9, 37, 9, 2, 2, "absdiff", BIG, budget=1, cap=81 * 2)
    print("gather batch split, waves minimum and tile runs OK", flush=True)

    # Schedules: reversed and random thread orders expose missing barriers; block orders expose blocks that
    # write the same place. Results must be bitwise equal under every schedule.
    sched_cfgs = [(2, 10, 2, 9, 12, 5, 1, 1), (2, 6, 3, 10, 7, 3, 2, 2), (1, 17, 1, 6, 6, 3, 1, 1)]
    for cfg, smem in itertools.product(sched_cfgs, (BIG, 0)):
        results = []
        for schedule in ((0, 0, 0), (1, 1, 0), (2, 2, 1), (2, 2, 7)):
            _, out, grads = check_case(ext, *cfg, "sqdiff", smem, schedule=schedule)
            results.append([out, *grads])
        for other in results[1:]:
            for a, b in zip(results[0], other):
                assert torch.equal(a, b), f"{cfg}: results differ between schedules"
    print("schedules: bitwise equal, no unsynchronised read", flush=True)

    # Low precision against the float64 reference (loose), both variants.
    for dtype, cfg, smem in itertools.product((torch.float32, torch.float16, torch.bfloat16),
                                              [(2, 16, 2, 9, 10, 7, 1, 1), (1, 6, 3, 8, 9, 5, 2, 2)], (SMEM, 0)):
        check_case(ext, *cfg, random.choice(KINDS), smem, dtype=dtype)
    print("float32 / float16 / bfloat16 OK", flush=True)

    # Non-contiguous inputs (a transposed query is copied, a strided channel view read in place) and an empty batch
    # (the launcher's early return).
    q, key, v, geo, go = make_inputs(2, 4, 2, 6, 7, 3, 1)
    out = ext.forward(q.transpose(2, 3).contiguous().transpose(2, 3), key, v[:, ::1], geo, 3, 1, 1, 0, BIG)
    ref_out, _ = reference_grads(q, key, v, geo, go, 3, 1, 1, "sqdiff")
    assert torch.allclose(out, ref_out, atol=1e-12)
    vt = torch.randn(2, 6, 6, 9, dtype=torch.float64)[:, :4, :, 1:-1]  # non-contiguous view
    out = ext.forward(q, key, vt, geo, 3, 1, 1, 0, BIG)
    ref_out, _ = reference_grads(q, key, vt, geo, go, 3, 1, 1, "sqdiff")
    assert torch.allclose(out, ref_out, atol=1e-12)
    e = make_inputs(0, 4, 2, 6, 7, 3, 1)
    out = ext.forward(*e[:4], 3, 1, 1, 0, SMEM)
    grads = ext.backward(e[4], *e[:4], 3, 1, 1, 0, SMEM, BUDGET)
    assert out.shape == (0, 4, 6, 7) and all(gr.shape == x.shape for gr, x in zip(grads, e[:4]))
    assert grads[3].abs().sum() == 0
    print("non-contiguous and empty OK", flush=True)
    print(f"layouts read in place: {check_layouts(ext)} runs OK", flush=True)
    print(f"non-finite inputs follow the reference: {check_nonfinite(ext, args.quick)} runs OK", flush=True)
    check_bounds(ext)
    print("out-of-bound kernel size, stride and dilation rejected", flush=True)
    print(f"all emulated checks passed in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
