"""The CUDA kernels of the local relation op (paper Sec. 4, Eq. 2-5) against the pure-PyTorch reference.

Every test needs a CUDA GPU and is skipped without one. Shapes cover strides 1-3, dilations 1-2, K = 3, 5,
7, 9 and windows beyond the whole map, m = 1, 2, 8 and more than 8 (channel chunks), C not a multiple of G,
odd and non-square maps, all three composability terms, both kernel variants (shared-memory tiles, and
direct global reads when a tile would not fit), and the LR-Net-26 stage shapes. Two tests marked slow check the
op at scale: tensors of over 2^31 elements (int32 offsets would overflow) and a bitwise-deterministic backward at
batch 32 (csrc/cuda/gpu_check.sh runs them in its "scale" part, and the rest in its "tests" part).
"""

from __future__ import annotations

import pytest
import torch

from lrrobust import ops
from lrrobust.ops import local_relation
from lrrobust.ops.reference import local_relation_reference
from lrrobust.ops.self_check import TOLERANCES  # the CUDA self-check on first use holds the kernels to the same

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

KINDS = ("sqdiff", "absdiff", "product")

# (n, c, g, h, w, k, s, d): m = ceil(c / g)
CASES = [
    (2, 6, 3, 7, 9, 3, 1, 1),     # m = 2
    (2, 5, 2, 9, 6, 5, 1, 1),     # m = 3, last group of 2
    (1, 8, 1, 6, 7, 3, 2, 1),     # m = 8, stride 2
    (2, 7, 7, 5, 8, 5, 3, 1),     # m = 1, stride 3
    (1, 4, 2, 11, 10, 7, 1, 2),   # dilation 2
    (1, 6, 2, 10, 13, 9, 2, 2),   # stride 2, dilation 2
    (1, 3, 1, 8, 5, 5, 3, 2),     # stride 3, dilation 2: some pixels are in no window
    (1, 20, 2, 6, 6, 3, 1, 1),    # m = 10: two channel chunks
    (2, 17, 1, 5, 7, 3, 2, 1),    # m = 17: three channel chunks
    (1, 13, 2, 4, 4, 5, 1, 1),    # m = 7, last group of 6
    (1, 16, 2, 12, 12, 9, 3, 2),  # m = 8, K = 9, s = 3, d = 2: no tile fits in float64
    (1, 3, 3, 5, 4, 11, 1, 1),    # K = 11 > 2*max(H, W) - 1: the whole map
    (1, 2, 1, 3, 6, 13, 2, 1),    # K = 13, stride 2
    (2, 3, 1, 18, 40, 3, 1, 1),   # several tiles each way, partial tiles
    (1, 4, 2, 1, 9, 3, 1, 1),     # a single row
    (1, 2, 2, 4, 5, 1, 1, 1),     # K = 1
]

GRADCHECK_CASES = [
    (1, 4, 2, 5, 4, 3, 1, 1),
    (1, 3, 1, 6, 5, 5, 2, 1),
    (2, 2, 2, 4, 5, 3, 3, 2),
    (1, 3, 1, 4, 3, 9, 1, 1),  # K = 9 > the whole map
    (1, 10, 1, 3, 4, 3, 1, 1),  # m = 10
]


def make_inputs(case, dtype, seed=0, device="cuda"):
    n, c, g, h, w, k, s, _ = case
    gen = torch.Generator().manual_seed(seed)
    ho, wo = -(-h // s), -(-w // s)
    shapes = [(n, g, ho, wo), (n, g, h, w), (n, c, h, w), (g, k, k), (n, c, ho, wo)]
    return [torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype) for shape in shapes]


def run(inputs, case, kind, grad_out=None):
    """Output and, with grad_out, the gradients of query, key, value and geo_prior."""
    *_, k, s, d = case
    leaves = [x.detach().clone().requires_grad_(grad_out is not None) for x in inputs]
    out = local_relation(*leaves, k, s, d, kind)
    if grad_out is None:
        return out.detach(), None
    return out.detach(), torch.autograd.grad(out, leaves, grad_out)


def reference(inputs, case, kind, grad_out):
    *_, k, s, d = case
    leaves = [x.detach().double().requires_grad_(True) for x in inputs]
    out = local_relation_reference(*leaves, k, s, d, kind)
    return out.detach(), torch.autograd.grad(out, leaves, grad_out.double())


def assert_close(got, ref, tol, what):
    scale = ref.abs().max().item() + 1.0
    err = (got.double() - ref.double()).abs().max().item() / scale
    assert torch.isfinite(got).all(), f"{what}: not finite"
    assert err <= tol, f"{what}: max error {err:.3g} of scale {scale:.3g}"


def test_kernel_available():
    assert ops.kernel_available("cuda")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("lrrobust::local_relation_forward", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("lrrobust::local_relation_backward", "CUDA")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", CASES)
def test_forward_and_gradients_match_reference(case, kind, dtype):
    *inputs, grad_out = make_inputs(case, dtype)
    out, grads = run(inputs, case, kind, grad_out)
    ref_out, ref_grads = reference(inputs, case, kind, grad_out)
    tol = TOLERANCES[dtype]
    assert out.dtype == dtype and out.shape == ref_out.shape
    assert_close(out, ref_out, tol, "out")
    for name, got, ref in zip(("query", "key", "value", "geo_prior"), grads, ref_grads):
        assert got.shape == ref.shape and got.dtype == dtype
        assert_close(got, ref, tol, f"grad {name}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", GRADCHECK_CASES)
def test_gradcheck_float64(case, kind):
    *inputs, _ = make_inputs(case, torch.float64, seed=1)
    leaves = [x.requires_grad_(True) for x in inputs]
    *_, k, s, d = case
    assert torch.autograd.gradcheck(lambda q, key, v, g: local_relation(q, key, v, g, k, s, d, kind), leaves,
                                    eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", [(2, 16, 2, 9, 10, 7, 1, 1), (1, 12, 3, 8, 9, 5, 2, 2), (1, 4, 1, 6, 5, 13, 1, 1)])
def test_low_precision_agrees_with_float32(case, kind, dtype):
    *inputs, grad_out = make_inputs(case, torch.float32, seed=2)
    inputs32 = [x.to(dtype).float() for x in inputs]  # the same values in both precisions
    grad32 = grad_out.to(dtype).float()
    out32, grads32 = run(inputs32, case, kind, grad32)
    out, grads = run([x.to(dtype) for x in inputs32], case, kind, grad32.to(dtype))
    tol = TOLERANCES[dtype]
    assert out.dtype == dtype
    assert_close(out, out32, tol, "out")
    for name, got, ref in zip(("query", "key", "value", "geo_prior"), grads, grads32):
        assert got.dtype == dtype
        assert_close(got, ref, tol, f"grad {name}")


@pytest.mark.parametrize("channels,size", [(100, 56), (200, 28), (400, 14), (800, 7)])
def test_lr_net26_stage_shapes_bfloat16(channels, size):
    """The benchmark shapes (m = 8, K = 7; the last group of C=100 holds 4 channels): bf16 against fp32."""
    groups = -(-channels // 8)
    case = (2, channels, groups, size, size, 7, 1, 1)
    *inputs, grad_out = make_inputs(case, torch.float32, seed=3)
    inputs = [x.bfloat16().float() for x in inputs]
    grad_out = grad_out.bfloat16().float()
    out32, grads32 = run(inputs, case, "sqdiff", grad_out)
    ref_out, ref_grads = reference(inputs, case, "sqdiff", grad_out)
    assert_close(out32, ref_out, TOLERANCES[torch.float32], "fp32 out")
    for got, ref in zip(grads32, ref_grads):
        assert_close(got, ref, TOLERANCES[torch.float32], "fp32 grad")
    out, grads = run([x.bfloat16() for x in inputs], case, "sqdiff", grad_out.bfloat16())
    assert_close(out, out32, TOLERANCES[torch.bfloat16], "bf16 out")
    for got, ref in zip(grads, grads32):
        assert_close(got, ref, TOLERANCES[torch.bfloat16], "bf16 grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("case", [(3, 24, 3, 37, 45, 7, 1, 1), (2, 10, 1, 20, 21, 5, 2, 2), (1, 4, 2, 6, 7, 15, 1, 1)])
def test_backward_is_deterministic(case, dtype):
    *inputs, grad_out = make_inputs(case, dtype, seed=4)
    first = run(inputs, case, "sqdiff", grad_out)[1]
    second = run(inputs, case, "sqdiff", grad_out)[1]
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", [(32, 100, 13, 56, 56, 7, 1, 1), (32, 64, 8, 56, 56, 7, 2, 1)])
def test_backward_is_deterministic_at_batch_32(case, dtype):
    # LR-Net-26 stage 1 at a training batch (m = 8, the last group of C = 100 holds 4 channels), and at stride 2:
    # the gather pass splits the batch into chunks whose geo_prior partial sums are reduced in a fixed order.
    *inputs, grad_out = make_inputs(case, dtype, seed=6)
    first_out, first = run(inputs, case, "sqdiff", grad_out)
    second_out, second = run(inputs, case, "sqdiff", grad_out)
    assert torch.equal(first_out, second_out)
    for name, a, b in zip(("query", "key", "value", "geo_prior"), first, second):
        assert torch.equal(a, b), f"grad {name} differs between two calls: {(a.double() - b.double()).abs().max()}"


@pytest.mark.slow
def test_tensors_over_2_31_elements():
    """value, output and their gradients of (32770, 64, 32, 32) bfloat16 elements, 2^31 + 2^17: the last two images
    start at element 2^31, past any int32 offset. Their output and gradients must equal the op run on them alone
    (bitwise: each pixel's result depends on its own image only, in a fixed order)."""
    c, size, k = 64, 32, 7
    g = c // 8
    n = 2**31 // (c * size * size) + 2
    # value, output, grad_out, grad_value (4 x 4.3 GB), query, key and their gradients, the backward's float32
    # statistics (2 per output pixel and group), with room to spare.
    need = (4 * n * c + 4 * n * g) * size * size * 2 + 2 * n * g * size * size * 4
    free, _ = torch.cuda.mem_get_info()
    if free < 1.5 * need:
        pytest.skip(f"needs {1.5 * need / 2**30:.0f} GiB of free GPU memory, {free / 2**30:.0f} GiB free")
    gen = torch.Generator(device="cuda").manual_seed(7)
    shapes = [(n, g, size, size), (n, g, size, size), (n, c, size, size), (g, k, k), (n, c, size, size)]
    q, key, value, geo, grad_out = (torch.randn(x, generator=gen, device="cuda", dtype=torch.bfloat16) for x in shapes)
    assert value.numel() > 2**31 and (n - 2) * c * size * size == 2**31
    leaves = [x.requires_grad_() for x in (q, key, value, geo)]
    out = local_relation(*leaves, k)
    grads = torch.autograd.grad(out, leaves, grad_out)
    del leaves
    tail = [x[-2:].detach().clone().requires_grad_() for x in (q, key, value)] + [geo.detach().requires_grad_()]
    tail_out = local_relation(*tail, k)
    tail_grads = torch.autograd.grad(tail_out, tail, grad_out[-2:])
    # The last images alone are right (against the float64 reference), and the full batch gives them the same.
    ref_out, ref_grads = reference(tail, (n, c, g, size, size, k, 1, 1), "sqdiff", grad_out[-2:])
    names = ("output", "grad query", "grad key", "grad value")
    for name, got, alone, ref in zip(names, (out, *grads[:3]), (tail_out, *tail_grads[:3]), (ref_out, *ref_grads)):
        assert_close(alone, ref, TOLERANCES[torch.bfloat16], f"{name} of the last two images alone")
        got = got[-2:]
        assert torch.equal(got, alone), f"{name} of the last images: max difference {(got - alone).abs().max()}"


def test_non_contiguous_inputs():
    case = (2, 6, 3, 9, 11, 5, 2, 1)
    *inputs, grad_out = make_inputs(case, torch.float64, seed=5)
    ref_out, ref_grads = reference(inputs, case, "sqdiff", grad_out)
    # The same values in non-contiguous layouts: a transposed copy seen through a transpose, a channel slice.
    q = inputs[0].transpose(2, 3).contiguous().transpose(2, 3)
    key = inputs[1].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    wide = torch.zeros(2, 12, 9, 11, dtype=torch.float64, device="cuda")
    wide[:, ::2] = inputs[2]
    value = wide[:, ::2]
    geo = inputs[3].transpose(1, 2).contiguous().transpose(1, 2)
    assert not any(x.is_contiguous() for x in (q, key, value, geo))
    out, grads = run([q, key, value, geo], case, "sqdiff", grad_out.transpose(2, 3).contiguous().transpose(2, 3))
    assert_close(out, ref_out, TOLERANCES[torch.float64], "out")
    for got, ref in zip(grads, ref_grads):
        assert_close(got, ref, TOLERANCES[torch.float64], "grad")


def test_empty_batch():
    case = (0, 4, 2, 6, 7, 3, 1, 1)
    *inputs, grad_out = make_inputs(case, torch.float32)
    out, grads = run(inputs, case, "sqdiff", grad_out)
    assert out.shape == (0, 4, 6, 7) and out.device.type == "cuda"
    for got, x in zip(grads, inputs):
        assert got.shape == x.shape
    assert torch.equal(grads[3], torch.zeros_like(inputs[3]))


def test_inputs_on_two_devices_are_rejected():
    *inputs, _ = make_inputs((1, 4, 2, 6, 7, 3, 1, 1), torch.float32)
    inputs[3] = inputs[3].cpu()
    with pytest.raises((RuntimeError, ValueError), match="(?i)device"):
        local_relation(*inputs, 3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", [CASES[0], CASES[5], CASES[10]])
def test_nonfinite_inputs_follow_the_reference(case, kind, dtype):
    # IEEE propagation as torch.softmax (local_relation's docstring): the same NaN / +inf / -inf pattern as the
    # reference, forward and gradients, in both kernel variants (CASES[10] reads global memory in float64).
    special = torch.tensor([float("inf"), -float("inf"), float("nan")], dtype=torch.float64)
    *inputs, grad_out = make_inputs(case, dtype, seed=3)
    gen = torch.Generator().manual_seed(3)
    for x in inputs:
        hit = (torch.rand(x.shape, generator=gen) < 0.08).to(x.device)
        x[hit] = special[torch.randint(0, 3, (int(hit.sum()),), generator=gen)].to(x)
    inputs[3][0] = -float("inf")  # group 0: every window's logits are -inf
    out, grads = run(inputs, case, kind, grad_out)
    ref_out, ref_grads = reference(inputs, case, kind, grad_out)
    tol = TOLERANCES[dtype]
    for name, got, ref in zip(("out", "query", "key", "value", "geo_prior"), [out, *grads], [ref_out, *ref_grads]):
        got = got.double().cpu()
        for pick in (torch.isnan, lambda t: t == float("inf"), lambda t: t == -float("inf")):
            assert torch.equal(pick(got), pick(ref)), f"{case} {kind} {dtype}: {name} non-finite pattern differs"
        finite = torch.isfinite(ref)
        if finite.any():
            assert_close(got[finite], ref[finite], tol, f"{case} {kind} {dtype}: {name}")


@pytest.mark.parametrize("k,s,d", [(3, 1, 3 * 2**61), (1, 1, 2**40), (5, 1, 2**27 + 1), (3, 2**28 + 1, 1)])
def test_windows_beyond_the_bounds_are_rejected(k, s, d):
    q, key, v, p = (torch.randn(shape, device="cuda") for shape in [(1, 1, 4, 5), (1, 1, 4, 5), (1, 2, 4, 5),
                                                                    (1, 3, 3)])
    q = q if s == 1 else q[:, :, :1, :1]
    with pytest.raises(RuntimeError, match="local_relation: .*(at most|must be in)"):
        torch.ops.lrrobust.local_relation_forward(q, key, v, p, k, s, d, 0)
    with pytest.raises(ValueError, match="local_relation: .*at most"):
        local_relation(q, key, v, p, k, stride=s, dilation=d)
