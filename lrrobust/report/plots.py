"""The report's plots: accuracy against PGD steps and against eps (the checks' ladders, fd_steps-style suites)."""

from __future__ import annotations

from pathlib import Path

from lrrobust.io import atomic_path
from lrrobust.report.collect import Entry

Line = tuple[str, list[float], list[float]]


def curves(entries: list[Entry], axis: str) -> list[Line]:
    """(label, x, accuracy %) per model and seed: against PGD steps ('steps') or eps ('eps').

    From the checks' ladders (untargeted PGD, step 2.5 eps / steps) and from suites that run the same white-box
    PGD at several step counts (fd_steps).
    """
    lines = []
    for e in sorted(entries, key=lambda e: (e.network, e.training, e.seed or 0)):
        if e.summary is None:
            continue
        attacks = e.summary.attacks
        by_name = {a["attack"]: a for a in attacks}
        who = f"{e.network}, {e.training}" + ("" if e.seed is None else f", seed {e.seed}")
        plan = e.summary.raw.get("check_plan", {}).get(axis)
        if plan:
            xs = [float(x) for x, _ in plan]
            lines.append((f"{who}: untargeted (checks)", xs, [100 * by_name[n]["accuracy"] for _, n in plan]))
        if axis == "steps":
            groups: dict[tuple, list[dict]] = {}
            for a in attacks:
                if a["kind"] == "pgd" and a["role"] == "suite" and not a.get("source") and a["restarts"] == 1:
                    groups.setdefault((a["targeted"], a["eps"]), []).append(a)
            for (targeted, eps), group in sorted(groups.items()):
                if len({a["steps"] for a in group}) >= 2:
                    group = sorted(group, key=lambda a: a["steps"])
                    lines.append((f"{who}: {'targeted' if targeted else 'untargeted'} eps {eps * 255:.3g}/255",
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


def write_plots(entries: list[Entry], out: Path) -> dict[str, str | None]:
    """accuracy_vs_steps.png and accuracy_vs_eps.png where some evaluation varies them; name or None per axis."""
    plots: dict[str, str | None] = {}
    for axis, xlabel, log_x in (("steps", "PGD steps", True), ("eps", "eps (L-inf, pixels in [0, 1])", False)):
        lines = curves(entries, axis)
        name = f"accuracy_vs_{axis}.png"
        plots[axis] = name if lines else None
        if lines:
            plot(lines, out / name, xlabel, log_x)
    return plots
