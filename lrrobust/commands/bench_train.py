"""``lrrobust bench train``: training, adversarial training and attack steps, each network beside a baseline
(paper Sec. 6.2; issue 19)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lrrobust.commands import console, err_console, is_terminal, say, user_errors
from lrrobust.commands.bench_op import check_output_path
from lrrobust.core.console import make_console
from lrrobust.errors import UserError


def register(app: typer.Typer, bench: typer.Typer) -> None:
    @bench.command("train")
    @user_errors
    def bench_train_cmd(
        device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
        models: Annotated[str, typer.Option(help="Comma-separated zoo models.")] = "lrnet26,resnet26",
        baseline: Annotated[str, typer.Option(help="The model every other is compared with.")] = "resnet26",
        dataset: Annotated[str, typer.Option("--dataset", "-d", help="Input size, channels, classes and stem of this "
                                             "dataset: digits (8x8), mnist (28x28), cifar10 (32x32), imagenet "
                                             "(224x224). No data is read.")] = "cifar10",
        width: Annotated[float, typer.Option(help="Width multiplier (1.0: the paper's networks).")] = 1.0,
        stem: Annotated[str | None, typer.Option(help="imagenet, half or small (default: the dataset's).")] = None,
        batch_size: Annotated[int, typer.Option("--batch-size", "--batch", help="Images per step.")] = 32,
        steps: Annotated[int, typer.Option(help="PGD steps of the adversarial training step.")] = 16,
        rounds: Annotated[int, typer.Option("--rounds", "--iters", help="Timed rounds (medians are reported).")] = 3,
        warmup: Annotated[int, typer.Option(help="Untimed rounds first.")] = 1,
        amp: Annotated[bool, typer.Option("--amp", help="bfloat16 autocast (GPU only).")] = False,
        channels_last: Annotated[bool, typer.Option("--channels-last", help="Channels-last model and inputs.")] = False,
        all_variants: Annotated[bool, typer.Option("--all-variants", help="Time float32, --amp, --channels-last "
                                                   "and both.")] = False,
        without_aggregation: Annotated[bool, typer.Option("--without-aggregation", help="Also time each LR-Net "
                                                          "with its layers' aggregation skipped (input passed on): "
                                                          "the floor of any work on the op.")] = False,
        threads: Annotated[int | None, typer.Option(help="CPU threads for torch (default: torch's).")] = None,
        json_out: Annotated[Path | None, typer.Option("--json", help="Write the records to this JSON file.")] = None,
    ) -> None:
        """Median time of a training step, a PGD adversarial training step and an attack step (eval mode, input
        gradient) per model, models interleaved round by round, with each model's ratio to the baseline."""
        import torch

        from lrrobust.bench.train import STEPS, TARGET_ADV_RATIO, bench_train, ratios_to, variant_of
        from lrrobust.commands.train import check_model_name
        from lrrobust.data import check_dataset_name
        from lrrobust.models.registry import STEMS
        from lrrobust.training.distributed import resolve_device

        names = [m.strip() for m in models.split(",") if m.strip()]
        if not names:
            raise UserError(f"--models takes comma-separated zoo models like lrnet26,resnet26; got {models!r}")
        for name in names:
            check_model_name(name)
        check_dataset_name(dataset)
        if dataset == "imagefolder":
            raise UserError("--dataset imagefolder has no fixed input size; use imagenet (224x224)")
        if stem is not None and stem not in STEMS:
            raise UserError(f"--stem must be one of {', '.join(STEMS)}; got {stem!r}")
        if batch_size < 1 or steps < 1 or rounds < 1 or warmup < 0 or not (math.isfinite(width) and width > 0):
            raise UserError(f"--batch-size (--batch), --steps and --rounds (--iters) must be >= 1, --warmup >= 0 and --width a positive "
                            f"number; got {batch_size}, {steps}, {rounds}, {warmup} and {width:g}")
        if json_out is not None:
            check_output_path(json_out, "--json")
        dev = resolve_device(device)
        if threads is not None:
            if threads < 1:
                raise UserError(f"--threads must be at least 1, got {threads}")
            torch.set_num_threads(threads)
        if (amp or all_variants) and dev.type != "cuda":
            err_console.print("note: --amp (bfloat16 autocast) acts on GPU only; on CPU its rows run in float32",
                              highlight=False)
        variants = ((False, False), (True, False), (False, True), (True, True)) if all_variants else None

        def progress(done: int, total: int) -> None:
            err_console.print(f"round {done}/{total} done", highlight=False)

        records = bench_train(str(dev), tuple(names), dataset, width, stem, batch_size, steps, rounds, warmup, amp,
                              channels_last, variants, progress, without_aggregation)
        ratios = ratios_to(records, baseline)
        first = records[0]
        table = Table(title=f"{dataset} {first['image_size']}x{first['image_size']}, stem {first['stem']}, width "
                            f"{width:g}, batch {batch_size}, {dev}, {first['threads']} threads; median of {rounds} "
                            f"rounds (ms)")
        columns = ["model", "variant", "train", f"PGD-{steps} train", "attack", "adv/train"]
        if ratios:
            columns += [f"{step} / {baseline}" for step in ("train", "PGD train", "attack")]
        for column in columns:
            table.add_column(column, justify="left" if column in ("model", "variant") else "right")
        for r in records:
            variant = " + ".join(n for n, on in (("amp", r["amp"]), ("channels-last", r["channels_last"]),
                                                 ("no aggregation", not r["aggregation"])) if on)
            row = [r["model"], variant or "float32"] + [f"{r[f'{k}_step_s'] * 1e3:.1f}" for k in STEPS]
            row.append(f"{r['adv_ratio']:.1f}x" + ("" if r["adv_ratio"] <= TARGET_ADV_RATIO else " (over 13x)"))
            ratio = ratios.get(variant_of(r))
            if ratios:
                row += [f"{ratio[k]:.2f}x" for k in STEPS] if ratio else ["", "", ""]
            table.add_row(*row)
        (console if is_terminal() else make_console(width=160)).print(table)
        start, end = first["load_average_start"], first["load_average_end"]
        console.print(f"load average (1, 5, 15 min): {start[0]:.2f} {start[1]:.2f} {start[2]:.2f} at the start, "
                      f"{end[0]:.2f} {end[1]:.2f} {end[2]:.2f} at the end; CPU: {first['cpu']}", highlight=False)
        if json_out is not None:
            from lrrobust.io import atomic_write_json

            atomic_write_json(json_out, records)
            say(f"wrote {len(records)} records to {json_out}", err_console)
