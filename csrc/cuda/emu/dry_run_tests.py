"""Dry run of tests/test_ops_cuda.py on the CPU, with the CUDA kernels running in the emulator (lr_emu.cuh).

A development check for machines without a GPU: a temporary copy of the test file gets its tensors on the
CPU and ``local_relation`` replaced by an autograd function over the emulated forward and backward (the
production launch plan, 48 KiB of shared memory); the test that asks the dispatcher for the CUDA kernel is
left out. Everything else (gradcheck, low precision, stage shapes, determinism, ...) runs as written.

    .venv/bin/python csrc/cuda/emu/dry_run_tests.py [pytest args]   # about 6 minutes on 2 cores
"""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(HERE, "..", "..", "..", "tests", "test_ops_cuda.py")

EMULATED_OP = '''
import sys

import torch

sys.path.insert(0, {here!r})
import check_emulated as emu  # noqa: E402

from lrrobust.ops.checks import check_inputs  # noqa: E402

EXT = emu.build()
CODES = {{"sqdiff": 0, "absdiff": 1, "product": 2}}


class EmulatedLocalRelation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, geo_prior, kernel_size, stride, dilation, kind):
        out, lse = EXT.forward_lse(query, key, value, geo_prior, kernel_size, stride, dilation, CODES[kind], emu.SMEM)
        ctx.save_for_backward(query, key, value, geo_prior, out, lse)  # as lrrobust.ops.library's autograd
        ctx.options = (kernel_size, stride, dilation, CODES[kind])
        return out

    @staticmethod
    def backward(ctx, grad_out):
        grads = EXT.backward_saved(grad_out, *ctx.saved_tensors, *ctx.options, emu.SMEM, emu.BUDGET)
        return (*grads, None, None, None, None)


def local_relation(query, key, value, geo_prior, kernel_size, stride=1, dilation=1, composability="sqdiff"):
    check_inputs(query, key, value, geo_prior, kernel_size, stride, dilation, composability)  # as the real one
    return EmulatedLocalRelation.apply(query, key, value, geo_prior, kernel_size, stride, dilation, composability)
'''

REPLACEMENTS = [
    ('device="cuda"', 'device="cpu"'),
    ("not torch.cuda.is_available()", "False"),
    ('out.device.type == "cuda"', 'out.device.type == "cpu"'),
    ("inputs[3] = inputs[3].cpu()", 'inputs[3] = inputs[3].to("meta")'),
    ("from lrrobust.ops import local_relation\n", "from emulated_op import local_relation\n"),
    ("def test_kernel_available():", "def _not_emulated_kernel_available():"),
]


def main() -> int:
    with open(TESTS) as f:
        source = f.read()
    for old, new in REPLACEMENTS:
        if old not in source:
            raise SystemExit(f"dry_run_tests: {old!r} no longer in {TESTS}; update REPLACEMENTS")
        source = source.replace(old, new)
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "emulated_op.py"), "w") as f:
            f.write(EMULATED_OP.format(here=HERE))
        with open(os.path.join(tmp, "test_ops_cuda_emulated.py"), "w") as f:
            f.write(source)
        sys.path.insert(0, tmp)
        args = ["-q", "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestUnknownMarkWarning", "--rootdir", tmp]
        return pytest.main([*args, *sys.argv[1:], os.path.join(tmp, "test_ops_cuda_emulated.py")])


if __name__ == "__main__":
    sys.exit(main())
