"""The Table 9 computation (paper Sec. 6.2): one list of columns, per-seed worst-case figures, their uncertainty,
and the paired comparison of every LR-Net row with every ResNet row.

- Each cell is a network's figure under one training kind, from the worst-case ledger of each training seed's
  evaluation (``lrrobust.evaluation.ledger``). One seed: the accuracy and its 95% Wilson interval over the
  images. Several seeds: the mean, the spread (standard deviation, minimum, maximum) and, from 3 seeds, the 95%
  t-interval of the mean over seeds; every seed's figure is kept for the detail table.
- Comparisons pair images: per training seed an exact McNemar test of the two models on the same images, and a
  combined verdict over seeds (``lrrobust.evaluation.stats.combine_paired``; docs/evaluation.md says why). The
  comparisons of one report are one family: their p-values are adjusted by Holm's procedure over all of them
  (``lrrobust.evaluation.stats.adjust_family``), and the verdicts follow the adjusted p.
- Results measured with different attacks, eps, sample sets or datasets never share a table: ``check_matching``
  refuses them, or, when allowed, marks the cells that differ from the majority and leaves them out of the tests.
- A run whose training had not finished learning (``lrrobust.training.convergence``) is flagged beside its
  training kind's clean accuracy, and its row remembers it (``Row.unconverged``) for the paper's claims.
- Two threat models, two sets of columns: a model may have an L-inf and an L2 evaluation; each robust column takes
  the evaluations of its own norm alone (L-inf and L2 figures never share a worst case), and the L2 columns are
  shown only when some model has an L2 evaluation. Clean accuracy is no threat model's: from the L-inf evaluation,
  else the L2 one.
"""

from __future__ import annotations

import collections
import dataclasses

from lrrobust.attacks import attack_from_row
from lrrobust.core.numbers import format_eps
from lrrobust.errors import UserError
from lrrobust.evaluation.ledger import Figure
from lrrobust.evaluation.stats import (
    CombinedTest,
    SeedSummary,
    adjust_family,
    combine_paired,
    exact_mcnemar,
    summarize_seeds,
)
from lrrobust.models.registry import find_model
from lrrobust.report.collect import Entry, cells
from lrrobust.training.convergence import is_flagged


def paper_table9(model: str) -> dict[str, float]:
    """Table 9's figures for a registered network, by column key (``PaperRobustness``); empty for the others."""
    info = find_model(model)
    return info.table9._asdict() if info is not None and info.table9 is not None else {}


@dataclasses.dataclass(frozen=True)
class Column:
    """One figure of Table 9: which training kind's model, which worst-case figure, where it is shown."""

    key: str
    title: str
    training: str  # adversarial or regular
    figure: str  # clean, targeted, untargeted or targeted_success (WorstCase.figures)
    in_table9: bool  # in the paper's table (else in the table of regular models under attack)
    higher_is_robust: bool = True
    norm: str | None = "linf"  # the threat model of a robust figure; None for clean accuracy (no attack)


COLUMNS = (
    Column("adv_clean", "adv. train: clean", "adversarial", "clean", True, norm=None),
    Column("adv_targeted", "adv. train: targeted", "adversarial", "targeted", True),
    Column("adv_untargeted", "adv. train: untargeted", "adversarial", "untargeted", True),
    Column("adv_targeted_success", "adv. train: targeted success", "adversarial", "targeted_success", True, False),
    Column("adv_targeted_l2", "adv. train: targeted L2", "adversarial", "targeted", True, norm="l2"),
    Column("adv_untargeted_l2", "adv. train: untargeted L2", "adversarial", "untargeted", True, norm="l2"),
    Column("adv_targeted_success_l2", "adv. train: targeted success L2", "adversarial", "targeted_success", True,
           False, norm="l2"),
    Column("reg_clean", "regular train: clean", "regular", "clean", True, norm=None),
    Column("reg_targeted", "regular train: targeted", "regular", "targeted", False),
    Column("reg_untargeted", "regular train: untargeted", "regular", "untargeted", False),
    Column("reg_targeted_success", "regular train: targeted success", "regular", "targeted_success", False, False),
    Column("reg_targeted_l2", "regular train: targeted L2", "regular", "targeted", False, norm="l2"),
    Column("reg_untargeted_l2", "regular train: untargeted L2", "regular", "untargeted", False, norm="l2"),
    Column("reg_targeted_success_l2", "regular train: targeted success L2", "regular", "targeted_success", False,
           False, norm="l2"),
)
NORM_NAMES = {"linf": "L-inf", "l2": "L2"}
COLUMN = {c.key: c for c in COLUMNS}


@dataclasses.dataclass(frozen=True)
class SeedFigure:
    """One training seed's figure in a cell, with the per-image flags the paired tests use."""

    seed: int | None
    figure: Figure
    flags: list[bool]
    indices_sha256: str
    mixed: bool  # measured differently from the majority (only with --allow-mixed)
    source: str


@dataclasses.dataclass(frozen=True)
class Cell:
    """A network's figure in one column: every seed's, and what is missing and why."""

    column: Column
    seeds: list[SeedFigure]
    notes: list[str]
    missing: str | None = None

    @property
    def summary(self) -> SeedSummary | None:
        return summarize_seeds([s.figure.accuracy for s in self.seeds]) if self.seeds else None

    @property
    def images(self) -> int:
        return sum(s.figure.n for s in self.seeds)

    @property
    def mixed(self) -> bool:
        return any(s.mixed for s in self.seeds)

    def interval(self) -> tuple[float, float, str] | None:
        """(low, high, kind): Wilson over the images for one seed, t over seeds from 3 seeds, else pooled Wilson."""
        return seed_interval([s.figure for s in self.seeds]) if self.seeds else None


def seed_interval(figures: list[Figure]) -> tuple[float, float, str]:
    """The 95% interval of a figure over training seeds, and its kind: Wilson over the images for one seed, the
    t-interval of the mean over seeds from 3 seeds, else (2 seeds) Wilson over the images pooled over seeds."""
    if len(figures) == 1:
        low, high = figures[0].interval
        return low, high, "wilson"
    summary = summarize_seeds([f.accuracy for f in figures])
    if summary.interval is not None:
        return summary.interval[0], summary.interval[1], "t over seeds"
    low, high = Figure(sum(f.correct for f in figures), sum(f.n for f in figures)).interval
    return low, high, "wilson, images pooled over seeds"


@dataclasses.dataclass(frozen=True)
class Row:
    network: str
    model: str
    cells: dict[str, Cell]
    paper: dict[str, float]
    outside: bool = False  # a model lrrobust did not train: shown, never in the paired LR-Net/ResNet tests
    norms: frozenset[str] = frozenset()  # the threat models of its evaluations
    unconverged: dict[str, tuple[int | None, ...]] = dataclasses.field(default_factory=dict)  # training: seeds


def shown_columns(rows: list[Row]) -> list[Column]:
    """The columns a report shows: clean accuracy, and the robust columns of each threat model some row was
    evaluated under (L-inf when none was): a report without an L2 evaluation looks as it did before L2."""
    norms = {n for r in rows for n in r.norms} or {"linf"}
    return [c for c in COLUMNS if c.norm is None or c.norm in norms]


@dataclasses.dataclass(frozen=True)
class Comparison:
    """LR-Net row against ResNet row in one column: the combined paired test over common seeds."""

    column: Column
    lrnet: str
    resnet: str
    seeds: list[int | None]
    test: CombinedTest | None
    reason: str | None = None  # why there is no test


def attack_signature(row: dict) -> tuple:
    """An attack's settings (every one its kind records, ``AttackSpec.settings``; one left out of an older summary
    takes its default) less its transfer source's path (each model has its own source): whether it is a transfer
    attack counts, which checkpoint it came from does not."""
    settings = attack_from_row(row).settings()
    transfer = bool(settings.pop("source", None))
    settings.pop("eps_255")
    return tuple(sorted(settings.items())) + (("transfer", transfer),)


def signature(entry: Entry) -> tuple:
    """What must match for two evaluations of one norm to share a table: dataset, split, eps, images, attacks at
    eps."""
    s = entry.summary
    assert s is not None
    at_eps = set(s.worst_case.untargeted_attacks)
    attacks = tuple(sorted(attack_signature(a) for a in s.attacks if a["attack"] in at_eps))
    return (s.dataset, s.split, round(s.suite_eps, 9), s.indices_sha256, attacks)


def check_matching(entries: list[Entry], allow_mixed: bool) -> set[str]:
    """The sources measured differently from the majority of their norm's evaluations (L2 ones are compared among
    themselves, L-inf ones among themselves); a UserError naming the mismatch unless allowed."""
    odd: set[str] = set()
    for norm in sorted({e.norm for e in entries if e.norm is not None}):
        odd |= _check_matching([e for e in entries if e.norm == norm], allow_mixed)
    return odd


def _check_matching(evaluated: list[Entry], allow_mixed: bool) -> set[str]:
    counts = collections.Counter(signature(e) for e in evaluated)
    majority, _ = counts.most_common(1)[0]
    odd = [e for e in evaluated if signature(e) != majority]
    if odd and not allow_mixed:
        e = odd[0]
        mine = signature(e)
        what = ["dataset", "split", "eps", "images", "attacks"]
        differs = [w for w, a, b in zip(what, mine, majority) if a != b]
        reference = next(o for o in evaluated if signature(o) == majority)
        raise UserError(f"{e.source} was measured with other {', '.join(differs)} than {reference.source} "
                        f"(suite {e.summary.suite} vs {reference.summary.suite}); such results never share a table: "
                        "evaluate them alike, or pass --allow-mixed to mark the cells that differ")
    return {e.source for e in odd}


def measured(column: Column, entries: list[Entry]) -> list[Entry]:
    """The evaluations a column's cell takes, one per training seed: those of the column's norm; for clean
    accuracy the L-inf evaluation, else the L2 one."""
    if column.norm is not None:
        return [e for e in entries if e.norm == column.norm]
    by_seed: dict[int | None, Entry] = {}
    for e in entries:
        if e.norm is not None and (e.seed not in by_seed or e.norm == "linf"):
            by_seed[e.seed] = e
    return list(by_seed.values())


def _cell(column: Column, entries: list[Entry], odd: set[str]) -> Cell:
    if not entries:
        return Cell(column, [], [], f"no {column.training} run")
    if all(e.summary is None for e in entries):
        return Cell(column, [], [], "not evaluated (lrrobust eval-attack)")
    evaluated = measured(column, entries)
    if not evaluated:
        return Cell(column, [], [], f"no {NORM_NAMES[column.norm]} evaluation")
    seeds, notes = [], []
    for e in evaluated:
        worst = e.summary.worst_case
        figure = worst.figures()[column.figure]
        if figure is None:
            kind = "targeted" if "targeted" in column.figure else "untargeted"
            return Cell(column, [], [], f"no {kind} attack at eps {format_eps(worst.eps, e.norm)} in suite "
                                        f"{e.summary.suite}")
        flags = {"clean": worst.clean, "untargeted": worst.untargeted, "targeted": worst.targeted,
                 "targeted_success": worst.target_reached}[column.figure]
        seeds.append(SeedFigure(e.seed, figure, list(flags), e.summary.indices_sha256, e.source in odd, e.source))
        if column.figure == "untargeted":
            label = f"seed {e.seed}: " if len(evaluated) > 1 else ""
            notes += [label + n for n in e.summary.notes]
    unconverged = [e.seed for e in evaluated if is_flagged(e.convergence)]
    if column.figure == "clean" and unconverged:
        which = f" (seed{'s' if len(unconverged) > 1 else ''} {', '.join(map(str, unconverged))})" \
            if len(evaluated) > 1 else ""
        notes.append(f"training had not converged{which}: see Training convergence")
    return Cell(column, seeds, notes)


def table_rows(entries: list[Entry], odd: set[str] | None = None) -> list[Row]:
    """One row per network, a cell per column."""
    odd = odd or set()
    rows = []
    for network, by_training in sorted(cells(entries).items()):
        any_entry = next(e for es in by_training.values() for e in es)
        row_cells = {c.key: _cell(c, by_training.get(c.training, []), odd) for c in COLUMNS}
        mine = not any_entry.outside
        paper = paper_table9(any_entry.model) if any_entry.dataset == "imagenet" and mine else {}
        norms = frozenset(e.norm for es in by_training.values() for e in es if e.norm is not None)
        unconverged = {training: tuple(sorted({e.seed for e in es if is_flagged(e.convergence)},
                                          key=lambda seed: -1 if seed is None else seed))
                       for training, es in by_training.items()}
        rows.append(Row(network, any_entry.model, row_cells, paper, outside=not mine, norms=norms,
                        unconverged={t: seeds for t, seeds in unconverged.items() if seeds}))
    return rows


def family(row: Row) -> str | None:
    """The family of a row's network (``lrrobust.models.registry``); None for a model from outside or a network
    this version does not register."""
    info = None if row.outside else find_model(row.model)
    return None if info is None else info.family


def compare(a: Cell, b: Cell) -> tuple[list[int | None], CombinedTest | None, str | None]:
    """The paired test of two cells over their common training seeds, on the same images."""
    by_seed = {s.seed: s for s in b.seeds}
    pairs = [(s, by_seed[s.seed]) for s in a.seeds if s.seed in by_seed]
    if not pairs:
        return [], None, "no training seed in common"
    if any(x.mixed or y.mixed for x, y in pairs):
        return [], None, "measured differently (--allow-mixed)"
    if any(x.indices_sha256 != y.indices_sha256 for x, y in pairs):
        return [], None, "evaluated on different images"
    tests = [exact_mcnemar(x.flags, y.flags) for x, y in pairs]
    return [x.seed for x, _ in pairs], combine_paired(tests), None


def comparisons(rows: list[Row]) -> list[Comparison]:
    """Every LR-Net row against every ResNet row of lrrobust's zoo (the family its network is registered with), in
    every accuracy column both have (the L2 columns get their own tests), as one family: p-values and verdicts
    adjusted by Holm over every test made."""
    out = []
    lrnets = [r for r in rows if family(r) == "lrnet"]
    resnets = [r for r in rows if family(r) == "resnet"]
    for column in COLUMNS:
        if not column.higher_is_robust:
            continue
        for a in lrnets:
            for b in resnets:
                cell_a, cell_b = a.cells[column.key], b.cells[column.key]
                if not cell_a.seeds or not cell_b.seeds:
                    continue
                seeds, test, reason = compare(cell_a, cell_b)
                out.append(Comparison(column, a.network, b.network, seeds, test, reason))
    tested = [c for c in out if c.test is not None]
    adjusted = dict(zip(map(id, tested), adjust_family([c.test for c in tested])))
    return [dataclasses.replace(c, test=adjusted[id(c)]) if c.test is not None else c for c in out]
