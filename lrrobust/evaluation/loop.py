"""The attack loop behind ``lrrobust eval-attack`` (paper Sec. 6.2, Table 9): resumable, sharded, seeded.

- The split (or a seeded subset of ``limit`` samples) is cut into numbered batches; under torchrun rank r takes
  batches r, r + W, ...; results are gathered on rank 0, which alone writes the outputs (``summary.py``).
- Every (batch, attack) result goes to the evaluation state (``state.py``) as it is done, so a killed run,
  started again with the same command, skips what is finished. The directory is locked while in use
  (``lrrobust.core.lock``): a second evaluation into it stops with one line naming the holder's PID.
- Every forward pass of the model is watched for NaN and inf (``finite.FiniteGuard``): a non-finite output stops
  the evaluation with one line naming the attack and the batch, never scored as a successful attack.
- Without an output directory (``lrrobust.evaluate`` with ``out=None``) the same loop runs with its records kept
  in memory: nothing is written, nothing resumed, and ``Kept`` hands the ledger (and, when asked, the adversarial
  images) back to the caller.
- Targets are one random wrong class per sample index, (label + U{1..C-1}) mod C from the run seed; the global
  RNG (torchattacks' random start) is seeded per batch from (seed, batch, attack settings, stage) and, for a
  transfer attack, its source's content hash: a seeded run reproduces exactly, resumed or not, on any number of
  ranks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lrrobust.attacks import AttackSpec, predict, random_targets
from lrrobust.core.lock import locked_directory, remove_stale_temporaries
from lrrobust.core.modes import eval_mode
from lrrobust.core.provenance import provenance
from lrrobust.core.seeding import derive_seed
from lrrobust.errors import UserError
from lrrobust.evaluation.checks import plan_attacks
from lrrobust.evaluation.finite import FiniteGuard
from lrrobust.evaluation.ledger import Ledger
from lrrobust.evaluation.progress import EvalProgress, total_work
from lrrobust.evaluation.state import (
    CLEAN,
    STATE_DIR,
    AttackRecord,
    CleanRecord,
    append_record,
    check_out,
    open_state,
    pin_settings,
    read_state,
    record_key,
)
from lrrobust.evaluation.suite import Suite
from lrrobust.evaluation.summary import build_ledger, indices_digest, summarize, write_outputs
from lrrobust.evaluation.target import EvalTarget, model_digest


@dataclasses.dataclass
class Kept:
    """What an in-process caller (``lrrobust.evaluate``) takes back beside the summary: the ledger, and with
    ``adversarial`` one adversarial image per image some attack at the suite's threat model broke (the first such
    attack's, in the order they ran), by dataset index, on the CPU."""

    adversarial: bool = False
    ledger: Ledger | None = None
    images: dict[int, torch.Tensor] = dataclasses.field(default_factory=dict)
    eps: float = 0.0  # the suite's threat model, set by run_evaluation
    norm: str = "linf"

    def take(self, spec: AttackSpec, index: list[int], labels: torch.Tensor, clean_pred: list[int],
             outcome: Any) -> None:
        """Keep the adversarial images of ``outcome`` that broke an image no earlier attack broke."""
        if not self.adversarial or spec.norm != self.norm or not math.isclose(spec.eps, self.eps, rel_tol=1e-9):
            return
        for i, (j, y, p, adv) in enumerate(zip(index, labels.tolist(), clean_pred, outcome.adv_pred.tolist())):
            if j not in self.images and p == y and adv != y:
                self.images[j] = outcome.adv_images[i].detach().cpu()


def sample_indices(num_samples: int, limit: int | None, seed: int) -> list[int]:
    """All indices of the split, or a seeded random subset of ``limit`` of them, in increasing order."""
    if limit is None or limit >= num_samples:
        return list(range(num_samples))
    generator = torch.Generator().manual_seed(derive_seed(seed, "subset"))
    return sorted(torch.randperm(num_samples, generator=generator)[:limit].tolist())


def target_offsets(num_samples: int, num_classes: int, seed: int) -> torch.Tensor:
    """Per dataset index, an offset in 1..C-1: target = (label + offset) mod C, never the label."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "targets"))
    return random_targets(torch.zeros(num_samples, dtype=torch.long), num_classes, generator)


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def stage_seeds(seed: int, batch: int, spec: AttackSpec, source_digest: str | None) -> Callable[[int], int]:
    """The global-RNG seed of each stage (restart or component) of ``spec`` on ``batch``."""
    key = spec.seed_key()
    if source_digest is None:
        return lambda stage: derive_seed(seed, batch, key, stage)
    return lambda stage: derive_seed(seed, batch, key, source_digest, stage)


@dataclasses.dataclass
class _Shard:
    """One rank's part of an evaluation and what it needs to run it."""

    target: EvalTarget
    dataset: Dataset
    attacks: list[AttackSpec]
    batches: list[list[int]]
    mine: list[int]
    done: dict[tuple[int, str], Any]
    state_file: Path | None  # None: records kept in memory only
    seed: int
    offsets: torch.Tensor
    sources: dict[str, nn.Module]
    source_digests: dict[str, str]
    device: torch.device
    kept: Kept | None = None
    guard: FiniteGuard | None = None  # watches every forward pass for NaN and inf


def _checked(shard: _Shard, where: str) -> None:
    """Stop with one line if a model gave a non-finite output in the stage just run (``where``)."""
    if shard.guard is not None:
        shard.guard.check(where)


def _record(shard: _Shard, record: Any) -> None:
    """A finished (batch, attack): into the state file when there is one, and into ``done``."""
    if shard.state_file is not None:
        append_record(shard.state_file, record)
    shard.done[record_key(record)] = record


def _run_shard(shard: _Shard, show_progress: bool | str, workers: int) -> None:
    model, classes, done = shard.target.model, shard.target.num_classes, shard.done
    keys = [CLEAN] + [a.key() for a in shard.attacks]
    todo = [b for b in shard.mine if any((b, k) not in done for k in keys)]
    loader = DataLoader(shard.dataset, batch_sampler=[shard.batches[b] for b in todo], num_workers=workers)
    stages = {CLEAN: 1, **{a.key(): len(a.stages()) for a in shard.attacks}}
    finished = sum(len(shard.batches[b]) * stages[k] for b in shard.mine for k in keys if (b, k) in done)
    total = total_work([len(shard.batches[b]) for b in shard.mine], shard.attacks)
    with EvalProgress(show_progress, total, len(shard.batches), finished) as progress:
        for b, (images, labels) in zip(todo, loader):
            images, labels = images.to(shard.device), torch.as_tensor(labels).to(shard.device)
            index = torch.tensor(shard.batches[b])
            if int(labels.min()) < 0 or int(labels.max()) >= classes:
                raise UserError(f"the dataset has label {int(labels.max())} but the model has {classes} classes; "
                                "evaluate on the dataset the checkpoint was trained for")
            if (b, CLEAN) not in done:
                progress.clean(b)
                with eval_mode(model):
                    clean = predict(model, images)
                _checked(shard, f"the clean pass on batch {b + 1} of {len(shard.batches)}")
                _record(shard, CleanRecord(b, index.tolist(), labels.tolist(), clean.tolist()))
                progress.clean_done(len(labels))
            targets = (labels + shard.offsets[index].to(shard.device)) % classes
            single: dict[str, Any] = {}  # this batch's one-restart outcomes: restart 0 of a multi-restart attack
            for spec in shard.attacks:
                if (b, spec.key()) in done:
                    continue
                progress.attack(b, spec)
                reported: set[int] = set()

                def stage_done(stage: int, batch: int = b, spec: AttackSpec = spec, reported: set[int] = reported,
                               images: int = len(labels)) -> None:
                    reported.add(stage)
                    progress.stage_done(batch, spec, stage, images)
                source_name = getattr(spec, "source", None)
                restarts = getattr(spec, "restarts", 1)
                where = f"attack {spec.name} on batch {b + 1} of {len(shard.batches)}"
                try:
                    outcome = spec.run(
                        model, images, labels, num_classes=classes, targets=targets if spec.targeted else None,
                        seed_for=stage_seeds(shard.seed, b, spec, shard.source_digests.get(source_name)),
                        source=shard.sources.get(source_name) if source_name else None,
                        first=single.get(spec.seed_key() + str(source_name)) if restarts > 1 else None,
                        on_stage=stage_done,
                    )
                except Exception:
                    _checked(shard, where)  # a NaN that broke the attack's own arithmetic is named as such
                    raise
                _checked(shard, where)
                if restarts == 1:
                    single[spec.seed_key() + str(source_name)] = outcome
                if shard.kept is not None:
                    shard.kept.take(spec, index.tolist(), labels, done[(b, CLEAN)].clean_pred, outcome)
                _record(shard, AttackRecord(b, spec.name, spec.key(), outcome.adv_pred.tolist(),
                                            outcome.success.int().tolist(),
                                            None if outcome.targets is None else outcome.targets.tolist(),
                                            outcome.found_at.tolist()))
                for stage in range(len(spec.stages())):  # stages left with nothing to attack (every image broken)
                    if stage not in reported:
                        stage_done(stage)


def _gather(records: dict[tuple[int, str], Any]) -> dict[tuple[int, str], Any] | None:
    """All ranks' records on rank 0 (None elsewhere); a plain pass-through without torchrun."""
    rank, size = world()
    if size == 1:
        return records
    gathered: list[Any] | None = [None] * size if rank == 0 else None
    dist.gather_object(list(records.values()), gathered, dst=0)
    if rank != 0:
        return None
    return {record_key(record): record for part in gathered for record in part}


def run_evaluation(
    target: EvalTarget,
    dataset: Dataset,
    suite: Suite,
    out: str | os.PathLike | None,
    *,
    transfer_from: str | None = None,
    sources: dict[str, nn.Module] | None = None,
    device: str | torch.device = "cpu",
    progress: bool | str = False,
    workers: int = 0,
    extra: dict[str, Any] | None = None,
    kept: Kept | None = None,
) -> dict[str, Any] | None:
    """Evaluate ``target`` on ``dataset`` with ``suite`` (plus its checks) and write the results to ``out``.

    Args:
        target: the model and what is known about it.
        dataset: (image in [0, 1], label) pairs; ``index`` in samples.csv refers to it.
        suite: the attacks; ``suite.checks.enabled`` adds the gradient-masking checks.
        out: the evaluation directory (created; resumed when it holds a state of the same settings); None keeps
            every record in memory and writes nothing (one process only).
        transfer_from: the source checkpoint of the transfer check (its model in ``sources``).
        sources: models by the ``source`` names the attacks use.
        device: where to run.
        progress: True a rich progress bar, "log" one plain line per attack stage (a batch job's log), False
            nothing; rank 0 only (``lrrobust.evaluation.progress``).
        workers: DataLoader worker processes.
        extra: more fields for summary.json (dataset name, command, ...).
        kept: receives the ledger (and the adversarial images it asks for) on rank 0.

    Returns:
        The summary on rank 0 (None on other ranks).
    """
    rank, size = world()
    device = torch.device(device)
    sources = dict(sources or {})
    attacks, plan = plan_attacks(suite, transfer_from)
    missing = sorted({a.source for a in attacks if getattr(a, "source", None) and a.source not in sources})
    if missing:
        raise UserError(f"no model loaded for source {', '.join(missing)}")
    num_samples = len(dataset)
    if num_samples == 0:
        raise UserError("the dataset split is empty")
    indices = sample_indices(num_samples, suite.limit, suite.seed)
    batches = [indices[i:i + suite.batch_size] for i in range(0, len(indices), suite.batch_size)]
    digests = {name: model_digest(m) for name, m in sorted(sources.items())}
    if kept is not None:
        kept.eps, kept.norm = suite.eps, suite.norm
    run = _Run(target, dataset, suite, attacks, plan, batches, digests, sources, device, transfer_from, extra, kept)
    if out is None:
        if size > 1:
            raise UserError("an evaluation kept in memory runs in one process; give an output directory (out) to "
                            "shard it under torchrun")
        summary, _ = run.attack({}, None, [*range(len(batches))], progress, workers)
        return summary
    out = Path(out)
    fingerprint = {
        "model": model_digest(target.model),
        "sources": digests,
        "num_classes": target.num_classes,
        "dataset": (extra or {}).get("dataset"),
        "dataset_size": num_samples,
        "split": suite.split,
        "seed": suite.seed,
        "batch_size": suite.batch_size,
        "indices": indices_digest(indices),
        "attacks": [{"name": a.name, "key": a.key(), **a.settings()} for a in attacks],
    }
    check_out(out, fingerprint)  # every rank looks, none writes
    if size > 1:
        dist.barrier()
    with locked_directory(out) if rank == 0 else contextlib.nullcontext():
        if rank == 0:
            check_out(out, fingerprint)  # again under the lock: another process may have pinned other settings
            remove_stale_temporaries(out)
            if (out / STATE_DIR).is_dir():
                remove_stale_temporaries(out / STATE_DIR)
            pin_settings(out, fingerprint)
        if size > 1:
            dist.barrier()
        state_file = out / STATE_DIR / f"rank-{rank}.jsonl"
        open_state(state_file)
        done = read_state(out)
        if kept is not None and kept.adversarial and any(key != CLEAN for _, key in done):
            raise UserError(f"{out} holds attacks finished by an earlier run, whose adversarial images were not "
                            "kept; give a new output directory to get the adversarial images back")
        summary, ledger = run.attack(done, state_file, list(range(rank, len(batches), size)),
                                     progress if rank == 0 else False, workers)
        if summary is not None:
            write_outputs(out, summary, ledger)
        if size > 1:
            dist.barrier()
    return summary


@dataclasses.dataclass
class _Run:
    """An evaluation's settled plan: what ``run_evaluation`` attacks, on disk or in memory alike."""

    target: EvalTarget
    dataset: Dataset
    suite: Suite
    attacks: list[AttackSpec]
    plan: dict[str, list]
    batches: list[list[int]]
    digests: dict[str, str]
    sources: dict[str, nn.Module]
    device: torch.device
    transfer_from: str | None
    extra: dict[str, Any] | None
    kept: Kept | None

    def attack(self, done: dict[tuple[int, str], Any], state_file: Path | None, mine: list[int], progress: bool | str,
               workers: int) -> tuple[dict[str, Any] | None, Ledger | None]:
        """Attack this rank's batches ``mine`` (skipping what ``done`` holds); on rank 0 the summary and ledger of
        every rank's records."""
        started = time.time()
        target = self.target
        target.model.to(self.device)
        for model in self.sources.values():
            model.to(self.device)
        watched = {target.origin.what: target.model,
                   **{f"transfer source {name}": model for name, model in self.sources.items()}}
        with FiniteGuard(watched) as guard:
            shard = _Shard(target, self.dataset, self.attacks, self.batches, mine, done, state_file, self.suite.seed,
                           target_offsets(len(self.dataset), target.num_classes, self.suite.seed), self.sources,
                           self.digests, self.device, self.kept, guard)
            _run_shard(shard, show_progress=progress, workers=workers)
        keys = [CLEAN] + [a.key() for a in self.attacks]
        records = _gather({(b, k): done[(b, k)] for b in mine for k in keys})
        if records is None:
            return None, None
        ledger = build_ledger(records, len(self.batches), self.attacks)
        summary = summarize(ledger, self.suite, self.plan, target.facts(), target.num_classes, self.transfer_from)
        summary.update(self.extra or {})
        summary["device"] = str(self.device)
        summary["world_size"] = world()[1]
        summary["wall_seconds"] = round(time.time() - started, 3)
        summary["provenance"] = provenance(self.device)
        if self.kept is not None:
            self.kept.ledger = ledger
        return summary, ledger
