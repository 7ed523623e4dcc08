"""``lrrobust bench op``: speed and memory of the local relation op against convolutions (issue 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lrrobust.commands import console, err_console, is_terminal, print_error, say, user_errors
from lrrobust.core.console import make_console
from lrrobust.errors import UserError


def parse_list(text: str, name: str, known: tuple[str, ...]) -> tuple[str, ...]:
    """'a,b' -> ('a', 'b'), each one of ``known``; a UserError naming the option otherwise."""
    items = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [x for x in items if x not in known]
    if unknown or not items:
        raise UserError(f"{name} takes a comma-separated list of {', '.join(known)}; got {text!r}")
    return items


def parse_stages(stages: str, shapes: list[str], kernel_size: int = 7, stride: int = 1) -> tuple:
    """The LR-Net-26 stages named in ``stages`` ('1,3'), or custom ``CxS`` shapes (numbered from 1) if any, each
    with a ``kernel_size`` x ``kernel_size`` window and ``stride``."""
    from dataclasses import replace

    from lrrobust.bench.op import LRNET26_STAGES, Stage, check_stage

    if shapes:
        chosen = []
        for i, text in enumerate(shapes, start=1):
            try:
                channels, size = (int(x) for x in text.lower().split("x"))
            except ValueError:
                raise UserError(f"--shape takes CHANNELSxSIZE like 64x56, got {text!r}") from None
            if channels < 1 or size < 1:
                raise UserError(f"--shape needs at least 1 channel and 1 pixel, got {text!r}")
            chosen.append(Stage(i, channels, size))
    else:
        named = parse_list(stages, "--stages", tuple(str(s.stage) for s in LRNET26_STAGES))
        chosen = [s for s in LRNET26_STAGES if str(s.stage) in named]
    chosen = tuple(replace(s, kernel_size=kernel_size, stride=stride) for s in chosen)
    for stage in chosen:
        check_stage(stage)
    return chosen


def check_output_path(path: Path, option: str) -> None:
    """Refuse, before the bench runs, an output file that cannot be written: a directory (exit code 2), or a
    directory to write it in that cannot be written (exit code 1). Creates nothing."""
    from lrrobust.io import ensure_writable_dir

    if path.is_dir():
        raise UserError(f"{option} {path} is a directory; give a file name inside it")
    ensure_writable_dir(path.parent, option, create=False, given=path)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    @bench.command("op")
    @user_errors
    def op(
        device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
        batch: Annotated[int, typer.Option(help="Batch size.")] = 8,
        dtype: Annotated[
            str | None,
            typer.Option(
                help="float32 or float64 on cpu (default float32); bfloat16 (default), float16 or float32 on cuda."
            ),
        ] = None,
        stages: Annotated[str, typer.Option(help="LR-Net-26 stages to run, e.g. 1,3.")] = "1,2,3,4",
        impl: Annotated[
            str, typer.Option(help="Implementations, comma-separated: lr_fused, lr_reference, conv3x3, dwconv7x7.")
        ] = "lr_fused,lr_reference,conv3x3,dwconv7x7",
        passes: Annotated[str, typer.Option(help="Passes, comma-separated: fwd, fwd_bwd.")] = "fwd,fwd_bwd",
        repeats: Annotated[int, typer.Option(help="Timed runs per measurement (at most).")] = 10,
        warmup: Annotated[int, typer.Option(help="Untimed warm-up runs per measurement.")] = 1,
        max_seconds: Annotated[
            float, typer.Option(help="Cut the timed runs of one measurement to about this long (never below 3).")
        ] = 4.0,
        shape: Annotated[
            list[str] | None,
            typer.Option(help="Custom stage shape CHANNELSxSIZE instead of the LR-Net-26 stages (repeatable)."),
        ] = None,
        kernel_size: Annotated[
            int, typer.Option(help="Window size K of every stage (odd; 7 in LR-Net-26); conv baselines stay 3x3, 7x7.")
        ] = 7,
        stride: Annotated[int, typer.Option(help="Stride of every stage, for the op and the convolutions.")] = 1,
        threads: Annotated[
            int | None, typer.Option(help="CPU threads for torch (default: torch's own, one per core).")
        ] = None,
        json: Annotated[Path | None, typer.Option(help="Write the records as a JSON list to this file.")] = None,
        markdown: Annotated[
            Path | None, typer.Option(help="Write the table (and the targets) as markdown to this file.")
        ] = None,
    ) -> None:
        """Time the local relation op (fused and reference) against conv3x3 and depthwise conv7x7, forward and
        forward+backward, at the LR-Net-26 stage shapes (C = 100-800, 56-7 pixels, m = 8, K = 7, stride 1) or at
        other shapes, window sizes and strides. Issue 2's targets are judged at the LR-Net-26 shapes, K = 7, stride
        1 only."""
        from lrrobust.bench.op import (
            IMPLS,
            PASSES,
            check_options,
            check_targets,
            fused_kernel_compiled,
            impl_label,
            markdown_table,
            markdown_targets,
            op_table,
            run_op_bench,
            run_op_self_check,
            self_check_table,
            targets_table,
        )

        dtype = check_options(device, batch, dtype, repeats, warmup, max_seconds)
        chosen_stages = parse_stages(stages, shape or [], kernel_size, stride)
        impls = parse_list(impl, "--impl", IMPLS)
        chosen_passes = parse_list(passes, "--passes", PASSES)
        if threads is not None and threads < 1:
            raise UserError(f"--threads must be at least 1, got {threads}")
        for option, path in (("--json", json), ("--markdown", markdown)):
            if path is not None:
                check_output_path(path, option)

        import torch

        compiled = fused_kernel_compiled(device)
        fallback_note = (
            f"[bold red]WARNING: the compiled local relation kernel is NOT available on {device}: the lr_fused rows "
            "time the pure-PyTorch reference fallback, not the fused kernel.[/]"
        )
        err_console.print(
            f"bench op: device {device}, {dtype}, batch {batch}, {threads or torch.get_num_threads()} threads, torch "
            f"{torch.__version__}, fused kernel {'compiled' if compiled else 'NOT compiled'}",
            highlight=False,
        )
        if "lr_fused" in impls and not compiled:
            err_console.print(fallback_note)
        # The fused kernel against the reference first: timings of a wrong kernel would mean nothing.
        check, check_line = run_op_self_check(device, dtype)
        if check is not None and not check.passed:
            err_console.print(self_check_table(check))
            print_error(check.error_message())
            raise typer.Exit(1)
        err_console.print(check_line, highlight=False, markup=False)

        def progress(r: dict) -> None:
            err_console.print(
                f"[dim]stage {r['stage']} {r['pass']:<7} {impl_label(r):<12} {r['ms']:10.2f} ms {r['peak_mb']:9.1f} MB"
                f" ({r['repeats']} runs)[/]",
                highlight=False,
            )

        records = run_op_bench(
            device=device,
            batch=batch,
            dtype=dtype,
            stages=chosen_stages,
            impls=impls,
            passes=chosen_passes,
            repeats=repeats,
            warmup=warmup,
            max_seconds=max_seconds,
            threads=threads,
            progress=progress,
        )
        # Piped output (a file, CI logs) gets room for the whole table instead of the 80 columns rich assumes.
        out = console if is_terminal() else make_console(width=200)
        title = (
            f"local relation op vs convolutions ({device}, {dtype}, batch {batch}, K {kernel_size}, stride {stride})"
        )
        out.print(op_table(records, title=title))
        rows = [] if shape else check_targets(records)
        if rows:
            out.print(targets_table(rows))
        if "lr_fused" in impls and not compiled:
            err_console.print(fallback_note)
        from lrrobust.io import atomic_write_json, atomic_write_text

        if json is not None:
            atomic_write_json(json, records)
            say(f"wrote {len(records)} records to {json}", err_console)
        if markdown is not None:
            text = f"{title}\n\n{check_line}\n\n" + markdown_table(records)
            text += f"\n{markdown_targets(rows)}" if rows else ""
            atomic_write_text(markdown, text)
            say(f"wrote the table to {markdown}", err_console)
