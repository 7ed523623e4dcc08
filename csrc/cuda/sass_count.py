"""Static SASS instruction counts per window offset of the CUDA kernels of the local relation op (paper Sec. 4).

Every kernel of csrc/cuda/lr_kernels.cuh loops over the K x K window offsets of a pixel (Eq. 2-5): the forward
has a max pass (max logit) and an exp pass (softmax and aggregation), the backward's stats kernel one main pass
(its weights from the forward's saved log-sum-exp), the gather kernel one offset loop with a warp reduce-scatter
per chunk of offsets. On a GPU they are bound by
instruction issue, so the figure to lower is the number of machine instructions per (pixel, group, offset).
This script disassembles the built extension with `cuobjdump -sass`, finds the innermost loops of each kernel
(a branch to a lower address closes a loop [target, branch]; innermost loops contain no other loop), and
divides each loop's instruction count by the offsets one iteration covers, which the compiler's unrolling
decides. The offsets per iteration come from a signature instruction that occurs once per offset:

    exp pass, main pass  one exp each: MUFU.EX2 (float accumulation, fast math); in float64 ::exp and ::exp2
                         are inlined and their range reduction adds the constant 6.755399441055744e15 (2^52+2^51)
                         once (a DFMA in exp, a DADD in exp2; its subtraction, -6.755e15, is not counted)
    gather offset loop   its exp, as above (cross-check: 5 SHFL.BFLY per offset, 10 in float64)
    max pass             the compare of `l > mx ? l : mx`: FSETP.GT / DSETP.GT (or FMNMX / DMNMX)

The forward's row-stacked fast path (lr_forward_rows_kernel: stride 1, dilation 1, 4 output rows per thread)
has one loop per run of the thread's outputs a row of input serves; its one-pass softmax moves a running maximum
up on a rare branch, marked by FRND.CEIL (the maximum is kept at an integer): those blocks are left out of the
count ("online" loops, hot path only). The row-stacked statistics pass (lr_stats_rows_kernel) walks the same rows
with no maximum to move: its row loops are plain "exp" loops. The steady state of either is the loop over the rows
every output takes (the most offsets per iteration); the rows at the window's top and bottom serve fewer outputs
and cost more per offset.
Loops with none of these (tile staging, reductions) are listed as "other". The counts are static: each loop's
body is counted whole, every path inside it included (the warp-sum branch of the gather, the slow-path fix-up
of float64 exp), and the remainder of an unrolled loop and the per-row overhead of the outer loop are not
counted. The gather is compiled twice when the compiler versions its loop on the stride: a loop without an
integer division (stride 1) and one with it (stride > 1); both are reported. KIND -1 (the untiled global-memory
fallback) reads Phi at run time, so the compiler may version its loops per Phi: ranges are reported.

Usage (cuobjdump from $CUOBJDUMP, PATH or the triton package, a torch dependency; a report, exit 0 when the
extension has no cubins for --arch or cuobjdump is missing):

    .venv/bin/python csrc/cuda/sass_count.py [--so PATH] [--arch sm_90] [--markdown FILE] [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

TARGETS = (
    "Targets (issue 13): forward <= 20 instructions per (pixel, group, offset) in bf16 with m = 8; backward "
    "(stats + gather) < 70. Earlier estimate from the machine code: forward ~43 (bf16), stats ~48, gather ~90 "
    "(~176 at stride 2)."
)
DTYPES = {"N3c108BFloat16E": "bf16", "N3c104HalfE": "f16", "f": "f32", "d": "f64"}
PHI = {0: "sqdiff", 1: "absdiff", 2: "product", -1: "runtime"}
# Kernels with per-offset passes, in report order: the row-stacked forward and statistics (stride 1, dilation 1),
# the one-output-per-thread forward and statistics (other strides and dilations), the gather (windows up to 8 wide;
# gather_wide above).
KERNELS = ("forward_rows", "forward", "stats_rows", "stats", "gather", "gather_wide")
# Per-offset passes of each kernel, summed into its per-offset total.
PASSES = {"forward": ("max", "exp"), "forward_rows": ("online",), "stats": ("exp",), "stats_rows": ("exp",),
          "gather": ("offset",), "gather_wide": ("offset",)}
ROW_KERNELS = ("forward_rows", "stats_rows")  # one loop per run of a thread's 4 outputs; PASSES names their role
F64_EXP_CONSTANT = "6.75539944105574400000e+15"
INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*?)\s*;")
HEX = re.compile(r"0x[0-9a-f]+")


@dataclass(frozen=True)
class Instr:
    addr: int
    pred: str  # "@P0", "@!P1" or ""
    opcode: str  # with modifiers: "FSETP.GT.FTZ.AND"
    operands: str


@dataclass(frozen=True)
class Loop:
    """An innermost loop: addresses of its first instruction and of its back branch, and what it holds."""

    start: int
    end: int
    instructions: int
    role: str  # "max", "exp", "online" (exp pass with a rare rescale), "offset" (gather, with a warp butterfly), "other"
    offsets: int | None  # window offsets one iteration covers (None for "other")
    divides: bool  # holds an integer division (the stride > 1 index math)
    rare: int = 0  # instructions on rare branches left out of `instructions` (the online softmax's rescales)

    @property
    def per_offset(self) -> float | None:
        return self.instructions / self.offsets if self.offsets else None


@dataclass
class KernelReport:
    """One compiled kernel: lr_<kernel>_kernel<dtype, KIND, TILED>."""

    name: str
    kernel: str  # forward, stats, gather, geo_reduce
    dtype: str
    kind: int | None  # 0/1/2 = sqdiff/absdiff/product, -1 = read at run time, None = no KIND argument
    tiled: bool | None
    registers: int | None = None
    stack: int | None = None
    local_ops: int = 0  # LDL/STL instructions (spills or local arrays)
    loops: list[Loop] = field(default_factory=list)

    def pass_range(self, role: str, divides: bool | None = None) -> tuple[float, float] | None:
        """(min, max) instructions per offset over the loops of one role (several when the loop is versioned)."""
        vals = [lp.per_offset for lp in self.loops if lp.role == role and (divides is None or lp.divides == divides)]
        vals = [v for v in vals if v is not None]
        return (min(vals), max(vals)) if vals else None

    def gather_range(self, stride_one: bool) -> tuple[float, float] | None:
        """The gather's offset loop for stride 1 (the loop without a division when the compiler versioned it,
        else the only loop) or for stride > 1 (the loop with the division)."""
        if stride_one:
            return self.pass_range("offset", divides=False) or self.pass_range("offset")
        return self.pass_range("offset", divides=True) or self.pass_range("offset")

    def steady(self) -> float | None:
        """forward_rows, stats_rows: instructions per offset of the loop over the rows every output of a thread takes
        (the row loop with the most offsets per iteration)."""
        role = PASSES[self.kernel][0]
        rows = [lp for lp in self.loops if lp.role == role and lp.offsets]
        return max(rows, key=lambda lp: (lp.offsets, -lp.instructions)).per_offset if rows else None

    def total(self, stride_one: bool = True) -> tuple[float, float] | None:
        """Instructions per (pixel, group, offset): the sum over the kernel's per-offset passes (forward_rows: the
        range over its row loops, the steady state first)."""
        if self.kernel not in PASSES:
            return None
        if self.kernel in ROW_KERNELS:
            worst = self.pass_range(PASSES[self.kernel][0])
            return None if worst is None else (self.steady(), worst[1])
        if self.kernel in ("gather", "gather_wide"):
            return self.gather_range(stride_one)
        return add(*(self.pass_range(role) for role in PASSES[self.kernel]))


def parse_sass(text: str) -> dict[str, list[Instr]]:
    """`cuobjdump -sass` output -> {mangled function name: its instructions in address order}."""
    funcs: dict[str, list[Instr]] = {}
    current: list[Instr] | None = None
    for line in text.splitlines():
        if "Function :" in line:
            current = funcs.setdefault(line.split("Function :", 1)[1].strip(), [])
            continue
        m = INSTR.search(line)
        if m is None or current is None:
            continue
        body = m.group(2).strip()
        pred = ""
        if body.startswith("@"):
            pred, body = body.split(None, 1)
        opcode, _, operands = body.partition(" ")
        current.append(Instr(int(m.group(1), 16), pred, opcode, operands.strip()))
    return funcs


def find_loops(instrs: list[Instr]) -> list[tuple[int, int]]:
    """Loops as (index of the branch target, index of the backward branch); a branch to itself (the trap
    after EXIT) is not a loop."""
    index = {ins.addr: i for i, ins in enumerate(instrs)}
    loops = []
    for i, ins in enumerate(instrs):
        if ins.opcode == "BRA" or ins.opcode.startswith("BRA."):
            targets = HEX.findall(ins.operands)
            target = int(targets[-1], 16) if targets else None
            if target is not None and target < ins.addr and target in index:
                loops.append((index[target], i))
    return loops


def innermost(loops: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The loops that contain no other loop."""
    return [(s, e) for (s, e) in loops
            if not any((s2, e2) != (s, e) and s <= s2 and e2 <= e for (s2, e2) in loops)]


def rare_blocks(body: list[Instr]) -> int:
    """Instructions of the loop body that forward branches skip when they jump over a block holding FRND.CEIL
    and no exp: the online softmax's rescale when a logit exceeds the running maximum."""
    index = {ins.addr: i for i, ins in enumerate(body)}
    skipped: set[int] = set()
    for i, ins in enumerate(body):
        targets = HEX.findall(ins.operands) if ins.opcode.startswith("BRA") else []
        target = int(targets[-1], 16) if targets else None
        if target is None or target <= ins.addr or target not in index:
            continue
        block = range(i + 1, index[target])
        ops = [body[k].opcode for k in block]
        if any(op.startswith("FRND") for op in ops) and "MUFU.EX2" not in ops:
            skipped.update(block)
    return len(skipped)


def classify(body: list[Instr]) -> Loop:
    """Role and offsets per iteration of one loop body, from its signature instructions (module docstring)."""
    ops = Counter(ins.opcode for ins in body)
    exps = ops["MUFU.EX2"] + sum(
        ins.opcode.startswith(("DFMA", "DADD")) and ins.operands.split(",")[-1].strip() == F64_EXP_CONSTANT
        for ins in body)
    maxes = sum(n for op, n in ops.items() if op.startswith(("FSETP.GT", "DSETP.GT", "FMNMX", "DMNMX")))
    shuffles = sum(n for op, n in ops.items() if op.startswith("SHFL.BFLY"))
    divides = any(op.startswith("I2F.RP") for op in ops)  # the reciprocal seed of an integer division
    rare = rare_blocks(body)
    if exps and shuffles:
        role, offsets = "offset", exps
    elif exps and rare:
        return Loop(body[0].addr, body[-1].addr, len(body) - rare, "online", exps, divides, rare)
    elif exps:
        role, offsets = "exp", exps
    elif maxes:
        role, offsets = "max", maxes
    else:
        role, offsets = "other", None
    return Loop(body[0].addr, body[-1].addr, len(body), role, offsets, divides)


def parse_kernel_name(name: str) -> tuple[str, str, int | None, bool | None] | None:
    """`_ZN8lrrobust4cuda17lr_forward_kernelIN3c108BFloat16ELi0ELb1EE...` -> ("forward", "bf16", 0, True)."""
    m = re.match(r"_ZN8lrrobust4cuda(\d+)", name)
    if m is None:
        return None
    base = name[m.end():m.end() + int(m.group(1))]
    m2 = re.match(r"I(N3c108BFloat16E|N3c104HalfE|f|d)(?:Li(n?)(\d+)E(?:Lb([01])E)?(?:Li(\d+)E)?)?E",
                  name[m.end() + len(base):])
    if not (base.startswith("lr_") and base.endswith("_kernel")) or m2 is None:
        return None
    kind = None if m2.group(3) is None else (-1 if m2.group(2) else 1) * int(m2.group(3))
    tiled = None if m2.group(4) is None else m2.group(4) == "1"
    if base == "lr_forward_rows_kernel" or base == "lr_stats_rows_kernel":
        tiled = True  # the row-stacked fast paths always stage their tiles
    if base == "lr_gather_kernel" and m2.group(5) == "32":
        return "gather_wide", DTYPES[m2.group(1)], kind, tiled  # offset chunks of 1 x 32: windows over 8 wide
    return base[3:-7], DTYPES[m2.group(1)], kind, tiled


def parse_res_usage(text: str) -> dict[str, dict[str, int]]:
    """`cuobjdump -res-usage` output -> {function: {"REG": .., "STACK": .., "LOCAL": .., ...}}."""
    usage: dict[str, dict[str, int]] = {}
    name = None
    for line in text.splitlines():
        m = re.match(r"\s*Function (\S+):\s*$", line)
        if m:
            name = m.group(1)
        elif name is not None and "REG:" in line:
            usage[name] = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line)}
            name = None
    return usage


def own_loops(instrs: list[Instr]) -> list[Loop]:
    """Every innermost loop, and the gather's offset loop: it runs its offsets unrolled in chunks of 32 around the
    block's small reduction loop, so it is counted on its own instructions (its body less the nested loop). Other
    outer loops (rows, the remainders of unrolled loops) are not per-offset passes."""
    loops = find_loops(instrs)
    found = []
    for s, e in loops:
        nested = {k for s2, e2 in loops if (s2, e2) != (s, e) and s <= s2 and e2 <= e for k in range(s2, e2 + 1)}
        lp = classify([instrs[k] for k in range(s, e + 1) if k not in nested])
        if not nested or lp.role == "offset":
            found.append(lp)
    return sorted(found, key=lambda lp: lp.start)


def analyse(sass: str, res_usage: str = "") -> list[KernelReport]:
    """Reports of every local relation kernel in the disassembly, in (kernel, dtype, kind) order."""
    usage = parse_res_usage(res_usage)
    reports = []
    for name, instrs in parse_sass(sass).items():
        ident = parse_kernel_name(name)
        if ident is None or not instrs:
            continue
        rep = KernelReport(name, *ident)
        res = usage.get(name, {})
        rep.registers, rep.stack = res.get("REG"), res.get("STACK")
        rep.local_ops = sum(ins.opcode.startswith(("LDL", "STL")) for ins in instrs)
        rep.loops = own_loops(instrs)
        reports.append(rep)
    kernels, dtypes, kinds = [*KERNELS, "geo_reduce"], list(DTYPES.values()), [0, 1, 2, -1, None]
    reports.sort(key=lambda r: (dtypes.index(r.dtype), kernels.index(r.kernel), kinds.index(r.kind)))
    return reports


def find_cuobjdump() -> str | None:
    """$CUOBJDUMP (None if it names no executable), else cuobjdump on PATH, else the triton package's copy."""
    if os.environ.get("CUOBJDUMP"):
        return shutil.which(os.environ["CUOBJDUMP"])
    found = shutil.which("cuobjdump")
    if found:
        return found
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if path.is_file():
            return str(path)
    return None


def default_so() -> Path | None:
    """The compiled extension lrrobust/_C*.so (found without importing lrrobust or torch)."""
    spec = importlib.util.find_spec("lrrobust")
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    roots.append(Path(__file__).resolve().parents[2] / "lrrobust")
    for root in roots:
        found = sorted(root.glob("_C*.so"))
        if found:
            return found[0]
    return None


def fmt(r: tuple[float, float] | None) -> str:
    """A (min, max) range as "43.5", "90.25" or "128.75-150"."""
    if r is None:
        return "-"
    low, high = (f"{x:.2f}".rstrip("0").rstrip(".") for x in r)
    return low if low == high else f"{low}-{high}"


def loop_text(lp: Loop, versioned: bool) -> str:
    """"max 39/4": role, instructions, offsets per iteration; the gather's loop says which strides it serves; an
    online loop says how many rare-path instructions it leaves out (+N)."""
    tag = lp.role
    if lp.role == "online":
        return f"online {lp.instructions}/{lp.offsets} (+{lp.rare})"
    if lp.role == "offset":
        tag = ("s>1" if lp.divides else "s=1") if versioned else "any s"
    return f"{tag} {lp.instructions}/{lp.offsets}"


def summary_rows(reports: list[KernelReport]) -> list[list[str]]:
    """One row per kernel with per-offset passes: dtype, Phi, kernel, path, loops, per offset, regs, local."""
    rows = []
    for rep in reports:
        if rep.kernel not in PASSES:
            continue
        versioned = len({lp.divides for lp in rep.loops if lp.role == "offset"}) == 2
        passes = ", ".join(loop_text(lp, versioned) for lp in rep.loops if lp.role != "other")
        total = fmt(rep.total())
        if rep.kernel == "gather" and rep.gather_range(False) != rep.gather_range(True):
            total += f" (s>1: {fmt(rep.total(stride_one=False))})"
        rows.append([rep.dtype, PHI.get(rep.kind, "-"), rep.kernel, "tiled" if rep.tiled else "global", passes or "-", total,
                     "-" if rep.registers is None else str(rep.registers), str(rep.local_ops)])
    return rows


def add(*ranges: tuple[float, float] | None) -> tuple[float, float] | None:
    """The sum of (min, max) ranges; None if one is missing."""
    if any(r is None for r in ranges):
        return None
    return sum(r[0] for r in ranges), sum(r[1] for r in ranges)


def budget_rows(reports: list[KernelReport]) -> list[list[str]]:
    """Per (dtype, Phi) of the tiled kernels, the figures issue 13's targets are about: the row-stacked forward and
    statistics (stride 1, dilation 1: a full row, and the worst row of a window's top or bottom), the gather (K <= 8,
    per offset slot of its 4 x 8 chunks), the backward (statistics + gather), and the other strides' kernels."""
    by_key = {(r.dtype, r.kind, r.kernel): r for r in reports if r.tiled}
    rows = []
    for (dtype, kind, kernel), fwd in by_key.items():
        stats, gather = by_key.get((dtype, kind, "stats")), by_key.get((dtype, kind, "gather"))
        if kernel != "forward" or stats is None or gather is None:
            continue
        fwd_rows, stats_rows = by_key.get((dtype, kind, "forward_rows")), by_key.get((dtype, kind, "stats_rows"))
        g1 = gather.gather_range(True)
        steady = stats_rows.total() if stats_rows else None
        rows.append([dtype, PHI[kind], fmt(fwd_rows.total() if fwd_rows else None), fmt(steady), fmt(g1),
                     fmt(add(None if steady is None else (steady[0], steady[0]), g1)),
                     f"{fmt(fwd.pass_range('max'))} + {fmt(fwd.pass_range('exp'))}",
                     fmt(stats.pass_range('exp')), fmt(add(stats.total(), g1))])
    return rows


SUMMARY_HEAD = ["dtype", "Phi", "kernel", "path", "per-offset loops (role instr/offsets)", "instr per offset",
                "regs", "LDL/STL"]
BUDGET_HEAD = ["dtype", "Phi", "forward s=1 d=1 (full row-worst row; <= 20 in bf16)",
               "stats s=1 d=1 (full row-worst row)", "gather K<=8", "backward s=1 d=1 full rows (< 70)",
               "forward other s, d: max + exp", "stats other: main", "backward other"]


def markdown(reports: list[KernelReport], header: str) -> str:
    def table(head: list[str], rows: list[list[str]]) -> str:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])

    return "\n\n".join([header, TARGETS, table(BUDGET_HEAD, budget_rows(reports)),
                        table(SUMMARY_HEAD, summary_rows(reports))]) + "\n"


def print_tables(reports: list[KernelReport], header: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    console.print(header)
    console.print(TARGETS)
    for title, head, rows in (("Instructions per (pixel, group, offset), tiled kernels", BUDGET_HEAD,
                               budget_rows(reports)),
                              ("Per kernel: innermost loops (role instructions/offsets per iteration)", SUMMARY_HEAD,
                               summary_rows(reports))):
        t = Table(title=title)
        for h in head:
            t.add_column(h)
        for r in rows:
            t.add_row(*r)
        console.print(t)


def run_cuobjdump(tool: str, so: Path, arch: str, what: str) -> str:
    """The output of `cuobjdump WHAT -arch ARCH SO`, "" when it fails (no device code, no such arch).

    The disassembly of a full build is about 100 MB and takes cuobjdump some 13 CPU-s, and `make test` needs it twice
    (tests/test_sass_count.py, then this report): it is kept in the temporary folder, one file per (extension file,
    tool, arch, WHAT), whose first line records the extension's size and modification time, so a rebuilt extension is
    read afresh and replaces it."""
    try:
        info = so.stat()
    except OSError:
        return ""
    stamp = f"{info.st_size} {info.st_mtime_ns}\n"
    key = hashlib.sha1(repr((str(so.resolve()), tool, arch, what)).encode()).hexdigest()[:16]
    cached = Path(tempfile.gettempdir()) / f"lrrobust-cuobjdump-{key}.txt"
    try:
        with open(cached, encoding="utf-8") as f:
            if f.readline() == stamp:
                return f.read()
    except OSError:
        pass
    try:
        proc = subprocess.run([tool, what, "-arch", arch, str(so)], capture_output=True, text=True, check=False)
    except OSError:
        return ""
    if proc.returncode != 0:
        return ""
    partial = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
    try:
        partial.write_text(stamp + proc.stdout, encoding="utf-8")
        os.replace(partial, cached)
    except OSError:  # a full or read-only temporary folder: the output is used, not kept
        partial.unlink(missing_ok=True)
    return proc.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--so", type=Path, help="the compiled extension (default: lrrobust/_C*.so)")
    parser.add_argument("--arch", default="sm_90", help="the cubin to read (default: sm_90)")
    parser.add_argument("--markdown", type=Path, help="also write the tables as markdown to this file")
    parser.add_argument("--json", type=Path, help="also write every kernel's loops as JSON to this file")
    args = parser.parse_args(argv)
    if args.so is not None and not args.so.is_file():
        print(f"sass_count: no file {args.so}; pass the compiled extension (lrrobust/_C*.so) to --so",
              file=sys.stderr)
        return 2
    so = args.so or default_so()
    tool = find_cuobjdump()
    if so is None or tool is None:
        print("sass_count: skipped, " + ("no compiled extension lrrobust/_C*.so" if so is None
                                         else "no cuobjdump (set $CUOBJDUMP, or install triton)"))
        return 0
    reports = analyse(run_cuobjdump(tool, so, args.arch, "-sass"), run_cuobjdump(tool, so, args.arch, "-res-usage"))
    if not any(r.kernel in PASSES for r in reports):
        print(f"sass_count: skipped, {so} has no CUDA cubins of the local relation kernels for {args.arch}")
        return 0
    header = f"SASS instructions per window offset, {args.arch}, static ({so.name}, cuobjdump -sass)"
    print_tables(reports, header)
    if args.markdown:
        args.markdown.write_text(markdown(reports, header))
    if args.json:
        payload = [{**asdict(r), "loops": [{**asdict(lp), "per_offset": lp.per_offset} for lp in r.loops],
                    "per_offset": r.total(), "per_offset_stride_gt1": r.total(stride_one=False)} for r in reports]
        args.json.write_text(json.dumps({"arch": args.arch, "so": str(so), "kernels": payload}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
