"""The self-check on first use: the fused local relation kernels (paper Sec. 4, Eq. 2-5) against the reference.

The CPU kernel is checked at build time by the test suite and the fuzz tests; the CUDA kernels are not (the machines
that build and test lrrobust have no GPU), so they first meet real hardware in a user's hands. The first fused call
of ``lrrobust.ops.local_relation`` on each (device, dtype) of a device type in ``SELF_CHECK_DEVICES`` therefore runs
``PROBLEMS`` through the fused forward (its output and log-sum-exp) and backward and through the reference in float64
on the same inputs, caches the result, and raises one RuntimeError if they disagree (every later call on that (device,
dtype) raises it again; nothing is re-run).

It never runs while ``torch.compile`` traces or a CUDA graph is being captured (the next eager call runs it), nor
from inside itself, and leaves the global random generators alone. ``LRROBUST_SKIP_SELF_CHECK=1`` skips it (read at
every call); ``LRROBUST_REFERENCE_OP=1`` makes the reference serve every device, so the fused kernels never run.
``run_self_check`` runs it explicitly (``lrrobust bench op`` does); ``summary`` is what ``build_info`` reports.
"""

from __future__ import annotations

import math
import platform
import threading
import time
from dataclasses import dataclass

import torch

from lrrobust.core.seeding import generator
from lrrobust.ops import library
from lrrobust.ops.library import PHI_CODES, REFERENCE_OP_VARIABLE, env_flag
from lrrobust.ops.reference import local_relation_reference, log_sum_exp_reference, output_size

SKIP_VARIABLE = "LRROBUST_SKIP_SELF_CHECK"

# Device types whose kernels are checked on first use (tests add "cpu").
SELF_CHECK_DEVICES = {"cuda"}

# The largest |fused - reference| allowed, as a fraction of 1 + the reference's largest magnitude (per output or
# gradient). tests/test_ops_cuda.py holds the CUDA kernels to the same. Half precision is computed in float32 and
# rounded to its dtype, so its tolerance is that rounding's, with room for values near the scale.
TOLERANCES = {torch.float64: 1e-10, torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}

QUANTITIES = ("output", "log-sum-exp", "grad_query", "grad_key", "grad_value", "grad_geo_prior")


@dataclass(frozen=True)
class Problem:
    """One small local relation problem: N images, C channels in G groups, H x W, a K x K window, stride, dilation."""

    name: str
    n: int
    c: int
    g: int
    h: int
    w: int
    k: int
    s: int
    d: int
    composability: str


# Paths per csrc/cuda/lr_plan.cuh at its 48 KiB shared-memory limit, the same for float64, float32, float16 and
# bfloat16 (tests/test_op_self_check.py checks them with lrrobust.ops.cuda_plan): "rows" is the fast path of
# stride-1, dilation-1 windows (4 output rows per thread), "tiled" stages haloed tiles in shared memory, "untiled"
# reads global memory directly. Sizes are kept small: the float64 reference unfolds K*K copies of the value, and
# costs most of the check's time on a CPU.
PROBLEMS = (
    # Rows and a tiled gather in chunks of 4 x 8 offsets; partial tiles; m = 8 as in LR-Net-26; the paper's 7x7.
    Problem("7x7 window", 1, 16, 2, 9, 34, 7, 1, 1, "sqdiff"),
    # Tiled, one output per thread, the gather's general stride walk; an odd map, m = 4 in 3 groups.
    Problem("stride 2", 2, 12, 3, 11, 13, 5, 2, 1, "absdiff"),
    # Tiled, one output per thread, m = 10: two channel chunks of the CUDA kernels, the last group of 9 channels.
    Problem("dilation 2", 1, 19, 2, 12, 10, 3, 1, 2, "product"),
    # K = 2 * max(H, W) - 1, every pixel sees the whole map: rows, tiles clipped to the map, the gather in chunks of
    # 1 x 32 offsets.
    Problem("full window", 1, 4, 2, 3, 20, 39, 1, 1, "sqdiff"),
    # A window reaching 45 pixels on a 64 x 64 map: every pass untiled, in every dtype.
    Problem("wide dilated window", 1, 4, 2, 64, 64, 7, 1, 15, "absdiff"),
)


@dataclass(frozen=True)
class SelfCheckResult:
    """What the self-check found on one (device, dtype).

    ``difference`` is the largest |fused - reference| of the (case, quantity) closest to its ``tolerance`` (an
    absolute bound: TOLERANCES[dtype] x (1 + the reference's largest magnitude)); ``rows`` holds every (case,
    quantity, difference, tolerance); ``error`` the exception a fused call raised, if one did.
    """

    device: str
    device_name: str
    dtype: torch.dtype
    passed: bool
    difference: float
    tolerance: float
    case: str
    quantity: str
    seconds: float
    rows: tuple[tuple[str, str, float, float], ...] = ()
    error: str | None = None

    def describe(self) -> str:
        """One line: device, dtype, verdict, the worst difference and where, time taken."""
        where = f"{self.device} ({self.device_name}) {dtype_name(self.dtype)}"
        if self.error is not None:
            return f"{where}: FAILED, case '{self.case}' {self.quantity} raised {self.error}"
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"{where}: {verdict}, largest difference {self.difference:.3g} in {self.quantity} of case '{self.case}' "
            f"(tolerance {self.tolerance:.3g}), {self.seconds:.2f} s"
        )

    def error_message(self) -> str:
        """The one line of the RuntimeError a failed check raises."""
        kind = self.device.split(":")[0].upper()
        where = f"on {self.device} ({self.device_name}) {dtype_name(self.dtype)}"
        if self.error is not None:
            found = f"failed its self-check {where}: case '{self.case}' {self.quantity} raised {self.error}"
        else:
            found = (
                f"disagrees with the reference {where}: largest difference {self.difference:.3g} in {self.quantity} "
                f"of case '{self.case}' (tolerance {self.tolerance:.3g})"
            )
        return (
            f"lrrobust: the fused {kind} local relation kernel {found}; set {REFERENCE_OP_VARIABLE}=1 to use the "
            f"pure-PyTorch reference, or {SKIP_VARIABLE}=1 to skip this check; please report it with `lrrobust bench "
            f"op --device {self.device.split(':')[0]} --dtype {dtype_name(self.dtype)}`'s output"
        )


# (str(device), dtype) -> result, for every check run in this process.
RESULTS: dict[tuple[str, torch.dtype], SelfCheckResult] = {}
_inside = threading.local()


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _device(device: torch.device | str) -> torch.device:
    """``device`` with its index: "cuda" -> cuda:<current device>."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def device_description(device: torch.device) -> str:
    """The GPU's name and compute capability ("NVIDIA H100, sm_90"), or the CPU's name."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)}, sm_{major}{minor}"
    return platform.processor() or platform.machine() or "unknown CPU"


def _inputs(problem: Problem, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    """query, key, value, geo_prior and grad_out, drawn from a generator of their own (the global ones untouched)."""
    p = problem
    ho, wo = output_size(p.h, p.s), output_size(p.w, p.s)
    shapes = [(p.n, p.g, ho, wo), (p.n, p.g, p.h, p.w), (p.n, p.c, p.h, p.w), (p.g, p.k, p.k), (p.n, p.c, ho, wo)]
    gen = generator("lrrobust ops self-check", p.name)
    return [torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype) for shape in shapes]


def _reference(problem: Problem, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Output and gradients of the reference in float64 on the fused call's inputs (the same rounded values)."""
    *tensors, grad_out = inputs
    leaves = [t.double().requires_grad_() for t in tensors]
    p = problem
    out = local_relation_reference(*leaves, p.k, p.s, p.d, p.composability)
    # The gradient of sum(out * grad_out), the same as grad(out, leaves, grad_out): passing grad_out itself would
    # make autograd import sympy on its first use, seconds of a first call that needs none of it.
    grads = torch.autograd.grad((out * grad_out.double()).sum(), leaves)
    query, key, _, geo_prior = (leaf.detach() for leaf in leaves)
    lse = log_sum_exp_reference(query, key, geo_prior, p.k, p.s, p.d, p.composability)
    return [out.detach(), lse, *grads]


def _difference(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want|; inf for a wrong shape or a NaN or inf where the reference is finite."""
    if got.shape != want.shape:
        return math.inf
    if got.numel() == 0:
        return 0.0
    diff = (got.double() - want).abs()
    return torch.where(torch.isfinite(diff), diff, math.inf).max().item()


def _check(device: torch.device, dtype: torch.dtype) -> SelfCheckResult:
    start = time.perf_counter()
    found = {"device": str(device), "device_name": device_description(device), "dtype": dtype}
    rows = []
    for problem in PROBLEMS:
        inputs = _inputs(problem, device, dtype)
        *tensors, grad_out = inputs
        options = (problem.k, problem.s, problem.d, PHI_CODES[problem.composability])
        step = "forward"
        try:
            got = list(library.fused_forward(*tensors, *options))  # the output and its log-sum-exp
            step = "backward"
            got += list(library.fused_backward(grad_out, *tensors, *got, *options))
            step = "comparison with the reference"  # where an asynchronous CUDA error shows
            for quantity, fused, want in zip(QUANTITIES, got, _reference(problem, inputs)):
                bound = TOLERANCES[dtype] * (1.0 + want.abs().max().item())
                rows.append((problem.name, quantity, _difference(fused, want), bound))
        except RuntimeError as error:
            text = " ".join(f"{type(error).__name__}: {error}".split())
            return SelfCheckResult(**found, passed=False, difference=math.inf, tolerance=0.0, case=problem.name,
                                   quantity=step, seconds=time.perf_counter() - start, rows=tuple(rows), error=text)
    case, quantity, difference, tolerance = max(rows, key=lambda row: row[2] / row[3])
    return SelfCheckResult(**found, passed=all(row[2] <= row[3] for row in rows), difference=difference,
                           tolerance=tolerance, case=case, quantity=quantity, seconds=time.perf_counter() - start,
                           rows=tuple(rows))


def run_self_check(device: torch.device | str, dtype: torch.dtype) -> SelfCheckResult:
    """Run ``PROBLEMS`` through the fused kernel on ``device`` in ``dtype`` now; record and return the result.

    Raises nothing when they disagree (``check_before_use`` does). ``dtype`` is one of ``TOLERANCES``.
    """
    device = _device(device)
    if dtype not in TOLERANCES:
        raise ValueError(f"the self-check covers {', '.join(map(dtype_name, TOLERANCES))}; got {dtype}")
    outer, _inside.active = getattr(_inside, "active", False), True
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            result = _check(device, dtype)
    finally:
        _inside.active = outer
    RESULTS[(str(device), dtype)] = result
    return result


def check_before_use(device: torch.device, dtype: torch.dtype) -> None:
    """Before a fused call: on the first one per (device, dtype) of ``SELF_CHECK_DEVICES``, run the self-check;
    raise RuntimeError (one line) if this (device, dtype) failed it. Call it only outside torch.compile's tracing."""
    if device.type not in SELF_CHECK_DEVICES or dtype not in TOLERANCES:
        return
    result = RESULTS.get((str(device), dtype))
    if result is None:
        if getattr(_inside, "active", False) or env_flag(SKIP_VARIABLE):
            return
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return
        result = run_self_check(device, dtype)
    if not result.passed:
        raise RuntimeError(result.error_message())


def summary() -> str:
    """What the self-check found so far, for ``build_info``: one clause per (device, dtype) checked."""
    if env_flag(SKIP_VARIABLE):
        return f"self-check: skipped by {SKIP_VARIABLE}"
    if not RESULTS:
        devices = ", ".join(sorted(SELF_CHECK_DEVICES))
        return f"self-check: not run yet (it runs on the first fused call per device and dtype on {devices})"
    return "self-check: " + "; ".join(result.describe() for result in RESULTS.values())
