"""The evaluation loop behind ``lrrobust eval-attack`` (paper Sec. 6.2, Table 9): resumable, sharded, seeded.

- The split (or a seeded subset of ``limit`` samples) is cut into numbered batches; under torchrun rank r takes
  batches r, r + W, ...; results are gathered on rank 0, which alone writes the summary.
- Every (batch, attack) result is appended to ``DIR/.state/rank-R.jsonl`` as it is done, so a killed run,
  started again with the same command, skips what is finished. ``DIR/.state/config.json`` pins the settings a
  state belongs to; a different command on the same DIR is refused rather than mixed in.
- Targets are one random wrong class per sample index, (label + U{1..C-1}) mod C from the run seed; the global
  RNG (torchattacks' random start) is seeded per batch from (seed, batch, attack, restart): a seeded run
  reproduces exactly, resumed or not, on any number of ranks.
- Outputs: ``summary.json``, ``summary.csv`` and ``samples.csv``, each written atomically.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lrrobust import __version__
from lrrobust.errors import UserError
from lrrobust.evaluation.attacks import derive_seed, eval_mode, predict, run_attack
from lrrobust.evaluation.checks import evaluate_checks, plan_attacks
from lrrobust.evaluation.suite import AttackSpec, Suite
from lrrobust.io import append_jsonl, atomic_write_json, atomic_write_text
from lrrobust.pgd import random_targets

CLEAN = "__clean__"
STATE_DIR = ".state"
SAMPLE_COLUMNS = ("index", "label", "clean_pred", "attack", "target", "adv_pred", "success")
SUMMARY_COLUMNS = ("attack", "kind", "targeted", "eps", "eps_255", "step_size", "step_size_255", "steps",
                   "random_start", "restarts", "source", "n_queries", "role", "num_samples", "seed",
                   "clean_accuracy", "accuracy", "success_rate", "targeted_success_rate")


@dataclasses.dataclass
class EvalTarget:
    """What is evaluated: the model, its class count, and what is known about it (checkpoint, training)."""

    model: nn.Module
    num_classes: int
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def model_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state (names, shapes and values): which weights an evaluation belongs to."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def sample_indices(num_samples: int, limit: int | None, seed: int) -> list[int]:
    """All indices of the split, or a seeded random subset of ``limit`` of them, in increasing order."""
    if limit is None or limit >= num_samples:
        return list(range(num_samples))
    generator = torch.Generator().manual_seed(derive_seed(seed, "subset") % (2**63))
    return sorted(torch.randperm(num_samples, generator=generator)[:limit].tolist())


def target_offsets(num_samples: int, num_classes: int, seed: int) -> torch.Tensor:
    """Per dataset index, an offset in 1..C-1: target = (label + offset) mod C, never the label."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "targets") % (2**63))
    return random_targets(torch.zeros(num_samples, dtype=torch.long), num_classes, generator)


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def git_commit() -> str | None:
    head = Path(__file__).resolve().parents[2] / ".git"
    try:
        ref = (head / "HEAD").read_text().strip()
        if ref.startswith("ref: "):
            path = head / ref[5:]
            if path.is_file():
                return path.read_text().strip()
            packed = (head / "packed-refs").read_text().splitlines()
            return next((line.split()[0] for line in packed if line.endswith(ref[5:])), None)
        return ref
    except OSError:
        return None


def environment() -> dict[str, Any]:
    """Versions and machine: the manifest part of a summary."""
    import torchattacks

    return {
        "lrrobust": __version__,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "torchattacks": getattr(torchattacks, "__version__", "unknown"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "command": " ".join(sys.argv),
    }


# ---------------------------------------------------------------- state


def _read_state(out: Path) -> dict[tuple[int, str], dict]:
    """Every finished (batch, attack) record of every rank file; a torn last line is ignored."""
    done: dict[tuple[int, str], dict] = {}
    for path in sorted((out / STATE_DIR).glob("rank-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                done[(int(record["batch"]), str(record["attack"]))] = record
            except (ValueError, KeyError, TypeError):
                continue
    return done


def _open_state(path: Path) -> None:
    """Make sure the rank file ends with a newline, so a line torn by a kill never swallows the next one."""
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        if torn:
            with open(path, "a") as f:
                f.write("\n")


def check_out(out: Path, fingerprint: dict[str, Any]) -> None:
    """Refuse an ``out`` that is neither new nor a state of the same settings (every rank checks, none writes)."""
    config = out / STATE_DIR / "config.json"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory for the evaluation")
    if config.exists():
        try:
            old = json.loads(config.read_text())
        except ValueError:
            raise UserError(f"{config} is damaged; remove {out} or choose another --out") from None
        changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        if changed:
            raise UserError(f"{out} holds an evaluation with other settings ({', '.join(changed)} differ); "
                            "use the same command to resume, or choose another --out")
    elif out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not an evaluation directory; choose a new --out")


def pin_settings(out: Path, fingerprint: dict[str, Any]) -> None:
    """Rank 0 records the settings the state in ``out`` belongs to (after every input was validated)."""
    config = out / STATE_DIR / "config.json"
    if not config.exists():
        atomic_write_json(config, fingerprint)


# ---------------------------------------------------------------- the loop


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=not enabled, transient=False)


def _evaluate_shard(
    target: EvalTarget,
    dataset: Dataset,
    attacks: list[AttackSpec],
    batches: list[list[int]],
    mine: list[int],
    done: dict[tuple[int, str], dict],
    state_file: Path,
    *,
    seed: int,
    offsets: torch.Tensor,
    sources: dict[str, nn.Module],
    device: torch.device,
    show_progress: bool,
    workers: int,
) -> None:
    model, classes = target.model, target.num_classes
    names = [CLEAN] + [a.name for a in attacks]
    todo = [b for b in mine if any((b, n) not in done for n in names)]
    loader = DataLoader(dataset, batch_sampler=[batches[b] for b in todo], num_workers=workers)
    with _progress(show_progress) as progress:
        task = progress.add_task("attacks", total=len(mine) * len(names))
        progress.advance(task, sum(1 for b in mine for n in names if (b, n) in done))
        for b, (images, labels) in zip(todo, loader):
            images, labels = images.to(device), torch.as_tensor(labels).to(device)
            index = torch.tensor(batches[b])
            if int(labels.min()) < 0 or int(labels.max()) >= classes:
                raise UserError(f"the dataset has label {int(labels.max())} but the model has {classes} classes; "
                                "evaluate on the dataset the checkpoint was trained for")
            if (b, CLEAN) not in done:
                progress.update(task, description=f"batch {b + 1}/{len(batches)} clean")
                with eval_mode(model):
                    clean = predict(model, images)
                record = {"batch": b, "attack": CLEAN, "index": index.tolist(), "label": labels.tolist(),
                          "clean_pred": clean.tolist()}
                append_jsonl(state_file, record)
                done[(b, CLEAN)] = record
                progress.advance(task)
            targets = (labels + offsets[index].to(device)) % classes
            single: dict[str, Any] = {}  # this batch's one-restart outcomes: restart 0 of a multi-restart attack
            for spec in attacks:
                if (b, spec.name) in done:
                    continue
                progress.update(task, description=f"batch {b + 1}/{len(batches)} {spec.name}")
                outcome = run_attack(
                    model, spec, images, labels, num_classes=classes,
                    targets=targets if spec.targeted else None,
                    seed_for=_restart_seeds(seed, b, spec),
                    source=sources.get(spec.source) if spec.source else None,
                    first=single.get(spec.seed_key()) if spec.restarts > 1 else None,
                )
                if spec.restarts == 1:
                    single[spec.seed_key()] = outcome
                record = {"batch": b, "attack": spec.name, "adv_pred": outcome.adv_pred.tolist(),
                          "success": outcome.success.int().tolist(),
                          "target": None if outcome.targets is None else outcome.targets.tolist()}
                append_jsonl(state_file, record)
                done[(b, spec.name)] = record
                progress.advance(task)


def _restart_seeds(seed: int, batch: int, spec: AttackSpec) -> Callable[[int], int]:
    """The global-RNG seed of each restart of ``spec`` on ``batch``."""
    key = spec.seed_key()
    return lambda restart: derive_seed(seed, batch, key, restart)


def _gather(records: dict[tuple[int, str], dict]) -> dict[tuple[int, str], dict] | None:
    """All ranks' records on rank 0 (None elsewhere); a plain pass-through without torchrun."""
    rank, size = world()
    if size == 1:
        return records
    gathered: list[Any] | None = [None] * size if rank == 0 else None
    dist.gather_object(list(records.values()), gathered, dst=0)
    if rank != 0:
        return None
    merged = {}
    for part in gathered:
        for record in part:
            merged[(record["batch"], record["attack"])] = record
    return merged


def run_evaluation(
    target: EvalTarget,
    dataset: Dataset,
    suite: Suite,
    out: str | os.PathLike,
    *,
    transfer_from: str | None = None,
    sources: dict[str, nn.Module] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    workers: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Evaluate ``target`` on ``dataset`` with ``suite`` (plus its checks) and write the results to ``out``.

    Args:
        target: the model and what is known about it.
        dataset: (image in [0, 1], label) pairs; ``index`` in samples.csv refers to it.
        suite: the attacks; ``suite.checks.enabled`` adds the gradient-masking checks.
        out: the evaluation directory (created; resumed when it holds a state of the same settings).
        transfer_from: the source checkpoint of the transfer check (its model in ``sources``).
        sources: models by the ``source`` names the attacks use.
        device: where to run.
        progress: show a rich progress bar (rank 0 only).
        workers: DataLoader worker processes.
        extra: more fields for summary.json (dataset name, command, ...).

    Returns:
        The summary on rank 0 (None on other ranks).
    """
    out = Path(out)
    rank, size = world()
    device = torch.device(device)
    sources = dict(sources or {})
    attacks, plan = plan_attacks(suite, transfer_from)
    missing = sorted({a.source for a in attacks if a.source and a.source not in sources})
    if missing:
        raise UserError(f"no model loaded for source {', '.join(missing)}")
    num_samples = len(dataset)
    if num_samples == 0:
        raise UserError("the dataset split is empty")
    indices = sample_indices(num_samples, suite.limit, suite.seed)
    batches = [indices[i:i + suite.batch_size] for i in range(0, len(indices), suite.batch_size)]
    fingerprint = {
        "model": model_digest(target.model),
        "sources": {name: model_digest(m) for name, m in sorted(sources.items())},
        "num_classes": target.num_classes,
        "dataset": (extra or {}).get("dataset"),
        "dataset_size": num_samples,
        "split": suite.split,
        "seed": suite.seed,
        "batch_size": suite.batch_size,
        "indices": hashlib.sha256(json.dumps(indices).encode()).hexdigest(),
        "attacks": [{"name": a.name, **a.hyper_parameters()} for a in attacks],
    }
    check_out(out, fingerprint)
    if size > 1:
        dist.barrier()  # every rank has looked at out before rank 0 writes into it
    if rank == 0:
        pin_settings(out, fingerprint)
    if size > 1:
        dist.barrier()
    state_file = out / STATE_DIR / f"rank-{rank}.jsonl"
    _open_state(state_file)
    done = _read_state(out)
    mine = list(range(rank, len(batches), size))
    started = time.time()
    target.model.to(device)
    for model in sources.values():
        model.to(device)
    _evaluate_shard(
        target, dataset, attacks, batches, mine, done, state_file, seed=suite.seed,
        offsets=target_offsets(num_samples, target.num_classes, suite.seed), sources=sources, device=device,
        show_progress=progress and rank == 0, workers=workers,
    )
    names = [CLEAN] + [a.name for a in attacks]
    records = _gather({(b, n): done[(b, n)] for b in mine for n in names})
    summary = None
    if records is not None:
        summary = summarize(records, batches, attacks, plan, suite, target, transfer_from)
        summary.update(extra or {})
        summary["device"] = str(device)
        summary["world_size"] = size
        summary["wall_seconds"] = round(time.time() - started, 3)
        write_outputs(out, summary, records, batches, attacks)
    if size > 1:
        dist.barrier()
    return summary


# ---------------------------------------------------------------- results


def summarize(
    records: dict[tuple[int, str], dict],
    batches: list[list[int]],
    attacks: list[AttackSpec],
    plan: dict[str, list],
    suite: Suite,
    target: EvalTarget,
    transfer_from: str | None,
) -> dict[str, Any]:
    """Accuracies, success rates and every hyper-parameter; the checks' verdicts."""
    order = range(len(batches))
    label = torch.tensor([v for b in order for v in records[(b, CLEAN)]["label"]])
    clean = torch.tensor([v for b in order for v in records[(b, CLEAN)]["clean_pred"]])
    n = len(label)
    clean_accuracy = int((clean == label).sum()) / n
    rows = []
    for spec in attacks:
        adv = torch.tensor([v for b in order for v in records[(b, spec.name)]["adv_pred"]])
        success = torch.tensor([v for b in order for v in records[(b, spec.name)]["success"]], dtype=torch.bool)
        row = {"attack": spec.name, **spec.hyper_parameters(), "num_samples": n, "seed": suite.seed,
               "clean_accuracy": clean_accuracy, "accuracy": int((adv == label).sum()) / n,
               "success_rate": int(success.sum()) / n,
               "targeted_success_rate": int(success.sum()) / n if spec.targeted else None}
        rows.append(row)
    accuracy = {row["attack"]: row["accuracy"] for row in rows}
    return {
        "schema": 1,
        "suite": suite.name,
        "suite_config": suite.to_dict(),
        "num_samples": n,
        "num_classes": target.num_classes,
        "seed": suite.seed,
        "batch_size": suite.batch_size,
        "split": suite.split,
        "clean_accuracy": clean_accuracy,
        "attacks": rows,
        "checks": evaluate_checks(suite, plan, accuracy, n, transfer_from),
        "check_plan": {k: [[x, name] for x, name in v] for k, v in plan.items()},
        "model": target.info,
        "environment": environment(),
    }


def _csv(columns: tuple[str, ...], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return buffer.getvalue()


def write_outputs(
    out: Path, summary: dict[str, Any], records: dict[tuple[int, str], dict], batches: list[list[int]],
    attacks: list[AttackSpec],
) -> None:
    """summary.json, summary.csv and samples.csv (one row per sample and attack), each atomically."""
    samples = []
    for spec in attacks:
        for b in range(len(batches)):
            clean, adv = records[(b, CLEAN)], records[(b, spec.name)]
            for i, index in enumerate(clean["index"]):
                samples.append({
                    "index": index, "label": clean["label"][i], "clean_pred": clean["clean_pred"][i],
                    "attack": spec.name, "target": None if adv["target"] is None else adv["target"][i],
                    "adv_pred": adv["adv_pred"][i], "success": adv["success"][i],
                })
    atomic_write_text(out / "samples.csv", _csv(SAMPLE_COLUMNS, samples))
    atomic_write_text(out / "summary.csv", _csv(SUMMARY_COLUMNS, summary["attacks"]))
    atomic_write_json(out / "summary.json", summary)
