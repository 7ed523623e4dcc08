"""The report's files: table9.md, table9.csv (one row per network), table9_attacks.csv (every single attack and
AutoAttack component), table9_tests.csv (the paired tests) and manifest.json. Percentages throughout.

Every row says who trained its model: lrrobust (its recipe under Runs) or someone outside (``lrrobust.external``:
the kind, with a 12-character SHA-256 prefix in the markdown and the full hash in the CSV and manifest).

Budgets are written by ``format_eps``: L-inf in 1/255 units, L2 as the plain radius. The L2 columns, the per-attack
``norm`` and ``eps`` columns and the L2 plot appear only when some model has an L2 evaluation, so a report of
L-inf evaluations reads as it did before the L2 threat model."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from lrrobust.core.numbers import format_eps
from lrrobust.evaluation.diagnostics import (
    DROP_EXCESS_POINTS,
    SATURATED_WEIGHT,
    ZERO_GRADIENT_SHARE,
    drop_signs,
    masking_line,
    pgd_apgd_drop,
)
from lrrobust.evaluation.stats import format_p
from lrrobust.io import csv_text
from lrrobust.report.claims import assess, claims_md
from lrrobust.report.collect import Entry, entry_order, network_name
from lrrobust.report.table9 import Cell, Comparison, Row, shown_columns

# ---------------------------------------------------------------- cells


def pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


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


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _r(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def _of_row(row: Row, entries: list[Entry]) -> list[Entry]:
    return [e for e in entries if e.network == row.network]


def evaluation_label(e: Entry) -> str:
    """' (L2 evaluation)' beside a model's name for its L2 evaluation; '' for the L-inf one."""
    return " (L2 evaluation)" if e.norm == "l2" else ""


def budgets_text(entries: list[Entry]) -> str:
    """The evaluations' budgets: '51/255'; with L2 evaluations too, '51/255 (L-inf) and 0.5 (L2)'."""
    linf = ", ".join(format_eps(x) for x in sorted({e.summary.suite_eps for e in entries if e.norm == "linf"}))
    l2 = ", ".join(format_eps(x, "l2") for x in sorted({e.summary.suite_eps for e in entries if e.norm == "l2"}))
    return f"{linf} (L-inf) and {l2}" if linf and l2 else linf or l2


def origin_sha256(origin: dict[str, Any]) -> str:
    """What identifies an outside model: its file's SHA-256 (the .py file, the weights file), else its weights'."""
    return origin.get("sha256") or origin.get("state_sha256") or ""


def origin_text(row: Row, entries: list[Entry]) -> str:
    """'lrrobust', or 'outside: model-py, sha256 dd125c65c3b2' (each model of the row)."""
    if not row.outside:
        return "lrrobust"
    mine = _of_row(row, entries)
    kinds = sorted({e.origin["kind"] for e in mine})
    hashes = sorted({origin_sha256(e.origin)[:12] for e in mine})
    return f"outside: {', '.join(kinds)}, sha256 {', '.join(hashes)}"


# ---------------------------------------------------------------- CSV


def table_csv(rows: list[Row], entries: list[Entry]) -> str:
    """table9.csv: per network, every column with its interval, images, seeds and spread."""
    per_column = ("", "_low", "_high", "_interval", "_images", "_seeds", "_sd", "_min", "_max", "_per_seed", "_mixed",
                  "_missing")
    shown = shown_columns(rows)
    l2 = any(c.norm == "l2" for c in shown)
    columns = ["network", "model", "origin", "origin_sha256", "origin_path", "dataset", "suite", "eps_255"]
    columns += ["eps_l2"] if l2 else []
    columns += [c.key + suffix for c in shown for suffix in per_column]
    columns += ["paper_adv_clean", "paper_adv_targeted", "paper_adv_untargeted", "paper_reg_clean", "notes"]
    suites = sorted({e.summary.suite for e in entries if e.summary})
    eps = sorted({round(e.summary.suite_eps * 255, 4) for e in entries if e.norm == "linf"})
    eps_l2 = sorted({e.summary.suite_eps for e in entries if e.norm == "l2"})
    out = []
    for row in rows:
        mine = _of_row(row, entries)
        data: dict[str, Any] = {"network": row.network, "model": row.model, "dataset": entries[0].dataset,
                                "origin": ", ".join(sorted({e.origin["kind"] for e in mine})),
                                "suite": ", ".join(suites), "eps_255": ", ".join(str(e) for e in eps),
                                "eps_l2": ", ".join(f"{e:g}" for e in eps_l2)}
        if row.outside:  # per model of the row (training kind: hash), the full hashes
            data["origin_sha256"] = "; ".join(f"{e.training}: {origin_sha256(e.origin)}" for e in mine)
            data["origin_path"] = "; ".join(f"{e.training}: {e.origin.get('path') or e.origin['name']}" for e in mine)
        notes = []
        for column in shown:
            cell = row.cells[column.key]
            k = column.key
            if not cell.seeds:
                data[k + "_missing"] = cell.missing
                continue
            summary = cell.summary
            low, high, kind = cell.interval()
            data.update({k: _r(summary.mean), k + "_low": _r(low), k + "_high": _r(high), k + "_interval": kind,
                         k + "_images": cell.images, k + "_seeds": len(cell.seeds), k + "_sd": _r(summary.std),
                         k + "_min": _r(summary.minimum), k + "_max": _r(summary.maximum),
                         k + "_per_seed": "; ".join(f"seed {s.seed}: {pct(s.figure.accuracy)} ({s.figure.correct}/"
                                                    f"{s.figure.n})" for s in cell.seeds),
                         k + "_mixed": int(cell.mixed)})
            notes += cell.notes
        for key, value in row.paper.items():
            data["paper_" + key] = value
        data["notes"] = "; ".join(notes)
        out.append(data)
    return csv_text(columns, out)


ATTACK_COLUMNS = ["network", "training", "seed", "attack", "stage", "kind", "targeted", "eps_255", "steps",
                  "restarts", "source", "accuracy", "accuracy_low", "accuracy_high", "correct", "num_samples",
                  "success_rate", "evaluation"]


def attack_columns(rows: list[dict[str, Any]]) -> list[str]:
    """table9_attacks.csv's header: with L2 attacks among the rows, ``norm`` and the plain ``eps`` too (an L2 row
    leaves eps_255 empty)."""
    if all(r["norm"] == "linf" for r in rows):
        return ATTACK_COLUMNS
    at = ATTACK_COLUMNS.index("eps_255")
    return ATTACK_COLUMNS[:at] + ["norm", "eps"] + ATTACK_COLUMNS[at:]


def attack_rows(entries: list[Entry]) -> list[dict[str, Any]]:
    """Every single attack's own figure, and each stage (restart, AutoAttack component) of the multi-stage ones."""
    out = []
    for e in sorted(entries, key=entry_order):
        if e.summary is None:
            continue
        for a in e.summary.attacks:
            norm = a.get("norm", "linf")
            base = {"network": e.network, "training": e.training, "seed": e.seed, "attack": a["attack"],
                    "kind": a["kind"], "targeted": a["targeted"], "norm": norm, "eps": a["eps"],
                    "eps_255": a["eps_255"] if norm == "linf" else None, "steps": a.get("steps"),
                    "restarts": a.get("restarts"), "source": a.get("source"), "evaluation": e.source,
                    "num_samples": a["num_samples"]}
            out.append({**base, "stage": "all", "accuracy": _r(a["accuracy"]), "accuracy_low": _r(a["accuracy_low"]),
                        "accuracy_high": _r(a["accuracy_high"]), "correct": a["correct"],
                        "success_rate": _r(a["success_rate"])})
            stages = a.get("stages", [])
            if len(stages) > 1:
                for s in stages:
                    out.append({**base, "stage": f"after {s['stage']}", "accuracy": _r(s["accuracy"]),
                                "accuracy_low": _r(s["low"]), "accuracy_high": _r(s["high"]), "correct": s["correct"]})
    return out


TEST_COLUMNS = ["column", "lrnet", "resnet", "seeds", "difference", "pooled_p_value", "seeds_p_value", "consistent",
                "significant", "verdict", "per_seed_p_values", "reason"]


def test_rows(tests: list[Comparison]) -> list[dict[str, Any]]:
    out = []
    for t in tests:
        row: dict[str, Any] = {"column": t.column.key, "lrnet": t.lrnet, "resnet": t.resnet,
                               "seeds": " ".join(str(s) for s in t.seeds), "reason": t.reason}
        if t.test is not None:
            row.update({"difference": _r(t.test.pooled.difference), "pooled_p_value": t.test.pooled.p_value,
                        "seeds_p_value": t.test.seeds_p_value, "consistent": int(t.test.consistent),
                        "significant": int(t.test.significant), "verdict": t.test.verdict,
                        "per_seed_p_values": " ".join(f"{p.p_value:.4g}" for p in t.test.per_seed)})
        out.append(row)
    return out


# ---------------------------------------------------------------- markdown


def significance_md(tests: list[Comparison]) -> str:
    """The paired tests as a table and the plain sentence the reader wants: which differences are real."""
    if not tests:
        return "No LR-Net and ResNet rows to compare.\n"
    table = []
    significant, not_significant = [], []
    for t in tests:
        what = f"{t.column.title}: {t.lrnet} vs {t.resnet}"
        if t.test is None:
            table.append([t.column.title, t.lrnet, t.resnet, "", "", f"no test ({t.reason})"])
            continue
        diff = 100 * t.test.pooled.difference
        table.append([t.column.title, t.lrnet, t.resnet, " ".join(str(s) for s in t.seeds), f"{diff:+.1f}",
                      t.test.verdict])
        (significant if t.test.significant else not_significant).append(f"{what} ({diff:+.1f} points, "
                                                                        f"{format_p(t.test.pooled.p_value)})")
    parts = [_md_table(["column", "LR-Net", "ResNet", "training seeds", "LR-Net minus ResNet (points)", "verdict"],
                       table)]
    parts.append("Significant at 5%: " + ("; ".join(significant) if significant else "none") + ".\n")
    parts.append("Not significant at 5%: " + ("; ".join(not_significant) if not_significant else "none") + ".\n")
    return "\n".join(parts)


def detail_md(entries: list[Entry]) -> str:
    """Per model and seed: the worst case and every attack's own figure, AutoAttack components included."""
    parts = []
    rows = attack_rows(entries)
    for e in sorted(entries, key=entry_order):
        if e.summary is None:
            continue
        w = e.summary.worst_case.figures()
        parts.append(f"### {e.network}, {e.training} training, {'from outside' if e.outside else f'seed {e.seed}'}"
                     f"{evaluation_label(e)}\n")
        worst = ", ".join(f"{k.replace('_', ' ')} {pct(f.accuracy)} [{pct(f.interval[0])}, {pct(f.interval[1])}] "
                          f"({f.correct}/{f.n})" for k, f in w.items() if f is not None)
        parts.append(f"Worst case at eps {format_eps(e.summary.suite_eps, e.norm)}: {worst}.\n")
        mine = [r for r in rows if r["evaluation"] == e.source]
        parts.append(_md_table(  # an L-inf evaluation's budgets in 1/255 units, an L2 one's as radii
            ["attack", "stage", "kind", "targeted", "eps/255" if e.norm == "linf" else "eps (L2)", "steps",
             "restarts", "acc % [95% CI]", "success %"],
            [[r["attack"], r["stage"], r["kind"], "yes" if r["targeted"] else "no",
              f"{r['eps_255']:.3g}" if r["norm"] == "linf" else f"{r['eps']:.3g}",
              str(r["steps"] or ""), str(r["restarts"] or ""),
              f"{r['accuracy']:.1f} [{r['accuracy_low']:.1f}, {r['accuracy_high']:.1f}]",
              "" if r.get("success_rate") is None else f"{r['success_rate']:.1f}"] for r in mine]))
    return "\n".join(parts) if parts else "No evaluation.\n"


def convergence_md(entries: list[Entry]) -> str:
    """Per trained model, the training-convergence check (``lrrobust.training.convergence``) as the checks show
    theirs: a status and what the validation figures did."""
    rows, seen = [], set()
    for e in sorted(entries, key=entry_order):
        key = (e.network, e.training, e.seed)
        if key in seen:  # a model's L-inf and L2 evaluations: one training run
            continue
        seen.add(key)
        result = e.convergence or {"status": "n/a", "verdict": "n/a: no training record"}
        rows.append([e.network, e.training, "–" if e.outside else str(e.seed), f"**{result['status']}**",
                     result["verdict"]])
    return _md_table(["network", "training", "seed", "status", "verdict"], rows)


def sweep_md(record: dict[str, Any]) -> str:
    """The study's recipe sweep (``lrrobust.sweep``, its sweep.json): every trial's validation figures and
    training-convergence verdict, and the recipe each network and training kind trained its seeds with."""
    trials = record["trials"]
    grid = "; ".join(f"{k} {', '.join(str(v) for v in values)}" for k, values in record["grid"].items())
    size = next((t["validation"].get("size") for t in trials if t.get("validation")), None)
    rows = []
    for t in trials:
        best, convergence = t["best"], t["convergence"]
        rows.append([network_name({"name": t["network"]}), t["training"],
                     ", ".join(f"{k} {v}" for k, v in t["recipe"].items()),
                     f"{pct(t['value'])} ({t['metric']}, epoch {best['epoch']})", pct(best["val_acc"]),
                     f"**{convergence['status']}** {convergence['verdict']}", "✓" if t["chosen"] else ""])
    n = record["trials_per_network"]
    intro = (f"Before the seeds were trained, every network and training kind tried the same {n} recipe"
             f"{'s' if n != 1 else ''} ({grid}): one training run each, with training seed {record['seed']}, which "
             "is none of the study's seeds (the reported models are not the runs that won the selection), judged on "
             f"the validation split{f' ({size} images)' if size else ''} by the figure best.pt is chosen by at the "
             "trial's best epoch: clean accuracy for regular training, accuracy under the validation PGD for "
             "adversarial training. Every seed then trained with the recipe marked ✓, the highest figure of its "
             "network and training kind (a tie goes to the recipe listed first). Figures in %; sweep.json holds "
             "every epoch's.\n")
    header = ["network", "training", "recipe", "chosen by", "clean val at that epoch", "training convergence",
              "chosen"]
    return "## Recipe sweep on the validation split\n\n" + intro + "\n" + _md_table(header, rows)


def diagnostics_md(entries: list[Entry]) -> str:
    """One line per evaluation: 'no sign of masking' or what the diagnostics saw
    (``lrrobust.evaluation.diagnostics``; the PGD -> APGD-CE drop compared within a training kind and norm)."""
    evaluated = sorted((e for e in entries if e.summary is not None), key=entry_order)
    drops: dict[tuple[str, str | None], dict[str, tuple[str, float | None]]] = {}
    for e in evaluated:
        drops.setdefault((e.training, e.norm), {})[e.source] = (
            e.network, pgd_apgd_drop(e.summary.attacks, e.summary.suite_eps))
    flagged = {source: text for group in drops.values() for source, text in drop_signs(group).items()}
    lines = []
    for e in evaluated:
        who = f"{e.network}, {e.training} training, {'from outside' if e.outside else f'seed {e.seed}'}"
        lines.append(f"- {who}{evaluation_label(e)}: {masking_line(e.summary.diagnostics, flagged.get(e.source))}")
    return "\n".join(lines) + "\n" if lines else "No evaluation.\n"


def checks_md(entries: list[Entry]) -> str:
    rows = []
    for e in sorted(entries, key=entry_order):
        for c in (e.summary.checks if e.summary else []):
            rows.append([e.network, e.training + evaluation_label(e), "–" if e.outside else str(e.seed), c["claim"],
                         f"**{c['status']}**", c["detail"]])
    if not rows:
        return "No evaluation ran the checks (eval-attack --checks).\n"
    return _md_table(["network", "training", "seed", "check", "status", "figures"], rows)


def _manifest_md(items: list[dict[str, Any]]) -> str:
    lines = []
    for item in items:
        cfg = item["training_config"] or {}
        man = item["training_manifest"] or {}
        origin = item["origin"]
        label = " (L2 evaluation)" if (item.get("evaluation") or {}).get("norm") == "l2" else ""
        if origin["kind"] != "lrrobust":
            lines.append(f"### {item['network']}, {item['training']} training, from outside{label}\n")
            lines.append(_outside_md(origin))
            lines.append(_evaluated_md(item.get("evaluation"), None))
            lines.append("")
            continue
        lines.append(f"### {item['network']}, {item['training']} training, seed {item['seed']}{label}\n")
        training = (f"- training: {cfg.get('epochs')} epochs, batch {cfg.get('batch_size')}, lr {cfg.get('lr')}, "
                    f"seed {cfg.get('seed')}, preset {cfg.get('preset')}")
        if cfg.get("adversarial"):
            step = cfg.get("step_size", cfg.get("alpha"))
            training += (f"; {'targeted' if cfg.get('targeted') else 'untargeted'} PGD-{cfg.get('steps')}, "
                         f"eps {cfg.get('eps')}, step {step}")
        lines.append(training)
        lines.append(f"- trained with lrrobust {man.get('lrrobust_version')}, torch {man.get('torch_version')}, "
                     f"commit {str(man.get('git_commit'))[:12]}{' (dirty)' if man.get('git_dirty') else ''}, "
                     f"on {man.get('device')}")
        ev = item.get("evaluation")
        checkpoint = ev and (f"checkpoint {Path(str(ev['checkpoint'])).name} (epoch {ev['epoch']}, sha256 "
                             f"{str(ev['sha256'])[:12]})")
        lines.append(_evaluated_md(ev, checkpoint))
        lines.append("")
    return "\n".join(lines)


def _outside_md(origin: dict[str, Any]) -> str:
    """Where a model from outside came from, every hash in full."""
    kind = origin["kind"]
    if kind == "model-py":
        where = f"`{origin['path']}`, factory `{origin['factory']}()`, file sha256 {origin['sha256']}"
    elif kind == "torchvision":
        where = f"torchvision `{origin['name']}`, weights {origin.get('weights')}"
        where += f" (sha256 {origin['sha256']})" if origin.get("sha256") else ""
    else:
        where = f"an in-memory `{origin.get('class')}` (lrrobust.evaluate)"
    norm = f"normalised by lrrobust with mean {origin['mean']}, std {origin['std']}" if origin.get("mean") else \
        "taking [0, 1] images itself"
    return (f"- from outside lrrobust ({kind}): {where}; weights sha256 {origin.get('state_sha256')}; {norm}; "
            f"declared {origin.get('training')} training; no recipe recorded")


def _evaluated_md(ev: dict[str, Any] | None, checkpoint: str | None) -> str:
    if not ev:
        return "- not evaluated"
    prov = ev.get("provenance") or {}
    head = (f"- evaluated: suite {ev['suite']}, {ev['split']} split, {ev['num_samples']} images, seed {ev['seed']}, "
            f"{ev['device']} x{ev['world_size']}; {checkpoint + '; ' if checkpoint else ''}"
            f"lrrobust {prov.get('lrrobust_version')}, torch {prov.get('torch_version')}, torchattacks "
            f"{prov.get('torchattacks_version')}, commit {str(prov.get('git_commit'))[:12]}")
    return "\n".join([head] + [f"  - {line}" for line in ev["attacks"]])


def manifest(entries: list[Entry]) -> list[dict[str, Any]]:
    """Everything each figure depends on: training config and provenance, evaluation settings and provenance (an L2
    evaluation says ``norm: l2``; without it an evaluation is L-inf, as in summary.json)."""
    from lrrobust.attacks import KINDS

    out = []
    for e in sorted(entries, key=entry_order):
        item: dict[str, Any] = {"network": e.network, "training": e.training, "seed": e.seed, "source": e.source,
                                "origin": e.origin, "training_config": e.run_config, "training_manifest": e.run_manifest,
                                "training_convergence": e.convergence}
        if e.summary is not None:
            s, raw = e.summary, e.summary.raw
            described = [KINDS[a["kind"]].from_settings(a["attack"], a).describe() + f" ({a['role']})"
                         for a in s.attacks]
            item["evaluation"] = {
                "suite": s.suite, "dataset": s.dataset, "split": s.split, "seed": s.seed, "eps": s.suite_eps,
                "num_samples": s.num_samples, "indices_sha256": s.indices_sha256, "batch_size": raw.get("batch_size"),
                "device": raw.get("device"), "world_size": raw.get("world_size"),
                "checkpoint": s.model.get("checkpoint"), "sha256": s.model.get("sha256"), "epoch": s.model.get("epoch"),
                "provenance": raw.get("provenance"), "attacks": described,
            }
            if e.norm != "linf":
                item["evaluation"]["norm"] = e.norm
        out.append(item)
    return out


def render_markdown(entries: list[Entry], rows: list[Row], tests: list[Comparison], plots: dict[str, str | None],
                    extra_sections: list[str] | None = None) -> str:
    dataset = entries[0].dataset if entries else "?"
    imagenet = dataset == "imagenet"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    evaluated = [e for e in entries if e.summary is not None]
    shown = shown_columns(rows)
    l2 = any(c.norm == "l2" for c in shown)
    images = sorted({e.summary.num_samples for e in evaluated})
    splits = sorted({e.summary.split for e in evaluated})
    models = len({(e.network, e.training, e.seed) for e in entries})  # an L-inf and an L2 evaluation: one model
    intro = (f"Generated by `lrrobust report` on {now} from {models} trained model{'s' if models != 1 else ''}"
             f"{f' ({len(evaluated)} evaluations)' if l2 else ''}. Top-1 accuracy in %, as in Table 9 of Hu et al. (ICCV 2019). "
             f"Every robust figure is the per-image worst case over every attack run at eps "
             f"{budgets_text(evaluated) or '?'} (suite attacks, AutoAttack components, restarts "
             f"and the checks' attacks at that eps): an image counts as robust only if its clean prediction and every "
             f"adversarial image found for it are right. Brackets give the 95% interval (Wilson over the "
             f"{', '.join(map(str, images)) or '?'} {'/'.join(splits) or 'test'} images of one training seed; t over "
             "seeds from 3 seeds); ± is the standard deviation over training seeds. Targeted success is the "
             "attacker's view (some targeted attack reached the image's target); 100 minus it is the share of images "
             "for which no targeted attack reached its target. ⚠ marks a figure the convergence checks say is not "
             "final, or a model whose training had not finished learning (Training convergence); † a cell measured differently from the others (--allow-mixed). 'trained by' says whether "
             "lrrobust trained the model (its recipe under Runs) or it came from outside (eval-attack --model-py or "
             "--torchvision, lrrobust.evaluate; its training kind is the user's word), with the SHA-256 of its file; "
             "only lrrobust's LR-Net and ResNet rows enter the paired tests.\n")
    parts = [f"# Robustness to white-box attacks on {dataset} (Table 9 style)\n", intro]
    if l2:
        parts.append("Two threat models, two sets of columns: the columns marked L2 take each model's L2 evaluation "
                     "alone, the other robust columns its L-inf evaluation alone, so figures of the two norms never "
                     "share a worst case (nor a paired test); clean accuracy comes from the L-inf evaluation where a "
                     "model has both.\n")
    main = [c for c in shown if c.in_table9]
    header = ["network", "trained by"] + [c.title for c in main]
    if imagenet:
        header += ["paper: " + c.title for c in main if c.key in ("adv_clean", "adv_targeted", "adv_untargeted",
                                                                  "reg_clean")]
    body = []
    for r in rows:
        line = [r.network, origin_text(r, entries)] + [cell_text(r.cells[c.key]) for c in main]
        if imagenet:
            line += [str(r.paper[c.key]) if c.key in r.paper else "– (not in the paper)" for c in main
                     if c.key in ("adv_clean", "adv_targeted", "adv_untargeted", "reg_clean")]
        body.append(line)
    parts += ["## Table 9\n", _md_table(header, body)]
    if not imagenet:
        parts.append(f"The paper's figures are for ImageNet; they are not put beside these {dataset} results.\n")
    parts += ["## Which differences are significant\n",
              ("Each LR-Net row against each ResNet row, per column: an exact McNemar test on the same images per "
              "training seed, combined over seeds as docs/evaluation.md explains (significant only when the pooled "
              "test is, no seed points the other way and, from 3 seeds, a t-test over seeds agrees).\n"),
              significance_md(tests)]
    if any(a.verdict != "not measured" for a in assess(rows, tests)):
        parts.append(claims_md(rows, tests))
    regular = [c for c in shown if c.training == "regular"]
    parts += ["## Regular training under the same attacks\n",
              _md_table(["network", "trained by"] + [c.title for c in regular],
                        [[r.network, origin_text(r, entries)] + [cell_text(r.cells[c.key]) for c in regular]
                         for r in rows])]
    for section in extra_sections or []:
        parts.append(section)
    figures = [("steps", "Accuracy against PGD steps"), ("eps", "Accuracy against eps")]
    if l2:
        figures = [("steps", "Accuracy against PGD steps"), ("eps", "Accuracy against eps (L-inf)"),
                   ("eps_l2", "Accuracy against eps (L2)")]
    for axis, title in figures:
        parts.append(f"## {title}\n")
        if plots[axis]:
            parts.append(f"![{title}]({plots[axis]})\n")
        else:
            parts.append("No evaluation varied " + ("the number of steps" if axis == "steps" else "eps")
                         + ": run eval-attack with --checks (or the fd_steps suite) to get this plot.\n")
    parts += ["## Training convergence\n",
              ("Did each network finish learning before it was compared? From each run's metrics.jsonl: in every "
               "learning-rate phase of 3 or more epochs that ends in a cut, and in the final one, the best validation "
               "figure of the last two epochs must beat the best before them by no more than the plateau threshold, "
               "and no validation figure may fall by more than the drop threshold between epochs at one lr "
               "(lrrobust/training/convergence.py says why). A claim with a flagged side is not resolved.\n"),
              convergence_md(entries)]
    parts += ["## Checks against gradient masking\n",
              ("n/a: the model classifies too few images correctly for the check to mean anything "
              "(thresholds in docs/evaluation.md).\n"), checks_md(entries),
              (f"Diagnostics on clean images, per evaluation; a sign of masking is a relation softmax whose median "
               f"largest weight exceeds {SATURATED_WEIGHT} in some LR layer, input gradients exactly zero on more than "
               f"{100 * ZERO_GRADIENT_SHARE:.0f}% of the images, or a PGD -> APGD-CE drop more than "
               f"{DROP_EXCESS_POINTS:g} points above the median drop of the other networks under the same training "
               "(lrrobust/evaluation/diagnostics.py gives the rule and its reasons).\n"), diagnostics_md(entries)]
    parts += ["## Every attack, per model and seed\n",
              ("Each attack's own robust accuracy (clean right and attacked image right); for AutoAttack and restarts, "
              "the accuracy left after each stage. table9_attacks.csv holds the same rows.\n"), detail_md(entries)]
    parts += ["## Runs\n", "Everything each figure depends on; `manifest.json` holds all of it.\n",
              _manifest_md(manifest(entries))]
    return "\n".join(parts)
