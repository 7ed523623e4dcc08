"""Fuzz test of the local relation op (paper Sec. 4): random valid calls against the reference, random invalid calls.

Valid cases (random shapes, groups, kernel sizes, strides and dilations, some at the bounds of
``lrrobust.ops.checks``, some with inf/NaN entries, some non-contiguous) run here in float64: the compiled CPU
kernel's output and four gradients must match ``local_relation_reference`` (for non-finite inputs: the same NaN
and +-inf positions and the same finite values). Strides and dilations beyond the map are compared with the
reference at a clamped, equivalent value (a dilation >= max(H, W) leaves only the window's centre row and
column in the image; a stride >= max(H, W) leaves one output pixel), since the reference's unfold would pad
the map by the window's whole reach.

Invalid cases (kernel size, stride or dilation beyond the bounds, negative or zero; mismatched shapes, ranks,
dtypes and devices; a meta tensor among CPU tensors; ints beyond int64; unknown composability) go through
``local_relation`` and through ``torch.ops.lrrobust.local_relation_forward`` / ``_backward`` called directly,
in a subprocess that reports each case before and after running it: every case must end in a Python
exception. A signal (segfault, abort) or a case that returns fails the test with the case, instead of killing
pytest; after a crash the remaining cases run in a fresh subprocess.

    LRROBUST_FUZZ_CASES=5000 .venv/bin/python -m pytest -q tests/test_ops_fuzz.py   # 5000 of each kind
    LRROBUST_FUZZ_SEED=7 ...                                                         # another draw
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import torch

from lrrobust.ops import kernel_available, local_relation
from lrrobust.ops.checks import MAX_DILATION, MAX_KERNEL_SIZE, MAX_REACH, MAX_STRIDE
from lrrobust.ops.reference import COMPOSABILITIES, local_relation_reference

CASES = int(os.environ.get("LRROBUST_FUZZ_CASES", "100"))
SEED = int(os.environ.get("LRROBUST_FUZZ_SEED", "20240611"))
SPECIAL = (float("inf"), -float("inf"), float("nan"))
CODES = {"sqdiff": 0, "absdiff": 1, "product": 2}

pytestmark = [
    pytest.mark.skipif(not kernel_available("cpu"), reason="the compiled CPU kernel is not built"),
    pytest.mark.usefixtures("cpu_lanes"),  # every test on both CPU work units
]


# ---------------------------------------------------------------------------------------------------------- valid


def _odd(rng: random.Random, low: int, high: int) -> int:
    return rng.randrange(low // 2, high // 2 + 1) * 2 + 1


def valid_case(rng: random.Random) -> dict:
    groups, per_group = rng.randint(1, 3), rng.randint(1, 5)
    height, width = rng.randint(1, 11), rng.randint(1, 11)
    side = max(height, width)
    kernel_size = _odd(rng, 1, 9) if rng.random() < 0.7 else _odd(rng, 1, 2 * side + 3)
    radius = (kernel_size - 1) // 2
    stride = rng.randint(1, 4) if rng.random() < 0.9 else rng.choice([side, rng.randint(side, MAX_STRIDE), MAX_STRIDE])
    top = min(MAX_DILATION, MAX_REACH // radius) if radius else MAX_DILATION
    dilation = rng.randint(1, 4) if rng.random() < 0.85 else rng.choice([side, rng.randint(1, top), top])
    return {
        "n": rng.randint(1, 2),
        "groups": groups,
        "channels": rng.randint((groups - 1) * per_group + 1, groups * per_group),
        "height": height,
        "width": width,
        "kernel_size": kernel_size,
        "stride": stride,
        "dilation": dilation,
        "composability": rng.choice(COMPOSABILITIES),
        "nonfinite": rng.random() < 0.15,
        "non_contiguous": rng.random() < 0.15,
        "seed": rng.randrange(2**31),
    }


# Fixed cases at the bounds: the largest reach, stride and dilation allowed.
EDGE_VALID = [
    {"kernel_size": 3, "dilation": MAX_DILATION, "stride": 1},
    {"kernel_size": 5, "dilation": MAX_REACH // 2, "stride": 2},
    {"kernel_size": 1, "dilation": MAX_DILATION, "stride": MAX_STRIDE},
    {"kernel_size": 7, "dilation": 3, "stride": MAX_STRIDE},
]


def valid_cases() -> list[dict]:
    rng = random.Random(SEED)
    cases = [valid_case(rng) for _ in range(CASES)]
    for case, edge in zip(cases, EDGE_VALID):
        case.update(edge)
    return cases


def make_valid_inputs(case: dict) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(case["seed"])
    n, g, c, h, w, k, s = (case[key] for key in ("n", "groups", "channels", "height", "width", "kernel_size", "stride"))
    shapes = [(n, g, -(-h // s), -(-w // s)), (n, g, h, w), (n, c, h, w), (g, k, k)]
    tensors = [torch.randn(shape, generator=gen, dtype=torch.float64) for shape in shapes]
    if case["nonfinite"]:
        special = torch.tensor(SPECIAL, dtype=torch.float64)
        for tensor in tensors:
            hit = torch.rand(tensor.shape, generator=gen) < 0.08
            tensor[hit] = special[torch.randint(0, 3, (int(hit.sum()),), generator=gen)]
    if case["non_contiguous"]:  # the same values in transposed storage
        tensors = [t.transpose(-1, -2).contiguous().transpose(-1, -2) for t in tensors]
    return tensors


def assert_same(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Equal NaN, +inf and -inf positions; the finite values equal within float64 round-off."""
    assert got.shape == want.shape, (what, got.shape, want.shape)
    for name, pick in (("NaN", torch.isnan), ("+inf", lambda t: t == float("inf")),
                       ("-inf", lambda t: t == -float("inf"))):
        mismatch = pick(got) != pick(want)
        assert not mismatch.any(), f"{what}: {name} at {mismatch.nonzero()[:4].tolist()} in one only"
    finite = torch.isfinite(want)
    if finite.any():
        torch.testing.assert_close(got[finite], want[finite], rtol=1e-9, atol=1e-9, msg=lambda m: f"{what}: {m}")


def test_valid_cases_match_the_reference():
    for index, case in enumerate(valid_cases()):
        what = f"valid case {index} (LRROBUST_FUZZ_SEED={SEED}): {case}"
        x = [t.requires_grad_() for t in make_valid_inputs(case)]
        k, s, d, kind = case["kernel_size"], case["stride"], case["dilation"], case["composability"]
        out = local_relation(*x, k, stride=s, dilation=d, composability=kind)
        side = max(case["height"], case["width"])
        want = local_relation_reference(*x, k, min(s, side), min(d, side), kind)
        assert_same(out.detach(), want.detach(), what + " forward")
        grad_out = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(case["seed"] + 1))
        got_grads = torch.autograd.grad(out, x, grad_out)
        want_grads = torch.autograd.grad(want, x, grad_out)
        for name, got, ref in zip(("query", "key", "value", "geo_prior"), got_grads, want_grads):
            assert_same(got, ref, f"{what} grad {name}")


# -------------------------------------------------------------------------------------------------------- invalid

HUGE = [2**28 + 1, 2**31 - 1, 2**31, 2**32 + 1, 3 * 2**61, 2**62, 2**63 - 1]
BEYOND_INT64 = [2**63, 2**64, -(2**63) - 1]
NOT_POSITIVE = [0, -1, -3, -(2**31), -(2**63)]


BACKWARD_ONLY = ["grad_out", "out", "lse"]  # the tensors only the backward takes


def _base(rng: random.Random) -> dict:
    """A valid call: sizes, options and per-tensor device and dtype; the invalid cases change one thing."""
    groups, per_group = rng.randint(1, 3), rng.randint(1, 3)
    height, width, stride = rng.randint(1, 8), rng.randint(1, 8), rng.randint(1, 3)
    ho, wo = -(-height // stride), -(-width // stride)
    n, k = rng.randint(1, 2), rng.choice([1, 3, 5])
    channels = rng.randint((groups - 1) * per_group + 1, groups * per_group)
    return {
        "api": rng.choice(["python", "forward", "backward"]),
        "shapes": {"grad_out": [n, channels, ho, wo], "query": [n, groups, ho, wo], "key": [n, groups, height, width],
                   "value": [n, channels, height, width], "geo_prior": [groups, k, k],
                   "out": [n, channels, ho, wo], "lse": [n, groups, ho, wo]},  # the backward's saved forward
        "devices": {},
        "dtypes": {},
        "kernel_size": k,
        "stride": stride,
        "dilation": rng.randint(1, 3),
        "composability": rng.choice(COMPOSABILITIES),
    }


def _huge_window(case: dict, rng: random.Random) -> str:
    which = rng.choice(["kernel_size", "stride", "dilation", "reach"])
    if which == "reach":  # each within its bound, their product beyond MAX_REACH
        case["kernel_size"] = k = rng.choice([5, 7, 101, MAX_KERNEL_SIZE])
        case["dilation"] = rng.randint(MAX_REACH // ((k - 1) // 2) + 1, MAX_DILATION)
    elif which == "kernel_size":
        case["kernel_size"] = rng.choice([MAX_KERNEL_SIZE + 2, *[v | 1 for v in HUGE]])
        if rng.random() < 0.5:  # an all-meta call can even carry a geo_prior of that size (if its bytes fit int64)
            case["kernel_size"] = rng.choice([MAX_KERNEL_SIZE + 2, 2**20 + 1, 2**28 + 1])
            case["devices"] = dict.fromkeys(case["shapes"], "meta")
            case["shapes"]["geo_prior"][1:] = [case["kernel_size"]] * 2
    else:
        case[which] = rng.choice(HUGE)
        if which == "stride":  # the query of that stride: one output pixel
            for name in ("query", "grad_out", "out", "lse"):
                case["shapes"][name][2:] = [1, 1]
    return f"huge {which}"


def _not_positive(case: dict, rng: random.Random) -> str:
    which = rng.choice(["kernel_size", "stride", "dilation"])
    case[which] = rng.choice(NOT_POSITIVE + ([2, 4, 32768] if which == "kernel_size" else []))
    return f"{which} {case[which]}"


def _beyond_int64(case: dict, rng: random.Random) -> str:
    which = rng.choice(["kernel_size", "stride", "dilation"])
    case[which] = rng.choice(BEYOND_INT64)
    return f"{which} beyond int64"


def _bad_shape(case: dict, rng: random.Random) -> str:
    names = ["query", "key", "value", "geo_prior"] + (BACKWARD_ONLY if case["api"] == "backward" else [])
    name = rng.choice(names)
    shape = case["shapes"][name]
    change = rng.choice(["resize", "resize", "rank", "groups"])
    if change == "rank":
        shape.append(1) if rng.random() < 0.5 else shape.pop(0)
    elif change == "groups":  # one group more than channels: the last group gets none
        groups = case["shapes"]["value"][1] + 1
        for other in ("query", "key"):
            case["shapes"][other][1] = groups
        case["shapes"]["geo_prior"][0] = groups
    elif name == "value" and rng.random() < 0.7:  # value's channels alone may change validly: not them
        axis = rng.choice([0, 2, 3])
        shape[axis] += rng.randint(1, 3)
    else:
        axis = rng.randrange(len(shape))
        shape[axis] = 0 if name == "value" and axis == 1 else shape[axis] + rng.choice([-1, 1, 2])
        if name == "value" and axis == 1 and case["api"] != "backward":
            return "value without channels"
    return f"{name} shape {change}"


def _bad_device(case: dict, rng: random.Random) -> str:
    names = ["query", "key", "value", "geo_prior"] + (BACKWARD_ONLY if case["api"] == "backward" else [])
    name = rng.choice(names)
    if rng.random() < 0.3:  # all meta but one on the CPU
        case["devices"] = dict.fromkeys(names, "meta")
        case["devices"][name] = "cpu"
        return f"{name} on cpu among meta"
    case["devices"][name] = "meta"
    return f"{name} on meta among cpu"


def _bad_dtype(case: dict, rng: random.Random) -> str:
    name = rng.choice(["query", "key", "value", "geo_prior"])
    if case["api"] == "python":  # float dtypes are promoted there: integers and bools are the mistake
        case["dtypes"][name] = rng.choice(["int64", "int32", "bool"])
    else:
        case["dtypes"][name] = rng.choice(["float32", "int64", "float16"])
    return f"{name} {case['dtypes'][name]}"


def _bad_composability(case: dict, rng: random.Random) -> str:
    case["composability"] = rng.choice([3, -1, 2**40]) if case["api"] != "python" else rng.choice(["dot", "", None])
    return f"composability {case['composability']!r}"


def _not_a_tensor(case: dict, rng: random.Random) -> str:
    name = rng.choice(["query", "key", "value", "geo_prior"])
    case["devices"][name] = rng.choice(["none", "list"])
    return f"{name} is {case['devices'][name]}"


MUTATIONS = [_huge_window, _huge_window, _huge_window, _not_positive, _beyond_int64, _bad_shape, _bad_shape,
             _bad_device, _bad_device, _bad_dtype, _bad_composability, _not_a_tensor]

EDGE_INVALID = [  # (api, kernel_size, stride, dilation): the call, and each bound plus one
    ("python", 3, 1, 3 * 2**61),
    ("forward", 3, 1, 3 * 2**61),
    ("backward", 3, 1, 3 * 2**61),
    ("forward", 1, 1, MAX_DILATION + 1),
    ("python", 3, 1, MAX_DILATION + 1),
    ("backward", 5, 1, MAX_REACH // 2 + 1),
    ("forward", MAX_KERNEL_SIZE + 2, 1, 1),
    ("backward", 3, MAX_STRIDE + 1, 1),
]


def invalid_cases() -> list[dict]:
    rng = random.Random(SEED + 1)
    cases = []
    for api, k, s, d in EDGE_INVALID:
        case = _base(rng)
        case.update(api=api, kernel_size=k, stride=s, dilation=d, label=f"bound: K={k} s={s} d={d}")
        height, width = case["shapes"]["key"][2:]
        for name in ("query", "grad_out", "out", "lse"):
            case["shapes"][name][2:] = [-(-height // s), -(-width // s)]
        cases.append(case)
    while len(cases) < max(CASES, len(EDGE_INVALID)):
        case = _base(rng)
        case["label"] = rng.choice(MUTATIONS)(case, rng)
        cases.append(case)
    return cases


# The subprocess side: runs each case and reports it as one JSON line, flushed before and after the call.


def _tensor(case: dict, name: str, gen: torch.Generator):
    device = case["devices"].get(name, "cpu")
    if device == "none":
        return None
    if device == "list":
        return [[0.0]]
    dtype = getattr(torch, case["dtypes"].get(name, "float64"))
    shape = case["shapes"][name]
    if device == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def make_case_inputs(case: dict) -> list:
    gen = torch.Generator().manual_seed(0)
    return [_tensor(case, name, gen) for name in ("query", "key", "value", "geo_prior", "grad_out", "out", "lse")]


def run_case(case: dict, inputs: list):
    q, k, v, p, go, out, lse = inputs
    options = (case["kernel_size"], case["stride"], case["dilation"])
    if case["api"] == "python":
        return local_relation(q, k, v, p, *options, composability=case["composability"])
    code = CODES.get(case["composability"], case["composability"])
    if case["api"] == "forward":
        return torch.ops.lrrobust.local_relation_forward(q, k, v, p, *options, code)
    return torch.ops.lrrobust.local_relation_backward(go, q, k, v, p, out, lse, *options, code)


def worker() -> None:
    for line in sys.stdin:
        index, case = json.loads(line)
        try:
            inputs = make_case_inputs(case)
        except Exception as error:  # noqa: BLE001 - a case the generator should not make
            print(json.dumps({"index": index, "setup": f"{type(error).__name__}: {error}"}), flush=True)
            continue
        print(json.dumps({"start": index}), flush=True)
        try:
            run_case(case, inputs)
        except Exception as error:  # noqa: BLE001 - every exception is the expected outcome, reported
            message = (str(error).splitlines() or [""])[0][:300]
            report = {"index": index, "raised": type(error).__name__, "message": message}
        else:
            report = {"index": index, "raised": None, "message": "returned without an error"}
        print(json.dumps(report), flush=True)


def run_in_subprocess(cases: list[tuple[int, dict]]) -> tuple[list[dict], int | None, int]:
    """Runs cases in one subprocess: (reports, the case it died in or None, return code). A process that dies
    inside a case is blamed on that case; one that dies between cases (heap corruption caught later, by free or
    at exit) on the case it ran last, whose report is then dropped."""
    feed = "".join(json.dumps(item) + "\n" for item in cases)
    command = [sys.executable, __file__, "--invalid-worker"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, input=feed, capture_output=True, text=True, timeout=600, env=env, check=False)
    reports, last = [], None
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            last = record.get("start", record.get("index"))
            if "start" not in record:
                reports.append(record)
    if proc.returncode == 0:
        return reports, None, 0
    died_in = cases[0][0] if last is None else last
    return [r for r in reports if r["index"] != died_in], died_in, proc.returncode


def test_invalid_cases_raise_and_never_crash():
    all_cases = invalid_cases()
    pending = list(enumerate(all_cases))
    reports, crashes = [], []
    while pending:
        got, died_in, returncode = run_in_subprocess(pending)
        reports += got
        done = {report["index"] for report in got}
        if died_in is not None:  # a signal or an exit: note it, go on with the rest in a fresh process
            crashes.append((died_in, returncode))
            done.add(died_in)
        elif len(done) < len(pending):
            raise AssertionError(f"the worker ended early without an error code ({len(done)} of {len(pending)})")
        pending = [(i, case) for i, case in pending if i not in done]
    problems = [f"case {i} ({all_cases[i]['label']}, {all_cases[i]['api']}): died, code {rc}" for i, rc in crashes]
    for report in reports:
        case = all_cases[report["index"]]
        where = f"case {report['index']} ({case['label']}, {case['api']})"
        # Our checks name the op: every message of local_relation, and of any call with a window beyond the bounds.
        ours = case["api"] == "python" or case["label"].startswith(("huge", "bound"))
        if "setup" in report:
            problems.append(f"{where}: the inputs could not be made: {report['setup']}")
        elif report["raised"] is None:
            problems.append(f"{where}: no error: {case}")
        elif ours and "local_relation" not in report["message"]:
            problems.append(f"{where}: unclear message {report['raised']}: {report['message']!r}")
    print(f"fuzz: {len(all_cases)} invalid cases, {len(crashes)} crashes (LRROBUST_FUZZ_SEED={SEED})")
    assert len(reports) + len(crashes) == len(all_cases)
    assert not problems, f"{len(problems)} of {len(all_cases)} invalid cases failed:\n" + "\n".join(problems[:30])


if __name__ == "__main__" and sys.argv[1:] == ["--invalid-worker"]:
    worker()
