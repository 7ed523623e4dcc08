"""``lrrobust plot prior`` and ``lrrobust plot relation``: the paper's Fig. 4 and Fig. 5 from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lrrobust.commands import say, user_errors
from lrrobust.errors import UserError

CheckpointArg = Annotated[Path, typer.Argument(help="A checkpoint (RUN/best.pt, RUN/last.pt) or a run directory "
                                                    "(its best.pt).")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Folder for the PNGs (default: RUN/figures beside the "
                                                           "checkpoint).")]


def default_out(checkpoint: Path) -> Path:
    """RUN/figures: beside the checkpoint file, or inside the run directory given."""
    return (checkpoint if checkpoint.is_dir() else checkpoint.parent) / "figures"


def parse_pixel(text: str) -> tuple[int, int]:
    """'3,4' -> (3, 4); a UserError saying the form otherwise."""
    parts = text.split(",")
    try:
        y, x = (int(p) for p in parts)
    except ValueError:
        raise UserError(f"--pixel takes Y,X (two integers, e.g. 3,4), got {text!r}") from None
    return y, x


def prior(
    checkpoint: CheckpointArg,
    out: OutOpt = None,
    raw: Annotated[bool, typer.Option("--raw", help="Draw the prior values themselves instead of their softmax "
                                                    "over the window.")] = False,
) -> None:
    """Fig. 4: every local relation layer's learnt geometric prior, one map per group (prior-LAYER.png) and an
    overview of every layer (prior-overview.png)."""
    from lrrobust.figures.prior import plot_priors
    from lrrobust.io import ensure_writable_dir

    out = out if out is not None else default_out(checkpoint)
    ensure_writable_dir(out, "--out", create=False)
    paths = plot_priors(checkpoint, out, softmax=not raw)
    say(f"wrote {len(paths)} figures to {out}: {paths[0].name} and one prior-LAYER.png per layer")


def relation(
    checkpoint: CheckpointArg,
    image: Annotated[int, typer.Option("--image", help="Index of the image in the test split (with --eval: in the "
                                                       "evaluated split, an index of its samples.csv).")],
    eval_dir: Annotated[Path | None, typer.Option("--eval", help="An evaluation directory of this checkpoint: draw "
                                                               "the image's adversarial version too.")] = None,
    layer: Annotated[str | None, typer.Option("--layer", help="The local relation layer, by module name (default: "
                                                             "the first of res2).")] = None,
    pixel: Annotated[str | None, typer.Option("--pixel", help="Y,X on the layer's output grid (default: the "
                                                             "centre).")] = None,
    attack: Annotated[str | None, typer.Option("--attack", help="Which attack of the evaluation (default: the first "
                                                               "white-box one that broke the image, PGD first).")
                      ] = None,
    groups: Annotated[int, typer.Option("--groups", help="Groups (aggregation channels) shown, those the attack "
                                                        "moves most.")] = 4,
    root: Annotated[str | None, typer.Option("--root", help="Where the dataset lies (default: the evaluation's; "
                                                           "not for digits or mnist).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda: where the adversarial image is made "
                                                        "again.")] = "auto",
    out: OutOpt = None,
) -> None:
    """Fig. 5: query and key maps, appearance and geometric prior terms and the aggregation weights at one pixel,
    on a test image and (with --eval) on its adversarial image, regenerated from the evaluation's seed."""
    from lrrobust.figures.relation_plot import plot_relation
    from lrrobust.io import ensure_writable_dir

    if attack is not None and eval_dir is None:
        raise UserError("--attack names an attack of an evaluation: give --eval EVAL_DIR too")
    out = out if out is not None else default_out(checkpoint)
    ensure_writable_dir(out, "--out", create=False)
    path = plot_relation(checkpoint, image, out, eval_dir=eval_dir, layer=layer,
                         pixel=None if pixel is None else parse_pixel(pixel), attack=attack, groups=groups,
                         root=root, device=device)
    say(f"wrote {path}")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    plot_app = typer.Typer(help="The paper's figures of a trained LR-Net: Fig. 4 (geometric priors), Fig. 5 "
                                "(query, key and aggregation weights, clean and adversarial).", no_args_is_help=True)
    app.add_typer(plot_app, name="plot")
    plot_app.command("prior")(user_errors(prior))
    plot_app.command("relation")(user_errors(relation))
