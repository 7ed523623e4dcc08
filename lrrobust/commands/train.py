"""``lrrobust train`` and ``lrrobust train-adv`` (paper appendix, Sec. 6.2).

The two training commands share their options, declared once below as ``Annotated`` aliases and listed once in
``TRAINING_OPTIONS``; train-adv adds ``ATTACK_OPTIONS``. Every option left out takes the preset's value (``--preset``,
by default the dataset's; the help texts list each preset's values).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from lrrobust.commands import option_parameters, parse_key_values, print_error, say, user_errors
from lrrobust.core.numbers import parse_fraction
from lrrobust.data import DATASETS, dataset_entry, eps_text
from lrrobust.errors import UserError
from lrrobust.training.config import PRESETS

Model = Annotated[str, typer.Option("--model", "-m", help="Zoo model name (see `lrrobust models`).")]
Width = Annotated[float | None, typer.Option(help="Width multiplier of the model (preset: " + ", ".join(
    f"{p.model_kwargs['width']:g} on {name}" for name, p in PRESETS.items() if "width" in p.model_kwargs) + ").")]
Stem = Annotated[str | None, typer.Option(help="Model stem: imagenet, half or small (default: the preset's).")]
KernelSize = Annotated[str | None, typer.Option(help="Spatial kernel size: 3, 5, 7, 9 or full (LR-Nets).")]
ModelOpt = Annotated[
    list[str] | None,
    typer.Option("--model-opt", help="Any create_model option as KEY=VALUE, e.g. geo_prior=none (repeatable)."),
]
Dataset = Annotated[str, typer.Option("--dataset", "-d", help=f"{', '.join(DATASETS)}.")]
Root = Annotated[Path | None, typer.Option(help="Dataset root (" + "; ".join(
    f"{name}: {dataset_entry(name).root}" for name in DATASETS if dataset_entry(name).root) + ").")]
Download = Annotated[bool, typer.Option("--download", help="Download the dataset into --root if missing (one "
                                                            "torchvision can fetch, such as CIFAR-10).")]
Preset = Annotated[str | None, typer.Option(help=f"Defaults to start from: {', '.join(PRESETS)} (default: the "
                                                    "dataset's" + "".join(
    f"; {name} takes {dataset_entry(name).preset.name}'s" for name in DATASETS
    if dataset_entry(name).preset.name != name) + ").")]
Epochs = Annotated[int | None, typer.Option(help="Epochs (preset: " + ", ".join(
    f"{p.epochs} {name}" for name, p in PRESETS.items()) + ").")]
BatchSize = Annotated[int | None, typer.Option(help="Global batch size, summed over processes.")]
Lr = Annotated[float | None, typer.Option(help="Learning rate (preset: 0.4 per 1024 images, scaled linearly).")]
WeightDecay = Annotated[float | None, typer.Option(help="SGD weight decay.")]
Momentum = Annotated[float | None, typer.Option(help="SGD momentum.")]
Warmup = Annotated[float | None, typer.Option(help="Linear warm-up epochs.")]
Milestones = Annotated[str | None, typer.Option(help="Epochs where the lr is multiplied by 0.1, e.g. 30,60,90.")]
GradClip = Annotated[float | None, typer.Option(help="Clip the gradient norm to this (0: off; preset: " + ", ".join(
    f"{p.grad_clip:g} on {name}" for name, p in PRESETS.items() if p.grad_clip) + ").")]
PreciseBn = Annotated[int | None, typer.Option(help="Recompute batch norm's running statistics over this many "
                                                      "fixed training batches (their training attack's images in "
                                                      "adversarial runs) before each validation (0: off, every "
                                                      "preset's default).")]
Seed = Annotated[int | None, typer.Option(help="Seed of every random number generator (default 0).")]
Out = Annotated[Path | None, typer.Option("--out", "-o", help="Run directory (default runs/DATASET-MODEL-KIND).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")]
Amp = Annotated[bool, typer.Option("--amp", help="bfloat16 autocast on GPU (no effect on CPU).")]
ChannelsLast = Annotated[bool, typer.Option("--channels-last", help="Channels-last memory format.")]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the model.")]
SyncBn = Annotated[bool, typer.Option("--sync-bn", help="SyncBatchNorm across GPUs under torchrun.")]
Workers = Annotated[int | None, typer.Option(help="DataLoader worker processes per training process.")]
Device = Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N (default: cuda when available).")]
Progress = Annotated[bool | None, typer.Option("--progress/--no-progress",
                                                  help="Progress bars (default: when stdout is a terminal).")]
Eps = Annotated[str | None, typer.Option(help="L-inf budget on [0, 1] pixels, e.g. 16/255 (preset: " + ", ".join(
    f"{eps_text(p.eps, name)} {name}" for name, p in PRESETS.items()) + ").")]
StepSize = Annotated[str | None, typer.Option("--step-size", "--alpha", help="PGD step size, e.g. 1/255 (default "
                                                 "1/255, raised to eps/steps if larger; --alpha is the old name).")]
Steps = Annotated[int | None, typer.Option(help="PGD steps (preset: " + ", ".join(
    f"{p.steps} {name}" for name, p in PRESETS.items()) + ").")]
RandomStart = Annotated[bool | None, typer.Option("--random-start/--no-random-start",
                                                     help="Start PGD at a random point of the eps-ball (default).")]
Targeted = Annotated[bool | None, typer.Option("--targeted/--untargeted",
                                                  help="Targeted PGD to a random wrong class (default) or not.")]


def parse_milestones(text: str | None) -> list[int] | None:
    """'30,60,90' -> [30, 60, 90]; '' -> [] (no lr steps). resolve_config checks they are positive and increasing."""
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--milestones takes comma-separated epochs like 30,60,90; got {text!r}") from None


def build_config(adversarial: bool, **options: Any):
    """A TrainConfig from the command's options (model overrides gathered into model_kwargs)."""
    from lrrobust.training import TrainConfig

    kwargs = parse_key_values(options.pop("model_opt"), "--model-opt")
    for key in ("width", "stem"):
        if options[key] is not None:
            kwargs[key] = options[key]
    kernel_size = options.pop("kernel_size")
    if kernel_size is not None:
        kwargs["kernel_size"] = int(kernel_size) if kernel_size.isdigit() else kernel_size
    attack = {}
    if adversarial:
        attack = {
            "eps": None if options["eps"] is None else parse_fraction(options["eps"], "--eps"),
            "step_size": None if options["step_size"] is None else parse_fraction(options["step_size"], "--step-size"),
            "steps": options["steps"], "random_start": options["random_start"], "targeted": options["targeted"],
        }
    return TrainConfig(
        model=options["model"], model_kwargs=kwargs, dataset=options["dataset"],
        root=None if options["root"] is None else str(options["root"]), download=options["download"],
        preset=options["preset"], epochs=options["epochs"], batch_size=options["batch_size"], lr=options["lr"],
        weight_decay=options["weight_decay"], momentum=options["momentum"], warmup_epochs=options["warmup_epochs"],
        milestones=parse_milestones(options["milestones"]), grad_clip=options["grad_clip"],
        precise_bn=options["precise_bn"], seed=options["seed"],
        out=None if options["out"] is None else str(options["out"]), resume=options["resume"], amp=options["amp"],
        channels_last=options["channels_last"], compile=options["compile"], sync_bn=options["sync_bn"],
        num_workers=options["num_workers"], device=options["device"], adversarial=adversarial, **attack,
    )


def check_model_name(name: str) -> None:
    from lrrobust.models import list_models

    if name not in list_models():
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")


def run_training(adversarial: bool, progress: bool | None, options: dict[str, Any]) -> None:
    from lrrobust.io import ensure_writable_dir
    from lrrobust.training import TrainingDiverged, resolve_config, train

    config = build_config(adversarial, **options)
    check_model_name(config.model)
    resolved = resolve_config(config)  # every option checked before any work starts
    # The run directory must be writable before the first epoch; training creates and locks it itself, so probe
    # it when it exists, else its nearest existing parent, creating nothing.
    ensure_writable_dir(resolved.out, "--out", create=False)
    try:
        run = train(config, progress=progress)
    except TrainingDiverged as e:
        print_error(e, "training stopped:")
        raise typer.Exit(1) from None
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone speaks
        say(f"run directory: {run}")


TRAINING_OPTIONS = {
    "model": (Model, "lrnet26"), "width": (Width, None), "stem": (Stem, None), "kernel_size": (KernelSize, None),
    "model_opt": (ModelOpt, None), "dataset": (Dataset, "digits"), "root": (Root, None), "download": (Download, False),
    "preset": (Preset, None), "epochs": (Epochs, None), "batch_size": (BatchSize, None), "lr": (Lr, None),
    "weight_decay": (WeightDecay, None), "momentum": (Momentum, None), "warmup_epochs": (Warmup, None),
    "milestones": (Milestones, None), "grad_clip": (GradClip, None), "precise_bn": (PreciseBn, None),
    "seed": (Seed, None), "out": (Out, None), "resume": (Resume, False), "amp": (Amp, False),
    "channels_last": (ChannelsLast, False), "compile": (Compile, False), "sync_bn": (SyncBn, False),
    "num_workers": (Workers, None), "device": (Device, None), "progress": (Progress, None),
}
ATTACK_OPTIONS = {
    "eps": (Eps, None), "step_size": (StepSize, None), "steps": (Steps, None), "random_start": (RandomStart, None),
    "targeted": (Targeted, None),
}


def training_command(adversarial: bool) -> Callable[..., None]:
    """``train`` (regular) or ``train-adv`` (with the attack's options): typer reads the options from the
    signature built from the tables above."""

    def command(**options: Any) -> None:
        run_training(adversarial, options.pop("progress"), options)

    options = {**TRAINING_OPTIONS, **(ATTACK_OPTIONS if adversarial else {})}
    command.__signature__ = inspect.Signature(option_parameters(options))
    if adversarial:
        attacks = ", ".join(f"{name} {eps_text(p.eps, name)} and {p.steps}" for name, p in PRESETS.items())
        command.__doc__ = ("Adversarial training with targeted PGD at the preset's eps and steps (the paper, "
                           f"Sec. 6.2; Feature Denoising): {attacks} steps.")
    else:
        command.__doc__ = ("Regular training (paper appendix recipe as the imagenet preset). Runs under torchrun "
                           "unchanged.")
    return command


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("train")(user_errors(training_command(False)))
    app.command("train-adv")(user_errors(training_command(True)))
