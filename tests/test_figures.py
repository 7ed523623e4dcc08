"""``lrrobust plot prior`` (Fig. 4) and ``lrrobust plot relation`` (Fig. 5) on tiny LR-Nets trained on digits.

The drawn maps are checked against the layers: the prior maps against the prior's own parameters (the table, or
the MLP of Sec. 4 evaluated here), the aggregation weights against the op (weights times the window's values give
what ``LocalRelation2d.aggregate`` outputs at that pixel), and the regenerated adversarial image against the
evaluation's records.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ONE_EPOCH_RESNET
from test_cli_errors import assert_one_line, invoke

from lrrobust.checkpoint import load_checkpoint
from lrrobust.data import load_dataset
from lrrobust.figures import canvas
from lrrobust.figures.layers import layer_inputs, lr_layers
from lrrobust.models.local_relation import relative_positions


@pytest.fixture(scope="module")
def runs(trained_run, evaluated_run) -> dict[str, Path]:
    """One-epoch digits runs: LR-Net-26 with the MLP prior (and an evaluation of it with
    tests/data/suites/figures_tiny.toml), with the table prior, and a ResNet-18 (read-only)."""
    made = {name: trained_run(name, model="lrnet26", model_kwargs={"width": 0.125, **kwargs}, epochs=1, device="cpu")
            for name, kwargs in (("mlp", {}), ("table", {"geo_prior": "table"}))}
    return {**made, "resnet": trained_run(**ONE_EPOCH_RESNET),
            "eval": evaluated_run(made["mlp"], "figures_tiny.toml", name="eval-tiny")}


@pytest.fixture
def drawn(monkeypatch) -> dict[str, object]:
    """The figures the commands save, by file name (saved as usual)."""
    figures: dict[str, object] = {}
    save = canvas.save_figure

    def keep(fig, path):
        figures[Path(path).name] = fig
        return save(fig, path)

    monkeypatch.setattr(canvas, "save_figure", keep)
    return figures


def panel(fig, title: str):
    """The one panel whose title's first line is ``title``."""
    found = [ax for ax in fig.axes if ax.images and ax.get_title().split("\n")[0] == title]
    assert len(found) == 1, (title, [ax.get_title() for ax in fig.axes])
    return found[0]


def drawn_array(ax) -> torch.Tensor:
    return torch.from_numpy(np.ma.filled(ax.images[0].get_array(), float("nan")))


def expected_prior(prior, k: int) -> torch.Tensor:
    """The prior of Sec. 4 from its parameters, computed here: the table itself, or the MLP on (dy, dx)."""
    if prior.kind == "table":
        side = prior.table.shape[-1]
        start = (side - k) // 2
        return prior.table[:, start:start + k, start:start + k].detach().double()
    pos = relative_positions(k, torch.device("cpu"), torch.float64)
    hidden = F.relu(pos @ prior.weight1.double().t() + prior.bias1.double())
    return (hidden @ prior.weight2.double().t() + prior.bias2.double()).t().reshape(-1, k, k)


@pytest.mark.parametrize("kind, raw", [("mlp", False), ("table", True)])
def test_prior_plots_draw_every_group_of_every_layer(runs, drawn, tmp_path, kind, raw):
    result = invoke("plot", "prior", runs[kind] / "best.pt", "--out", tmp_path, *(["--raw"] if raw else []))
    assert result.exit_code == 0, result.output
    model = load_checkpoint(runs[kind] / "best.pt")
    layers = lr_layers(model, "model")
    assert {e.layer.prior.kind for e in layers} == {kind}
    names = ["prior-overview.png"] + [f"prior-{e.name}.png" for e in layers]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    assert list(drawn) == names
    assert all((tmp_path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)
    assert canvas.panels(drawn["prior-overview.png"]) == len(layers)
    inputs = layer_inputs(model, torch.zeros(1, 1, 8, 8), layers)
    windows = {e.name: e.layer.window(*inputs[e.name].shape[-2:]) for e in layers}
    assert [windows[e.name] for e in layers] == [7, 7, 7, 7, 7, 7, 3, 3, 1]  # cut on 2x2 and 1x1 feature maps
    for entry in layers:
        fig = drawn[f"prior-{entry.name}.png"]
        groups, k = entry.layer.groups, windows[entry.name]
        assert canvas.panels(fig) == groups
        want = expected_prior(entry.layer.prior, k)
        if not raw:
            want = want.flatten(1).softmax(dim=1).view(groups, k, k)
        for g in range(groups):
            got = drawn_array(panel(fig, f"group {g}"))
            assert got.shape == (k, k)
            torch.testing.assert_close(got, want[g], rtol=1e-5, atol=1e-6)
            if not raw:
                assert abs(float(got.sum()) - 1) < 1e-6


def window_values(x: torch.Tensor, centre: tuple[int, int], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, K*K) values of the window around ``centre`` of x (1, C, H, W), and the (K*K,) in-image mask."""
    h, w = x.shape[-2:]
    offsets = relative_positions(k, x.device, torch.long)
    ys, xs = centre[0] + offsets[:, 0], centre[1] + offsets[:, 1]
    inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    return x[0][:, ys.clamp(0, h - 1), xs.clamp(0, w - 1)].double(), inside


def assert_weights_are_the_ops(layer, x: torch.Tensor, weights: torch.Tensor, pixel: tuple[int, int]) -> None:
    """Drawn weights (G, K, K), NaN outside the image, sum to 1 per group (after softmax), and aggregating the
    window with them gives the layer's own aggregation at ``pixel`` (the op)."""
    groups, k = weights.shape[0], weights.shape[-1]
    values, inside = window_values(x, (pixel[0] * layer.stride, pixel[1] * layer.stride), k)
    flat = weights.reshape(groups, k * k)
    assert torch.isnan(flat[:, ~inside]).all() and not torch.isnan(flat[:, inside]).any()
    if layer.normalize == "softmax":
        torch.testing.assert_close(flat[:, inside].sum(dim=1), torch.ones(groups, dtype=torch.float64))
    channels = x.shape[1]
    per_group = -(-channels // groups)
    mine = (flat.nan_to_num(0.0)[torch.arange(channels) // per_group] * values).sum(dim=1)
    with torch.no_grad():
        op = layer.aggregate(x)[0, :, pixel[0], pixel[1]].double()
    torch.testing.assert_close(mine, op, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options", [
    {},
    {"qk_dim": 2},
    {"composability": "product", "stride": 2, "kernel_size": 5},
    {"composability": "absdiff", "geo_prior": "table", "normalize": "none"},
    {"qk_dim": 4, "stride": 2, "kernel_size": 3, "geo_prior": "table"},
])
def test_relation_at_every_pixel_is_the_ops_aggregation(options):
    from lrrobust.figures.relation import output_grid, relation_at
    from lrrobust.models import LocalRelation2d

    torch.manual_seed(0)
    layer = LocalRelation2d(12, m=4, **options).eval()  # 3 groups
    for p in layer.parameters():  # the query starts at zero: give every term of Eq. 2 a say
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(1, 12, 6, 7)
    ho, wo = output_grid(layer, 6, 7)
    for y in range(ho):
        for x_ in range(wo):
            relation = relation_at(layer, x, (y, x_))
            assert relation.query_map.shape == (3, options.get("qk_dim", 1), ho, wo)
            assert_weights_are_the_ops(layer, x, relation.weights.masked_fill(~relation.inside, float("nan")),
                                       (y, x_))


def test_relation_on_a_clean_image_matches_the_op(runs, drawn, tmp_path):
    result = invoke("plot", "relation", runs["mlp"], "--image", 7, "--out", tmp_path, "--groups", 8)
    assert result.exit_code == 0, result.output
    model = load_checkpoint(runs["mlp"] / "best.pt")
    entry = next(e for e in lr_layers(model, "model") if e.stage == "res2")  # the default layer
    assert entry.name == "stages.0.0.conv2" and entry.layer.groups == 2
    name = f"relation-{entry.name}-image7-y4x4.png"  # the centre of res2's 8x8 output
    assert [p.name for p in tmp_path.iterdir()] == [name]
    fig = drawn[name]
    assert canvas.panels(fig) == 1 + 5 * 2  # the image, then query, key, appearance, prior, weights per group
    x = layer_inputs(model, load_dataset("digits", "test")[7][0][None], [entry])[entry.name]
    weights = torch.stack([drawn_array(panel(fig, f"group {g}: weights, clean")) for g in range(2)])
    assert_weights_are_the_ops(entry.layer, x, weights, (4, 4))


def test_relation_on_an_adversarial_image_regenerated_from_the_records(runs, drawn, tmp_path):
    from lrrobust.evaluation.evaluate import load_target
    from lrrobust.evaluation.summary import read_ledger
    from lrrobust.figures.adversarial import read_evaluation, regenerate

    ledger = read_ledger(runs["eval"])
    index = ledger.indices[5]  # second batch: the seeds depend on the batch
    layer = "stages.1.0.conv2"  # res3, stride 2: 4x4 output on an 8x8 input
    result = invoke("plot", "relation", runs["mlp"] / "best.pt", "--image", index, "--eval", runs["eval"],
                    "--layer", layer, "--pixel", "1,2", "--attack", "pgd2-untargeted", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    fig = drawn[f"relation-{layer}-image{index}-y1x2-pgd2-untargeted.png"]
    assert canvas.panels(fig) == 3 + 10 * 4  # images, perturbation; 4 groups, each clean, adversarial, difference
    assert "4 of 4 groups" in fig.get_suptitle()

    target, _ = load_target(runs["mlp"])
    example = regenerate(*read_evaluation(runs["eval"], target), target, index, "pgd2-untargeted")
    assert example.reproduced == (2, 2)  # the batch of the last 2 images: every prediction as recorded
    assert example.adv_pred == example.recorded_pred
    assert (example.adversarial - example.clean).abs().max() <= 0.2 + 1e-6
    assert not torch.equal(example.adversarial, example.clean)
    torch.testing.assert_close(example.clean, load_dataset("digits", "test")[index][0])

    entry = next(e for e in lr_layers(target.model, "model") if e.name == layer)
    for kind, picture in (("clean", example.clean), ("adversarial", example.adversarial)):
        x = layer_inputs(target.model, picture[None], [entry])[entry.name]
        titles = [ax.get_title() for ax in fig.axes if ax.get_title().endswith(f"weights, {kind}")]
        weights = {int(t.split(":")[0].split()[1]): drawn_array(panel(fig, t)) for t in titles}
        assert sorted(weights) == [0, 1, 2, 3]
        assert_weights_are_the_ops(entry.layer, x, torch.stack([weights[g] for g in range(4)]), (1, 2))
    for g in range(4):
        difference = drawn_array(panel(fig, f"group {g}: weights, adversarial - clean"))
        adv, clean = (drawn_array(panel(fig, f"group {g}: weights, {kind}")) for kind in ("adversarial", "clean"))
        torch.testing.assert_close(difference, adv - clean, equal_nan=True)


def test_the_default_attack_is_a_white_box_one_that_broke_the_image(runs):
    from lrrobust.evaluation.evaluate import load_target
    from lrrobust.figures.adversarial import choose_attack, read_evaluation

    target, _ = load_target(runs["mlp"])
    summary, ledger = read_evaluation(runs["eval"], target)
    for row, index in enumerate(ledger.indices):
        chosen = choose_attack(summary, ledger, index, None)
        broke = [o.name for o in ledger.outcomes if o.success[row]]
        assert chosen.name == (broke[0] if broke else "pgd2-targeted")


@pytest.mark.parametrize("args, fragments", [
    (["prior", "{resnet}"], ["resnet18 without local relation layers", "LR-Net"]),
    (["relation", "{resnet}", "--image", "0"], ["resnet18 without local relation layers"]),
    (["relation", "{mlp}", "--image", "360"], ["--image 360", "give 0 to 359"]),
    (["relation", "{mlp}", "--image", "0", "--eval", "{eval}"], ["--image 0 was not attacked", "samples.csv"]),
    (["relation", "{mlp}", "--image", "0", "--pixel", "8,0"], ["--pixel 8,0", "8x8 output", "0 <= Y < 8"]),
    (["relation", "{mlp}", "--image", "0", "--pixel", "centre"], ["--pixel takes Y,X"]),
    (["relation", "{mlp}", "--image", "0", "--layer", "stages.0.0"], ["--layer 'stages.0.0'", "stages.0.0.conv2"]),
    (["relation", "{mlp}", "--image", "0", "--attack", "pgd2-targeted"], ["give --eval"]),
    (["relation", "{mlp}", "--image", "{evaluated}", "--eval", "{eval}", "--attack", "fgsm"],
     ["--attack 'fgsm'", "pgd2-targeted, pgd2-untargeted"]),
    (["relation", "{table}", "--image", "0", "--eval", "{eval}"], ["attacked", "pass the checkpoint it attacked"]),
    (["relation", "{mlp}", "--image", "0", "--eval", "{table}"], ["holds no summary.json"]),
])
def test_mistakes_are_one_line_with_exit_code_2(runs, tmp_path, args, fragments):
    from lrrobust.evaluation.summary import read_ledger

    values = {**{k: str(v) for k, v in runs.items()}, "evaluated": str(read_ledger(runs["eval"]).indices[0])}
    result = invoke("plot", *(a.format(**values) for a in args), "--out", tmp_path / "figures")
    assert_one_line(result.output, result.exit_code, 2, *fragments)
    assert not (tmp_path / "figures").exists()


def test_a_study_report_shows_the_priors_of_its_lr_net_cells(runs, tmp_path):
    """A study's ``[report] priors`` (the demo's): each LR-Net cell's overview shown, its per-layer maps linked; the
    ResNet cells have none."""
    import dataclasses
    import os
    import shutil

    from lrrobust.study import draw_priors, plan_study

    spec = {"dataset": "digits", "suite": "digits", "networks": ["lrnet26", "resnet18"], "trainings": ["regular"],
            "seeds": [0], "model": {"width": 0.125}, "report": {"priors": True}}
    study = plan_study(spec, tmp_path / "s")
    lrnet = study.cells[0]
    lrnet.run_dir.mkdir(parents=True)
    shutil.copyfile(runs["mlp"] / "best.pt", lrnet.run_dir / "best.pt")
    sections = draw_priors(study)
    assert len(sections) == 1 and sections[0].startswith("## Learnt geometric priors (Fig. 4)")
    assert "### lrnet26-regular-s0" in sections[0] and "resnet" not in sections[0]
    links = [part.split(")")[0] for part in sections[0].split("](")[1:]]
    assert links[0] == "priors/lrnet26-regular-s0/prior-overview.png" and len(links) == 1 + 9  # then 9 layers
    assert all((study.report / link).is_file() for link in links)
    assert draw_priors(dataclasses.replace(study, cells=study.cells[1:])) == []
    # drawn as each cell finishes, the report's section reuses the files; a newer best.pt is drawn again
    overview = study.report / links[0]
    drawn_at = overview.stat().st_mtime_ns
    assert draw_priors(study) == sections and overview.stat().st_mtime_ns == drawn_at
    os.utime(lrnet.run_dir / "best.pt", ns=(drawn_at + 10**9, drawn_at + 10**9))
    assert draw_priors(study) == sections and overview.stat().st_mtime_ns > drawn_at
