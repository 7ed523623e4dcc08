"""The report's plots: accuracy against PGD steps and against eps (the checks' ladders, fd_steps-style suites).

Against eps, one plot per threat model (an L2 radius and an L-inf bound share no axis); against steps, the L2
evaluations' lines are named L2.
"""

from __future__ import annotations

from pathlib import Path

from lrrobust.core.numbers import format_eps
from lrrobust.io import atomic_path
from lrrobust.report.collect import Entry, entry_order

Line = tuple[str, list[float], list[float]]


def curves(entries: list[Entry], axis: str) -> list[Line]:
    """(label, x, accuracy %) per model, seed and threat model: against PGD steps ('steps') or eps ('eps').

    From the checks' ladders (untargeted PGD in the suite's norm, step 2.5 eps / steps) and from suites that run the
    same white-box PGD at several step counts (fd_steps).
    """
    lines = []
    for e in sorted(entries, key=entry_order):
        if e.summary is None:
            continue
        attacks = e.summary.attacks
        by_name = {a["attack"]: a for a in attacks}
        who = f"{e.network}, {e.training}" + ("" if e.seed is None else f", seed {e.seed}") + (
            ", L2" if e.norm == "l2" else "")
        plan = e.summary.raw.get("check_plan", {}).get(axis)
        if plan:
            xs = [float(x) for x, _ in plan]
            lines.append((f"{who}: untargeted (checks)", xs, [100 * by_name[n]["accuracy"] for _, n in plan]))
        if axis == "steps":
            groups: dict[tuple, list[dict]] = {}
            for a in attacks:
                if a["kind"] not in ("pgd", "pgd-l2"):
                    continue
                if a["role"] == "suite" and not a.get("source") and a.get("restarts", 1) == 1:
                    groups.setdefault((a["targeted"], a["eps"], a.get("norm", "linf")), []).append(a)
            for (targeted, eps, norm), group in sorted(groups.items()):
                if len({a["steps"] for a in group}) >= 2:
                    group = sorted(group, key=lambda a: a["steps"])
                    lines.append((f"{who}: {'targeted' if targeted else 'untargeted'} eps {format_eps(eps, norm)}",
                                  [a["steps"] for a in group], [100 * a["accuracy"] for a in group]))
    return lines


def plot(lines: list[Line], path: Path, xlabel: str, log_x: bool) -> None:
    """A line plot written atomically as PNG (matplotlib Agg, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, xs, ys in lines:
        style = "--" if ", regular" in label else "-"
        ax.plot(xs, ys, style, marker="o", label=label)
    if log_x:
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.set_xticks(sorted({x for _, xs, _ in lines for x in xs}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("robust top-1 accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


PLOTS = (  # name (accuracy_vs_NAME.png), axis, the evaluations it draws (None: all), x label, log x
    ("steps", "steps", None, "PGD steps", True),
    ("eps", "eps", "linf", "eps (L-inf, pixels in [0, 1])", False),
    ("eps_l2", "eps", "l2", "eps (L2 radius, pixels in [0, 1])", False),
)


def write_plots(entries: list[Entry], out: Path) -> dict[str, str | None]:
    """accuracy_vs_steps.png, accuracy_vs_eps.png (L-inf) and accuracy_vs_eps_l2.png where some evaluation varies
    them; name or None per plot."""
    plots: dict[str, str | None] = {}
    for axis, varied, norm, xlabel, log_x in PLOTS:
        lines = curves([e for e in entries if norm is None or e.norm == norm], varied)
        name = f"accuracy_vs_{axis}.png"
        plots[axis] = name if lines else None
        if lines:
            plot(lines, out / name, xlabel, log_x)
    return plots
