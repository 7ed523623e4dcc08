"""Eval-mode BatchNorm folding (lrrobust/models/fold.py): the same function and gradients as BN after the
convolution, with no BN pass left in eval mode, and none of it in train mode or under forward hooks."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lrrobust.models import create_model, list_models
from lrrobust.models.fold import FoldingSequential, then_bn


class OpNames(TorchDispatchMode):
    """Records the names of the aten ops that run."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def unfolded():
    """Every module under a global forward hook: fold.py then runs BN as a separate module (the oracle)."""
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *args: None)
    try:
        yield
    finally:
        handle.remove()


def trained_model(name: str, **kw) -> torch.nn.Module:
    """A small float64 model whose BN layers hold non-trivial statistics and affine parameters (BN scales
    below 1, so the deep models stay well conditioned: float64 rounding is not amplified past the tests'
    tolerance)."""
    torch.manual_seed(0)
    model = create_model(name, 5, in_chans=3, width=0.25, **{"stem": "small", **kw}).double()
    with torch.no_grad():
        model.train()
        for _ in range(2):
            model(torch.rand(4, 3, 16, 16, dtype=torch.float64))
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.2, 0.6)
                mod.bias.uniform_(-0.2, 0.2)
        for p in model.parameters():  # off the zero inits (query), so every path carries signal
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def close(actual: torch.Tensor, expected: torch.Tensor, scale: float | None = None, what: str = "") -> None:
    """Equal up to float64 rounding: within 1e-10 of ``scale`` (default: the largest entry of ``expected``)."""
    scale = scale or float(expected.abs().max()) or 1.0
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-10 * scale, msg=what or None)


CASES = [(name, {}) for name in list_models()] + [("lrnet26", {"stem": "imagenet"}), ("resnet18", {"stem": "imagenet"})]


@pytest.mark.parametrize(("name", "kw"), CASES, ids=[f"{n}-{kw.get('stem', 'small')}" for n, kw in CASES])
def test_folded_eval_matches_bn_after_conv_with_gradients(name, kw):
    model = trained_model(name, **kw)
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    results = []
    for ctx in (contextlib.nullcontext(), unfolded()):
        model.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        with ctx:
            out = model(xi)
        out.logsumexp(1).sum().backward()
        results.append((out.detach(), xi.grad, {n: p.grad for n, p in model.named_parameters()}))
    (out, gx, gp), (ref, gx_ref, gp_ref) = results
    close(out, ref)
    close(gx, gx_ref)
    # the parameters, BN's gamma and beta included, get their gradients through the fold (the eval-mode
    # geometric prior is a table without autograd: no gradient either way)
    assert [n for n, g in gp.items() if g is None] == [n for n, g in gp_ref.items() if g is None]
    # every BN parameter among them, found by type: a network may name its BN layers as it likes (in a
    # Sequential, say), or have none, and then nothing is folded
    bn = [f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)
          for p, _ in mod.named_parameters(recurse=False)]
    assert all(gp[n] is not None for n in bn)
    largest = max(float(g.abs().max()) for g in gp_ref.values() if g is not None)  # some gradients are ~0
    for n, g in gp_ref.items():
        if g is not None:
            close(gp[n], g, largest, n)


@pytest.mark.parametrize("name", ["lrnet26", "resnet26", "lrnet18", "resnet18", "resnet26_dw"])
def test_no_batch_norm_runs_in_eval_mode_and_all_of_it_in_train_mode(name):
    model = trained_model(name)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    for mode, expected in (("eval", 0), ("train", n_bn)):
        getattr(model, mode)()
        with OpNames() as ops, torch.no_grad():
            model(x)
        assert sum("batch_norm" in op for op in ops.names) == expected, mode


def test_hooks_fire_so_layers_under_hooks_are_not_folded():
    model = trained_model("lrnet26")
    seen = []
    model.stages[0][0].conv1.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    with torch.no_grad():
        model(torch.rand(1, 3, 16, 16, dtype=torch.float64))
    assert seen == [torch.Size([1, model.stages[0][0].conv1.out_channels, 16, 16])]


def test_then_bn_leaves_other_layers_and_bn_without_running_stats_alone():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 5)
    relu_bn = FoldingSequential(torch.nn.ReLU(), torch.nn.BatchNorm2d(4)).eval()
    torch.testing.assert_close(relu_bn(x), relu_bn[1](relu_bn[0](x)))
    conv = torch.nn.Conv2d(4, 4, 3, padding=1, bias=True)
    batch_stats = torch.nn.BatchNorm2d(4, track_running_stats=False).eval()  # uses the batch's statistics
    torch.testing.assert_close(then_bn(conv, batch_stats, x), batch_stats(conv(x)))
    bn = torch.nn.BatchNorm2d(4).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    torch.testing.assert_close(then_bn(conv, bn, x), bn(conv(x)), rtol=1e-5, atol=1e-6)  # conv with a bias
