"""The local relation op on the CPU (paper Sec. 4, Eq. 2-5): the compiled kernel against the pure-PyTorch reference.

Covers strides 1-3, dilations 1-2, K = 1, 3, 5, 7, 9 and windows covering the whole map, m = 1, 2, 7, 8,
C not a multiple of G, odd and non-square maps, rows wider than one 16-pixel chunk, all three composability
terms; gradcheck, opcheck, torch.compile, bad inputs, non-contiguous and empty inputs, memory.
"""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
from conftest import torch_threads
from torch.profiler import ProfilerActivity, profile

from lrrobust import ops
from lrrobust.ops import local_relation
from lrrobust.ops.reference import local_relation_reference, log_sum_exp_reference

pytestmark = pytest.mark.usefixtures("cpu_lanes")  # every test on both CPU work units

KINDS = ("sqdiff", "absdiff", "product")
CODES = {"sqdiff": 0, "absdiff": 1, "product": 2}

# (n, c, g, h, w, k, s, d); m = ceil(c / g)
CASES = [
    (2, 8, 1, 5, 7, 3, 1, 1),  # m = 8
    (1, 4, 2, 6, 5, 5, 2, 1),  # m = 2, stride 2
    (2, 3, 3, 7, 4, 3, 3, 1),  # m = 1, stride 3
    (1, 20, 3, 5, 6, 3, 1, 2),  # m = 7, last group of 6, dilation 2
    (1, 16, 2, 9, 8, 7, 1, 1),  # m = 8, K = 7
    (1, 2, 2, 6, 7, 9, 2, 2),  # m = 1, K = 9, stride 2, dilation 2
    (1, 4, 1, 3, 21, 5, 1, 1),  # m = 4, a row wider than one 16-pixel chunk
    (1, 6, 2, 4, 5, 1, 1, 1),  # K = 1: the output is the value
    (1, 3, 1, 4, 3, 11, 1, 1),  # K = 11 > 2*max(H, W) - 1: the whole map
    (19, 12, 2, 5, 4, 3, 1, 1),  # a full 16-image batch block and one of 3 (batch lanes)
    (9, 10, 3, 6, 5, 5, 2, 1),  # 8 + 1 images, stride 2, last group of 2 channels
]

# Forward-only shapes that exercise more of the chunking: long rows, partial chunks, wide windows.
FORWARD_CASES = CASES + [
    (2, 16, 2, 5, 37, 7, 1, 1),
    (1, 24, 3, 11, 40, 5, 2, 1),
    (1, 8, 1, 19, 34, 9, 1, 2),
    (1, 12, 4, 6, 50, 3, 3, 2),
    (1, 9, 3, 12, 18, 35, 1, 1),
    (1, 100, 13, 9, 9, 7, 1, 1),  # LR-Net-26 stage-1 grouping: 13 groups, the last of 4 channels
]


def make_inputs(case, dtype=torch.float64, seed=0, requires_grad=False):
    n, c, g, h, w, k, s, _ = case
    gen = torch.Generator().manual_seed(seed)
    ho, wo = -(-h // s), -(-w // s)
    shapes = [(n, g, ho, wo), (n, g, h, w), (n, c, h, w), (g, k, k)]
    return [torch.randn(shape, generator=gen, dtype=dtype).requires_grad_(requires_grad) for shape in shapes]


def options(case, kind):
    _, _, _, _, _, k, s, d = case
    return {"kernel_size": k, "stride": s, "dilation": d, "composability": kind}


def test_cpu_is_served_by_the_compiled_kernel(monkeypatch):
    assert ops.kernel_available("cpu"), ops.build_info()
    assert "CPU kernel compiled" in ops.build_info()

    def no_reference(*args, **kwargs):
        raise AssertionError("the reference ran instead of the compiled kernel")

    monkeypatch.setattr(ops, "local_relation_reference", no_reference)
    case = CASES[0]
    x = make_inputs(case, requires_grad=True)
    out = local_relation(*x, **options(case, "sqdiff"))
    out.sum().backward()
    assert all(t.grad is not None for t in x)
    monkeypatch.undo()
    torch.testing.assert_close(out, local_relation_reference(*x, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", FORWARD_CASES, ids=str)
def test_forward_matches_reference(case, kind, dtype):
    x = make_inputs(case, dtype)
    got = local_relation(*x, **options(case, kind))
    want = local_relation_reference(*x, case[5], case[6], case[7], kind)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_gradients_match_reference(case, kind):
    x = make_inputs(case, requires_grad=True)
    out = local_relation(*x, **options(case, kind))
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, x, grad_out)
    want = torch.autograd.grad(local_relation_reference(*x, case[5], case[6], case[7], kind), x, grad_out)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


# The dilation-2 case takes seconds (about 10 CPU s with batch lanes, each of its ~1,900 inputs perturbed): slow.
GRADCHECK_CASES = [pytest.param(CASES[i], marks=pytest.mark.slow) if i == 3 else CASES[i] for i in (0, 1, 2, 3, 5, 6, 8)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=str)
def test_gradcheck(case, kind):
    x = make_inputs(case, seed=1, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: local_relation(*t, **options(case, kind)), x)


def test_opcheck():
    # Schema, fake kernels, autograd registration and AOT dispatch; the composability does not change them.
    case = CASES[3]
    x = make_inputs(case, requires_grad=True)
    options_ = (case[5], case[6], case[7], CODES["absdiff"])
    torch.library.opcheck(torch.ops.lrrobust.local_relation_forward.default, (*x, *options_))
    inputs = [t.detach() for t in x]
    out, lse = torch.ops.lrrobust.local_relation_forward(*inputs, *options_)
    grad_out = torch.randn(out.shape, dtype=torch.float64)
    torch.library.opcheck(torch.ops.lrrobust.local_relation_backward.default,
                          (grad_out, *inputs, out, lse, *options_))


def test_compile_fullgraph_matches_eager():
    case = CASES[1]

    def layer(query, key, value, geo_prior):
        return local_relation(query * 2, key, value.relu(), geo_prior, 5, stride=2).sum()

    x = make_inputs(case, torch.float32, requires_grad=True)
    # aot_eager: Dynamo (no graph break allowed) and AOT autograd through the fake and autograd registrations,
    # without Inductor's code generation, which would dominate this test's time.
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    got = compiled(*x)
    got_grads = torch.autograd.grad(got, x)
    want = layer(*x)
    want_grads = torch.autograd.grad(want, x)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_narrower_instruction_sets_agree(isa, monkeypatch):
    # The kernel is compiled for AVX-512, AVX2 and SSE2 with different vector widths; LRROBUST_CPU_ISA makes this
    # machine run the narrower copies that other machines would pick.
    monkeypatch.setenv("LRROBUST_CPU_ISA", isa)
    for case in (FORWARD_CASES[9], FORWARD_CASES[10], (1, 6, 2, 5, 7, 9, 1, 2), (2, 10, 2, 3, 3, 5, 1, 1)):
        for kind in KINDS:
            x = make_inputs(case, requires_grad=True)
            out = local_relation(*x, **options(case, kind))
            want = local_relation_reference(*x, case[5], case[6], case[7], kind)
            torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
            grad_out = torch.randn_like(out)
            for g, w in zip(torch.autograd.grad(out, x, grad_out), torch.autograd.grad(want, x, grad_out)):
                torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_non_contiguous_inputs():
    case = (2, 6, 3, 7, 9, 3, 1, 1)
    x = make_inputs(case, requires_grad=True)
    # Transposed, then sliced views holding the same values as x.
    views = [t.detach().transpose(-1, -2).contiguous().transpose(-1, -2).requires_grad_() for t in x]
    wide = torch.randn(2, 12, 7, 9, dtype=torch.float64)
    wide[:, ::2] = x[2].detach()
    views[2] = wide[:, ::2].requires_grad_()
    assert not any(v.is_contiguous() for v in views[:3])
    out = local_relation(*views, 3)
    torch.testing.assert_close(out, local_relation(*x, 3), rtol=0, atol=0)
    grad_out = torch.randn_like(out).transpose(-1, -2).contiguous().transpose(-1, -2)
    got = torch.autograd.grad(out, views, grad_out)
    want = torch.autograd.grad(local_relation_reference(*x, 3), x, grad_out)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_empty_batch():
    case = (0, 4, 2, 5, 6, 3, 1, 1)
    x = make_inputs(case, requires_grad=True)
    out = local_relation(*x, 3)
    assert out.shape == (0, 4, 5, 6)
    out.sum().backward()
    assert x[2].grad.shape == (0, 4, 5, 6)
    assert torch.equal(x[3].grad, torch.zeros(2, 3, 3, dtype=torch.float64))


@pytest.mark.parametrize("kind", KINDS)
def test_full_image_window(kind):
    # K = 2*max(H, W) - 1: every output pixel sees the whole map; K + 4: beyond it.
    for k in (2 * 7 - 1, 2 * 7 + 3):
        case = (1, 4, 2, 5, 7, k, 1, 1)
        x = make_inputs(case, requires_grad=True)
        out = local_relation(*x, k, composability=kind)
        want = local_relation_reference(*x, k, 1, 1, kind)
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
        grad_out = torch.randn_like(out)
        for g, w in zip(torch.autograd.grad(out, x, grad_out), torch.autograd.grad(want, x, grad_out)):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_is_computed_in_float32(dtype):
    case = (1, 8, 2, 6, 20, 5, 1, 1)
    x = [t.to(dtype).requires_grad_() for t in make_inputs(case, torch.float32)]
    out = local_relation(*x, 5)
    assert out.dtype == dtype
    want = local_relation(*[t.detach().float() for t in x], 5)
    torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    assert all(t.grad.dtype == dtype for t in x)


def test_mixed_float_dtypes_are_promoted():
    case = CASES[0]
    x = make_inputs(case)
    out = local_relation(x[0].float(), x[1].float(), x[2], x[3].float(), 3)
    assert out.dtype == torch.float64


def test_meta_tensors_give_the_output_shape():
    x = [t.to("meta") for t in make_inputs(CASES[1])]
    out = local_relation(*x, 5, stride=2)
    assert out.device.type == "meta" and out.shape == (1, 4, 3, 3)


def test_backward_is_deterministic():
    case = (2, 16, 2, 9, 20, 5, 1, 1)
    x = make_inputs(case, torch.float32, requires_grad=True)
    out = local_relation(*x, 5)
    grad_out = torch.randn_like(out)
    first = torch.autograd.grad(out, x, grad_out, retain_graph=True)
    second = torch.autograd.grad(out, x, grad_out)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_fallback_warns_once_and_matches(monkeypatch):
    monkeypatch.setitem(ops.library.KERNELS, "cpu", False)
    monkeypatch.setattr(ops, "_warned_fallback", False)
    case = CASES[2]
    x = make_inputs(case)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = local_relation(*x, 3, stride=3)
        local_relation(*x, 3, stride=3)
    assert len([w for w in caught if "pure-PyTorch reference" in str(w.message)]) == 1
    torch.testing.assert_close(first, local_relation_reference(*x, 3, 3))


def _good():
    return {"query": torch.randn(1, 2, 4, 5), "key": torch.randn(1, 2, 4, 5), "value": torch.randn(1, 8, 4, 5),
            "geo_prior": torch.randn(2, 3, 3), "kernel_size": 3}


BAD_INPUTS = [
    ("query 3-D", {"query": torch.randn(2, 4, 5)}, ValueError, "query must be 4-D"),
    ("key 5-D", {"key": torch.randn(1, 2, 4, 5, 1)}, ValueError, "key must be 4-D"),
    ("value 2-D", {"value": torch.randn(8, 20)}, ValueError, "value must be 4-D"),
    ("prior 2-D", {"geo_prior": torch.randn(2, 9)}, ValueError, "geo_prior must be 3-D"),
    ("even K", {"kernel_size": 4, "geo_prior": torch.randn(2, 4, 4)}, ValueError, "kernel_size must be odd"),
    ("K not int", {"kernel_size": 3.0}, TypeError, "kernel_size must be an int"),
    ("stride 0", {"stride": 0}, ValueError, "stride must be >= 1"),
    ("dilation 0", {"dilation": 0}, ValueError, "dilation must be >= 1"),
    ("unknown phi", {"composability": "dot"}, ValueError, "'sqdiff', 'absdiff', 'product'"),
    ("query spatial", {"query": torch.randn(1, 2, 4, 4)}, ValueError, "query must be (N, G, ceil(H/stride)"),
    ("query groups", {"query": torch.randn(1, 3, 4, 5)}, ValueError, "query must be (N, G, ceil(H/stride)"),
    ("query at input size, stride 2", {"stride": 2}, ValueError, "query must be (N, G, ceil(H/stride)"),
    ("value size", {"value": torch.randn(1, 8, 5, 5)}, ValueError, "must agree in N, H and W"),
    ("value batch", {"value": torch.randn(2, 8, 4, 5)}, ValueError, "must agree in N, H and W"),
    ("prior groups", {"geo_prior": torch.randn(3, 3, 3)}, ValueError, "geo_prior must be (G, K, K)"),
    ("prior size", {"geo_prior": torch.randn(2, 5, 5)}, ValueError, "geo_prior must be (G, K, K)"),
    ("group without channels",
     {"query": torch.randn(1, 4, 4, 5), "key": torch.randn(1, 4, 4, 5), "value": torch.randn(1, 6, 4, 5),
      "geo_prior": torch.randn(4, 3, 3)},
     ValueError, "leave the last group without channels"),
    ("no channels", {"value": torch.randn(1, 0, 4, 5)}, ValueError, "at least one channel"),
    ("integer value", {"value": torch.ones(1, 8, 4, 5, dtype=torch.int64)}, ValueError, "floating-point"),
    ("bool key", {"key": torch.ones(1, 2, 4, 5, dtype=torch.bool)}, ValueError, "floating-point"),
    ("value on meta", {"value": torch.randn(1, 8, 4, 5, device="meta")}, ValueError, "on one device"),
    ("prior not a tensor", {"geo_prior": [[0.0]]}, TypeError, "geo_prior must be a torch.Tensor"),
    # Bounds (lrrobust.ops.checks): beyond them index arithmetic could overflow (the call segfaulted).
    ("dilation 3*2^61", {"dilation": 3 * 2**61}, ValueError, "dilation must be at most 2^28"),
    ("dilation 2^28 + 1, K = 1", {"dilation": 2**28 + 1, "kernel_size": 1, "geo_prior": torch.randn(2, 1, 1)},
     ValueError, "dilation must be at most"),
    ("reach beyond 2^28", {"dilation": 2**27 + 1, "kernel_size": 5, "geo_prior": torch.randn(2, 5, 5)}, ValueError,
     "the window reaches (kernel_size - 1) / 2 * dilation = 268435458 pixels"),
    ("stride 2^28 + 1", {"stride": 2**28 + 1, "query": torch.randn(1, 2, 1, 1)}, ValueError, "stride must be at most"),
    ("stride beyond int64", {"stride": 2**64, "query": torch.randn(1, 2, 1, 1)}, ValueError, "stride must be at most"),
    ("K 32769", {"kernel_size": 32769}, ValueError, "kernel_size must be at most 32767"),
    ("negative dilation", {"dilation": -(2**63)}, ValueError, "dilation must be >= 1"),
]


@pytest.mark.parametrize("name,change,error,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_raise_clear_errors(name, change, error, message):
    args = {**_good(), **change}
    with pytest.raises(error, match="local_relation: .*" + re.escape(message)):
        local_relation(**args)


def test_compiled_op_checks_inputs_too():
    args = _good()
    with pytest.raises(RuntimeError, match="kernel_size must be odd"):
        torch.ops.lrrobust.local_relation_forward(args["query"], args["key"], args["value"], args["geo_prior"], 4, 1,
                                                  1, 0)
    with pytest.raises(RuntimeError, match="must be \\(N, G, ceil"):
        torch.ops.lrrobust.local_relation_forward(args["query"], args["key"], args["value"], args["geo_prior"], 3, 2,
                                                  1, 0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", [CASES[i] for i in (0, 2, 5, 8)] + [(1, 16, 2, 9, 34, 7, 1, 1)], ids=str)
def test_the_forward_returns_the_log_sum_exp_of_the_logits(case, dtype, kind):
    # The op's second result, which the CUDA backward reads its weights from: log2 sum exp(logit) over the
    # in-image offsets, in the accumulation dtype; several vector chunks per row in the last case.
    x = [t.to(dtype) for t in make_inputs(case)]
    out, lse = torch.ops.lrrobust.local_relation_forward(*x, *case[5:8], CODES[kind])
    want = log_sum_exp_reference(*(x[i].double() for i in (0, 1, 3)), *case[5:8], kind)
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(lse.double(), want, rtol=1e-5 if dtype != torch.float64 else 1e-12, atol=1e-5)
    torch.testing.assert_close(out, local_relation(*x, *case[5:8], kind), rtol=0, atol=0)


def test_the_backward_checks_the_saved_forward_results():
    args = _good()
    inputs = [args[n] for n in ("query", "key", "value", "geo_prior")]
    out, lse = torch.ops.lrrobust.local_relation_forward(*inputs, 3, 1, 1, 0)
    for bad_out, bad_lse, message in ((out[:, :4], lse, "out .* must be the forward's output"),
                                      (out, lse[:, :1], "lse .* must be the forward's log-sum-exp"),
                                      (out, lse.double(), "out must have value.s dtype and lse Float, got .* Double")):
        with pytest.raises(RuntimeError, match="local_relation_backward: " + message):
            torch.ops.lrrobust.local_relation_backward(out, *inputs, bad_out, bad_lse, 3, 1, 1, 0)


@pytest.mark.parametrize("k,s,d", [(3, 1, 3 * 2**61), (1, 1, 2**40), (3, 1, 2**28 + 1), (5, 1, 2**27 + 1),
                                   (3, 2**28 + 1, 1), (3, 2**62, 1), (32769, 1, 1), (2**31 + 1, 1, 1)])
def test_compiled_op_rejects_windows_beyond_the_bounds(k, s, d):
    # Called directly (no Python checks): the C++ checks name the bound; the call segfaulted here.
    q, key, v = torch.randn(1, 1, 4, 5), torch.randn(1, 1, 4, 5), torch.randn(1, 2, 4, 5)
    q = q if s == 1 else q[:, :, :1, :1]
    p, go, lse = torch.randn(1, 3, 3), torch.randn(1, 2, *q.shape[2:]), torch.randn(1, 1, *q.shape[2:])
    with pytest.raises(RuntimeError, match="local_relation: .*(at most|must be in)"):
        torch.ops.lrrobust.local_relation_forward(q, key, v, p, k, s, d, 0)
    with pytest.raises(RuntimeError, match="local_relation: .*(at most|must be in)"):
        torch.ops.lrrobust.local_relation_backward(go, q, key, v, p, go, lse, k, s, d, 0)


@pytest.mark.parametrize("k,s,d", [(3, 1, 2**28), (5, 1, 2**27), (1, 2**28, 2**28), (7, 2**28, 3)])
def test_windows_at_the_bounds_work(k, s, d):
    # The largest stride, dilation and reach allowed: the same as the reference at an equivalent clamped value
    # (a dilation or stride >= max(H, W) leaves only the centre, or one output pixel).
    case = (1, 4, 2, 5, 6, k, s, d)
    x = make_inputs(case, requires_grad=True)
    out = local_relation(*x, k, stride=s, dilation=d)
    want = local_relation_reference(*x, k, min(s, 6), min(d, 6))
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn_like(out)
    for g, w in zip(torch.autograd.grad(out, x, grad_out), torch.autograd.grad(want, x, grad_out)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["query", "key", "value", "geo_prior", "grad_out"])
def test_compiled_op_rejects_a_meta_tensor_among_cpu_tensors(name):
    # The dispatcher sends a call with any meta tensor to the fake kernel, which used to return uninitialised CPU
    # tensors; it checks the devices now, as the C++ kernels do.
    args = _good()
    tensors = {"grad_out": torch.randn(1, 8, 4, 5), **{n: args[n] for n in ("query", "key", "value", "geo_prior")}}
    tensors[name] = tensors[name].to("meta")
    inputs = [tensors[n] for n in ("query", "key", "value", "geo_prior")]
    saved = (torch.randn(1, 8, 4, 5), torch.randn(1, 2, 4, 5))  # the forward's out and lse
    if name != "grad_out":
        with pytest.raises((RuntimeError, ValueError), match="must be on one device"):
            torch.ops.lrrobust.local_relation_forward(*inputs, 3, 1, 1, 0)
    with pytest.raises((RuntimeError, ValueError), match="must be on one device"):
        torch.ops.lrrobust.local_relation_backward(tensors["grad_out"], *inputs, *saved, 3, 1, 1, 0)


def test_compiled_op_on_all_meta_tensors_gives_shapes():
    args = _good()
    inputs = [args[n].to("meta") for n in ("query", "key", "value", "geo_prior")]
    out, lse = torch.ops.lrrobust.local_relation_forward(*inputs, 3, 1, 1, 0)
    assert out.device.type == "meta" and out.shape == (1, 8, 4, 5)
    assert lse.device.type == "meta" and lse.shape == (1, 2, 4, 5) and lse.dtype == torch.float32
    grads = torch.ops.lrrobust.local_relation_backward(out, *inputs, out, lse, 3, 1, 1, 0)
    assert [g.shape for g in grads] == [t.shape for t in inputs] and all(g.device.type == "meta" for g in grads)
    with pytest.raises((RuntimeError, ValueError), match="dilation must be at most"):
        torch.ops.lrrobust.local_relation_forward(*inputs, 3, 1, 3 * 2**61, 0)


def _sprinkle(tensor, fraction, gen):
    """tensor with about `fraction` of its entries replaced by inf, -inf or NaN."""
    special = torch.tensor([float("inf"), -float("inf"), float("nan")], dtype=tensor.dtype)
    tensor = tensor.detach().clone()
    hit = torch.rand(tensor.shape, generator=gen) < fraction
    tensor[hit] = special[torch.randint(0, 3, (int(hit.sum()),), generator=gen)]
    return tensor


def _assert_same_nonfinite(got, want, tol, what):
    """The same NaN, +inf and -inf positions, and the finite values equal within tol."""
    assert torch.equal(got.isnan(), want.isnan()), f"{what}: NaN positions differ"
    assert torch.equal(got == float("inf"), want == float("inf")), f"{what}: +inf positions differ"
    assert torch.equal(got == -float("inf"), want == -float("inf")), f"{what}: -inf positions differ"
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", ["query", "key", "value", "geo_prior", "all"])
def test_nonfinite_inputs_follow_the_reference(which, kind, dtype):
    # Semantics (local_relation's docstring): IEEE propagation as in torch.softmax. Forward and gradients must have
    # the reference's NaN / +inf / -inf pattern and its finite values.
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    names = ("query", "key", "value", "geo_prior")
    for seed, case in enumerate([(2, 6, 3, 7, 9, 3, 1, 1), (1, 4, 2, 6, 5, 5, 2, 1), (1, 20, 2, 5, 21, 3, 1, 2)]):
        gen = torch.Generator().manual_seed(seed)
        x = make_inputs(case, dtype, seed=seed)
        x = [_sprinkle(t, 0.08, gen) if which in (name, "all") else t for name, t in zip(names, x)]
        x = [t.requires_grad_() for t in x]
        out = local_relation(*x, **options(case, kind))
        want = local_relation_reference(*x, case[5], case[6], case[7], kind)
        assert not torch.isfinite(want).all(), "the case should produce some non-finite outputs"
        _assert_same_nonfinite(out.detach(), want.detach(), tol, f"{case} forward")
        grad_out = torch.randn(out.shape, dtype=dtype, generator=gen)
        got_grads = torch.autograd.grad(out, x, grad_out)
        for name, g, w in zip(names, got_grads, torch.autograd.grad(want, x, grad_out)):
            _assert_same_nonfinite(g, w, tol, f"{case} grad {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_windows_of_infinite_logits_give_nan(dtype):
    # All -inf: NaN weights (was 0 in the CPU kernel); a +inf logit: NaN; a -inf among finite logits: weight 0.
    case = (1, 4, 2, 5, 6, 3, 1, 1)
    q, key, v, p = make_inputs(case, dtype)
    p[0] = -float("inf")  # group 0: every logit -inf
    p[1, 0, 0] = float("inf")  # group 1: a +inf logit where the window's top-left offset is in the image
    out = local_relation(q, key, v, p, 3)
    assert out[:, :2].isnan().all()
    assert out[:, 2:, 1:, 1:].isnan().all() and torch.isfinite(out[:, 2:, 0, :]).all()
    p[1] = 0.0
    p[1, 1, 2] = -float("inf")  # group 1: the right neighbour never counts
    out = local_relation(q, key, v, p, 3)
    torch.testing.assert_close(out, local_relation_reference(q, key, v, p, 3), equal_nan=True)
    assert torch.isfinite(out[:, 2:]).all()
    p[1, 1, 2] = -1e30 if dtype == torch.float32 else -1e300  # the same as a weight that underflows to 0
    torch.testing.assert_close(out[:, 2:], local_relation(q, key, v, p, 3)[:, 2:])


def _peak_allocated_bytes(fn, trace_path) -> int:
    """Peak of the CPU allocator's live bytes (allocated while profiling) during fn(), from the profiler trace."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    prof.export_chrome_trace(str(trace_path))
    with open(trace_path) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("name") == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e["ts"]):
        live += event["args"]["Bytes"]
        peak = max(peak, live)
    return peak


def test_memory_stays_far_below_a_window_copy(tmp_path):
    # A whole-map window on a 40 x 40 map: K*K = 6241 copies of value would be 1.3 GB. The kernels allocate
    # their outputs, the per-(n, group) partial sums of geo_prior's gradient and a per-thread scratch of
    # O(K*K * 16) numbers (all through the tensor allocator, so the profiler sees them).
    n, c, g, h, w, k = 1, 32, 4, 40, 40, 79
    x = make_inputs((n, c, g, h, w, k, 1, 1), torch.float32, requires_grad=True)
    with torch_threads(2):
        peak = _peak_allocated_bytes(lambda: local_relation(*x, k).sum().backward(), tmp_path / "trace.json")
    window_copy = k * k * x[2].numel() * 4
    assert 0 < peak < window_copy / 100, (peak, window_copy)
