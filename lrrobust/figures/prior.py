"""The learnt geometric prior of every local relation layer, as the paper's Fig. 4 draws it (Sec. 4, Sec. 6.1).

For each layer, one K x K map per group (aggregation channel) of f_g(p - p'), the geometric prior term of Eq. 2,
after softmax over the window (the paper's "learnt geometric prior values after softmax"; ``softmax=False``
draws the values themselves). K is the window the layer uses on the checkpoint's images: the layer's kernel size,
cut to 2 max(H, W) - 1 on small feature maps (``LocalRelation2d.window``), so the map shows what the layer
applies. Both kinds of learnt prior are drawn the same way: "mlp" (the small network on relative positions,
whose fixed output at inference is this table) and "table" (G* of Table 3, the values themselves).

Files: ``prior-LAYER.png`` per layer (the groups in a grid) and ``prior-overview.png`` (one panel per layer, the
mean over its groups: how sharp the prior is from stage to stage, Fig. 4's comparison).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lrrobust.errors import UserError
from lrrobust.figures import canvas
from lrrobust.figures.layers import NamedLayer, layer_inputs, lr_layers
from lrrobust.models.local_relation import LocalRelation2d

OVERVIEW = "prior-overview.png"


def prior_values(layer: LocalRelation2d, window: int, softmax: bool = True) -> torch.Tensor:
    """(G, K, K) prior f_g(p - p') of each group over a K x K window; softmax over the window unless told not."""
    like = next(layer.parameters())
    with torch.no_grad():
        values = layer.prior(window, torch.empty(0, dtype=torch.float32, device=like.device)).detach().float().cpu()
    return values.flatten(1).softmax(dim=1).view_as(values) if softmax else values


def layer_windows(model: torch.nn.Module, layers: list[NamedLayer], in_chans: int,
                  image_size: int) -> dict[str, tuple[int, int, int]]:
    """Per layer: (K, H, W), its window and input size when the model reads an image of the dataset's size."""
    like = next(model.parameters())
    seen = layer_inputs(model, torch.zeros(1, in_chans, image_size, image_size, device=like.device), layers)
    return {e.name: (e.layer.window(*seen[e.name].shape[-2:]), *seen[e.name].shape[-2:]) for e in layers}


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def file_name(layer: str) -> str:
    return f"prior-{layer}.png"


def prior_files(checkpoint: str | os.PathLike, out: str | os.PathLike) -> list[Path]:
    """The files ``plot_priors(checkpoint, out)`` writes, the overview first, in the model's layer order."""
    from lrrobust.evaluation.evaluate import load_target

    target, _ = load_target(checkpoint)
    out = Path(out)
    return [out / OVERVIEW] + [out / file_name(e.name) for e in lr_layers(target.model, str(checkpoint))]


def plot_priors(checkpoint: str | os.PathLike, out: str | os.PathLike, softmax: bool = True) -> list[Path]:
    """Draw every layer's prior of ``checkpoint`` into ``out``; returns the files, the overview first."""
    from lrrobust.data import dataset_info
    from lrrobust.evaluation.evaluate import load_target

    target, _ = load_target(checkpoint)
    spec = target.checkpoint.model_spec
    layers = lr_layers(target.model, str(checkpoint))
    kinds = sorted({e.layer.prior.kind for e in layers})
    if kinds == ["none"]:
        raise UserError(f"{checkpoint} is an LR-Net without geometric prior (geo_prior='none', NG in Table 3): "
                        "there is no prior to draw")
    data = dataset_info(str(target.dataset))
    in_chans = int(spec.get("kwargs", {}).get("in_chans", data.in_chans))
    windows = layer_windows(target.model, layers, in_chans, data.image_size)
    who = f"{spec['name']}, {target.training} training on {target.dataset}"
    scale = "softmax over the window" if softmax else "prior value"
    out = Path(out)
    maps = {e.name: prior_values(e.layer, windows[e.name][0], softmax) for e in layers}
    paths = [canvas.save_figure(overview_figure(layers, maps, windows, who, scale), out / OVERVIEW)]
    for entry in layers:
        fig = layer_figure(entry, maps[entry.name], windows[entry.name], who, scale)
        paths.append(canvas.save_figure(fig, out / file_name(entry.name)))
    return paths


def layer_figure(entry: NamedLayer, values: torch.Tensor, window: tuple[int, int, int], who: str, scale: str):
    """One panel per group, on one colour scale (one colour bar)."""
    k, h, w = window
    groups = values.shape[0]
    rows, cols = canvas.square_grid(groups)
    fig, axes = canvas.grid(rows, cols, f"{who}\n{entry.name} ({entry.stage}): {entry.layer.prior.kind} geometric "
                                        f"prior, {k}x{k} window on {h}x{w} input, {scale} (Fig. 4)")
    low, high = float(values.min()), float(values.max())
    for g in range(groups):
        image = canvas.window_map(fig, axes.flat[g], values[g], f"group {g}", scale, vmin=low, vmax=high, bar=False)
    canvas.colour_bar(fig, list(axes.flat), image, scale)
    return fig


def overview_figure(layers: list[NamedLayer], maps: dict[str, torch.Tensor],
                    windows: dict[str, tuple[int, int, int]], who: str, scale: str):
    """One panel per layer: the mean of its groups' maps (sharp at low stages, smooth at high ones, Fig. 4)."""
    rows, cols = canvas.square_grid(len(layers))
    fig, axes = canvas.grid(rows, cols, f"{who}\ngeometric prior of every local relation layer, mean over its "
                                        f"groups, {scale} (Fig. 4)")
    for ax, entry in zip(axes.flat, layers):
        k, h, w = windows[entry.name]
        canvas.window_map(fig, ax, maps[entry.name].mean(dim=0),
                          f"{entry.stage}: {entry.name}\n{plural(maps[entry.name].shape[0], 'group')}, {k}x{k} on {h}x{w}",
                          scale)
    return fig
