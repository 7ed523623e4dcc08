"""The evaluation state: what makes ``eval-attack`` resumable (its one writer and its one reader).

``DIR/.state/config.json`` pins the settings a state belongs to (model and source digests, data, sample set,
every attack's full settings); a different command on the same DIR is refused rather than mixed in.
``DIR/.state/rank-R.jsonl`` gets one line per finished (batch, attack) of rank R, fsynced as it is done. Records
are keyed by each attack's full settings (``AttackSpec.key``), never by its name alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from lrrobust.core.lock import contents
from lrrobust.errors import EnvironmentFailure, UserError
from lrrobust.io import append_jsonl, atomic_write_json

STATE_DIR = ".state"
CLEAN = "__clean__"  # the key of a batch's clean predictions


@dataclasses.dataclass(frozen=True)
class CleanRecord:
    """A batch's dataset indices, labels and clean predictions."""

    batch: int
    index: list[int]
    label: list[int]
    clean_pred: list[int]


@dataclasses.dataclass(frozen=True)
class AttackRecord:
    """One attack's per-sample outcome on a batch (worst case over its restarts or components)."""

    batch: int
    attack: str  # the name, for people reading the file
    key: str  # AttackSpec.key(): what the record is looked up by
    adv_pred: list[int]
    success: list[int]
    target: list[int] | None
    found_at: list[int]


def _record(data: Any) -> CleanRecord | AttackRecord:
    if not isinstance(data, dict):
        raise TypeError("not an object")
    if data.get("key") == CLEAN:
        return CleanRecord(int(data["batch"]), list(data["index"]), list(data["label"]), list(data["clean_pred"]))
    return AttackRecord(int(data["batch"]), str(data["attack"]), str(data["key"]), list(data["adv_pred"]),
                        list(data["success"]), None if data["target"] is None else list(data["target"]),
                        list(data["found_at"]))


def record_key(record: CleanRecord | AttackRecord) -> tuple[int, str]:
    return record.batch, CLEAN if isinstance(record, CleanRecord) else record.key


def append_record(path: Path, record: CleanRecord | AttackRecord) -> None:
    """Append one record to a rank file (fsynced: a kill loses at most this line)."""
    data = dataclasses.asdict(record)
    if isinstance(record, CleanRecord):
        data["key"] = CLEAN
    append_jsonl(path, data)


def read_state(out: Path) -> dict[tuple[int, str], CleanRecord | AttackRecord]:
    """Every finished record of every rank file. A line cut by a kill mid-write (no valid JSON; ``open_state``
    ends it before anything is appended) is ignored and its work redone; valid JSON that is not a record is a
    UserError naming the file and line."""
    done: dict[tuple[int, str], CleanRecord | AttackRecord] = {}
    for path in sorted((out / STATE_DIR).glob("rank-*.jsonl")):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{path} is unreadable ({e}); remove {out} or choose another --out") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError:
                continue  # torn by a kill: never complete, redone
            try:
                record = _record(data)
            except (ValueError, KeyError, TypeError) as e:
                raise UserError(f"{path} line {number} is not an evaluation record ({type(e).__name__}: {e}); "
                                f"remove {out} or choose another --out") from None
            done[record_key(record)] = record
    return done


def open_state(path: Path) -> None:
    """Make sure the rank file ends with a newline, so a line torn by a kill never swallows the next one."""
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        if torn:
            with open(path, "a") as f:
                f.write("\n")


def _is_new(out: Path) -> bool:
    """Nothing in ``out`` but its lock and what a run killed in its first write leaves (an empty state folder)."""
    return all(p.name == STATE_DIR and p.is_dir() and not contents(p) for p in contents(out))


def check_out(out: Path, fingerprint: dict[str, Any]) -> None:
    """Refuse an ``out`` that is neither new nor a state of the same settings (every rank checks, none writes)."""
    config = out / STATE_DIR / "config.json"
    if out.exists() and not out.is_dir():
        raise EnvironmentFailure(out, "it is a file, not a directory; give a directory for the evaluation",
                                 action="cannot write in", context="--out")
    if config.exists():
        try:
            old = json.loads(config.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise UserError(f"{config} is damaged; remove {out} or choose another --out") from None
        if not isinstance(old, dict):
            raise UserError(f"{config} is damaged; remove {out} or choose another --out")
        changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        if changed:
            raise UserError(f"{out} holds an evaluation with other settings ({', '.join(changed)} differ); "
                            "use the same command to resume, or choose another --out")
    elif out.exists() and not _is_new(out):
        raise UserError(f"{out} exists and is not an evaluation directory; choose a new --out")


def pin_settings(out: Path, fingerprint: dict[str, Any]) -> None:
    """Rank 0 records the settings the state in ``out`` belongs to (after every input was validated)."""
    config = out / STATE_DIR / "config.json"
    if not config.exists():
        atomic_write_json(config, fingerprint)
