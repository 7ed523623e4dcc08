"""Memory layouts of the local relation op (paper Sec. 4): channels-last inputs (``--channels-last`` training) and
channel slices are read without copies by the CUDA kernels, and every device returns its results in the memory
format of the input they mirror (out and grad_value: value's; grad_query: query's; grad_key: key's), the fake
kernels included, so a channels-last network stays channels-last and torch.compile sees the real strides."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from lrrobust.ops import kernel_available, local_relation
from lrrobust.ops.reference import local_relation_reference

pytestmark = pytest.mark.usefixtures("cpu_lanes")  # every test on both CPU work units

CL = torch.channels_last
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and kernel_available("cuda") else [])


def inputs(n=2, c=16, g=2, h=9, w=10, k=7, s=1, device="cpu", dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ho, wo = -(-h // s), -(-w // s)
    shapes = [(n, g, ho, wo), (n, g, h, w), (n, c, h, w), (g, k, k)]
    return [torch.randn(*shape, generator=gen, dtype=dtype).to(device) for shape in shapes]


def is_channels_last(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=CL) and not t.is_contiguous()


@pytest.mark.skipif(not kernel_available("cpu"), reason="compiled CPU kernel missing")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [1, 2])
def test_channels_last_inputs_give_channels_last_results_with_the_same_values(device, stride):
    q, key, v, geo = inputs(s=stride, device=device)
    plain = [t.clone().requires_grad_(True) for t in (q, key, v, geo)]
    nhwc = [t.contiguous(memory_format=CL).requires_grad_(True) if t.dim() == 4 else t.clone().requires_grad_(True)
            for t in (q, key, v, geo)]
    out_plain = local_relation(*plain, 7, stride)
    out_nhwc = local_relation(*nhwc, 7, stride)
    assert not is_channels_last(out_plain) and is_channels_last(out_nhwc)
    torch.testing.assert_close(out_nhwc, out_plain, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out_plain)
    out_plain.backward(grad)
    out_nhwc.backward(grad.contiguous(memory_format=CL))
    for a, b in zip(plain, nhwc):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-10, atol=1e-10)
    for t in nhwc[:3]:
        assert is_channels_last(t.grad), "a gradient lost the channels-last format of its input"


@pytest.mark.skipif(not kernel_available("cpu"), reason="compiled CPU kernel missing")
@pytest.mark.parametrize("device", DEVICES)
def test_channel_slices_and_mixed_formats_match_the_reference(device):
    q, key, _, geo = inputs(device=device)
    wide = torch.randn(2, 21, 9, 10, dtype=torch.float64, device=device).contiguous(memory_format=CL)
    value = wide[:, 3:19]  # a channel slice of a channels-last tensor, as a 1x1 convolution's output split
    out = local_relation(q, key.contiguous(memory_format=CL), value, geo, 7)
    ref = local_relation_reference(q, key, value.contiguous(), geo, 7)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not kernel_available("cpu"), reason="compiled CPU kernel missing")
@pytest.mark.parametrize("channels_last", [False, True])
def test_fake_kernels_report_the_strides_the_cpu_kernel_returns(channels_last):
    q, key, v, geo = inputs()
    if channels_last:
        q, key, v = (t.contiguous(memory_format=CL) for t in (q, key, v))
    real_out, real_lse = torch.ops.lrrobust.local_relation_forward(q, key, v, geo, 7, 1, 1, 0)
    grad = torch.randn_like(real_out)
    real_grads = torch.ops.lrrobust.local_relation_backward(grad, q, key, v, geo, real_out, real_lse, 7, 1, 1, 0)
    with FakeTensorMode() as mode:
        fq, fk, fv, fg, fgrad = (mode.from_tensor(t) for t in (q, key, v, geo, grad))
        fake_out, fake_lse = torch.ops.lrrobust.local_relation_forward(fq, fk, fv, fg, 7, 1, 1, 0)
        fake_grads = torch.ops.lrrobust.local_relation_backward(fgrad, fq, fk, fv, fg, fake_out, fake_lse, 7, 1, 1, 0)
    assert fake_out.stride() == real_out.stride()
    assert (fake_lse.shape, fake_lse.stride(), fake_lse.dtype) == (real_lse.shape, real_lse.stride(), real_lse.dtype)
    assert [t.stride() for t in fake_grads] == [t.stride() for t in real_grads]
