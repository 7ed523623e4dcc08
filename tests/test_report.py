"""Table 9 reports from real short training runs and their evaluations (lrrobust report)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lrrobust.errors import UserError
from lrrobust.report import PAPER_TABLE9, collect, headline, network_name, write_report

TINY_SUITE = """
name = "tiny"
seed = 0
batch_size = 30
limit = 60

[[attack]]
name = "pgd3-targeted"
targeted = true
eps = 0.2
steps = 3

[[attack]]
name = "pgd3-untargeted"
eps = 0.2
steps = 3

[checks]
steps = [1, 3]
eps_grid = [0.2, 0.5]
eps_steps = 3
restarts = 2
"""


pytestmark = pytest.mark.usefixtures("one_thread_module")


def real_runs(base: Path) -> Path:
    """Short real training runs on digits (made once per test session): a small ResNet-18 trained regularly and
    adversarially, both evaluated with a tiny suite (RUN/eval-tiny), and a ResNet-26 run left unevaluated."""
    runs = base / "runs"
    if (runs / "done").exists():
        return runs
    from lrrobust.evaluation.evaluate import evaluate
    from lrrobust.evaluation.suite import parse_suite
    from lrrobust.training import TrainConfig, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base.mkdir(parents=True, exist_ok=True)
        (base / "tiny.toml").write_text(TINY_SUITE)
        import tomllib

        suite = parse_suite(tomllib.loads(TINY_SUITE))
        for adversarial in (False, True):
            out = runs / f"resnet18-{'adversarial' if adversarial else 'regular'}"
            train(TrainConfig(model="resnet18", model_kwargs={"width": 0.125}, epochs=3, out=str(out), device="cpu",
                              adversarial=adversarial, steps=2 if adversarial else None), progress=False)
            evaluate(out, "digits", suite, out / "eval-tiny", device="cpu", progress=False)
        train(TrainConfig(model="resnet26", model_kwargs={"width": 0.125}, epochs=1,
                          out=str(runs / "resnet26-regular"), device="cpu"), progress=False)
    finally:
        torch.set_num_threads(threads)
    (runs / "done").write_text("")
    return runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return real_runs(tmp_path_factory.getbasetemp() / "lrrobust-eval-fixture")


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as f:
        return {r["network"]: r for r in csv.DictReader(f)}


def test_report_from_real_runs(runs, tmp_path):
    out = tmp_path / "report"
    md_path = write_report([runs], out)
    assert md_path == out / "table9.md"
    for name in ("table9.md", "table9.csv", "manifest.json", "accuracy_vs_steps.png", "accuracy_vs_eps.png"):
        assert (out / name).is_file(), name
    assert (out / "accuracy_vs_steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no temporaries

    rows = read_rows(out / "table9.csv")
    resnet = rows["ResNet-18 (width 0.125)"]
    for training, prefix in (("adversarial", "adv"), ("regular", "reg")):
        summary = json.loads((runs / f"resnet18-{training}" / "eval-tiny" / "summary.json").read_text())
        assert float(resnet[f"{prefix}_clean"]) == pytest.approx(100 * summary["clean_accuracy"], abs=0.01)
        targeted, untargeted = headline(summary, True), headline(summary, False)
        assert targeted["attack"] == "pgd3-targeted" and untargeted["attack"] == "pgd3-untargeted"
        assert float(resnet[f"{prefix}_targeted"]) == pytest.approx(100 * targeted["accuracy"], abs=0.01)
        assert float(resnet[f"{prefix}_untargeted"]) == pytest.approx(100 * untargeted["accuracy"], abs=0.01)
        assert float(resnet[f"{prefix}_targeted_success"]) == pytest.approx(
            100 * targeted["targeted_success_rate"], abs=0.01)
    assert resnet["missing"] == "" and resnet["paper_adv_clean"] == ""  # digits: no paper figures beside

    unevaluated = rows["ResNet-26 (width 0.125)"]
    metrics = [json.loads(x) for x in (runs / "resnet26-regular" / "metrics.jsonl").read_text().splitlines()]
    assert float(unevaluated["reg_clean"]) == pytest.approx(100 * max(m["test_acc"] for m in metrics), abs=0.01)
    assert unevaluated["adv_clean"] == "" and unevaluated["reg_targeted"] == ""
    assert "adv_clean: no adversarial run" in unevaluated["missing"]
    assert "reg_targeted: not evaluated" in unevaluated["missing"]

    md = md_path.read_text()
    assert "![Accuracy against PGD steps](accuracy_vs_steps.png)" in md
    assert "![Accuracy against eps](accuracy_vs_eps.png)" in md
    assert "– (no adversarial run)" in md and "– (not evaluated" in md
    assert "accuracy falls towards zero as eps grows" in md and ("**pass**" in md or "**flag**" in md)
    assert "pgd3-targeted: pgd targeted, eps 51/255, step 17/255, 3 steps, random start, 1 restart" in md
    manifest = json.loads((out / "manifest.json").read_text())
    evaluated = [m for m in manifest if "evaluation" in m]
    assert len(manifest) == 3 and len(evaluated) == 2
    for item in evaluated:
        ev = item["evaluation"]
        assert ev["seed"] == 0 and ev["num_samples"] == 60 and len(ev["sha256"]) == 64
        assert ev["environment"]["torch"] == torch.__version__
        assert item["training_config"]["seed"] == 0 and item["training_manifest"]["torch_version"]


def test_imagenet_reports_put_the_papers_figures_beside(runs, tmp_path):
    """The same evaluation relabelled as an ImageNet LR-Net-26 gets Table 9's LR-Net-26 figures beside it."""
    ev = tmp_path / "ev"
    shutil.copytree(runs / "resnet18-adversarial" / "eval-tiny", ev)
    summary = json.loads((ev / "summary.json").read_text())
    summary["dataset"] = "imagenet"
    summary["model"]["model_spec"] = {"name": "lrnet26", "num_classes": 1000, "kwargs": {}}
    (ev / "summary.json").write_text(json.dumps(summary))
    write_report([ev], tmp_path / "r")
    row = read_rows(tmp_path / "r" / "table9.csv")["LR-Net-26"]
    paper = PAPER_TABLE9["lrnet26"]
    assert [float(row[k]) for k in ("paper_adv_clean", "paper_adv_targeted", "paper_adv_untargeted",
                                    "paper_reg_clean")] == list(paper)
    md = (tmp_path / "r" / "table9.md").read_text()
    assert "paper: targeted" in md and "| 44.2 |" in md


def test_network_names():
    assert network_name({"name": "lrnet26", "kwargs": {"in_chans": 1, "mean": [0.3], "width": 0.25}}) == \
        "LR-Net-26 (width 0.25)"
    assert network_name({"name": "resnet50", "kwargs": {}}) == "ResNet-50"
    assert network_name({"name": "resnet26_dw", "kwargs": {}}) == "ResNet-26 DW"


def test_bad_report_inputs(runs, tmp_path):
    with pytest.raises(UserError, match="two adversarial evaluations"):
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
