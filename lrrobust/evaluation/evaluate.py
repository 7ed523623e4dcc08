"""``evaluate``: a checkpoint, a dataset and a suite in, an evaluation directory out (paper Sec. 6.2, Table 9).

Everything the user gives is checked before the output directory is touched: the checkpoint (a file, or a run
directory whose best.pt is taken), its class count and channels against the dataset's, the transfer source, and
the module's output on one small batch. ``evaluate_target`` is the shared second half, which models from outside
lrrobust (``lrrobust.external``, ``lrrobust.evaluate``) enter directly. Beside the attacks, summary.json gets the
training-convergence check of the model's run (``lrrobust.training.convergence``) and the masking diagnostics
(``lrrobust.evaluation.diagnostics``).
Under torchrun the process group is started here (NCCL on GPUs, gloo on CPU) and each rank evaluates a shard.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from lrrobust.data import DatasetInfo
from lrrobust.errors import UserError
from lrrobust.evaluation.finite import FiniteGuard
from lrrobust.evaluation.loop import Kept, run_evaluation, sample_indices, world
from lrrobust.evaluation.suite import Suite
from lrrobust.evaluation.target import CheckpointFacts, EvalTarget, Origin, check_label, check_module
from lrrobust.io import file_sha256
from lrrobust.training.convergence import (
    Convergence,
    ConvergenceConfig,
    check_convergence,
    not_available,
    run_convergence,
)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a training run directory (its best.pt, else last.pt)."""
    path = Path(path)
    if path.is_dir():
        from lrrobust.training.run_files import check_best

        check_best(path)  # best.pt must be the epoch last.pt names as best (docs/training.md)
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise UserError(f"{path} is a directory without best.pt or last.pt; pass a checkpoint or a run directory")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (pass RUN/best.pt, RUN/last.pt or a run directory)")
    return path


def load_target(path: str | os.PathLike) -> tuple[EvalTarget, dict[str, Any]]:
    """The model of a checkpoint (eval mode, on the CPU) with what the checkpoint says about it."""
    from lrrobust.checkpoint import load_checkpoint, read_checkpoint

    path = resolve_checkpoint(path)
    state = read_checkpoint(path, map_location="cpu")
    model = load_checkpoint(path, map_location="cpu")
    facts = CheckpointFacts(
        path=str(path), run_dir=str(path.parent) if path.name in ("best.pt", "last.pt") else None,
        model_spec=state["model_spec"], epoch=state["epoch"], training_attack=state["attack"],
        config=state["config"], manifest=state["manifest"], metrics=state.get("metrics"),
    )
    target = EvalTarget(model, int(state["num_classes"]), training=state["training"], dataset=state["dataset"],
                        sha256=file_sha256(path), checkpoint=facts)
    return target, state


def check_compatible(target: EvalTarget, dataset: str, classes: int | None, in_chans: int, what: str) -> None:
    """The checkpoint must output the dataset's classes and read its channels."""
    where = target.checkpoint.path
    if classes is not None and classes != target.num_classes:
        raise UserError(f"{what} {where} has {target.num_classes} classes (trained on {target.dataset}) but {dataset} "
                        f"has {classes}; evaluate it on its own dataset")
    chans = target.checkpoint.in_chans
    if chans != in_chans:
        raise UserError(f"{what} {where} reads {chans}-channel images (trained on {target.dataset}) but {dataset} has "
                        f"{in_chans}; evaluate it on its own dataset")


def resolve_device(name: str) -> torch.device:
    """``--device`` of eval-attack: auto (CUDA when available), cpu, cuda or cuda:N; under torchrun, the local
    rank's GPU (``lrrobust.training.distributed.resolve_device`` with "auto" as its default)."""
    from lrrobust.training.distributed import resolve_device as resolve

    return resolve(None if name == "auto" else name, int(os.environ.get("LOCAL_RANK", "0")))


def _start_distributed(device: torch.device) -> bool:
    """Join torchrun's process group when launched by it; True when this call started it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def open_dataset(dataset: str, root: str | None, split: str) -> tuple[Dataset, DatasetInfo]:
    """The split of ``dataset`` to attack, and the dataset's facts with the split's class count."""
    from lrrobust.data import dataset_info, load_dataset

    info = dataset_info(dataset, root)
    data = load_dataset(dataset, split, root)
    if hasattr(data, "classes"):
        info = dataclasses.replace(info, num_classes=len(data.classes))
    return data, info


def evaluate(
    checkpoint: str | os.PathLike,
    dataset: str | None,
    suite: Suite,
    out: str | os.PathLike,
    *,
    label: str | None = None,
    root: str | None = None,
    transfer_from: str | None = None,
    device: str = "auto",
    progress: bool | str = True,
    workers: int = 0,
) -> dict[str, Any] | None:
    """Evaluate a checkpoint on ``dataset`` (default: the one it was trained on) with ``suite``; see run_evaluation.

    ``label`` names the model's row in reports (default: its network's name). Returns the summary on rank 0, None
    on the other ranks. Models lrrobust did not train go through ``lrrobust.external`` into ``evaluate_target``.
    """
    target, state = load_target(checkpoint)
    target.origin = Origin(label=None if label is None else check_label(label))
    dataset = dataset or str(state["dataset"])
    data, info = open_dataset(dataset, root, suite.split)
    check_compatible(target, dataset, info.num_classes or None, info.in_chans, "checkpoint")
    convergence = training_convergence(target.checkpoint.run_dir, state, suite.convergence)
    return evaluate_target(target, data, info, suite, out, root=root, transfer_from=transfer_from, device=device,
                           progress=progress, workers=workers, convergence=convergence)


def training_convergence(run_dir: str | None, state: dict[str, Any], config: ConvergenceConfig) -> Convergence:
    """The training-convergence check (``lrrobust.training.convergence``) of the run that made a checkpoint: from
    its run directory's metrics.jsonl, else from the epochs the checkpoint keeps (up to its own epoch), else n/a."""
    from lrrobust.training.run_files import EpochRecord, is_run_dir

    if run_dir is not None and is_run_dir(run_dir):
        return run_convergence(run_dir, config)
    try:
        records = [EpochRecord.from_dict(r) for r in state.get("history") or []]
    except (KeyError, TypeError):
        return not_available("the checkpoint's training record is unreadable")
    if not records:
        return not_available("no training record")
    return check_convergence(records, config, "the checkpoint's epochs")


def evaluate_target(
    target: EvalTarget,
    data: Dataset,
    info: DatasetInfo,
    suite: Suite,
    out: str | os.PathLike | None,
    *,
    root: str | None = None,
    transfer_from: str | None = None,
    device: str = "auto",
    progress: bool | str = True,
    workers: int = 0,
    convergence: Convergence | None = None,
    kept: Kept | None = None,
    ready: Callable[[], None] | None = None,
) -> dict[str, Any] | None:
    """Evaluate a loaded model (``target.origin`` says where it came from) on ``data``, the split the suite names of
    the dataset ``info`` describes: the module is tried on one small batch first
    (``lrrobust.evaluation.target.check_module``), then diagnosed (``lrrobust.evaluation.diagnostics``), then
    attacked.

    ``convergence`` is the training-convergence check of the run that made the model; without one (a model from
    outside) summary.json says "n/a: no training record". ``out`` None keeps the results in memory (``kept``
    receives the ledger); see ``run_evaluation``. ``ready`` is called once the module has passed its checks."""
    from lrrobust.evaluation.diagnostics import diagnose

    dataset = info.name
    sources: dict[str, nn.Module] = {}
    wanted = {a.source for a in suite.attacks if getattr(a, "source", None)} | ({transfer_from} if transfer_from else set())
    source_info = {}
    for name in sorted(wanted):
        source, _ = load_target(name)
        check_compatible(source, dataset, target.num_classes, info.in_chans, "transfer source")
        sources[name] = source.model
        source_info[name] = {"checkpoint": source.checkpoint.path, "sha256": source.sha256,
                             "model_spec": source.checkpoint.model_spec, "training": source.training,
                             "dataset": source.dataset}
    torch_device = resolve_device(device)
    target.model.to(torch_device)
    check_module(target.model, data, target.num_classes, dataset, torch_device, target.origin.what)
    if ready is not None:
        ready()
    convergence = convergence or not_available("no training record")
    started = out is not None and _start_distributed(torch_device)
    try:
        extra = {"dataset": dataset, "dataset_root": root, "sources": source_info,
                 "convergence": convergence.to_dict()}
        if world()[0] == 0:  # summary.json is rank 0's
            with FiniteGuard({target.origin.what: target.model}) as guard:
                try:
                    extra["diagnostics"] = diagnose(target.model, data,
                                                    sample_indices(len(data), suite.limit, suite.seed), torch_device)
                except Exception:
                    guard.check("the masking diagnostics")  # a NaN that broke them is named as such
                    raise
                guard.check("the masking diagnostics")
        return run_evaluation(
            target, data, suite, out, transfer_from=transfer_from, sources=sources, device=torch_device,
            progress=progress, workers=workers, extra=extra, kept=kept,
        )
    finally:
        if started:
            dist.destroy_process_group()
