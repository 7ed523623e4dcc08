"""The report's tables as pandas DataFrames: one list of columns per table feeds both its CSV (``to_csv``, the raw
values under each column's key) and its markdown (``to_markdown``, each column's text under its title), so the two
cannot drift apart. docs/reports.md documents every CSV column (tests/test_docs.py checks it).

- table9.csv: one row per network; each figure column of Table 9 (``lrrobust.report.table9.COLUMNS``, those shown)
  with its interval, images, seeds and spread (``CELL_FIELDS``).
- table9_attacks.csv: every single attack and each stage of the multi-stage ones, per model and seed, with every
  setting its kind records (``lrrobust.attacks``).
- table9_tests.csv: the paired LR-Net/ResNet tests, the p that decided and its Holm-adjusted value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import pandas as pd

from lrrobust.attacks import recorded_settings, shown_settings
from lrrobust.evaluation.target import Origin
from lrrobust.report.collect import Entry, entry_order
from lrrobust.report.table9 import Comparison, Row, shown_columns


def text(value: Any) -> str:
    """A value as a markdown cell: '' for None (and NaN), else str."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


@dataclasses.dataclass(frozen=True)
class Col:
    """A column: its key (the CSV header), its markdown title (None: CSV only) and how markdown writes a value."""

    key: str
    title: str | None = None
    fmt: Callable[[Any], str] = text


def frame(rows: list[dict[str, Any]], cols: list[Col]) -> pd.DataFrame:
    """The rows as a DataFrame with exactly ``cols``' keys (object dtype: integers stay integers, None stays None)."""
    keys = [c.key for c in cols]
    return pd.DataFrame([{k: r.get(k) for k in keys} for r in rows], columns=keys, dtype=object)


def to_csv(df: pd.DataFrame, cols: list[Col]) -> str:
    return df.to_csv(columns=[c.key for c in cols], index=False, lineterminator="\n")


def to_markdown(df: pd.DataFrame, cols: list[Col]) -> str:
    shown = [c for c in cols if c.title is not None]
    view = pd.DataFrame({c.title: [c.fmt(v) for v in df[c.key]] for c in shown}, columns=[c.title for c in shown])
    return view.to_markdown(index=False, disable_numparse=True) + "\n"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table of texts (a section's table with no CSV twin)."""
    cols = [Col(f"c{i}", title) for i, title in enumerate(header)]
    return to_markdown(frame([{f"c{i}": v for i, v in enumerate(r)} for r in rows], cols), cols)


def pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def r2(value: float | None) -> float | None:
    """A fraction as a percentage with 2 decimals, the CSVs' unit."""
    return None if value is None else round(100 * value, 2)


def of_row(row: Row, entries: list[Entry]) -> list[Entry]:
    return [e for e in entries if e.network == row.network]


def origin_sha256(origin: Origin) -> str:
    """What identifies an outside model: its file's SHA-256 (the .py file, the weights file), else its weights'."""
    return origin.sha256 or origin.state_sha256 or ""


# ---------------------------------------------------------------- table9.csv

CELL_FIELDS = ("", "_low", "_high", "_interval", "_images", "_seeds", "_sd", "_min", "_max", "_per_seed", "_mixed",
               "_missing")
PAPER_KEYS = ("adv_clean", "adv_targeted", "adv_untargeted", "reg_clean")


def table9_cols(rows: list[Row]) -> list[Col]:
    """table9.csv's columns: the row's facts, then every shown Table 9 column with its fields, the paper's figures
    and the notes."""
    shown = shown_columns(rows)
    keys = ["network", "model", "origin", "origin_sha256", "origin_path", "dataset", "suite", "eps_255"]
    keys += ["eps_l2"] if any(c.norm == "l2" for c in shown) else []
    keys += [c.key + suffix for c in shown for suffix in CELL_FIELDS]
    keys += [f"paper_{k}" for k in PAPER_KEYS] + ["notes"]
    return [Col(k) for k in keys]


def table9_frame(rows: list[Row], entries: list[Entry]) -> pd.DataFrame:
    """Per network, every shown column's figure (mean over seeds, %) with its interval, images, seeds and spread."""
    suites = sorted({e.summary.suite for e in entries if e.summary})
    eps = sorted({round(e.summary.suite_eps * 255, 4) for e in entries if e.norm == "linf"})
    eps_l2 = sorted({e.summary.suite_eps for e in entries if e.norm == "l2"})
    out = []
    for row in rows:
        mine = of_row(row, entries)
        data: dict[str, Any] = {"network": row.network, "model": row.model, "dataset": entries[0].dataset,
                                "origin": ", ".join(sorted({e.origin.kind for e in mine})),
                                "suite": ", ".join(suites), "eps_255": ", ".join(str(e) for e in eps),
                                "eps_l2": ", ".join(f"{e:g}" for e in eps_l2)}
        if row.outside:  # per model of the row (training kind: hash), the full hashes
            data["origin_sha256"] = "; ".join(f"{e.training}: {origin_sha256(e.origin)}" for e in mine)
            data["origin_path"] = "; ".join(f"{e.training}: {e.origin.path or e.origin.name}" for e in mine)
        notes = []
        for column in shown_columns(rows):
            cell = row.cells[column.key]
            k = column.key
            if not cell.seeds:
                data[k + "_missing"] = cell.missing
                continue
            summary = cell.summary
            low, high, kind = cell.interval()
            data.update({k: r2(summary.mean), k + "_low": r2(low), k + "_high": r2(high), k + "_interval": kind,
                         k + "_images": cell.images, k + "_seeds": len(cell.seeds), k + "_sd": r2(summary.std),
                         k + "_min": r2(summary.minimum), k + "_max": r2(summary.maximum),
                         k + "_per_seed": "; ".join(f"seed {s.seed}: {pct(s.figure.accuracy)} ({s.figure.correct}/"
                                                    f"{s.figure.n})" for s in cell.seeds),
                         k + "_mixed": int(cell.mixed)})
            notes += cell.notes
        for key, value in row.paper.items():
            data["paper_" + key] = value
        data["notes"] = "; ".join(notes)
        out.append(data)
    return frame(out, table9_cols(rows))


# ---------------------------------------------------------------- table9_attacks.csv


def yes_no(value: Any) -> str:
    return "yes" if value else "no"


def _eps_cell(value: Any) -> str:
    return "" if value is None else f"{float(value):.3g}"


def _figure_cell(row: dict[str, Any]) -> str:
    return f"{row['accuracy']:.1f} [{row['accuracy_low']:.1f}, {row['accuracy_high']:.1f}]"


def _setting_cell(value: Any) -> str:
    return yes_no(value) if isinstance(value, bool) else text(value or "")


ATTACK_KEY_COLS = [Col("network"), Col("training"), Col("seed"), Col("attack", "attack"), Col("stage", "stage"),
                   Col("kind", "kind")]
ATTACK_FIGURE_COLS = [
    Col("accuracy", "acc % [95% CI]"), Col("accuracy_low"), Col("accuracy_high"), Col("correct"), Col("num_samples"),
    Col("success_rate", "success %", lambda v: "" if v is None else f"{v:.1f}"), Col("evaluation"),
]
L2_ATTACK_COLS = [Col("norm"), Col("eps", "eps (L2)", _eps_cell)]
THREAT_COLS = ("kind", "norm", "eps", "eps_255")  # the kind and the threat model have columns of their own


def setting_cols() -> list[Col]:
    """A column per setting any attack kind records (``lrrobust.attacks.recorded_settings``) but the threat model's,
    eps in 1/255 units after ``targeted``; the settings a kind marks ``shown`` titled in the markdown too."""
    shown = set(shown_settings())
    names = [n for n in recorded_settings() if n not in THREAT_COLS]
    cols = [Col(n, n if n in shown else None, _setting_cell) for n in names]
    at = names.index("targeted") + 1
    return cols[:at] + [Col("eps_255", "eps/255", _eps_cell)] + cols[at:]


def linf_attack_cols() -> list[Col]:
    """table9_attacks.csv's columns when every attack is L-inf: the model, the attack and its stage, its settings,
    its figures."""
    return ATTACK_KEY_COLS + setting_cols() + ATTACK_FIGURE_COLS


def attack_cols(rows: list[dict[str, Any]], l2_detail: bool = False) -> list[Col]:
    """table9_attacks.csv's columns: with L2 attacks among the rows, ``norm`` and the plain ``eps`` too (an L2 row
    leaves eps_255 empty). ``l2_detail``: the markdown of an L2 evaluation, its radius in place of eps/255."""
    cols = linf_attack_cols()
    at = [c.key for c in cols].index("eps_255")
    if l2_detail:
        return cols[:at] + [L2_ATTACK_COLS[1]] + cols[at + 1:]
    if all(r["norm"] == "linf" for r in rows):
        return cols
    return cols[:at] + L2_ATTACK_COLS + cols[at:]


def attack_columns(rows: list[dict[str, Any]]) -> list[str]:
    return [c.key for c in attack_cols(rows)]


def attack_rows(entries: list[Entry]) -> list[dict[str, Any]]:
    """Every single attack's own figure, and each stage (restart, AutoAttack component) of the multi-stage ones."""
    out = []
    for e in sorted(entries, key=entry_order):
        if e.summary is None:
            continue
        for a in e.summary.attacks:
            norm = a.get("norm", "linf")
            base = {"network": e.network, "training": e.training, "seed": e.seed, "attack": a["attack"],
                    **{k: a.get(k) for k in recorded_settings()}, "norm": norm,
                    "eps_255": a["eps_255"] if norm == "linf" else None, "evaluation": e.source,
                    "num_samples": a["num_samples"]}
            out.append({**base, "stage": "all", "accuracy": r2(a["accuracy"]), "accuracy_low": r2(a["accuracy_low"]),
                        "accuracy_high": r2(a["accuracy_high"]), "correct": a["correct"],
                        "success_rate": r2(a["success_rate"])})
            stages = a.get("stages", [])
            if len(stages) > 1:
                for s in stages:
                    out.append({**base, "stage": f"after {s['stage']}", "accuracy": r2(s["accuracy"]),
                                "accuracy_low": r2(s["low"]), "accuracy_high": r2(s["high"]), "correct": s["correct"]})
    return out


def attacks_markdown(rows: list[dict[str, Any]], l2: bool) -> str:
    """One evaluation's attacks as markdown (the figure with its interval in one cell)."""
    cols = [dataclasses.replace(c, fmt=lambda v: v) if c.key == "accuracy" else c for c in attack_cols(rows, l2)]
    shown = [{**r, "accuracy": _figure_cell(r)} for r in rows]
    return to_markdown(frame(shown, cols), cols)


# ---------------------------------------------------------------- table9_tests.csv


def _p_cell(value: Any) -> str:
    from lrrobust.evaluation.stats import format_p

    return "" if value is None else format_p(float(value)).removeprefix("p ").removeprefix("= ")


def _short_verdict(value: Any) -> str:
    """The markdown's verdict: significant or not, and why not when the seeds decided it."""
    verdict = str(value or "")
    if verdict.startswith("no test"):
        return verdict
    if verdict.startswith("not significant: seeds disagree"):
        return "not significant: seeds disagree in sign"
    return verdict.split(" (")[0]


TEST_COLS = [
    Col("column", "column"), Col("lrnet", "LR-Net"), Col("resnet", "ResNet"), Col("seeds", "training seeds"),
    Col("difference", "LR-Net minus ResNet (points)", lambda v: "" if v is None else f"{v:+.1f}"),
    Col("pooled_p_value"), Col("seeds_p_value"), Col("decided_by", "decided by"),
    Col("p_value", "p (raw)", _p_cell), Col("p_holm", "p (Holm)", _p_cell), Col("family_size"),
    Col("consistent"), Col("significant"), Col("verdict", "verdict (Holm, 5%)", _short_verdict),
    Col("per_seed_p_values"), Col("reason"),
]
TEST_COLUMNS = [c.key for c in TEST_COLS]


def test_rows(tests: list[Comparison]) -> list[dict[str, Any]]:
    out = []
    for t in tests:
        row: dict[str, Any] = {"column": t.column.key, "lrnet": t.lrnet, "resnet": t.resnet,
                               "seeds": " ".join(str(s) for s in t.seeds), "reason": t.reason}
        if t.test is not None:
            row.update({"difference": r2(t.test.pooled.difference), "pooled_p_value": t.test.pooled.p_value,
                        "seeds_p_value": t.test.seeds_p_value, "decided_by": t.test.decided_by,
                        "p_value": t.test.p_value, "p_holm": t.test.p_adjusted, "family_size": t.test.family_size,
                        "consistent": int(t.test.consistent), "significant": int(t.test.significant),
                        "verdict": t.test.verdict,
                        "per_seed_p_values": " ".join(f"{p.p_value:.4g}" for p in t.test.per_seed)})
        else:
            row["verdict"] = f"no test ({t.reason})"
        out.append(row)
    return out


def tests_markdown(tests: list[Comparison]) -> str:
    rows = [{**r, "column": t.column.title} for r, t in zip(test_rows(tests), tests)]
    return to_markdown(frame(rows, TEST_COLS), TEST_COLS)
