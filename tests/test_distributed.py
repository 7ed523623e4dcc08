"""Two CPU processes under torchrun with gloo on the digits data: DDP training, rank 0 writes, resume works."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lrrobust.checkpoint import read_checkpoint

ARGS = ["train-adv", "-m", "resnet18", "--width", "0.125", "--steps", "2", "--eps", "0.2", "--device", "cpu"]


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "lrrobust.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=180, check=False)


@pytest.mark.slow
def test_two_gloo_processes_train_and_resume(tmp_path):
    run = tmp_path / "run"
    first = _torchrun([*ARGS, "--epochs", "2", "-o", str(run)])
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("run directory") == 1  # rank 0 alone speaks
    second = _torchrun([*ARGS, "--epochs", "3", "-o", str(run), "--resume"])
    assert second.returncode == 0, second.stderr[-3000:]

    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    # each process saw its own half: 19 steps of 2 x 32 images (1,257 training images), as one process with
    # batch 64 would
    assert all(m["images"] == 19 * 64 for m in metrics)
    assert metrics[-1]["val_acc"] > 0.5  # chance is 0.1
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and [r["world_size"] for r in manifest["resumes"]] == [2]
    state = read_checkpoint(run / "last.pt")
    assert state["epoch"] == 3 and state["training"] == "adversarial"
    assert len(state["rng"]) == 2  # every rank's random streams, for an exact resume
    assert not (state["rng"][0]["targets"] == state["rng"][1]["targets"]).all()
    assert sorted(p.name for p in run.iterdir()) == [".lock", "best.pt", "config.json", "last.pt", "manifest.json",
                                                     "metrics.jsonl"]  # .lock: rank 0 held the run directory
