"""tools/parallel_pip.py: the Makefile's torch install in two pip processes; its split into two groups."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "parallel_pip.py"
_spec = importlib.util.spec_from_file_location("parallel_pip", SCRIPT)
pp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pp)


def test_the_two_groups_hold_every_distribution_once_and_about_equal_sizes():
    found = [("torch==2.14.1", 900), ("nvidia-cudnn==9", 700), ("nvidia-cublas==13", 500), ("triton==3", 150),
             ("nvidia-nccl==2", 300), ("sympy==1", 6), ("filelock==3", 0)]
    first, second = pp.split(found)
    assert sorted(first + second) == sorted(name for name, _ in found)
    size = dict(found)
    assert abs(sum(size[n] for n in first) - sum(size[n] for n in second)) <= 150  # the greedy split's bound here
    assert ("torch==2.14.1" in first) != ("nvidia-cudnn==9" in first)  # the two largest unpack at the same time


def test_nothing_to_install_starts_no_pip(monkeypatch):
    monkeypatch.setattr(pp, "resolve", lambda requirements: [])
    started = []
    monkeypatch.setattr(pp.subprocess, "Popen", lambda *a, **k: started.append(a))
    assert pp.main(["torch"]) == 0 and started == []


def test_no_requirement_is_a_usage_error(capsys):
    assert pp.main([]) == 2
    assert "usage" in capsys.readouterr().err
