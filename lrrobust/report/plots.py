"""The report's plots, drawn from the same figures as its tables so that they cannot tell another story.

- ``accuracy_by_attack.png``: per model (network, training kind, threat model) a bar for clean accuracy, for every
  attack at the evaluation's eps and for the worst case over them (Table 9's figure), each the mean over training
  seeds with its 95% interval (the rule of Table 9's cells: ``lrrobust.report.table9.seed_interval``) and each seed
  as a dot. A single PGD attack at 74% beside a worst case of 6% is then in plain sight.
- ``accuracy_vs_steps.png``, ``accuracy_vs_eps.png`` (L-inf) and ``accuracy_vs_eps_l2.png``: the masking checks'
  ladders (and suites that run one PGD at several step counts, fd_steps), one line per model and curve: the mean over
  seeds with the interval as a band. Each model's worst case at the evaluation's eps is drawn as a dotted horizontal
  line of its colour, so a curve that stays high above it shows what a single attack misses.

One colour per network (up to 12 readable ones, then repeated), a solid line for adversarial and a dashed one for
regular training; legends sit outside the axes.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from lrrobust.attacks import is_pgd
from lrrobust.data import eps_text
from lrrobust.evaluation.ledger import Figure
from lrrobust.io import atomic_path
from lrrobust.report.collect import Entry, entry_order
from lrrobust.report.table9 import seed_interval

# Okabe and Ito's colour-blind-safe set without its yellow (too pale on white), then five of Paul Tol's "muted".
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#882255", "#999933",
           "#332288", "#44AA99", "#AA4499")
CLEAN_COLOUR = "#BBBBBB"
WORST_COLOUR = "#333333"
STYLES = {"adversarial": "-", "regular": "--"}


@dataclasses.dataclass(frozen=True)
class Point:
    """A figure over training seeds, in %: the mean, its 95% interval and each seed's value."""

    mean: float
    low: float
    high: float
    seeds: tuple[float, ...]


def aggregate(figures: list[Figure]) -> Point:
    """The mean over seeds of per-seed figures, with Table 9's interval rule, in %."""
    low, high, _ = seed_interval(figures)
    values = tuple(100 * f.accuracy for f in figures)
    return Point(sum(values) / len(values), 100 * low, 100 * high, values)


@dataclasses.dataclass(frozen=True)
class Bar:
    label: str
    kind: str  # clean, attack or worst
    point: Point


@dataclasses.dataclass(frozen=True)
class Panel:
    """One model's bars: its network, training kind, threat model and seeds."""

    network: str
    training: str
    norm: str
    seeds: tuple[int | None, ...]
    eps: str  # in the dataset's unit
    bars: list[Bar]

    @property
    def title(self) -> str:
        seeds = f"{len(self.seeds)} seed{'s' if len(self.seeds) != 1 else ''}" if self.seeds != (None,) else "outside"
        return f"{self.network}, {self.training} ({seeds}), eps {self.eps}"


@dataclasses.dataclass(frozen=True)
class Curve:
    """One line of a steps or eps plot, aggregated over a model's seeds."""

    network: str
    training: str
    norm: str
    what: str  # "untargeted (checks)", "targeted eps 16/255"
    xs: list[float]
    points: list[Point]

    @property
    def label(self) -> str:
        return f"{self.network}, {self.training}{', L2' if self.norm == 'l2' else ''}: {self.what}"


def models(entries: list[Entry]) -> dict[tuple[str, str, str], list[Entry]]:
    """The evaluated entries of each model (network, training kind, threat model), seeds in order."""
    groups: dict[tuple[str, str, str], list[Entry]] = {}
    for e in sorted(entries, key=entry_order):
        if e.summary is not None:
            groups.setdefault((e.network, e.training, e.norm or "linf"), []).append(e)
    return groups


def colours(entries: list[Entry]) -> dict[str, str]:
    """One colour per network, in the report's row order."""
    networks = sorted({e.network for e in entries})
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(networks)}


def _attack_figure(attack: dict[str, Any]) -> Figure:
    return Figure(int(attack["correct"]), int(attack["num_samples"]))


def attack_panels(entries: list[Entry]) -> list[Panel]:
    """Per model, clean accuracy, every attack at its evaluation's eps and the worst cases, aggregated over seeds
    (an attack every seed ran; each seed's own figure kept as a dot)."""
    panels = []
    for (network, training, norm), group in models(entries).items():
        first = group[0].summary
        eps = eps_text(first.suite_eps, group[0].dataset, norm)
        names = [a["attack"] for a in first.attacks if a["attack"] in first.worst_case.untargeted_attacks]
        by_seed = [{a["attack"]: a for a in e.summary.attacks} for e in group]
        bars = [Bar("clean", "clean", aggregate([e.summary.worst_case.figures()["clean"] for e in group]))]
        bars += [Bar(name, "attack", aggregate([_attack_figure(s[name]) for s in by_seed])) for name in names
                 if all(name in s for s in by_seed)]
        worst = [e.summary.worst_case.figures() for e in group]
        if all(w["targeted"] is not None for w in worst):
            bars.append(Bar("worst case: targeted attacks", "worst", aggregate([w["targeted"] for w in worst])))
        if all(w["untargeted"] is not None for w in worst):
            bars.append(Bar("worst case: every attack", "worst", aggregate([w["untargeted"] for w in worst])))
        panels.append(Panel(network, training, norm, tuple(e.seed for e in group), eps, bars))
    return panels


def curves(entries: list[Entry], axis: str) -> list[Curve]:
    """Per model, against PGD steps ('steps') or eps ('eps'): the checks' ladder (untargeted PGD in the suite's
    norm, step 2.5 eps / steps) and suite attacks that run one PGD at several step counts (fd_steps), each point the
    mean over the seeds that ran it."""
    out = []
    for (network, training, norm), group in models(entries).items():
        lines: dict[str, dict[float, list[Figure]]] = {}
        for e in group:
            by_name = {a["attack"]: a for a in e.summary.attacks}
            plan = e.summary.raw.get("check_plan", {}).get(axis)
            if plan:
                line = lines.setdefault("untargeted (checks)", {})
                for x, name in plan:
                    line.setdefault(float(x), []).append(_attack_figure(by_name[name]))
            if axis != "steps":
                continue
            groups: dict[tuple, list[dict]] = {}
            for a in e.summary.attacks:
                if is_pgd(a) and a["role"] == "suite" and not a.get("source") \
                        and (a.get("restarts") or 1) == 1:
                    groups.setdefault((a["targeted"], a["eps"], a.get("norm", "linf")), []).append(a)
            for (targeted, eps, attack_norm), attacks in sorted(groups.items()):
                if len({a["steps"] for a in attacks}) >= 2:
                    line = lines.setdefault(f"{'targeted' if targeted else 'untargeted'} eps "
                                            f"{eps_text(eps, e.dataset, attack_norm)}", {})
                    for a in attacks:
                        line.setdefault(float(a["steps"]), []).append(_attack_figure(a))
        for what, points in lines.items():
            xs = sorted(points)
            out.append(Curve(network, training, norm, what, xs, [aggregate(points[x]) for x in xs]))
    return out


def worst_lines(entries: list[Entry]) -> dict[tuple[str, str, str], Point]:
    """Each model's worst case over every attack at its evaluation's eps (Table 9's robust figure)."""
    out = {}
    for key, group in models(entries).items():
        worst = [e.summary.worst_case.figures()["untargeted"] for e in group]
        if all(w is not None for w in worst):
            out[key] = aggregate(worst)
    return out


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")  # tight: the outside legend is kept
    _pyplot().close(fig)


def draw_curves(lines: list[Curve], worst: dict[tuple[str, str, str], Point], palette: dict[str, str], xlabel: str,
                log_x: bool, eps_marks: list[float] | None = None) -> Any:
    """The figure of a steps or eps plot: mean lines with interval bands, worst cases dotted, legend outside."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    drawn = set()
    for c in lines:
        colour = palette[c.network]
        style = STYLES.get(c.training, ":")
        ax.plot(c.xs, [p.mean for p in c.points], style, color=colour, marker="o", markersize=4, label=c.label)
        if any(len(p.seeds) > 1 or p.high > p.low for p in c.points):
            ax.fill_between(c.xs, [p.low for p in c.points], [p.high for p in c.points], color=colour, alpha=0.15,
                            linewidth=0)
        key = (c.network, c.training, c.norm)
        if key in worst and key not in drawn:
            drawn.add(key)
            ax.axhline(worst[key].mean, color=colour, linestyle=":", linewidth=1.6,
                       label=f"{c.network}, {c.training}{', L2' if c.norm == 'l2' else ''}: worst case "
                             f"{worst[key].mean:.1f}%")
    for x in eps_marks or []:
        ax.axvline(x, color="#777777", linewidth=0.8)
    if log_x:
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.set_xticks(sorted({x for c in lines for x in c.xs}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("robust top-1 accuracy (%), mean over seeds")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return fig


def draw_attack_bars(panels: list[Panel], palette: dict[str, str]) -> Any:
    """The figure of accuracy_by_attack.png: one panel per model, horizontal bars with intervals, seeds as dots."""
    plt = _pyplot()
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    height = max(len(p.bars) for p in panels) * 0.28 + 1.2
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, height * nrows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        ys = list(range(len(panel.bars)))[::-1]
        colour = {"clean": CLEAN_COLOUR, "attack": palette[panel.network], "worst": WORST_COLOUR}
        for y, bar in zip(ys, panel.bars):
            p = bar.point
            ax.barh(y, p.mean, color=colour[bar.kind], alpha=0.55 if bar.kind == "attack" else 0.9, height=0.7)
            below, above = max(0.0, p.mean - p.low), max(0.0, p.high - p.mean)
            ax.errorbar(p.mean, y, xerr=[[below], [above]], color="black", capsize=2, linewidth=0.9)
            ax.scatter(p.seeds, [y] * len(p.seeds), s=10, color="white", edgecolors="black", linewidths=0.7,
                       zorder=3)
        ax.set_yticks(ys)
        ax.set_yticklabels([b.label for b in panel.bars], fontsize=7)
        ax.set_xlim(0, 100)
        ax.set_xlabel("top-1 accuracy (%)", fontsize=8)
        ax.set_title(panel.title, fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


PLOT_FILES = {"attacks": "accuracy_by_attack.png", "steps": "accuracy_vs_steps.png", "eps": "accuracy_vs_eps.png",
              "eps_l2": "accuracy_vs_eps_l2.png"}
PLOTS = (  # name (accuracy_vs_NAME.png), axis, the evaluations it draws (None: all), x label, log x
    ("steps", "steps", None, "PGD steps", True),
    ("eps", "eps", "linf", "eps (L-inf, pixels in [0, 1])", False),
    ("eps_l2", "eps", "l2", "eps (L2 radius, pixels in [0, 1])", False),
)


def write_plots(entries: list[Entry], out: Path) -> dict[str, str | None]:
    """accuracy_by_attack.png, and accuracy_vs_steps.png, accuracy_vs_eps.png (L-inf) and accuracy_vs_eps_l2.png
    where some evaluation varies them; name or None per plot ("attacks", "steps", "eps", "eps_l2")."""
    palette = colours(entries)
    plots: dict[str, str | None] = {}
    panels = attack_panels(entries)
    plots["attacks"] = PLOT_FILES["attacks"] if panels else None
    if panels:
        _save(draw_attack_bars(panels, palette), out / PLOT_FILES["attacks"])
    for axis, varied, norm, xlabel, log_x in PLOTS:
        chosen = [e for e in entries if norm is None or e.norm == norm]
        lines = curves(chosen, varied)
        name = PLOT_FILES[axis]
        plots[axis] = name if lines else None
        if lines:
            marks = sorted({e.summary.suite_eps for e in chosen if e.summary is not None}) if varied == "eps" else None
            _save(draw_curves(lines, worst_lines(chosen), palette, xlabel, log_x, marks), out / name)
    return plots
