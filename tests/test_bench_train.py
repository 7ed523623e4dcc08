"""``lrrobust bench train``: the three steps per model, interleaved, with ratios to the baseline (issue 19)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from lrrobust.bench.train import STEPS, attack_step, ratios_to, skip_aggregation
from lrrobust.cli import app
from lrrobust.models import LocalRelation2d, create_model


def test_bench_train_times_every_step_of_every_model_with_ratios(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "train", "--models", "lrnet26,resnet26", "--dataset", "digits",
                                      "--width", "0.0625", "--batch", "4", "--steps", "2", "--rounds", "2",
                                      "--warmup", "0", "--threads", "1", "--json", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert [r["model"] for r in records] == ["lrnet26", "resnet26"]
    for r in records:
        assert r["dataset"] == "digits" and r["image_size"] == 8 and r["stem"] == "small" and r["threads"] == 1
        assert r["pgd_steps"] == 2 and r["batch_size"] == 4
        for step in STEPS:
            assert len(r[f"{step}_times_s"]) == 2 and r[f"{step}_step_s"] > 0
        assert r["adv_ratio"] == pytest.approx(r["adv_train_step_s"] / r["train_step_s"])
        assert len(r["load_average_start"]) == 3 and r["cpu"]
    ratios = ratios_to(records, "resnet26")
    assert ratios[("resnet26", False, False, True)] == {step: 1.0 for step in STEPS}
    lr = ratios[("lrnet26", False, False, True)]
    assert lr["attack"] == pytest.approx(records[0]["attack_step_s"] / records[1]["attack_step_s"])
    assert "attack / resnet26" in result.output and "load average" in result.output


def test_without_aggregation_times_the_lr_net_around_its_op(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "train", "--models", "lrnet26,resnet26", "--dataset", "digits",
                                      "--width", "0.0625", "--batch", "4", "--steps", "1", "--rounds", "1",
                                      "--warmup", "0", "--without-aggregation", "--json", str(out)],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert [(r["model"], r["aggregation"]) for r in records] == [("lrnet26", True), ("lrnet26", False),
                                                                ("resnet26", True)]
    assert ("lrnet26", False, False, False) in ratios_to(records, "resnet26")
    assert "no aggregation" in result.output


def test_skip_aggregation_passes_the_strided_input_on_and_keeps_the_value_transform():
    torch.manual_seed(0)
    model = create_model("lrnet26", 10, in_chans=1, mean=[0.5], std=[0.25], stem="small", width=0.0625).eval()
    layers = [m for m in model.modules() if isinstance(m, LocalRelation2d)]
    x = torch.rand(2, layers[0].in_channels, 8, 8)
    strided = next(layer for layer in layers if layer.stride > 1)
    assert skip_aggregation(model) == len(layers)
    torch.testing.assert_close(layers[0](x), layers[0].value(x))
    xs = torch.rand(2, strided.in_channels, 8, 8)
    torch.testing.assert_close(strided(xs), strided.value(xs[:, :, ::strided.stride, ::strided.stride]))
    assert skip_aggregation(create_model("resnet26", 10, width=0.0625)) == 0


def test_bench_train_variants_and_stem(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "train", "--models", "resnet18", "--dataset", "mnist", "--stem",
                                      "small", "--width", "0.0625", "--batch", "2", "--steps", "1", "--rounds", "1",
                                      "--warmup", "0", "--all-variants", "--json", str(out)])
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert [(r["amp"], r["channels_last"]) for r in records] == [(False, False), (True, False), (False, True),
                                                                 (True, True)]
    assert all(r["stem"] == "small" and r["image_size"] == 28 for r in records)
    assert ratios_to(records, "resnet26") == {}


@pytest.mark.parametrize("args,message", [
    (["--models", "no_such_model"], "unknown model 'no_such_model'"),
    (["--dataset", "no-such-dataset"], "no-such-dataset"),
    (["--stem", "tiny"], "--stem must be one of"),
    (["--batch", "0"], "must be >= 1"),
    (["--dataset", "imagefolder"], "no fixed input size"),
])
def test_bench_train_mistakes_are_one_line(args, message):
    result = CliRunner().invoke(app, ["bench", "train", *args])
    assert result.exit_code == 2 and message in result.output


def test_attack_step_is_the_input_gradient_in_eval_mode_and_restores_the_model():
    torch.manual_seed(0)
    model = create_model("lrnet26", 10, in_chans=1, mean=[0.5], std=[0.25], stem="small", width=0.0625).train()
    images, labels = torch.rand(3, 1, 8, 8), torch.tensor([1, 2, 3])
    grad = attack_step(model, images, labels)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    x = images.clone().requires_grad_(True)
    model.eval()
    torch.nn.functional.cross_entropy(model(x), labels).backward()
    torch.testing.assert_close(grad, x.grad)
