"""The report's sections below its first screen: every attack per model and seed, training convergence, the
gradient-masking checks and diagnostics, the recipe sweep, the learnt geometric priors (Fig. 4), and the runs
(``manifest.json`` and its markdown).

``manifest.json`` records every path relative to the working directory the report was written from (a path the
run recorded relative to its own working directory is kept as the run recorded it), and the program of a command
line by its name, so a committed report names no machine's directories.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

from lrrobust.core.numbers import format_eps
from lrrobust.core.provenance import relative_path
from lrrobust.evaluation.diagnostics import drop_signs, masking_line, pgd_apgd_drop
from lrrobust.report.collect import Entry, entry_order, network_name
from lrrobust.report.tables import attack_rows, attacks_markdown, md_table, pct


def evaluation_label(e: Entry) -> str:
    """' (L2 evaluation)' beside a model's name for its L2 evaluation; '' for the L-inf one."""
    return " (L2 evaluation)" if e.norm == "l2" else ""


def who(e: Entry) -> str:
    """'LR-Net-26, adversarial training, seed 0' (or 'from outside'), with the L2 label."""
    return (f"{e.network}, {e.training} training, {'from outside' if e.outside else f'seed {e.seed}'}"
            f"{evaluation_label(e)}")


def detail_md(entries: list[Entry]) -> str:
    """Per model and seed: the worst case and every attack's own figure, AutoAttack components included."""
    parts = []
    rows = attack_rows(entries)
    for e in sorted(entries, key=entry_order):
        if e.summary is None:
            continue
        w = e.summary.worst_case.figures()
        parts.append(f"### {who(e)}\n")
        worst = ", ".join(f"{k.replace('_', ' ')} {pct(f.accuracy)} [{pct(f.interval[0])}, {pct(f.interval[1])}] "
                          f"({f.correct}/{f.n})" for k, f in w.items() if f is not None)
        parts.append(f"Worst case at eps {format_eps(e.summary.suite_eps, e.norm)}: {worst}.\n")
        # an L-inf evaluation's budgets in 1/255 units, an L2 one's as radii
        parts.append(attacks_markdown([r for r in rows if r["evaluation"] == e.source], e.norm == "l2"))
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
    return md_table(["network", "training", "seed", "status", "verdict"], rows)


def priors_md(drawn: dict[str, list[Path]], out: Path) -> str:
    """Fig. 4 of each LR-Net run: its overview shown and its per-layer maps linked, from ``drawn`` (run name -> the
    files ``lrrobust.figures.prior.plot_priors`` drew under the report directory ``out``, the overview first)."""
    parts = []
    for name, paths in drawn.items():
        links = ", ".join(f"[{p.stem.removeprefix('prior-')}]({p.relative_to(out).as_posix()})" for p in paths[1:])
        parts.append(f"### {name}\n\n![{name}: geometric priors]({paths[0].relative_to(out).as_posix()})\n\n"
                     f"Per layer, one map per group: {links}.\n")
    return ("## Learnt geometric priors (Fig. 4)\n\nEach LR-Net's geometric prior after softmax over the window, the "
            "mean over its groups per layer (`lrrobust plot prior RUN/best.pt`).\n\n" + "\n".join(parts))


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
             "adversarial training. Every seed then trained with the recipe marked ✓: the highest figure of its "
             "network and training kind among the trials whose training passed the convergence check (among all "
             "when none did; a tie goes to the recipe listed first). Figures in %; sweep.json holds every "
             "epoch's.\n")
    header = ["network", "training", "recipe", "chosen by", "clean val at that epoch", "training convergence",
              "chosen"]
    return "## Recipe sweep on the validation split\n\n" + intro + "\n" + md_table(header, rows)


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
        lines.append(f"- {who(e)}: {masking_line(e.summary.diagnostics, flagged.get(e.source))}")
    return "\n".join(lines) + "\n" if lines else "No evaluation.\n"


def checks_found(entries: list[Entry]) -> str:
    """What the checks found, in words: how many passed, flagged, could not mean anything or were skipped, and
    which checks flagged which models."""
    evaluated = [e for e in sorted(entries, key=entry_order) if e.summary is not None and e.summary.checks]
    if not evaluated:
        return "No evaluation ran the checks (eval-attack --checks)."
    counts = collections.Counter(c["status"] for e in evaluated for c in e.summary.checks)
    flagged: dict[str, dict[tuple[str, str], list[str]]] = {}
    for e in evaluated:
        for c in e.summary.checks:
            if c["status"] == "flag":
                seeds = flagged.setdefault(c["claim"], {}).setdefault((e.network, e.training + evaluation_label(e)), [])
                seeds.append("outside" if e.outside else str(e.seed))
    n = len(evaluated)
    text = (f"The checks ran on {n} evaluation{'s' if n != 1 else ''}: {counts['pass']} passed, {counts['flag']} "
            f"flagged")
    if counts["n/a"]:
        text += f", {counts['n/a']} n/a (too few images classified correctly for the check to mean anything)"
    if counts["skipped"]:
        text += f", {counts['skipped']} skipped (nothing to compare with, see the table)"
    if not flagged:
        return text + ". No check flagged a model."
    lines = [text + ". Flagged:"]
    for claim, models in flagged.items():
        where = "; ".join(f"{network}, {training}, seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}"
                          for (network, training), seeds in models.items())
        lines.append(f"- *{claim}*: {where}")
    return "\n".join(lines)


def checks_md(entries: list[Entry]) -> str:
    rows = []
    for e in sorted(entries, key=entry_order):
        for c in (e.summary.checks if e.summary else []):
            rows.append([e.network, e.training + evaluation_label(e), "–" if e.outside else str(e.seed), c["claim"],
                         f"**{c['status']}**", c["detail"]])
    if not rows:
        return "No evaluation ran the checks (eval-attack --checks).\n"
    return md_table(["network", "training", "seed", "check", "status", "figures"], rows)


def manifest_md(items: list[dict[str, Any]]) -> str:
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
    from lrrobust.attacks import attack_from_row

    out = []
    for e in sorted(entries, key=entry_order):
        item: dict[str, Any] = {"network": e.network, "training": e.training, "seed": e.seed, "source": e.source,
                                "origin": e.origin.to_dict(), "training_config": e.run_config,
                                "training_manifest": e.run_manifest, "training_convergence": e.convergence}
        if e.summary is not None:
            s, raw = e.summary, e.summary.raw
            described = [attack_from_row(a).describe() + f" ({a['role']})" for a in s.attacks]
            item["evaluation"] = {
                "suite": s.suite, "dataset": s.dataset, "split": s.split, "seed": s.seed, "eps": s.suite_eps,
                "num_samples": s.num_samples, "indices_sha256": s.indices_sha256, "batch_size": raw.get("batch_size"),
                "device": raw.get("device"), "world_size": raw.get("world_size"),
                "checkpoint": s.model.get("checkpoint"), "sha256": s.model.get("sha256"), "epoch": s.model.get("epoch"),
                "provenance": raw.get("provenance"), "attacks": described,
            }
            if e.norm != "linf":
                item["evaluation"]["norm"] = e.norm
        out.append(portable(item, anchors=[str((e.run_config or {}).get("out") or "")]))
    return out


_ABSOLUTE = re.compile(r"(?<![\w.~/-])/[^\s,;()'\"]+")


def portable(value: Any, anchors: list[str], key: str | None = None) -> Any:
    """``value`` with every absolute path made relative: to the run's own directory as the run recorded it (an
    anchor such as ``runs/table9-mnist/runs/lrnet26-adversarial-s0`` found inside the path), else to the working
    directory. A command line's program becomes its name."""
    if isinstance(value, dict):
        return {k: portable(v, anchors, k) for k, v in value.items()}
    if isinstance(value, list):
        items = [portable(v, anchors) for v in value]
        if key == "command_line" and items and isinstance(value[0], str):
            items[0] = Path(value[0]).name
        return items
    if isinstance(value, str):
        return _ABSOLUTE.sub(lambda m: _relative(m.group(0), anchors), value)
    return value


def _relative(path: str, anchors: list[str]) -> str:
    for anchor in anchors:
        if not anchor or Path(anchor).is_absolute():
            continue
        anchor = anchor.strip("/")
        at = (path + "/").find("/" + anchor + "/")
        if at >= 0:
            return path[at + 1:]
    return relative_path(path)


