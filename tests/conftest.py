"""Shared fixtures.

- ``one_thread``: torch on one CPU thread for the test (restored after): deterministic and faster for the tiny
  models of the tests on a shared 2-core machine.
- ``digits_runs``: two real short training runs on the digits data, made once per session:
  ``{"regular": RUN_DIR, "adversarial": RUN_DIR}`` (resnet18, small stem, width 0.25, 5 epochs; the adversarial run
  uses targeted PGD-4 at eps 0.2). Each RUN_DIR holds config.json, manifest.json, metrics.jsonl, last.pt and
  best.pt. Treat them as read-only (copy a run before changing it).
- ``make_image_tree(root, classes=("cat", "dog"), per_class=2, size=(300, 260))``: writes an ImageFolder tree
  ``root/{train,val}/CLASS/i.png`` of random RGB images and returns ``root``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

DIGITS_RUN_OPTIONS = {"model": "resnet18", "model_kwargs": {"width": 0.25}, "epochs": 5}
DIGITS_ADV_OPTIONS = {"eps": 0.2, "steps": 4}


def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["rows", "batch"])
def cpu_lanes(request, monkeypatch) -> str:
    """Runs a test on each of the CPU kernel's two work units (csrc/cpu/local_relation_cpu.cpp): lanes along an
    output row, and lanes across the images of the batch (small maps and strided layers)."""
    monkeypatch.setenv("LRROBUST_CPU_LANES", request.param)
    return request.param


@pytest.fixture
def one_thread():
    yield from _single_thread()


@pytest.fixture(scope="module")
def one_thread_module():
    """``one_thread`` for a whole module, its module-scoped fixtures included (tiny models gain nothing from
    threads, and two cores shared with other tests make threads spin)."""
    yield from _single_thread()


@pytest.fixture(scope="session")
def digits_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from lrrobust.training import TrainConfig, train

    root = tmp_path_factory.mktemp("digits_runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        regular = train(TrainConfig(**DIGITS_RUN_OPTIONS, out=str(root / "regular")), progress=False)
        adversarial = train(TrainConfig(**DIGITS_RUN_OPTIONS, **DIGITS_ADV_OPTIONS, adversarial=True,
                                         out=str(root / "adversarial")), progress=False)
    finally:
        torch.set_num_threads(threads)
    return {"regular": regular, "adversarial": adversarial}


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
