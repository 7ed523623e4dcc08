"""Did a network finish learning before it was compared? A check on a run's ``metrics.jsonl`` (issue 20, point 1).

A robustness comparison measures architectures only when every network has finished learning under its recipe:
the MNIST study's adversarial cells were all still climbing when their learning rate was first cut, and its
LR-Nets oscillated by 15-30 points from epoch to epoch at lr 0.1 (issue 20). The check reads the validation
figures of every epoch (``val_acc``, and ``val_robust_acc`` for adversarial runs) and asks:

- **Phases.** Epochs are grouped into learning-rate phases: runs of consecutive epochs at the same lr (the paper's
  step schedule, appendix: x0.1 at each milestone). The leading epochs under linear warm-up record a rising lr
  (each record holds the lr of the epoch's last step); they are no phase and are not judged. The epoch that ends
  warm-up records the peak lr and opens the first phase.
- **Plateau before each cut.** In every phase of ``MIN_PHASE`` (3) or more epochs that is followed by a lower lr,
  each figure must have plateaued: the best of the phase's last two epochs beats the best before them within the
  phase by no more than ``plateau_points``. Otherwise the cut froze a network that was still learning.
- **A flat end.** The final phase, when it has 3 or more epochs, by the same rule. Shorter phases are listed as not
  judged: two epochs leave no "before" to compare with.
- **Stability.** No figure falls by more than ``drop_points`` between consecutive epochs at a constant lr.

Why these thresholds (the defaults, ``ConvergenceConfig``). Each figure is an accuracy on the validation split,
500 images for MNIST (180 for digits), whose standard error sqrt(p (1 - p) / n) is 2.2 points at 50% accuracy,
1.8 at 80% and 1.3 at 90% (500 images): a change between two epochs smaller than sqrt(2) times that, 1.9-3.2
points, says nothing about accuracy beyond these images. ``plateau_points = 3`` sits at that scale. With 4 or more
epochs in the phase, the best before the last two has at least as many tries as the best of the last two, so noise
leans towards "plateaued": in a simulation of a true plateau with independent 500-image noise, a phase of 6 epochs
is flagged 5% of the time at 50% accuracy and 2% at 80%; a phase of 3 epochs (one earlier epoch only) 27% and 19%,
so a flag on a 3-epoch phase is weaker evidence. ``drop_points = 10``: three standard deviations of the difference
of two 50% figures (3.2 points); noise alone gives such a fall less than once in 250 phases of 6 epochs, so a fall
this large at a constant lr is the optimiser, not the sample. The thresholds scale with the standard error, as
1 / sqrt(n): the digits suite, whose 180 validation images give 5.3 points at 50%, sets 5 and 16; on a larger
validation split (CIFAR-10, ImageNet: 5,000-10,000 images) both may be set lower, in the suite or the study spec::

    [convergence]
    plateau_points = 3.0
    drop_points = 10.0
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lrrobust.core.toml import check_keys
from lrrobust.errors import UserError
from lrrobust.training.run_files import METRICS, EpochRecord, read_metrics

MIN_PHASE = 3  # epochs: the last two and at least one before them
CONVERGENCE_KEYS = ("plateau_points", "drop_points")
STATUSES = ("pass", "flag", "n/a")  # as the attack checks' (lrrobust.evaluation.checks)


@dataclasses.dataclass(frozen=True)
class ConvergenceConfig:
    """The check's thresholds in accuracy points (the module docstring says why these defaults)."""

    plateau_points: float = 3.0
    drop_points: float = 10.0


def parse_convergence(table: Any, where: str) -> ConvergenceConfig:
    """A ``[convergence]`` table of a suite or a study spec; one-line UserErrors name the key and what it needs."""
    if not isinstance(table, dict):
        raise UserError(f"{where}: [convergence] must be a table with plateau_points and/or drop_points")
    check_keys(table, CONVERGENCE_KEYS, where, "convergence")
    values = {}
    for key in CONVERGENCE_KEYS:
        value = table.get(key, getattr(ConvergenceConfig, key))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 100:
            raise UserError(f"{where}: [convergence] {key} must be a number of accuracy points in (0, 100], "
                            f"got {value!r}")
        values[key] = float(value)
    return ConvergenceConfig(**values)


@dataclasses.dataclass(frozen=True)
class Phase:
    """Consecutive epochs at one lr; ``gains`` (points, per figure) are set when the phase was judged."""

    first_epoch: int
    last_epoch: int
    lr: float
    cut: bool  # followed by a lower lr
    final: bool
    gains: dict[str, float] | None = None  # best of the last two epochs minus best before them, in points

    @property
    def epochs(self) -> int:
        return self.last_epoch - self.first_epoch + 1

    def still_learning(self, config: ConvergenceConfig) -> dict[str, float]:
        """The figures whose gain exceeds the plateau threshold (empty when plateaued or not judged)."""
        return {k: g for k, g in (self.gains or {}).items() if g > config.plateau_points}


@dataclasses.dataclass(frozen=True)
class Drop:
    """A fall of one figure between consecutive epochs at one lr, in points."""

    figure: str
    from_epoch: int
    to_epoch: int
    lr: float
    points: float


@dataclasses.dataclass(frozen=True)
class Convergence:
    """The check's result: ``status`` pass, flag or n/a, and a one-line ``verdict``."""

    status: str
    verdict: str
    config: ConvergenceConfig = ConvergenceConfig()
    figures: tuple[str, ...] = ()
    warmup_epochs: tuple[int, ...] = ()
    phases: tuple[Phase, ...] = ()
    drops: tuple[Drop, ...] = ()
    source: str | None = None  # where the records came from

    @property
    def flagged(self) -> bool:
        return self.status == "flag"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "verdict": self.verdict, "source": self.source,
            "thresholds": dataclasses.asdict(self.config), "figures": list(self.figures),
            "warmup_epochs": list(self.warmup_epochs),
            "phases": [{"first_epoch": p.first_epoch, "last_epoch": p.last_epoch, "lr": p.lr, "cut": p.cut,
                        "final": p.final, "judged": p.gains is not None,
                        "gains": None if p.gains is None else {k: round(v, 2) for k, v in p.gains.items()}}
                       for p in self.phases],
            "drops": [{**dataclasses.asdict(d), "points": round(d.points, 2)} for d in self.drops],
        }


def not_available(reason: str) -> Convergence:
    """The result for a model without a training record: 'n/a: no training record'."""
    return Convergence("n/a", f"n/a: {reason}")


def is_flagged(result: dict[str, Any] | None) -> bool:
    """Whether a stored result (``Convergence.to_dict``, e.g. from summary.json) flags its run."""
    return bool(result) and result.get("status") == "flag"


def _same_lr(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


def warmup_count(records: Sequence[EpochRecord]) -> int:
    """How many leading epochs ran under warm-up: those whose recorded lr is below the next epoch's."""
    count = 0
    for a, b in itertools.pairwise(records):
        if b.lr > a.lr and not _same_lr(a.lr, b.lr):
            count += 1
        else:
            break
    return count


def phases_of(records: Sequence[EpochRecord]) -> list[list[EpochRecord]]:
    """The records after warm-up, grouped into runs of consecutive epochs at the same lr."""
    groups: list[list[EpochRecord]] = []
    for record in records[warmup_count(records):]:
        if groups and _same_lr(groups[-1][-1].lr, record.lr):
            groups[-1].append(record)
        else:
            groups.append([record])
    return groups


def _figure(record: EpochRecord, name: str) -> float | None:
    value = getattr(record, name)
    return None if value is None or not math.isfinite(value) else 100 * value


def _gains(group: list[EpochRecord], figures: tuple[str, ...]) -> dict[str, float]:
    gains = {}
    for name in figures:
        last = [v for v in (_figure(r, name) for r in group[-2:]) if v is not None]
        before = [v for v in (_figure(r, name) for r in group[:-2]) if v is not None]
        if last and before:
            gains[name] = max(last) - max(before)
    return gains


def _drops(group: list[EpochRecord], figures: tuple[str, ...], config: ConvergenceConfig) -> list[Drop]:
    drops = []
    for a, b in itertools.pairwise(group):
        for name in figures:
            x, y = _figure(a, name), _figure(b, name)
            if x is not None and y is not None and x - y > config.drop_points:
                drops.append(Drop(name, a.epoch, b.epoch, b.lr, x - y))
    return drops


def check_convergence(records: Sequence[EpochRecord], config: ConvergenceConfig = ConvergenceConfig(),
                      source: str | None = None) -> Convergence:
    """Judge a run's epochs by the rules of the module docstring.

    Args:
        records: the run's epochs in order (``lrrobust.training.run_files.read_metrics``).
        config: the thresholds.
        source: where the records came from, kept in the result.

    Returns:
        "flag" with a verdict naming every cut the run was still learning at and its largest fall
        ("still learning at the lr cut after epoch 6: val_acc +48.4 points in its last two epochs"); "pass" with
        "converged" when some phase was judged and nothing is flagged; "n/a" when there are no records or no phase of
        ``MIN_PHASE`` epochs to judge (and nothing unstable).
    """
    if not records:
        return dataclasses.replace(not_available("no training record"), config=config, source=source)
    robust = any(r.val_robust_acc is not None for r in records)
    figures = ("val_acc", "val_robust_acc") if robust else ("val_acc",)
    warmup = warmup_count(records)
    groups = phases_of(records)
    phases, drops = [], []
    for i, group in enumerate(groups):
        final = i == len(groups) - 1
        cut = not final and groups[i + 1][0].lr < group[-1].lr
        judged = len(group) >= MIN_PHASE and (cut or final)
        phases.append(Phase(group[0].epoch, group[-1].epoch, group[0].lr, cut, final,
                            _gains(group, figures) if judged else None))
        drops += _drops(group, figures, config)
    problems = [_learning_text(p, p.still_learning(config)) for p in phases if p.still_learning(config)]
    if drops:
        worst = max(drops, key=lambda d: d.points)
        more = f" ({len(drops)} falls of more than {config.drop_points:g} points)" if len(drops) > 1 else ""
        problems.append(f"unstable: {worst.figure} fell {worst.points:.1f} points from epoch {worst.from_epoch} to "
                        f"{worst.to_epoch} at lr {worst.lr:.3g}{more}")
    if problems:
        status, verdict = "flag", "; ".join(problems)
    elif any(p.gains for p in phases):
        status, verdict = "pass", "converged"
    else:
        status, verdict = "n/a", f"n/a: no learning-rate phase of {MIN_PHASE} or more epochs to judge"
    skipped = [p for p in phases if p.gains is None and (p.cut or p.final)]
    if status != "n/a" and skipped:
        verdict += "; too short to judge: " + ", ".join(_epochs_text(p) for p in skipped)
    if warmup:
        verdict += f" (warm-up epoch{'s' if warmup > 1 else ''} 1{f'-{warmup}' if warmup > 1 else ''} not judged)"
    return Convergence(status, verdict, config, figures, tuple(r.epoch for r in records[:warmup]), tuple(phases),
                       tuple(drops), source)


def _epochs_text(phase: Phase) -> str:
    """'epoch 7 (lr 0.01)', 'epochs 7-8 (lr 0.01)'."""
    epochs = f"epoch {phase.first_epoch}" if phase.epochs == 1 else f"epochs {phase.first_epoch}-{phase.last_epoch}"
    return f"{epochs} (lr {phase.lr:.3g})"


def _learning_text(phase: Phase, gains: dict[str, float]) -> str:
    where = f"at the lr cut after epoch {phase.last_epoch}" if phase.cut else f"at its end (epoch {phase.last_epoch})"
    figures = " and ".join(f"{name} {gain:+.1f}" for name, gain in sorted(gains.items(), key=lambda kv: -kv[1]))
    return f"still learning {where}: {figures} points in its last two epochs"


def run_convergence(run_dir: str | Path, config: ConvergenceConfig = ConvergenceConfig()) -> Convergence:
    """The check on a run directory's metrics.jsonl; a missing or damaged file gives "n/a" with the reason (a
    check on the training record never stops an evaluation or a report)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return dataclasses.replace(not_available("no training record"), config=config)
    try:
        records = read_metrics(run_dir)
    except UserError as e:
        return dataclasses.replace(not_available(f"training record unreadable ({e})"), config=config)
    return check_convergence(records, config, str(path))


__all__ = ["CONVERGENCE_KEYS", "MIN_PHASE", "Convergence", "ConvergenceConfig", "Drop", "Phase", "check_convergence",
           "is_flagged", "not_available", "parse_convergence", "phases_of", "run_convergence", "warmup_count"]
