"""The evaluation runner: outputs, exact reproduction, resume after a kill, checks; the eval-attack CLI."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from lrrobust.attacks.base import AttackSpec
from lrrobust.errors import EnvironmentFailure, UserError
from lrrobust.evaluation import state
from lrrobust.evaluation.loop import run_evaluation
from lrrobust.evaluation.suite import parse_suite
from lrrobust.evaluation.target import EvalTarget, Origin

NUM_CLASSES = 4




class Blobs(Dataset):
    """Four classes of 1x8x8 images: a bright quadrant per class plus noise; easy, so clean accuracy is high."""

    def __init__(self, n: int = 40, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % NUM_CLASSES
        self.images = 0.3 * torch.rand(n, 1, 8, 8, generator=g)
        for i, label in enumerate(self.labels.tolist()):
            r, c = divmod(label, 2)
            self.images[i, 0, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 0.3
        self.images.clamp_(0, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


def quadrant_model(seed: int = 0) -> nn.Module:
    """A model that reads the quadrants (so it is accurate) through a conv and BatchNorm (so modes matter)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(4),
                          nn.Flatten(), nn.Linear(16, NUM_CLASSES))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[:, 0, 1, 1] = 1.0
        model[0].bias.zero_()
        model[5].weight.zero_()
        for k in range(NUM_CLASSES):
            model[5].weight[k, k * 4 + k] = 20.0  # channel k, quadrant k
        model[5].weight.add_(0.5 * torch.randn(NUM_CLASSES, 16))
    return model.eval()


SUITE = {
    "name": "tiny",
    "seed": 3,
    "batch_size": 7,
    "attack": [
        {"name": "pgd-t", "kind": "pgd", "targeted": True, "eps": 0.15, "steps": 3, "restarts": 2},
        {"name": "pgd-u", "kind": "pgd", "eps": 0.15, "steps": 3},
        {"name": "fgsm", "kind": "fgsm", "eps": 0.15},
    ],
}


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def evaluate(out, suite=SUITE, **kw):
    target = EvalTarget(quadrant_model(), NUM_CLASSES, Origin(label="quadrants"))
    return run_evaluation(target, Blobs(), parse_suite(suite), out, **kw)


def test_outputs_hold_every_sample_and_hyper_parameter(tmp_path):
    summary = evaluate(tmp_path / "e")
    samples = read_csv(tmp_path / "e" / "samples.csv")
    assert list(samples[0]) == ["index", "label", "clean_pred", "attack", "key", "target", "adv_pred", "success",
                                "found_at"]
    assert len(samples) == 40 * 3
    data = Blobs()
    for row in samples:
        assert int(row["label"]) == data[int(row["index"])][1]
        if row["attack"] == "pgd-t":
            assert row["target"] != "" and int(row["target"]) != int(row["label"])
            assert int(row["success"]) == (row["adv_pred"] == row["target"])
        else:
            assert row["target"] == ""
            assert int(row["success"]) == (row["adv_pred"] != row["label"])
    assert sorted({int(r["index"]) for r in samples}) == list(range(40))
    rows = {r["attack"]: r for r in read_csv(tmp_path / "e" / "summary.csv")}
    assert set(rows) == {"pgd-t", "pgd-u", "fgsm"}
    assert rows["pgd-t"]["restarts"] == "2" and rows["pgd-t"]["steps"] == "3" and rows["pgd-t"]["seed"] == "3"
    assert float(rows["pgd-t"]["eps"]) == pytest.approx(0.15)
    assert rows["pgd-u"]["targeted_success_rate"] == ""
    on_disk = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert on_disk["clean_accuracy"] == summary["clean_accuracy"] > 0.9
    for attack in on_disk["attacks"]:
        mine = [r for r in samples if r["attack"] == attack["attack"]]
        right = sum(r["adv_pred"] == r["label"] == r["clean_pred"] for r in mine)
        assert attack["accuracy"] == pytest.approx(right / 40) and attack["correct"] == right
        assert attack["accuracy_low"] < attack["accuracy"] < attack["accuracy_high"]  # the Wilson interval
        assert attack["num_samples"] == 40
    pgd_u = next(a for a in on_disk["attacks"] if a["attack"] == "pgd-u")
    assert pgd_u["accuracy"] < summary["clean_accuracy"]  # the attack does something
    assert on_disk["provenance"]["torch_version"] == torch.__version__
    worst = on_disk["worst_case"]  # every attack at eps 0.15 together: no single attack leaves fewer standing
    assert worst["untargeted"]["correct"] <= min(a["correct"] for a in on_disk["attacks"])
    assert worst["untargeted"]["n"] == 40 and worst["untargeted_attacks"] == ["pgd-t", "pgd-u", "fgsm"]
    assert worst["targeted_attacks"] == ["pgd-t"]


def test_seeded_runs_reproduce_exactly(tmp_path):
    evaluate(tmp_path / "a")
    evaluate(tmp_path / "b")
    assert (tmp_path / "a" / "samples.csv").read_text() == (tmp_path / "b" / "samples.csv").read_text()
    evaluate(tmp_path / "c", suite={**SUITE, "seed": 4})
    a, c = read_csv(tmp_path / "a" / "samples.csv"), read_csv(tmp_path / "c" / "samples.csv")
    assert [r["target"] for r in a] != [r["target"] for r in c]


def test_a_killed_evaluation_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    evaluate(tmp_path / "whole")
    real_append = state.append_jsonl
    calls = {"n": 0}

    def dying_append(path, record):
        calls["n"] += 1
        if calls["n"] == 9:
            with open(path, "a") as f:
                f.write('{"batch": 2, "attack": "pgd-u", "adv_')  # a line torn by the kill
            raise KeyboardInterrupt
        real_append(path, record)

    monkeypatch.setattr(state, "append_jsonl", dying_append)
    with pytest.raises(KeyboardInterrupt):
        evaluate(tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "summary.json").exists()
    monkeypatch.setattr(state, "append_jsonl", real_append)

    attacked = []
    real_run = AttackSpec.run
    monkeypatch.setattr(AttackSpec, "run", lambda self, *a, **k: attacked.append(self.name) or real_run(self, *a, **k))
    evaluate(tmp_path / "resumed")
    total = 6 * 3  # 6 batches of 7 (40 samples), 3 attacks
    assert len(attacked) == total - (8 - 2)  # 8 records were written: 2 clean, 6 attacks
    for name in ("samples.csv", "summary.csv"):
        assert (tmp_path / "resumed" / name).read_text() == (tmp_path / "whole" / name).read_text()
    evaluate(tmp_path / "resumed")  # everything done: nothing is attacked again
    assert len(attacked) == total - 6


def test_a_different_command_on_the_same_directory_is_refused(tmp_path):
    evaluate(tmp_path / "e")
    with pytest.raises(UserError, match="other settings.*seed"):
        evaluate(tmp_path / "e", suite={**SUITE, "seed": 9})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an evaluation directory"):
        evaluate(tmp_path / "other")
    with pytest.raises(EnvironmentFailure, match="is a file"):  # an output that cannot be written
        evaluate(tmp_path / "other" / "notes.txt")


def test_limit_takes_a_seeded_subset(tmp_path):
    evaluate(tmp_path / "e", suite={**SUITE, "limit": 10})
    indices = [int(r["index"]) for r in read_csv(tmp_path / "e" / "samples.csv") if r["attack"] == "fgsm"]
    assert len(indices) == 10 and indices == sorted(indices) and indices != list(range(10))


def test_checks_report_pass_and_flag_with_figures(tmp_path):
    suite = {**SUITE, "attack": SUITE["attack"][1:2],
             "batch_size": 20,
             "checks": {"steps": [1, 4], "eps_grid": [0.1, 0.5], "eps_steps": 5, "restarts": 2}}
    target = EvalTarget(quadrant_model(), NUM_CLASSES)
    source = quadrant_model(seed=1)
    summary = run_evaluation(target, Blobs(), parse_suite(suite), tmp_path / "e", transfer_from="src",
                             sources={"src": source})
    checks = {c["check"]: c for c in summary["checks"]}
    assert set(checks) == {"steps", "fgsm", "eps", "restarts", "transfer", "black-box"}
    assert checks.pop("black-box")["status"] == "skipped"  # no AutoAttack, so no gradient-free attack
    for check in checks.values():
        assert check["status"] in ("pass", "flag") and check["detail"]
    assert checks["eps"]["status"] == "pass"  # a real model is broken at eps 0.5
    assert checks["eps"]["figures"]["accuracy"][-1] <= 0.05
    assert checks["steps"]["figures"]["steps"] == [1, 4]
    names = {a["attack"] for a in summary["attacks"]}
    assert {"check/steps-1", "check/steps-4", "check/fgsm", "check/eps-0.5", "check/restarts-2",
            "check/transfer"} <= names


def test_checks_flag_a_model_that_masks_gradients(tmp_path):
    """A model whose gradient is zero (a hard threshold before the classifier) hides from PGD; the checks see
    that accuracy does not fall towards zero as eps grows, and a transfer attack beats white-box."""

    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = quadrant_model()

        def forward(self, x):
            return self.inner((x > 0.5).float() + 0 * x)  # no gradient reaches the input

    suite = {**SUITE, "attack": SUITE["attack"][1:2],
             "batch_size": 20,
             "checks": {"steps": [1, 4], "eps_grid": [0.1, 0.5], "eps_steps": 5, "restarts": 2}}
    summary = run_evaluation(EvalTarget(Masked(), NUM_CLASSES), Blobs(), parse_suite(suite), tmp_path / "e",
                             transfer_from="src", sources={"src": quadrant_model()})
    checks = {c["check"]: c["status"] for c in summary["checks"]}
    assert checks["eps"] == "flag"
    assert checks["transfer"] == "flag"


# ---------------------------------------------------------------- the eval-attack command on real checkpoints


@pytest.fixture(scope="module")
def runs(report_runs):
    return report_runs


def cli(*args: str):
    from typer.testing import CliRunner

    from lrrobust.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_eval_attack_takes_a_run_directory_and_writes_the_outputs(runs, tmp_path):
    out = tmp_path / "e"
    result = cli("eval-attack", runs / "resnet18-adversarial", "--out", out, "--dataset", "digits", "--eps", "0.2",
                 "--steps", "2", "--limit", "20", "--restarts", "2")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["checkpoint"].endswith("resnet18-adversarial/best.pt")
    assert summary["model"]["training"] == "adversarial" and summary["num_samples"] == 20
    assert [a["attack"] for a in summary["attacks"]] == ["pgd2-targeted", "pgd2-untargeted"]
    assert all(a["restarts"] == 2 and a["eps"] == 0.2 for a in summary["attacks"])
    assert "pgd2-targeted" in result.output and "worst case" in result.output  # the rich summary tables
    assert len(read_csv(out / "samples.csv")) == 40
    from lrrobust.training.convergence import run_convergence

    # whether the run had finished learning, and the masking diagnostics, beside the figures
    assert summary["convergence"] == run_convergence(runs / "resnet18-adversarial").to_dict()
    assert summary["convergence"]["figures"] == ["val_acc", "val_robust_acc"]
    diagnostics = summary["diagnostics"]
    assert diagnostics["images"] == 20 and diagnostics["lr_layers"] == []  # a ResNet: gradients only
    assert 0 < diagnostics["input_gradient"]["median"] <= diagnostics["input_gradient"]["p90"]


def test_without_eps_the_checkpoint_is_attacked_at_its_training_eps_and_says_so(runs, tmp_path):
    """The adversarial run trained at the digits preset's eps 0.2; the regular one takes digits' standard eps."""
    args = ["--steps", "1", "--limit", "10", "--mode", "untargeted", "--device", "cpu"]
    for run, reason in (("resnet18-adversarial", "the eps its adversarial training used"),
                        ("resnet18-regular", ("the standard Linf eps of digits (the checkpoint was trained without "
                                              "attack)"))):
        result = cli("eval-attack", runs / run, "--out", tmp_path / run, *args)
        assert result.exit_code == 0, result.output
        assert f"eps 0.2 (51/255): {reason} (--eps or --suite to choose another)" in " ".join(result.output.split())
        summary = json.loads((tmp_path / run / "summary.json").read_text())
        assert [a["eps"] for a in summary["attacks"]] == [0.2] and summary["worst_case"]["eps"] == 0.2


def _help(*command: str) -> str:
    """A command's --help as one line of words (rich's panel borders and line breaks removed)."""
    result = cli(*command, "--help")
    assert result.exit_code == 0, result.output
    return " ".join(result.output.replace("\u2502", " ").split())


def test_eval_attack_runs_autoattack_l2_with_its_own_options(runs, tmp_path):
    """Every kind runs from the command line with the options its settings give (--n-queries, --target-classes);
    an untargeted kind runs untargeted."""
    out = tmp_path / "e"
    result = cli("eval-attack", runs / "resnet18-adversarial", "--out", out, "--attack", "autoattack-l2", "--eps",
                 "0.5", "--steps", "2", "--n-queries", "5", "--target-classes", "2", "--limit", "8")
    assert result.exit_code == 0, result.output
    (attack,) = json.loads((out / "summary.json").read_text())["attacks"]
    assert (attack["kind"], attack["targeted"], attack["norm"]) == ("autoattack-l2", False, "l2")
    assert (attack["steps"], attack["n_queries"], attack["target_classes"]) == (2, 5, 2)
    assert read_csv(out / "summary.csv")[0]["target_classes"] == "2"
    refused = cli("eval-attack", runs / "resnet18-adversarial", "--out", tmp_path / "f", "--attack", "fgsm",
                  "--eps", "0.1", "--n-queries", "5")
    assert refused.exit_code == 2 and "--n-queries does not apply to fgsm" in refused.output


def test_help_texts_state_every_presets_eps():
    from lrrobust.training.config import PRESETS

    def text(eps: float) -> str:
        return f"{round(eps * 255)}/255" if eps < 0.1 else f"{eps:g}"

    train, evaluate = _help("train-adv"), _help("eval-attack")
    for name, preset in PRESETS.items():
        assert f"{text(preset.eps)} {name}" in train, (name, train)
        assert f"{name} {text(preset.eps)}" in evaluate, (name, evaluate)
        assert f"{preset.steps} {name}" in train, (name, train)


def test_a_model_from_outside_has_no_training_record(tmp_path):
    import lrrobust

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    summary = lrrobust.evaluate(model, "digits", out=tmp_path / "e", device="cpu",
                                attacks={"limit": 10, "attack": [{"name": "pgd1", "eps": 0.1, "steps": 1}]}).summary
    assert summary["convergence"]["status"] == "n/a"
    assert summary["convergence"]["verdict"] == "n/a: no training record"
    assert summary["diagnostics"]["images"] == 10


def _bad_inputs(runs: Path, tmp: Path) -> dict[str, tuple[list, str]]:
    ckpt = runs / "resnet18-regular" / "best.pt"
    (tmp / "random.pt").write_bytes(b"\x00garbage" * 100)
    torch.save({"weights": torch.zeros(3)}, tmp / "foreign.pt")
    for split in ("train", "val"):  # an ImageFolder tree with 3 classes for a 10-class checkpoint
        for c in "abc":
            (tmp / "folder" / split / c).mkdir(parents=True)
            from PIL import Image

            Image.new("L", (8, 8)).save(tmp / "folder" / split / c / "x.png")
    (tmp / "typo.toml").write_text('[[attack]]\nname = "a"\nepz = 0.1\n')
    (tmp / "big.toml").write_text('[[attack]]\nname = "a"\neps = 2\n')
    return {
        "missing": ([tmp / "nope.pt"], "checkpoint not found"),
        "random bytes": ([tmp / "random.pt"], "not a readable lrrobust checkpoint"),
        "foreign": ([tmp / "foreign.pt"], "not an lrrobust checkpoint"),
        "classes": ([ckpt, "--dataset", "imagefolder", "--root", tmp / "folder"], "has 10 classes"),
        "unknown dataset": ([ckpt, "--dataset", "no-such-dataset"], "unknown dataset"),
        "suite keys": ([ckpt, "--suite", tmp / "typo.toml"], "unknown key epz.*valid keys"),
        "suite eps": ([ckpt, "--suite", tmp / "big.toml"], r"eps must lie in \(0, 1\]"),
        "eps zero": ([ckpt, "--eps", "0"], r"eps must lie in \(0, 1\]"),
        "eps above one": ([ckpt, "--eps", "300/255"], r"eps must lie in \(0, 1\]"),
        "eps text": ([ckpt, "--eps", "big"], "eps must be a number"),
        "suite and options": ([ckpt, "--suite", "digits", "--steps", "3"], "either --suite or attack options"),
        "no suite": ([ckpt, "--suite", "nosuch"], "suite 'nosuch' not found"),
    }


def test_bad_inputs_give_one_line_exit_2_and_write_nothing(runs, tmp_path):
    for name, (args, message) in _bad_inputs(runs, tmp_path).items():
        out = tmp_path / f"out-{name.replace(' ', '-')}"
        result = cli("eval-attack", *args, "--out", out)
        assert result.exit_code == 2, (name, result.output)
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), (name, result.output)
        assert re.search(message, " ".join(result.output.split())), (name, result.output)
        assert not out.exists(), name


def test_torchrun_shards_gather_to_the_single_process_result(runs, tmp_path):
    """Two gloo ranks on the CPU, each a shard of the batches: the gathered result equals one process's."""
    suite = runs.parent / "tiny.toml"
    args = [runs / "resnet18-regular" / "best.pt", "--suite", suite, "--no-checks", "--batch-size", "8",
            "--limit", "30", "--device", "cpu"]
    assert cli("eval-attack", *args, "--out", tmp_path / "one").exit_code == 0
    script = Path(sys.executable).parent / "lrrobust"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         "eval-attack", *map(str, args), "--out", str(tmp_path / "two")],
        check=False, capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in (tmp_path / "two" / ".state").glob("rank-*.jsonl")) == ["rank-0.jsonl",
                                                                                          "rank-1.jsonl"]
    assert (tmp_path / "two" / "samples.csv").read_text() == (tmp_path / "one" / "samples.csv").read_text()
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["world_size"] == 2
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert two["convergence"] == one["convergence"] and two["diagnostics"]["images"] == 30  # rank 0's
    assert two["diagnostics"]["input_gradient"]["median"] == pytest.approx(
        one["diagnostics"]["input_gradient"]["median"], rel=1e-4)


def test_the_headline_follows_autoattack_when_it_beats_pgd(tmp_path):
    """A weak PGD (one tiny step, no random start) leaves the model looking robust; AutoAttack does not. The
    worst case, the headline, is AutoAttack's (or lower), never PGD's."""
    suite = {"name": "weak-pgd", "seed": 0, "batch_size": 20, "attack": [
        {"name": "weak-pgd", "kind": "pgd", "eps": 0.15, "steps": 1, "step_size": 0.001, "random_start": False},
        {"name": "aa", "kind": "autoattack", "eps": 0.15, "steps": 10, "n_queries": 50},
    ]}
    summary = evaluate(tmp_path / "e", suite=suite)
    rows = {a["attack"]: a for a in summary["attacks"]}
    worst = summary["worst_case"]["untargeted"]
    assert rows["aa"]["correct"] < rows["weak-pgd"]["correct"]  # AutoAttack is the stronger attack here
    assert worst["correct"] <= rows["aa"]["correct"]
    assert worst["accuracy"] < rows["weak-pgd"]["accuracy"]
    stages = [s["stage"] for s in rows["aa"]["stages"]]
    assert stages == ["apgd-ce", "apgd-t", "fab-t", "square"]
    after = [s["correct"] for s in rows["aa"]["stages"]]
    assert after == sorted(after, reverse=True) and after[-1] == rows["aa"]["correct"]  # each component only lowers it
    samples = read_csv(tmp_path / "e" / "samples.csv")
    assert {r["found_at"] for r in samples if r["attack"] == "aa"} - {""} <= set(stages)
