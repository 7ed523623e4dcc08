"""The run directory's JSON files, written by training and read back typed: one module owns each format.

    RUN/config.json     the resolved TrainConfig             write_run_config / read_run_config -> TrainConfig
    RUN/manifest.json   versions, commit, device, resumes    write_manifest / read_manifest -> dict
    RUN/metrics.jsonl   one JSON line per epoch              write_metrics, append_metrics / read_metrics -> EpochRecord
    RUN/last.pt, best.pt checkpoints (lrrobust.checkpoint)   the invariant between them: check_best / repair_best

Writes are atomic (config.json, manifest.json, a rewritten metrics.jsonl) or an fsynced append (one metrics line),
so a killed run leaves at most a torn last line in metrics.jsonl, which ``read_metrics`` ignores. Anything else
that is damaged raises UserError with one line naming the file and what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrrobust.errors import UserError
from lrrobust.io import append_jsonl, atomic_write_json, atomic_write_text
from lrrobust.training.config import TrainConfig

CONFIG = "config.json"
MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"


@dataclass(frozen=True)
class EpochRecord:
    """One line of metrics.jsonl. Accuracies are fractions; ``loss`` is on adversarial images in adversarial runs.

    ``val_robust_acc`` (PGD on the validation split) and ``adv_train_acc`` are None for regular runs.
    """

    epoch: int
    loss: float
    train_acc: float
    val_acc: float
    val_robust_acc: float | None
    adv_train_acc: float | None
    images: int
    images_per_s: float
    lr: float  # of the epoch's last step
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON line's fields; those that are None (regular runs) are left out."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochRecord:
        """Raises KeyError naming a missing field; unknown fields are ignored."""
        optional = ("val_robust_acc", "adv_train_acc")
        return cls(**{f.name: data.get(f.name) if f.name in optional else data[f.name]
                      for f in dataclasses.fields(cls)})


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a training run directory (it holds config.json and metrics.jsonl)."""
    path = Path(path)
    return (path / CONFIG).is_file() and (path / METRICS).is_file()


def write_run_config(run_dir: str | os.PathLike, config: TrainConfig) -> None:
    atomic_write_json(Path(run_dir) / CONFIG, config.to_dict())


def write_manifest(run_dir: str | os.PathLike, manifest: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / MANIFEST, manifest)


def write_metrics(run_dir: str | os.PathLike, records: list[EpochRecord]) -> None:
    """Rewrite metrics.jsonl with ``records`` (on resume: the checkpoint's history)."""
    atomic_write_text(Path(run_dir) / METRICS, "".join(_line(r) for r in records))


def append_metrics(run_dir: str | os.PathLike, record: EpochRecord) -> None:
    append_jsonl(Path(run_dir) / METRICS, record.to_dict())


def _line(record: EpochRecord) -> str:
    return json.dumps(record.to_dict(), sort_keys=True, default=str) + "\n"


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path} not found: {path.parent} is not an lrrobust run directory (no {what})")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is damaged: not JSON ({e}); restore it or start a new run") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is damaged: expected a JSON object, found {type(data).__name__}")
    return data


def read_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The run's TrainConfig from RUN/config.json. A config.json without ``precise_bn`` reads as 0: the run never
    recomputed batch norm's statistics."""
    path = Path(run_dir) / CONFIG
    data = _read_json_object(path, "training config")
    data.setdefault("precise_bn", 0)
    try:
        return TrainConfig.from_dict(data)
    except UserError as e:
        raise UserError(f"{path} is damaged: {e}") from None


def read_manifest(run_dir: str | os.PathLike) -> dict[str, Any]:
    """RUN/manifest.json as a dict (its keys: ``lrrobust.training.manifest.build_manifest``, plus ``resumes``)."""
    return _read_json_object(Path(run_dir) / MANIFEST, "manifest")


def read_metrics(run_dir: str | os.PathLike) -> list[EpochRecord]:
    """RUN/metrics.jsonl, one record per epoch. A torn last line (no newline, not JSON: a killed write) is ignored."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise UserError(f"{path} not found: {path.parent} is not an lrrobust run directory (no metrics)")
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise UserError(f"{path} is unreadable ({e})") from None
    lines = text.split("\n")  # the last item is "" when the file ends with a newline, else the torn line
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):
                break  # torn by a kill mid-append
            raise UserError(f"{path} is damaged: line {number} is not JSON ({e})") from None
        if not isinstance(data, dict):
            raise UserError(f"{path} is damaged: line {number} is not a JSON object")
        try:
            records.append(EpochRecord.from_dict(data))
        except KeyError as e:
            raise UserError(f"{path} line {number} lacks field {e} (written by an older lrrobust?)") from None
    return records


__all__ = ["EpochRecord", "append_metrics", "is_run_dir", "read_manifest", "read_metrics", "read_run_config",
           "write_manifest", "write_metrics", "write_run_config"]


# ---------------------------------------------------------------- the invariant between best.pt and last.pt


def best_state(run_dir: str | os.PathLike) -> tuple[int | None, int | None, int | None]:
    """(last.pt's epoch, the epoch last.pt names as best, best.pt's epoch); None where a file is missing."""
    from lrrobust.checkpoint import read_checkpoint

    run = Path(run_dir)
    last = read_checkpoint(run / "last.pt", map_location="cpu") if (run / "last.pt").is_file() else None
    best = read_checkpoint(run / "best.pt", map_location="cpu") if (run / "best.pt").is_file() else None
    return (None if last is None else int(last["epoch"]), None if last is None else int(last["best_epoch"]),
            None if best is None else int(best["epoch"]))


def check_best(run_dir: str | os.PathLike) -> None:
    """The run directory's invariant: best.pt holds the epoch last.pt names as best. A UserError otherwise."""
    last_epoch, wanted, have = best_state(run_dir)
    if last_epoch is not None and have != wanted:
        raise UserError(f"run directory {run_dir} is inconsistent: best.pt holds epoch {have} but last.pt says the best "
                        f"is epoch {wanted} (a run killed while writing best.pt); resume it with --resume to repair "
                        "it, or pass RUN/last.pt")


def repair_best(run_dir: str | os.PathLike) -> bool:
    """Restore the invariant after a kill: when last.pt's own epoch is the best and best.pt was not yet written
    from it, copy it (atomically). True when something was repaired; a UserError when it cannot be."""
    import shutil

    from lrrobust.io import atomic_path

    run = Path(run_dir)
    last_epoch, wanted, have = best_state(run)
    if last_epoch is None or have == wanted:
        return False
    if wanted != last_epoch:
        raise UserError(f"run directory {run} is inconsistent beyond repair: best.pt holds epoch {have}, last.pt "
                        f"(epoch {last_epoch}) names epoch {wanted} as best; start a new run with another --out")
    with atomic_path(run / "best.pt") as tmp:
        shutil.copyfile(run / "last.pt", tmp)
    return True
