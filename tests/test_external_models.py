"""Models from outside lrrobust (lrrobust.external): --model-py, --torchvision and lrrobust.evaluate go through the
same evaluation and report as the zoo's models, say where the model came from, and refuse mistakes in one line."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ONE_EPOCH_RESNET, SUITES
from markdown_text import squash
from torch import nn
from torchvision.models import get_model
from typer.testing import CliRunner

import lrrobust
from lrrobust.data import dataset_info, load_dataset
from lrrobust.errors import UserError
from lrrobust.evaluation.api import evaluate
from lrrobust.evaluation.target import check_module

TINY_SUITE = {
    "name": "tiny", "seed": 0, "batch_size": 10, "limit": 20,
    "attack": [{"name": "pgd2-targeted", "targeted": True, "eps": 0.2, "steps": 2},
               {"name": "pgd2-untargeted", "eps": 0.2, "steps": 2}],
}
DIGITS = dataset_info("digits")

# torchvision's resnet18 on digits: one input channel, a 3x3 stride-1 stem and no max-pool for the 8x8 images;
# the factory returns (module, mean, std), so lrrobust normalises the [0, 1] pixels for it.
FACTORY = '''import torch
from torch import nn
from torchvision.models import resnet18


def digits_resnet18():
    model = resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 3, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def build():
    model = digits_resnet18()
    model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    return model.eval(), MEAN, STD
'''


def digits_resnet18() -> nn.Module:
    """The factory's architecture, built here again as the reference."""
    model = get_model("resnet18", num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 3, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def cli(*args):
    from lrrobust.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The factory file, its weights (random, seeded, BatchNorm statistics made non-trivial) and the suite."""
    root = tmp_path_factory.mktemp("external")
    torch.manual_seed(0)
    model = digits_resnet18()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    torch.save(model.state_dict(), root / "weights.pt")
    header = f"WEIGHTS = {str(root / 'weights.pt')!r}\nMEAN = {list(DIGITS.mean)}\nSTD = {list(DIGITS.std)}\n"
    (root / "mymodels.py").write_text(header + FACTORY)
    shutil.copyfile(SUITES / "external_tiny.toml", root / "tiny.toml")
    return root


@pytest.fixture(scope="module")
def zoo_eval(trained_run, evaluated_run) -> Path:
    """A real zoo model (a small ResNet-18 trained one epoch on digits) evaluated with the tiny suite."""
    return evaluated_run(trained_run(**ONE_EPOCH_RESNET), "external_tiny.toml", label="Our ResNet-18")


@pytest.fixture(scope="module")
def outside_eval(work) -> Path:
    out = work / "eval-model-py"
    result = cli("eval-attack", "--model-py", f"{work / 'mymodels.py'}:build", "--dataset", "digits", "--suite",
                 work / "tiny.toml", "--out", out, "--label", "My ResNet-18", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return out


def reference_predictions(model: nn.Module, mean, std, indices: list[int]) -> list[int]:
    """The model's own top-1 on the digits test images, normalised by hand."""
    data = load_dataset("digits", "test")
    images = torch.stack([data[i][0] for i in indices])
    mean, std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        return model.eval()((images - mean) / std).argmax(1).tolist()


# ---------------------------------------------------------------- --model-py, the report, the Python API


def test_model_py_is_evaluated_like_a_zoo_model(work, outside_eval, zoo_eval):
    summary = json.loads((outside_eval / "summary.json").read_text())
    zoo = json.loads((zoo_eval / "summary.json").read_text())
    assert summary["schema"] == zoo["schema"] == 3
    assert set(summary) == set(zoo)  # the same fields: attacks, worst case, checks, provenance...
    origin = summary["model"]["origin"]
    assert origin["kind"] == "model-py" and origin["label"] == "My ResNet-18" and origin["factory"] == "build"
    assert origin["path"] == str(work / "mymodels.py")
    assert origin["sha256"] == hashlib.sha256((work / "mymodels.py").read_bytes()).hexdigest()
    assert origin["mean"] == list(DIGITS.mean) and origin["class"] == "torchvision.models.resnet.ResNet"
    assert zoo["model"]["origin"] == {"kind": "lrrobust", "label": "Our ResNet-18"}
    assert zoo["model"]["config"]["model"] == "resnet18"  # the recipe of a model lrrobust trained
    samples = read_csv(outside_eval / "samples.csv")
    assert list(samples[0]) == list(read_csv(zoo_eval / "samples.csv")[0])
    assert len(samples) == 2 * 20 and summary["num_samples"] == 20
    assert summary["indices_sha256"] == zoo["indices_sha256"]  # the same images: the report can pair them
    # the clean predictions are the factory's module on (x - mean) / std, computed here independently
    rows = [r for r in samples if r["attack"] == "pgd2-untargeted"]
    model = digits_resnet18()
    model.load_state_dict(torch.load(work / "weights.pt", weights_only=True))
    expected = reference_predictions(model, DIGITS.mean, DIGITS.std, [int(r["index"]) for r in rows])
    assert [int(r["clean_pred"]) for r in rows] == expected
    assert len(set(expected)) > 1  # not a constant model: the comparison says something


def test_report_shows_the_label_and_marks_the_outside_model(outside_eval, zoo_eval, tmp_path):
    result = cli("report", zoo_eval, outside_eval, "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    md = squash((tmp_path / "r" / "table9.md").read_text())
    sha = json.loads((outside_eval / "summary.json").read_text())["model"]["origin"]["sha256"]
    table = md.split("## Table 9")[1].split("##")[0]
    assert re.search(rf"\| My ResNet-18 \| outside: model-py, sha256 {sha[:12]} \|", table), table
    assert re.search(r"\| Our ResNet-18 \| lrrobust \|", table), table
    assert sha not in table  # a prefix in the table, the full hash in the CSV and the manifest
    rows = {r["network"]: r for r in read_csv(tmp_path / "r" / "table9.csv")}
    assert rows["My ResNet-18"]["origin"] == "model-py" and rows["Our ResNet-18"]["origin"] == "lrrobust"
    assert rows["My ResNet-18"]["origin_sha256"] == f"regular: {sha}"
    assert rows["My ResNet-18"]["reg_clean"] != ""  # its figures fill the regular columns it was declared into
    manifest = {m["network"]: m for m in json.loads((tmp_path / "r" / "manifest.json").read_text())}
    assert manifest["My ResNet-18"]["origin"]["sha256"] == sha
    assert manifest["Our ResNet-18"]["origin"]["kind"] == "lrrobust"
    assert "from outside lrrobust (model-py)" in md and sha in md.split("## Runs")[1]


def test_a_label_may_not_name_a_zoo_model_and_an_outside_one(outside_eval, zoo_eval, tmp_path):
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(outside_eval, twin)
    data = json.loads((twin / "summary.json").read_text())
    data["model"]["origin"]["label"] = "Our ResNet-18"
    (twin / "summary.json").write_text(json.dumps(data))
    result = cli("report", zoo_eval, twin, "--out", tmp_path / "r")
    assert result.exit_code == 2, result.output
    assert "Our ResNet-18 names both a model trained by lrrobust and one from outside" in " ".join(result.output.split())
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_python_api_matches_the_cli(work, outside_eval, tmp_path):
    """lrrobust.evaluate on the same module attacks exactly as --model-py did: identical per-sample records."""
    assert lrrobust.evaluate is evaluate
    model = digits_resnet18()
    model.load_state_dict(torch.load(work / "weights.pt", weights_only=True))
    result = lrrobust.evaluate(model.eval(), "digits", attacks=TINY_SUITE, out=tmp_path / "api", label="API ResNet",
                               mean=DIGITS.mean, std=DIGITS.std)
    summary = result.summary
    assert summary["model"]["origin"]["kind"] == "python-api"
    assert summary["model"]["origin"]["label"] == "API ResNet"
    assert (tmp_path / "api" / "samples.csv").read_text() == (outside_eval / "samples.csv").read_text()
    on_disk = json.loads((tmp_path / "api" / "summary.json").read_text())
    assert on_disk["worst_case"] == json.loads((outside_eval / "summary.json").read_text())["worst_case"]


def test_importing_lrrobust_does_not_import_torch():
    code = "import sys, lrrobust; print('torch' in sys.modules, 'evaluate' in lrrobust.__all__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0 and proc.stdout.split() == ["False", "True"], proc.stderr


def test_old_summaries_still_read_as_trained_by_lrrobust(zoo_eval, tmp_path):
    import shutil

    from lrrobust.evaluation.summary import read_summary

    old = tmp_path / "old"
    shutil.copytree(zoo_eval, old)
    data = json.loads((old / "summary.json").read_text())
    data["schema"] = 2
    del data["model"]["origin"]
    (old / "summary.json").write_text(json.dumps(data))
    summary = read_summary(old)
    assert summary.origin.to_dict() == {"kind": "lrrobust", "label": None} and not summary.outside
    data["schema"] = 3  # from schema 3 on, the origin is required
    (old / "summary.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="damaged"):
        read_summary(old)


@pytest.mark.slow
def test_torchvision_with_local_weights_on_a_three_channel_image_folder(make_image_tree, tmp_path):
    tree = make_image_tree(tmp_path / "tree", per_class=2, size=(40, 36))
    torch.manual_seed(1)
    model = get_model("mobilenet_v3_small", num_classes=2)
    torch.save(model.state_dict(), tmp_path / "mnv3.pt")
    out = tmp_path / "e"
    suite = tmp_path / "s.toml"
    suite.write_text('[[attack]]\nname = "fgsm"\nkind = "fgsm"\neps = "4/255"\n')
    result = cli("eval-attack", "--torchvision", "mobilenet_v3_small", "--weights", tmp_path / "mnv3.pt",
                 "--dataset", "imagefolder", "--root", tree, "--suite", suite, "--out", out, "--device", "cpu",
                 "--training", "adversarial")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    origin = summary["model"]["origin"]
    assert origin["kind"] == "torchvision" and origin["name"] == "mobilenet_v3_small"
    assert origin["label"] == "torchvision mobilenet_v3_small" and origin["training"] == "adversarial"
    assert origin["sha256"] == hashlib.sha256((tmp_path / "mnv3.pt").read_bytes()).hexdigest()
    info = dataset_info("imagefolder", tree)
    assert origin["mean"] == pytest.approx(info.mean) and origin["std"] == pytest.approx(info.std)
    data = load_dataset("imagefolder", "test", tree)
    images = torch.stack([data[i][0] for i in range(len(data))])
    mean, std = torch.tensor(info.mean).view(1, 3, 1, 1), torch.tensor(info.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.eval()((images - mean) / std).argmax(1).tolist()
    assert [int(r["clean_pred"]) for r in read_csv(out / "samples.csv")] == expected


# ---------------------------------------------------------------- one-line errors


TINY_MODELS = '''import torch
from torch import nn


def linear(classes=10):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, classes))


def good():
    return linear().eval()


def five_classes():
    return linear(5).eval()


def in_train_mode():
    return nn.Sequential(nn.Flatten(), nn.BatchNorm1d(64), nn.Linear(64, 10))


def raises():
    raise ValueError("no weights here")


def not_a_module():
    return "resnet"


def three_means():
    return good(), [0.5, 0.5, 0.5], [0.2, 0.2, 0.2]


def zero_std():
    return good(), 0.5, 0.0


class NoGrad(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = linear()

    def forward(self, x):
        with torch.no_grad():
            return self.inner(x)


def no_gradient():
    return NoGrad().eval()


def a_tuple():
    return good(), 0.5


def probabilities():
    return nn.Sequential(linear(), nn.Softmax(dim=1)).eval()


class Noisy(nn.Module):
    """Gaussian noise on the input in every mode (a randomised defence)."""

    def __init__(self):
        super().__init__()
        self.inner = linear()

    def forward(self, x):
        return self.inner(x + 0.05 * torch.randn_like(x))


def noisy():
    return Noisy().eval()


class FunctionalDropout(nn.Module):
    """Dropout through torch.nn.functional: no Dropout module, but the output depends on the mode."""

    def __init__(self):
        super().__init__()
        self.inner = linear()

    def forward(self, x):
        return self.inner(nn.functional.dropout(x, 0.5, self.training))


def functional_dropout():
    return FunctionalDropout()


def plain_train_mode():
    return linear()  # in train mode, but no module of it depends on the mode


def factory():
    return nn.Sequential(nn.Flatten(), nn.BatchNorm1d(64), nn.Linear(64, 10))
'''


def _error_cases(tmp: Path) -> dict[str, tuple[list, str]]:
    (tmp / "m.py").write_text(TINY_MODELS)
    (tmp / "broken.py").write_text("def build(:\n")
    (tmp / "garbage.pt").write_bytes(b"\x00not a torch file" * 10)
    torch.save({"weight": torch.zeros(2), "hook": os.getcwd}, tmp / "code.pt")
    torch.save({"weight": torch.zeros(2), "epoch": 3}, tmp / "not_state.pt")
    torch.save(get_model("mobilenet_v3_small", num_classes=3).state_dict(), tmp / "three.pt")
    m = tmp / "m.py"
    digits = ["--dataset", "digits"]
    return {
        "spec without factory": (["--model-py", str(m), *digits], "must be FILE.py:FACTORY"),
        "spec with a bad name": (["--model-py", f"{m}:1x", *digits], "must be FILE.py:FACTORY"),
        "missing file": (["--model-py", f"{tmp / 'nope.py'}:build", *digits], "no file .*nope.py"),
        "import fails": (["--model-py", f"{tmp / 'broken.py'}:build", *digits],
                         "importing .*broken.py failed: SyntaxError"),
        "no such factory": (["--model-py", f"{m}:buld", *digits],
                            "has no function 'buld'; callables defined there: .*good"),
        "factory raises": (["--model-py", f"{m}:raises", *digits], r"raises\(\) raised ValueError: no weights here"),
        "not a module": (["--model-py", f"{m}:not_a_module", *digits], "gave a str; give a torch.nn.Module"),
        "tuple of two": (["--model-py", f"{m}:a_tuple", *digits], "gave a tuple of 2"),
        "train mode": (["--model-py", f"{m}:in_train_mode", *digits],
                       r"m\.py:in_train_mode: 1 \(BatchNorm1d\) is in train mode.* call model\.eval\(\)"),
        "mode-dependent forward": (["--model-py", f"{m}:functional_dropout", *digits],
                                   r"some module is in train mode and the output depends on it .*call model\.eval\(\)"),
        "probabilities": (["--model-py", f"{m}:probabilities", *digits],
                          (r"returns probabilities \(every row non-negative and summing to 1\), not logits.*before "
                           "the softmax")),
        "random": (["--model-py", f"{m}:noisy", *digits],
                   ("is random: two forward passes on the same digits images differ .*make the forward pass "
                    "deterministic")),
        "output shape": (["--model-py", f"{m}:five_classes", *digits],
                         r"has shape \(2, 5\); expected logits of shape \(2, 10\)"),
        "no gradient": (["--model-py", f"{m}:no_gradient", *digits], "no gradient flows"),
        "mean length": (["--model-py", f"{m}:three_means", *digits], "mean must be one finite number or 1"),
        "std zero": (["--model-py", f"{m}:zero_std", *digits], "std must be positive"),
        "no dataset": (["--model-py", f"{m}:good"], "--dataset is required"),
        "bad label": (["--model-py", f"{m}:good", *digits, "--label", "a|b"], "label .* without '|'"),
        "two models": ([tmp / "run", "--model-py", f"{m}:good", *digits], "give one model"),
        "no model": (digits, "give one model"),
        "training with a checkpoint": ([tmp / "run", "--training", "regular"], "--training is for --model-py"),
        "weights alone": (["--model-py", f"{m}:good", "--weights", tmp / "three.pt", *digits],
                          "--weights and --download go with --torchvision"),
        "unknown torchvision": (["--torchvision", "resnet19", "--weights", tmp / "three.pt", *digits],
                                "no classification model 'resnet19' .*did you mean resnet18"),
        "torchvision without weights": (["--torchvision", "resnet18", *digits],
                                        "needs --weights FILE .* or --download"),
        "weights missing": (["--torchvision", "resnet18", "--weights", tmp / "nope.pt", *digits], "no file"),
        "weights garbage": (["--torchvision", "resnet18", "--weights", tmp / "garbage.pt", *digits],
                            r"not a readable state dict \(not a file torch.save wrote"),
        "weights importing code": (["--torchvision", "resnet18", "--weights", tmp / "code.pt", *digits],
                                   r"it would import posix.getcwd, which safe loading \(weights_only\) refuses"),
        "weights not a state dict": (["--torchvision", "resnet18", "--weights", tmp / "not_state.pt", *digits],
                                     r"is not a state dict \(names to tensors\)"),
        "weights and download": (["--torchvision", "resnet18", "--weights", tmp / "three.pt", "--download", *digits],
                                 "needs --weights FILE .* or --download .*one of them"),
        "download for ten classes": (["--torchvision", "resnet18", "--download", *digits],
                                     "torchvision's resnet18 weights have 1000 classes but digits has 10"),
        "weights mismatch": (["--torchvision", "mobilenet_v3_small", "--weights", tmp / "three.pt", *digits],
                             r"does not fit torchvision mobilenet_v3_small with 10 classes: size mismatch"),
    }


@pytest.mark.slow
def test_mistakes_give_one_line_exit_2_and_write_nothing(tmp_path):
    for name, (args, message) in _error_cases(tmp_path).items():
        out = tmp_path / f"out-{name.replace(' ', '-')}"
        result = cli("eval-attack", *args, "--out", out, "--eps", "0.2", "--steps", "1", "--limit", "4",
                     "--device", "cpu")
        assert result.exit_code == 2, (name, result.output)
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), (name, result.output)
        assert re.search(message, " ".join(result.output.split())), (name, result.output)
        assert not out.exists(), name


@pytest.mark.slow
def test_a_torchvision_model_on_one_channel_digits_fails_on_the_first_batch(tmp_path):
    torch.save(get_model("mobilenet_v3_small", num_classes=10).state_dict(), tmp_path / "ten.pt")
    result = cli("eval-attack", "--torchvision", "mobilenet_v3_small", "--weights", tmp_path / "ten.pt",
                 "--dataset", "digits", "--out", tmp_path / "e", "--device", "cpu")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert re.search(r"--torchvision mobilenet_v3_small failed on a batch of 2 digits images of shape \(2, 1, 8, 8\): "
                     "RuntimeError", text)
    assert not (tmp_path / "e").exists()


def test_python_api_refuses_a_model_in_train_mode_and_other_mistakes(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(64), nn.Linear(64, 10))
    with pytest.raises(UserError, match=r"lrrobust.evaluate: 1 \(BatchNorm1d\) is in train mode.*model.eval"):
        lrrobust.evaluate(model, "digits", attacks=TINY_SUITE, out=tmp_path / "a")
    model.eval()
    with pytest.raises(UserError, match="give mean and std together"):
        lrrobust.evaluate(model, "digits", attacks=TINY_SUITE, out=tmp_path / "a", mean=0.5)
    with pytest.raises(UserError, match="--training must be regular or adversarial"):
        lrrobust.evaluate(model, "digits", attacks=TINY_SUITE, out=tmp_path / "a", training="robust")
    with pytest.raises(UserError, match="lrrobust.evaluate takes a torch.nn.Module, got a str"):
        lrrobust.evaluate("resnet18", "digits", attacks=TINY_SUITE, out=tmp_path / "a")
    five = nn.Sequential(nn.Flatten(), nn.Linear(64, 5)).eval()
    with pytest.raises(UserError, match=r"has shape \(2, 5\); expected logits of shape \(2, 10\)"):
        lrrobust.evaluate(five, "digits", attacks=TINY_SUITE, out=tmp_path / "a")
    assert not (tmp_path / "a").exists()


class _Normalized(torch.utils.data.Dataset):
    """Digits already normalised by mean/std (as a torchvision Normalize transform would): pixels outside [0, 1]."""

    def __init__(self) -> None:
        self.data = load_dataset("digits", "test")

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        image, label = self.data[i]
        return (image - DIGITS.mean[0]) / DIGITS.std[0], label


def test_images_outside_zero_one_are_refused_before_any_attack():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    check_module(model, load_dataset("digits", "test"), 10, "digits", torch.device("cpu"))  # [0, 1]: fine
    with pytest.raises(UserError, match=r"gives pixels in \[-0\.812, .*\], not \[0, 1\]"):
        check_module(model, _Normalized(), 10, "digits", torch.device("cpu"))


# ---------------------------------------------------------------- the model checks before any attack


def _tiny_models() -> dict:
    namespace: dict = {}
    exec(TINY_MODELS, namespace)  # noqa: S102 - the factories of the --model-py tests, as Python objects
    return namespace


@pytest.mark.parametrize(("factory", "message"), [
    ("probabilities", (r"^lrrobust.evaluate returns probabilities \(every row non-negative and summing to 1\), "
                       r"not logits: .*return the scores before the softmax$")),
    ("noisy", (r"^lrrobust.evaluate is random: two forward passes on the same digits images differ .*make the "
               r"forward pass deterministic in eval mode$")),
    ("factory", r"^lrrobust.evaluate: 1 \(BatchNorm1d\) is in train mode, .*call model.eval\(\) on it first$"),
    ("functional_dropout", r"^lrrobust.evaluate: some module is in train mode and the output depends on it"),
])
def test_python_api_refuses_probabilities_randomness_and_mode_dependence_in_one_line(factory, message, tmp_path):
    model = _tiny_models()[factory]()
    with pytest.raises(UserError) as caught:
        lrrobust.evaluate(model, "digits", attacks=TINY_SUITE, out=tmp_path / "a")
    assert "\n" not in str(caught.value) and re.search(message, str(caught.value)), str(caught.value)
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_a_model_in_train_mode_whose_output_does_not_depend_on_it_is_accepted(tmp_path):
    (tmp_path / "m.py").write_text(TINY_MODELS)
    result = cli("eval-attack", "--model-py", f"{tmp_path / 'm.py'}:plain_train_mode", "--dataset", "digits", "--eps",
                 "0.2", "--steps", "1", "--limit", "4", "--device", "cpu", "--out", tmp_path / "e")
    assert result.exit_code == 0, result.output
    model = _tiny_models()["plain_train_mode"]()
    assert model.training
    result = lrrobust.evaluate(model, "digits", attacks=TINY_SUITE, n=8)
    assert result.clean.n == 8
    assert all(m.training for m in model.modules())  # its modes are left as they were given
    normalised = lrrobust.evaluate(model, "digits", attacks=TINY_SUITE, n=8, mean=0.3, std=0.4)  # wrapped: the same
    assert normalised.clean.n == 8 and model.training


@pytest.mark.slow
def test_user_text_is_printed_as_written_never_as_emoji_or_markup(tmp_path):
    """rich turns ':factory:' into an emoji and eats '[bold]' unless told not to; user text must come out verbatim."""
    (tmp_path / "mine.py").write_text(TINY_MODELS)
    result = cli("eval-attack", "--model-py", f"{tmp_path / 'mine.py'}:factory", "--dataset", "digits", "--eps", "0.2",
                 "--out", tmp_path / "e")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "--model-py mine.py:factory: 1 (BatchNorm1d) is in train mode" in text, result.output
    assert "\N{FACTORY}" not in result.output
    label = ":smile: [bold]My[/bold] net"
    out = tmp_path / "run:thumbsup:[red]"
    result = cli("eval-attack", "--model-py", f"{tmp_path / 'mine.py'}:good", "--dataset", "digits", "--eps", "0.2",
                 "--steps", "1", "--limit", "4", "--device", "cpu", "--label", label, "--out", out)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert label in text and f"wrote {out}/summary.json" in text, result.output
    assert "\N{SMILING FACE WITH OPEN MOUTH}" not in result.output and "\N{THUMBS UP SIGN}" not in result.output


@pytest.mark.slow
def test_an_outside_model_without_eps_is_attacked_at_the_datasets_standard_eps(tmp_path):
    (tmp_path / "m.py").write_text(TINY_MODELS)
    result = cli("eval-attack", "--model-py", f"{tmp_path / 'm.py'}:good", "--dataset", "digits", "--steps", "1",
                 "--limit", "4", "--device", "cpu", "--out", tmp_path / "e")
    assert result.exit_code == 0, result.output
    assert "eps 0.2 (51/255): the standard Linf eps of digits (--eps or --suite to choose another)" in \
        " ".join(result.output.split())
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert {a["eps"] for a in summary["attacks"]} == {0.2}
    assert summary["suite_config"]["description"].endswith("eps: the standard Linf eps of digits")


# ---------------------------------------------------------------- models that exit, hang or turn NaN

UNRULY_MODELS = '''import os
import sys
import time

import torch
from torch import nn


def linear():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()


def exits_0():
    sys.exit(0)


def exits_3():
    sys.exit(3)


def interrupts():
    raise KeyboardInterrupt


def hard_exit():
    os._exit(0)


def sleeps():
    time.sleep(600)


class Later(nn.Module):
    """A linear model whose forward pass misbehaves from its call number ``after + 1`` on."""

    def __init__(self, after, how):
        super().__init__()
        self.inner = linear()
        self.calls, self.after, self.how = 0, after, how

    def forward(self, x):
        self.calls += 1
        out = self.inner(x)
        if self.calls <= self.after:
            return out
        if self.how == "nan":
            return out * float("nan")
        if self.how == "sleep":
            time.sleep(600)
        os._exit(0)


def nan_after_three():
    return Later(3, "nan").eval()


def nan_after_eight():
    return Later(8, "nan").eval()


def sleeps_in_forward():
    return Later(0, "sleep").eval()


def exits_while_attacked():
    return Later(8, "exit").eval()
'''
UNRULY_FILES = {"sysexit_at_import.py": "import sys\nsys.exit(0)\n", "osexit_at_import.py": "import os\nos._exit(0)\n",
                "interrupt_at_import.py": "raise KeyboardInterrupt\n"}
QUICK = ["--dataset", "digits", "--eps", "0.2", "--steps", "2", "--limit", "8", "--batch-size", "4", "--mode",
         "untargeted", "--device", "cpu"]


@pytest.fixture(scope="module")
def unruly(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("unruly")
    (root / "m.py").write_text(UNRULY_MODELS)
    for name, text in UNRULY_FILES.items():
        (root / name).write_text(text + "\n\ndef build():\n    pass\n")
    return root


def one_error_line(result, code: int = 2) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == code and len(lines) == 1 and lines[0].startswith("error:"), result.output
    return " ".join(result.output.split())


@pytest.mark.parametrize(("spec", "message"), [
    ("m.py:exits_0", r"m\.py:exits_0\(\) raised SystemExit \(it called sys\.exit\(0\); .*must return, not exit\)"),
    ("m.py:exits_3", r"raised SystemExit \(it called sys\.exit\(3\)"),
    ("m.py:interrupts", r"m\.py:interrupts\(\) raised KeyboardInterrupt"),
    ("m.py:hard_exit", r"m\.py:hard_exit ended its process with exit code 0 \(as os\._exit\(0\) does\) while"),
    ("sysexit_at_import.py:build", r"importing .*sysexit_at_import\.py failed: SystemExit"),
    ("osexit_at_import.py:build", r"osexit_at_import\.py:build ended its process with exit code 0"),
    ("interrupt_at_import.py:build", r"importing .*interrupt_at_import\.py failed: KeyboardInterrupt"),
])
def test_a_model_file_or_factory_that_exits_ends_eval_attack_in_one_line_with_exit_2(unruly, tmp_path, spec,
                                                                                       message):
    """Issue 23, finding 5: sys.exit(0) and os._exit(0) ended eval-attack with exit code 0 and nothing written,
    sys.exit(3) with code 3 and no message, KeyboardInterrupt with 130."""
    out = tmp_path / "e"
    text = one_error_line(cli("eval-attack", "--model-py", unruly / spec, *QUICK, "--out", out))
    assert re.search(message, text), text
    assert not out.exists()


@pytest.mark.slow
def test_a_model_that_exits_while_attacked_never_ends_with_exit_0(unruly, tmp_path):
    out = tmp_path / "e"
    text = one_error_line(cli("eval-attack", "--model-py", f"{unruly / 'm.py'}:exits_while_attacked", *QUICK,
                              "--out", out))
    assert "ended its process with exit code 0 (as os._exit(0) does) during the attacks" in text
    assert not (out / "summary.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("factory", ["sleeps", "sleeps_in_forward"])
def test_a_model_that_hangs_while_loading_or_on_its_first_batch_is_stopped_after_model_timeout(unruly, tmp_path,
                                                                                                factory):
    """Issue 23, finding 6: a factory or forward pass that sleeps hung eval-attack with no output."""
    import time

    cli("eval-attack", "--model-py", f"{unruly / 'm.py'}:linear", *QUICK, "--out", tmp_path / "warm")  # server up
    started = time.monotonic()
    text = one_error_line(cli("eval-attack", "--model-py", f"{unruly / 'm.py'}:{factory}", *QUICK,
                              "--model-timeout", "2", "--out", tmp_path / "e"))
    assert time.monotonic() - started < 60
    assert f"m.py:{factory} was not loaded and tried on its first batch within 2 s (--model-timeout)" in text
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize(("options", "message"), [
    (["--model-timeout", "0"], "--model-timeout must be a finite number of seconds > 0"),
    (["--model-timeout", "nan"], "--model-timeout must be a finite number of seconds > 0"),
    (["--model-timeout", "soon"], "Invalid value for '--model-timeout'"),
])
def test_model_timeout_values_that_make_no_sense(unruly, tmp_path, options, message):
    text = one_error_line(cli("eval-attack", "--model-py", f"{unruly / 'm.py'}:linear", *QUICK, *options, "--out",
                              tmp_path / "e"))
    assert message in text


@pytest.mark.slow
@pytest.mark.parametrize(("factory", "where"), [
    ("nan_after_three", r"the clean pass on batch (\d) of 2"),
    ("nan_after_eight", r"attack pgd2-untargeted on batch (\d) of 2"),
])
def test_a_model_that_turns_nan_stops_the_evaluation_naming_the_attack_and_batch(unruly, tmp_path, factory, where):
    """Issue 23, finding 4: a model returning NaN after its third call got "robust accuracy 0.0", every image a
    successful attack predicting class 0, exit 0."""
    from lrrobust.evaluation.state import read_state

    out = tmp_path / "e"
    text = one_error_line(cli("eval-attack", "--model-py", f"{unruly / 'm.py'}:{factory}", *QUICK, "--out", out))
    found = re.search(rf"--model-py m\.py:{factory} gave a non-finite output \(NaN or inf\) in {where}; ", text)
    assert found, text
    assert not (out / "summary.json").exists()
    batch = int(found.group(1)) - 1
    stage = "__clean__" if "clean" in where else "attack"
    recorded = read_state(out) if out.exists() else {}
    assert not [key for b, key in recorded if b == batch and (stage == "__clean__" or key != "__clean__")]


def test_the_python_api_stops_on_a_model_that_turns_nan_during_an_attack(unruly):
    namespace: dict = {}
    exec((unruly / "m.py").read_text(), namespace)  # noqa: S102 - the factories above, as Python objects
    with pytest.raises(UserError, match=r"^lrrobust.evaluate gave a non-finite output \(NaN or inf\) in attack "
                                        r"pgd2-(un)?targeted on batch \d of 2; "):
        lrrobust.evaluate(namespace["nan_after_eight"](), "digits", attacks=TINY_SUITE)
