"""The rest of the paper's models: query/key dimension (Table 4), non-local networks (Table 7) and the
convolutional stem of LR-Nets (Sec. 4.2, Fig. 3)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import lrrobust.models.local_relation as local_relation_module
from lrrobust.cli import app
from lrrobust.errors import UserError
from lrrobust.models import LocalRelation2d, count_flops, count_params, create_model, model_info
from lrrobust.models.flops import aggregation_flops, local_relation_flops
from lrrobust.models.nonlocal_block import NL_SUBSAMPLE, NonLocal2d, NonLocalBlock
from lrrobust.ops.reference import local_relation_reference

SMALL = {"in_chans": 1, "stem": "small", "width": 0.125, "mean": [0.5], "std": [0.25]}


def small_model(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=5, **{**SMALL, **kw})


def randomise(module: torch.nn.Module, scale: float = 0.7) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * scale)
    return module


# --- Table 4: query/key dimension -------------------------------------------------------------------------------


def loop_relation(query, key, value, prior, kernel_size, stride, kind, qk_dim):
    """Eq. 2 with d-vector query and key, one window offset at a time (shifted slices, no unfold).

    Phi(q, k) is the sum over the d components of Eq. 3/4/5, times 1/sqrt(d); positions outside the image take
    no part in the softmax.
    """
    n, channels, h, w = value.shape
    groups = key.shape[1] // qk_dim
    per_group = -(-channels // groups)
    r = (kernel_size - 1) // 2
    ho, wo = math.ceil(h / stride), math.ceil(w / stride)
    q = query.reshape(n, groups, qk_dim, ho, wo)
    key_pad = F.pad(key, (r, r, r, r)).reshape(n, groups, qk_dim, h + 2 * r, w + 2 * r)
    value_pad = F.pad(value, (r, r, r, r))
    inside_pad = F.pad(torch.ones(h, w, dtype=torch.bool), (r, r, r, r))
    logits, values = [], []
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            rows = slice(r + dy, r + dy + (ho - 1) * stride + 1, stride)
            cols = slice(r + dx, r + dx + (wo - 1) * stride + 1, stride)
            k = key_pad[..., rows, cols]
            if kind == "sqdiff":
                phi = -((q - k) ** 2).sum(2)
            elif kind == "absdiff":
                phi = -(q - k).abs().sum(2)
            else:
                phi = (q * k).sum(2)
            phi = phi / math.sqrt(qk_dim) + prior[:, dy + r, dx + r].view(1, groups, 1, 1)
            logits.append(phi.masked_fill(~inside_pad[rows, cols], float("-inf")))
            values.append(value_pad[..., rows, cols])
    weights = torch.stack(logits, 2).softmax(2)  # (N, G, K*K, Ho, Wo)
    weights = weights.repeat_interleave(per_group, 1)[:, :channels]
    return (weights * torch.stack(values, 2)).sum(2)


QK_CASES = [
    {"qk_dim": 1, "stride": 1, "kernel_size": 3, "composability": "sqdiff"},
    {"qk_dim": 2, "stride": 1, "kernel_size": 3, "composability": "sqdiff"},
    {"qk_dim": 4, "stride": 2, "kernel_size": 5, "composability": "sqdiff"},
    {"qk_dim": 2, "stride": 2, "kernel_size": 3, "composability": "product"},
    {"qk_dim": 8, "stride": 1, "kernel_size": 5, "composability": "absdiff"},
    {"qk_dim": 16, "stride": 2, "kernel_size": 3, "composability": "product"},
]


@pytest.mark.parametrize("case", QK_CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_qk_dim_layer_matches_the_loop_over_window_offsets(case):
    """d = 1 checks the loop against the compiled op; d > 1 checks the layer against the loop."""
    torch.manual_seed(0)
    layer = randomise(LocalRelation2d(6, 5, m=3, geo_prior="table", **case)).double()
    x = torch.randn(2, 6, 5, 6, dtype=torch.float64)
    s = case["stride"]
    q, k = layer.query(x[:, :, ::s, ::s]), layer.key(x)
    agg = loop_relation(q, k, x, layer.prior.table, case["kernel_size"], s, case["composability"], case["qk_dim"])
    torch.testing.assert_close(layer(x), layer.value(agg))


@pytest.mark.parametrize("stride", [1, 2])
def test_qk_dim_gradients_pass_gradcheck(stride):
    torch.manual_seed(1)
    d, groups, channels = 2, 2, 3
    h, w = 4, 5
    ho, wo = math.ceil(h / stride), math.ceil(w / stride)
    shapes = [(1, groups * d, ho, wo), (1, groups * d, h, w), (1, channels, h, w), (groups, 3, 3)]  # q, k, v, prior
    inputs = [torch.randn(shape, dtype=torch.float64, requires_grad=True) for shape in shapes]
    for kind in ("sqdiff", "product"):

        def fn(*tensors, kind=kind):
            return local_relation_reference(*tensors, kernel_size=3, stride=stride, composability_kind=kind, qk_dim=d)

        assert torch.autograd.gradcheck(fn, inputs)


def test_qk_dim_one_keeps_the_fused_op_and_larger_dims_leave_it(monkeypatch):
    calls = []
    fused = local_relation_module.local_relation
    monkeypatch.setattr(local_relation_module, "local_relation", lambda *a: calls.append(a) or fused(*a))
    x = torch.randn(1, 8, 5, 5)
    LocalRelation2d(8, m=4)(x)
    assert len(calls) == 1 and calls[0][0].shape[1] == 2
    LocalRelation2d(8, m=4, qk_dim=4)(x)
    assert len(calls) == 1


def test_qk_dim_grows_query_and_key_and_the_counts_follow():
    base, wide = LocalRelation2d(64, m=8), LocalRelation2d(64, m=8, qk_dim=4)
    assert wide.query.out_channels == wide.key.out_channels == 8 * 4
    # two 1x1 transforms 64 -> 8 d, with bias: 2 * (64 + 1) * 8 * (d - 1) more parameters
    assert count_params(wide) - count_params(base) == 2 * 65 * 8 * 3
    for stride in (1, 2):
        layer = LocalRelation2d(64, kernel_size=7, m=8, stride=stride, qk_dim=4)
        h = w = 14
        ho = math.ceil(h / stride)
        transforms = 64 * 32 * ho * ho + 64 * 32 * h * w + 64 * 64 * ho * ho  # query, key, value convs
        total = transforms + aggregation_flops(layer, h, w)
        assert total == pytest.approx(local_relation_flops(64, 7, 8, stride, h, w, qk_dim=4))


def test_qk_dim_in_create_model_the_models_command_and_errors():
    with torch.device("meta"):
        one, four = create_model("lrnet26"), create_model("lrnet26", qk_dim=4)
    layers = [m for m in four.modules() if isinstance(m, LocalRelation2d)]
    assert layers and all(layer.qk_dim == 4 for layer in layers)
    extra = sum(2 * (layer.in_channels + 1) * layer.groups * 3 for layer in layers)
    assert count_params(four) - count_params(one) == extra
    assert count_flops(four) > count_flops(one)
    result = CliRunner().invoke(app, ["models", "lrnet26", "--set", "qk_dim=4", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["params"] == count_params(four)
    for bad in (3, 0, "2", True):
        with pytest.raises(UserError, match=r"qk_dim must be one of 1, 2, 4, 8, 16") as info:
            create_model("lrnet26", qk_dim=bad)
        assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="no option 'qk_dim'"):
        create_model("resnet26", qk_dim=2)


def test_qk_dim_model_trains_and_round_trips():
    model = small_model("lrnet26", qk_dim=4).train()
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    model(x).logsumexp(1).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    rebuilt = create_model(
        model.spec["name"], model.spec["num_classes"], **json.loads(json.dumps(model.spec["kwargs"]))
    )
    rebuilt.load_state_dict(model.state_dict())
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


# --- Table 7: non-local networks ---------------------------------------------------------------------------------


def loop_nonlocal(layer: NonLocal2d, x: torch.Tensor) -> torch.Tensor:
    """Wang et al.'s Eq. 1-3 one query pixel at a time: keys and values from the max-pooled input."""
    n, c, h, w = x.shape
    s, p = layer.stride, layer.subsample
    ho, wo = math.ceil(h / s), math.ceil(w / s)
    hk, wk = math.ceil(h / p), math.ceil(w / p)
    pooled = torch.empty(n, c, hk, wk, dtype=x.dtype)
    for i in range(hk):
        for j in range(wk):
            pooled[:, :, i, j] = x[:, :, i * p : (i + 1) * p, j * p : (j + 1) * p].amax((2, 3))
    keys = layer.phi(pooled).flatten(2)  # (N, inner, hk*wk)
    values = layer.g(pooled).flatten(2)
    out = torch.empty(n, layer.inner, ho, wo, dtype=x.dtype)
    for i in range(ho):
        for j in range(wo):
            query = layer.theta(x[:, :, i * s : i * s + 1, j * s : j * s + 1]).flatten(1)  # (N, inner)
            weights = (torch.einsum("nc,ncj->nj", query, keys) / math.sqrt(layer.inner)).softmax(1)
            out[:, :, i, j] = torch.einsum("nj,ncj->nc", weights, values)
    return layer.out(out)


@pytest.mark.parametrize(("stride", "subsample"), [(1, 1), (2, 1), (1, 2), (2, 4)])
def test_nonlocal_layer_matches_the_per_pixel_loop(stride, subsample):
    torch.manual_seed(2)
    layer = randomise(NonLocal2d(6, 5, stride=stride, subsample=subsample), 0.5).double()
    x = torch.randn(2, 6, 7, 6, dtype=torch.float64)
    assert layer.inner == 3
    torch.testing.assert_close(layer(x), loop_nonlocal(layer, x))


def test_nonlocal_block_starts_as_the_identity_in_every_network():
    block = NonLocalBlock(8, subsample=2).train()
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(block(x), x)
    for name in ("resnet26_nl", "lrnet26_nl"):
        blocks = [m for m in small_model(name).modules() if isinstance(m, NonLocalBlock)]
        assert len(blocks) == 8 and all(torch.count_nonzero(b.bn.weight) == 0 for b in blocks)


def test_flop_count_includes_the_attention_matmuls():
    layer = NonLocal2d(8, 6, stride=2, subsample=2)  # inner 4; 7x6 input: 4x3 queries, 4x3 keys
    convs = 8 * 4 * 12 + 2 * 8 * 4 * 12 + 4 * 6 * 12  # theta, phi and g, out
    assert count_flops(layer, (8, 7, 6)) == convs + 2 * 12 * 12 * 4


def test_nonlocal_networks_place_their_layers_as_table_7_says():
    with torch.device("meta"):
        resnet, nl_net, resnet_nl = create_model("resnet26"), create_model("nl26"), create_model("resnet26_nl")
    # ResNet-26-NL: a non-local block after every residual block, at the block's output channels
    for stage, subsample in zip(resnet_nl.stages, NL_SUBSAMPLE):
        kinds = [type(m).__name__ for m in stage]
        assert kinds == ["Bottleneck", "NonLocalBlock"] * 2
        assert all(b.op.in_channels == stage[0].conv3.out_channels and b.op.subsample == subsample for b in stage[1::2])
    # the 22.3M extra parameters: 2 C^2 per block (theta, phi, g to C/2, W_z back), mostly at res5's C = 2048,
    # plus the biases of theta and g (C/2 each) and the BN (2 C)
    extra = sum(2 * c * c + 3 * c for c in (256, 256, 512, 512, 1024, 1024, 2048, 2048))
    assert count_params(resnet_nl) - count_params(resnet) == extra
    # NL-26: every 3x3 conv is a non-local layer, nothing else changes; alpha gives ResNet-26's FLOPs
    assert all(isinstance(block.conv2, NonLocal2d) for stage in nl_net.stages for block in stage)
    assert not [m for m in nl_net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert count_flops(nl_net) == pytest.approx(count_flops(resnet), rel=0.01)
    with torch.device("meta"):
        nl_alpha1 = create_model("nl26", alpha=1.0)
    widths = [64, 64, 128, 128, 256, 256, 512, 512]
    nl_params = sum(3 * w * (w // 2) + 2 * (w // 2) + (w // 2) * w for w in widths)  # theta, phi, g (2 biases), W_z
    assert count_params(nl_alpha1) == count_params(resnet) - sum(9 * w * w for w in widths) + nl_params


@pytest.mark.parametrize("name", ["resnet26_nl", "lrnet26_nl"])
def test_nonlocal_networks_have_the_papers_parameters(name):
    """Within 1%: the block is fully specified (Wang et al.) and so is its placement (Sec. 6.1, Table 7)."""
    with torch.device("meta"):
        model = create_model(name)
    assert count_params(model) == pytest.approx(model_info(name).paper.params, rel=0.01)


def test_nonlocal_networks_in_the_models_command():
    result = CliRunner().invoke(app, ["models", "nl26", "resnet26_nl", "lrnet26_nl", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["resnet26_nl"]["paper_params"] == 38.2e6 and rows["lrnet26_nl"]["paper_flops"] == 5.6e9
    assert rows["nl26"]["paper_params"] == 17.3e6
    # "about 2x more computation" than ResNet-26 (Sec. 6.1): 5.6G / 2.6G in the paper
    assert 2.0 < rows["resnet26_nl"]["flops"] / count_flops(create_model("resnet26").to("meta")) < 2.3
    with pytest.raises(UserError, match="nl26 has no option 'kernel_size'"):
        create_model("nl26", kernel_size=5)


# --- Sec. 5, Fig. 3a: the LR-Net's stem, or the ResNet's conv stem ----------------------------------------------


@pytest.mark.parametrize("stem", ["imagenet", "half", "small"])
def test_conv_stem_differs_from_the_lr_stem_exactly_in_the_stem(stem):
    lr_net = small_model("lrnet26", stem=stem)
    conv_net = small_model("lrnet26", stem=stem, stem_layer="conv")
    resnet = small_model("resnet26", stem=stem)
    assert conv_net.spec["kwargs"]["stem_layer"] == "conv" and "stem_layer" not in lr_net.spec["kwargs"]

    def shapes(model, inside_stem):
        return {k: v.shape for k, v in model.state_dict().items() if k.startswith("stem.") == inside_stem}

    assert shapes(conv_net, False) == shapes(lr_net, False)  # blocks, shortcuts, classifier: all the same
    assert shapes(conv_net, True) == shapes(resnet, True) != shapes(lr_net, True)
    assert [type(m) for m in conv_net.stem] == [type(m) for m in resnet.stem]
    assert any(isinstance(m, LocalRelation2d) for m in lr_net.stem)
    assert not any(isinstance(m, LocalRelation2d) for m in conv_net.stem)
    assert sum(isinstance(m, LocalRelation2d) for m in conv_net.modules()) == 8  # the blocks' layers remain
    x = torch.rand(2, 1, 16, 16)
    assert conv_net(x).shape == lr_net(x).shape == (2, 5)
    assert conv_net.stem(x).shape == lr_net.stem(x).shape


@pytest.mark.slow
def test_conv_stem_through_the_cli_and_a_checkpoint(tmp_path):
    from lrrobust.checkpoint import load_checkpoint, read_checkpoint

    run = tmp_path / "run"
    args = ["train", "-m", "lrnet26", "--width", "0.125", "--epochs", "1", "--model-opt", "stem_layer=conv"]
    result = CliRunner().invoke(app, [*args, "-o", str(run)])
    assert result.exit_code == 0, result.output
    assert read_checkpoint(run / "last.pt")["model_spec"]["kwargs"]["stem_layer"] == "conv"
    model = load_checkpoint(run / "last.pt")
    assert isinstance(model.stem[0], torch.nn.Conv2d) and model.stem[0].kernel_size == (3, 3)  # digits: small stem
    assert not any(isinstance(m, LocalRelation2d) for m in model.stem)


def test_bad_stem_layer_is_one_line():
    for name, value, needle in [
        ("lrnet26", "7x7", "stem_layer must be one of 'lr', 'conv'; got '7x7'"),
        ("lrnet26_nl", None, "stem_layer must be one of 'lr', 'conv'; got None"),
        ("resnet26", "conv", "resnet26 has no option 'stem_layer'"),
    ]:
        with pytest.raises(UserError) as info:
            create_model(name, stem_layer=value)
        assert needle in str(info.value) and "\n" not in str(info.value)
    result = CliRunner().invoke(app, ["train", "-m", "lrnet26", "--model-opt", "stem_layer=resnet"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "stem_layer must be one of 'lr', 'conv'" in result.output
