"""Property tests of the local relation op (paper Sec. 4): random shapes, windows, strides and dilations.

For every drawn configuration the compiled CPU kernel must agree with the pure-PyTorch reference in its output
and in the gradients of all four inputs (float64), and obey two invariants of Eq. 2: a constant value map is
returned unchanged (the weights sum to one), and the output does not change when the same number is added to
every logit of a group (a constant added to geo_prior).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lrrobust.ops import kernel_available, local_relation
from lrrobust.ops.reference import COMPOSABILITIES, local_relation_reference

pytestmark = [
    pytest.mark.skipif(not kernel_available("cpu"), reason="the compiled CPU kernel is not built"),
    pytest.mark.usefixtures("cpu_lanes"),  # every test on both CPU work units
]


@st.composite
def configurations(draw):
    groups = draw(st.integers(1, 4))
    per_group = draw(st.integers(1, 9))
    # C such that ceil(C / G) = m and the last group keeps at least one channel.
    channels = draw(st.integers((groups - 1) * per_group + 1, groups * per_group))
    height, width = draw(st.integers(1, 12)), draw(st.integers(1, 40))
    kernel_size = draw(st.sampled_from([1, 3, 5, 7, 9, 2 * max(height, width) - 1, 2 * max(height, width) + 3]))
    return {
        "n": draw(st.integers(1, 2)),
        "channels": channels,
        "groups": groups,
        "height": height,
        "width": width,
        "kernel_size": kernel_size,
        "stride": draw(st.integers(1, 3)),
        "dilation": draw(st.integers(1, 3)),
        "composability": draw(st.sampled_from(COMPOSABILITIES)),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def make(config, dtype=torch.float64):
    gen = torch.Generator().manual_seed(config["seed"])
    n, g, h, w, k, s = (config[name] for name in ("n", "groups", "height", "width", "kernel_size", "stride"))
    shapes = [(n, g, -(-h // s), -(-w // s)), (n, g, h, w), (n, config["channels"], h, w), (g, k, k)]
    return [torch.randn(shape, generator=gen, dtype=dtype) for shape in shapes]


def options(config):
    return {name: config[name] for name in ("kernel_size", "stride", "dilation", "composability")}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configurations())
def test_matches_reference_with_gradients(config):
    x = [t.requires_grad_() for t in make(config)]
    got = local_relation(*x, **options(config))
    opts = options(config)
    want = local_relation_reference(*x, opts["kernel_size"], opts["stride"], opts["dilation"], opts["composability"])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    grad_out = torch.randn(got.shape, dtype=got.dtype, generator=torch.Generator().manual_seed(config["seed"] + 1))
    for g, w in zip(torch.autograd.grad(got, x, grad_out), torch.autograd.grad(want, x, grad_out)):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(configurations())
def test_weights_sum_to_one_and_ignore_a_shift_of_the_prior(config):
    query, key, value, geo_prior = make(config, torch.float32)
    constant = torch.full_like(value, 0.75)
    stride = config["stride"]
    subsampled = constant[:, :, ::stride, ::stride]
    torch.testing.assert_close(local_relation(query, key, constant, geo_prior, **options(config)), subsampled)
    base = local_relation(query, key, value, geo_prior, **options(config))
    shifted = local_relation(query, key, value, geo_prior + 3.0, **options(config))
    torch.testing.assert_close(shifted, base, rtol=1e-5, atol=1e-5)
