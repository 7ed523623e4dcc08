"""Table 9 reports from real short training runs and their evaluations (lrrobust report)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import SUITES
from markdown_text import squash
from typer.testing import CliRunner

from lrrobust.errors import UserError
from lrrobust.report import collect, network_name, paper_table9, write_report

TINY_SUITE = (SUITES / "report_tiny.toml").read_text()


@pytest.fixture(scope="module")
def runs(report_runs) -> Path:
    """conftest's report_runs: two evaluated ResNet-18 runs and an unevaluated ResNet-26 run (read-only)."""
    return report_runs


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as f:
        return {r["network"]: r for r in csv.DictReader(f)}


def relabel(source: Path, dest: Path, *, model: str | None = None, seed: int | None = None,
            robust: bool = False, indices: str | None = None) -> Path:
    """A copy of an evaluation directory relabelled as another model or training seed; ``robust`` makes every
    attacked image of a clean-right image right (a model no attack breaks)."""
    shutil.copytree(source, dest)
    summary = json.loads((dest / "summary.json").read_text())
    if model is not None:
        summary["model"]["model_spec"] = {**summary["model"]["model_spec"], "name": model}
    if seed is not None:
        summary["model"]["config"] = {**summary["model"]["config"], "seed": seed}
    if indices is not None:
        summary["indices_sha256"] = indices
    (dest / "summary.json").write_text(json.dumps(summary))
    if robust:
        with open(dest / "samples.csv") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            if row["clean_pred"] == row["label"]:
                row.update(adv_pred=row["label"], success="0", found_at="")
        with open(dest / "samples.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    return dest


def worst(directory: Path):
    from lrrobust.evaluation.summary import read_summary

    return read_summary(directory).worst_case


def test_report_from_real_runs(runs, tmp_path):
    out = tmp_path / "report"
    md_path = write_report([runs], out)
    assert md_path == out / "table9.md"
    for name in ("table9.md", "table9.csv", "table9_attacks.csv", "table9_tests.csv", "manifest.json",
                 "accuracy_vs_steps.png", "accuracy_vs_eps.png"):
        assert (out / name).is_file(), name
    assert (out / "accuracy_vs_steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no temporaries

    rows = read_rows(out / "table9.csv")
    resnet = rows["ResNet-18 (width 0.125)"]
    with open(out / "table9_attacks.csv") as f:
        attacks = list(csv.DictReader(f))
    for training, prefix in (("adversarial", "adv"), ("regular", "reg")):
        evaluation = runs / f"resnet18-{training}" / "eval-tiny"
        summary = json.loads((evaluation / "summary.json").read_text())
        figures = worst(evaluation).figures()
        for name in ("clean", "targeted", "untargeted", "targeted_success"):
            assert float(resnet[f"{prefix}_{name}"]) == pytest.approx(100 * figures[name].accuracy, abs=0.01)
            assert resnet[f"{prefix}_{name}_images"] == "60" and resnet[f"{prefix}_{name}_interval"] == "wilson"
            assert float(resnet[f"{prefix}_{name}_low"]) <= float(resnet[f"{prefix}_{name}"]) <= float(
                resnet[f"{prefix}_{name}_high"])
        assert float(resnet[f"{prefix}_clean"]) == pytest.approx(100 * summary["clean_accuracy"], abs=0.01)
        # the headline is the worst case: no single attack at the suite's eps leaves fewer images standing
        at_eps = [a for a in attacks if a["training"] == training and a["stage"] == "all" and a["eps_255"] == "51.0"]
        assert {a["attack"] for a in at_eps} >= {"pgd3-targeted", "pgd3-untargeted", "check/fgsm"}
        assert float(resnet[f"{prefix}_untargeted"]) <= min(float(a["accuracy"]) for a in at_eps) + 1e-9
    assert resnet["paper_adv_clean"] == ""  # digits: no paper figures beside

    unevaluated = rows["ResNet-26 (width 0.125)"]
    assert unevaluated["reg_clean"] == "" and "not evaluated" in unevaluated["reg_clean_missing"]
    assert "no adversarial run" in unevaluated["adv_clean_missing"]

    md = md_path.read_text()
    assert "![Accuracy against PGD steps](accuracy_vs_steps.png)" in md
    assert "![Accuracy against eps](accuracy_vs_eps.png)" in md
    assert "– (no adversarial run)" in md and "– (not evaluated" in md
    assert "per-image worst case over every attack" in md and "95% interval" in md
    assert "accuracy falls towards zero as eps grows" in md
    assert "pgd3-targeted: PGD targeted, eps 51/255, step 17/255, 3 steps, random start, 1 restart" in md
    assert "No LR-Net and ResNet rows to compare" in md
    manifest = json.loads((out / "manifest.json").read_text())
    evaluated = [m for m in manifest if "evaluation" in m]
    assert len(manifest) == 3 and len(evaluated) == 2
    for item in evaluated:
        ev = item["evaluation"]
        assert ev["seed"] == 0 and ev["num_samples"] == 60 and len(ev["sha256"]) == 64
        assert ev["provenance"]["torch_version"] == torch.__version__
        assert item["training_config"]["seed"] == 0 and item["training_manifest"]["torch_version"]


def test_seeds_are_aggregated_with_their_spread(runs, tmp_path):
    source = runs / "resnet18-adversarial" / "eval-tiny"
    dirs = [relabel(source, tmp_path / "s0", seed=10), relabel(source, tmp_path / "s1", seed=11),
            relabel(source, tmp_path / "s2", seed=12, robust=True)]
    write_report(dirs, tmp_path / "r")
    row = read_rows(tmp_path / "r" / "table9.csv")["ResNet-18 (width 0.125)"]
    values = [worst(d).figures()["untargeted"].accuracy for d in dirs]
    assert values[2] > values[0] == values[1]  # the robust copy differs
    mean = sum(values) / 3
    assert float(row["adv_untargeted"]) == pytest.approx(100 * mean, abs=0.01)
    assert row["adv_untargeted_seeds"] == "3" and row["adv_untargeted_images"] == "180"
    assert row["adv_untargeted_interval"] == "t over seeds"
    assert float(row["adv_untargeted_min"]) == pytest.approx(100 * values[0], abs=0.01)
    assert float(row["adv_untargeted_max"]) == pytest.approx(100 * values[2], abs=0.01)
    assert float(row["adv_untargeted_low"]) < float(row["adv_untargeted"]) < float(row["adv_untargeted_high"])
    assert "seed 10:" in row["adv_untargeted_per_seed"] and "seed 12:" in row["adv_untargeted_per_seed"]
    md = (tmp_path / "r" / "table9.md").read_text()
    assert "3 seeds" in md and "seed 11" in md


def test_lrnet_and_resnet_are_compared_with_a_paired_test(runs, tmp_path):
    source = runs / "resnet18-adversarial" / "eval-tiny"
    resnet = relabel(source, tmp_path / "resnet", model="resnet26")
    strong = relabel(source, tmp_path / "lrnet", model="lrnet26", robust=True)
    write_report([resnet, strong], tmp_path / "r")
    with open(tmp_path / "r" / "table9_tests.csv") as f:
        tests = {r["column"]: r for r in csv.DictReader(f)}
    untargeted = tests["adv_untargeted"]
    gap = worst(strong).figures()["untargeted"].correct - worst(resnet).figures()["untargeted"].correct
    assert gap >= 10  # the copy no attack breaks keeps at least 10 more images
    assert untargeted["significant"] == "1" and float(untargeted["pooled_p_value"]) < 0.05
    assert float(untargeted["difference"]) == pytest.approx(100 * gap / 60, abs=0.01)
    assert tests["adv_clean"]["significant"] == "0" and float(tests["adv_clean"]["pooled_p_value"]) == 1.0
    md = (tmp_path / "r" / "table9.md").read_text()
    significant = md.split("\nSignificant at 5% after Holm: ")[1].split("\n")[0]
    assert "adv. train: untargeted: LR-Net-26 (width 0.125) vs ResNet-26 (width 0.125) (+" in significant
    assert "adv. train: clean" not in significant
    assert "Not significant: adv. train: clean" in md
    # one family: every test's p adjusted by Holm over all of them, the raw p of the test that decided beside it
    assert {r["family_size"] for r in tests.values()} == {str(len(tests))}
    assert float(untargeted["p_holm"]) >= float(untargeted["p_value"]) == float(untargeted["pooled_p_value"])
    assert untargeted["decided_by"] == "pooled McNemar"  # one seed: no t-test over seeds

    same = relabel(source, tmp_path / "lrnet-same", model="lrnet26")
    write_report([resnet, same], tmp_path / "r2")
    with open(tmp_path / "r2" / "table9_tests.csv") as f:
        assert {r["significant"] for r in csv.DictReader(f)} == {"0"}


def test_results_measured_differently_never_share_a_table(runs, tmp_path):
    source = runs / "resnet18-adversarial" / "eval-tiny"
    a = relabel(source, tmp_path / "a", model="resnet26")
    b = relabel(source, tmp_path / "b", model="lrnet26", indices="0" * 64)
    with pytest.raises(UserError, match="other images.*--allow-mixed"):
        write_report([a, b], tmp_path / "r")
    assert not (tmp_path / "r").exists()
    write_report([a, b], tmp_path / "r", allow_mixed=True)
    md = (tmp_path / "r" / "table9.md").read_text()
    assert "†" in md and "no test (measured differently" in md


def test_imagenet_reports_put_the_papers_figures_beside(runs, tmp_path):
    """The same evaluation relabelled as an ImageNet LR-Net-26 gets Table 9's LR-Net-26 figures beside it."""
    ev = relabel(runs / "resnet18-adversarial" / "eval-tiny", tmp_path / "ev", model="lrnet26")
    summary = json.loads((ev / "summary.json").read_text())
    summary["dataset"] = "imagenet"
    summary["model"]["model_spec"] = {"name": "lrnet26", "num_classes": 1000, "kwargs": {}}
    (ev / "summary.json").write_text(json.dumps(summary))
    write_report([ev], tmp_path / "r")
    row = read_rows(tmp_path / "r" / "table9.csv")["LR-Net-26"]
    paper = paper_table9("lrnet26")
    assert paper == {"adv_clean": 52.1, "adv_targeted": 44.2, "adv_untargeted": 26.8, "reg_clean": 75.7}
    assert {k: float(row["paper_" + k]) for k in paper} == paper
    md = squash((tmp_path / "r" / "table9.md").read_text())
    assert "paper: adv. train: targeted" in md and "| 44.2 |" in md
    assert "eps 51/255 (L-inf)" in md.split("## Table 9")[0]  # ImageNet's budgets in 1/255 units


def test_network_names():
    assert network_name({"name": "lrnet26", "kwargs": {"in_chans": 1, "mean": [0.3], "width": 0.25}}) == \
        "LR-Net-26 (width 0.25)"
    assert network_name({"name": "resnet50", "kwargs": {}}) == "ResNet-50"
    assert network_name({"name": "resnet26_dw", "kwargs": {}}) == "ResNet-26 DW"


def test_bad_report_inputs(runs, tmp_path):
    with pytest.raises(UserError, match="two adversarial evaluations.*training seed 0"):
        ev = tmp_path / "copy"
        shutil.copytree(runs / "resnet18-adversarial" / "eval-tiny", ev)
        collect([runs, ev])
    with pytest.raises(UserError, match="not a directory"):
        collect([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no evaluation"):
        collect([tmp_path / "empty"])
    other = tmp_path / "cifar"
    shutil.copytree(runs / "resnet18-regular" / "eval-tiny", other)
    summary = json.loads((other / "summary.json").read_text())
    summary["dataset"] = "cifar10"
    (other / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(UserError, match="different datasets"):
        collect([runs / "resnet18-adversarial", other])
    damaged = tmp_path / "damaged"
    shutil.copytree(runs / "resnet18-regular" / "eval-tiny", damaged)
    (damaged / "summary.json").write_text("{}")
    with pytest.raises(UserError, match="not an lrrobust evaluation summary"):
        collect([damaged])


def test_report_cli(runs, tmp_path):
    from lrrobust.cli import app

    result = CliRunner().invoke(app, ["report", str(runs / "resnet18-adversarial"), str(runs / "resnet18-regular"),
                                      "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "table9.md").is_file()
    result = CliRunner().invoke(app, ["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r2")])
    assert result.exit_code == 2
    assert "not a directory" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r2").exists()
    notes = tmp_path / "notes.md"
    notes.write_text("## How these models were sized\n\nWidth 0.125 to fit 3 hours.\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["report", str(runs / "resnet18-adversarial"), "--out", str(tmp_path / "r3"),
                                      "--notes", str(notes)])
    assert result.exit_code == 0, result.output
    assert "## How these models were sized\n\nWidth 0.125 to fit 3 hours." in (tmp_path / "r3" / "table9.md").read_text()
    result = CliRunner().invoke(app, ["report", str(runs / "resnet18-adversarial"), "--out", str(tmp_path / "r4"),
                                      "--notes", str(tmp_path / "nope.md")])
    assert result.exit_code == 2 and "--notes" in result.output and not (tmp_path / "r4").exists()


def _edit_attack(directory: Path, name: str, **changes) -> None:
    summary = json.loads((directory / "summary.json").read_text())
    for attack in summary["attacks"]:
        if attack["attack"] == name:
            attack.update(changes)
    (directory / "summary.json").write_text(json.dumps(summary))


def test_transfer_sources_may_differ_but_attack_settings_may_not(runs, tmp_path):
    """Each model's transfer check comes from its own source checkpoint: that is not a mismatch; other steps are."""
    source = runs / "resnet18-adversarial" / "eval-tiny"
    a, b = relabel(source, tmp_path / "a", model="resnet26"), relabel(source, tmp_path / "b", model="lrnet26")
    _edit_attack(a, "pgd3-untargeted", source="one/best.pt")
    _edit_attack(b, "pgd3-untargeted", source="two/best.pt")
    write_report([a, b], tmp_path / "r")
    c = relabel(source, tmp_path / "c", model="lrnet26")
    _edit_attack(c, "pgd3-untargeted", steps=30)
    with pytest.raises(UserError, match="other attacks"):
        write_report([relabel(source, tmp_path / "d", model="resnet26"), c], tmp_path / "r2")


def test_the_committed_mnist_evaluations_make_a_report(tmp_path):
    """reports/mnist/evaluations (AutoAttack rows carry no restarts; schema 2 summaries) rebuild a report: tables,
    plots, the paired tests and the claims section, without a traceback."""
    from lrrobust.report import write_report

    evaluations = Path(__file__).resolve().parents[1] / "reports" / "mnist" / "evaluations"
    if not evaluations.is_dir():
        pytest.skip("no committed MNIST evaluations")
    out = write_report([evaluations], tmp_path / "report")
    text = squash(out.read_text(encoding="utf-8"))
    assert "## Table 9" in text and "## The paper's claims" in text
    assert (tmp_path / "report" / "accuracy_vs_steps.png").is_file()
    assert (tmp_path / "report" / "accuracy_by_attack.png").is_file()

    # issue 21: the first screen is the answer: a title, the verdict with its seeds and eps (in MNIST's unit), then
    # a compact Table 9 whose notes are numbered footnotes; the rest below
    lines = text.splitlines()
    assert lines[0] == "# Robustness to white-box attacks on MNIST (Table 9 style)"
    verdict = lines[2]
    assert verdict.startswith("**Verdict.** Adversarially trained and attacked with every attack at eps 0.3 (L-inf)")
    assert "LR-Net-26 14.4% [0.0, 44.4]" in verdict and "(mean over 3 training seeds each, all width 0.125" in verdict
    assert "LR-Net-26 minus ResNet-26: -51.9 points (not significant, Holm-adjusted p = 0.233 by the t-test over " \
           "seeds)" in verdict
    assert "had not finished training" in verdict
    table_at = lines.index("## Table 9")
    assert table_at < 6 and lines[table_at + 2].startswith("| network | adv. train: clean | adv. train: targeted |")
    rows = lines[table_at + 4:table_at + 7]
    assert [r.split(" | ")[0] for r in rows] == ["| LR-Net-26 (width 0.125)", "| ResNet-26 (width 0.125)",
                                                  "| ResNet-50 (width 0.125)"]
    assert "| 14.4 [0.0, 44.4] ² |" in rows[0] and all(len(r) < 130 for r in rows)  # no note inside a cell
    first_screen = text.split("## All figures")[0]
    assert "76.5/255" not in first_screen and "\n2. seed 0: not converged: 2 restarts lower it by 4.2 points" in \
        first_screen
    assert "1. training had not converged (seeds 0, 1, 2): see Training convergence" in first_screen
    assert len(first_screen.splitlines()) < 30
    # the checks section says what the checks found, not a fixed "n/a"
    checks = text.split("## Checks against gradient masking\n")[1]
    assert checks.startswith("\nThe checks ran on 18 evaluations: ") and "n/a: the model classifies" not in checks
    assert "Flagged:\n- *" in checks
    # no absolute path in the manifest: the study's run directories as the study named them
    manifest = (tmp_path / "report" / "manifest.json").read_text()
    assert '"/' not in manifest and "/work/" not in manifest
    assert '"checkpoint": "runs/table9-mnist/runs/lrnet26-adversarial-s0/best.pt"' in manifest
    assert '"lrrobust",\n          "eval-attack"' in manifest  # the program by its name
    # issue 20: every cell's training is judged from its metrics.jsonl beside the evaluation (these summaries predate
    # the check), so the claims come only from fair comparisons
    assert ("| not resolved: LR-Net-26 (width 0.125) not trained to convergence (seeds 0, 1, 2), and ResNet-26 "
            "(width 0.125) not trained to convergence (seeds 0, 1, 2) (regular-training clean accuracy ordered "
            "opposite to the paper's: LR-Net-26 (width 0.125) 94.1 vs ResNet-26 (width 0.125) 97.6") in text
    # the t-test over 3 seeds decided the untargeted difference (raw p 0.021), and Holm over the report's 12 tests
    # leaves it short of 5%: the p printed is that test's, beside its adjusted value
    assert "contradicts 0" in text
    assert ("the paired test alone: not resolved, -51.9 points (paper +12.4), Holm-adjusted p = 0.233 (t-test over "
            "seeds p = 0.021, 12 tests) over 1500 paired images, 3 seeds") in text
    assert ("| LR-Net-26 (width 0.125) | adversarial | 2 | **flag** | still learning at the lr cut after epoch 6: "
            "val_acc +48.4 and val_robust_acc +27.0 points in its last two epochs") in text
    assert "| ResNet-26 (width 0.125) | regular | 0 | **pass** | converged" in text
    assert "training had not converged (seeds 0, 1, 2): see Training convergence" in text
    # the PGD-40 -> APGD-CE drops of issue 20: 43 and 50 points for two LR-Net seeds, far above the ResNets'
    assert ("- LR-Net-26 (width 0.125), adversarial training, seed 0: PGD -> APGD-CE drop of 43.0 points against a "
            "median of 5.6 for the other networks") in text
    assert "- LR-Net-26 (width 0.125), adversarial training, seed 2: no sign of masking" in text


def test_the_report_shows_each_runs_convergence_and_diagnostics(runs, tmp_path):
    """A fresh evaluation carries its convergence verdict and diagnostics in summary.json; an evaluation written
    before the check is judged from the run directory around it."""
    from test_convergence import write_run

    md = squash(write_report([runs / "resnet18-regular"], tmp_path / "r").read_text())
    summary = json.loads((runs / "resnet18-regular" / "eval-tiny" / "summary.json").read_text())
    assert summary["convergence"]["source"].endswith("metrics.jsonl") and summary["diagnostics"]["signs"] == []
    assert f"| ResNet-18 (width 0.125) | regular | 0 | **{summary['convergence']['status']}** | " in md
    assert "- ResNet-18 (width 0.125), regular training, seed 0: no sign of masking (input-gradient norm median" in md

    run = tmp_path / "old-run"
    shutil.copytree(runs / "resnet18-adversarial", run)
    old = json.loads((run / "eval-tiny" / "summary.json").read_text())
    old.pop("convergence")  # an evaluation written before the check
    (run / "eval-tiny" / "summary.json").write_text(json.dumps(old))
    write_run(run, [0.1] * 6 + [0.01], [12, 4, 19, 20, 57, 68, 82], [5, 2, 10, 12, 30, 40, 50])
    md = squash(write_report([run], tmp_path / "r2").read_text())
    assert ("| ResNet-18 (width 0.125) | adversarial | 0 | **flag** | still learning at the lr cut after epoch 6: "
            "val_acc +48.0 and val_robust_acc +28.0 points in its last two epochs") in md
    row = read_rows(tmp_path / "r2" / "table9.csv")["ResNet-18 (width 0.125)"]
    assert "training had not converged: see Training convergence" in row["notes"]
    manifest = json.loads((tmp_path / "r2" / "manifest.json").read_text())
    assert manifest[0]["training_convergence"]["status"] == "flag"


def as_outside(source: Path, dest: Path, label: str, training: str) -> Path:
    """A copy of an evaluation as if of a model from outside (lrrobust.evaluate), declared ``training``."""
    shutil.copytree(source, dest)
    summary = json.loads((dest / "summary.json").read_text())
    summary["model"]["origin"] = {"kind": "python-api", "label": label, "name": "TheirNet", "class": "x.TheirNet",
                                  "state_sha256": "ab" * 32, "training": training}
    summary["model"]["training"] = training
    (dest / "summary.json").write_text(json.dumps(summary))
    return dest


def test_an_outside_model_has_its_robust_figures_in_table_9(runs, tmp_path):
    """Issue 21, point 5: a model from outside declared regularly trained gets its own Table 9 row, marked as from
    outside, with its robust figures (not four '–' cells and its figures in a second table)."""
    outside = as_outside(runs / "resnet18-regular" / "eval-tiny", tmp_path / "theirs", "Their Net", "regular")
    write_report([runs / "resnet18-adversarial", runs / "resnet18-regular", outside], tmp_path / "r")
    md = squash((tmp_path / "r" / "table9.md").read_text())
    table = md.split("## Table 9\n")[1].split("\n\n")[0].strip()
    header, _, *rows = table.splitlines()
    assert header.split(" | ")[1:] == ["trained by", "adv. train: clean", "adv. train: targeted",
                                       "adv. train: untargeted", "regular train: clean", "regular train: targeted",
                                       "regular train: untargeted |"]
    theirs = next(r for r in rows if r.startswith("| Their Net |"))
    cells = [c.strip() for c in theirs.strip("|").split("|")]
    assert cells[1] == f"outside: python-api, sha256 {'ab' * 6}"
    figures = worst(outside).figures()
    for cell, name in zip(cells[5:], ("clean", "targeted", "untargeted")):
        assert cell.startswith(f"{100 * figures[name].accuracy:.1f} [")
    assert cells[2:5] == ["–", "–", "–"]  # declared regular: no adversarial figures invented
    assert "Their Net (from outside)" not in md.split("## Table 9")[0]  # the verdict leads with adversarial models


def test_a_report_names_no_absolute_path(runs, tmp_path, monkeypatch):
    """Issue 21, point 11: the manifest records paths relative to the working directory, the program by name."""
    monkeypatch.chdir(runs.parent)
    write_report([runs / "resnet18-adversarial"], tmp_path / "r")
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    text = json.dumps(manifest)
    assert str(runs.parent) not in text and '"/' not in text
    assert manifest[0]["source"] == "runs/resnet18-adversarial/eval-tiny"
    program = manifest[0]["evaluation"]["provenance"]["command_line"][0]
    assert "/" not in program  # its name, not where it is installed
