"""``lrrobust eval-attack`` and ``lrrobust report`` (paper Sec. 6.2, Table 9)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from lrrobust.attacks import KINDS, attack_options, can_target
from lrrobust.commands import console, is_terminal, option_parameters, say, user_errors
from lrrobust.core.seeding import MAX_SEED
from lrrobust.core.trainings import TRAININGS
from lrrobust.data import DATASETS, dataset_entry, eps_text
from lrrobust.errors import UserError
from lrrobust.evaluation.suite import suite_names

AttackKind = Enum("AttackKind", {kind: kind for kind in sorted(KINDS)}, type=str)  # every registered kind
Training = Enum("Training", {t: t for t in TRAININGS}, type=str)


class Mode(str, Enum):
    targeted = "targeted"
    untargeted = "untargeted"
    both = "both"


# Attack options, used when no --suite is given. None means "not given", so mixing them with --suite is caught.
# Each setting of an attack kind becomes an option of its own (``with_attack_options``).
AttackOpt = Annotated[AttackKind | None, typer.Option("--attack", help="Attack without a suite: pgd (default) or "
                                                         "another kind of lrrobust.attacks.")]
ModeOpt = Annotated[Mode | None, typer.Option("--mode", help="targeted, untargeted or both (default both; an "
                                                 "untargeted kind such as AutoAttack: untargeted).")]


def eps_help() -> str:
    """--eps's default, in words: the checkpoint's training eps, else its dataset's standard eps in the attack's
    norm (``lrrobust.evaluation.standard.dataset_eps``), each in the dataset's own unit."""
    from lrrobust.evaluation.standard import dataset_eps

    def listed(norm: str) -> str:
        found = [(name, dataset_eps(name, norm)) for name in DATASETS]
        return ", ".join(f"{name} {eps_text(eps, name) if norm == 'linf' else f'{eps:g}'}" for name, eps in found
                         if eps is not None)

    return (f"Default: the eps the checkpoint was adversarially trained at, else the dataset's standard: "
            f"{listed('linf')}; L2: {listed('l2')}.")


def with_attack_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with one option per setting of an attack kind (``lrrobust.attacks.attack_options``: ``--eps``,
    ``--steps``, ``--n-queries``, ...) after ``--mode``, as typer reads it; they reach ``command``'s
    ``**settings``."""

    @functools.wraps(command)
    def with_options(**options: Any) -> None:
        command(**options)

    options = {}
    for option in attack_options():
        decls = [f"{option.flag}/--no-{option.flag[2:]}"] if option.option_type is bool else [option.flag]
        help = option.help + (" " + eps_help() if option.key == "eps" else "")
        options[option.key] = (Annotated[option.option_type | None, typer.Option(*decls, help=help)], None)
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
              for p in inspect.signature(command, eval_str=True).parameters.values() if p.kind != p.VAR_KEYWORD]
    at = [p.name for p in params].index("mode") + 1
    with_options.__signature__ = inspect.Signature(params[:at] + option_parameters(options) + params[at:])
    return with_options


def _suite_from_options(attack, mode, settings, eps_reason=""):
    """A suite of one attack kind from the CLI options, targeted and/or untargeted (an untargeted kind:
    untargeted); the kind's spec validates. ``eps_reason`` says where the eps came from when the options gave none."""
    from lrrobust.attacks import attack_from_options
    from lrrobust.evaluation.suite import Suite

    kind = (attack or AttackKind.pgd).value
    modes = {"targeted": [True], "untargeted": [False], "both": [True, False]}[(mode or Mode.both).value]
    if not can_target(kind):
        if mode == Mode.targeted:
            raise UserError(f"--attack {kind} is untargeted; drop --mode targeted")
        modes = [None]
    attacks = []
    for targeted in modes:
        spec = attack_from_options(kind, kind, {**settings, "targeted": targeted})
        name = f"{kind}{getattr(spec, 'steps', '')}-{'targeted' if spec.targeted else 'untargeted'}"
        attacks.append(dataclasses.replace(spec, name=name))
    description = "attack options given on the command line" + (f"; eps: {eps_reason}" if eps_reason else "")
    return Suite(name="cli", attacks=tuple(attacks), description=description)


def _default_eps(checkpoint, dataset, attack) -> tuple[float, str]:
    """The eps of an evaluation given no --suite or --eps, and why: the checkpoint's training eps, else the
    dataset's standard eps (``lrrobust.evaluation.standard.model_eps``), in the attack kind's norm."""
    from lrrobust.evaluation.standard import model_eps

    norm = KINDS[(attack or AttackKind.pgd).value].norm
    state = None
    if checkpoint is not None:
        from lrrobust.checkpoint import read_checkpoint
        from lrrobust.evaluation.evaluate import resolve_checkpoint

        state = read_checkpoint(resolve_checkpoint(checkpoint), map_location="cpu")
        dataset = dataset or str(state["dataset"])
    return model_eps(state, dataset, norm)


def eval_attack(
    checkpoint: Annotated[Path | None, typer.Argument(help="A checkpoint (RUN/best.pt) or a run directory (its "
                                                      "best.pt); or give --model-py or --torchvision.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Evaluation directory, required (resumed when it "
                                                  "exists).")] = None,
    model_py: Annotated[str | None, typer.Option("--model-py", help="Your own model: FILE.py:FACTORY, a function "
                                                 "returning an nn.Module on [0, 1] images, or (module, mean, std) "
                                                 "(docs/evaluation.md, Your own model).")] = None,
    torchvision: Annotated[str | None, typer.Option("--torchvision", help="A torchvision classification model by "
                                                    "name (resnet18, ...) with --weights or --download.")] = None,
    weights: Annotated[Path | None, typer.Option("--weights", help="--torchvision: a state-dict file "
                                                 "(torch.save(model.state_dict(), FILE)).")] = None,
    download: Annotated[bool, typer.Option("--download", help="--torchvision: fetch torchvision's own ImageNet "
                                           "weights (downloaded only when asked).")] = False,
    model_timeout: Annotated[float | None, typer.Option("--model-timeout", help="--model-py/--torchvision: seconds "
                                                        "to load the model and try it on its first batch (default "
                                                        "120); the attacks have no limit.")] = None,
    label: Annotated[str | None, typer.Option("--label", help="The model's row name in reports (default: its "
                                              "network, file:factory or torchvision name).")] = None,
    training: Annotated[Training | None, typer.Option("--training", help="--model-py/--torchvision: how the model "
                                                      "was trained, the report's columns it fills (default "
                                                      "regular).")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help=f"{', '.join(DATASETS)} (default: the "
                                                   "checkpoint's).")] = None,
    root: Annotated[str | None, typer.Option("--root", help="Where the dataset lies (not for "
                                                f"{' or '.join(n for n in DATASETS if dataset_entry(n).root is None)}"
                                                ").")] = None,
    suite: Annotated[str | None, typer.Option("--suite", help="A suite: a TOML file, or a shipped suite's name: "
                                                 f"{', '.join(suite_names())}.")] = None,
    attack: AttackOpt = None,
    mode: ModeOpt = None,
    checks: Annotated[bool | None, typer.Option("--checks/--no-checks", help="Run the gradient-masking checks "
                                                   "(default: as the suite says).")] = None,
    transfer_from: Annotated[Path | None, typer.Option("--transfer-from", help="Second checkpoint for the "
                                                          "transfer check (implies --checks).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of targets and random starts.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Images per batch (per rank).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Evaluate a seeded random subset of N samples.")
                     ] = None,
    split: Annotated[str | None, typer.Option("--split", help="test (default), val or train.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    workers: Annotated[int, typer.Option("--workers", help="DataLoader worker processes.")] = 0,
    **settings: Any,
) -> None:
    """White-box attack evaluation: per-sample records, summary, resumable, torchrun-ready (Table 9)."""
    from lrrobust.evaluation.evaluate import evaluate
    from lrrobust.evaluation.suite import load_suite
    from lrrobust.io import ensure_writable_dir

    if out is None:
        raise UserError("--out DIR is required: the evaluation directory")
    outside = _check_model_options(checkpoint, model_py, torchvision, weights, download, training, dataset)
    timeout = _check_timeout(model_timeout, outside)
    if suite is not None and any(v is not None for v in (attack, mode, *settings.values())):
        raise UserError("give either --suite or attack options (--attack, --eps, --steps, ...), not both")
    eps_line = None  # which eps was chosen for the user, and why
    if suite is not None:
        chosen = load_suite(suite)
    elif settings["eps"] is not None:
        chosen = _suite_from_options(attack, mode, settings)
    else:
        from lrrobust.evaluation.standard import describe_eps

        chosen_eps, reason = _default_eps(checkpoint, dataset, attack)
        chosen = _suite_from_options(attack, mode, {**settings, "eps": chosen_eps}, eps_reason=reason)
        eps_line = f"eps {describe_eps(chosen_eps, chosen.norm)}: {reason} (--eps or --suite to choose another)"
        # In a terminal before the work starts; in a log after the tables, so that an error stays one line.
        if is_terminal() and os.environ.get("RANK", "0") == "0":
            say(eps_line)
    changes = {}
    for name, value, minimum in (("seed", seed, 0), ("batch_size", batch_size, 1), ("limit", limit, 1)):
        if value is not None:
            if value < minimum:
                raise UserError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")
            changes[name] = value
    if split is not None:
        if split not in ("train", "val", "test"):
            raise UserError(f"--split must be test, val or train, got {split!r}")
        changes["split"] = split
    if checks is False and transfer_from is not None:
        raise UserError("--transfer-from runs the transfer check: drop --no-checks")
    if checks is not None or transfer_from is not None:
        changes["checks"] = dataclasses.replace(chosen.checks, enabled=checks is not False)
    if seed is not None and seed > MAX_SEED:
        raise UserError(f"--seed must lie in [0, 2**63), got {seed}")
    if workers < 0:
        raise UserError(f"--workers must be >= 0, got {workers}")
    chosen = chosen.replace(**changes)
    # The evaluation code creates and locks --out itself, after loading the models: probe it (or its nearest
    # existing parent) now, creating nothing, so an unwritable path fails before any attack runs.
    ensure_writable_dir(out, "--out", create=False)
    common = {"root": root, "transfer_from": None if transfer_from is None else str(transfer_from), "device": device,
              "progress": "bar" if is_terminal() else "log", "workers": workers, "label": label}
    if outside is None:
        summary = evaluate(checkpoint, dataset, chosen, out, **common)
    else:  # the model's own code runs in a child process, which may exit, crash or hang (lrrobust.isolation)
        from lrrobust.isolation import evaluate_in_child

        summary = evaluate_in_child(outside, dataset, chosen, out, timeout=timeout,
                                    training=(training or Training.regular).value, **common)
    if summary is not None:
        from lrrobust.evaluation.display import print_summary

        print_summary(summary, console)
        if eps_line is not None and not is_terminal():
            say(eps_line)
        say(f"wrote {out}/summary.json, summary.csv and samples.csv")


def _check_timeout(model_timeout, outside):
    """--model-timeout in seconds: a finite number > 0, for an outside model only (default 120)."""
    from lrrobust.isolation import DEFAULT_TIMEOUT

    if model_timeout is None:
        return DEFAULT_TIMEOUT
    if outside is None:
        raise UserError("--model-timeout is for --model-py and --torchvision: a checkpoint runs lrrobust's own code")
    if not (math.isfinite(model_timeout) and model_timeout > 0):
        raise UserError(f"--model-timeout must be a finite number of seconds > 0, got {model_timeout:g}")
    return model_timeout


def _check_model_options(checkpoint, model_py, torchvision, weights, download, training, dataset):
    """Which model to evaluate: None for a checkpoint, else the outside model (lrrobust.external.OutsideModel)."""
    given = [name for name, value in (("a CHECKPOINT", checkpoint), ("--model-py", model_py),
                                      ("--torchvision", torchvision)) if value is not None]
    if len(given) != 1:
        got = f", not {' and '.join(given)}" if given else ""
        raise UserError(f"give one model: a CHECKPOINT (or run directory), --model-py FILE.py:FACTORY or --torchvision "
                        f"NAME{got}")
    if torchvision is None and (weights is not None or download):
        raise UserError("--weights and --download go with --torchvision NAME")
    if checkpoint is not None:
        if training is not None:
            raise UserError("--training is for --model-py and --torchvision: a checkpoint says how it was trained")
        return None
    if dataset is None:
        raise UserError("--dataset is required with --model-py and --torchvision (no checkpoint names one)")
    from lrrobust.external import OutsideModel, parse_model_py

    if model_py is not None:
        parse_model_py(model_py)  # a bad spec or a missing file fails before the dataset is read
        return OutsideModel(model_py=model_py)
    return OutsideModel(torchvision=torchvision, weights=None if weights is None else str(weights), download=download)


def report(
    dirs: Annotated[list[Path], typer.Argument(help="Evaluation directories (summary.json) and/or training run "
                                               "directories (their evaluations are found inside).")],
    out: Annotated[Path, typer.Option("--out", help="Report directory, e.g. reports/NAME.")],
    allow_mixed: Annotated[bool, typer.Option("--allow-mixed", help="Put results measured with other attacks, eps, "
                                              "images or splits in one table anyway, marked with a dagger.")] = False,
    notes: Annotated[Path | None, typer.Option("--notes", help="A markdown file added to the report as a section "
                                               "after the tables (how the models were sized, what was run).")] = None,
) -> None:
    """Table 9 style report: worst case with intervals, paired tests, plots, masking checks and manifests."""
    from lrrobust.io import ensure_writable_dir
    from lrrobust.report import write_report

    sections = []
    if notes is not None:
        try:
            sections.append(notes.read_text(encoding="utf-8").rstrip() + "\n")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--notes {notes} cannot be read as UTF-8 text ({getattr(e, 'strerror', None) or e})") from None
    ensure_writable_dir(out, "--out", create=False)  # the report creates it only once its inputs are read
    path = write_report(dirs, out, allow_mixed=allow_mixed, extra_sections=sections)
    say(f"wrote {path}")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("eval-attack")(user_errors(with_attack_options(eval_attack)))
    app.command("report")(user_errors(report))
