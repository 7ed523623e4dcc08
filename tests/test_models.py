"""The model zoo: every registered model on small inputs, the paper's sizes, options and errors; the registry's
metadata, and a network of another architecture registered in one place."""

from __future__ import annotations

import io
import json

import pytest
import torch
from typer.testing import CliRunner

from lrrobust.cli import app
from lrrobust.errors import UserError
from lrrobust.models import (
    LocalRelation2d,
    count_flops,
    count_params,
    create_model,
    list_models,
    model_info,
    registered_models,
)

PAPER_FIGURES = {m.name: m.paper for m in registered_models() if m.paper is not None}

SMALL = {"in_chans": 1, "stem": "small", "width": 0.125, "mean": [0.5], "std": [0.25]}




def small_model(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=5, **{**SMALL, **kw})


def test_registry_metadata():
    """Every network has a family, a display name of its own and, where the paper gives them, its sizes; each depth
    of the paper has a ResNet and an LR-Net."""
    infos = registered_models()
    assert sorted(m.name for m in infos) == list_models()
    assert len({m.display for m in infos}) == len(infos)
    assert {"resnet", "lrnet", "nl"} <= {m.family for m in infos}
    for depth in (18, 26, 50, 101):
        assert model_info(f"resnet{depth}").display == f"ResNet-{depth}"
        assert model_info(f"lrnet{depth}").display == f"LR-Net-{depth}" and model_info(f"lrnet{depth}").paper
    assert (model_info("resnet26_dw").family, model_info("nl26").family) == ("resnet", "nl")


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_on_small_input(name):
    model = small_model(name).train()
    with torch.no_grad():  # move off the zero inits (last BN of each block, query) so every path carries gradient
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.rand(2, 1, 16, 16, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # a constant added to every logit of a window cancels in the softmax: the prior's output bias alone gets none
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0 and not n.endswith("prior.bias2")]
    assert not zero, f"zero gradient for {zero[:5]}"
    assert x.grad is not None and x.grad.abs().sum() > 0, "attacks need the input gradient"


@pytest.mark.parametrize("name", list_models())
def test_spec_rebuilds_the_architecture_and_state_dict_round_trips(name):
    model = small_model(name).eval()
    spec = json.loads(json.dumps(model.spec))
    assert spec == model.spec, "spec must be JSON-able as is (lists, not tuples)"
    rebuilt = create_model(spec["name"], spec["num_classes"], **spec["kwargs"]).eval()
    assert rebuilt.spec == model.spec
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    rebuilt.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


def test_normalisation_is_inside_the_model():
    model = small_model("lrnet26", mean=[0.3], std=[0.2]).eval()
    assert model.mean.flatten().tolist() == pytest.approx([0.3]) and model.std.flatten().tolist() == pytest.approx(
        [0.2]
    )
    other = small_model("lrnet26", mean=[0.0], std=[1.0]).eval()
    other.load_state_dict({k: v for k, v in model.state_dict().items() if k not in ("mean", "std")}, strict=False)
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), other((x - 0.3) / 0.2))


def test_train_and_eval_agree_for_a_whole_lrnet_when_batch_norm_is_fixed():
    """Everything but BN behaves the same in both modes; with BN in eval, the prior cache must not change the output."""
    model = small_model("lrnet26")
    x = torch.rand(2, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        cached = model(x)
    for mod in model.modules():
        if isinstance(mod, LocalRelation2d):
            mod.prior.train()
    with torch.no_grad():
        fresh = model(x)
    assert torch.equal(cached, fresh)


@pytest.mark.parametrize("name", sorted(set(PAPER_FIGURES) - {"nl26"}))  # nl26: FLOP-matched, see docs/model_zoo.md
def test_parameter_counts_match_the_paper(name):
    with torch.device("meta"):
        model = create_model(name)
    assert count_params(model) == pytest.approx(PAPER_FIGURES[name].params, rel=0.03)


def test_flops_are_the_usual_multiply_adds_and_lrnets_match_resnets():
    with torch.device("meta"):
        counts = {n: count_flops(create_model(n)) for n in ("resnet50", "lrnet50", "resnet101", "lrnet101")}
    assert counts["resnet50"] == pytest.approx(4.089e9, rel=0.002)  # torchvision's 4.09 GFLOPS
    assert counts["lrnet50"] == pytest.approx(counts["resnet50"], rel=0.02)  # Table 2: same FLOPs
    assert counts["lrnet101"] == pytest.approx(counts["resnet101"], rel=0.02)  # Table 8: same FLOPs


def test_lrnet50_has_the_widths_of_table_2():
    with torch.device("meta"):
        model = create_model("lrnet50")
    widths = [stage[0].conv2.in_channels for stage in model.stages]
    assert widths == [100, 200, 400, 800]
    assert all(isinstance(stage[0].conv2, LocalRelation2d) for stage in model.stages)
    assert isinstance(model.stem[3], LocalRelation2d) and model.stem[3].stride == 2


ABLATIONS = [
    ("lrnet26", {"kernel_size": 3}),
    ("lrnet26", {"kernel_size": 5}),
    ("lrnet26", {"kernel_size": 9, "geo_prior": "table"}),
    ("lrnet26", {"kernel_size": "full", "geo_prior": "table"}),
    ("lrnet26", {"kernel_size": "full", "geo_prior": "none"}),
    ("lrnet26", {"composability": "absdiff"}),
    ("lrnet26", {"composability": "product"}),
    ("lrnet26", {"normalize": "none"}),
    ("lrnet26", {"m": 1}),
    ("lrnet26", {"m": 16, "alpha": 1.0}),
    ("resnet26", {"kernel_size": 7}),
    ("resnet26_dw", {"kernel_size": 9}),
]


@pytest.mark.parametrize(("name", "options"), ABLATIONS, ids=lambda v: str(v))
def test_ablation_options_build_and_run(name, options):
    model = small_model(name, **options)
    assert model.spec["kwargs"].items() >= options.items()
    layers = [m for m in model.modules() if isinstance(m, LocalRelation2d)]
    for key, value in options.items():
        if key in ("composability", "normalize", "m"):
            assert all(getattr(layer, key) == value for layer in layers)
        if key == "geo_prior":
            assert all(layer.prior.kind == value for layer in layers)
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    out = model(x)
    out.sum().backward()
    assert out.shape == (2, 5) and torch.isfinite(out).all() and torch.isfinite(x.grad).all()


def test_kernel_size_reaches_the_spatial_layers():
    assert small_model("resnet26", kernel_size=5).stages[0][0].conv2.kernel_size == (5, 5)
    assert small_model("lrnet26", kernel_size=5).stages[0][0].conv2.kernel_size == 5


@pytest.mark.parametrize(
    ("name", "kwargs", "needles"),
    [
        ("lrnet27", {}, ["unknown model 'lrnet27'", "lrnet26", "resnet50"]),
        ("lrnet26", {"kernel": 7}, ["no option 'kernel'", "kernel_size", "geo_prior"]),
        ("lrnet26", {"kernel_size": 4}, ["kernel_size", "3, 5, 7, 9, 'full'"]),
        ("resnet26", {"kernel_size": "full"}, ["kernel_size", "3, 5, 7, 9;"]),
        ("resnet26", {"geo_prior": "mlp"}, ["no option 'geo_prior'"]),
        ("lrnet26", {"geo_prior": "learned"}, ["'mlp', 'table', 'none'"]),
        ("lrnet26", {"composability": "dot"}, ["'sqdiff', 'absdiff', 'product'"]),
        ("lrnet26", {"normalize": "l1"}, ["'softmax', 'none'"]),
        ("lrnet26", {"stem": "cifar"}, ["'imagenet', 'half', 'small'"]),
        ("lrnet26", {"width": 0}, ["width must be a positive number"]),
        ("lrnet26", {"m": 2.5}, ["m (channels per aggregation)"]),
        ("lrnet26", {"in_chans": 1}, ["in_chans=1 needs mean="]),
        ("lrnet26", {"in_chans": 1, "mean": [0.5, 0.5], "std": [1.0]}, ["mean must have in_chans=1 numbers"]),
    ],
)
def test_bad_names_and_options_say_what_is_valid(name, kwargs, needles):
    with pytest.raises(UserError) as info:
        create_model(name, **kwargs)
    for needle in needles:
        assert needle in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_torch_compile_of_a_small_lrnet():
    from lrrobust.models import ResNet

    torch.manual_seed(0)
    model = ResNet("basic", [1], "lr", num_classes=3, in_chans=1, mean=[0.5], std=[0.5], stem="small", width=0.125)
    model.eval()
    x = torch.rand(2, 1, 8, 8)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
    model.train()
    xg = x.clone().requires_grad_()
    compiled(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_models_command_prints_the_zoo_beside_the_paper():
    result = CliRunner().invoke(app, ["models", "resnet26", "lrnet26", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["resnet26"]["paper_params"] == 16.0e6
    assert rows["lrnet26"]["params"] == pytest.approx(14.7e6, rel=0.03)
    table = CliRunner().invoke(app, ["models", "resnet18", "lrnet50"], terminal_width=200)
    assert table.exit_code == 0, table.output
    assert "resnet18" in table.output and "11.7M" in table.output and "23.3M" in table.output


def test_models_command_refuses_unknown_names_and_options():
    result = CliRunner().invoke(app, ["models", "no_such_model"])
    assert result.exit_code == 2
    assert "unknown model 'no_such_model'" in result.output and "lrnet26" in result.output
    result = CliRunner().invoke(app, ["models", "lrnet26", "--set", "kernel_size=4"])
    assert result.exit_code == 2
    assert "kernel_size" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_alpha_for_flops_equalises_an_ablation_with_resnet26():
    from lrrobust.models.flops import alpha_for_flops

    with torch.device("meta"):
        target = count_flops(create_model("resnet26"))
        alpha = alpha_for_flops("resnet26", target, kernel_size=7)
        assert alpha * 64 == round(alpha * 64) and alpha < 0.6  # a 7x7 conv is ~5x a 3x3: far narrower
        assert count_flops(create_model("resnet26", kernel_size=7, alpha=alpha)) == pytest.approx(target, rel=0.03)
        assert alpha_for_flops("lrnet101", count_flops(create_model("resnet101"))) == 103 / 64


@pytest.mark.parametrize("name", ["resnet18", "resnet26", "lrnet26", "resnet26_nl"])
def test_every_residual_block_starts_as_the_identity(name):
    """The last BN of every residual block (and of every non-local block) starts at zero (Goyal et al.), so each
    block's residual branch adds nothing at initialisation; every other BN starts at weight 1, bias 0."""
    from lrrobust.models.blocks import BasicBlock, Bottleneck

    model = create_model(name, num_classes=10, width=0.25)
    last = {id(m.bn3) for m in model.modules() if isinstance(m, Bottleneck)}
    last |= {id(m.bn2) for m in model.modules() if isinstance(m, BasicBlock)}
    last |= {id(m.bn) for m in model.modules() if type(m).__name__ == "NonLocalBlock"}
    assert last
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            assert bool((mod.weight == (0.0 if id(mod) in last else 1.0)).all()) and not bool(mod.bias.any())


# ---------------------------------------------------------------- a network of another architecture


class TinyConvNet(torch.nn.Module):
    """No ResNet: two convolutions and a classifier, normalising inside like every network of the zoo."""

    def __init__(self, num_classes: int, in_chans: int, mean: list[float], std: list[float], stem: str,
                 width: float) -> None:
        super().__init__()
        channels = max(1, round(16 * width))
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(in_chans, channels, 3, stride=1 if stem == "small" else 2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(channels, channels, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))
        self.fc = torch.nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features((x - self.mean) / self.std).flatten(1))


@pytest.fixture()
def tiny_convnet(monkeypatch):
    """``tinyconv`` registered for one test the way a file of lrrobust/models/ registers a network."""
    from lrrobust.models import registry
    from lrrobust.models.paper import PaperFigure

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @registry.register_model(family="convnet", display="TinyConv-2", paper=PaperFigure(1.0e3, 1.0e6, "none"))
    def tinyconv(num_classes: int = 1000, in_chans: int = 3, mean: list[float] = (0.5,) * 3,
                 std: list[float] = (0.5,) * 3, stem: str = "imagenet", width: float = 1.0) -> TinyConvNet:
        return TinyConvNet(num_classes, in_chans, list(mean), list(std), stem, width)

    return "tinyconv"


@pytest.mark.slow
def test_a_network_of_another_architecture_is_registered_in_one_place(tiny_convnet, tmp_path):
    from lrrobust.evaluation.target import check_module
    from lrrobust.report.collect import network_name
    from lrrobust.report.table9 import Row, family

    assert tiny_convnet in list_models() and model_info(tiny_convnet).family == "convnet"
    model = small_model(tiny_convnet).eval()
    assert model.spec["kwargs"]["width"] == 0.125 and model(torch.rand(2, 1, 8, 8)).shape == (2, 5)
    rebuilt = create_model(model.spec["name"], model.spec["num_classes"], **model.spec["kwargs"])
    assert type(rebuilt) is TinyConvNet and rebuilt.spec == model.spec
    check_module(model, [(torch.rand(1, 8, 8), 0)] * 2, 5, "digits", torch.device("cpu"))  # an attackable model
    with pytest.raises(UserError, match="tinyconv has no option 'kernel_size'; valid options: in_chans"):
        create_model(tiny_convnet, kernel_size=3)
    # the report names it by its display name and leaves it out of the LR-Net/ResNet tests; `models` lists it
    assert network_name(model.spec) == "TinyConv-2 (width 0.125)"
    assert family(Row("TinyConv-2", tiny_convnet, {}, {})) == "convnet"
    assert family(Row("LR-Net-26", "lrnet26", {}, {})) == "lrnet"
    result = CliRunner().invoke(app, ["models", "--json", "--image-size", "32"])
    assert result.exit_code == 0, result.output
    names = [r["name"] for r in json.loads(result.output)]
    assert names[-1] == tiny_convnet and names[:2] == ["resnet18", "lrnet18"]  # registration order
    rows = {r["name"]: r for r in json.loads(CliRunner().invoke(app, ["models", tiny_convnet, "--json"]).output)}
    assert rows[tiny_convnet]["paper_params"] == 1.0e3 and rows[tiny_convnet]["params"] > 0


def test_training_builds_a_registered_network_of_another_architecture(tiny_convnet, tmp_path):
    import lrrobust
    from lrrobust.training import TrainConfig, train

    run = train(TrainConfig(model=tiny_convnet, dataset="digits", epochs=1, batch_size=256, out=str(tmp_path / "r"),
                            device="cpu"), progress=False)
    model = lrrobust.load_checkpoint(run / "best.pt")
    assert type(model) is TinyConvNet and model.spec["kwargs"]["stem"] == "small"
