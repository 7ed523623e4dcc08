"""``lrrobust bench train``: what a training step, a PGD adversarial training step and an attack step cost, each
network beside a baseline in one run (paper Sec. 6.2: adversarial training is 17 passes per step; issue 19).

Each round times every model's three steps back to back, the models interleaved, so all see the same machine load;
the median over rounds is reported, with each model's ratio to the baseline (ResNet-26 by default) and the machine's
load average at the start and the end. The steps are the ones training and evaluation run:

- training step: ``lrrobust.training.loop.train_step`` on clean images (forward, cross-entropy, backward, SGD);
- adversarial training step: the same step with the training attack (targeted PGD-k from a random start, k = 16 by
  default: the paper's recipe), which runs on the model in eval mode first;
- attack step: one PGD iteration's work, as evaluation's attacks run it: eval mode, frozen parameters, forward,
  cross-entropy and the input gradient.

Inputs are random images of the dataset's size and channels (no data is read); models are built as training builds
them: the dataset's channels, normalisation and stem (``--stem`` overrides it), ``--width`` on every channel count.

``without_aggregation`` adds, for every model with local relation layers, a copy whose layers skip the aggregation
(Eq. 2: the query and key transforms, the geometric prior and the op) and pass their input on, strided as the layer
would: the cost of everything else in the network, a floor that no work on the op can go under.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from lrrobust.attacks.pgd import PGD, default_step_size
from lrrobust.core.modes import eval_mode, frozen
from lrrobust.data import dataset_info
from lrrobust.training.loop import autocast, train_step

BENCH_MODELS = ("lrnet26", "resnet26")
BASELINE = "resnet26"
STEPS = ("train", "adv_train", "attack")
TARGET_ADV_RATIO = 13.0  # an adversarial training step costs at most this many clean steps (k = 16: 17 passes)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(fn: Callable[[], object], device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


def attack_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, amp: bool = False) -> torch.Tensor:
    """One PGD iteration's work: the input gradient of the cross-entropy, the model in eval mode with frozen
    parameters (both restored)."""
    with eval_mode(model), frozen(model), autocast(images.device, amp):
        x = images.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(model(x).float(), labels)
        return torch.autograd.grad(loss, x)[0]


def _strided_input(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x[:, :, ::layer.stride, ::layer.stride] if layer.stride > 1 else x


def skip_aggregation(model: torch.nn.Module) -> int:
    """Makes every local relation layer of ``model`` pass its input on (strided) instead of aggregating it; the
    value transform stays. Returns the number of layers changed."""
    from lrrobust.models import LocalRelation2d

    layers = [m for m in model.modules() if isinstance(m, LocalRelation2d)]
    for layer in layers:
        layer.aggregate = functools.partial(_strided_input, layer)
    return len(layers)


class _Bench:
    """One model (and variant) with its optimizer, inputs and the three steps."""

    def __init__(self, name: str, device: torch.device, dataset: str, width: float, stem: str | None,
                 batch_size: int, attack: PGD, amp: bool, channels_last: bool, aggregation: bool = True) -> None:
        from lrrobust.models import create_model

        info = dataset_info(dataset)
        self.info, self.attack, self.amp, self.device = info, attack, amp, device
        self.stem = stem or info.stem
        torch.manual_seed(0)
        self.model = create_model(name, info.num_classes or 1000, in_chans=info.in_chans, mean=list(info.mean),
                                  std=list(info.std), stem=self.stem, width=width).to(device)
        self.aggregation = aggregation or skip_aggregation(self.model) == 0
        size = info.image_size
        self.images = torch.rand(batch_size, info.in_chans, size, size, device=device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        self.labels = torch.randint(0, info.num_classes or 1000, (batch_size,), device=device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.generator = torch.Generator().manual_seed(0)
        self.times: dict[str, list[float]] = {step: [] for step in STEPS}

    def step(self, kind: str) -> float:
        classes = self.info.num_classes or 1000
        if kind == "attack":
            return _seconds(lambda: attack_step(self.model, self.images, self.labels, self.amp), self.device)
        attack = self.attack if kind == "adv_train" else None
        return _seconds(lambda: train_step(self.model, self.model, self.optimizer, self.images, self.labels,
                                           attack=attack, num_classes=classes, generator=self.generator,
                                           amp=self.amp), self.device)


def bench_train(
    device: str = "cpu",
    models: tuple[str, ...] = BENCH_MODELS,
    dataset: str = "cifar10",
    width: float = 1.0,
    stem: str | None = None,
    batch_size: int = 32,
    steps: int = 16,
    rounds: int = 3,
    warmup: int = 1,
    amp: bool = False,
    channels_last: bool = False,
    variants: tuple[tuple[bool, bool], ...] | None = None,
    progress: Callable[[int, int], None] | None = None,
    without_aggregation: bool = False,
) -> list[dict[str, Any]]:
    """One record per model (and per (amp, channels_last) variant when ``variants`` is given, and per model with
    local relation layers a record with ``aggregation`` False when ``without_aggregation``): the median seconds
    and images/s of each step over ``rounds`` timed rounds after ``warmup`` untimed ones, and the adversarial step's
    cost in clean steps. ``progress(done, total)`` is called after every round."""
    dev = torch.device(device)
    info = dataset_info(dataset)
    eps = 16 / 255
    attack = PGD(name="training", eps=eps, role="training", step_size=default_step_size(eps, steps), steps=steps,
                 random_start=True, targeted=True)
    load_start = os.getloadavg()
    benches = []
    for name in models:
        for amp_on, cl in variants or ((amp, channels_last),):
            benches.append((name, amp_on, cl, _Bench(name, dev, dataset, width, stem, batch_size, attack, amp_on, cl)))
            if without_aggregation:
                bare = _Bench(name, dev, dataset, width, stem, batch_size, attack, amp_on, cl, aggregation=False)
                if not bare.aggregation:
                    benches.append((name, amp_on, cl, bare))
    for r in range(warmup + rounds):
        for _, _, _, bench in benches:  # models interleaved: every round sees the same load for all
            for kind in STEPS:
                seconds = bench.step(kind)
                if r >= warmup:
                    bench.times[kind].append(seconds)
        if progress is not None:
            progress(r + 1, warmup + rounds)
    load_end = os.getloadavg()
    records = []
    for name, amp_on, cl, bench in benches:
        median = {kind: statistics.median(bench.times[kind]) for kind in STEPS}
        records.append({
            "model": name, "aggregation": bench.aggregation, "dataset": dataset, "image_size": info.image_size,
            "stem": bench.stem, "width": width,
            "batch_size": batch_size, "pgd_steps": steps, "amp": amp_on, "channels_last": cl, "device": str(dev),
            "threads": torch.get_num_threads(), "rounds": rounds,
            **{f"{kind}_step_s": median[kind] for kind in STEPS},
            **{f"{kind}_times_s": bench.times[kind] for kind in STEPS},
            "train_images_per_s": batch_size / median["train"], "adv_images_per_s": batch_size / median["adv_train"],
            "adv_ratio": median["adv_train"] / median["train"],
            "load_average_start": list(load_start), "load_average_end": list(load_end),
            "torch_version": str(torch.__version__), "cpu": cpu_model(),
        })
    return records


def variant_of(record: dict[str, Any]) -> tuple[str, bool, bool, bool]:
    """(model, amp, channels_last, aggregation): what tells a record from the others of one run."""
    return record["model"], record["amp"], record["channels_last"], record["aggregation"]


def ratios_to(records: list[dict[str, Any]], baseline: str) -> dict[tuple[str, bool, bool, bool], dict[str, float]]:
    """Each record's step times over the baseline model's of the same amp and channels-last variant:
    {variant_of(record): {step: ratio}}; empty when the baseline was not timed."""
    base = {(r["amp"], r["channels_last"]): r for r in records
            if r["model"] == baseline and r["aggregation"]}
    out = {}
    for r in records:
        b = base.get((r["amp"], r["channels_last"]))
        if b is not None:
            out[variant_of(r)] = {k: r[f"{k}_step_s"] / b[f"{k}_step_s"] for k in STEPS}
    return out


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"
