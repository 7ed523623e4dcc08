"""Outside models evaluated in a child process: ``eval-attack --model-py`` and ``--torchvision``.

A model file is code lrrobust does not control. It may call ``sys.exit`` or ``os._exit`` at import, in its factory
or in its forward pass, raise KeyboardInterrupt, hang, or crash the interpreter; in eval-attack's own process an
``os._exit(0)`` would end the command with exit code 0 and nothing written. So eval-attack loads and attacks an
outside model in a child process (``evaluate_in_child``) and watches it:

- the child sends back the summary, or the one-line error of the evaluation (a UserError, an EnvironmentFailure),
  which eval-attack prints as it would its own; an exception of the model's code, SystemExit and KeyboardInterrupt
  included, becomes one line naming it and the phase, exit code 2;
- a child that ends without a word (``os._exit``, a crash, a signal) is one line naming the exit code or the
  signal and the phase, exit code 2: never exit code 0 without a summary written;
- loading the model and trying it on the first batch (the checks of ``lrrobust.evaluation.target``) must end
  within ``--model-timeout`` seconds (default ``DEFAULT_TIMEOUT``); past that the child is killed, one line, exit
  code 2. The attacks themselves have no limit: they may rightly take hours;
- the child ends with eval-attack, however eval-attack ends (``lrrobust.core.children``).

The child is forked from multiprocessing's fork server, which imports lrrobust and torch once per eval-attack (or
per test session) and has run no torch code, so no CUDA or OpenMP state is forked; where there is no fork server
it is spawned. It takes eval-attack's environment, working directory, module path and thread count. What it
wrote (the evaluation state of finished batches) stays when it fails: the same command resumes from there.
``lrrobust.evaluate`` (a module already in memory) runs in the caller's process.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any

from lrrobust.errors import EnvironmentFailure, UserError, first_line
from lrrobust.external import OutsideModel

DEFAULT_TIMEOUT = 120.0  # seconds to load an outside model and try it on its first batch


@dataclasses.dataclass(frozen=True)
class _Job:
    """What the child needs: the model, the evaluation's arguments, and the parent's process settings."""

    load: OutsideModel
    dataset: str
    suite: Any
    out: str
    options: dict[str, Any]
    environ: dict[str, str]
    threads: int


def evaluate_in_child(load: OutsideModel, dataset: str, suite: Any, out: str | os.PathLike, *,
                      timeout: float = DEFAULT_TIMEOUT, **options: Any) -> dict[str, Any] | None:
    """``lrrobust.external.evaluate_outside(load, dataset, suite, out, **options)`` in a child process (see the
    module docstring); returns the summary on rank 0, None on the other ranks."""
    import torch

    context = _context()
    receive, send = context.Pipe(duplex=False)
    job = _Job(load, dataset, suite, str(out), options, dict(os.environ), torch.get_num_threads())
    child = context.Process(target=_child, args=(send, job), name="lrrobust-outside-model")
    child.start()
    send.close()  # the child holds the only write end: its end is an EOF here
    try:
        return _supervise(child, receive, load.what, timeout)
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receive.close()


def _context() -> Any:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # imported once by the server, not by every child (the attacks' libraries too: lrrobust imports them on first use)
    context.set_forkserver_preload(["lrrobust.isolation", "torchattacks", "scipy.stats"])
    return context


def _supervise(child: Any, receive: Connection, what: str, timeout: float) -> dict[str, Any] | None:
    """Wait for the child's messages: "ready" within ``timeout``, then "done" or an error."""
    ready = False
    deadline = time.monotonic() + timeout
    while True:
        left = None if ready else max(0.0, deadline - time.monotonic())
        if not wait([receive, child.sentinel], left):
            raise UserError(f"{what} was not loaded and tried on its first batch within {timeout:g} s "
                            "(--model-timeout); it was stopped. Give a slow model a larger --model-timeout")
        message = None
        if receive.poll():
            try:
                message = receive.recv()
            except EOFError:
                pass
        if message is None:  # the child ended without a word
            child.join()
            raise UserError(_ended(what, child.exitcode, ready))
        kind = message[0]
        if kind == "ready":
            ready = True
        elif kind == "done":
            return message[1]
        elif kind == "error":
            raise message[1]
        else:  # "raised": an exception of the model's code (or one lrrobust did not expect)
            if os.environ.get("LRROBUST_DEBUG"):
                print(message[2], file=sys.stderr)
            raise UserError(f"{what} raised {message[1]} {_phase(ready)}")


def _phase(ready: bool) -> str:
    if not ready:
        return "while it was loaded and tried on its first batch"
    return "during the attacks (the batches finished so far are kept)"


def _ended(what: str, code: int | None, ready: bool) -> str:
    if code is not None and code < 0:
        how = f"was killed by signal {signal.Signals(-code).name}"
    else:
        how = f"ended its process with exit code {code}{' (as os._exit(0) does)' if code == 0 else ''}"
    return (f"{what} {how} {_phase(ready)}, without a result; a model file, its factory and its forward pass must "
            "return, not exit")


def _child(send: Connection, job: _Job) -> None:
    """The child process: evaluate, and send "ready", then "done" with the summary or the error."""
    from lrrobust.core.children import die_with_parent

    die_with_parent()
    os.environ.clear()
    os.environ.update(job.environ)
    import torch

    from lrrobust.external import evaluate_outside

    torch.set_num_threads(job.threads)
    try:
        summary = evaluate_outside(job.load, job.dataset, job.suite, job.out, ready=lambda: send.send(("ready",)),
                                   **job.options)
        message: tuple = ("done", summary)
    except (UserError, EnvironmentFailure) as e:
        message = ("error", e)
    except BaseException as e:  # noqa: BLE001 - the model's code: sys.exit, KeyboardInterrupt, anything
        text = first_line(e)
        if isinstance(e, SystemExit):
            text = f"SystemExit (it called sys.exit({e.code!r}))"
        message = ("raised", text, traceback.format_exc())
    try:
        send.send(message)
    except Exception:  # noqa: BLE001 - an unpicklable result: say so rather than end in silence
        send.send(("raised", f"a result that cannot be sent back ({first_line(message[1])})", ""))
    finally:
        send.close()
