"""``lrrobust bench op`` and its timing helpers: records, memory measurement, CLI and bad options (issue 2).

No test looks at how fast anything is; they check what is measured and reported.
"""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
from conftest import torch_threads
from typer.testing import CliRunner

import lrrobust.ops
from lrrobust.bench.op import IMPLS, PASSES, Stage, add_ratios, check_targets, make_forward, run_op_bench
from lrrobust.bench.timing import measure, peak_memory_mb, time_ms
from lrrobust.cli import app
from lrrobust.errors import UserError

# 20 channels in 3 groups of m = 8 leave the last group 4 channels, like C = 100 at stage 1.
TINY = (Stage(1, 16, 6), Stage(2, 20, 5))


@pytest.fixture(scope="module")
def tiny_records() -> list[dict]:
    return run_op_bench(device="cpu", batch=2, stages=TINY, repeats=2, warmup=1)


def test_cpu_peak_memory_follows_allocations_and_frees():
    def allocate():
        a = torch.empty(1_000_000)  # 4 MB
        b = torch.empty(2_000_000)  # 8 MB: 12 MB live
        del a  # 8 MB live
        c = torch.empty(500_000)  # 10 MB live
        del b, c

    assert peak_memory_mb(allocate, "cpu") == pytest.approx(12.0)


def test_cpu_peak_memory_ignores_what_was_alive_before_and_sees_op_outputs():
    x = torch.ones(1000, 1000)  # 4 MB, allocated before: not counted

    def matmul():
        (x @ x).sum()  # the 4 MB product and a scalar

    assert peak_memory_mb(matmul, "cpu") == pytest.approx(4.0, rel=1e-3)


def test_time_ms_runs_as_many_times_as_asked_and_cuts_to_the_budget():
    calls = []

    def sleep():
        calls.append(1)
        time.sleep(0.02)

    assert len(time_ms(sleep, "cpu", repeats=4, warmup=2)) == 4
    assert len(calls) == 6
    # 20 ms per call and a 50 ms budget afford 2 calls: the floor of 3 wins over the 10 asked for.
    assert len(time_ms(sleep, "cpu", repeats=10, warmup=1, max_seconds=0.05)) == 3
    assert len(time_ms(sleep, "cpu", repeats=2, warmup=1, max_seconds=0.05)) == 2
    with pytest.raises(ValueError, match="repeats"):
        time_ms(sleep, "cpu", repeats=0)


def test_measure_reports_the_median_and_the_peak():
    def allocate():
        torch.empty(250_000)  # 1 MB

    m = measure(allocate, "cpu", repeats=5, warmup=1)
    assert m.repeats == 5
    assert m.ms == sorted(m.times_ms)[2]
    assert m.peak_mb == pytest.approx(1.0)


def test_records_cover_every_stage_impl_and_pass_once(tiny_records):
    keys = [(r["stage"], r["impl"], r["pass"]) for r in tiny_records]
    assert sorted(keys) == sorted((s.stage, i, p) for s in TINY for i in IMPLS for p in PASSES)
    for r in tiny_records:
        assert {"stage", "impl", "pass", "ms", "peak_mb"} <= r.keys()
        assert math.isfinite(r["ms"]) and 0 < r["ms_min"] <= r["ms"] <= r["ms_max"]
        # every pass allocates at least its (N, C, S, S) output
        out_mb = r["batch"] * r["channels"] * r["size"] ** 2 * 4 / 1e6
        assert r["peak_mb"] >= out_mb * 0.999
        stage = TINY[r["stage"] - 1]
        assert (r["channels"], r["size"], r["groups"]) == (stage.channels, stage.size, stage.groups)
        assert (r["batch"], r["device"], r["dtype"], r["repeats"], r["kernel_size"]) == (2, "cpu", "float32", 2, 7)
    assert {r["groups"] for r in tiny_records} == {2, 3}


def test_fused_rows_say_whether_the_compiled_kernel_ran(tiny_records):
    expected = "compiled" if lrrobust.ops.kernel_available("cpu") else "fallback"
    fused = [r for r in tiny_records if r["impl"] == "lr_fused"]
    assert fused and all(r["kernel"] == expected for r in fused)
    assert all("kernel" not in r for r in tiny_records if r["impl"] != "lr_fused")


def test_reference_memory_shows_its_k_squared_unfold(tiny_records):
    for r in tiny_records:
        if r["impl"] == "lr_reference":
            value_mb = r["batch"] * r["channels"] * r["size"] ** 2 * 4 / 1e6
            assert r["peak_mb"] >= 49 * value_mb  # the unfolded value alone is 49 copies


@pytest.mark.skipif(not lrrobust.ops.kernel_available("cpu"), reason="compiled CPU kernel not built")
def test_fused_kernel_allocates_nothing_of_k_squared_size(tiny_records):
    for r in tiny_records:
        if r["impl"] == "lr_fused":
            value_mb = r["batch"] * r["channels"] * r["size"] ** 2 * 4 / 1e6
            assert r["peak_mb"] < 10 * value_mb


def test_ratios_are_relative_to_the_same_stage_and_pass(tiny_records):
    by_key = {(r["stage"], r["impl"], r["pass"]): r for r in tiny_records}
    for (stage, impl, pass_), r in by_key.items():
        conv, ref = by_key[(stage, "conv3x3", pass_)], by_key[(stage, "lr_reference", pass_)]
        assert r["ms_vs_conv3x3"] == pytest.approx(r["ms"] / conv["ms"])
        assert r["ms_vs_reference"] == pytest.approx(r["ms"] / ref["ms"])
        assert r["mb_vs_reference"] == pytest.approx(r["peak_mb"] / ref["peak_mb"])
    assert all(by_key[(s.stage, "conv3x3", p)]["ms_vs_conv3x3"] == 1.0 for s in TINY for p in PASSES)


def test_targets_are_judged_on_the_fused_forward_backward():
    def rec(stage, impl, ms, mb):
        return {"stage": stage, "impl": impl, "pass": "fwd_bwd", "ms": ms, "peak_mb": mb, "device": "cpu"}

    records = add_ratios(
        [rec(1, "lr_fused", 14.0, 5.0), rec(1, "lr_reference", 200.0, 100.0), rec(1, "conv3x3", 10.0, 1.0)]
        + [rec(2, "lr_fused", 11.0, 20.0), rec(2, "lr_reference", 100.0, 100.0), rec(2, "conv3x3", 10.0, 1.0)]
    )
    rows = {(r["stage"], r["target"]): r for r in check_targets(records)}
    assert len(rows) == 6
    assert rows[(1, "time / conv3x3")]["met"] and rows[(1, "time / conv3x3")]["limit"] == 1.5
    assert not rows[(2, "time / conv3x3")]["met"] and rows[(2, "time / conv3x3")]["limit"] == 1.0
    assert rows[(1, "time / reference")]["met"] and not rows[(2, "time / reference")]["met"]
    assert rows[(1, "peak memory / reference")]["met"] and not rows[(2, "peak memory / reference")]["met"]


def test_every_impl_runs_the_stage_window_and_stride():
    # K = 5, stride 2 on a 9 x 9 map: every impl maps (1, 16, 9, 9) to (1, 16, 5, 5); the fused op and the reference
    # see the same inputs and agree.
    stage = Stage(1, 16, 9, kernel_size=5, stride=2)
    assert stage.out_size == 5
    outputs = {}
    for impl in IMPLS:
        torch.manual_seed(0)
        forward, leaves = make_forward(impl, stage, 1, "cpu", torch.float32, grad=False)
        outputs[impl] = forward()
        assert outputs[impl].shape == (1, 16, 5, 5), impl
    assert [tuple(x.shape) for x in leaves[:1]] == [(1, 16, 9, 9)]  # dwconv7x7's input
    torch.testing.assert_close(outputs["lr_fused"], outputs["lr_reference"], atol=1e-4, rtol=1e-4)


def test_records_carry_the_window_and_stride_and_no_target_is_judged_off_the_paper_shapes():
    stages = (Stage(1, 16, 9, kernel_size=11, stride=1), Stage(2, 20, 8, kernel_size=3, stride=2))
    records = run_op_bench(device="cpu", batch=1, stages=stages, impls=("lr_fused", "lr_reference", "conv3x3"),
                           passes=("fwd_bwd",), repeats=1, warmup=0)
    assert sorted((r["stage"], r["kernel_size"], r["stride"]) for r in records) == [(1, 11, 1)] * 3 + [(2, 3, 2)] * 3
    assert all("ms_vs_conv3x3" in r for r in records)
    assert check_targets(records) == []
    # The same records at the paper's K = 7, stride 1 are judged.
    assert len(check_targets([{**r, "kernel_size": 7, "stride": 1} for r in records])) == 6


def test_library_refuses_bad_options():
    with pytest.raises(UserError, match="--batch"):
        run_op_bench(batch=0, stages=TINY)
    with pytest.raises(UserError, match="--device"):
        run_op_bench(device="tpu", stages=TINY)
    with pytest.raises(UserError, match="--impl"):
        run_op_bench(impls=("conv5x5",), stages=TINY)
    with pytest.raises(UserError, match="--kernel-size must be odd"):
        run_op_bench(stages=(Stage(1, 16, 6, kernel_size=4),))
    with pytest.raises(UserError, match="--stride"):
        run_op_bench(stages=(Stage(1, 16, 6, stride=0),))


def test_cli_writes_the_records_as_json_and_markdown(tmp_path):
    out, md = tmp_path / "sub" / "bench.json", tmp_path / "bench.md"
    args = ["bench", "op", "--shape", "16x6", "--batch", "2", "--repeats", "2", "--threads", "1"]
    with torch_threads(2):
        result = CliRunner().invoke(app, [*args, "--json", str(out), "--markdown", str(md)])
        assert torch.get_num_threads() == 2  # restored after the run
    assert result.exit_code == 0, result.output
    assert "local relation op vs convolutions" in result.stdout
    records = json.loads(out.read_text())
    assert sorted((r["impl"], r["pass"]) for r in records) == sorted((i, p) for i in IMPLS for p in PASSES)
    assert all(r["stage"] == 1 and r["channels"] == 16 and r["size"] == 6 and r["batch"] == 2 for r in records)
    assert all(r["threads"] == 1 for r in records)
    table = [line for line in md.read_text().splitlines() if line.startswith("| 1 |")]
    assert len(table) == len(records) == 8
    conv_fwd = next(r for r in records if (r["impl"], r["pass"]) == ("conv3x3", "fwd"))
    assert f"| fwd | conv3x3 | {conv_fwd['ms']:.2f} | {conv_fwd['peak_mb']:.1f} | 1.00x |" in md.read_text()
    assert [p.name for p in out.parent.iterdir()] == ["bench.json"]  # no temporary file left beside it
    if not lrrobust.ops.kernel_available("cpu"):
        assert "NOT available" in result.stderr and "FALLBACK" in result.stdout


def test_cli_times_the_stages_at_another_window_and_stride(tmp_path):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    args = ["bench", "op", "--stages", "4", "--kernel-size", "15", "--stride", "2", "--batch", "1"]
    args += ["--impl", "lr_fused,conv3x3", "--passes", "fwd_bwd", "--repeats", "1", "--warmup", "0"]
    result = CliRunner().invoke(app, [*args, "--json", str(out), "--markdown", str(md)])
    assert result.exit_code == 0, result.output
    assert "K 15, stride 2" in result.stdout and "issue 2 targets" not in result.stdout
    records = json.loads(out.read_text())
    assert sorted(r["impl"] for r in records) == ["conv3x3", "lr_fused"]
    assert all((r["stage"], r["channels"], r["size"], r["kernel_size"], r["stride"]) == (4, 800, 7, 15, 2)
               for r in records)
    assert sum("| 4 | 800 x 7^2 (100) | 15, 2 | fwd_bwd |" in line for line in md.read_text().splitlines()) == 2


def test_cli_runs_a_subset_of_the_lrnet26_stages(tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "op", "--stages", "4", "--batch", "1", "--impl", "conv3x3,dwconv7x7", "--passes", "fwd"]
    result = CliRunner().invoke(app, [*args, "--repeats", "1", "--warmup", "0", "--json", str(out)])
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert sorted(r["impl"] for r in records) == ["conv3x3", "dwconv7x7"]
    assert all(
        (r["stage"], r["channels"], r["size"], r["groups"], r["pass"]) == (4, 800, 7, 100, "fwd") for r in records
    )


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--device", "tpu"], "--device"),
        (["--batch", "0"], "--batch"),
        (["--dtype", "float16"], "--dtype"),
        (["--stages", "5"], "--stages"),
        (["--impl", "lr_fused,conv5x5"], "--impl"),
        (["--passes", "bwd"], "--passes"),
        (["--shape", "16by6"], "--shape"),
        (["--shape", "0x6"], "--shape"),
        (["--repeats", "0"], "--repeats"),
        (["--threads", "0"], "--threads"),
        (["--kernel-size", "4"], "--kernel-size"),
        (["--kernel-size", "-1"], "--kernel-size"),
        (["--kernel-size", "32769"], "--kernel-size"),
        (["--stride", "0"], "--stride"),
        (["--shape", "16x6", "--stride", str(2**28 + 1)], "--stride"),
    ],
)
def test_cli_bad_options_give_one_line_and_exit_2(args, named):
    result = CliRunner().invoke(app, ["bench", "op", *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in result.output


def test_cli_cuda_without_a_gpu_gives_one_line_and_exit_2():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = CliRunner().invoke(app, ["bench", "op", "--device", "cuda"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: --device cuda: no CUDA GPU is available on this machine; use --device cpu"
    ]


def test_cli_json_path_that_is_a_directory_is_refused_before_the_bench(tmp_path):
    result = CliRunner().invoke(app, ["bench", "op", "--json", str(tmp_path)])
    assert result.exit_code == 2
    assert "is a directory" in result.stderr and len(result.stderr.strip().splitlines()) == 1
