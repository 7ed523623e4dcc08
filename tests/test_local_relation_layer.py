"""LocalRelation2d and its geometric prior (paper Sec. 4, Eq. 2-6) against a naive per-pixel loop."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from lrrobust.errors import UserError
from lrrobust.models import GeometricPrior, LocalRelation2d
from lrrobust.models.flops import aggregation_flops, local_relation_flops


def naive_layer(layer: LocalRelation2d, x: torch.Tensor) -> torch.Tensor:
    """Eq. 2 written out pixel by pixel: softmax over the window of Phi(q, k) + f_g(p - p'), then the value."""
    n, c, h, w = x.shape
    s = layer.stride
    k = 2 * max(h, w) - 1 if layer.kernel_size == "full" else layer.kernel_size
    r = (k - 1) // 2
    ho, wo = math.ceil(h / s), math.ceil(w / s)
    q = torch.einsum("gc,nchw->nghw", layer.query.weight[:, :, 0, 0], x) + layer.query.bias.view(1, -1, 1, 1)
    key = torch.einsum("gc,nchw->nghw", layer.key.weight[:, :, 0, 0], x) + layer.key.bias.view(1, -1, 1, 1)
    groups = layer.groups
    per_group = -(-c // groups)
    prior = prior_by_formula(layer.prior, k, x.dtype)
    agg = torch.zeros(n, c, ho, wo, dtype=x.dtype)
    for b in range(n):
        for i in range(ho):
            for j in range(wo):
                yc, xc = i * s, j * s
                for g in range(groups):
                    logits, vals = [], []
                    for dy in range(-r, r + 1):
                        for dx in range(-r, r + 1):
                            y, xx = yc + dy, xc + dx
                            if not (0 <= y < h and 0 <= xx < w):
                                continue
                            qv, kv = q[b, g, yc, xc], key[b, g, y, xx]
                            phi = {"sqdiff": -((qv - kv) ** 2), "absdiff": -(qv - kv).abs(), "product": qv * kv}
                            logits.append(phi[layer.composability] + prior[g, dy + r, dx + r])
                            vals.append(x[b, g * per_group : (g + 1) * per_group, y, xx])
                    logits = torch.stack(logits)
                    weights = logits.softmax(0) if layer.normalize == "softmax" else logits
                    agg[b, g * per_group : (g + 1) * per_group, i, j] = (weights[:, None] * torch.stack(vals)).sum(0)
    return torch.einsum("oc,nchw->nohw", layer.value.weight[:, :, 0, 0], agg)


def prior_by_formula(prior: GeometricPrior, k: int, dtype: torch.dtype) -> torch.Tensor:
    """f_g(dy, dx) evaluated offset by offset: the MLP of Sec. 4, the table, or zeros."""
    r = (k - 1) // 2
    out = torch.zeros(prior.groups, k, k, dtype=dtype)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if prior.kind == "mlp":
                pos = torch.tensor([float(dy), float(dx)], dtype=dtype)
                hidden = torch.relu(prior.weight1 @ pos + prior.bias1)
                out[:, dy + r, dx + r] = prior.weight2 @ hidden + prior.bias2
            elif prior.kind == "table":
                side = prior.table.shape[-1]
                c = (side - 1) // 2
                out[:, dy + r, dx + r] = prior.table[:, min(max(dy + c, 0), side - 1), min(max(dx + c, 0), side - 1)]
    return out


def randomise(layer: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial values everywhere (a zero table prior would hide orientation mistakes)."""
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.7)
    return layer


CASES = [
    {"kernel_size": 3, "stride": 1, "m": 4, "composability": "sqdiff", "geo_prior": "mlp", "normalize": "softmax"},
    {"kernel_size": 5, "stride": 2, "m": 4, "composability": "absdiff", "geo_prior": "table", "normalize": "softmax"},
    {"kernel_size": 3, "stride": 2, "m": 2, "composability": "product", "geo_prior": "none", "normalize": "none"},
    {
        "kernel_size": "full",
        "stride": 1,
        "m": 3,
        "composability": "sqdiff",
        "geo_prior": "table",
        "normalize": "softmax",
    },
    {"kernel_size": 7, "stride": 1, "m": 4, "composability": "sqdiff", "geo_prior": "mlp", "normalize": "none"},
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_layer_matches_naive_loop(case):
    torch.manual_seed(0)
    layer = randomise(LocalRelation2d(6, 5, **case)).double()
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    expected = naive_layer(layer, x)
    torch.testing.assert_close(layer(x), expected)
    layer.eval()
    torch.testing.assert_close(layer(x), expected)


def test_window_cut_to_the_image_changes_nothing():
    """A 9x9 window on a 3x3 map is cut to 5x5; the naive loop uses the whole 9x9 window."""
    torch.manual_seed(1)
    layer = randomise(LocalRelation2d(8, kernel_size=9, m=4)).double()
    assert layer.window(3, 3) == 5
    x = torch.randn(1, 8, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(layer(x), naive_layer(layer, x))


def test_full_window_equals_explicit_window():
    torch.manual_seed(2)
    full = randomise(LocalRelation2d(8, kernel_size="full", m=4))
    seven = LocalRelation2d(8, kernel_size=7, m=4)
    seven.load_state_dict(full.state_dict())
    x = torch.randn(2, 8, 4, 3)
    assert full.window(4, 3) == 7
    torch.testing.assert_close(full(x), seven(x))


def test_output_shape_and_stride():
    layer = LocalRelation2d(16, 24, kernel_size=7, stride=2)
    assert layer(torch.randn(2, 16, 9, 8)).shape == (2, 24, 5, 4)
    assert layer.groups == 2


@pytest.mark.parametrize("kind", ["mlp", "table"])
def test_prior_train_and_eval_give_the_same_table(kind):
    torch.manual_seed(3)
    prior = randomise(GeometricPrior(4, 7, kind))
    like = torch.zeros(())
    train_table = prior.train()(7, like)
    eval_table = prior.eval()(7, like)
    assert torch.equal(train_table, eval_table)
    torch.testing.assert_close(eval_table, prior_by_formula(prior, 7, torch.float32))


def test_layer_train_and_eval_outputs_equal():
    torch.manual_seed(4)
    layer = randomise(LocalRelation2d(16, kernel_size=5, m=8))
    x = torch.randn(2, 16, 6, 6)
    train_out = layer.train()(x)
    with torch.no_grad():
        eval_out = layer.eval()(x)
    assert torch.equal(train_out, eval_out)


def test_eval_prior_is_cached_and_invalidated_by_an_optimizer_step():
    torch.manual_seed(5)
    layer = LocalRelation2d(16, kernel_size=7, m=8)
    x = torch.rand(2, 16, 6, 6)
    layer.eval()
    first = layer.prior(7, x)
    assert layer.prior(7, x) is first, "the eval-mode table is computed once"
    layer.train()
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer(x).square().mean().backward()
    assert layer.prior.weight2.grad is not None and layer.prior.weight2.grad.abs().sum() > 0
    opt.step()
    layer.eval()
    second = layer.prior(7, x)
    assert second is not first
    assert not torch.equal(second, first)
    torch.testing.assert_close(second, prior_by_formula(layer.prior, 7, torch.float32))


def test_eval_cache_follows_load_state_dict_and_dtype():
    torch.manual_seed(6)
    a, b = LocalRelation2d(8, kernel_size=3, m=4).eval(), LocalRelation2d(8, kernel_size=3, m=4).eval()
    x = torch.rand(1, 8, 4, 4)
    before = a.prior(3, x).clone()
    a.load_state_dict(b.state_dict())
    after = a.prior(3, x)
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, b.prior(3, x))
    assert a.double().prior(3, x.double()).dtype == torch.float64
    assert "_cache" not in "".join(a.state_dict())


def test_table_prior_for_full_window_clamps_beyond_its_side():
    prior = randomise(GeometricPrior(2, "full", "table"))
    side = prior.table.shape[-1]
    big = prior(side + 4, torch.zeros(()))
    assert big.shape == (2, side + 4, side + 4)
    assert torch.equal(big[:, 2:-2, 2:-2], prior.table)
    assert torch.equal(big[:, 0, 0], prior.table[:, 0, 0])
    small = prior(3, torch.zeros(()))
    c = (side - 1) // 2
    assert torch.equal(small, prior.table[:, c - 1 : c + 2, c - 1 : c + 2])


def test_no_prior_has_no_parameters():
    prior = GeometricPrior(4, 7, "none")
    assert list(prior.parameters()) == []
    assert torch.equal(prior(7, torch.zeros(())), torch.zeros(4, 7, 7))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"kernel_size": 4}, "3, 5, 7, 9, 'full'"),
        ({"composability": "dot"}, "'sqdiff', 'absdiff', 'product'"),
        ({"geo_prior": "learned"}, "'mlp', 'table', 'none'"),
        ({"normalize": "sigmoid"}, "'softmax', 'none'"),
        ({"m": 0}, "positive integer"),
    ],
)
def test_bad_options_name_the_valid_ones(kwargs, needle):
    with pytest.raises(UserError, match="must be") as info:
        LocalRelation2d(16, **kwargs)
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)


def test_eq6_flops_split_into_transforms_and_aggregation():
    """The layer's channel transforms (counted as convs) plus the aggregation term make up Eq. 6."""
    for stride in (1, 2):
        layer = LocalRelation2d(64, kernel_size=7, stride=stride, m=8)
        h = w = 56
        ho = wo = 56 // stride
        transforms = 64 * 8 * (ho * wo + h * w) + 64 * 64 * ho * wo
        total = transforms + aggregation_flops(layer, h, w)
        assert total == pytest.approx(local_relation_flops(64, 7, 8, stride, h, w))


def test_mode_switch_drops_the_cache_even_when_a_fused_optimizer_keeps_version_counters():
    torch.manual_seed(7)
    layer = LocalRelation2d(8, kernel_size=3, m=4)
    x = torch.rand(2, 8, 4, 4)
    layer.eval()
    first = layer.prior(3, x).clone()
    layer.train()
    layer(x).square().mean().backward()
    torch.optim.Adam(layer.parameters(), lr=0.1, fused=True).step()
    layer.eval()
    second = layer.prior(3, x)
    assert not torch.equal(first, second)
    torch.testing.assert_close(second, prior_by_formula(layer.prior, 3, torch.float32))


def test_init_starts_from_the_prior():
    """Zero query: the appearance term starts small and the key still learns (a zero key too would freeze both)."""
    layer = LocalRelation2d(8, kernel_size=3, m=4)
    layer.reset_query_key()
    assert layer.query.weight.abs().sum() == 0 and layer.key.weight.abs().sum() > 0
    x = torch.rand(2, 8, 4, 4)
    layer(x).square().sum().backward()
    assert layer.query.weight.grad.abs().sum() > 0 and layer.key.weight.grad.abs().sum() > 0


def _reference_script():
    path = Path(__file__).parent / "data" / "make_lrnet_reference.py"
    spec = importlib.util.spec_from_file_location("make_lrnet_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("reference_op", [False, True], ids=["fused", "reference-op"])
def test_a_network_computes_what_it_computed_before_its_layers_were_optimised(reference_op, monkeypatch):
    """tests/data/lrnet_reference.pt holds a small LR-Net-26's outputs and parameter gradients in train and eval mode
    from before the query and key transforms were merged (tests/data/make_lrnet_reference.py): the same weights,
    loaded as an old checkpoint's state dict, give the same outputs and gradients to float32 tolerance."""
    if reference_op:
        monkeypatch.setenv("LRROBUST_REFERENCE_OP", "1")
    script = _reference_script()
    record = torch.load(Path(__file__).parent / "data" / "lrnet_reference.pt", weights_only=True)
    assert record["spec"] == script.SPEC
    model = script.build()
    model.load_state_dict(record["state_dict"])
    for mode in ("train", "eval"):
        model.load_state_dict(record["state_dict"])  # train mode moves the BN statistics
        logits, grads = script.outputs_and_gradients(model, record["images"], record["labels"], mode == "train")
        expected_logits, expected_grads = record[mode]
        torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-5)
        assert grads.keys() == expected_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, expected_grads[name], rtol=1e-3, atol=1e-5, msg=f"{mode}: {name}")
