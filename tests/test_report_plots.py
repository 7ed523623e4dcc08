"""The report's plots draw the figures of its tables: the worst case beside every attack, seeds aggregated, one colour
per network, the legend outside the axes (issue 21, point 4). On six of the committed MNIST evaluations."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lrrobust.report import collect, table_rows
from lrrobust.report.collect import Entry
from lrrobust.report.plots import PALETTE, attack_panels, colours, curves, draw_curves, worst_lines, write_plots

EVALUATIONS = Path(__file__).resolve().parents[1] / "reports" / "mnist" / "evaluations"
CELLS = [f"{net}-adversarial-s{seed}" for net in ("lrnet26", "resnet26") for seed in range(3)]


@pytest.fixture(scope="module")
def entries(tmp_path_factory) -> list[Entry]:
    if not EVALUATIONS.is_dir():
        pytest.skip("no committed MNIST evaluations")
    base = tmp_path_factory.mktemp("mnist")
    for cell in CELLS:
        shutil.copytree(EVALUATIONS / cell / "eval-mnist", base / cell / "eval-mnist")
    return collect([base])


def test_each_models_bars_hold_every_attack_and_table_9s_worst_case(entries):
    rows = {r.network: r for r in table_rows(entries)}
    panels = attack_panels(entries)
    assert [(p.network, p.training, p.seeds) for p in panels] == [
        ("LR-Net-26 (width 0.125)", "adversarial", (0, 1, 2)), ("ResNet-26 (width 0.125)", "adversarial", (0, 1, 2))]
    for panel in panels:
        bars = {b.label: b for b in panel.bars}
        cell = rows[panel.network].cells["adv_untargeted"]
        worst = bars["worst case: every attack"].point
        low, high, _ = cell.interval()
        assert worst.mean == pytest.approx(100 * cell.summary.mean)
        assert (worst.low, worst.high) == pytest.approx((100 * low, 100 * high))
        assert worst.seeds == pytest.approx(tuple(100 * s.figure.accuracy for s in cell.seeds))
        assert bars["worst case: targeted attacks"].point.mean == pytest.approx(
            100 * rows[panel.network].cells["adv_targeted"].summary.mean)
        mine = [e for e in entries if e.network == panel.network]
        at_eps = mine[0].summary.worst_case.untargeted_attacks
        assert [b.label for b in panel.bars] == ["clean", *at_eps, "worst case: targeted attacks",
                                                 "worst case: every attack"]
        for name in at_eps:  # each seed's own figure is a dot, the bar their mean
            own = [100 * next(a for a in e.summary.attacks if a["attack"] == name)["accuracy"] for e in mine]
            assert bars[name].point.seeds == pytest.approx(tuple(own))
            assert bars[name].point.mean == pytest.approx(sum(own) / 3)
            assert bars[name].point.mean >= worst.mean - 1e-9  # no attack below the worst case
        assert panel.eps == "0.3" and "eps 0.3" in panel.title  # MNIST's eps in its own unit


def test_curves_are_aggregated_over_seeds_with_the_worst_case_beside(entries):
    lines = curves(entries, "steps")
    assert [(c.network, c.what) for c in lines] == [("LR-Net-26 (width 0.125)", "untargeted (checks)"),
                                                    ("ResNet-26 (width 0.125)", "untargeted (checks)")]
    lrnet = lines[0]
    mine = [e for e in entries if e.network == lrnet.network]
    plan = mine[0].summary.raw["check_plan"]["steps"]
    assert lrnet.xs == [float(x) for x, _ in plan]
    for (_, name), point in zip(plan, lrnet.points):
        own = [100 * next(a for a in e.summary.attacks if a["attack"] == name)["accuracy"] for e in mine]
        assert point.seeds == pytest.approx(tuple(own)) and point.mean == pytest.approx(sum(own) / 3)
        assert point.low <= point.mean <= point.high
    worst = worst_lines(entries)[(lrnet.network, "adversarial", "linf")]
    assert worst.mean == pytest.approx(14.4, abs=0.05)  # the headline, far below PGD's 65-77%
    assert min(p.mean for p in lrnet.points) > worst.mean + 40


def test_twelve_networks_get_twelve_colours_and_the_legend_sits_outside(entries):
    many = [Entry(f"Net {i}", "resnet18", "adversarial", 0, "mnist", f"s{i}") for i in range(12)]
    assert len(set(colours(many).values())) == 12 and set(colours(many).values()) == set(PALETTE)
    palette = colours(entries)
    fig = draw_curves(curves(entries, "steps"), worst_lines(entries), palette, "PGD steps", True)
    fig.canvas.draw()
    ax, legend = fig.axes[0], fig.axes[0].get_legend()
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1  # right of the axes, covering no data
    labels = [t.get_text() for t in legend.get_texts()]
    assert "LR-Net-26 (width 0.125), adversarial: worst case 14.4%" in labels


def test_write_plots_names_every_file(entries, tmp_path):
    plots = write_plots(entries, tmp_path)
    assert plots == {"attacks": "accuracy_by_attack.png", "steps": "accuracy_vs_steps.png",
                     "eps": "accuracy_vs_eps.png", "eps_l2": None}
    for name in filter(None, plots.values()):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
