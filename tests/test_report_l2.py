"""The L2 threat model in the report: each model evaluated under L-inf and under L2, the L2 figures in
their own columns and their own paired tests, never in an L-inf worst case, and no L2 budget written in 1/255."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from markdown_text import squash
from rich.console import Console
from typer.testing import CliRunner

from lrrobust.errors import UserError
from lrrobust.report import COLUMNS, collect, write_report
from lrrobust.report.tables import linf_attack_cols

NETWORK = "ResNet-18 (width 0.25)"


@pytest.fixture(scope="module")
def evaluations(digits_runs, evaluated_run) -> dict[tuple[str, str], Path]:
    """(training, norm) -> the evaluation directory of the session's digits run under the tiny suite of that norm
    (tests/data/suites/report_linf.toml and report_l2.toml)."""
    return {(training, norm): evaluated_run(run, f"report_{norm}.toml", name=f"{training}-{norm}")
            for training, run in digits_runs.items() for norm in ("linf", "l2")}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def worst_from_samples(directory: Path) -> dict[str, int]:
    """The worst case at the suite's eps counted straight from samples.csv and the attacks' eps in summary.json
    (not through the ledger): images clean right and right under every attack at that eps; the same over the
    targeted attacks; images some targeted attack pushed to their target."""
    summary = json.loads((directory / "summary.json").read_text())
    at_eps = {a["attack"]: a["targeted"] for a in summary["attacks"] if abs(a["eps"] - summary["suite_eps"]) < 1e-9}
    images: dict[str, dict[str, bool]] = {}
    for row in read_csv(directory / "samples.csv"):
        if row["attack"] not in at_eps:
            continue
        image = images.setdefault(row["index"], {"untargeted": row["clean_pred"] == row["label"],
                                                 "targeted": row["clean_pred"] == row["label"], "reached": False})
        right = row["adv_pred"] == row["label"]
        image["untargeted"] &= right
        if at_eps[row["attack"]]:
            image["targeted"] &= right
            image["reached"] |= row["success"] == "1"
    return {k: sum(i[k] for i in images.values()) for k in ("untargeted", "targeted", "reached")}


def copy_as(source: Path, dest: Path, model: str, robust: bool = False) -> Path:
    """An evaluation directory relabelled as another network; ``robust``: no attack breaks a clean-right image."""
    shutil.copytree(source, dest)
    summary = json.loads((dest / "summary.json").read_text())
    summary["model"]["model_spec"] = {**summary["model"]["model_spec"], "name": model}
    (dest / "summary.json").write_text(json.dumps(summary))
    if robust:
        rows = read_csv(dest / "samples.csv")
        for row in rows:
            if row["clean_pred"] == row["label"]:
                row.update(adv_pred=row["label"], success="0", found_at="")
        with open(dest / "samples.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    return dest


def test_l2_columns_hold_the_l2_worst_case_and_the_linf_columns_are_unchanged(evaluations, tmp_path):
    write_report(list(evaluations.values()), tmp_path / "both")
    write_report([d for (_, norm), d in evaluations.items() if norm == "linf"], tmp_path / "linf")
    both = {r["network"]: r for r in read_csv(tmp_path / "both" / "table9.csv")}[NETWORK]
    linf = {r["network"]: r for r in read_csv(tmp_path / "linf" / "table9.csv")}[NETWORK]

    differ = False
    for training, prefix in (("adversarial", "adv"), ("regular", "reg")):
        for norm, suffix in (("linf", ""), ("l2", "_l2")):
            counts = worst_from_samples(evaluations[(training, norm)])
            for figure, count in (("untargeted", counts["untargeted"]), ("targeted", counts["targeted"]),
                                  ("targeted_success", counts["reached"])):
                assert float(both[f"{prefix}_{figure}{suffix}"]) == pytest.approx(100 * count / 40, abs=0.01)
                assert both[f"{prefix}_{figure}{suffix}_images"] == "40"
        differ |= worst_from_samples(evaluations[(training, "linf")]) != worst_from_samples(
            evaluations[(training, "l2")])
        clean = json.loads((evaluations[(training, "linf")] / "summary.json").read_text())["clean_accuracy"]
        assert float(both[f"{prefix}_clean"]) == pytest.approx(100 * clean, abs=0.01)  # from the L-inf evaluation
    assert differ  # the two threat models give different figures, so the columns above could not be swapped
    assert both["eps_255"] == "51.0" and both["eps_l2"] == "0.5"
    same = [k for k in linf if k.startswith(("adv_", "reg_", "eps_255", "model", "origin"))]
    assert len(same) > 80 and {k: both[k] for k in same} == {k: linf[k] for k in same}  # as without L2

    md = squash((tmp_path / "both" / "table9.md").read_text())
    assert "from 2 trained models (4 evaluations)" in md  # an L-inf and an L2 evaluation: one model
    assert "worst case over every attack run at eps 0.2 (L-inf) and 0.5 (L2)" in md  # digits' eps in its own unit
    assert "| adv. train: untargeted L2 |" in md and "| regular train: targeted L2 |" in md
    assert "### ResNet-18 (width 0.25), adversarial training, seed 0 (L2 evaluation)" in md
    assert "Worst case at eps 0.5 (L2): " in md and "![Accuracy against eps (L2)](accuracy_vs_eps_l2.png)" in md
    assert (tmp_path / "both" / "accuracy_vs_eps_l2.png").is_file()
    assert "never share a worst case" in md


def test_a_report_of_linf_evaluations_has_no_l2_column(evaluations, tmp_path):
    write_report([d for (_, norm), d in evaluations.items() if norm == "linf"], tmp_path / "r")
    header = read_csv(tmp_path / "r" / "table9.csv")[0].keys()
    assert not [k for k in header if "l2" in k]
    assert {k for k in header if k.startswith("adv_untargeted")} == {
        "adv_untargeted" + s for s in ("", "_low", "_high", "_interval", "_images", "_seeds", "_sd", "_min", "_max",
                                       "_per_seed", "_mixed", "_missing")}
    with open(tmp_path / "r" / "table9_attacks.csv") as f:
        assert next(csv.reader(f)) == [c.key for c in linf_attack_cols()]
    assert "L2" not in (tmp_path / "r" / "table9.md").read_text()
    assert not (tmp_path / "r" / "accuracy_vs_eps_l2.png").exists()


def test_an_l2_budget_is_never_written_in_255ths(evaluations, tmp_path):
    from lrrobust.evaluation.display import print_summary

    l2 = evaluations[("adversarial", "l2")]
    summary = json.loads((l2 / "summary.json").read_text())
    assert summary["suite_norm"] == "l2" and summary["worst_case"]["eps_255"] is None
    assert {a["norm"] for a in summary["attacks"]} == {"l2"} and {a["eps_255"] for a in summary["attacks"]} == {None}
    buffer = io.StringIO()
    print_summary(summary, Console(file=buffer, width=200))
    printed = buffer.getvalue()
    assert "at eps 0.5 (L2)" in printed and "2 (L2)" in printed and "/255" not in printed

    write_report(list(evaluations.values()), tmp_path / "r")
    attacks = read_csv(tmp_path / "r" / "table9_attacks.csv")
    l2_rows = [a for a in attacks if a["evaluation"].endswith("-l2")]
    assert l2_rows and all(a["norm"] == "l2" and a["eps_255"] == "" for a in l2_rows)
    assert {a["eps"] for a in l2_rows} == {"0.5", "2.0"}
    assert {a["eps_255"] for a in attacks if a["norm"] == "linf"} == {"51.0"}
    md = squash((tmp_path / "r" / "table9.md").read_text())
    assert set(re.findall(r"([0-9.]+)/255", md)) == {"51", "17"}  # L-inf eps and step only: no 128/255, 510/255
    detail = md.split("seed 0 (L2 evaluation)\n")[1].split("###")[0]
    assert "| eps (L2) |" in detail and "/255" not in detail


def test_two_l2_evaluations_of_one_model_and_seed_are_refused(evaluations, tmp_path):
    from lrrobust.cli import app

    twin = tmp_path / "again-l2"
    shutil.copytree(evaluations[("adversarial", "l2")], twin)
    with pytest.raises(UserError, match=r"two adversarial L2 evaluations of .* training seed 0"):
        collect([evaluations[("adversarial", "l2")], evaluations[("adversarial", "linf")], twin])
    collect([evaluations[("adversarial", "l2")], evaluations[("adversarial", "linf")]])  # one per norm is fine
    result = CliRunner().invoke(app, ["report", str(evaluations[("adversarial", "l2")]), str(twin),
                                      "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "two adversarial L2 evaluations" in result.output


def test_l2_columns_get_their_own_paired_tests_and_matching(evaluations, tmp_path):
    """LR-Net copy unbreakable under L2 only: the L2 test sees its gap, the L-inf test none."""
    adv_linf, adv_l2 = evaluations[("adversarial", "linf")], evaluations[("adversarial", "l2")]
    dirs = [copy_as(adv_linf, tmp_path / "lr-linf", "lrnet26"), copy_as(adv_l2, tmp_path / "lr-l2", "lrnet26", True),
            copy_as(adv_linf, tmp_path / "res-linf", "resnet26"), copy_as(adv_l2, tmp_path / "res-l2", "resnet26")]
    write_report(dirs, tmp_path / "r")
    tests = {r["column"]: r for r in read_csv(tmp_path / "r" / "table9_tests.csv")}
    assert {c.key for c in COLUMNS if c.higher_is_robust and c.training == "adversarial"} == set(tests)
    counts = worst_from_samples(adv_l2)
    clean = json.loads((adv_l2 / "summary.json").read_text())["clean"]["correct"]
    assert float(tests["adv_untargeted_l2"]["difference"]) == pytest.approx(100 * (clean - counts["untargeted"]) / 40,
                                                                             abs=0.01)
    assert clean > counts["untargeted"]  # the copy's gap is real, so the test above could fail
    assert float(tests["adv_untargeted"]["difference"]) == 0.0 and tests["adv_untargeted"]["significant"] == "0"

    other = copy_as(adv_l2, tmp_path / "res-l2-steps", "resnet26")
    summary = json.loads((other / "summary.json").read_text())
    for attack in summary["attacks"]:
        if attack["attack"] == "pgdl2-3-untargeted":
            attack["steps"] = 30
    (other / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(UserError, match="other attacks"):  # L2 evaluations are matched among themselves
        write_report(dirs[:3] + [other], tmp_path / "r2")


def test_an_l2_only_model_takes_its_clean_figure_from_the_l2_evaluation(evaluations, tmp_path):
    write_report([evaluations[("regular", "l2")]], tmp_path / "r")
    row = read_csv(tmp_path / "r" / "table9.csv")[0]
    clean = json.loads((evaluations[("regular", "l2")] / "summary.json").read_text())["clean_accuracy"]
    assert float(row["reg_clean"]) == pytest.approx(100 * clean, abs=0.01)
    assert row["reg_untargeted_l2"] != "" and "reg_untargeted" not in row  # no L-inf evaluation: no L-inf columns


def test_a_summary_without_suite_norm_reads_as_linf(evaluations, tmp_path):
    from lrrobust.evaluation.summary import read_summary

    source = evaluations[("regular", "linf")]
    old = tmp_path / "old"
    shutil.copytree(source, old)
    data = json.loads((old / "summary.json").read_text())
    assert data.pop("suite_norm") == "linf"
    (old / "summary.json").write_text(json.dumps(data))
    read = read_summary(old)
    assert read.suite_norm == "linf" and read.worst_case == read_summary(source).worst_case
    data["suite_norm"] = "l1"
    (old / "summary.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="damaged.*suite_norm"):
        read_summary(old)
