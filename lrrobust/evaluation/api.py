"""``lrrobust.evaluate``: the Python call, shaped like the ones robustness researchers already know.

AutoAttack takes tensors and a threat model (``AutoAttack(model, norm="Linf", eps=8/255).run_standard_evaluation(x,
y)``); RobustBench takes a dataset by name (``benchmark(model, dataset="cifar10", threat_model="Linf", eps=8/255)``).
``evaluate(model, data, eps=..., norm=...)`` takes either, or a DataLoader, and runs the same attack loop, ledger
and checks as ``lrrobust eval-attack`` (``lrrobust.evaluation.loop``): in memory when ``out`` is None, else into a
resumable evaluation directory that ``lrrobust report`` reads. It returns an ``EvalResult``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lrrobust.core.modes import eval_mode
from lrrobust.core.numbers import check_int, parse_fraction
from lrrobust.data import DatasetInfo, dataset_names
from lrrobust.errors import UserError
from lrrobust.evaluation.evaluate import evaluate_target, open_dataset
from lrrobust.evaluation.loop import Kept
from lrrobust.evaluation.result import EvalResult, build_result
from lrrobust.evaluation.standard import NORM_NAMES, dataset_eps, describe_eps, parse_norm, standard_suite
from lrrobust.evaluation.suite import Suite, load_suite, parse_suite
from lrrobust.evaluation.target import CHECK_BATCH, Origin, check_label, check_training
from lrrobust.external import outside_target

STANDARD = "standard"


class TensorPairs(Dataset):
    """(x[i], y[i]) pairs of two tensors: images in [0, 1] of shape (N, C, H, W) and integer labels of shape (N,)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


def _check_pair(x: Any, y: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x: a float tensor (N, C, H, W) in [0, 1]; y: N integer labels."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise UserError(f"{where} must hold two tensors (images, labels), got ({type(x).__name__}, "
                        f"{type(y).__name__})")
    if x.dim() != 4 or not x.is_floating_point():
        raise UserError(f"{where}: the images must be a floating-point tensor of shape (N, C, H, W), got "
                        f"{x.dtype} of shape {tuple(x.shape)}")
    if y.dim() != 1 or y.is_floating_point() or y.is_complex() or len(y) != len(x):
        raise UserError(f"{where}: the labels must be {len(x)} integers (shape ({len(x)},)), got {y.dtype} of shape "
                        f"{tuple(y.shape)}")
    if len(x) == 0:
        raise UserError(f"{where} holds no images")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 1:
        raise UserError(f"{where}: the images hold pixels in [{low:.3g}, {high:.3g}], not [0, 1]: attacks and eps work "
                        "on [0, 1] pixels; give the model its normalisation (mean, std) instead of the data")
    return x.detach().float().cpu(), y.detach().long().cpu()


def _from_loader(loader: DataLoader, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The loader's first ``n`` images (all of them when ``n`` is None), in its order, as two tensors."""
    xs, ys, count = [], [], 0
    for batch in loader:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise UserError("the DataLoader must yield (images, labels) batches, got "
                            f"{type(batch).__name__}{f' of {len(batch)}' if isinstance(batch, (tuple, list)) else ''}")
        x, y = _check_pair(batch[0], torch.as_tensor(batch[1]), "a DataLoader batch")
        xs.append(x)
        ys.append(y)
        count += len(y)
        if n is not None and count >= n:
            break
    if not xs:
        raise UserError("the DataLoader yields no batches")
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def _tensor_info(name: str, x: torch.Tensor) -> DatasetInfo:
    """The facts of images given as a tensor (the class count is the model's, filled in later)."""
    mean = tuple(float(v) for v in x.mean(dim=(0, 2, 3)))
    std = tuple(max(float(v), 1e-6) for v in x.std(dim=(0, 2, 3))) if len(x) > 1 else (1.0,) * x.shape[1]
    return DatasetInfo(name, 0, x.shape[1], x.shape[-1], mean, std, "small")


def _suite(attacks: Any, eps: Any, norm: Any, dataset: str | None) -> Suite:
    """The suite ``attacks`` names at the threat model (``eps``, ``norm``) asked; see ``evaluate``."""
    if isinstance(attacks, str) and attacks == STANDARD:
        norm = parse_norm("Linf" if norm is None else norm)
        if eps is None:
            eps = dataset_eps(dataset, norm) if dataset else None
            if eps is None:
                what = f"{dataset} has no standard {NORM_NAMES[norm]} eps" if dataset else "tensors carry no eps"
                raise UserError(f"lrrobust.evaluate: {what}; give eps (e.g. eps=8/255)")
        else:
            eps = parse_fraction(eps, "eps", maximum=100.0 if norm == "l2" else 1.0)
        return standard_suite(eps, norm, dataset)
    if isinstance(attacks, Suite):
        suite = attacks
    elif isinstance(attacks, Mapping):
        suite = parse_suite(dict(attacks))
    elif isinstance(attacks, (str, os.PathLike)):
        suite = load_suite(attacks)
    else:
        raise UserError(f"attacks must be 'standard', a suite name or TOML file, a Suite or a suite table (dict), got "
                        f"{type(attacks).__name__}")
    if norm is not None and parse_norm(norm) != suite.norm:
        raise UserError(f"suite {suite.name} attacks in {NORM_NAMES[suite.norm]}, not {norm}: drop norm, or use "
                        "attacks='standard'")
    if eps is not None:
        given = parse_fraction(eps, "eps", maximum=100.0 if suite.norm == "l2" else 1.0)
        if abs(given - suite.eps) > 1e-9 * suite.eps:
            raise UserError(f"suite {suite.name} attacks at eps {describe_eps(suite.eps, suite.norm)}, not "
                            f"{describe_eps(given, suite.norm)}: drop eps, or use attacks='standard' to attack at "
                            f"{given:.4g}")
    return suite


def _infer_classes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: str) -> int:
    """The model's class count from its output on a few images (the labels' when the output is no matrix:
    ``check_module`` then says what is wrong with it)."""
    try:
        with eval_mode(model), torch.no_grad():
            output = model.to(device)(x[:CHECK_BATCH].to(device))
    except Exception:  # noqa: BLE001 - check_module tries the model again and says why it fails
        output = None
    if isinstance(output, torch.Tensor) and output.dim() == 2:
        return int(output.shape[1])
    return int(y.max()) + 1


def _torch_device(model: Any, device: Any) -> str:
    if device is not None:
        return str(device)
    if isinstance(model, nn.Module):
        return next((str(p.device) for p in model.parameters()), "cpu")
    return "cpu"


def evaluate(
    model: nn.Module,
    data: str | tuple[torch.Tensor, torch.Tensor] | DataLoader,
    *,
    eps: float | str | None = None,
    norm: str | None = None,
    attacks: str | os.PathLike | Suite | Mapping[str, Any] = STANDARD,
    n: int | None = None,
    out: str | os.PathLike | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    return_adv: bool = False,
    label: str | None = None,
    training: str = "regular",
    mean: Any = None,
    std: Any = None,
    root: str | None = None,
    transfer_from: str | None = None,
    progress: bool = False,
    workers: int = 0,
) -> EvalResult | None:
    """Attack ``model`` on ``data`` and return its clean and worst-case robust accuracy (``lrrobust.evaluate``).

    Args:
        model: an ``nn.Module`` returning (N, classes) logits for images in [0, 1] (or, with ``mean``/``std``, for
            ``(x - mean) / std``), deterministic, with no BatchNorm or dropout left in train mode.
        data: a dataset name (one of ``lrrobust.data.dataset_names()``; the suite's split, test by default),
            an ``(x, y)`` pair of tensors (images in [0, 1] of shape (N, C, H, W), integer labels) or a DataLoader
            of such batches.
        eps: the budget on [0, 1] pixels (a number or a fraction like "8/255"). Default: the suite's; with
            "standard", the dataset's standard eps (``lrrobust.evaluation.standard.dataset_eps``; e.g. mnist 0.3).
        norm: "Linf" (default) or "L2"; a suite has its own, which ``norm`` must match when given.
        attacks: "standard" (the eps-matched standard suite: targeted and untargeted PGD, AutoAttack and the
            masking checks; ``lrrobust.evaluation.standard``), a suite name (lrrobust/suites/) or TOML file, a
            ``Suite``, or a suite's table as a dict.
        n: how many images: a seeded random subset of a named dataset's split (as ``--limit``); the first ``n`` of
            tensors or a DataLoader. Default: a named dataset's suite says (all of the split unless it has a
            ``limit``); every image of tensors or a DataLoader.
        out: an evaluation directory to write (summary.json, summary.csv, samples.csv; resumed when it exists, read
            by ``lrrobust report``). None: nothing is written.
        seed: the seed of targets and random starts (default: the suite's, 0 in every shipped suite).
        device: where to attack (default: where the model's parameters are).
        batch_size: images per batch (default: the suite's).
        return_adv: keep the adversarial images (``EvalResult.adv_images``; one per image, on the CPU); with
            ``out``, the directory must be new.
        label, training: the model's row name in reports and how it was trained (regular or adversarial).
        mean, std: the normalisation lrrobust puts in front of ``model`` (per channel, or one number).
        root: where a named dataset lies (not for digits and mnist).
        transfer_from: a checkpoint for the transfer check.
        progress: show a progress bar.
        workers: DataLoader worker processes.

    Returns:
        An ``EvalResult``: ``clean`` and ``robust`` (worst case) accuracy with 95% intervals, each attack's accuracy,
        ``robust_mask`` per image, ``adv_images`` when asked, and ``summary`` (summary.json's content); None on
        the ranks other than 0 under torchrun (with ``out``).
    """
    if label is not None:
        check_label(label)
    check_training(training)
    if not isinstance(model, nn.Module):
        raise UserError(f"lrrobust.evaluate takes a torch.nn.Module, got a {type(model).__name__}")
    if n is not None:
        check_int(n, "n", 1)
    name = data if isinstance(data, str) else None
    suite = _suite(attacks, eps, norm, name)
    changes: dict[str, Any] = {}
    if seed is not None:
        changes["seed"] = check_int(seed, "seed", 0)
    if batch_size is not None:
        changes["batch_size"] = check_int(batch_size, "batch_size", 1)
    device = _torch_device(model, device)
    if name is not None:
        if n is not None:
            changes["limit"] = n
        suite = suite.replace(**changes)
        dataset, info = open_dataset(name, root, suite.split)
    else:
        if isinstance(data, DataLoader):
            x, y = _from_loader(data, n)
            kind = "dataloader"
        elif isinstance(data, (tuple, list)) and len(data) == 2:
            x, y = _check_pair(*data, "data")
            x, y = x[:n], y[:n]
            kind = "tensors"
        else:
            raise UserError(f"data must be a dataset name ({', '.join(dataset_names())}), an (x, y) pair of tensors or "
                            f"a DataLoader, got {type(data).__name__}")
        suite = suite.replace(limit=None, **changes)
        dataset, info = TensorPairs(x, y), _tensor_info(kind, x)
    origin = Origin("python-api", name=type(model).__name__)
    target = outside_target(model, origin, info, label=label, training=training, mean=mean, std=std)
    if name is None:
        classes = _infer_classes(target.model, dataset.x, dataset.y, device)
        info = dataclasses.replace(info, num_classes=classes)
        target.num_classes = classes
    kept = Kept(adversarial=return_adv)
    summary = evaluate_target(target, dataset, info, suite, out, root=root, transfer_from=transfer_from,
                              device=device, progress=progress, workers=workers, kept=kept)
    if summary is None:
        return None
    return build_result(kept.ledger, summary, kept.images if return_adv else None, lambda i: dataset[i][0],
                        None if out is None else Path(out))
