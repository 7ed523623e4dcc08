"""Docs that match the code: the preset table of docs/training.md, every CSV column of a report in docs/reports.md,
the provenance a manifest records."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from lrrobust.attacks.pgd import default_step_size
from lrrobust.core.provenance import command_line, provenance
from lrrobust.report.table9 import COLUMNS
from lrrobust.report.tables import CELL_FIELDS, L2_ATTACK_COLS, PAPER_KEYS, TEST_COLS, linf_attack_cols
from lrrobust.training.config import PRESETS

ROOT = Path(__file__).resolve().parents[1]


def table_rows(markdown: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the markdown table whose header starts with ``| first_header |``, as dicts."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def budget(value: float, preset: str) -> str:
    """A preset's eps or step as docs/training.md writes it: in 1/255 units for the 1/255 datasets."""
    from lrrobust.data import dataset_entry

    if dataset_entry(preset).pixel_units:
        return f"{value * 255:g}/255"
    return f"{value:g}"


def documented_preset(name: str) -> dict[str, str]:
    """What docs/training.md must say of a preset, derived from lrrobust/training/config.py."""
    p = PRESETS[name]
    kwargs = dict(p.model_kwargs)
    model = ", ".join(([f"{kwargs.pop('stem')} stem"] if "stem" in kwargs else [])
                      + [f"{k} {v}" for k, v in sorted(kwargs.items())]) or "as registered"
    step = default_step_size(p.eps, p.steps)
    return {
        "epochs": str(p.epochs), "batch": str(p.batch_size), "lr": f"{p.lr:g} per {p.base_batch}",
        "warm-up": f"{p.warmup_epochs:g}", "x0.1 at": ", ".join(map(str, p.milestones)),
        "weight decay": f"{p.weight_decay:.0e}".replace("e-0", "e-"), "momentum": f"{p.momentum:g}",
        "grad clip": f"{p.grad_clip:g}" if p.grad_clip else "–", "model": model,
        "attack (train-adv)": f"{'targeted' if p.targeted else 'untargeted'} PGD-{p.steps}, eps "
                              f"{budget(p.eps, name)}, step {budget(step, name)}",
    }


def test_the_preset_table_is_the_codes():
    """Every preset the table documents is the code's (a dataset added later documents its preset in its module)."""
    rows = table_rows((ROOT / "docs" / "training.md").read_text(encoding="utf-8"), "preset")
    by_name = {r["preset"].split(" ")[0]: r for r in rows}
    assert by_name and set(by_name) <= set(PRESETS)
    for name, row in by_name.items():
        documented = {k: v for k, v in row.items() if k != "preset"}
        assert documented == documented_preset(name), name


def documented_names() -> set[str]:
    """Every `name` written in code style in docs/reports.md."""
    text = (ROOT / "docs" / "reports.md").read_text(encoding="utf-8")
    return set(re.findall(r"`([A-Za-z0-9_]+)`", text))


def is_documented(column: str, names: set[str]) -> bool:
    """A column named in the doc, a setting of an attack kind (documented where the kind declares it, its help text;
    the doc says so), or a figure column's key with a documented field suffix."""
    from lrrobust.attacks import recorded_settings

    if column in names or column in recorded_settings():
        return True
    return any(column.endswith(s) and column[:-len(s)] in names for s in CELL_FIELDS if s and s in names)


def every_column() -> set[str]:
    """Every column the report's code can write into its three CSVs."""
    table9 = {"network", "model", "origin", "origin_sha256", "origin_path", "dataset", "suite", "eps_255", "eps_l2",
              "notes"} | {f"paper_{k}" for k in PAPER_KEYS} | {c.key + s for c in COLUMNS for s in CELL_FIELDS}
    return table9 | {c.key for c in linf_attack_cols() + L2_ATTACK_COLS + TEST_COLS}


def test_every_csv_column_is_documented():
    names = documented_names()
    missing = sorted(c for c in every_column() if not is_documented(c, names))
    assert not missing, f"docs/reports.md does not document: {', '.join(missing)}"
    for report in ("mnist", "digits"):  # and the committed reports' files, whatever wrote them
        for name in ("table9.csv", "table9_attacks.csv", "table9_tests.csv"):
            path = ROOT / "reports" / report / name
            if path.is_file():
                with open(path, encoding="utf-8") as f:
                    header = next(csv.reader(f))
                assert all(is_documented(c, names) for c in header), (path, [c for c in header
                                                                             if not is_documented(c, names)])
    assert not is_documented("adv_untargeted_bogus", names)  # the rule does not accept anything


def test_the_provenance_records_the_cpu_threads_and_torch_build():
    import torch

    record = provenance("cpu")
    assert record["cpu_model"] and record["device_name"] == record["cpu_model"]
    assert record["threads"]["torch_intra_op"] == torch.get_num_threads() >= 1
    assert record["threads"]["cpu_count"] >= 1 and record["threads"]["usable_cores"] >= 1
    assert record["torch_build"]["cuda"] == torch.version.cuda
    assert record["torch_build"]["debug"] is False or record["torch_build"]["debug"] is True


def test_a_command_line_names_no_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = command_line(["/opt/venv/bin/lrrobust", "eval-attack", str(tmp_path / "runs" / "a"), "--suite", "digits",
                         "--eps", "16/255"])
    assert line == ["lrrobust", "eval-attack", "runs/a", "--suite", "digits", "--eps", "16/255"]


@pytest.mark.parametrize("doc", ["README.md", "docs/evaluation.md", "docs/studies.md", "docs/reports.md"])
def test_docs_name_suites_where_they_are(doc):
    """The shipped suites are package data: docs point at lrrobust/suites/, and every suite they name exists."""
    from lrrobust.evaluation.suite import suite_names

    text = (ROOT / doc).read_text(encoding="utf-8")
    assert not re.search(r"(?<![\w/])attacks/[\w*-]+\.toml", text)
    for name in re.findall(r"lrrobust/suites/([a-z0-9_-]+)\.toml", text):  # NAME.toml is a placeholder
        assert name in suite_names(), name


@pytest.mark.parametrize("command,option,names", [
    ("eval-attack", "--dataset", "datasets"),
    ("eval-attack", "--suite", "suites"),
    ("train", "--dataset", "datasets"),
    ("train-adv", "--preset", "presets"),
])
def test_help_texts_list_every_registered_name(command, option, names):
    import typer

    from lrrobust.cli import app
    from lrrobust.data import DATASETS
    from lrrobust.evaluation.suite import suite_names
    from lrrobust.training.config import PRESETS

    expected = {"datasets": DATASETS, "suites": suite_names(), "presets": tuple(PRESETS)}[names]
    group = typer.main.get_command(app)
    params = group.get_command(None, command).params
    text = next(p.help for p in params if option in p.opts)
    assert expected and all(name in text for name in expected), (text, expected)
