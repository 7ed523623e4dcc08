"""A pytest plugin that writes each test's CPU seconds: its own process's and its reaped child processes' (a
subprocess, a worker, a torchrun agent; daemons that outlive the test, such as Ray's, are not counted).

    PYTHONPATH=tools LRROBUST_TEST_CPU=cpu.tsv .venv/bin/python -m pytest -n auto -p pytest_cpu tests
    sort -t$'\\t' -k2,2gr cpu.tsv | head    # lines: test id, CPU s (own + children), own, children, wall s

Wall seconds under pytest-xdist depend on what the other worker runs; CPU seconds say what a test costs.
"""

from __future__ import annotations

import os
import resource
import time

import pytest


def _cpu() -> tuple[float, float]:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    own0, children0 = _cpu()
    start = time.perf_counter()
    yield
    own1, children1 = _cpu()
    own, children = own1 - own0, children1 - children0
    with open(os.environ.get("LRROBUST_TEST_CPU", "test-cpu.tsv"), "a", encoding="utf-8") as f:
        f.write(f"{item.nodeid}\t{own + children:.2f}\t{own:.2f}\t{children:.2f}\t{time.perf_counter() - start:.2f}\n")
