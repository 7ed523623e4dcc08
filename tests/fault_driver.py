"""Runs a tiny training, evaluation or study in this process and SIGKILLs it at the k-th file write
(tests/test_fault_injection).

Every write of lrrobust goes through ``lrrobust.io``: atomic writes end in ``os.replace`` and state and metrics lines
in ``append_jsonl``. The driver counts those writes. In mode "torn" it dies inside write k, leaving what a kill
mid-write leaves (the temporary file cut to half its bytes, or half a JSON line); in mode "after" it dies right
after write k completed (between two files). With kill_at 0 it runs to the end and prints the number of writes.

    python tests/fault_driver.py '{"command": "train", "kill_at": 3, "mode": "torn", "out": "RUN"}'

The tests run it in a child forked from multiprocessing's fork server (``main_in_child``), which has imported torch
and lrrobust once, instead of a new interpreter per run.

A study ("command": "study", ``out`` its output directory) runs its cells in this process (``InProcess``) instead of
worker processes, so its writes are counted and killed like the others: every phase of a cell, from its first
file to the report.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import sys
from pathlib import Path

SUITE = {"name": "fault", "seed": 0, "batch_size": 20, "limit": 40, "attack": [
    {"name": "pgd-t", "kind": "pgd", "targeted": True, "eps": 0.2, "steps": 2, "restarts": 2},
    {"name": "pgd-u", "kind": "pgd", "eps": 0.2, "steps": 2},
]}


def train_config(out: str, resume: bool = False):
    from lrrobust.training import TrainConfig

    return TrainConfig(model="resnet18", model_kwargs={"width": 0.125}, epochs=2, batch_size=256, adversarial=True,
                       steps=1, out=out, device="cpu", resume=resume)


STUDY = {"name": "fault", "dataset": "digits", "networks": ["resnet18"], "trainings": ["regular"], "seeds": [0],
         "model": {"width": 0.125}, "training": {"epochs": 2, "batch_size": 256}}


def study_spec(directory: str) -> dict:
    """The tiny study of the fault tests: one cell, two epochs, one attack on two batches
    (tests/data/suites/fault_study.toml, copied into ``directory``)."""
    suite = Path(directory) / "fault-suite.toml"
    if not suite.is_file():
        suite.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(__file__).parent / "data" / "suites" / "fault_study.toml", suite)
    return {**STUDY, "suite": str(suite)}


class InProcess(concurrent.futures.ThreadPoolExecutor):
    """The study's worker pool run in this process, so that every write of the study is counted (and killed) here."""

    def __init__(self, max_workers: int, mp_context: object = None, initializer: object = None,
                 initargs: tuple = ()) -> None:
        super().__init__(max_workers=1)


def run(command: str, out: str, checkpoint: str | None = None) -> None:
    import torch

    torch.set_num_threads(1)
    if command == "train":
        from lrrobust.training import train

        train(train_config(out), progress=False)
    elif command == "study":
        from rich.console import Console

        from lrrobust.study import plan_study, run_study

        concurrent.futures.ProcessPoolExecutor = InProcess
        run_study(plan_study(study_spec(str(Path(out).parent)), out), jobs=1,
                  console=Console(file=open(os.devnull, "w")))  # noqa: SIM115 - the process ends right after
    else:
        from lrrobust.evaluation.evaluate import evaluate
        from lrrobust.evaluation.suite import parse_suite

        evaluate(checkpoint, "digits", parse_suite(SUITE), out, device="cpu", progress=False)


def _append_text(path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def main(spec: dict) -> None:
    writes = [0]

    def write_done(on_kill) -> None:
        writes[0] += 1
        if writes[0] == spec["kill_at"]:
            on_kill()
            os.kill(os.getpid(), signal.SIGKILL)

    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if spec["mode"] == "torn":
            write_done(lambda: os.truncate(src, os.path.getsize(src) // 2))
        real_replace(src, dst, *args, **kwargs)
        if spec["mode"] == "after":
            write_done(lambda: None)

    os.replace = replace
    import lrrobust.io as lio
    from lrrobust.evaluation import state
    from lrrobust.training import run_files

    real_append = lio.append_jsonl

    def append(path, record):
        if spec["mode"] == "torn":
            line = json.dumps(record, sort_keys=True, default=str) + "\n"
            write_done(lambda: _append_text(path, line[: len(line) // 2]))
        real_append(path, record)
        if spec["mode"] == "after":
            write_done(lambda: None)

    state.append_jsonl = run_files.append_jsonl = append
    run(spec["command"], spec["out"], spec.get("checkpoint"))
    print(json.dumps({"writes": writes[0]}), flush=True)


def main_in_child(spec: dict, stdout: str, stderr: str) -> None:
    """``main(spec)`` in a process forked for it (tests/test_fault_injection.drive), its output into these files."""
    for path, fd in ((stdout, 1), (stderr, 2)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    try:
        main(spec)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
