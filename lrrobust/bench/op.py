"""Speed and memory of the local relation op against convolutions at the LR-Net-26 stage shapes (issue 2).

The local relation layer (paper Sec. 4, Eq. 2-5) replaces the 3x3 conv of a ResNet bottleneck (Sec. 5), so it
is timed beside ``nn.Conv2d(C, C, 3, padding=1)`` and a depthwise 7x7 conv of the same channels, at the four
stage shapes of LR-Net-26 (C = 100, 200, 400, 800 channels at 56, 28, 14, 7 pixels; m = 8 channels per group,
K = 7, stride 1). A stage may take another window size K (the paper's Table 2 spans 3x3 to 9x9; larger K and
full windows are the op's hard cases) or stride; the convolutions then run at the same stride, so every impl
maps (N, C, S, S) to (N, C, ceil(S/s), ceil(S/s)). Each implementation runs a forward pass (``fwd``, under
``torch.no_grad()``) and a forward plus backward pass (``fwd_bwd``: every input and weight requires grad, as in a
layer being trained, and the backward takes a fixed random output gradient; gradients are dropped after each
call). Before timing, the command runs the op's self-check on the device (``run_op_self_check``), so a wrong
kernel is reported, not timed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from rich import box
from rich.table import Table
from torch import nn

from lrrobust.bench.timing import measure
from lrrobust.errors import UserError
from lrrobust.ops.checks import MAX_KERNEL_SIZE, MAX_STRIDE

if TYPE_CHECKING:
    from lrrobust.ops.self_check import SelfCheckResult

IMPLS = ("lr_fused", "lr_reference", "conv3x3", "dwconv7x7")
PASSES = ("fwd", "fwd_bwd")
CHANNELS_PER_GROUP = 8  # m in the paper (Sec. 4, Table 2)
KERNEL_SIZE = 7  # the paper's default spatial scope, 7x7 (Table 2)
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEVICE_DTYPES = {"cpu": ("float32", "float64"), "cuda": ("bfloat16", "float16", "float32")}
DEFAULT_DTYPE = {"cpu": "float32", "cuda": "bfloat16"}


@dataclass(frozen=True)
class Stage:
    """One stage's spatial layer: ``channels`` x ``size`` x ``size``, ceil(C / m) groups, a ``kernel_size`` x
    ``kernel_size`` window and ``stride``."""

    stage: int
    channels: int
    size: int
    kernel_size: int = KERNEL_SIZE
    stride: int = 1

    @property
    def groups(self) -> int:
        return math.ceil(self.channels / CHANNELS_PER_GROUP)

    @property
    def out_size(self) -> int:
        """Output pixels a side, ceil(S / s), of every impl."""
        return -(-self.size // self.stride)


def check_stage(stage: Stage) -> None:
    """Raise UserError (one line naming the option) unless ``stage`` is a shape the op and the convolutions run."""
    if stage.channels < 1 or stage.size < 1:
        raise UserError(f"stage shapes need at least 1 channel and 1 pixel, got {stage.channels}x{stage.size}")
    k, s = stage.kernel_size, stage.stride
    if k < 1 or k % 2 == 0 or k > MAX_KERNEL_SIZE:
        raise UserError(f"--kernel-size must be odd, from 1 to {MAX_KERNEL_SIZE} (the window is centred), got {k}")
    if not 1 <= s <= MAX_STRIDE:
        raise UserError(f"--stride must be from 1 to {MAX_STRIDE}, got {s}")


LRNET26_STAGES = (Stage(1, 100, 56), Stage(2, 200, 28), Stage(3, 400, 14), Stage(4, 800, 7))


def fused_kernel_compiled(device: str) -> bool:
    """Whether ``lrrobust.ops.local_relation`` runs the compiled kernel (not the reference fallback) on ``device``."""
    import lrrobust.ops

    return bool(lrrobust.ops.kernel_available(device))


def run_op_self_check(device: str, dtype: str) -> tuple[SelfCheckResult | None, str]:
    """The op's self-check (``lrrobust.ops.self_check``: the fused kernel against the reference on small problems)
    on ``device`` in ``dtype``, run now: the result and one line saying what it found.

    The result is None, and the line says why, when the fused kernel does not serve ``device`` (not compiled, or
    ``LRROBUST_REFERENCE_OP=1``) or ``LRROBUST_SKIP_SELF_CHECK=1`` is set.
    """
    from lrrobust.ops.library import env_flag
    from lrrobust.ops.self_check import SKIP_VARIABLE, run_self_check

    if not fused_kernel_compiled(device):
        return None, f"self-check: not run (lr_fused runs the pure-PyTorch reference on {device})"
    if env_flag(SKIP_VARIABLE):
        return None, f"self-check: skipped by {SKIP_VARIABLE}"
    result = run_self_check(device, DTYPES[dtype])
    return result, f"self-check: {result.describe()}"


def self_check_table(result: SelfCheckResult) -> Table:
    """Every (case, quantity) of a self-check: the largest difference from the reference and its tolerance."""
    title = f"self-check on {result.device} ({result.device_name})"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for name in ("case", "quantity", "difference", "tolerance", "ok"):
        table.add_column(name, justify="right" if name in ("difference", "tolerance") else "left")
    for case, quantity, difference, tolerance in result.rows:
        ok = "[green]yes[/]" if difference <= tolerance else "[red]no[/]"
        table.add_row(case, quantity, f"{difference:.3g}", f"{tolerance:.3g}", ok)
    return table


def _lr_inputs(stage: Stage, batch: int, device: str, dtype: torch.dtype, grad: bool) -> list[torch.Tensor]:
    n, c, g, s, k, o = batch, stage.channels, stage.groups, stage.size, stage.kernel_size, stage.out_size
    shapes = [(n, g, o, o), (n, g, s, s), (n, c, s, s), (g, k, k)]  # query, key, value, geo_prior
    tensors = [torch.randn(shape, device=device, dtype=dtype) for shape in shapes]
    tensors[3].mul_(0.1)
    return [t.requires_grad_(grad) for t in tensors]


def make_forward(impl: str, stage: Stage, batch: int, device: str, dtype: torch.dtype, grad: bool):
    """The forward of ``impl`` at ``stage`` with fresh random inputs: ``(forward, leaves)``.

    ``leaves`` are the tensors that get gradients (all inputs and weights when ``grad``).
    """
    if impl in ("lr_fused", "lr_reference"):
        import lrrobust.ops
        from lrrobust.ops.reference import local_relation_reference

        op = lrrobust.ops.local_relation if impl == "lr_fused" else local_relation_reference
        q, k, v, prior = _lr_inputs(stage, batch, device, dtype, grad)
        return (lambda: op(q, k, v, prior, stage.kernel_size, stage.stride)), [q, k, v, prior]
    if impl in ("conv3x3", "dwconv7x7"):
        c, s = stage.channels, stage.stride
        conv = (
            nn.Conv2d(c, c, 3, stride=s, padding=1)
            if impl == "conv3x3"
            else nn.Conv2d(c, c, 7, stride=s, padding=3, groups=c)
        )
        conv = conv.to(device=device, dtype=dtype).requires_grad_(grad)
        x = torch.randn(batch, c, stage.size, stage.size, device=device, dtype=dtype, requires_grad=grad)
        return (lambda: conv(x)), [x, *conv.parameters()]
    raise ValueError(f"unknown impl {impl!r}; choose from {', '.join(IMPLS)}")


def make_pass(impl: str, pass_: str, stage: Stage, batch: int, device: str, dtype: torch.dtype) -> Callable[[], None]:
    """A callable that runs one ``fwd`` or ``fwd_bwd`` pass of ``impl`` on fixed inputs.

    Every impl maps (N, C, S, S) to (N, C, ceil(S/s), ceil(S/s)), so the output gradient has that shape.
    """
    if pass_ == "fwd":
        forward, _ = make_forward(impl, stage, batch, device, dtype, grad=False)

        def run_fwd() -> None:
            with torch.no_grad():
                forward()

        return run_fwd
    if pass_ == "fwd_bwd":
        forward, leaves = make_forward(impl, stage, batch, device, dtype, grad=True)
        grad_out = torch.randn(batch, stage.channels, stage.out_size, stage.out_size, device=device, dtype=dtype)

        def run_fwd_bwd() -> None:
            forward().backward(grad_out)
            for leaf in leaves:
                leaf.grad = None

        return run_fwd_bwd
    raise ValueError(f"unknown pass {pass_!r}; choose from {', '.join(PASSES)}")


def check_options(device: str, batch: int, dtype: str | None, repeats: int, warmup: int, max_seconds: float) -> str:
    """Check the bench options; return the dtype to use (the device's default when ``dtype`` is None).

    Raises UserError with a one-line message naming the option and the fix.
    """
    if device not in DEVICE_DTYPES:
        raise UserError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available on this machine; use --device cpu")
    if batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
    if repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {repeats}")
    if warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {warmup}")
    if not (math.isfinite(max_seconds) and max_seconds > 0):
        raise UserError(f"--max-seconds must be a positive finite number of seconds, got {max_seconds}")
    dtype = DEFAULT_DTYPE[device] if dtype is None else dtype
    if dtype not in DEVICE_DTYPES[device]:
        raise UserError(
            f"--dtype {dtype} is not benchmarked on {device}; choose from {', '.join(DEVICE_DTYPES[device])}"
        )
    return dtype


def run_op_bench(
    device: str = "cpu",
    batch: int = 8,
    dtype: str | None = None,
    stages: tuple[Stage, ...] = LRNET26_STAGES,
    impls: tuple[str, ...] = IMPLS,
    passes: tuple[str, ...] = PASSES,
    repeats: int = 10,
    warmup: int = 1,
    max_seconds: float = 4.0,
    seed: int = 0,
    threads: int | None = None,
    progress: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Time every (stage, impl, pass) and return one record per measurement, ratios included.

    Each measurement takes ``warmup`` untimed calls, one memory call, then up to ``repeats`` timed calls, cut
    to about ``max_seconds`` of timed calls but never fewer than 3 (the reference at stage 1 takes seconds per
    call). Records: ``stage``, ``impl``, ``pass``, ``ms`` (median), ``peak_mb`` and the context (``ms_min``,
    ``ms_max``, channels, size, groups, kernel_size, stride, batch, device, dtype, repeats, threads; ``kernel`` =
    "compiled" or "fallback" for lr_fused).
    ``threads`` sets torch's intra-op CPU threads for the run (default: leave torch's setting).
    """
    dtype = check_options(device, batch, dtype, repeats, warmup, max_seconds)
    for stage in stages:
        check_stage(stage)
    for name, given, known in (("--impl", impls, IMPLS), ("--passes", passes, PASSES)):
        unknown = [x for x in given if x not in known]
        if unknown or not given:
            raise UserError(f"{name}: unknown or empty choice {unknown}; choose from {', '.join(known)}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    kernel = "compiled" if fused_kernel_compiled(device) else "fallback"
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    records = []
    try:
        for stage in stages:
            for pass_ in passes:
                for impl in impls:
                    torch.manual_seed(seed)
                    fn = make_pass(impl, pass_, stage, batch, device, DTYPES[dtype])
                    m = measure(fn, device, repeats=repeats, warmup=warmup, max_seconds=max_seconds)
                    del fn  # free this case's inputs before the next one
                    record = {"stage": stage.stage, "impl": impl, "pass": pass_, "ms": m.ms, "peak_mb": m.peak_mb}
                    record.update(channels=stage.channels, size=stage.size, groups=stage.groups)
                    record.update(kernel_size=stage.kernel_size, stride=stage.stride)
                    record.update(batch=batch, device=device, dtype=dtype)
                    record.update(ms_min=min(m.times_ms), ms_max=max(m.times_ms), repeats=m.repeats)
                    record.update(threads=torch.get_num_threads())
                    if impl == "lr_fused":
                        record["kernel"] = kernel
                    records.append(record)
                    if progress is not None:
                        progress(record)
    finally:
        torch.set_num_threads(saved_threads)
    return add_ratios(records)


def add_ratios(records: list[dict]) -> list[dict]:
    """Add ``ms_vs_conv3x3``, ``ms_vs_reference`` and ``mb_vs_reference`` (time or memory over the baseline's, at
    the same stage and pass) to each record whose baseline was measured."""
    by_key = {(r["stage"], r["impl"], r["pass"]): r for r in records}
    for r in records:
        conv = by_key.get((r["stage"], "conv3x3", r["pass"]))
        ref = by_key.get((r["stage"], "lr_reference", r["pass"]))
        if conv is not None and conv["ms"] > 0:
            r["ms_vs_conv3x3"] = r["ms"] / conv["ms"]
        if ref is not None and ref["ms"] > 0:
            r["ms_vs_reference"] = r["ms"] / ref["ms"]
        if ref is not None and ref["peak_mb"] > 0:
            r["mb_vs_reference"] = r["peak_mb"] / ref["peak_mb"]
    return records


def check_targets(records: list[dict]) -> list[dict]:
    """Issue 2's targets for the fused forward+backward, one row per stage and target that can be judged.

    CPU: at least 10x faster than the reference, within 1.5x of conv3x3 at stage 1 and at most conv3x3's time
    at stages 2-4, at most a tenth of the reference's peak memory. CUDA: within 2x of conv3x3. The targets are set
    at the paper's 7x7 window and stride 1: records of another K or stride are not judged.
    Rows: ``stage``, ``target``, ``value`` (the measured ratio), ``limit``, ``met``, ``kernel``.
    """
    rows = []
    for r in records:
        if r["impl"] != "lr_fused" or r["pass"] != "fwd_bwd":
            continue
        if r.get("kernel_size", KERNEL_SIZE) != KERNEL_SIZE or r.get("stride", 1) != 1:
            continue
        if r["device"] == "cuda":
            limits = [("ms_vs_conv3x3", "time / conv3x3", 2.0)]
        else:
            conv_limit = 1.5 if r["stage"] == 1 else 1.0
            limits = [
                ("ms_vs_reference", "time / reference", 0.1),
                ("ms_vs_conv3x3", "time / conv3x3", conv_limit),
                ("mb_vs_reference", "peak memory / reference", 0.1),
            ]
        for key, target, limit in limits:
            if key in r:
                rows.append(
                    {
                        "stage": r["stage"],
                        "target": target,
                        "value": r[key],
                        "limit": limit,
                        "met": r[key] <= limit,
                        "kernel": r.get("kernel"),
                    }
                )
    return rows


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def _cells(r: dict, impl: str) -> list[str]:
    """One record's cells, in the column order of ``op_table`` and ``markdown_table``."""
    return [
        str(r["stage"]),
        f"{r['channels']} x {r['size']}^2 ({r['groups']})",
        f"{r.get('kernel_size', KERNEL_SIZE)}, {r.get('stride', 1)}",
        r["pass"],
        impl,
        f"{r['ms']:.2f}",
        f"{r['peak_mb']:.1f}",
        _ratio(r.get("ms_vs_conv3x3")),
        _ratio(r.get("ms_vs_reference")),
        _ratio(r.get("mb_vs_reference")),
        str(r["repeats"]),
    ]


def impl_label(record: dict) -> str:
    """The impl's name for tables; an lr_fused row served by the reference fallback says so."""
    if record["impl"] == "lr_fused" and record.get("kernel") == "fallback":
        return "[bold red]lr_fused FALLBACK[/]"
    return record["impl"]


def op_table(records: list[dict], title: str = "local relation op vs convolutions") -> Table:
    """A rich table of the records: median ms, peak MB and the ratios to conv3x3 and to the reference."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for name in ("stage", "C x S^2 (G)", "K, s", "pass", "impl"):
        table.add_column(name, no_wrap=True)
    for name in ("ms", "peak MB", "ms/conv3x3", "ms/ref", "MB/ref", "runs"):
        table.add_column(name, justify="right", no_wrap=True)
    previous = None
    for r in records:
        group = (r["stage"], r["pass"])
        if previous is not None and group != previous:
            table.add_section()
        previous = group
        table.add_row(*_cells(r, impl_label(r)))
    if any(r.get("kernel") == "fallback" for r in records):
        table.caption = "[bold red]lr_fused FALLBACK: the compiled kernel is missing; these rows time the reference.[/]"
    return table


def targets_table(rows: list[dict]) -> Table:
    """A rich table of ``check_targets`` rows."""
    table = Table(title="issue 2 targets for lr_fused fwd_bwd", title_justify="left")
    for name in ("stage", "target", "measured", "limit", "met"):
        table.add_column(name, justify="right" if name in ("measured", "limit") else "left")
    for row in rows:
        met = "[green]yes[/]" if row["met"] else "[red]no[/]"
        if row["kernel"] == "fallback":
            met += " [bold red](fallback, not the fused kernel)[/]"
        table.add_row(str(row["stage"]), row["target"], f"{row['value']:.3f}", f"<= {row['limit']:g}", met)
    return table


def markdown_table(records: list[dict]) -> str:
    """The records as a markdown table (for BENCHMARKS.md), same columns as ``op_table``."""
    header = "| stage | C x S^2 (G) | K, s | pass | impl | ms | peak MB | ms / conv3x3 | ms / ref | MB / ref | runs |"
    lines = [header, "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        impl = (
            "lr_fused (FALLBACK: reference)" if r["impl"] == "lr_fused" and r.get("kernel") == "fallback" else r["impl"]
        )
        lines.append("| " + " | ".join(_cells(r, impl)) + " |")
    return "\n".join(lines) + "\n"


def markdown_targets(rows: list[dict]) -> str:
    """``check_targets`` rows as a markdown table."""
    lines = ["| stage | target | measured | limit | met |", "|---|---|---:|---:|---|"]
    for row in rows:
        met = "yes" if row["met"] else "**no**"
        if row["kernel"] == "fallback":
            met += " (fallback, not the fused kernel)"
        lines.append(f"| {row['stage']} | {row['target']} | {row['value']:.3f} | <= {row['limit']:g} | {met} |")
    return "\n".join(lines) + "\n"
