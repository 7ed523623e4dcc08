"""Query and key maps and aggregation weights at one pixel, clean and adversarial (the paper's Fig. 5, Sec. 6.2).

Fig. 5 shows the learnt key and query maps; here they are drawn with what they produce at one output pixel of
one layer (Eq. 2-5, ``relation.py``): per group, the query and key maps, the appearance term Phi(q, k) over the
window, the geometric prior term, and the aggregation weights, on a test image and, given an evaluation, on its
adversarial image (``adversarial.py``) with the difference of the weights: where the attack moves the aggregation.

Layout: a first row with the image (and the adversarial image and the perturbation); then one row per group
shown (the groups whose weights the attack moves most, or the first ones without an evaluation).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from lrrobust.errors import UserError
from lrrobust.figures import canvas
from lrrobust.figures.adversarial import AdversarialExample, check_attacked, read_evaluation, regenerate
from lrrobust.figures.layers import NamedLayer, choose_layer, layer_inputs, lr_layers
from lrrobust.figures.relation import Relation, check_pixel, output_grid, relation_at

COLUMNS_CLEAN = 5  # query map, key map, appearance, prior, weights
COLUMNS_ADVERSARIAL = 10  # query and key maps and appearance twice, prior, weights twice, their difference


def plot_relation(
    checkpoint: str | os.PathLike,
    image: int,
    out: str | os.PathLike,
    *,
    eval_dir: str | os.PathLike | None = None,
    layer: str | None = None,
    pixel: tuple[int, int] | None = None,
    attack: str | None = None,
    groups: int = 4,
    root: str | None = None,
    device: str = "auto",
) -> Path:
    """Draw Fig. 5 for test image ``image`` at ``pixel`` (default the centre) of ``layer`` (default the first
    local relation layer of res2); with ``eval_dir``, also on the image's adversarial version. Returns the PNG."""
    from lrrobust.data import load_dataset
    from lrrobust.evaluation.evaluate import load_target, resolve_device

    if groups < 1:
        raise UserError(f"--groups must be at least 1, got {groups}")
    target, _ = load_target(checkpoint)
    entry = choose_layer(lr_layers(target.model, str(checkpoint)), layer)
    torch_device = resolve_device(device)
    evaluation = read_evaluation(eval_dir, target) if eval_dir is not None else None
    if evaluation is not None:
        check_attacked(*evaluation, image)
        dataset, split = evaluation[0].dataset, evaluation[0].split
        root = root or evaluation[0].raw.get("dataset_root")
    else:
        dataset, split = str(target.dataset), "test"
    data = load_dataset(dataset, split, root)
    if not 0 <= image < len(data):
        raise UserError(f"--image {image} is not an image of the {dataset} {split} split; give 0 to {len(data) - 1}")
    clean_image, label = data[image][0], int(data[image][1])
    model = target.model.to(torch_device)
    x = layer_inputs(model, clean_image[None].to(torch_device), [entry])[entry.name]
    grid = output_grid(entry.layer, *x.shape[-2:])
    pixel = pixel if pixel is not None else (grid[0] // 2, grid[1] // 2)
    check_pixel(entry.name, pixel, grid)
    clean = relation_at(entry.layer, x, pixel)
    adversarial = example = None
    if evaluation is not None:
        example = regenerate(*evaluation, target, image, attack, torch_device, root)
        x_adv = layer_inputs(model, example.adversarial[None].to(torch_device), [entry])[entry.name]
        adversarial = relation_at(entry.layer, x_adv, pixel)
    with torch.no_grad():
        prediction = int(model(clean_image[None].to(torch_device)).argmax(1))
    who = (f"{target.checkpoint.model_spec['name']}, {target.training} training on {target.dataset}: image {image} "
           f"of the {dataset} {split} split, label {label}, predicted {prediction}")
    fig = relation_figure(entry, clean_image, clean, who, groups, example, adversarial)
    name = f"relation-{entry.name}-image{image}-y{pixel[0]}x{pixel[1]}"
    return canvas.save_figure(fig, Path(out) / (f"{name}-{example.attack}.png" if example else f"{name}.png"))


def ranked_groups(clean: Relation, adversarial: Relation | None, count: int) -> list[int]:
    """The ``count`` groups whose weights the attack moves most (L1 over the window), else the first ones."""
    total = clean.weights.shape[0]
    if adversarial is None:
        return list(range(min(count, total)))
    moved = (adversarial.weights - clean.weights).abs().flatten(1).sum(dim=1)
    return sorted(range(total), key=lambda g: -float(moved[g]))[:count]


def relation_figure(entry: NamedLayer, image: torch.Tensor, clean: Relation, who: str, groups: int,
                    example: AdversarialExample | None = None, adversarial: Relation | None = None) -> Any:
    """The figure: an image row, then one row per group shown (see the module docstring)."""
    shown = ranked_groups(clean, adversarial, groups)
    total = clean.weights.shape[0]
    cols = COLUMNS_ADVERSARIAL if adversarial is not None else COLUMNS_CLEAN
    layer = entry.layer
    k, (y, x) = clean.window, clean.pixel
    ho, wo = clean.query_map.shape[-2:]
    title = (f"{who}\nlayer {entry.name} ({entry.stage}): output pixel ({y}, {x}) of {ho}x{wo}, {k}x{k} window, "
             f"{layer.composability} composability, query/key dimension {clean.query_map.shape[1]}, "
             f"{layer.prior.kind} prior, {layer.normalize} normalisation (Eq. 2-5, Fig. 5)")
    if example is not None:
        goal = f", target {example.target}" if example.target is not None else ""
        title += (f"\nadversarial: {example.description}{goal}; predicted {example.adv_pred} (the evaluation "
                  f"recorded {example.recorded_pred}; {example.reproduced[0]} of {example.reproduced[1]} predictions "
                  f"of its batch reproduced)")
    order = "the groups whose weights the attack moves most" if adversarial is not None else "the first groups"
    title += f"\n{len(shown)} of {total} groups shown: {order}"
    fig, axes = canvas.grid(1 + len(shown), cols, title)
    image_row(fig, axes[0], image, clean, example)
    for row, g in zip(axes[1:], shown):
        group_row(fig, row, g, clean, adversarial)
    return fig


def image_row(fig: Any, row: Any, image: torch.Tensor, clean: Relation, example: AdversarialExample | None) -> None:
    """The image (and the adversarial image and the perturbation), the query and its window marked."""
    shown = [(image, "clean image")] + ([(example.adversarial, "adversarial image")] if example else [])
    for ax, (picture, title) in zip(row, shown):
        canvas.feature_map(fig, ax, picture[0] if picture.shape[0] == 1 else picture, title, "pixel value",
                           cmap="gray", vmin=0.0, vmax=1.0)
        mark_window(ax, clean, image.shape[-2:])
    if example is not None:
        delta = (example.adversarial - example.clean).mean(dim=0)
        limit = float(delta.abs().max()) or 1.0
        canvas.feature_map(fig, row[2], delta, "perturbation (mean over channels)", "adversarial - clean",
                           cmap="RdBu_r", vmin=-limit, vmax=limit)
        mark_window(row[2], clean, image.shape[-2:])


def mark_window(ax: Any, relation: Relation, size: tuple[int, int] | None = None) -> None:
    """The query position and its K x K window on a map of ``size`` (default: the layer's input grid)."""
    from matplotlib.patches import Rectangle

    h, w = relation.key_map.shape[-2:]
    scale_y, scale_x = (size[0] / h, size[1] / w) if size is not None else (1.0, 1.0)
    cy, cx = relation.centre
    r = (relation.window - 1) // 2
    ax.add_patch(Rectangle(((cx - r) * scale_x - 0.5, (cy - r) * scale_y - 0.5), relation.window * scale_x,
                           relation.window * scale_y, fill=False, edgecolor="red", linewidth=1.0))
    ax.plot([(cx + 0.5) * scale_x - 0.5], [(cy + 0.5) * scale_y - 0.5], marker="+", color="red", markersize=6)
    ax.set_xlim(-0.5, w * scale_x - 0.5)
    ax.set_ylim(h * scale_y - 0.5, -0.5)


def value_range(maps: list[torch.Tensor]) -> tuple[float, float]:
    """The smallest and largest value over ``maps``: one colour scale for the clean and adversarial panels."""
    return min(float(m.min()) for m in maps), max(float(m.max()) for m in maps)


def component_map(maps: torch.Tensor) -> torch.Tensor:
    """A (d, H, W) query or key map of one group as one map: itself for d = 1, its norm over the d components."""
    return maps[0] if maps.shape[0] == 1 else maps.norm(dim=0)


def group_row(fig: Any, row: Any, g: int, clean: Relation, adversarial: Relation | None) -> None:
    """Query and key maps, appearance, prior and weights of group ``g`` (clean, adversarial, difference).

    With d-vector queries and keys (qk_dim = d > 1) the maps show their norms |q| and |k|.
    """
    both = [("clean", clean)] + ([("adversarial", adversarial)] if adversarial is not None else [])
    y, x = clean.pixel
    d = clean.query_map.shape[1]
    q, k = ("q", "k") if d == 1 else (f"|q| (d={d})", f"|k| (d={d})")
    queries = {kind: component_map(r.query_map[g]) for kind, r in both}
    keys = {kind: component_map(r.key_map[g]) for kind, r in both}
    q_low, q_high = value_range(list(queries.values()))
    k_low, k_high = value_range(list(keys.values()))
    a_low, a_high = value_range([r.appearance[g].nan_to_num(float(r.appearance[g].nanmean())) for _, r in both])
    w_high = max(float(r.weights[g].max()) for _, r in both)
    axes = iter(row)
    for kind, relation in both:
        ax = next(axes)
        canvas.feature_map(fig, ax, queries[kind], f"group {g}: query {q}, {kind}\n{q} = "
                           f"{float(queries[kind][y, x]):.3g} at ({y}, {x})", q, vmin=q_low, vmax=q_high)
        ax.plot([x], [y], marker="+", color="red", markersize=6)
        ax = next(axes)
        canvas.feature_map(fig, ax, keys[kind], f"group {g}: key {k}, {kind}", k, vmin=k_low, vmax=k_high)
        mark_window(ax, relation)
    for kind, relation in both:
        canvas.window_map(fig, next(axes), relation.appearance[g], f"group {g}: appearance, {kind}",
                          "Phi(q, k)", vmin=a_low, vmax=a_high)
    canvas.window_map(fig, next(axes), clean.prior[g], f"group {g}: geometric prior", "f_g(p - p')")
    for kind, relation in both:
        canvas.window_map(fig, next(axes), relation.weights[g].masked_fill(~relation.inside, float("nan")),
                          f"group {g}: weights, {kind}", "aggregation weight", vmin=0.0, vmax=w_high)
    if adversarial is not None:
        delta = (adversarial.weights[g] - clean.weights[g]).masked_fill(~clean.inside, float("nan"))
        limit = float(delta.nan_to_num(0.0).abs().max()) or 1e-12
        canvas.window_map(fig, next(axes), delta, f"group {g}: weights, adversarial - clean", "weight change",
                          cmap="RdBu_r", vmin=-limit, vmax=limit)
