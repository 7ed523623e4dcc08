"""Diagnostics of gradient masking beside every evaluation (issue 20, point 5): the relation softmax, the input
gradients, the PGD -> APGD-CE drop, and the report's line per model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lrrobust.evaluation.diagnostics import diagnose, drop_signs, masking_line, pgd_apgd_drop, signs
from lrrobust.models.local_relation import LocalRelation2d


class TinyLRNet(nn.Module):
    """A 1x1 conv to 4 channels, one local relation layer (3x3 window, 2 groups), pooling and a classifier."""

    def __init__(self, query_scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pre = nn.Conv2d(1, 4, 1)
        self.relation = LocalRelation2d(4, 4, kernel_size=3, m=2, geo_prior="none")
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
        with torch.no_grad():
            self.relation.query.weight.mul_(query_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relation(self.pre(x)))


def images(n: int = 24) -> list[tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(1, 8, 8, generator=g), i % 10) for i in range(n)]


def test_a_layer_with_scaled_up_queries_has_a_near_one_hot_softmax_and_the_line_says_so():
    data = images()
    calm = diagnose(TinyLRNet(), data, list(range(len(data))), "cpu")
    sharp = diagnose(TinyLRNet(query_scale=1000.0), data, list(range(len(data))), "cpu")
    (calm_layer,), (sharp_layer,) = calm["lr_layers"], sharp["lr_layers"]
    assert calm_layer["layer"] == "relation" and calm_layer["window"] == 3 and calm_layer["positions"] == 9
    assert calm_layer["largest_weight"]["median"] < 0.5 and calm_layer["prior"] == {"min": 0.0, "max": 0.0,
                                                                                   "spread_max": 0.0}
    assert sharp_layer["largest_weight"]["median"] > 0.99
    assert sharp_layer["entropy"]["median"] < 0.1 < calm_layer["entropy"]["median"]
    assert sharp_layer["phi"]["spread_median"] > 100 * calm_layer["phi"]["spread_median"]
    assert calm["signs"] == [] and masking_line(calm, None).startswith("no sign of masking (median largest relation "
                                                                       "weight")
    assert sharp["signs"] == ["relation softmax near one-hot in relation (median largest weight 1.00 > 0.9)"]
    assert masking_line(sharp, None) == sharp["signs"][0]
    assert calm["images"] == 24 and calm["input_gradient"]["median"] > 0 and calm["input_gradient"]["zero_share"] == 0


def test_a_one_by_one_map_is_not_a_saturated_softmax():
    """A window with one position in the image is one-hot by construction and says nothing about masking."""
    model = nn.Sequential(nn.Conv2d(1, 4, 1), LocalRelation2d(4, 4, kernel_size=3, m=2), nn.Flatten(),
                          nn.Linear(4, 10))
    data = [(torch.rand(1, 1, 1), i % 10) for i in range(8)]
    (layer,) = diagnose(model, data, list(range(8)), "cpu")["lr_layers"]
    assert layer["positions"] == 1 and layer["largest_weight"] is None


def test_saturated_logits_give_zero_input_gradients_and_the_line_says_so():
    class Saturated(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = x.flatten(1)[:, :10] * 0.01
            return logits + torch.tensor([1e4] + [0.0] * 9)  # class 0 certain: float32 softmax exactly one-hot

    data = [(torch.rand(1, 8, 8), 0) for _ in range(10)]
    result = diagnose(Saturated(), data, list(range(10)), "cpu")
    assert result["input_gradient"]["zero_share"] == 1.0 and result["lr_layers"] == []
    assert signs(result) == ["input gradient exactly zero on 100% of the images"]


def test_diagnosis_leaves_the_model_and_the_random_streams_alone():
    model = TinyLRNet().train()
    state = torch.random.get_rng_state()
    diagnose(model, images(), list(range(24)), "cpu")
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not model.relation._forward_pre_hooks  # the hooks are removed


def row(attack: str, kind: str, accuracy: float, targeted: bool = False, stages=None, eps: float = 0.3) -> dict:
    return {"attack": attack, "kind": kind, "targeted": targeted, "eps": eps, "accuracy": accuracy,
            "stages": stages or []}


def attacks(pgd: float, apgd: float) -> list[dict]:
    return [row("pgd40-targeted", "pgd", 0.1, targeted=True), row("pgd40-untargeted", "pgd", pgd),
            row("check/steps-10", "pgd", pgd + 0.05), row("check/eps-0.5", "pgd", 0.0, eps=0.5),
            row("autoattack", "autoattack", apgd - 0.1, stages=[{"stage": "apgd-ce", "accuracy": apgd},
                                                                {"stage": "square", "accuracy": apgd - 0.1}])]


def test_the_pgd_to_apgd_drop_is_judged_against_the_other_networks():
    """The committed MNIST study's figures (issue 20): LR-Net-26 fell 43, 50 and 9 points, ResNet-26 2.6-5.2."""
    assert pgd_apgd_drop(attacks(0.698, 0.268), 0.3) == pytest.approx(43.0)
    assert pgd_apgd_drop([row("pgd", "pgd", 0.5)], 0.3) is None  # no AutoAttack
    drops = {"lr0": ("LR-Net-26", 43.0), "lr1": ("LR-Net-26", 50.2), "lr2": ("LR-Net-26", 9.2),
             "r0": ("ResNet-26", 2.6), "r1": ("ResNet-26", 4.0), "r2": ("ResNet-26", 5.2)}
    flagged = drop_signs(drops)
    assert sorted(flagged) == ["lr0", "lr1"]
    assert flagged["lr0"] == "PGD -> APGD-CE drop of 43.0 points against a median of 4.0 for the other networks"
    assert drop_signs({"a": ("LR-Net-26", 43.0), "b": ("LR-Net-26", 1.0)}) == {}  # no other network to compare
    line = masking_line(None, flagged["lr1"])
    assert line.startswith("PGD -> APGD-CE drop of 50.2 points")
    assert masking_line(None, None).startswith("no sign of masking in the PGD -> APGD-CE drop")
