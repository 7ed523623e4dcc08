"""The training loop: regular and PGD adversarial training (paper appendix and Sec. 6.2), resumable.

``train(config)`` runs one training run into a run directory::

    RUN/config.json     the resolved configuration
    RUN/manifest.json   versions, git commit, device, seed, command line, world size (and each resume)
    RUN/metrics.jsonl   one line per epoch: loss, clean and adversarial training accuracy, validation accuracy
                        (clean, and under PGD in adversarial runs), images/s, lr
    RUN/last.pt         the checkpoint after the last completed epoch (written atomically)
    RUN/best.pt         the checkpoint with the highest validation accuracy: clean for regular runs, under a short
                        untargeted PGD for adversarial runs; with ``precise_bn``, its batch norm statistics are those
                        recomputed before that validation (``recompute_bn_statistics``)

The JSON files are written and read by ``lrrobust.training.run_files``. Training reads the ``train`` and ``val``
splits only: the ``test`` split is evaluation's.

A run killed at any moment resumes from ``last.pt`` with ``resume=True``; on CPU the resumed run ends with the
same weights as one that never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from lrrobust.attacks.pgd import PGD
from lrrobust.checkpoint import read_resumable, save_checkpoint
from lrrobust.core.lock import contents, locked_directory, remove_stale_temporaries
from lrrobust.core.seeding import derive_seed, seed_everything
from lrrobust.core.trainings import training_kind
from lrrobust.data import DatasetInfo, dataset_info, load_dataset
from lrrobust.errors import EnvironmentFailure, UserError
from lrrobust.io import atomic_path
from lrrobust.training import distributed as D
from lrrobust.training import run_files
from lrrobust.training.adversarial import adversarial_examples, perturb, training_attack, validation_attack
from lrrobust.training.config import TrainConfig, merge_for_resume, resolve_config
from lrrobust.training.manifest import build_manifest
from lrrobust.training.progress import EpochProgress
from lrrobust.training.run_files import EpochRecord
from lrrobust.training.state import capture_rng, restore_rng


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stopped and its last good checkpoint is kept."""


def train(config: TrainConfig, progress: bool | None = None) -> Path:
    """Train as ``config`` says and return the run directory. ``progress``: True rich bars, False nothing, None
    (default) bars on a terminal and one plain line per epoch elsewhere (a batch job's log).

    Rank 0 holds the run directory's lock (``lrrobust.core.lock``) from before its first look inside to the end.
    """
    ctx = D.init_distributed(config.device)
    try:
        run = Path(resolve_config(config, ctx.world_size).out)
        with locked_directory(run) if ctx.is_main else contextlib.nullcontext():
            return _train(config, ctx, progress)
    finally:
        D.cleanup(ctx)


def build_model(cfg: TrainConfig, info: DatasetInfo, num_classes: int) -> nn.Module:
    """The zoo model for this run: the dataset's channels, mean, std and stem, then the user's overrides."""
    from lrrobust.models import create_model

    kwargs = {"in_chans": info.in_chans, "mean": list(info.mean), "std": list(info.std), "stem": info.stem,
              **cfg.model_kwargs}
    return create_model(cfg.model, num_classes, **kwargs)


def lr_factor(step: int, steps_per_epoch: int, warmup_epochs: float, milestones: list[int]) -> float:
    """Linear warm-up over ``warmup_epochs``, then x0.1 at each milestone epoch (paper appendix)."""
    warmup_steps = warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    epoch = step / steps_per_epoch
    return 0.1 ** sum(epoch >= m for m in milestones)


def autocast(device: torch.device, amp: bool):
    """bfloat16 autocast on GPU when ``amp``; nothing otherwise (bfloat16 on CPU is slower, not faster)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def train_step(
    model: nn.Module,
    attack_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    attack: PGD | None,
    num_classes: int,
    generator: torch.Generator | None,
    amp: bool = False,
    ctx: D.DistContext | None = None,
    grad_clip: float = 0.0,
) -> dict[str, torch.Tensor]:
    """One SGD step, on PGD images when ``attack`` is given (then the attack runs on ``attack_model`` in eval mode).

    ``model`` may be the DDP wrapper of ``attack_model``. Returns the loss and the correct counts as tensors.
    Raises TrainingDiverged (before updating the weights) when the loss is not finite on any process.
    """
    device = images.device
    out: dict[str, torch.Tensor] = {}
    inputs = images
    if attack is not None:
        attack_model.eval()  # BatchNorm frozen for the clean pass and the attack (torchattacks keeps eval too)
        with torch.no_grad(), autocast(device, amp):
            out["clean_correct"] = (attack_model(images).argmax(1) == labels).sum()
        with autocast(device, amp):
            inputs, _ = adversarial_examples(attack_model, images, labels, attack, num_classes, generator)
    model.train()
    with autocast(device, amp):
        logits = model(inputs)
        loss = F.cross_entropy(logits.float(), labels)
    bad = not bool(torch.isfinite(loss))
    if ctx is not None:
        bad = D.any_true(ctx, bad)
    if bad:
        raise TrainingDiverged(f"loss became {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    correct = (logits.argmax(1) == labels).sum()
    out["loss"] = loss.detach()
    if attack is not None:
        out["adv_correct"] = correct
    else:
        out["clean_correct"] = correct
    return out


def evaluate_validation(
    model: nn.Module, loader: DataLoader, ctx: D.DistContext, cfg: TrainConfig, attack: PGD | None,
    epoch: int,
) -> tuple[float, float | None]:
    """Clean accuracy and, when ``attack`` is given, accuracy under it, over the loader's shards summed over processes.

    The model runs in eval mode (its mode is restored after). The attack's random starts come from a generator
    seeded with (seed, epoch, rank) inside a fork of the RNG streams, so training's streams are untouched and a
    resumed run draws the same starts.
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # clean correct, robust correct, images
    devices = [ctx.device] if ctx.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(derive_seed(cfg.seed, epoch, ctx.rank, 5))
            for images, labels in loader:
                images, labels = _to_device(images, labels, ctx.device, cfg.channels_last)
                with torch.no_grad(), autocast(ctx.device, cfg.amp):
                    totals[0] += (model(images).argmax(1) == labels).sum()
                if attack is not None:
                    totals[1] += _robust_correct(model, images, labels, attack, ctx.device, cfg.amp)
                totals[2] += len(labels)
    finally:
        model.train(was_training)
    clean, robust, n = (float(v) for v in D.all_reduce_sum(ctx, totals))
    return clean / n, None if attack is None else robust / n


def precise_bn_loader(cfg: TrainConfig, ctx: D.DistContext, train_set: Dataset) -> DataLoader | None:
    """The training images ``recompute_bn_statistics`` uses: ``cfg.precise_bn`` batches of the per-rank batch size,
    drawn once from the seed, the same on every rank. A random draw, not the first images: a training set may be
    ordered by class. None when precise_bn is 0."""
    if not cfg.precise_bn:
        return None
    per_rank = cfg.batch_size // ctx.world_size
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(derive_seed(cfg.seed, 6)))
    images = Subset(train_set, order[:cfg.precise_bn * per_rank].tolist())
    return DataLoader(images, batch_size=per_rank, shuffle=False, drop_last=True, num_workers=cfg.num_workers,
                      pin_memory=ctx.device.type == "cuda")


def recompute_bn_statistics(model: nn.Module, loader: DataLoader, cfg: TrainConfig, device: torch.device,
                            epoch: int, num_classes: int) -> None:
    """Replace the running statistics of every batch norm layer of ``model`` by their average over the inputs the
    network trains on, made from ``loader``'s batches ("PreciseBN": Wu & Johnson 2021, "Rethinking 'Batch' in
    BatchNorm"; ``torch.optim.swa_utils.update_bn``): the clean images in a regular run, the training attack's images
    of them in an adversarial run (``cfg.adversarial``).

    Why: the running statistics are an exponential average over past batches, and at a high lr they lag the
    weights, so eval-mode validation swings while training accuracy rises smoothly. An adversarial run trains on
    the attack's images only, so its statistics are averages over those; clean images have other batch statistics
    (Xie et al. 2020, "Adversarial Examples Improve Image Recognition"), and recomputing over them would change
    the model that training made.

    Every batch's attack runs as in ``train_step`` (eval mode, on the running statistics training left) before the
    statistics are reset: ``update_bn`` resets them first, so an attack run while it accumulates would see partial
    statistics (and no input gradient: it runs under no_grad). The N clean batches are read first (on the CPU), the N attacked ones kept on ``device``.

    The pass runs in a fork of the RNG streams seeded from (seed, epoch) (the attack's random starts reseeded from
    (seed, epoch, 9), its targets from a generator seeded from (seed, epoch, 8)): augmentation, random starts and
    targets draw the same on every rank and take nothing from training's streams, so a regular run trains exactly
    as without it (train mode normalises with batch statistics), and a resumed run recomputes exactly what the
    uninterrupted one did.

    Args:
        model: the eager (uncompiled) model; its mode is restored after.
        loader: the fixed clean batches (``precise_bn_loader``).
        cfg: the resolved run config; ``cfg.adversarial`` selects the attacked images.
        device: where the model lives.
        epoch: the 0-based epoch just trained, for the seeds.
        num_classes: the dataset's classes, for a targeted attack's targets.
    """
    attack = training_attack(cfg)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(cfg.seed, epoch, 7))
        if attack is None:
            inputs = (_to_device(images, labels, device, cfg.channels_last)[0] for images, labels in loader)
        else:
            inputs = _attacked_batches(model, list(loader), cfg, device, epoch, attack, num_classes)
        with autocast(device, cfg.amp):
            update_bn(inputs, model)


def _attacked_batches(model: nn.Module, batches: list, cfg: TrainConfig, device: torch.device, epoch: int,
                      attack: PGD, num_classes: int) -> list[torch.Tensor]:
    """The training attack's images of each clean (images, labels) batch, made as ``train_step`` makes them; random
    starts from (seed, epoch, 9) (reseeded here, after the loader has read and augmented every batch), targets from
    (seed, epoch, 8)."""
    torch.manual_seed(derive_seed(cfg.seed, epoch, 9))
    targets = torch.Generator().manual_seed(derive_seed(cfg.seed, epoch, 8))
    attacked = []
    for images, labels in batches:
        images, labels = _to_device(images, labels, device, cfg.channels_last)
        with autocast(device, cfg.amp):
            attacked.append(adversarial_examples(model, images, labels, attack, num_classes, targets)[0])
    return attacked


def _robust_correct(model, images, labels, attack, device, amp) -> torch.Tensor:
    """Correct predictions on the validation attack's images (input gradients only)."""
    with autocast(device, amp):
        adv = perturb(model, images, labels, attack)
    with torch.no_grad(), autocast(device, amp):
        return (model(adv).argmax(1) == labels).sum()


def _to_device(images, labels, device, channels_last):
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)


def _prepare_config(config: TrainConfig, world_size: int) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The resolved config, and the stored run's manifest when resuming. Checks the run directory."""
    cfg = resolve_config(config, world_size)
    run = Path(cfg.out)
    if run.exists() and not run.is_dir():
        raise EnvironmentFailure(run, "it is a file, not a directory; give a directory for the run",
                                 action="cannot write in", context="--out")
    if not (run.is_dir() and contents(run)):
        return cfg, None
    if not config.resume:
        raise UserError(f"run directory {run} exists; pass --resume to continue it, or choose another --out")
    if not (run / run_files.CONFIG).is_file():
        raise UserError(f"{run} exists but holds no {run_files.CONFIG}: not an lrrobust run; choose another --out")
    stored = run_files.read_run_config(run)
    if stored.validation is None:
        raise UserError(f"{run} was trained before the validation split (its best.pt was chosen on the test set) "
                        "and cannot be resumed; start a new run with another --out")
    merged = merge_for_resume(stored, dataclasses.replace(config, out=str(run)))
    cfg = resolve_config(merged, world_size)
    manifest = run_files.read_manifest(run) if (run / run_files.MANIFEST).is_file() else None
    return cfg, manifest


def _repair_best(run: Path, is_main: bool) -> None:
    """Check the run directory's invariant before training on (docs/training.md): best.pt is the epoch last.pt
    names as best. Rank 0 repairs the one break a kill can leave (best.pt not yet copied from last.pt)."""
    if is_main:
        run_files.repair_best(run)


def _loaders(cfg, ctx, train_set: Dataset, val_set: Dataset):
    per_rank = cfg.batch_size // ctx.world_size
    sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    generator = torch.Generator()
    pin = ctx.device.type == "cuda"
    train_loader = DataLoader(train_set, batch_size=per_rank, sampler=sampler, num_workers=cfg.num_workers,
                              drop_last=True, generator=generator, pin_memory=pin)
    shard = Subset(val_set, range(ctx.rank, len(val_set), ctx.world_size))
    val_loader = DataLoader(shard, batch_size=per_rank, shuffle=False, num_workers=cfg.num_workers, pin_memory=pin)
    if len(train_loader) == 0:
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the training set ({len(train_set)} images)")
    return train_loader, sampler, generator, val_loader


def _train(config: TrainConfig, ctx: D.DistContext, progress: bool | None) -> Path:
    cfg, old_manifest = _prepare_config(config, ctx.world_size)
    if cfg.resume:
        _repair_best(Path(cfg.out), ctx.is_main)
    D.barrier(ctx)  # every process has checked the run directory before rank 0 writes into it
    run = Path(cfg.out)
    last_path, best_path = run / "last.pt", run / "best.pt"
    info = dataset_info(cfg.dataset, cfg.root)
    if cfg.download and ctx.is_main:  # rank 0 downloads, the others wait and read
        load_dataset(cfg.dataset, "train", cfg.root, download=True)
    D.barrier(ctx)
    train_set = load_dataset(cfg.dataset, "train", cfg.root)  # never the test split: that is evaluation's
    val_set = load_dataset(cfg.dataset, "val", cfg.root)
    cfg.validation = {**cfg.validation, "size": len(val_set)}
    num_classes = info.num_classes or len(train_set.classes)
    attack = training_attack(cfg)
    val_attack = validation_attack(cfg)
    best_metric = cfg.validation["metric"]
    if cfg.sync_bn and ctx.enabled and ctx.device.type != "cuda":
        raise UserError("--sync-bn needs CUDA GPUs (SyncBatchNorm has no CPU implementation); drop it on CPU")

    seed_everything(cfg.seed)  # the same initial weights on every process
    raw = build_model(cfg, info, num_classes)
    ckpt = read_resumable(last_path, map_location="cpu") if cfg.resume and last_path.is_file() else None
    if ckpt is not None:
        raw.load_state_dict(ckpt["model_state"])
    if cfg.sync_bn and ctx.enabled:
        raw = nn.SyncBatchNorm.convert_sync_batchnorm(raw)
    raw.to(ctx.device)
    if cfg.channels_last:
        raw.to(memory_format=torch.channels_last)
    attack_model = torch.compile(raw) if cfg.compile else raw
    model = attack_model
    if ctx.enabled:
        model = DistributedDataParallel(attack_model, device_ids=[ctx.device.index] if ctx.device.type == "cuda"
                                        else None)

    train_loader, sampler, loader_gen, val_loader = _loaders(cfg, ctx, train_set, val_set)
    bn_loader = precise_bn_loader(cfg, ctx, train_set)
    steps_per_epoch = len(train_loader)
    optimizer = torch.optim.SGD(raw.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
        lr_factor, steps_per_epoch=steps_per_epoch, warmup_epochs=cfg.warmup_epochs, milestones=cfg.milestones))
    target_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, ctx.rank, 1))
    seed_everything(derive_seed(cfg.seed, ctx.rank, 2))  # random starts and augmentation differ between ranks

    start_epoch, best_acc, best_epoch, history = 0, -1.0, 0, []
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, best_acc, best_epoch = ckpt["epoch"], ckpt["best_acc"], ckpt["best_epoch"]
        history = [EpochRecord.from_dict(r) for r in ckpt["history"]]
        rngs = ckpt["rng"]
        if len(rngs) == ctx.world_size:
            restore_rng(rngs[ctx.rank], ctx.device, target_gen)
        else:  # another world size: the RNG streams cannot continue, reseed them from the epoch
            seed_everything(derive_seed(cfg.seed, ctx.rank, 3, start_epoch))
            target_gen.manual_seed(derive_seed(cfg.seed, ctx.rank, 4, start_epoch))

    manifest = build_manifest(ctx.device, cfg.seed, ctx.world_size)
    if old_manifest is not None:
        resumes = old_manifest.pop("resumes", [])
        resumes.append({k: manifest[k] for k in ("command_line", "started", "device", "world_size", "git_commit")})
        manifest = {**old_manifest, "resumes": resumes}
    if ctx.is_main:
        remove_stale_temporaries(run)  # of killed writes: never complete, never read (the lock keeps others out)
        run_files.write_run_config(run, cfg)
        run_files.write_manifest(run, manifest)
        run_files.write_metrics(run, history)
    D.barrier(ctx)

    training = training_kind(attack is not None)
    # rank 0 only: bars in a terminal, one line per epoch in a log (progress None), or as --progress says
    bar = EpochProgress(enabled=progress if ctx.is_main else False, adversarial=attack is not None,
                        epochs_left=cfg.epochs - start_epoch)
    with bar:
        for epoch in range(start_epoch, cfg.epochs):
            sampler.set_epoch(epoch)
            loader_gen.manual_seed(derive_seed(cfg.seed, epoch, ctx.rank))
            try:
                sums, seconds, lr = _run_epoch(model, attack_model, optimizer, scheduler, train_loader, cfg, ctx,
                                               attack, num_classes, target_gen, bar, epoch)
            except TrainingDiverged as e:
                kept = f"{last_path} keeps epoch {start_epoch}" if last_path.is_file() else "no checkpoint was written"
                raise TrainingDiverged(f"{e} in epoch {epoch + 1}; run stopped, {kept} (the last good weights); "
                                       "lower --lr or check the data") from None
            if bn_loader is not None:  # on the eager model: the compiled one would recompile for update_bn
                recompute_bn_statistics(raw, bn_loader, cfg, ctx.device, epoch, num_classes)
            val_acc, val_robust_acc = evaluate_validation(attack_model, val_loader, ctx, cfg, val_attack, epoch)
            record = _epoch_record(epoch, sums, seconds, val_acc, val_robust_acc, lr, attack is not None)
            history.append(record)
            bar.epoch_done(record, cfg.epochs)
            score = getattr(record, best_metric)
            improved = score > best_acc
            if improved:
                best_acc, best_epoch = score, epoch + 1
            rngs = D.gather_objects(ctx, capture_rng(ctx.device, target_gen))
            if ctx.is_main:
                state = {
                    "model_spec": raw.spec, "model_state": raw.state_dict(), "dataset": cfg.dataset,
                    "num_classes": num_classes, "training": training,
                    "attack": attack.settings() if attack is not None else None, "epoch": epoch + 1,
                    "config": cfg.to_dict(), "manifest": manifest, "metrics": record.to_dict(),
                    "history": [r.to_dict() for r in history], "best_acc": best_acc, "best_epoch": best_epoch,
                    "best_metric": best_metric, "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": None, "rng": rngs,
                }
                save_checkpoint(last_path, state)  # the order keeps every crash point resumable
                if improved:
                    with atomic_path(best_path) as tmp:
                        shutil.copyfile(last_path, tmp)
                run_files.append_metrics(run, record)
            start_epoch = epoch + 1
            D.barrier(ctx)
    return run


def _run_epoch(model, attack_model, optimizer, scheduler, loader, cfg, ctx, attack, num_classes, target_gen, bar,
               epoch):
    sums = torch.zeros(5, dtype=torch.float64, device=ctx.device)  # loss*n, n, clean correct, adv correct, steps
    bar.start_epoch(epoch, cfg.epochs, len(loader))
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    start = time.perf_counter()
    lr = optimizer.param_groups[0]["lr"]
    for images, labels in loader:
        images, labels = _to_device(images, labels, ctx.device, cfg.channels_last)
        lr = optimizer.param_groups[0]["lr"]  # the lr of this step
        out = train_step(model, attack_model, optimizer, images, labels, attack=attack, num_classes=num_classes,
                         generator=target_gen, amp=cfg.amp, ctx=ctx, grad_clip=cfg.grad_clip)
        scheduler.step()
        n = len(labels)
        sums[0] += out["loss"] * n
        sums[1] += n
        sums[2] += out["clean_correct"]
        sums[3] += out.get("adv_correct", 0)
        sums[4] += 1
        if bar.mode == "bar":
            bar.step(float(out["loss"]), float(out.get("adv_correct", out["clean_correct"])) / n, n * ctx.world_size)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    seconds = time.perf_counter() - start
    return D.all_reduce_sum(ctx, sums), seconds, lr


def _epoch_record(epoch, sums, seconds, val_acc, val_robust_acc, lr, adversarial) -> EpochRecord:
    loss_sum, n, clean, adv, _ = (float(v) for v in sums)
    if not math.isfinite(loss_sum / n):
        raise TrainingDiverged(f"epoch {epoch + 1} ended with a non-finite mean loss")
    return EpochRecord(
        epoch=epoch + 1, loss=loss_sum / n, train_acc=clean / n, val_acc=val_acc, val_robust_acc=val_robust_acc,
        adv_train_acc=adv / n if adversarial else None, images=int(n), images_per_s=n / seconds,
        lr=lr, seconds=seconds,
    )

