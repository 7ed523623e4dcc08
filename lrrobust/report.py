"""Table 9 style reports (paper Sec. 6.2) from evaluation and training run directories.

``write_report(dirs, out)`` writes into ``out``:

- ``table9.md`` and ``table9.csv``: one row per network; adversarial training (clean, targeted, untargeted
  accuracy, targeted success rate) and regular training (clean) as in Table 9, the regular models under the same
  attacks beside, and for ImageNet the paper's figures; a missing cell says why;
- ``accuracy_vs_steps.png`` and ``accuracy_vs_eps.png`` (embedded in the markdown) when the evaluations vary
  steps or eps (the fd_steps suite, or ``--checks``);
- the gradient-masking checks, and ``manifest.json`` with every run's versions, seeds and hyper-parameters.

Every file is written atomically.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import json
import os
from pathlib import Path
from typing import Any

from lrrobust.errors import UserError
from lrrobust.io import atomic_path, atomic_write_json, atomic_write_text

# Table 9 of the paper: ImageNet top-1 %, (adversarial: clean, targeted, untargeted; regular: clean).
PAPER_TABLE9 = {
    "resnet26": (44.9, 37.9, 14.4, 72.8),
    "resnet50": (52.0, 43.0, 22.5, 76.3),
    "lrnet26": (52.1, 44.2, 26.8, 75.7),
}
PRETTY = {"resnet": "ResNet-", "lrnet": "LR-Net-"}
HIDDEN_KWARGS = ("in_chans", "mean", "std", "stem")  # set by the dataset
TRAININGS = ("adversarial", "regular")
CSV_COLUMNS = (
    "network", "model", "dataset", "suite",
    "adv_clean", "adv_targeted", "adv_untargeted", "adv_targeted_success",
    "reg_clean", "reg_targeted", "reg_untargeted", "reg_targeted_success",
    "paper_adv_clean", "paper_adv_targeted", "paper_adv_untargeted", "paper_reg_clean",
    "targeted_attack", "untargeted_attack", "num_samples", "missing",
)


@dataclasses.dataclass
class Entry:
    """One trained model: its evaluation summary (None when it was not evaluated) and its run's facts."""

    network: str
    model: str
    training: str
    dataset: str
    source: str  # the directory it came from
    summary: dict[str, Any] | None = None
    run_clean: float | None = None  # the training run's own best test accuracy, when not evaluated
    run_manifest: dict[str, Any] | None = None
    run_config: dict[str, Any] | None = None


# ---------------------------------------------------------------- collecting


def network_name(spec: dict[str, Any]) -> str:
    """'lrnet26' -> 'LR-Net-26', with the overrides the user chose: 'LR-Net-26 (width 0.25)'."""
    name = spec["name"]
    pretty = name
    for prefix, label in PRETTY.items():
        if name.startswith(prefix):
            pretty = label + name[len(prefix):].replace("_dw", "").upper() + (" DW" if name.endswith("_dw") else "")
    kwargs = {k: v for k, v in sorted(spec.get("kwargs", {}).items()) if k not in HIDDEN_KWARGS}
    if kwargs:
        pretty += " (" + ", ".join(f"{k} {v}" for k, v in kwargs.items()) + ")"
    return pretty


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({e}); re-run the command that writes it") from None


def _from_summary(path: Path) -> Entry:
    summary = _read_json(path / "summary.json")
    if "attacks" not in summary or "model" not in summary:
        raise UserError(f"{path}/summary.json is not an lrrobust evaluation summary")
    model = summary["model"]
    spec = model.get("model_spec") or {"name": "model"}
    return Entry(network_name(spec), spec["name"], model.get("training", "unknown"), summary.get("dataset", "?"),
                 str(path), summary=summary, run_manifest=model.get("manifest"), run_config=model.get("config"))


def _from_run(path: Path) -> Entry:
    config = _read_json(path / "config.json")
    manifest = _read_json(path / "manifest.json") if (path / "manifest.json").is_file() else None
    history = []
    if (path / "metrics.jsonl").is_file():
        history = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    accs = [r["test_acc"] for r in history if r.get("test_acc") is not None]
    spec = {"name": config["model"], "kwargs": config.get("model_kwargs", {})}
    training = "adversarial" if config.get("adversarial") else "regular"
    return Entry(network_name(spec), config["model"], training, config.get("dataset", "?"), str(path),
                 run_clean=max(accs) if accs else None, run_manifest=manifest, run_config=config)


def collect(dirs: list[str | os.PathLike]) -> list[Entry]:
    """Entries from evaluation directories, training run directories (the evaluations inside them, or the run
    alone) and folders holding either."""
    entries: list[Entry] = []
    seen: set[Path] = set()

    def visit(path: Path, depth: int) -> bool:
        path = path.resolve()
        if path in seen:
            return True
        if (path / "summary.json").is_file():
            seen.add(path)
            entries.append(_from_summary(path))
            return True
        if (path / "config.json").is_file() and (path / "metrics.jsonl").is_file():
            seen.add(path)
            inner = [d for d in sorted(path.iterdir()) if d.is_dir() and (d / "summary.json").is_file()]
            for d in inner:
                visit(d, depth + 1)
            if not inner:
                entries.append(_from_run(path))
            return True
        if depth == 0 and path.is_dir():
            found = [visit(d, depth + 1) for d in sorted(path.iterdir()) if d.is_dir()]
            return any(found)
        return False

    for d in dirs:
        path = Path(d)
        if not path.is_dir():
            raise UserError(f"{path} is not a directory; pass evaluation directories (with summary.json) or "
                            "training run directories")
        if not visit(path, 0):
            raise UserError(f"{path} holds no evaluation (summary.json) and no training run (config.json, "
                            "metrics.jsonl); run lrrobust eval-attack first")
    datasets = sorted({e.dataset for e in entries})
    if len(datasets) > 1:
        raise UserError(f"the runs are on different datasets ({', '.join(datasets)}); make one report per dataset")
    _rows(entries)  # two entries for one cell are refused here, before anything is written
    return entries


def _rows(entries: list[Entry]) -> dict[str, dict[str, Entry]]:
    """network -> training -> entry; two entries for the same cell are an error."""
    rows: dict[str, dict[str, Entry]] = {}
    for e in entries:
        cell = rows.setdefault(e.network, {})
        if e.training in cell:
            raise UserError(f"two {e.training} evaluations of {e.network}: {cell[e.training].source} and "
                            f"{e.source}; pass one of them")
        cell[e.training] = e
    return rows


# ---------------------------------------------------------------- figures


def headline(summary: dict[str, Any], targeted: bool) -> dict[str, Any] | None:
    """The suite's white-box PGD attack of that kind with the most steps (the Table 9 figure)."""
    candidates = [a for a in summary["attacks"] if a["kind"] == "pgd" and a["targeted"] == targeted
                  and a["role"] == "suite" and not a.get("source")]
    if not candidates:
        return None
    return max(candidates, key=lambda a: a["steps"])  # max() keeps the first of equals


def describe_attack(a: dict[str, Any]) -> str:
    step = "" if a.get("step_size_255") is None else f", step {a['step_size_255']:.3g}/255"
    return (f"{a['attack']}: {a['kind']} {'targeted' if a['targeted'] else 'untargeted'}, eps {a['eps_255']:.3g}/255"
            f"{step}, {a['steps']} steps, {'random' if a['random_start'] else 'no random'} start, "
            f"{a['restarts']} restart{'s' if a['restarts'] != 1 else ''}")


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def figures(entry: Entry | None, training: str) -> tuple[dict[str, float | None], dict[str, str]]:
    """(clean, targeted, untargeted, targeted success) of one entry, and why any is missing."""
    keys = ("clean", "targeted", "untargeted", "targeted_success")
    values: dict[str, float | None] = dict.fromkeys(keys)
    missing: dict[str, str] = {}
    if entry is None:
        return values, dict.fromkeys(keys, f"no {training} run")
    if entry.summary is None:
        values["clean"] = entry.run_clean
        if entry.run_clean is None:
            missing["clean"] = "run has no test accuracy"
        for k in keys[1:]:
            missing[k] = "not evaluated (lrrobust eval-attack)"
        return values, missing
    s = entry.summary
    values["clean"] = s["clean_accuracy"]
    t, u = headline(s, True), headline(s, False)
    if t is None:
        missing["targeted"] = missing["targeted_success"] = f"no targeted PGD in suite {s['suite']}"
    else:
        values["targeted"], values["targeted_success"] = t["accuracy"], t["targeted_success_rate"]
    if u is None:
        missing["untargeted"] = f"no untargeted PGD in suite {s['suite']}"
    else:
        values["untargeted"] = u["accuracy"]
    return values, missing


# ---------------------------------------------------------------- tables


def table_rows(entries: list[Entry]) -> list[dict[str, Any]]:
    """One dict per network with every CSV column (percentages as numbers, empty when missing)."""
    out = []
    for network, cell in sorted(_rows(entries).items()):
        adv, adv_missing = figures(cell.get("adversarial"), "adversarial")
        reg, reg_missing = figures(cell.get("regular"), "regular")
        any_entry = cell.get("adversarial") or cell.get("regular")
        summaries = [e.summary for e in cell.values() if e.summary]
        row: dict[str, Any] = {
            "network": network, "model": any_entry.model, "dataset": any_entry.dataset,
            "suite": ", ".join(sorted({s["suite"] for s in summaries})),
            "num_samples": ", ".join(sorted({str(s["num_samples"]) for s in summaries})),
        }
        for prefix, values in (("adv", adv), ("reg", reg)):
            for k, v in values.items():
                row[f"{prefix}_{k}"] = None if v is None else round(100 * v, 2)
        paper = PAPER_TABLE9.get(any_entry.model) if any_entry.dataset == "imagenet" else None
        for k, v in zip(("paper_adv_clean", "paper_adv_targeted", "paper_adv_untargeted", "paper_reg_clean"),
                        paper or (None,) * 4):
            row[k] = v
        main = next((s for s in summaries), None)
        row["targeted_attack"] = describe_attack(headline(main, True)) if main and headline(main, True) else None
        row["untargeted_attack"] = (describe_attack(headline(main, False))
                                    if main and headline(main, False) else None)
        reasons = {f"adv_{k}": v for k, v in adv_missing.items()} | {f"reg_{k}": v for k, v in reg_missing.items()}
        row["missing"] = "; ".join(f"{k}: {v}" for k, v in reasons.items())
        row["_reasons"] = reasons
        out.append(row)
    return out


def _cell(row: dict[str, Any], key: str) -> str:
    if row.get(key) is not None:
        return f"{row[key]:.1f}"
    reason = row["_reasons"].get(key)
    return f"– ({reason})" if reason else "–"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_COLUMNS})
    return buffer.getvalue()


# ---------------------------------------------------------------- plots


def curves(entries: list[Entry], axis: str) -> list[tuple[str, list[float], list[float]]]:
    """(label, x, accuracy %) per model: against PGD steps ('steps') or eps ('eps').

    From the checks' ladders (untargeted PGD, step 2.5 eps / steps) and from suites that run the same white-box
    PGD at several step counts (fd_steps).
    """
    lines = []
    for e in sorted(entries, key=lambda e: (e.network, e.training)):
        if e.summary is None:
            continue
        by_name = {a["attack"]: a for a in e.summary["attacks"]}
        who = f"{e.network}, {e.training}"
        plan = e.summary.get("check_plan", {}).get(axis)
        if plan:
            xs = [float(x) for x, _ in plan]
            lines.append((f"{who}: untargeted (checks)", xs, [100 * by_name[n]["accuracy"] for _, n in plan]))
        if axis == "steps":
            groups: dict[tuple, list[dict]] = {}
            for a in e.summary["attacks"]:
                if a["kind"] == "pgd" and a["role"] == "suite" and not a.get("source") and a["restarts"] == 1:
                    groups.setdefault((a["targeted"], a["eps"]), []).append(a)
            for (targeted, eps), attacks in sorted(groups.items()):
                if len({a["steps"] for a in attacks}) >= 2:
                    attacks = sorted(attacks, key=lambda a: a["steps"])
                    lines.append((f"{who}: {'targeted' if targeted else 'untargeted'} eps {eps * 255:.3g}/255",
                                  [a["steps"] for a in attacks], [100 * a["accuracy"] for a in attacks]))
    return lines


def plot(lines: list[tuple[str, list[float], list[float]]], path: Path, xlabel: str, log_x: bool) -> None:
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
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- the report


def _manifest(entries: list[Entry]) -> list[dict[str, Any]]:
    out = []
    for e in sorted(entries, key=lambda e: (e.network, e.training)):
        item: dict[str, Any] = {"network": e.network, "training": e.training, "source": e.source,
                                "training_config": e.run_config, "training_manifest": e.run_manifest}
        if e.summary is not None:
            s = e.summary
            item["evaluation"] = {
                "suite": s["suite"], "dataset": s.get("dataset"), "split": s["split"], "seed": s["seed"],
                "num_samples": s["num_samples"], "batch_size": s["batch_size"], "device": s.get("device"),
                "world_size": s.get("world_size"), "checkpoint": s["model"].get("checkpoint"),
                "sha256": s["model"].get("sha256"), "epoch": s["model"].get("epoch"),
                "environment": s.get("environment"),
                "attacks": [{k: v for k, v in a.items()} for a in s["attacks"]],
            }
        out.append(item)
    return out


def _manifest_md(items: list[dict[str, Any]]) -> str:
    lines = []
    for item in items:
        cfg = item["training_config"] or {}
        man = item["training_manifest"] or {}
        lines.append(f"### {item['network']}, {item['training']} training\n")
        training = (f"- training: {cfg.get('epochs')} epochs, batch {cfg.get('batch_size')}, lr {cfg.get('lr')}, "
                    f"seed {cfg.get('seed')}, preset {cfg.get('preset')}")
        if cfg.get("adversarial"):
            training += (f"; {'targeted' if cfg.get('targeted') else 'untargeted'} PGD-{cfg.get('steps')}, "
                         f"eps {cfg.get('eps')}, step {cfg.get('alpha')}")
        lines.append(training)
        lines.append(f"- trained with lrrobust {man.get('lrrobust_version')}, torch {man.get('torch_version')}, "
                     f"commit {str(man.get('git_commit'))[:12]}{' (dirty)' if man.get('git_dirty') else ''}, "
                     f"on {man.get('device')}")
        ev = item.get("evaluation")
        if ev:
            env = ev.get("environment") or {}
            lines.append(f"- evaluated: suite {ev['suite']}, {ev['split']} split, {ev['num_samples']} samples, "
                         f"seed {ev['seed']}, batch {ev['batch_size']}, {ev['device']} x{ev['world_size']}; "
                         f"checkpoint {Path(str(ev['checkpoint'])).name} (epoch {ev['epoch']}, sha256 "
                         f"{str(ev['sha256'])[:12]}); lrrobust {env.get('lrrobust')}, torch {env.get('torch')}, "
                         f"torchattacks {env.get('torchattacks')}, commit {str(env.get('git_commit'))[:12]}")
            for a in ev["attacks"]:
                if a["role"] == "suite":
                    lines.append(f"  - {describe_attack(a)}")
        else:
            lines.append("- not evaluated")
        lines.append("")
    return "\n".join(lines)


def render_markdown(entries: list[Entry], rows: list[dict[str, Any]], plots: dict[str, str | None]) -> str:
    dataset = entries[0].dataset if entries else "?"
    imagenet = dataset == "imagenet"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    intro = (f"Generated by `lrrobust report` on {now} from {len(entries)} trained model"
             f"{'s' if len(entries) != 1 else ''}. Top-1 accuracy in %, as in Table 9 of Hu et al. (ICCV 2019); "
             "targeted success is the attacker's view (prediction equals the target), in %.\n")
    parts = [f"# Robustness to white-box attacks on {dataset} (Table 9 style)\n", intro]
    header = ["network", "adv. train: clean", "targeted", "untargeted", "targeted success", "regular train: clean"]
    if imagenet:
        header += ["paper: adv. clean", "paper: targeted", "paper: untargeted", "paper: regular clean"]
    body = []
    for r in rows:
        line = [r["network"]] + [_cell(r, k) for k in ("adv_clean", "adv_targeted", "adv_untargeted",
                                                         "adv_targeted_success", "reg_clean")]
        if imagenet:
            line += [_cell(r, k) if r.get(k) is not None else "– (not in the paper)"
                     for k in ("paper_adv_clean", "paper_adv_targeted", "paper_adv_untargeted", "paper_reg_clean")]
        body.append(line)
    parts += ["## Table 9\n", _md_table(header, body)]
    if not imagenet:
        parts.append(f"The paper's figures are for ImageNet; they are not put beside these {dataset} results.\n")
    parts += ["## Regular training under the same attacks\n", _md_table(
        ["network", "clean", "targeted", "untargeted", "targeted success"],
        [[r["network"]] + [_cell(r, f"reg_{k}") for k in ("clean", "targeted", "untargeted", "targeted_success")]
         for r in rows])]
    attacks = sorted({r[k] for r in rows for k in ("targeted_attack", "untargeted_attack") if r.get(k)})
    parts.append("## Attacks\n")
    parts.append("\n".join(f"- {a}" for a in attacks) + "\n" if attacks else "No attack was evaluated.\n")
    samples = sorted({r["num_samples"] for r in rows if r["num_samples"]})
    if samples:
        parts.append(f"Samples per evaluation: {', '.join(samples)}; targets are one random wrong class per image, "
                     "seeded; robust accuracy counts a sample as correct when the attacked prediction is the label.\n")
    for axis, title in (("steps", "Accuracy against PGD steps"), ("eps", "Accuracy against eps")):
        parts.append(f"## {title}\n")
        if plots[axis]:
            parts.append(f"![{title}]({plots[axis]})\n")
        else:
            parts.append("No evaluation varied " + ("the number of steps" if axis == "steps" else "eps")
                         + ": run eval-attack with --checks (or the fd_steps suite) to get this plot.\n")
    parts.append("## Checks against gradient masking\n")
    check_rows = []
    for e in sorted(entries, key=lambda e: (e.network, e.training)):
        for c in (e.summary or {}).get("checks", []):
            check_rows.append([e.network, e.training, c["claim"], f"**{c['status']}**", c["detail"]])
    if check_rows:
        parts.append(_md_table(["network", "training", "check", "status", "figures"], check_rows))
    else:
        parts.append("No evaluation ran the checks (eval-attack --checks).\n")
    parts += ["## Runs\n", "Everything each figure depends on; `manifest.json` holds all of it.\n",
              _manifest_md(_manifest(entries))]
    return "\n".join(parts)


def write_report(dirs: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Write table9.md, table9.csv, the plots and manifest.json into ``out``; returns the markdown's path."""
    entries = collect(dirs)
    if not entries:
        raise UserError("nothing to report: no evaluation or training run found")
    rows = table_rows(entries)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    plots: dict[str, str | None] = {}
    for axis, xlabel, log_x in (("steps", "PGD steps", True), ("eps", "eps (L-inf, pixels in [0, 1])", False)):
        lines = curves(entries, axis)
        name = f"accuracy_vs_{axis}.png"
        plots[axis] = name if lines else None
        if lines:
            plot(lines, out / name, xlabel, log_x)
    atomic_write_text(out / "table9.csv", _csv_text(rows))
    atomic_write_json(out / "manifest.json", _manifest(entries))
    atomic_write_text(out / "table9.md", render_markdown(entries, rows, plots))
    return out / "table9.md"
