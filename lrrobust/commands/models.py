"""``lrrobust models``: the zoo as a table, parameters and FLOPs beside the paper's (Tables 2, 7 and 8)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from lrrobust.commands import console, parse_key_values, user_errors
from lrrobust.errors import UserError


def zoo_rows(names: list[str], image_size: int, num_classes: int, overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """Parameters and FLOPs of each named model (built on the meta device: no memory, no compute)."""
    import torch

    from lrrobust.models import count_flops, count_params, create_model, model_info

    rows = []
    for name in names:
        with torch.device("meta"):
            model = create_model(name, num_classes=num_classes, **overrides)
        in_chans = model.spec["kwargs"]["in_chans"]
        paper = model_info(name).paper if not overrides and num_classes == 1000 and image_size == 224 else None
        rows.append(
            {
                "name": name,
                "params": count_params(model),
                "flops": count_flops(model, (in_chans, image_size, image_size)),
                "paper_params": paper.params if paper else None,
                "paper_flops": paper.flops if paper else None,
                "source": paper.source if paper else "",
            }
        )
    return rows


def _ratio(ours: float, paper: float | None) -> str:
    return f"{100 * (ours / paper - 1):+.1f}%" if paper else ""


def register(app: typer.Typer, bench: typer.Typer) -> None:
    @app.command("models")
    @user_errors
    def models(
        names: Annotated[list[str] | None, typer.Argument(help="Models to show (default: all).")] = None,
        image_size: Annotated[int, typer.Option(help="Input side for the FLOP count.")] = 224,
        num_classes: Annotated[int, typer.Option(help="Classifier outputs.")] = 1000,
        set_: Annotated[
            list[str] | None,
            typer.Option("--set", help="Override a create_model option, KEY=VALUE (repeatable), e.g. kernel_size=5."),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    ) -> None:
        """List the model zoo: parameters and FLOPs (multiply-adds) beside the paper's figures."""
        from rich.table import Table

        from lrrobust.models import list_models, registered_models

        if image_size < 1:
            raise UserError(f"--image-size must be a positive integer, got {image_size}")
        known = list_models()
        chosen = list(names) if names else [m.name for m in registered_models()]
        unknown = [n for n in chosen if n not in known]
        if unknown:
            raise UserError(f"unknown model {unknown[0]!r}; choose from {', '.join(known)}")
        rows = zoo_rows(chosen, image_size, num_classes, parse_key_values(set_, "--set"))
        if as_json:
            console.print_json(json.dumps(rows))
            return
        table = Table(title=f"lrrobust model zoo ({num_classes} classes, {image_size}x{image_size})")
        for col in ("model", "params", "paper", "diff", "FLOPs", "paper", "diff", "source"):
            table.add_column(col, justify="left" if col in ("model", "source") else "right")
        for r in rows:
            pp, pf = r["paper_params"], r["paper_flops"]
            table.add_row(
                r["name"],
                f"{r['params'] / 1e6:.2f}M",
                f"{pp / 1e6:.1f}M" if pp else "-",
                _ratio(r["params"], pp),
                f"{r['flops'] / 1e9:.2f}G",
                f"{pf / 1e9:.1f}G" if pf else "-",
                _ratio(r["flops"], pf),
                r["source"],
            )
        console.print(table)
        console.print(
            "FLOPs are multiply-adds (convs, linear, LR aggregation by Eq. 6, non-local attention); see docs/model_zoo.md."
        )
