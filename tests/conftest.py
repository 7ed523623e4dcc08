"""Shared fixtures.

Torch threads: every test process (the serial run, or each pytest-xdist worker of ``make test``) runs torch on one
CPU thread, set once here: deterministic, and faster for the tiny models of the tests on a shared 2-core machine.
``torch_threads(n)`` sets another count for a block; the kernel tests, through ``cpu_lanes``, run on two.

- ``session_cache(name, build)``: the folder ``name`` in a folder shared by the session's xdist workers, filled once
  per session by ``build(folder)``; the first process to ask builds it under a file lock, the others wait and reuse
  it. For anything a fixture makes that takes seconds (trained runs, evaluations).
- ``trained_run(name="run", **options)``: a real short training run on digits with these ``TrainConfig`` options
  (``model="resnet18"`` unless given), made once per session and settings: RUN_DIR (its last part is ``name``)
  with config.json, manifest.json, metrics.jsonl, last.pt and best.pt.
- ``evaluated_run(run, suite, name="eval", **options)``: the evaluation of RUN_DIR on digits with a suite (a file
  name under tests/data/suites, or a path) and ``evaluate`` options, made once per session and settings.
  ``trained_run(**ONE_EPOCH_RESNET)`` is the one-epoch ResNet-18 (width 0.125) that several modules share.
- ``digits_runs``: two trained runs ``{"regular": RUN_DIR, "adversarial": RUN_DIR}`` (resnet18, small stem, width
  0.25, 5 epochs; the adversarial run uses targeted PGD-4 at eps 0.2).
- ``report_runs``: the tree ``lrrobust report`` reads: resnet18-regular and resnet18-adversarial (width 0.125, 3
  epochs, PGD-2), each evaluated with tests/data/suites/report_tiny.toml into RUN/eval-tiny, and resnet26-regular
  (1 epoch) left unevaluated; the suite is copied beside the tree as ``tiny.toml``.
- ``make_image_tree(root, classes=("cat", "dog"), per_class=2, size=(300, 260))``: writes an ImageFolder tree
  ``root/{train,val}/CLASS/i.png`` of random RGB images and returns ``root``.

Everything the session-scoped fixtures return is read-only: copy a run before changing it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock

SUITES = Path(__file__).resolve().parent / "data" / "suites"
DIGITS_RUN_OPTIONS = {"model": "resnet18", "model_kwargs": {"width": 0.25}, "epochs": 5}
ONE_EPOCH_RESNET = {"model": "resnet18", "model_kwargs": {"width": 0.125}, "epochs": 1, "device": "cpu"}
DIGITS_ADV_OPTIONS = {"eps": 0.2, "steps": 4}


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)  # before -m "not slow" deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that uses ``session_cache`` (through a fixture that trains or attacks) is marked slow."""
    for item in items:
        if "session_cache" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(tryfirst=True)  # after deselection, before pytest-xdist sends the order to its controller
def pytest_collection_finish(session: pytest.Session) -> None:
    """Tests marked ``early`` (a minute or more in one process, such as the wheel build of test_install.py) start
    first, one per worker, instead of finishing last. pytest-xdist's worksteal scheduler hands worker w the next
    len(remaining) // (workers - w) tests of this order at the start, so each share begins with its early tests."""
    items = session.items
    early = [item for item in items if item.get_closest_marker("early")]
    rest = [item for item in items if not item.get_closest_marker("early")]
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    ordered = []
    for worker in range(workers):
        share = (len(items) - len(ordered)) // (workers - worker)
        head = early[worker::workers]
        take = max(share - len(head), 0)
        ordered += head + rest[:take]
        rest = rest[take:]
    items[:] = ordered + rest


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(params=["rows", "batch"])
def cpu_lanes(request, monkeypatch) -> Iterator[str]:
    """Runs a test on each of the CPU kernel's two work units (csrc/cpu/local_relation_cpu.cpp): lanes along an
    output row, and lanes across the images of the batch (small maps and strided layers); on two torch threads, so
    the units are shared out in parallel."""
    monkeypatch.setenv("LRROBUST_CPU_LANES", request.param)
    with torch_threads(2):
        yield request.param


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, Callable[[Path], object]], Path]:
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # each worker's base folder lies in the session's one
    shared = base / "shared"
    shared.mkdir(exist_ok=True)

    def cached(name: str, build: Callable[[Path], object]) -> Path:
        folder, done = shared / name, shared / f"{name}.done"
        with FileLock(str(shared / f"{name}.lock")):
            if not done.exists():
                shutil.rmtree(folder, ignore_errors=True)  # what a build that failed in another worker left
                folder.mkdir(parents=True)
                with torch_threads(1):  # the same result whichever test asks first
                    build(folder)
                done.write_text("")
        return folder

    return cached


def _key(kind: str, options: dict) -> str:
    text = json.dumps(options, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


@pytest.fixture(scope="session")
def trained_run(session_cache) -> Callable[..., Path]:
    def make(name: str = "run", **options) -> Path:
        from lrrobust.training import TrainConfig, train

        options = {"model": "resnet18", **options}
        folder = session_cache(_key(f"run-{options['model']}", {"name": name, **options}),
                               lambda folder: train(TrainConfig(**options, out=str(folder / name)), progress=False))
        return folder / name

    return make


@pytest.fixture(scope="session")
def evaluated_run(session_cache) -> Callable[..., Path]:
    def make(run: Path, suite: str | Path, name: str = "eval", **options) -> Path:
        from lrrobust.evaluation.evaluate import evaluate
        from lrrobust.evaluation.suite import load_suite

        path = SUITES / suite
        options = {"device": "cpu", "progress": False, **options}
        key = _key("eval", {"run": str(run), "suite": str(path), "name": name, **options})
        folder = session_cache(key, lambda folder: evaluate(run, "digits", load_suite(path), folder / name, **options))
        return folder / name

    return make


@pytest.fixture(scope="session")
def digits_runs(trained_run) -> dict[str, Path]:
    return {"regular": trained_run(**DIGITS_RUN_OPTIONS),
            "adversarial": trained_run(**DIGITS_RUN_OPTIONS, **DIGITS_ADV_OPTIONS, adversarial=True)}


@pytest.fixture(scope="session")
def report_runs(session_cache) -> Path:
    def build(base: Path) -> None:
        from lrrobust.evaluation.evaluate import evaluate
        from lrrobust.evaluation.suite import load_suite
        from lrrobust.training import TrainConfig, train

        shutil.copyfile(SUITES / "report_tiny.toml", base / "tiny.toml")
        suite = load_suite(base / "tiny.toml")
        runs = base / "runs"
        for adversarial in (False, True):
            out = runs / f"resnet18-{'adversarial' if adversarial else 'regular'}"
            train(TrainConfig(model="resnet18", model_kwargs={"width": 0.125}, epochs=3, out=str(out), device="cpu",
                              adversarial=adversarial, steps=2 if adversarial else None), progress=False)
            evaluate(out, "digits", suite, out / "eval-tiny", device="cpu", progress=False)
        train(TrainConfig(model="resnet26", model_kwargs={"width": 0.125}, epochs=1,
                          out=str(runs / "resnet26-regular"), device="cpu"), progress=False)

    return session_cache("report-runs", build) / "runs"


@pytest.fixture
def make_image_tree():
    def make(root: Path, classes=("cat", "dog"), per_class: int = 2, size: tuple[int, int] = (300, 260)) -> Path:
        from PIL import Image

        rng = np.random.default_rng(0)
        for split in ("train", "val"):
            for c in classes:
                folder = root / split / c
                folder.mkdir(parents=True)
                for i in range(per_class):
                    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(folder / f"{i}.png")
        return root

    return make
