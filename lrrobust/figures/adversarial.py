"""An evaluation's adversarial image, regenerated from its records (paper Sec. 6.2).

An evaluation directory stores per-image records (samples.csv: prediction, target, success), not the images
(docs/evaluation.md). Every random choice of ``eval-attack`` is seeded from the suite seed, the batch and the
attack's settings (``lrrobust.evaluation.loop``), so the adversarial image of image N is computed again exactly:
the same images in the same batch, the same target, the same per-stage seeds, the same attack code. The batch is
attacked whole (a random start draws noise for the whole batch), and its predictions are compared with the
recorded ones, which says whether the regeneration reproduced the evaluation (a run on another device, GPU or
CPU, may differ in the last bits).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from lrrobust.attacks import is_pgd, spec_class
from lrrobust.errors import UserError
from lrrobust.evaluation.ledger import Ledger, Outcome
from lrrobust.evaluation.loop import sample_indices, stage_seeds, target_offsets
from lrrobust.evaluation.summary import Summary, indices_digest, read_ledger, read_summary
from lrrobust.evaluation.target import EvalTarget


@dataclasses.dataclass(frozen=True)
class AdversarialExample:
    """Image ``index`` of an evaluation, clean and attacked, with what the evaluation recorded about it."""

    index: int
    label: int
    clean: torch.Tensor  # (C, H, W) in [0, 1]
    adversarial: torch.Tensor  # (C, H, W) in [0, 1]
    attack: str
    description: str  # the attack's settings in words
    target: int | None
    clean_pred: int
    adv_pred: int  # the regenerated image's prediction
    recorded_pred: int  # samples.csv's adv_pred
    reproduced: tuple[int, int]  # (predictions equal to the records, images) over the regenerated batch


def read_evaluation(eval_dir: str | os.PathLike, target: EvalTarget) -> tuple[Summary, Ledger]:
    """The evaluation's summary and records; a UserError unless it attacked ``target``'s checkpoint."""
    eval_dir = Path(eval_dir)
    if not (eval_dir / "summary.json").is_file():
        raise UserError(f"--eval {eval_dir} holds no summary.json; pass an evaluation directory written by "
                        "lrrobust eval-attack (e.g. RUN/eval-digits)")
    summary = read_summary(eval_dir)
    if summary.model.get("sha256") != target.sha256:
        raise UserError(f"--eval {eval_dir} attacked {summary.model.get('checkpoint')}, not "
                        f"{target.checkpoint.path}; pass the checkpoint it attacked or another evaluation")
    return summary, read_ledger(eval_dir, summary.raw)


def choose_attack(summary: Summary, ledger: Ledger, index: int, name: str | None) -> Outcome:
    """The attack called ``name``; by default the first white-box one that broke image ``index``, preferring
    the suite's own attacks and PGD (the cheapest to run again), else the first white-box attack."""
    settings = {a["attack"]: a for a in summary.attacks}
    white_box = [o for o in ledger.outcomes if not settings[o.name].get("source")]
    if name is not None:
        outcome = next((o for o in ledger.outcomes if o.name == name), None)
        if outcome is None:
            raise UserError(f"--attack {name!r} is not an attack of {summary.path}; choose one of "
                            f"{', '.join(o.name for o in white_box)}")
        if outcome not in white_box:
            raise UserError(f"--attack {name!r} is a transfer attack (crafted on {settings[name]['source']}); "
                            f"choose a white-box attack: {', '.join(o.name for o in white_box)}")
        return outcome
    if not white_box:
        raise UserError(f"{summary.path} holds transfer attacks only; evaluate the checkpoint with a white-box attack")
    row = ledger.indices.index(index)

    def rank(position: int) -> tuple[bool, bool, bool, int]:
        o = white_box[position]
        return (not o.success[row], settings[o.name]["role"] != "suite", not is_pgd(settings[o.name]), position)

    return white_box[min(range(len(white_box)), key=rank)]


def check_attacked(summary: Summary, ledger: Ledger, index: int) -> None:
    """A UserError unless the evaluation attacked image ``index``."""
    if index not in ledger.indices:
        raise UserError(f"--image {index} was not attacked in {summary.path}; pick an index of its samples.csv "
                        f"({len(ledger.indices)} images from {min(ledger.indices)} to {max(ledger.indices)})")


def regenerate(summary: Summary, ledger: Ledger, target: EvalTarget, index: int, attack: str | None = None,
               device: torch.device | str = "cpu", root: str | None = None) -> AdversarialExample:
    """Image ``index`` of an evaluation (``read_evaluation``) and its adversarial image under ``attack``, made
    again on ``device``; the data from ``root``, by default where the evaluation read it."""
    from lrrobust.data import load_dataset

    check_attacked(summary, ledger, index)
    outcome = choose_attack(summary, ledger, index, attack)
    row = next(a for a in summary.attacks if a["attack"] == outcome.name)
    spec = spec_class(row["kind"], f"attack {outcome.name!r}").from_settings(outcome.name, row)
    if spec.key() != row["key"]:
        raise UserError(f"attack {outcome.name!r} of {summary.path} cannot be rebuilt by this lrrobust (its settings "
                        "hash differs); evaluate the checkpoint again with this version")
    suite = summary.raw["suite_config"]
    data = load_dataset(summary.dataset, summary.split, root or summary.raw.get("dataset_root"))
    indices = sample_indices(len(data), suite.get("limit"), summary.seed)
    if indices_digest(indices) != summary.indices_sha256:
        raise UserError(f"the {summary.dataset} {summary.split} split here is not the one {summary.path} attacked; "
                        "pass --root with the data it attacked")
    batch_size = int(suite["batch_size"])
    b = indices.index(index) // batch_size
    batch = indices[b * batch_size:(b + 1) * batch_size]
    images = torch.stack([data[i][0] for i in batch]).to(device)
    labels = torch.tensor([int(data[i][1]) for i in batch], device=device)
    classes = target.num_classes
    targets = (labels + target_offsets(len(data), classes, summary.seed)[batch].to(device)) % classes
    model = target.model.to(device)
    result = spec.run(model, images, labels, num_classes=classes, targets=targets if spec.targeted else None,
                      seed_for=stage_seeds(summary.seed, b, spec, None))
    rows = [ledger.indices.index(i) for i in batch]
    recorded = torch.tensor([outcome.adv_pred[r] for r in rows])
    j = batch.index(index)
    return AdversarialExample(
        index=index, label=int(labels[j]), clean=images[j].cpu(), adversarial=result.adv_images[j].cpu(),
        attack=outcome.name, description=spec.describe(), target=int(targets[j]) if spec.targeted else None,
        clean_pred=ledger.clean_pred[rows[j]], adv_pred=int(result.adv_pred[j]), recorded_pred=int(recorded[j]),
        reproduced=(int((result.adv_pred.cpu() == recorded).sum()), len(batch)),
    )
