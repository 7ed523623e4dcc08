"""``lrrobust bench train``: images/s of a clean and of a PGD-16 adversarial training step (paper Sec. 6.2).

A PGD-k step costs k attack passes (forward and input-gradient backward, in eval mode) plus the clean-accuracy
forward and one update; the target is at most 13x a clean step for k = 16. Clean and adversarial steps are timed
alternately and the median step time of each is reported. Models are the CIFAR-10 variants:
32x32 inputs, small stem, 10 classes. The step timed is ``lrrobust.training.loop.train_step``, the one training runs.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from lrrobust.attacks.pgd import PGD, default_step_size
from lrrobust.data import dataset_info
from lrrobust.training.loop import train_step

BENCH_MODELS = ("lrnet26", "resnet26")
TARGET_RATIO = 13.0


def _time_step(model, optimizer, images, labels, attack, amp, generator) -> float:
    """Seconds of one training step (``train_step``, synchronised on GPU)."""
    if images.device.type == "cuda":
        torch.cuda.synchronize(images.device)
    start = time.perf_counter()
    train_step(model, model, optimizer, images, labels, attack=attack, num_classes=10, generator=generator, amp=amp)
    if images.device.type == "cuda":
        torch.cuda.synchronize(images.device)
    return time.perf_counter() - start


def bench_train(
    device: str = "cpu",
    models: tuple[str, ...] = BENCH_MODELS,
    batch_size: int = 32,
    width: float = 1.0,
    steps: int = 16,
    warmup: int = 1,
    iters: int = 3,
    amp: bool = False,
    channels_last: bool = False,
    progress: Any = None,
    variants: tuple[tuple[bool, bool], ...] | None = None,
) -> list[dict[str, Any]]:
    """One record per model (and per (amp, channels_last) variant when ``variants`` is given): clean and
    adversarial images/s and their ratio (adversarial step time / clean)."""
    dev = torch.device(device)
    info = dataset_info("cifar10")
    eps = 16 / 255
    attack = PGD(name="training", eps=eps, role="training", step_size=default_step_size(eps, steps), steps=steps,
                 random_start=True, targeted=True)
    records = []
    for name in models:
        for amp_on, cl in variants or ((amp, channels_last),):
            record = _bench_one(name, dev, info, attack, batch_size, width, warmup, iters, amp_on, cl)
            records.append(record)
            if progress is not None:
                progress(record)
    return records


def _bench_one(name, dev, info, attack, batch_size, width, warmup, iters, amp, channels_last) -> dict[str, Any]:
    from lrrobust.models import create_model
    from lrrobust.ops import kernel_available

    torch.manual_seed(0)
    model = create_model(name, 10, stem="small", width=width, mean=list(info.mean), std=list(info.std)).to(dev)
    images = torch.rand(batch_size, 3, 32, 32, device=dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch_size,), device=dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {"clean": [], "adv": []}
    for i in range(warmup + iters):  # clean and adversarial steps interleaved: both see the same machine load
        for kind, settings in (("clean", None), ("adv", attack)):
            seconds = _time_step(model, optimizer, images, labels, settings, amp, generator)
            if i >= warmup:
                times[kind].append(seconds)
    clean, adv = statistics.median(times["clean"]), statistics.median(times["adv"])
    return {
        "model": name, "device": str(dev), "batch_size": batch_size, "width": width, "image_size": 32,
        "pgd_steps": attack.steps, "amp": amp, "channels_last": channels_last, "threads": torch.get_num_threads(),
        "clean_images_per_s": batch_size / clean, "adv_images_per_s": batch_size / adv,
        "clean_step_s": clean, "adv_step_s": adv, "ratio": adv / clean,
        "compiled_op_kernel": kernel_available(dev.type), "torch_version": str(torch.__version__),
    }
