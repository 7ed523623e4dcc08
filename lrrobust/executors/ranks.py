"""One step of a cell (its training, its evaluation) as several processes of one node under torchrun
(https://pytorch.org/docs/stable/elastic/run.html): a cell of ``[cluster] gpus = G > 1`` (one process per GPU, NCCL)
or ``processes = P > 1`` (CPU processes, gloo).

The worker holding the cell's claim (``lrrobust.executors.work``) calls ``run_ranks``, which starts
``torchrun --standalone --nproc-per-node P`` as its child and waits for it; each of torchrun's processes (a rank)
calls the step with WORLD_SIZE, RANK and LOCAL_RANK set, which lrrobust's training and evaluation read
(``lrrobust.training.distributed``). So the claim is held by one process for the whole cell, and a cell resumes as
it does in one process: rank 0 writes the run and evaluation directories.

- **What the ranks run** (a function and its arguments, pickled) and what a failed rank raised go through
  ``FOLDER`` (the claim's ``torchrun/``), emptied at every start and removed once the ranks succeed.
- **Errors.** A rank that raises writes its exception there before it ends; torchrun then stops the other ranks,
  and ``run_ranks`` raises the exception of the rank that failed first, so a mistake in the input stays a
  ``UserError`` (not retried) wherever the cell runs. A rank that ends without a word (killed, out of memory) is
  ``EnvironmentFailure``.
- **A killed worker takes its ranks with it** (``lrrobust.core.children``): torchrun's agent (this module's
  ``agent``) ends with the worker and each rank with the agent, however they end. torchrun starts each rank in a
  session of its own, so a signal to the worker's process group alone would not reach them.
- **Threads and GPUs.** Each rank runs ``threads`` torch threads (OMP_NUM_THREADS too) on the GPU of its local rank
  among those the executor made visible (CUDA_VISIBLE_DEVICES: Ray's and Slurm's own, the local executor's).
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lrrobust.errors import EnvironmentFailure

MODULE = "lrrobust.executors.ranks"  # run with `python -m`, where __name__ is "__main__"
CALL = "call.pkl"
ERROR = "error-{rank}.pkl"
PARENT = "LRROBUST_RANKS_PARENT"  # the PID each process of the launch ends with (``die_with_parent``)
STOP_WAIT_S = 30.0  # how long torchrun may take to stop its ranks when the worker stops it


def run_ranks(processes: int, threads: int, folder: Path, function: Callable[..., Any], *args: Any) -> None:
    """Run ``function(*args)`` in ``processes`` ranks under torchrun, children of this process, and wait for them;
    raises what the first failing rank raised."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():  # of an earlier start, the temporaries of a killed write included
        old.unlink()
    _write(folder / CALL, (function, args, threads))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), PARENT: str(os.getpid())}
    agent = subprocess.Popen([sys.executable, "-m", MODULE, "agent", str(processes), str(folder)], env=env)
    try:
        code = agent.wait()
    finally:
        if agent.poll() is None:  # this worker is being stopped (Ctrl-C, an error of its own): torchrun stops its ranks
            agent.terminate()
            try:
                agent.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
    if code != 0:
        raise _failure(folder, processes, code)
    shutil.rmtree(folder, ignore_errors=True)


def _failure(folder: Path, processes: int, code: int) -> BaseException:
    """The exception of the rank that failed first (the others' often follow from it: a peer gone), or one line for
    a rank lost."""
    errors = []
    for path in folder.glob(ERROR.format(rank="*")):
        try:
            with open(path, "rb") as f:
                errors.append(pickle.load(f))  # (when, exception)
        except Exception:  # noqa: BLE001, S112 - a rank killed while writing it: the others'
            continue
    if errors:
        return min(errors, key=lambda e: e[0])[1]
    return EnvironmentFailure(folder.parent, f"a process of its {processes} under torchrun ended without an error "
                              f"(killed, or out of memory); torchrun exited with code {code}", action="lost")


def _write(path: Path, value: Any) -> None:
    """``value`` pickled into ``path``, whole or not at all."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(value, f)
    os.replace(tmp, path)


def agent(processes: int, folder: Path) -> int:
    """torchrun itself (its ``main``), in a process that ends with the worker; its ranks end with it. Exits 1 when a
    rank failed (torchrun has logged which; the worker reads the rank's error)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    from lrrobust.core.children import die_with_parent

    die_with_parent(int(os.environ[PARENT]))
    os.environ[PARENT] = str(os.getpid())
    try:
        torchrun(["--standalone", f"--nproc-per-node={processes}", "--max-restarts=0", "-m", MODULE, "rank",
                  str(folder)])
    except ChildFailedError:
        return 1
    return 0


def rank(folder: Path) -> None:
    """One of torchrun's processes: run the step; a failure is written for the worker, then raised."""
    import torch

    from lrrobust.core.children import die_with_parent

    die_with_parent(int(os.environ[PARENT]))
    with open(folder / CALL, "rb") as f:
        function, args, threads = pickle.load(f)
    torch.set_num_threads(threads)
    try:
        function(*args)
    except BaseException as e:
        _write(folder / ERROR.format(rank=os.environ.get("RANK", "0")), (time.time(), _picklable(e)))
        raise


def _picklable(error: BaseException) -> BaseException:
    """``error`` itself when it survives pickling, else a RuntimeError with its first line."""
    from lrrobust.errors import first_line

    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - an exception with arguments pickle cannot rebuild
        return RuntimeError(first_line(error))


if __name__ == "__main__":
    if sys.argv[1] == "agent":
        sys.exit(agent(int(sys.argv[2]), Path(sys.argv[3])))
    rank(Path(sys.argv[2]))
