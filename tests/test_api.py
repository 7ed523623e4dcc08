"""``lrrobust.evaluate`` (lrrobust.evaluation.api): tensors, a DataLoader or a dataset name in, an EvalResult out;
in memory or into an evaluation directory, through the same attack loop; and the README's example, run as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lrrobust
from lrrobust.data import load_dataset
from lrrobust.errors import UserError
from lrrobust.evaluation.standard import dataset_eps, model_eps, standard_suite

ROOT = Path(__file__).resolve().parents[1]
SUITE = {
    "name": "api-tiny", "seed": 0, "batch_size": 16,
    "attack": [{"name": "pgd3-targeted", "targeted": True, "eps": 0.2, "steps": 3},
               {"name": "pgd3-untargeted", "eps": 0.2, "steps": 3},
               {"name": "fgsm", "kind": "fgsm", "eps": 0.2}],
}


@pytest.fixture(scope="module")
def runs(report_runs) -> Path:
    return report_runs


@pytest.fixture(scope="module")
def model(runs) -> nn.Module:
    """A small ResNet-18 trained regularly on digits (the shared fixture run), in eval mode."""
    return lrrobust.load_checkpoint(runs / "resnet18-regular" / "best.pt")


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 40 digits test images and labels as tensors."""
    data = load_dataset("digits", "test")
    return torch.stack([data[i][0] for i in range(40)]), torch.tensor([data[i][1] for i in range(40)])


def _same_figures(a, b) -> None:
    assert a.clean == b.clean and a.robust == b.robust and a.targeted == b.targeted and a.attacks == b.attacks
    assert torch.equal(a.robust_mask, b.robust_mask) and torch.equal(a.indices, b.indices)


def test_tensors_in_memory_write_nothing_and_give_the_worst_case(model, digits, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x, y = digits
    result = lrrobust.evaluate(model, (x, y), attacks=SUITE, return_adv=True)
    assert list(tmp_path.iterdir()) == [] and result.out is None
    assert result.eps == 0.2 and result.norm == "Linf" and result.clean.n == result.robust.n == 40
    assert torch.equal(result.indices, torch.arange(40)) and torch.equal(result.labels, y)
    with torch.no_grad():
        clean = model(x).argmax(1)
    assert result.clean.correct == int((clean == y).sum()) > 15  # a model that learnt something
    # the worst case: robust means clean right and no attack broke it; never above any single attack's figure
    assert result.robust.correct == int(result.robust_mask.sum())
    assert result.robust.correct <= min(f.correct for f in result.attacks.values())
    assert set(result.attacks) == {"pgd3-targeted", "pgd3-untargeted", "fgsm"}
    low, high = result.robust.interval
    assert low <= result.robust.accuracy <= high
    # the adversarial images: inside the eps-ball and [0, 1]; each breaks its image, or is the clean image
    adv = result.adv_images
    assert adv.shape == x.shape and float((adv - x).abs().max()) <= 0.2 + 1e-6
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    with torch.no_grad():
        adv_pred = model(adv).argmax(1)
    broken = (clean == y) & ~result.robust_mask
    assert bool(broken.any()) and bool((adv_pred[broken] != y[broken]).all())
    assert torch.equal(adv[~broken], x[~broken])
    assert str(result).startswith(f"clean {100 * result.clean.accuracy:.1f}% [")
    assert result.summary["dataset"] == "tensors" and result.summary["model"]["origin"]["kind"] == "python-api"


def test_a_dataloader_and_an_out_directory_give_the_same_figures(model, digits, tmp_path):
    x, y = digits
    in_memory = lrrobust.evaluate(model, (x, y), attacks=SUITE)
    loader = DataLoader(TensorDataset(x, y), batch_size=7)
    from_loader = lrrobust.evaluate(model, loader, attacks=SUITE, out=tmp_path / "e")
    _same_figures(in_memory, from_loader)
    on_disk = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert on_disk["worst_case"]["untargeted"]["correct"] == from_loader.robust.correct
    assert on_disk["dataset"] == "dataloader" and from_loader.out == tmp_path / "e"
    assert (tmp_path / "e" / "samples.csv").is_file()
    first = lrrobust.evaluate(model, loader, attacks=SUITE, n=10)  # the loader's first 10 images
    assert first.clean.n == 10 and torch.equal(first.robust_mask, in_memory.robust_mask[:10])


def test_a_dataset_name_in_memory_and_on_disk_run_the_same_attacks(model, tmp_path):
    in_memory = lrrobust.evaluate(model, "digits", attacks=SUITE, n=30, seed=2)
    on_disk = lrrobust.evaluate(model, "digits", attacks=SUITE, n=30, seed=2, out=tmp_path / "e")
    _same_figures(in_memory, on_disk)
    assert in_memory.clean.n == 30 and in_memory.summary["seed"] == 2
    assert in_memory.indices.tolist() != list(range(30))  # a seeded subset of the split, as --limit
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["indices_sha256"] == \
        in_memory.summary["indices_sha256"]
    again = lrrobust.evaluate(model, "digits", attacks=SUITE, n=30, seed=2, out=tmp_path / "e")  # resumed: no work
    _same_figures(in_memory, again)
    with pytest.raises(UserError, match="holds attacks finished by an earlier run"):
        lrrobust.evaluate(model, "digits", attacks=SUITE, n=30, seed=2, out=tmp_path / "e", return_adv=True)


def test_the_threat_model_is_checked_against_the_suite(model, digits):
    x, y = digits
    with pytest.raises(UserError, match=r"suite api-tiny attacks at eps 0.2 \(51/255\), not 0.3"):
        lrrobust.evaluate(model, (x, y), attacks=SUITE, eps=0.3)
    with pytest.raises(UserError, match="suite api-tiny attacks in Linf, not L2"):
        lrrobust.evaluate(model, (x, y), attacks=SUITE, norm="L2")
    with pytest.raises(UserError, match=r"tensors carry no eps; give eps \(e.g. eps=8/255\)"):
        lrrobust.evaluate(model, (x, y))
    with pytest.raises(UserError, match="norm must be 'Linf' or 'L2'"):
        lrrobust.evaluate(model, (x, y), eps=0.1, norm="L7")
    with pytest.raises(UserError, match=r"not \[0, 1\]"):
        lrrobust.evaluate(model, (x * 2 - 1, y), attacks=SUITE)
    with pytest.raises(UserError, match="data must be a dataset name"):
        lrrobust.evaluate(model, x, attacks=SUITE)
    with pytest.raises(UserError, match="labels must be 40 integers"):
        lrrobust.evaluate(model, (x, y.float()), attacks=SUITE)


def test_standard_is_the_eps_matched_suite():
    assert standard_suite(0.2).name == "digits"  # the shipped suite at that eps
    assert standard_suite(0.3, "linf", "mnist").name == "mnist"
    assert standard_suite(16 / 255, "linf", "imagenet").name == "table9"
    assert standard_suite(0.5, "l2", "digits").name == "digits-l2"
    cifar = standard_suite(8 / 255, "linf", "cifar10")  # no shipped suite at 8/255: table9's attacks moved there
    assert cifar.name.startswith("table9@") and {a.eps for a in cifar.attacks} == {8 / 255}
    assert [a.kind for a in cifar.attacks] == [a.kind for a in standard_suite(16 / 255).attacks]
    assert cifar.attacks[0].step_size == pytest.approx(0.5 / 255)  # table9's 1/255 step, scaled with eps
    digits = standard_suite(0.1, "linf", "digits")
    assert digits.name == "digits@0.1" and digits.attacks[0].step_size == pytest.approx(1 / 80)
    assert digits.checks.enabled


def test_standard_eps_per_dataset_and_from_a_checkpoint():
    assert [dataset_eps(d) for d in ("digits", "mnist", "cifar10", "imagenet", "imagefolder")] == \
        [0.2, 0.3, 8 / 255, 16 / 255, 16 / 255]
    assert dataset_eps("digits", "l2") == 0.5 and dataset_eps("imagenet", "l2") is None
    assert model_eps({"attack": {"kind": "pgd", "norm": "linf", "eps": 0.1}}, "digits") == \
        (0.1, "the eps its adversarial training used")
    assert model_eps({"attack": None}, "mnist") == \
        (0.3, "the standard Linf eps of mnist (the checkpoint was trained without attack)")
    assert model_eps(None, "cifar10") == (8 / 255, "the standard Linf eps of cifar10")
    with pytest.raises(UserError, match="unknown dataset"):
        dataset_eps("no-such-dataset")


def test_the_readme_example_runs_as_written(runs, tmp_path, monkeypatch):
    """The README's Python block, with the demo's checkpoint path pointed at the fixture's regular run: no image
    resists it at eps 0.2, so AutoAttack's FAB-T and Square have nothing left to spend their queries on and the two
    standard-suite evaluations take seconds (the adversarial run's take half a minute each)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    demo_checkpoint = "runs/demo/runs/resnet26-adversarial-s0/best.pt"
    assert demo_checkpoint in code
    code = code.replace(demo_checkpoint, str(runs / "resnet18-regular" / "best.pt"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    result = namespace["result"]
    assert result.eps == 0.2 and result.suite == "digits" and result.clean.n == 100
    assert (tmp_path / "runs" / "api" / "summary.json").is_file()
