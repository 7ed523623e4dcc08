"""The self-check on first use of the fused local relation op (issue 13; ``lrrobust.ops.self_check``).

The CPU stands in for CUDA: ``SELF_CHECK_DEVICES`` is patched to include "cpu", and a wrong kernel is made by
patching ``library.fused_forward`` / ``fused_backward``, the one seam through which local_relation, its autograd
formula and the self-check call the compiled ops.
"""

from __future__ import annotations

import re

import pytest
import torch
from typer.testing import CliRunner

from lrrobust import ops
from lrrobust.cli import app
from lrrobust.ops import library, local_relation, self_check
from lrrobust.ops.cuda_plan import cuda_launch_plan
from lrrobust.ops.reference import local_relation_reference

pytestmark = pytest.mark.skipif(not ops.kernel_available("cpu"), reason="the compiled CPU kernel is not built")

REAL_FORWARD = library.fused_forward
REAL_BACKWARD = library.fused_backward
FULL_WINDOW = next(p for p in self_check.PROBLEMS if p.name == "full window")


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """No results from other tests, no self-check variables from the environment; one CPU thread (conftest)."""
    monkeypatch.setattr(self_check, "RESULTS", {})
    monkeypatch.delenv(self_check.SKIP_VARIABLE, raising=False)
    monkeypatch.delenv(library.REFERENCE_OP_VARIABLE, raising=False)


@pytest.fixture
def on_cpu(monkeypatch):
    """The CPU checked on first use, as CUDA is."""
    monkeypatch.setattr(self_check, "SELF_CHECK_DEVICES", {"cuda", "cpu"})


@pytest.fixture
def calls(monkeypatch) -> list:
    """(device, dtype) of every self-check run."""
    seen = []

    def counted(device, dtype):
        seen.append((str(device), dtype))
        return run(device, dtype)

    run = self_check.run_self_check
    monkeypatch.setattr(self_check, "run_self_check", counted)
    return seen


def inputs(dtype=torch.float32, requires_grad=False, k=3):
    gen = torch.Generator().manual_seed(0)
    shapes = [(2, 2, 5, 6), (2, 2, 5, 6), (2, 6, 5, 6), (2, k, k)]
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_(requires_grad) for s in shapes]


def wrong_forward_in_full_window(*args):
    """The real forward, its output 0.5 off at one pixel when the window is the self-check's full window."""
    out, lse = REAL_FORWARD(*args)
    if args[4] == FULL_WINDOW.k:
        out = out.clone()
        out[0, 1, 2, 3] += 0.5
    return out, lse


def wrong_lse_at_stride_2(*args):
    """The real forward, its log-sum-exp 0.125 off at one pixel when the stride is 2."""
    out, lse = REAL_FORWARD(*args)
    if args[5] == 2:
        lse = lse.clone()
        lse[1, 0, 1, 2] += 0.125
    return out, lse


def wrong_grad_key_at_stride_2(grad_out, *args):
    """The real backward, grad_key 0.25 off at one pixel when the stride is 2."""
    stride = args[-3]  # (..., out, lse, kernel_size, stride, dilation, phi)
    grads = list(REAL_BACKWARD(grad_out, *args))
    if stride == 2:
        grads[1] = grads[1].clone()
        grads[1][1, 0, 3, 4] -= 0.25
    return tuple(grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_the_real_cpu_kernel_passes(dtype):
    result = self_check.run_self_check("cpu", dtype)
    assert result.passed, result.describe()
    assert result.device == "cpu" and result.dtype == dtype and result.error is None
    assert [(case, q) for case, q, _, _ in result.rows] == [
        (p.name, q) for p in self_check.PROBLEMS for q in self_check.QUANTITIES
    ]
    assert all(0 <= difference <= tolerance for _, _, difference, tolerance in result.rows)
    # The worst row is the one closest to its tolerance, and the record names it.
    worst = max(result.rows, key=lambda row: row[2] / row[3])
    assert (result.case, result.quantity, result.difference, result.tolerance) == worst
    assert result.seconds > 0
    assert self_check.RESULTS == {("cpu", dtype): result}


def test_the_problems_cover_what_the_issue_asks():
    problems = self_check.PROBLEMS
    assert any(p.k == 7 for p in problems)
    assert any(p.k >= 2 * max(p.h, p.w) - 1 for p in problems)
    assert any(p.s == 2 for p in problems) and any(p.d == 2 for p in problems)
    assert {p.composability for p in problems} == set(ops.COMPOSABILITIES)
    assert any(p.g > 1 for p in problems) and any(p.n > 1 for p in problems)
    assert any(-(-p.c // p.g) > 8 for p in problems)  # more channels per group than one CUDA channel chunk


@pytest.mark.skipif(not library.LOADED, reason="lrrobust._C is not built")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_the_problems_reach_every_kernel_path_in_every_dtype(dtype):
    # What a GPU would launch for each problem (the planner on the host): the row-stacked forward and statistics,
    # the one-output-per-thread tiled ones, every pass untiled, and the gather's two chunk shapes and two walks.
    plans = [(p, cuda_launch_plan(p.n, p.c, p.g, p.h, p.w, p.k, p.s, p.d, dtype=dtype)) for p in self_check.PROBLEMS]
    assert any(plan.forward.rows_per_thread == 4 for _, plan in plans)
    assert any(plan.forward.tiled and plan.forward.rows_per_thread == 1 and plan.window.tiled for _, plan in plans)
    assert any(not (plan.forward.tiled or plan.window.tiled or plan.gather.tiled) for _, plan in plans)
    assert any(plan.gather.tiled and p.k <= 8 for p, plan in plans) and any(p.k > 8 for p, _ in plans)
    assert any(p.s == 1 for p, _ in plans) and any(p.s > 1 for p, _ in plans)


def test_first_fused_call_runs_it_once_per_device_and_dtype(on_cpu, calls):
    x = inputs()
    local_relation(*x, 3)
    local_relation(*x, 3)
    assert calls == [("cpu", torch.float32)]
    local_relation(*[t.double() for t in x], 3)
    local_relation(*[t.double() for t in x], 3)
    assert calls == [("cpu", torch.float32), ("cpu", torch.float64)]
    assert set(self_check.RESULTS) == {("cpu", torch.float32), ("cpu", torch.float64)}


def test_it_runs_under_inference_mode_and_leaves_the_random_generators_alone(on_cpu, calls):
    state = torch.get_rng_state()
    with torch.inference_mode():
        out = local_relation(*inputs(), 3)
    assert calls == [("cpu", torch.float32)] and self_check.RESULTS[("cpu", torch.float32)].passed
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(out, local_relation_reference(*inputs(), 3))


def test_no_self_check_on_the_cpu_by_default(calls, monkeypatch):
    assert self_check.SELF_CHECK_DEVICES == {"cuda"}
    monkeypatch.setattr(library, "fused_forward", wrong_forward_in_full_window)
    x = inputs()
    out = local_relation(*x, 3)
    assert calls == [] and self_check.RESULTS == {}
    torch.testing.assert_close(out, REAL_FORWARD(*x, 3, 1, 1, 0)[0])


def test_a_wrong_forward_raises_one_clear_error(on_cpu, calls, monkeypatch):
    monkeypatch.setattr(library, "fused_forward", wrong_forward_in_full_window)
    with pytest.raises(RuntimeError) as caught:
        local_relation(*inputs(), 3)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("lrrobust: the fused CPU local relation kernel disagrees with the reference on cpu (")
    assert ") float32: largest difference 0.5 in output of case 'full window' (tolerance " in message
    assert "set LRROBUST_REFERENCE_OP=1 to use the pure-PyTorch reference" in message
    assert "LRROBUST_SKIP_SELF_CHECK=1 to skip this check" in message
    assert "`lrrobust bench op --device cpu --dtype float32`" in message
    tolerance = float(re.search(r"\(tolerance ([0-9.e-]+)\)", message).group(1))
    assert 0 < tolerance < 0.01
    # Every later call raises the same, without running the check again.
    with pytest.raises(RuntimeError, match=re.escape(message)):
        local_relation(*inputs(), 3)
    assert calls == [("cpu", torch.float32)]


def test_a_wrong_gradient_raises_naming_it(on_cpu, monkeypatch):
    monkeypatch.setattr(library, "fused_backward", wrong_grad_key_at_stride_2)
    with pytest.raises(RuntimeError, match=r"on cpu \(.*\) float64: largest difference 0\.25 in grad_key of case "
                                           r"'stride 2' \(tolerance [0-9.e-]+\)"):
        local_relation(*inputs(torch.float64), 3)
    result = self_check.RESULTS[("cpu", torch.float64)]
    assert not result.passed
    failing = [(case, q) for case, q, difference, tolerance in result.rows if difference > tolerance]
    assert failing == [("stride 2", "grad_key")]
    assert "FAILED" in ops.build_info()


def test_a_wrong_log_sum_exp_raises_naming_it(on_cpu, monkeypatch):
    # The CUDA backward reads its weights from the forward's log-sum-exp, so the self-check compares it too.
    monkeypatch.setattr(library, "fused_forward", wrong_lse_at_stride_2)
    with pytest.raises(RuntimeError, match=r"float64: largest difference 0\.125 in log-sum-exp of case 'stride 2'"):
        local_relation(*inputs(torch.float64), 3)


def test_the_seam_is_what_autograd_calls_too(monkeypatch):
    # local_relation's backward goes through library.fused_backward, so the self-check checks what training runs.
    monkeypatch.setattr(library, "fused_backward", wrong_grad_key_at_stride_2)
    x = [t.detach().requires_grad_() for t in inputs(torch.float64)]
    q = x[0][:, :, ::2, ::2].detach().requires_grad_()
    out = local_relation(q, *x[1:], 3, stride=2)
    grad_key = torch.autograd.grad(out.sum(), x[1])[0]
    want = torch.autograd.grad(local_relation_reference(q, *x[1:], 3, 2).sum(), x[1])[0]
    assert (grad_key - want)[1, 0, 3, 4].item() == pytest.approx(-0.25)


def test_a_kernel_that_raises_is_reported_as_failing_the_check(on_cpu, monkeypatch):
    def broken(*args):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    monkeypatch.setattr(library, "fused_backward", broken)
    with pytest.raises(RuntimeError) as caught:
        local_relation(*inputs(), 3)
    message = str(caught.value)
    assert message.startswith("lrrobust: the fused CPU local relation kernel failed its self-check on cpu (")
    assert ("float32: case '7x7 window' backward raised RuntimeError: CUDA error: no kernel image is available for "
            "execution on the device; set LRROBUST_REFERENCE_OP=1") in message


def test_skip_variable_skips_it(on_cpu, calls, monkeypatch):
    monkeypatch.setenv("LRROBUST_SKIP_SELF_CHECK", "1")
    monkeypatch.setattr(library, "fused_forward", wrong_forward_in_full_window)
    x = inputs(k=FULL_WINDOW.k)
    wrong = local_relation(*x, FULL_WINDOW.k)  # the wrong kernel's result comes back
    assert calls == [] and self_check.RESULTS == {}
    assert (wrong - REAL_FORWARD(*x, FULL_WINDOW.k, 1, 1, 0)[0])[0, 1, 2, 3].item() == pytest.approx(0.5)
    assert "self-check: skipped by LRROBUST_SKIP_SELF_CHECK" in ops.build_info()
    monkeypatch.setenv("LRROBUST_SKIP_SELF_CHECK", "0")
    with pytest.raises(RuntimeError, match="disagrees with the reference"):
        local_relation(*x, FULL_WINDOW.k)


def test_reference_variable_gives_the_reference_even_with_a_wrong_kernel(on_cpu, calls, monkeypatch):
    monkeypatch.setenv("LRROBUST_REFERENCE_OP", "1")
    monkeypatch.setattr(library, "fused_forward", wrong_forward_in_full_window)
    monkeypatch.setattr(library, "fused_backward", wrong_grad_key_at_stride_2)
    x = inputs(torch.float64, requires_grad=True, k=FULL_WINDOW.k)
    out = local_relation(*x, FULL_WINDOW.k)
    want = local_relation_reference(*x, FULL_WINDOW.k)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    for got, expected in zip(torch.autograd.grad(out.sum(), x), torch.autograd.grad(want.sum(), x)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert calls == [] and not ops.kernel_available("cpu")
    assert "LRROBUST_REFERENCE_OP=1: the pure-PyTorch reference serves every device" in ops.build_info()


def test_never_recursively(on_cpu, calls, monkeypatch):
    # A fused call that reaches check_before_use again while the check runs does not start a second check.
    def reentrant(*args):
        self_check.check_before_use(args[2].device, args[2].dtype)
        return REAL_FORWARD(*args)

    monkeypatch.setattr(library, "fused_forward", reentrant)
    local_relation(*inputs(), 3)
    assert calls == [("cpu", torch.float32)] and self_check.RESULTS[("cpu", torch.float32)].passed


def test_not_while_torch_compile_traces(on_cpu, calls):
    def layer(query, key, value, geo_prior):
        return local_relation(query, key, value, geo_prior, 3).sum()

    x = inputs()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    got = compiled(*x)
    assert calls == [] and self_check.RESULTS == {}  # traced and run without it: left for the next eager call
    torch.testing.assert_close(got, layer(*x))
    assert calls == [("cpu", torch.float32)]


def test_build_info_reports_what_it_found(on_cpu):
    assert "self-check: not run yet" in ops.build_info()
    local_relation(*inputs(), 3)
    info = ops.build_info()
    assert info.startswith("lrrobust._C loaded: CPU kernel compiled")
    assert re.search(r"self-check: cpu \(.+\) float32: passed, largest difference [0-9.e-]+ in \w+ of case '[^']+' "
                     r"\(tolerance [0-9.e-]+\), [0-9.]+ s$", info), info
    assert "\n" not in info


def test_unchecked_dtypes_are_left_to_the_op(on_cpu, calls):
    self_check.check_before_use(torch.device("cpu"), torch.float8_e4m3fn)
    assert calls == []
    with pytest.raises(ValueError, match="the self-check covers float64, float32, float16, bfloat16"):
        self_check.run_self_check("cpu", torch.float8_e4m3fn)


BENCH = ["bench", "op", "--device", "cpu", "--shape", "8x5", "--batch", "1", "--impl", "lr_fused", "--passes", "fwd",
         "--repeats", "1", "--warmup", "0"]


def test_bench_op_prints_the_self_check(tmp_path):
    markdown = tmp_path / "op.md"
    result = CliRunner().invoke(app, [*BENCH, "--markdown", str(markdown)])
    assert result.exit_code == 0, result.output
    assert re.search(r"self-check: cpu \(.+\) float32: passed, largest difference", result.output), result.output
    assert "self-check: cpu" in markdown.read_text() and ("cpu", torch.float32) in self_check.RESULTS


def test_bench_op_stops_on_a_wrong_kernel(monkeypatch):
    monkeypatch.setattr(library, "fused_forward", wrong_forward_in_full_window)
    result = CliRunner().invoke(app, BENCH)
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert "full window output 0.5" in output  # the table of every case and quantity
    assert "disagrees with the reference on cpu" in output and "local relation op vs convolutions" not in output


WHY_NOT = [
    ("LRROBUST_SKIP_SELF_CHECK", "self-check: skipped by LRROBUST_SKIP_SELF_CHECK"),
    ("LRROBUST_REFERENCE_OP", "self-check: not run (lr_fused runs the pure-PyTorch reference on cpu)"),
]


@pytest.mark.parametrize("variable,line", WHY_NOT)
def test_bench_op_says_why_it_did_not_check(variable, line, monkeypatch):
    monkeypatch.setenv(variable, "1")
    result = CliRunner().invoke(app, BENCH)
    assert result.exit_code == 0, result.output
    assert line in " ".join(result.output.split()) and self_check.RESULTS == {}


needs_cuda = pytest.mark.skipif(not ops.kernel_available("cuda") or not torch.cuda.is_available(),
                                reason="needs a CUDA GPU and the compiled CUDA kernel")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_the_real_cuda_kernel_passes(dtype):
    result = self_check.run_self_check("cuda", dtype)
    assert result.passed, result.describe()
    assert result.device == f"cuda:{torch.cuda.current_device()}" and ", sm_" in result.device_name


@pytest.mark.cuda
@needs_cuda
def test_the_first_cuda_call_runs_it_by_default(calls):
    x = [t.cuda() for t in inputs()]
    out = local_relation(*x, 3)
    assert calls == [(f"cuda:{torch.cuda.current_device()}", torch.float32)]
    torch.testing.assert_close(out.cpu(), local_relation_reference(*inputs(), 3))
