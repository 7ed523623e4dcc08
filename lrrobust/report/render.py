"""table9.md: the answer on its first screen, the evidence below it.

The first screen is a title, the verdict in two or three sentences (the headline figures with their seeds and eps,
the LR-Net/ResNet differences with the p that decided them, the paper's claims), and a compact Table 9: each cell
the figure and its 95% interval with a numbered marker per note, the notes as footnotes under it. Below come every
figure with its spread over seeds, the paired tests, the paper's claims, the plots, training convergence, the checks,
every attack per model and seed, how the figures are computed, and the runs.

Every row says who trained its model: lrrobust (its recipe under Runs) or someone outside (``lrrobust.external``:
the kind, with a 12-character SHA-256 prefix in the markdown and the full hash in the CSV and manifest); Table 9
names the trainer only when some row is from outside, and then shows the robust figures of regular training too, so
an outside model's figures stand in Table 9 whatever training its owner declared.

Budgets are written in the dataset's own unit (``lrrobust.data.eps_text``, as its entry says): digits and MNIST as
plain numbers (0.3), CIFAR-10 and ImageNet in 1/255 units (16/255), L2 as the radius. The L2 columns appear only
when some model has an L2 evaluation.
"""

from __future__ import annotations

import datetime
from typing import Any

from lrrobust.data import dataset_title, eps_text
from lrrobust.evaluation.diagnostics import DROP_EXCESS_POINTS, SATURATED_WEIGHT, ZERO_GRADIENT_SHARE
from lrrobust.report.claims import VERDICTS, Assessment, assess, claims_md
from lrrobust.report.collect import Entry
from lrrobust.report.sections import (
    checks_found,
    checks_md,
    convergence_md,
    detail_md,
    diagnostics_md,
    evaluation_label,
    manifest,
    manifest_md,
    sweep_md,
)
from lrrobust.report.table9 import COLUMN, Cell, Column, Comparison, Row, shown_columns
from lrrobust.report.tables import (
    TEST_COLUMNS,
    Col,
    attack_columns,
    attack_rows,
    frame,
    of_row,
    origin_sha256,
    pct,
    test_rows,
    tests_markdown,
    to_markdown,
)

__all__ = ["TEST_COLUMNS", "attack_columns", "attack_rows", "cell_text", "eps_text",
           "evaluation_label", "manifest", "render_markdown", "sweep_md", "test_rows"]

NORM_WORDS = {"linf": "L-inf", "l2": "L2"}
SUPERSCRIPTS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")

# ---------------------------------------------------------------- cells


def cell_text(cell: Cell, notes: bool = True) -> str:
    """'25.0 [20.8, 29.7]' for one seed; '25.0 ± 3.1 [19.2, 30.8], 3 seeds' for several; why when missing."""
    if not cell.seeds:
        return f"– ({cell.missing})" if cell.missing else "–"
    summary = cell.summary
    low, high, _ = cell.interval()
    text = pct(summary.mean)
    if len(cell.seeds) > 1:
        text += f" ± {pct(summary.std)}"
    text += f" [{pct(low)}, {pct(high)}]"
    if len(cell.seeds) > 1:
        text += f", {len(cell.seeds)} seeds"
    if cell.mixed:
        text += " †"
    if notes and cell.notes:
        text += " ⚠ " + "; ".join(cell.notes)
    return text


class Footnotes:
    """Numbered notes: each distinct text gets the next number, and a marker to put beside what it annotates."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return str(self.texts.index(text) + 1).translate(SUPERSCRIPTS)

    def markdown(self) -> str:
        return "".join(f"{i}. {t}\n" for i, t in enumerate(self.texts, 1))


def compact(cell: Cell, footnotes: Footnotes) -> str:
    """'14.4 [0.0, 44.4]¹' : the figure, its interval and a marker for the cell's notes; why when missing."""
    if not cell.seeds:
        return "–"
    low, high, _ = cell.interval()
    text = f"{pct(cell.summary.mean)} [{pct(low)}, {pct(high)}]"
    if cell.mixed:
        text += " †"
    if cell.notes:
        text += " " + footnotes.mark("; ".join(cell.notes))
    return text


def origin_text(row: Row, entries: list[Entry]) -> str:
    """'lrrobust', or 'outside: model-py, sha256 dd125c65c3b2' (each model of the row)."""
    if not row.outside:
        return "lrrobust"
    mine = of_row(row, entries)
    kinds = sorted({e.origin.kind for e in mine})
    hashes = sorted({origin_sha256(e.origin)[:12] for e in mine})
    return f"outside: {', '.join(kinds)}, sha256 {', '.join(hashes)}"


def budgets_text(entries: list[Entry]) -> str:
    """The evaluations' budgets: '0.3'; with L2 evaluations too, '0.2 (L-inf) and 0.5 (L2)'."""
    evaluated = [e for e in entries if e.summary is not None]
    dataset = evaluated[0].dataset if evaluated else ""
    linf = ", ".join(eps_text(x, dataset) for x in sorted({e.summary.suite_eps for e in evaluated if e.norm == "linf"}))
    l2 = ", ".join(eps_text(x, dataset, "l2") for x in sorted({e.summary.suite_eps for e in evaluated
                                                               if e.norm == "l2"}))
    return f"{linf} (L-inf) and {l2}" if linf and l2 else (f"{linf} (L-inf)" if linf else l2)


# ---------------------------------------------------------------- Table 9


def table9_columns(rows: list[Row]) -> list[Column]:
    """Table 9's figure columns: the paper's (clean and robust accuracy under adversarial training, clean under
    regular), the L2 ones when some model has an L2 evaluation, and regular training's robust figures when a row
    is from outside (its owner may have declared it regularly trained: its robust figures belong in Table 9)."""
    shown = shown_columns(rows)
    keep = [c for c in shown if c.in_table9 and c.figure != "targeted_success"]
    if any(r.outside for r in rows):
        keep += [c for c in shown if not c.in_table9 and c.figure in ("targeted", "untargeted")]
    return keep


def table9_md(rows: list[Row], entries: list[Entry], footnotes: Footnotes) -> str:
    """Table 9 itself: one column list feeds the header and the cells."""
    imagenet = entries[0].dataset == "imagenet"
    figures = table9_columns(rows)
    cols = [Col("network", "network")]
    if any(r.outside for r in rows):
        cols.append(Col("origin", "trained by"))
    cols += [Col(c.key, c.title) for c in figures]
    paper = [c for c in figures if c.key in ("adv_clean", "adv_targeted", "adv_untargeted", "reg_clean")]
    if imagenet:
        cols += [Col("paper_" + c.key, "paper: " + c.title) for c in paper]
    data = []
    for r in rows:
        line: dict[str, Any] = {"network": r.network, "origin": origin_text(r, entries)}
        line.update({c.key: compact(r.cells[c.key], footnotes) for c in figures})
        line.update({"paper_" + c.key: str(r.paper[c.key]) if c.key in r.paper else "– (not in the paper)"
                     for c in paper})
        data.append(line)
    return to_markdown(frame(data, cols), cols)


def caption(rows: list[Row], entries: list[Entry]) -> str:
    """What a Table 9 cell is, in two sentences."""
    evaluated = [e for e in entries if e.summary is not None]
    images = ", ".join(str(n) for n in sorted({e.summary.num_samples for e in evaluated})) or "?"
    splits = "/".join(sorted({e.summary.split for e in evaluated})) or "test"
    seeds = sorted({len(c.seeds) for r in rows for c in r.cells.values() if c.seeds})
    if seeds == [1]:
        how = "each figure with its 95% Wilson interval over the images (one training seed)"
    else:
        how = ("the mean over training seeds with its 95% interval (t over seeds from 3 seeds; Wilson over the images "
               "for one seed, over the images pooled over seeds for two)")
    missing = any(not r.cells[c.key].seeds for r in rows for c in table9_columns(rows))
    return (f"Top-1 accuracy (%) on {images} {dataset_title(entries[0].dataset)} {splits} images: {how}. Every robust "
            f"figure is the per-image worst case over every attack at eps {budgets_text(entries) or '?'}: an image "
            "counts only if its clean prediction and every adversarial image found for it are right."
            + (" – : no such model or evaluation (see All figures)." if missing else "")
            + (" † measured differently from the others (--allow-mixed)." if any(c.mixed for r in rows
                                                                                   for c in r.cells.values()) else "")
            + "\n")


# ---------------------------------------------------------------- the verdict


HEADLINE = ("adv_untargeted", "adv_untargeted_l2", "reg_untargeted", "reg_untargeted_l2")


def headline_column(rows: list[Row]) -> Column | None:
    """The figure the verdict leads with: untargeted worst case under adversarial training (L-inf, else L2), else
    under regular training; None when no model was attacked."""
    for key in HEADLINE:
        if any(r.cells[key].seeds for r in rows):
            return COLUMN[key]
    return None


def short_names(rows: list[Row]) -> tuple[dict[str, str], str]:
    """The verdict's names: when every row shares one option suffix ('LR-Net-26 (width 0.125)', 'ResNet-26 (width
    0.125)'), the names without it and the suffix said once ('all width 0.125'); else the names as they are."""
    suffixes = {r.network[r.network.find(" ("):] if r.network.endswith(")") and " (" in r.network else "" for r in rows}
    if len(suffixes) != 1 or not next(iter(suffixes)) or len(rows) < 2:
        return {r.network: r.network for r in rows}, ""
    suffix = next(iter(suffixes))
    return {r.network: r.network.removesuffix(suffix) for r in rows}, f", all {suffix.strip(' ()')}"


def _seeds_phrase(cells: list[Cell]) -> str:
    counts = sorted({len(c.seeds) for c in cells})
    if counts == [1]:
        return "one training seed each"
    if len(counts) == 1:
        return f"mean over {counts[0]} training seeds each"
    return f"mean over {counts[0]}-{counts[-1]} training seeds"


def _significance(t: Comparison) -> str:
    test = t.test
    p = test.p_adjusted if test.p_adjusted is not None else test.p_value
    from lrrobust.evaluation.stats import format_p

    adjusted = "Holm-adjusted " if test.p_adjusted is not None else ""
    if not test.consistent:
        return f"not significant: the seeds disagree in sign, {adjusted}{format_p(p)}"
    word = "significant" if test.significant else "not significant"
    seed_note = ", one training seed" if test.seeds == 1 else ""
    return f"{word}, {adjusted}{format_p(p)} by the {test.decided_by}{seed_note}"


def verdict_md(rows: list[Row], entries: list[Entry], tests: list[Comparison],
               assessments: list[Assessment]) -> str:
    """Two or three sentences: the headline figures (with seeds and eps), the LR-Net/ResNet differences in that
    column with the p that decided each, and the paper's claims."""
    column = headline_column(rows)
    if column is None:
        return "**Verdict.** No model was attacked: Table 9 holds clean accuracy only.\n"
    dataset = entries[0].dataset
    measured = [r for r in rows if r.cells[column.key].seeds]
    cells = [r.cells[column.key] for r in measured]
    name, common = short_names(rows)
    figures = []
    for r, cell in zip(measured, cells):
        low, high, _ = cell.interval()
        figures.append(f"{name[r.network]}{' (from outside)' if r.outside else ''} {pct(cell.summary.mean)}% "
                       f"[{pct(low)}, {pct(high)}]")
    listed = ", ".join(figures[:-1]) + (" and " if len(figures) > 1 else "") + figures[-1]
    eps = sorted({e.summary.suite_eps for e in entries if e.summary is not None and e.norm == column.norm})
    images = sorted({e.summary.num_samples for e in entries if e.summary is not None and e.norm == column.norm})
    training = "adversarially" if column.training == "adversarial" else "regularly"
    budget = ", ".join(eps_text(x, dataset, column.norm) for x in eps)
    parts = [(f"**Verdict.** {training.capitalize()} trained and attacked with every attack at eps {budget} "
              f"({NORM_WORDS[column.norm]}), the share of {', '.join(map(str, images))} {dataset_title(dataset)} test "
              f"images that no attack broke is {listed} ({_seeds_phrase(cells)}{common}; 95% interval).")]
    mine = [t for t in tests if t.column.key == column.key and t.test is not None]
    if mine and len(mine) <= 4:
        parts.append("; ".join(f"{name[t.lrnet]} minus {name[t.resnet]}: {100 * t.test.pooled.difference:+.1f} "
                               f"points ({_significance(t)})" for t in mine) + ".")
    elif mine:
        significant = sum(t.test.significant for t in mine)
        parts.append(f"{significant} of the {len(mine)} LR-Net/ResNet differences in this column are significant "
                     "after Holm's adjustment (Which differences are significant).")
    if any(a.verdict != "not measured" for a in assessments):
        parts.append(claims_summary(rows, assessments, name))
    return " ".join(parts) + "\n"


def claims_summary(rows: list[Row], assessments: list[Assessment], name: dict[str, str]) -> str:
    """One sentence: how many of the paper's claims are supported, contradicted, indicative, open and why."""
    count = {v: sum(a.verdict == v for a in assessments) for v in VERDICTS}
    text = (f"Of the paper's {len(assessments)} Table 9 claims, this data supports {count['supported']} and "
            f"contradicts {count['contradicted']}")
    if count["indicative"]:
        verb = "is" if count["indicative"] == 1 else "are"
        text += f"; {count['indicative']} {verb} only indicative (one training seed)"
    unresolved = [a for a in assessments if a.verdict == "not resolved"]
    if unresolved:
        reasons = " ".join(a.reason or "" for a in unresolved)
        unconverged = [name[r.network] for r in rows if f"{r.network} not trained to convergence" in reasons]
        text += f"; {len(unresolved)} {'is' if len(unresolved) == 1 else 'are'} not resolved"
        if unconverged:
            names = ", ".join(unconverged[:-1]) + (" and " if len(unconverged) > 1 else "") + unconverged[-1]
            text += (f" ({'partly ' if any(not a.reason for a in unresolved) else ''}because {names} had not finished "
                     "training: Training convergence)")
    if count["not measured"]:
        text += f"; {count['not measured']} {'is' if count['not measured'] == 1 else 'are'} not measured here"
    return text + "."


# ---------------------------------------------------------------- the page


def all_figures_md(rows: list[Row], entries: list[Entry]) -> str:
    """Every figure column with its spread and each seed's figure, per training kind."""
    shown = shown_columns(rows)
    parts = []
    for training, title in (("adversarial", "### Adversarial training\n"),
                            ("regular", "### Regular training under the same attacks\n")):
        columns = [c for c in shown if c.training == training]
        cols = [Col("network", "network"), Col("origin", "trained by")] + [Col(c.key, c.title) for c in columns]
        data = []
        for r in rows:
            line: dict[str, Any] = {"network": r.network, "origin": origin_text(r, entries)}
            for c in columns:
                cell = r.cells[c.key]
                text = cell_text(cell, notes=False)
                if len(cell.seeds) > 1:
                    text += ": " + ", ".join(pct(s.figure.accuracy) for s in cell.seeds)
                line[c.key] = text
            data.append(line)
        parts += [title, to_markdown(frame(data, cols), cols)]
    return "\n".join(parts)


def how_md(entries: list[Entry], l2: bool) -> str:
    """How the figures are computed: the worst case, the intervals, targeted success, the marks."""
    text = ("Top-1 accuracy in %, as in Table 9 of Hu et al. (ICCV 2019). Every robust figure is the per-image worst "
            f"case over every attack run at eps {budgets_text(entries) or '?'} (suite attacks, AutoAttack components, "
            "restarts and the checks' attacks at that eps): an image counts as robust only if its clean prediction "
            "and every adversarial image found for it are right. Brackets give the 95% interval: Wilson over the "
            "images for one training seed, t over seeds from 3 seeds, Wilson over the images pooled over seeds for 2; "
            "± is the standard deviation over training seeds. Targeted success is the attacker's view (some targeted "
            "attack reached the image's target); 100 minus it is the share of images for which no targeted attack "
            "reached its target. A footnote marks a figure the attack-convergence checks say is not final, or a "
            "model whose training had not finished learning (Training convergence). 'trained by' says whether "
            "lrrobust trained the model (its recipe under Runs) or it came from outside (eval-attack --model-py or "
            "--torchvision, lrrobust.evaluate; its training kind is the user's word), with the SHA-256 of its file; "
            "only lrrobust's LR-Net and ResNet rows enter the paired tests.\n")
    if l2:
        text += ("\nTwo threat models, two sets of columns: the columns marked L2 take each model's L2 evaluation "
                 "alone, the other robust columns its L-inf evaluation alone, so figures of the two norms never "
                 "share a worst case (nor a paired test); clean accuracy comes from the L-inf evaluation where a "
                 "model has both.\n")
    return text


def significance_md(tests: list[Comparison]) -> str:
    """The paired tests as a table, and the plain sentence the reader wants: which differences are real."""
    if not tests:
        return "No LR-Net and ResNet rows to compare.\n"
    family = next((t.test.family_size for t in tests if t.test is not None), 0)
    significant, not_significant = [], []
    for t in tests:
        if t.test is None:
            continue
        what = f"{t.column.title}: {t.lrnet} vs {t.resnet} ({100 * t.test.pooled.difference:+.1f} points, " \
               f"{_significance(t)})"
        (significant if t.test.significant else not_significant).append(what)
    intro = ("Each LR-Net row against each ResNet row, per column: an exact McNemar test on the same images per "
             "training seed, combined over seeds as docs/evaluation.md explains. A difference needs the pooled test, "
             "the signs of the seeds and, from 3 seeds, a t-test over seeds to agree, so its p is the largest of "
             "theirs ('p (raw)', with the test it came from). The report's "
             f"{family} tests are one family: Holm's step-down adjustment keeps the chance of any false "
             "'significant' among them at 5% whatever their dependence (they share models and images), where "
             "Benjamini-Hochberg would bound only the expected share of false ones; 'p (Holm)' is the adjusted p "
             "the verdict uses.\n")
    return "\n".join([intro, tests_markdown(tests),
                      "Significant at 5% after Holm: " + ("; ".join(significant) if significant else "none") + ".\n",
                      "Not significant: " + ("; ".join(not_significant) if not_significant else "none") + ".\n"])


def render_markdown(entries: list[Entry], rows: list[Row], tests: list[Comparison], plots: dict[str, str | None],
                    extra_sections: list[str] | None = None) -> str:
    dataset = entries[0].dataset if entries else "?"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    evaluated = [e for e in entries if e.summary is not None]
    l2 = any(c.norm == "l2" for c in shown_columns(rows))
    models = len({(e.network, e.training, e.seed) for e in entries})  # an L-inf and an L2 evaluation: one model
    assessments = assess(rows, tests)
    claims_shown = any(a.verdict != "not measured" for a in assessments)
    footnotes = Footnotes()
    table = table9_md(rows, entries, footnotes)
    parts = [f"# Robustness to white-box attacks on {dataset_title(dataset)} (Table 9 style)\n",
             verdict_md(rows, entries, tests, assessments),
             "## Table 9\n", table, caption(rows, entries)]
    if footnotes.texts:
        parts.append(footnotes.markdown())
    if dataset != "imagenet" and claims_shown:
        parts.append("The paper's figures are ImageNet's: they appear beside these only as the differences its claims "
                     "state (The paper's claims).\n")
    parts.append(f"Generated by `lrrobust report` on {now} from {models} trained model{'s' if models != 1 else ''}"
                 f"{f' ({len(evaluated)} evaluations)' if l2 else ''}.\n")
    parts += ["## All figures, with their spread over seeds\n", all_figures_md(rows, entries)]
    parts += ["## Which differences are significant\n", significance_md(tests)]
    if claims_shown:
        parts.append(claims_md(rows, tests))
    for section in extra_sections or []:
        parts.append(section)
    parts += ["## How the figures are computed\n", how_md(entries, l2)]
    parts.append("## Plots\n")
    figures = [("attacks", "Accuracy under each attack and the worst case"), ("steps", "Accuracy against PGD steps"),
               ("eps", "Accuracy against eps" + (" (L-inf)" if l2 else ""))]
    if l2:
        figures.append(("eps_l2", "Accuracy against eps (L2)"))
    for axis, title in figures:
        parts.append(f"### {title}\n")
        if plots.get(axis):
            parts.append(f"![{title}]({plots[axis]})\n")
        elif axis == "attacks":
            parts.append("No evaluation.\n")
        else:
            parts.append("No evaluation varied " + ("the number of steps" if axis == "steps" else "eps")
                         + ": run eval-attack with --checks (or the fd_steps suite) to get this plot.\n")
    parts.append("Bars and lines are means over training seeds with their 95% intervals; each dot is one seed. In "
                 "the curves, the dotted line of a model's colour is its worst case over every attack at the "
                 "evaluation's eps, Table 9's figure.\n")
    parts += ["## Training convergence\n",
              ("Did each network finish learning before it was compared? From each run's metrics.jsonl: in every "
               "learning-rate phase of 3 or more epochs that ends in a cut, and in the final one, the best validation "
               "figure of the last two epochs must beat the best before them by no more than the plateau threshold, "
               "and no validation figure may fall by more than the drop threshold between epochs at one lr "
               "(lrrobust/training/convergence.py says why). A claim with a flagged side is not resolved.\n"),
              convergence_md(entries)]
    parts += ["## Checks against gradient masking\n", checks_found(entries) + "\n", checks_md(entries),
              (f"Diagnostics on clean images, per evaluation; a sign of masking is a relation softmax whose median "
               f"largest weight exceeds {SATURATED_WEIGHT} in some LR layer, input gradients exactly zero on more than "
               f"{100 * ZERO_GRADIENT_SHARE:.0f}% of the images, or a PGD -> APGD-CE drop more than "
               f"{DROP_EXCESS_POINTS:g} points above the median drop of the other networks under the same training "
               "(lrrobust/evaluation/diagnostics.py gives the rule and its reasons).\n"), diagnostics_md(entries)]
    parts += ["## Every attack, per model and seed\n",
              ("Each attack's own robust accuracy (clean right and attacked image right); for AutoAttack and restarts, "
               "the accuracy left after each stage. table9_attacks.csv holds the same rows.\n"), detail_md(entries)]
    parts += ["## Runs\n", "Everything each figure depends on; `manifest.json` holds all of it.\n",
              manifest_md(manifest(entries))]
    return "\n".join(parts)

