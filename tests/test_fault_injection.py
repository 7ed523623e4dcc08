"""Fault injection: tiny train-adv and eval-attack runs killed with SIGKILL at every file write (inside it, with
the file half written, and between files), then checked: every file of the directory parses, the run
directory's invariant holds after resume, and the resumed result equals an uninterrupted run's (bit-exact
weights for training on CPU, identical records for evaluation). tests/fault_driver.py does the killing.

LRROBUST_FAULT_ALL=1 also kills after every write (the default kills after the writes between which an
invariant could break: last.pt before best.pt, the last state record before the outputs).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lrrobust.checkpoint import read_checkpoint
from lrrobust.evaluation.state import read_state
from lrrobust.evaluation.summary import read_summary
from lrrobust.training import train
from lrrobust.training.run_files import check_best, read_manifest, read_metrics, read_run_config

sys.path.insert(0, str(Path(__file__).parent))
from fault_driver import SUITE, run, train_config

pytestmark = pytest.mark.usefixtures("one_thread_module")
DRIVER = Path(__file__).parent / "fault_driver.py"
ALL = bool(os.environ.get("LRROBUST_FAULT_ALL"))


def drive(spec: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(DRIVER), json.dumps(spec)], capture_output=True, text=True,
                          timeout=300, env=env, check=False)


def kill_all(base: Path, command: str, after: list[int], writes: int, checkpoint: str | None = None) -> list[Path]:
    """Kill one run per point, two at a time; returns the killed directories."""
    points = [("torn", k) for k in range(1, writes + 1)] + [("after", k) for k in (range(1, writes + 1) if ALL
                                                                                   else after)]
    specs = [{"command": command, "kill_at": k, "mode": mode, "out": str(base / f"{mode}-{k}"),
              "checkpoint": checkpoint} for mode, k in points]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(drive, specs))
    for spec, result in zip(specs, results):
        assert result.returncode == -signal.SIGKILL, (spec, result.stdout, result.stderr[-2000:])
    return [Path(s["out"]) for s in specs]


def _reference(tmp_path_factory, command: str, checkpoint: str | None = None) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("ref") / "out"
    result = drive({"command": command, "kill_at": 0, "mode": "torn", "out": str(out), "checkpoint": checkpoint})
    assert result.returncode == 0, result.stderr[-2000:]
    return out, json.loads(result.stdout.strip().splitlines()[-1])["writes"]


def assert_run_files_parse(run: Path) -> None:
    """Every file of a run directory parses (temporary files of the killed write excepted: resume removes them)."""
    readers = {"config.json": read_run_config, "manifest.json": read_manifest, "metrics.jsonl": read_metrics}
    for path in run.iterdir():
        if path.name.startswith("."):
            continue
        if path.suffix == ".pt":
            read_checkpoint(path)
        else:
            readers[path.name](run)


def test_training_killed_at_every_write_resumes_bit_exact(tmp_path, tmp_path_factory):
    reference, writes = _reference(tmp_path_factory, "train")
    want = read_checkpoint(reference / "last.pt")
    best_epoch = want["best_epoch"]
    # config, manifest, metrics; per epoch last.pt, best.pt (epoch 1 always, epoch 2 when better), a metrics line
    assert writes == 3 + 2 * 2 + (2 if best_epoch == 2 else 1)
    # after last.pt, before best.pt: the one place where best and last disagree
    for killed in kill_all(tmp_path, "train", after=[4, 7], writes=writes):
        if killed.exists():
            assert_run_files_parse(killed)
        train(train_config(str(killed), resume=True), progress=False)
        assert not list(killed.glob(".*.tmp"))
        check_best(killed)
        got = read_checkpoint(killed / "last.pt")
        assert got["epoch"] == 2 and got["best_epoch"] == best_epoch, killed.name
        for key, value in want["model_state"].items():
            assert torch.equal(got["model_state"][key], value), (killed.name, key)
        best = read_checkpoint(killed / "best.pt")
        assert best["epoch"] == best_epoch
        ref_best = read_checkpoint(reference / "best.pt")
        assert all(torch.equal(best["model_state"][k], v) for k, v in ref_best["model_state"].items()), killed.name
        kept = [(r.epoch, r.loss, r.val_acc, r.val_robust_acc) for r in read_metrics(killed)]
        assert kept == [(r.epoch, r.loss, r.val_acc, r.val_robust_acc) for r in read_metrics(reference)], killed.name


def test_evaluation_killed_at_every_write_resumes_to_the_same_records(tmp_path, tmp_path_factory):
    trained, _ = _reference(tmp_path_factory, "train")
    checkpoint = str(trained / "best.pt")
    reference, writes = _reference(tmp_path_factory, "eval", checkpoint)
    assert writes == 10  # the pinned settings, 2 batches x (clean + 2 attacks), samples, summary.csv, summary.json
    for out in kill_all(tmp_path, "eval", after=[7], writes=writes, checkpoint=checkpoint):
        if (out / ".state").is_dir():
            read_state(out)  # parses: a torn line is ignored, everything else is a record
        if (out / "summary.json").is_file():
            read_summary(out)
        run("eval", str(out), checkpoint)
        for name in ("samples.csv", "summary.csv"):
            assert (out / name).read_text() == (reference / name).read_text(), (out.name, name)
        assert not list(out.glob(".*.tmp"))
        assert len(read_summary(out).worst_case.indices) == SUITE["limit"]
