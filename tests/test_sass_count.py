"""csrc/cuda/sass_count.py: the SASS loop parser on a hand-written disassembly, and on the built extension's sm_90
cubins when it has them and cuobjdump is there (issue 13's static instruction counts per window offset)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "csrc" / "cuda" / "sass_count.py"
_spec = importlib.util.spec_from_file_location("sass_count", SCRIPT)
sc = importlib.util.module_from_spec(_spec)
sys.modules["sass_count"] = sc  # dataclasses look their module up
_spec.loader.exec_module(sc)

FORWARD = "_ZN8lrrobust4cuda17lr_forward_kernelIfLi0ELb1EEEvPKT_S4_S4_S4_PS2_NS0_6LrGeomENS0_6LrTileE"
STATS = "_ZN8lrrobust4cuda15lr_stats_kernelIfLi0ELb1EEEvPKT_S4_S4_S4_S4_PS2_PN2at10OpMathTypeIS2_E4typeESA_NS0_6LrGeomENS0_6LrTileE"
GATHER = ("_ZN8lrrobust4cuda16lr_gather_kernelIfLi0ELb1EEEvPKT_S4_S4_S4_S4_PKN2at10OpMathTypeIS2_E4typeESA_PS2_SB_"
          "PS8_NS0_6LrGeomENS0_6LrTileE")
REDUCE = "_ZN8lrrobust4cuda20lr_geo_reduce_kernelIdEEvPKN2at10OpMathTypeIT_E4typeElPS4_"

# (address, instruction) listings; sass() lays them out as cuobjdump -sass prints them.
FORWARD_CODE = [
    (0x000, "LDC R1, c[0x0][0x28]"),
    (0x010, "STS [R2], R3"),  # staging loop: "other"
    (0x020, "IADD3 R2, R2, 0x4, RZ"),
    (0x030, "ISETP.GE.AND P0, PT, R2, R4, PT"),
    (0x040, "@!P0 BRA 0x10"),
    (0x050, "IMAD R5, R6, R7, RZ"),  # outer loop (rows) around the max pass
    (0x060, "LDS R8, [R5]"),  # max pass, unrolled twice: 7 instructions, 2 offsets
    (0x070, "FSETP.GT.FTZ.AND P1, PT, R8, R9, PT"),
    (0x080, "FSEL R9, R8, R9, P1"),
    (0x090, "LDS R8, [R5+0x4]"),
    (0x0a0, "FSETP.GT.FTZ.AND P1, PT, R8, R9, PT"),
    (0x0b0, "FSEL R9, R8, R9, P1"),
    (0x0c0, "@!P2 BRA 0x60"),
    (0x0d0, "VIADD R6, R6, 0x1"),
    (0x0e0, "@!P3 BRA 0x50"),
    (0x0f0, "LDS R10, [R5]"),  # exp pass, unrolled three times: 9 instructions, 3 offsets
    (0x100, "FADD.FTZ R10, R10, -R9"),
    (0x110, "MUFU.EX2 R11, R10"),
    (0x120, "FFMA.FTZ R12, R11, R13, R12"),
    (0x130, "MUFU.EX2 R14, R10"),
    (0x140, "FFMA.FTZ R12, R14, R13, R12"),
    (0x150, "MUFU.EX2 R15, R10"),
    (0x160, "FFMA.FTZ R12, R15, R13, R12"),
    (0x170, "@!P4 BRA 0xf0"),
    (0x180, "EXIT"),
    (0x190, "BRA 0x190"),  # the trap after EXIT: not a loop
]
STATS_CODE = [
    (0x000, "LDS R8, [R5]"),  # main pass (weights from the saved log-sum-exp, no max pass): 4 instructions, 1 offset
    (0x010, "MUFU.EX2 R10, R8"),
    (0x020, "FFMA R11, R10, R8, R11"),
    (0x030, "@P1 BRA 0x0"),
    (0x040, "STL [R1], R11"),  # a spill
    (0x050, "EXIT"),
]
SHUFFLES = [(0, f"SHFL.BFLY PT, R{20 + k}, R{20 + k}, 0x{16 >> k:x}, 0x1f") for k in range(5)]
GATHER_CODE = [
    (0x000, "I2F.RP R3, R2"),  # stride > 1 loop: an integer division inside, 10 instructions, 1 offset
    (0x010, "MUFU.RCP R3, R3"),
    (0x020, "MUFU.EX2 R4, R4"),
    *[(0x030 + 0x10 * k, s) for k, (_, s) in enumerate(SHUFFLES)],
    (0x080, "ISETP.NE.AND P0, PT, R5, RZ, PT"),
    (0x090, "@P0 BRA 0x0"),
    (0x0a0, "MUFU.EX2 R4, R4"),  # stride 1 loop: 7 instructions, 1 offset
    *[(0x0b0 + 0x10 * k, s) for k, (_, s) in enumerate(SHUFFLES)],
    (0x100, "@P0 BRA 0xa0"),
    (0x110, "EXIT"),
]
REDUCE_CODE = [(0x000, "DADD R2, R2, R4"), (0x010, "@P0 BRA 0x0"), (0x020, "EXIT")]
RES_USAGE = f""" Function {FORWARD}:
  REG:56 STACK:0 SHARED:1024 LOCAL:0 CONSTANT[0]:688 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function {GATHER}:
  REG:71 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:704 TEXTURE:0 SURFACE:0 SAMPLER:0
"""


def sass(functions: dict[str, list[tuple[int, str]]]) -> str:
    lines = ["\tcode for sm_90"]
    for name, code in functions.items():
        lines += [f"\t\tFunction : {name}", '\t.headerflags\t@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"']
        for addr, text in code:
            lines.append(f"        /*{addr:04x}*/                   {text} ;{' ' * 20}/* 0x000fe20000000800 */")
            lines.append(f"{' ' * 94}/* 0x000fca00078e02ff */")
        lines.append("\t\t..........")
    return "\n".join(lines) + "\n"


FIXTURE = sass({FORWARD: FORWARD_CODE, STATS: STATS_CODE, GATHER: GATHER_CODE, REDUCE: REDUCE_CODE})


def test_parse_sass_reads_every_instruction_with_predicate_and_target():
    funcs = sc.parse_sass(FIXTURE)
    assert list(funcs) == [FORWARD, STATS, GATHER, REDUCE]
    fwd = funcs[FORWARD]
    assert [i.addr for i in fwd] == [a for a, _ in FORWARD_CODE]
    assert fwd[4] == sc.Instr(0x40, "@!P0", "BRA", "0x10")
    assert fwd[7].opcode == "FSETP.GT.FTZ.AND" and fwd[7].pred == ""


def test_loops_are_backward_branches_and_innermost_excludes_the_enclosing_loop():
    fwd = sc.parse_sass(FIXTURE)[FORWARD]
    addr = [(fwd[s].addr, fwd[e].addr) for s, e in sc.find_loops(fwd)]
    assert addr == [(0x10, 0x40), (0x60, 0xc0), (0x50, 0xe0), (0xf0, 0x170)]  # no loop for the trap BRA 0x190
    inner = [(fwd[s].addr, fwd[e].addr) for s, e in sc.innermost(sc.find_loops(fwd))]
    assert inner == [(0x10, 0x40), (0x60, 0xc0), (0xf0, 0x170)]


def test_roles_and_offsets_per_iteration_come_from_the_signature_counts():
    reports = {r.kernel: r for r in sc.analyse(FIXTURE, RES_USAGE)}
    fwd = reports["forward"]
    assert (fwd.dtype, fwd.kind, fwd.tiled, fwd.registers, fwd.local_ops) == ("f32", 0, True, 56, 0)
    assert [(lp.role, lp.instructions, lp.offsets) for lp in fwd.loops] == [
        ("other", 4, None), ("max", 7, 2), ("exp", 9, 3)]
    assert fwd.loops[1].per_offset == pytest.approx(3.5) and fwd.loops[2].per_offset == pytest.approx(3.0)
    assert fwd.total() == pytest.approx((6.5, 6.5))
    stats = reports["stats"]
    assert [(lp.role, lp.instructions, lp.offsets) for lp in stats.loops] == [("exp", 4, 1)]
    assert stats.total() == pytest.approx((4.0, 4.0)) and stats.local_ops == 1 and stats.registers is None


def test_gather_loop_versioned_on_the_stride():
    gather = next(r for r in sc.analyse(FIXTURE) if r.kernel == "gather")
    assert [(lp.role, lp.instructions, lp.offsets, lp.divides) for lp in gather.loops] == [
        ("offset", 10, 1, True), ("offset", 7, 1, False)]
    assert gather.total() == pytest.approx((7.0, 7.0))
    assert gather.total(stride_one=False) == pytest.approx((10.0, 10.0))
    # Unversioned: the one loop serves every stride.
    single = sc.analyse(sass({GATHER: GATHER_CODE[:10]}))[0]
    assert single.total() == single.total(stride_one=False) == pytest.approx((10.0, 10.0))


def test_float64_exp_is_counted_by_its_range_reduction_constant():
    body = [sc.Instr(0x0, "", "DFMA", "R70, R60, R70, 6.75539944105574400000e+15"),
            sc.Instr(0x10, "", "DADD", "R18, R70, -6.75539944105574400000e+15"),
            sc.Instr(0x20, "", "DFMA", "R70, R72, R70, 6.75539944105574400000e+15"),
            sc.Instr(0x30, "@!P3", "BRA", "0x0")]
    loop = sc.classify(body)
    assert (loop.role, loop.offsets, loop.per_offset) == ("exp", 2, 2.0)


ROWS = "_ZN8lrrobust4cuda22lr_forward_rows_kernelIN3c108BFloat16ELi0EEEvPKT_S6_S6_S6_PS4_NS0_6LrGeomENS0_6LrTileE"
# The row-stacked forward's online softmax: a full row (2 outputs) with its rare rescale block skipped by a forward
# branch (6 instructions, FRND.CEIL, no exp), and a row of one output without a rescale test.
ROWS_CODE = [
    (0x000, "LDS R8, [R5]"),  # full row: 12 instructions, 6 of them on the rare path, 2 offsets
    (0x010, "FSETP.GT.FTZ.AND P1, PT, R8, RZ, PT"),
    (0x020, "@!P1 BRA 0x90"),
    (0x030, "FRND.FTZ.CEIL R9, R8"),
    (0x040, "FADD.FTZ R10, R11, -R9"),
    (0x050, "FMUL.FTZ R12, R12, R10"),
    (0x060, "FMUL.FTZ R13, R13, R10"),
    (0x070, "FFMA.FTZ R8, R8, 1.4426950216293334961, -R9"),
    (0x080, "MOV R11, R9"),
    (0x090, "MUFU.EX2 R14, R8"),
    (0x0a0, "MUFU.EX2 R15, R8"),
    (0x0b0, "@P0 BRA 0x0"),
    (0x0c0, "LDS R8, [R5]"),  # one output: 4 instructions, 1 offset, and a forward branch over a block with an exp
    (0x0d0, "@!P1 BRA 0x100"),
    (0x0e0, "FRND.FTZ.CEIL R9, R8"),
    (0x0f0, "MUFU.EX2 R14, R8"),
    (0x100, "@P0 BRA 0xc0"),
    (0x110, "EXIT"),
]


def test_online_loops_leave_the_rare_rescale_out_and_report_the_steady_row():
    rows = sc.analyse(sass({ROWS: ROWS_CODE}))[0]
    assert (rows.kernel, rows.dtype, rows.kind, rows.tiled) == ("forward_rows", "bf16", 0, True)
    assert [(lp.role, lp.instructions, lp.offsets, lp.rare) for lp in rows.loops] == [
        ("online", 6, 2, 6), ("exp", 5, 1, 0)]
    assert rows.steady() == pytest.approx(3.0)
    assert rows.total() == pytest.approx((3.0, 3.0))  # the worst row is an online loop too, here the same one


STATS_ROWS = ROWS.replace("22lr_forward_rows_kernel", "20lr_stats_rows_kernel")
# The row-stacked statistics pass: no maximum to move, so its row loops are plain exp loops.
STATS_ROWS_CODE = [
    (0x000, "LDS R8, [R5]"),  # full row: 8 instructions, 2 offsets
    (0x010, "MUFU.EX2 R14, R8"),
    (0x020, "FFMA.FTZ R12, R14, R13, R12"),
    (0x030, "MUFU.EX2 R15, R8"),
    (0x040, "FFMA.FTZ R12, R15, R13, R12"),
    (0x050, "FADD.FTZ R9, R9, -R8"),
    (0x060, "FMUL.FTZ R10, R9, R9"),
    (0x070, "@P0 BRA 0x0"),
    (0x080, "LDS R8, [R5]"),  # one output: 5 instructions, 1 offset
    (0x090, "MUFU.EX2 R14, R8"),
    (0x0a0, "FFMA.FTZ R12, R14, R13, R12"),
    (0x0b0, "FADD.FTZ R9, R9, -R8"),
    (0x0c0, "@P0 BRA 0x80"),
    (0x0d0, "EXIT"),
]


def test_row_stacked_statistics_report_their_steady_and_worst_row():
    rows = sc.analyse(sass({STATS_ROWS: STATS_ROWS_CODE}))[0]
    assert (rows.kernel, rows.dtype, rows.kind, rows.tiled) == ("stats_rows", "bf16", 0, True)
    assert [(lp.role, lp.instructions, lp.offsets) for lp in rows.loops] == [("exp", 8, 2), ("exp", 5, 1)]
    assert rows.steady() == pytest.approx(4.0)
    assert rows.total() == pytest.approx((4.0, 5.0))


def test_kernel_names_demangle_to_kernel_dtype_kind_tiled():
    assert sc.parse_kernel_name(FORWARD) == ("forward", "f32", 0, True)
    assert sc.parse_kernel_name(GATHER.replace("IfLi0ELb1", "IN3c108BFloat16ELin1ELb0")) == (
        "gather", "bf16", -1, False)
    assert sc.parse_kernel_name(STATS.replace("IfLi0", "IN3c104HalfELi2")) == ("stats", "f16", 2, True)
    assert sc.parse_kernel_name(REDUCE) == ("geo_reduce", "f64", None, None)
    assert sc.parse_kernel_name("_ZN2at6native18elementwise_kernelILi128ELi4EEEviT1_") is None


def test_tables_add_stats_and_gather_into_the_backward():
    reports = sc.analyse(FIXTURE, RES_USAGE)
    # No row-stacked kernels in the fixture: their columns are "-"; the gather's stride-1 loop enters the backward.
    assert sc.budget_rows(reports) == [["f32", "sqdiff", "-", "-", "7", "-", "3.5 + 3", "4", "11"]]
    text = sc.markdown(reports, "header")
    assert "| f32 | sqdiff | gather | tiled | s>1 10/1, s=1 7/1 | 7 (s>1: 10) | 71 | 0 |" in text
    assert "geo_reduce" not in text  # no per-offset pass


def test_main_is_a_report_that_skips_without_cuobjdump(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sc, "find_cuobjdump", lambda: None)
    assert sc.main(["--so", str(SCRIPT)]) == 0
    assert "skipped" in capsys.readouterr().out
    assert sc.main(["--so", str(tmp_path / "missing.so")]) == 2
    monkeypatch.undo()
    monkeypatch.setenv("CUOBJDUMP", str(tmp_path / "no-cuobjdump"))
    assert sc.find_cuobjdump() is None
    assert sc.main(["--so", str(SCRIPT)]) == 0
    assert "no cuobjdump" in capsys.readouterr().out


def test_main_skips_a_file_without_cuda_cubins(capsys):
    if sc.find_cuobjdump() is None:
        pytest.skip("no cuobjdump")
    assert sc.main(["--so", str(SCRIPT)]) == 0  # a Python file: cuobjdump finds no device code
    assert "no CUDA cubins" in capsys.readouterr().out


@pytest.fixture(scope="module")
def real_reports():
    so, tool = sc.default_so(), sc.find_cuobjdump()
    if so is None or tool is None:
        pytest.skip("no compiled extension or no cuobjdump")
    reports = sc.analyse(sc.run_cuobjdump(tool, so, "sm_90", "-sass"))
    if not any(r.kernel in sc.PASSES for r in reports):
        pytest.skip("the extension has no sm_90 CUDA cubins")
    return reports


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32", "f64"])
def test_real_extension_has_a_count_for_every_tiled_kernel(real_reports, dtype):
    tiled = {(r.kernel, r.kind): r for r in real_reports if r.dtype == dtype and r.tiled}
    for kernel in sc.KERNELS:
        for kind in (0, 1, 2):
            rep = tiled[(kernel, kind)]
            roles = [lp.role for lp in rep.loops]
            for role in sc.PASSES[kernel]:
                assert role in roles, (kernel, kind, roles)
            low, high = rep.total()
            assert 5 < low <= high < 1000, (kernel, kind, low, high)


def test_cuobjdump_output_is_kept_until_the_extension_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(sc.tempfile, "gettempdir", lambda: str(tmp_path))
    calls = tmp_path / "calls"
    tool = tmp_path / "cuobjdump"
    tool.write_text(f'#!/bin/sh\necho run >> "{calls}"\necho "code for $3 of $4"\n')
    tool.chmod(0o755)
    so = tmp_path / "_C.abi3.so"
    so.write_bytes(b"1")
    first = sc.run_cuobjdump(str(tool), so, "sm_90", "-sass")
    assert first == f"code for sm_90 of {so}\n"
    assert sc.run_cuobjdump(str(tool), so, "sm_90", "-sass") == first  # read from the kept copy
    assert calls.read_text().count("run") == 1
    assert sc.run_cuobjdump(str(tool), so, "sm_80", "-sass") == f"code for sm_80 of {so}\n"  # another arch: run
    so.write_bytes(b"22")  # rebuilt: another size and time
    assert sc.run_cuobjdump(str(tool), so, "sm_90", "-sass") == first
    assert calls.read_text().count("run") == 3
