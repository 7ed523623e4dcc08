"""Runs that cannot lie: every bad input or failing environment ends a command with one line, never a traceback.

A user's mistake exits with code 2, a failing environment (a path that cannot be written, a full disk) with code 1;
either way the output is exactly one line starting with "error:", and the files already there stay intact. A full
disk is played by a file size limit (RLIMIT_FSIZE, SIGXFSZ ignored) in a subprocess: writes past it fail with EFBIG,
like a full disk's ENOSPC, for any user, root included.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lrrobust.checkpoint import read_checkpoint
from lrrobust.cli import app
from lrrobust.errors import EnvironmentFailure, UserError
from lrrobust.evaluation.state import STATE_DIR, read_state
from lrrobust.io import append_jsonl, atomic_write_text, ensure_writable_dir
from lrrobust.training import TrainConfig, resolve_config
from lrrobust.training.run_files import read_metrics

TINY = ["-m", "resnet18", "--width", "0.125", "--epochs", "1", "--batch-size", "256", "--no-progress"]
EVAL = ["--steps", "1", "--limit", "64", "--batch-size", "8", "--mode", "untargeted"]


def invoke(*args) -> object:
    env = {k: v for k, v in os.environ.items() if k != "LRROBUST_DEBUG"}
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def assert_one_line(output: str, exit_code: int, code: int, *fragments: str) -> str:
    """The command's whole output is one line 'error: ...' holding every fragment, and it exited with ``code``."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert exit_code == code, output
    assert len(lines) == 1, output
    assert lines[0].startswith("error:") and "Traceback" not in output, output
    assert len(lines[0]) < 500, lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def check(result, code: int, *fragments: str) -> str:
    return assert_one_line(result.output, result.exit_code, code, *fragments)


@pytest.fixture(scope="module")
def runs(session_cache) -> dict[str, Path]:
    """A tiny regular and adversarial digits run, and an evaluation of the regular one (read-only: copy them)."""

    def build(root: Path) -> None:
        for kind, command in (("regular", "train"), ("adversarial", "train-adv")):
            extra = ["--steps", "1"] if kind == "adversarial" else []
            result = invoke(command, *TINY, *extra, "-o", root / kind)
            assert result.exit_code == 0, result.output
        result = invoke("eval-attack", root / "regular", "--out", root / "eval", *EVAL)
        assert result.exit_code == 0, result.output

    root = session_cache("cli-errors-runs", build)
    return {"regular": root / "regular", "adversarial": root / "adversarial", "eval": root / "eval"}


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------- 6. unwritable outputs

PROC = Path("/proc/lrrobust-no-such-dir")  # nothing can be created under /proc, even by root


@pytest.mark.parametrize("command", ["train", "train-adv"])
def test_training_into_an_unwritable_path_fails_at_once_with_exit_1(command, tmp_path):
    result = invoke(command, *TINY, "-o", PROC / "run")
    check(result, 1, "cannot write in /proc", f"--out {PROC / 'run'}")


def test_training_under_a_file_cannot_be_written_exit_1(tmp_path):
    (tmp_path / "afile").write_text("x")
    result = invoke("train", *TINY, "-o", tmp_path / "afile" / "run")
    check(result, 1, "cannot write in", "afile is a file, not a directory")
    result = invoke("train", *TINY, "-o", tmp_path / "afile")
    check(result, 1, "cannot write in", "it is a file")
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("resume", [[], ["--resume"]])
def test_a_foreign_directory_is_refused_and_left_as_it_was(tmp_path, resume):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    check(invoke("train", *TINY, "-o", out, *resume), 2, str(out), "--resume" if not resume else "not an lrrobust run")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]  # no lock file, no probe left behind


def test_a_read_only_directory_is_refused_with_exit_1(tmp_path):
    if os.geteuid() == 0:  # root writes anywhere: sysfs plays the read-only directory
        target = Path("/sys/lrrobust-run")
        if not Path("/sys").is_dir() or _sys_is_writable():
            pytest.skip("no read-only directory available to root here")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        target = ro / "run"
    result = invoke("train", *TINY, "-o", target)
    check(result, 1, "cannot write in", str(target))
    assert not target.exists()


def _sys_is_writable() -> bool:
    try:
        ensure_writable_dir("/sys", "--out", create=False)
    except EnvironmentFailure:
        return False
    return True


def test_eval_attack_into_an_unwritable_path_fails_before_attacking(runs, tmp_path):
    result = invoke("eval-attack", runs["regular"], "--out", PROC / "eval", *EVAL)
    check(result, 1, "cannot write in /proc")
    (tmp_path / "afile").write_text("x")
    result = invoke("eval-attack", runs["regular"], "--out", tmp_path / "afile" / "eval", *EVAL)
    check(result, 1, "is a file")
    result = invoke("eval-attack", runs["regular"], "--out", tmp_path / "afile", *EVAL)
    check(result, 1, "is a file")


def test_report_into_an_unwritable_path(runs, tmp_path):
    """An output that cannot be written is exit code 1, a file where the report directory should be included
    (issue 23, finding 10: `report --out FILE` exited 2)."""
    result = invoke("report", runs["eval"], "--out", PROC / "report")
    line = check(result, 1, "cannot write in /proc", "virtual filesystem")
    assert "No such file or directory" not in line
    (tmp_path / "afile").write_text("x")
    result = invoke("report", runs["eval"], "--out", tmp_path / "afile" / "report")
    check(result, 1, "is a file")
    result = invoke("report", runs["eval"], "--out", tmp_path / "afile")
    check(result, 1, "cannot write in", "afile (--out): it is a file, not a directory")
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("bench", [["bench", "op", "--stages", "4", "--impl", "conv3x3", "--passes", "fwd"],
                                   ["bench", "train", "--models", "resnet18", "--width", "0.125"]])
def test_bench_json_into_an_unwritable_path_fails_before_the_bench(bench, tmp_path):
    result = invoke(*bench, "--json", PROC / "bench.json")
    check(result, 1, "cannot write in /proc", "--json")  # one line: the bench never started (it prints a header)
    (tmp_path / "afile").write_text("x")
    result = invoke(*bench, "--json", tmp_path / "afile" / "bench.json")
    check(result, 1, "is a file")


def test_ensure_writable_dir_creates_and_probes_or_leaves_nothing(tmp_path):
    made = ensure_writable_dir(tmp_path / "a" / "b", "--out")
    assert made.is_dir() and list(made.iterdir()) == []  # the probe file is gone
    before = sorted(tmp_path.rglob("*"))
    ensure_writable_dir(tmp_path / "new" / "deeper", "--out", create=False)
    assert sorted(tmp_path.rglob("*")) == before  # probed the nearest existing parent, created nothing
    with pytest.raises(EnvironmentFailure, match="cannot write in /proc"):
        ensure_writable_dir(PROC / "x", "--out")
    (tmp_path / "f").touch()
    with pytest.raises(EnvironmentFailure, match="is a file"):
        ensure_writable_dir(tmp_path / "f", "--out")
    with pytest.raises(EnvironmentFailure, match="is a file, not a directory"):
        ensure_writable_dir(tmp_path / "f" / "sub", "--out")


def test_writers_raise_environment_failure_naming_the_path(tmp_path):
    with pytest.raises(EnvironmentFailure, match=r"^cannot write /proc/lrrobust-x\.txt: "):
        atomic_write_text("/proc/lrrobust-x.txt", "text")
    with pytest.raises(EnvironmentFailure, match=r"^cannot write /proc/lrrobust-x\.jsonl: "):
        append_jsonl("/proc/lrrobust-x.jsonl", {"a": 1})
    with pytest.raises(EnvironmentFailure, match=r"^cannot create directory /proc/lrrobust-no-such-dir: "):
        atomic_write_text(PROC / "x.txt", "text")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(EnvironmentFailure, match="afile is a file, not a directory"):
        atomic_write_text(tmp_path / "afile" / "x.txt", "text")


def _limited(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def run_limited(args: list, limit: int, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a subprocess that cannot write files beyond ``limit`` bytes: a disk that fills up."""
    env = {k: v for k, v in os.environ.items() if k != "LRROBUST_DEBUG"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-m", "lrrobust.cli", *map(str, args)], cwd=cwd, env=env, check=False,
                          capture_output=True, text=True, timeout=300, preexec_fn=_limited(limit))


def test_a_full_disk_during_train_adv_keeps_the_last_checkpoint(runs, tmp_path):
    run = copy(runs["adversarial"], tmp_path / "run")
    last = (run / "last.pt").read_bytes()
    best = (run / "best.pt").read_bytes()
    proc = run_limited(["train-adv", *TINY, "--steps", "1", "--epochs", "2", "-o", run, "--resume"],
                       len(last) // 2, tmp_path)
    assert_one_line(proc.stdout + proc.stderr, proc.returncode, 1, f"cannot write {run / 'last.pt'}",
                    "File too large")
    assert (run / "last.pt").read_bytes() == last and (run / "best.pt").read_bytes() == best  # intact
    assert read_checkpoint(run / "last.pt")["epoch"] == 1 and [r.epoch for r in read_metrics(run)] == [1]
    assert not list(run.glob(".*.tmp"))  # no temporary file left behind
    result = invoke("train-adv", *TINY, "--steps", "1", "--epochs", "2", "-o", run, "--resume")  # space again
    assert result.exit_code == 0, result.output
    assert read_checkpoint(run / "last.pt")["epoch"] == 2 and [r.epoch for r in read_metrics(run)] == [1, 2]


def test_a_full_disk_during_eval_attack_keeps_the_state_and_resumes(runs, tmp_path):
    state = runs["eval"] / STATE_DIR
    limit = max((state / "rank-0.jsonl").stat().st_size // 2, (state / "config.json").stat().st_size + 200)
    out = tmp_path / "eval"
    proc = run_limited(["eval-attack", runs["regular"], "--out", out, *EVAL], limit, tmp_path)
    # stdout, not a terminal here, carries the attack stages' log lines; the error is the one line on stderr
    assert_one_line(proc.stderr, proc.returncode, 1, f"cannot write {out / STATE_DIR}", "File too large")
    assert "Traceback" not in proc.stdout and "error" not in proc.stdout
    rank = out / STATE_DIR / "rank-0.jsonl"
    text = rank.read_text()
    assert text.endswith("\n") and all(json.loads(line) for line in text.splitlines())  # whole lines only
    done = read_state(out)
    assert 0 < len(done) < len(read_state(runs["eval"]))
    assert not (out / "summary.json").exists()
    result = invoke("eval-attack", runs["regular"], "--out", out, *EVAL)  # space again: resumes where it stopped
    assert result.exit_code == 0, result.output
    assert (out / "samples.csv").read_text() == (runs["eval"] / "samples.csv").read_text()


def test_a_full_disk_while_writing_the_outputs(runs, tmp_path):
    """The state is complete; summary files cannot be written: one line, exit 1, the state untouched."""
    out = copy(runs["eval"], tmp_path / "eval")
    for name in ("samples.csv", "summary.csv", "summary.json"):
        (out / name).unlink()
    before = snapshot(out / STATE_DIR)
    proc = run_limited(["eval-attack", runs["regular"], "--out", out, *EVAL],
                       (runs["eval"] / "samples.csv").stat().st_size // 2, tmp_path)
    assert_one_line(proc.stdout + proc.stderr, proc.returncode, 1, "cannot write", "samples.csv", "File too large")
    assert snapshot(out / STATE_DIR) == before
    assert not (out / "samples.csv").exists() and not list(out.glob(".*.tmp"))


# ------------------------------------------------------------------------------------- 7. damaged inputs


def test_a_non_utf8_suite_file(runs, tmp_path):
    suite = tmp_path / "latin1.toml"
    suite.write_bytes('name = "caf\u00e9"\n[[attack]]\neps = 0.2\n'.encode("latin-1"))
    result = invoke("eval-attack", runs["regular"], "--suite", suite, "--out", tmp_path / "eval")
    check(result, 2, str(suite), "not UTF-8")
    assert not (tmp_path / "eval").exists()


def _report(source: Path, tmp_path: Path):
    return invoke("report", source, "--out", tmp_path / "report")


def test_report_on_a_run_with_a_torn_metrics_line(runs, tmp_path):
    """A torn last line (a kill mid-append) is what every reader skips: the report works."""
    run = copy(runs["regular"], tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "lo')
    result = _report(run, tmp_path)
    assert result.exit_code == 0, result.output
    assert [r.epoch for r in read_metrics(run)] == [1]


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ("{}", ["config.json", "damaged", "not a training config"]),
        ('{"model": "resnet18", "dataset": "digits", "lr": "fast"}', ["config.json", "lr must be a number"]),
        ("[1, 2]", ["config.json", "damaged", "expected a JSON object"]),
        ('{"model": "resnet18", "epochs": ', ["config.json", "damaged: not JSON"]),
        ('{"model": "resnet18", "colour": "blue"}', ["config.json", "unknown training config keys"]),
        (b"\xff\xfe{", ["config.json", "damaged"]),
    ],
    ids=["empty-object", "wrong-type", "list", "cut", "unknown-key", "not-utf8"],
)
def test_report_on_a_run_with_a_damaged_config(runs, tmp_path, content, fragments):
    run = copy(runs["regular"], tmp_path / "run")
    if isinstance(content, bytes):
        (run / "config.json").write_bytes(content)
    else:
        (run / "config.json").write_text(content)
    check(_report(run, tmp_path), 2, *fragments)
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize(
    ("name", "content", "fragments"),
    [
        ("summary.json", "{not json", ["summary.json"]),
        ("summary.json", '{"schema": 2}', ["summary.json", "damaged"]),
        ("samples.csv", b"\xff\xfe\x00", ["samples.csv"]),
        ("samples.csv", "index,label\n1,2\n", ["samples.csv"]),
    ],
    ids=["summary-cut", "summary-empty", "samples-binary", "samples-foreign"],
)
def test_report_on_a_damaged_evaluation(runs, tmp_path, name, content, fragments):
    ev = copy(runs["eval"], tmp_path / "eval")
    if isinstance(content, bytes):
        (ev / name).write_bytes(content)
    else:
        (ev / name).write_text(content)
    check(_report(ev, tmp_path), 2, *fragments)


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ('{"model": "resnet18", "epochs": ', ["config.json", "damaged: not JSON"]),
        ("{}", ["config.json", "damaged", "not a training config"]),
        ('{"model": "resnet18", "dataset": "digits", "epochs": "three"}', ["config.json", "epochs must be an integer"]),
        (b"\xff\xfe{", ["config.json", "damaged"]),
    ],
    ids=["cut", "empty-object", "wrong-type", "not-utf8"],
)
def test_resume_with_a_damaged_config(runs, tmp_path, content, fragments):
    run = copy(runs["regular"], tmp_path / "run")
    if isinstance(content, bytes):
        (run / "config.json").write_bytes(content)
    else:
        (run / "config.json").write_text(content)
    before = snapshot(run)
    check(invoke("train", *TINY, "--epochs", "2", "-o", run, "--resume"), 2, *fragments)
    assert snapshot(run) == before


@pytest.mark.parametrize(
    ("record", "fragments"),
    [
        ('{"batch": 0, "key": "__clean__"}', ["rank-0.jsonl line", "not an evaluation record"]),
        ('{"batch": "zero", "key": "k", "attack": "a"}', ["rank-0.jsonl line", "not an evaluation record"]),
        ('[1, 2, 3]', ["rank-0.jsonl line", "not an evaluation record"]),
        ('{"batch": 0, "key": "__clean__", "index": 5, "label": 1, "clean_pred": 1}', ["not an evaluation record"]),
    ],
    ids=["missing-fields", "bad-batch", "not-object", "scalar-lists"],
)
def test_a_malformed_record_in_the_evaluation_state(runs, tmp_path, record, fragments):
    ev = copy(runs["eval"], tmp_path / "eval")
    for name in ("samples.csv", "summary.csv", "summary.json"):
        (ev / name).unlink()
    with open(ev / STATE_DIR / "rank-0.jsonl", "a") as f:
        f.write(record + "\n")
    check(invoke("eval-attack", runs["regular"], "--out", ev, *EVAL), 2, *fragments)


def test_a_damaged_state_config(runs, tmp_path):
    ev = copy(runs["eval"], tmp_path / "eval")
    (ev / STATE_DIR / "config.json").write_text("{cut")
    check(invoke("eval-attack", runs["regular"], "--out", ev, *EVAL), 2, "config.json is damaged")


# ------------------------------------------------------------------------------------- 8. values that make no sense

TRAIN_VALUES = [
    (["--grad-clip", "nan"], "--grad-clip"),
    (["--grad-clip", "inf"], "--grad-clip"),
    (["--grad-clip", "-1"], "--grad-clip"),
    (["--precise-bn", "-1"], "--precise-bn must be a number of batches >= 0"),
    (["--warmup-epochs", "inf"], "--warmup-epochs"),
    (["--warmup-epochs", "nan"], "--warmup-epochs"),
    (["--warmup-epochs", "-1"], "--warmup-epochs"),
    (["--milestones", "5,-1"], "--milestones"),
    (["--milestones", "0"], "--milestones"),
    (["--milestones", "30,10"], "--milestones must be increasing"),
    (["--milestones", "5,5"], "--milestones must be increasing"),
    (["--milestones", "five"], "--milestones"),
    (["--weight-decay", "nan"], "--weight-decay"),
    (["--weight-decay", "-0.1"], "--weight-decay"),
    (["--weight-decay", "inf"], "--weight-decay"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-0.1"], "--lr"),
    (["--momentum", "1"], "--momentum"),
    (["--momentum", "nan"], "--momentum"),
    (["--momentum", "-0.5"], "--momentum"),
    (["--width", "nan"], "--width"),
    (["--width", "inf"], "--width"),
    (["--width", "0"], "--width"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**64)], "--seed"),
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--num-workers", "-1"], "--num-workers"),
]
ADV_VALUES = [
    (["--precise-bn", "-1"], "--precise-bn"),
    (["--eps", "nan"], "--eps"),
    (["--eps", "inf"], "--eps"),
    (["--eps", "-0.1"], "--eps"),
    (["--step-size", "nan"], "--step-size"),
    (["--step-size", "0"], "--step-size"),
    (["--step-size", "inf"], "--step-size"),
    (["--steps", "0"], "--steps"),
]


@pytest.mark.parametrize(("args", "named"), TRAIN_VALUES + [(["ADV", *a], n) for a, n in ADV_VALUES],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_training_values_that_make_no_sense(args, named, tmp_path):
    command = "train"
    if args[0] == "ADV":
        command, args = "train-adv", args[1:]
    out = tmp_path / "run"
    check(invoke(command, "-m", "resnet18", *args, "-o", out), 2, named)
    assert not out.exists()


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"grad_clip": math.nan}, "--grad-clip"),
        ({"precise_bn": -1}, "--precise-bn must be a number of batches"),
        ({"precise_bn": 1.5}, "--precise-bn must be an integer"),
        ({"warmup_epochs": math.inf}, "--warmup-epochs"),
        ({"milestones": [5, -1]}, "--milestones"),
        ({"milestones": [2.5]}, "--milestones"),
        ({"milestones": "30,60"}, "--milestones"),
        ({"weight_decay": math.nan}, "--weight-decay"),
        ({"lr": math.inf}, "--lr"),
        ({"lr": "0.1"}, "--lr must be a number"),
        ({"epochs": 1.5}, "--epochs must be an integer"),
        ({"seed": True}, "--seed must be an integer"),
        ({"momentum": math.nan}, "--momentum"),
        ({"model_kwargs": {"width": math.nan}}, "--width"),
        ({"adversarial": True, "eps": math.nan}, "--eps"),
        ({"adversarial": True, "step_size": math.inf}, "--step-size"),
    ],
)
def test_train_config_from_python_is_checked_too(fields, named):
    with pytest.raises(UserError, match=named.replace("-", r"\-")) as err:
        resolve_config(TrainConfig(model="resnet18", **fields))
    assert "\n" not in str(err.value)


def test_good_milestones_and_warmup_still_pass():
    c = resolve_config(TrainConfig(model="resnet18", milestones=[2, 4], warmup_epochs=0.5, grad_clip=0))
    assert (c.milestones, c.warmup_epochs, c.grad_clip) == ([2, 4], 0.5, 0)
    assert resolve_config(TrainConfig(model="resnet18", milestones=[])).milestones == []


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--eps", "nan"], "--eps"),
        (["--eps", "inf"], "--eps"),
        (["--eps", "0"], "--eps"),
        (["--step-size", "nan"], "step"),
        (["--steps", "0"], "steps"),
        (["--restarts", "0"], "restarts"),
        (["--seed", "-1"], "--seed"),
        (["--seed", str(2**64)], "--seed"),
        (["--batch-size", "0"], "--batch-size"),
        (["--limit", "0"], "--limit"),
        (["--workers", "-1"], "--workers"),
    ],
)
def test_eval_values_that_make_no_sense(runs, args, named, tmp_path):
    out = tmp_path / "eval"
    check(invoke("eval-attack", runs["regular"], *args, "--out", out), 2, named)
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["op", "--max-seconds", "nan"], "--max-seconds"),
        (["op", "--max-seconds", "inf"], "--max-seconds"),
        (["op", "--max-seconds", "0"], "--max-seconds"),
        (["op", "--warmup", "-1"], "--warmup"),
        (["op", "--batch", "0"], "--batch"),
        (["train", "--width", "nan"], "--width"),
        (["train", "--width", "inf"], "--width"),
        (["train", "--iters", "0"], "--iters"),
        (["train", "--batch-size", "0"], "--batch-size"),
        (["train", "--models", ","], "--models"),
    ],
)
def test_bench_values_that_make_no_sense(args, named):
    check(invoke("bench", *args), 2, named)


# ------------------------------------------------------------------------------------- 9. messages


@pytest.mark.parametrize(
    ("text", "bracketed"),
    [
        ("[[attack]]\nstpes = 3\n", "[[attack]] number 1"),
        ('[[attack]]\nname = "a"\neps = 0.2\n[checks]\nbogus = 1\n', "[checks]"),
    ],
)
def test_bracketed_text_is_printed_as_it_is(runs, tmp_path, text, bracketed):
    suite = tmp_path / "typo.toml"
    suite.write_text(text)
    line = check(invoke("eval-attack", runs["regular"], "--suite", suite, "--out", tmp_path / "eval"), 2, bracketed)
    assert "in []" not in line and " [] " not in line


def test_markup_in_any_message_is_not_eaten(tmp_path):
    check(invoke("train", "-m", "resnet18", "--model-opt", "[bold]x", "-o", tmp_path / "run"), 2, "[bold]x")


def test_a_text_file_as_checkpoint_says_what_it_is(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("epoch,loss\n1,0.5\n" * 10)
    line = check(invoke("eval-attack", text, "--out", tmp_path / "eval"), 2, "not a PyTorch checkpoint file")
    assert "101" not in line


@pytest.mark.parametrize("kind", ["torch.save", "pickle"])
def test_a_malicious_checkpoint_names_the_refused_global(tmp_path, kind):
    from test_checkpoint import write_evil_checkpoint

    path = write_evil_checkpoint(tmp_path / "evil.pt", kind)
    line = check(invoke("eval-attack", path, "--out", tmp_path / "eval"), 2, f"{os.system.__module__}.system")
    assert "PyTorch 2.6" not in line


def test_resume_of_a_copied_run_names_the_directory_given(runs, tmp_path):
    run = copy(runs["regular"], tmp_path / "copy")
    check(invoke("train-adv", *TINY, "-o", run, "--resume"), 2, f"{run} holds a regular run")
    assert str(runs["regular"]) not in invoke("train-adv", *TINY, "-o", run, "--resume").output


@pytest.mark.parametrize(("args", "fragments"), [
    (["train", "--epochs", "two"], ["Invalid value for '--epochs'", "(see lrrobust train --help)"]),
    (["train", "--epohcs", "2"], ["No such option: --epohcs"]),
    (["train", "--precise-bn", "abc"], ["Invalid value for '--precise-bn'", "(see lrrobust train --help)"]),
    (["train-adv", "--precise-bn", "abc"], ["Invalid value for '--precise-bn'", "(see lrrobust train-adv --help)"]),
    (["eval-attack", "--out"], ["Option '--out' requires an argument"]),
    (["report"], ["Missing argument 'dirs'"]),
    (["trian"], ["No such command 'trian'", "(see lrrobust --help)"]),
    (["bench", "op", "--batch", "many"], ["Invalid value for '--batch'", "(see lrrobust bench op --help)"]),
    (["--bogus"], ["No such option: --bogus"]),
])
def test_usage_errors_are_one_line_with_exit_2(args, fragments):
    """Issue 23, finding 10: typer's usage errors printed a usage line, a hint and a boxed message."""
    check(invoke(*args), 2, *fragments)


def test_help_screens_stay_as_they_are():
    for args in (["--help"], ["train", "--help"], []):
        result = invoke(*args)
        assert "Usage:" in result.output and "error:" not in result.output, result.output
        assert result.exit_code in (0, 2), result.output  # a group without a command shows its help


def test_debug_shows_the_traceback(tmp_path):
    env = {**os.environ, "LRROBUST_DEBUG": "1"}
    result = CliRunner().invoke(app, ["train", "--lr", "nan", "-o", str(tmp_path / "run")], env=env)
    assert result.exit_code != 0 and isinstance(result.exception, UserError)
