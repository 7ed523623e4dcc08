"""What every attack kind shares: the spec base class, per-sample outcomes, targets, restarts (paper Sec. 6.2).

An attack kind is one module of this package holding one ``AttackSpec`` subclass registered with ``@register``.
Its hyper-parameters are its dataclass fields declared with ``setting``: the field is the one home of a
hyper-parameter, and everything else is derived from it: the suite-table keys and how each is read, the
``eval-attack`` options, the columns of summary.csv and of the report's attack CSV, and the settings that decide
which evaluations may share a table. The spec knows how to describe itself for a report, how to build its
torchattacks object and how to run on a batch, keeping each sample's worst case. Targets follow Feature Denoising
(Xie et al.): (label + U{1..C-1}) mod C, drawn by lrrobust from a seeded generator and handed to torchattacks as
labels, so they are recorded and never equal the true class.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from lrrobust.core.modes import eval_mode, frozen
from lrrobust.core.numbers import check_bool, check_int, format_eps, parse_fraction
from lrrobust.errors import UserError

if TYPE_CHECKING:
    import torchattacks

ROLES = ("suite", "check", "training")


@dataclasses.dataclass(frozen=True)
class ValueKind:
    """How a setting is read from a suite table or an option (``read(value, where, max_eps)``, a UserError naming
    ``where`` when it is wrong), and the type its command-line option takes."""

    read: Callable[[Any, str, float], Any]
    option_type: type


def _checkpoint(value: Any, where: str, max_eps: float) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where} must be a checkpoint path, got {value!r}")
    return value


BUDGET = ValueKind(lambda value, where, max_eps: parse_fraction(value, where, maximum=max_eps), str)  # 8/255
COUNT = ValueKind(lambda value, where, max_eps: check_int(value, where, 1), int)
FLAG = ValueKind(lambda value, where, max_eps: check_bool(value, where), bool)
CHECKPOINT = ValueKind(_checkpoint, str)


def setting(kind: ValueKind, help: str, default: Any = dataclasses.MISSING, *, shown: bool = False) -> Any:
    """A hyper-parameter of an attack kind: a dataclass field that a suite table and ``eval-attack`` may set.

    Args:
        kind: how its value is read (``BUDGET``, ``COUNT``, ``FLAG``, ``CHECKPOINT``).
        help: what it is, for the option's help.
        default: its value when a table leaves it out (none: the table must give it).
        shown: a column of the report's attack tables (every setting is a column of the CSVs).
    """
    return dataclasses.field(default=default, metadata={"value_kind": kind, "help": help, "shown": shown})


@dataclasses.dataclass
class AttackOutcome:
    """Per-sample result of one attack on one batch (the worst case over its restarts or components).

    ``found_at`` is the stage (restart, or AutoAttack component) whose example was kept as successful, -1 where
    none succeeded; ``stages`` of the spec names them.
    """

    adv_images: torch.Tensor
    adv_pred: torch.Tensor
    success: torch.Tensor  # targeted: prediction == target; untargeted: prediction != label
    targets: torch.Tensor | None
    found_at: torch.Tensor


def random_targets(labels: torch.Tensor, num_classes: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random wrong class per label: (label + U{1..C-1}) mod C. ``generator`` lives on the CPU."""
    if num_classes < 2:
        raise ValueError(f"a targeted attack needs at least 2 classes, got {num_classes}")
    offsets = torch.randint(1, num_classes, tuple(labels.shape), generator=generator)
    return (labels + offsets.to(labels.device)) % num_classes


def option_name(key: str) -> str:
    """A setting's command-line option: ``step_size`` -> ``--step-size``."""
    return "--" + key.replace("_", "-")


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Top-1 class of each image."""
    return model(images).argmax(dim=1)


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack with every hyper-parameter resolved; subclasses add their own fields (all with defaults).

    ``role`` is "suite" for a suite's own attacks, "check" for those the gradient-masking checks add and
    "training" for adversarial training's attack. ``source`` names a second checkpoint to craft the examples on
    (a transfer, black-box attack); None is white-box.
    """

    name: str
    eps: float = setting(BUDGET, "Budget on [0, 1] pixels, e.g. 8/255 (an L2 radius for L2 kinds).")
    targeted: bool = setting(FLAG, "Targeted at a random wrong class, else untargeted.", False, shown=True)
    role: str = "suite"

    kind: ClassVar[str] = ""
    norm: ClassVar[str] = "linf"  # the threat model: "linf" or "l2"; a worst case never mixes the two
    max_eps: ClassVar[float] = 1.0  # L-inf budgets lie in (0, 1] on [0, 1] pixels
    example: ClassVar[str] = ""  # a valid table, for error messages

    # ---- reading

    @classmethod
    def setting_fields(cls) -> list[dataclasses.Field]:
        """The hyper-parameters a suite table and the command line may set (``setting`` fields), in order."""
        return [f for f in dataclasses.fields(cls) if "value_kind" in f.metadata]

    @classmethod
    def table_keys(cls) -> frozenset[str]:
        """The suite-table keys of this kind, besides name and kind."""
        return frozenset(f.name for f in cls.setting_fields())

    @classmethod
    def from_table(cls, name: str, table: dict[str, Any], role: str = "suite") -> AttackSpec:
        """The spec of a suite's ``[[attack]]`` table (name and kind taken out, every key one of ``table_keys``):
        each setting read by its value kind, its default where left out; a UserError naming the key when invalid."""
        where = f"attack {name!r}"
        values = {}
        for f in cls.setting_fields():
            if f.name in table:
                values[f.name] = f.metadata["value_kind"].read(table[f.name], f"{where}: {f.name}", cls.max_eps)
            elif f.default is dataclasses.MISSING:
                raise UserError(f"{where} needs {f.name} (e.g. {cls.example})")
        return cls(name=name, role=role, **values)

    @classmethod
    def from_options(cls, name: str, options: dict[str, Any]) -> AttackSpec:
        """The spec of CLI options (``--eps``, ``--steps`` ...; None where not given): the same rules as a table,
        messages naming the option."""
        given = {k: v for k, v in options.items() if v is not None}
        keys = cls.table_keys()
        extra = sorted(set(given) - keys)
        if extra:
            flags = ", ".join(option_name(k) for k in extra)
            raise UserError(f"{flags} do{'es' if len(extra) == 1 else ''} not apply to {cls.kind}; "
                            f"{cls.kind} takes {', '.join(option_name(k) for k in sorted(keys))}")
        for f in cls.setting_fields():
            if f.name in given:
                given[f.name] = f.metadata["value_kind"].read(given[f.name], option_name(f.name), cls.max_eps)
        return cls.from_table(name, given)

    @classmethod
    def from_settings(cls, name: str, settings: dict[str, Any]) -> AttackSpec:
        """The spec back from its ``settings()`` (a summary row, a checkpoint's training attack)."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"name"}
        return cls(name=name, **{k: v for k, v in settings.items() if k in fields})

    def eps_text(self) -> str:
        """The budget as reports write it (``format_eps``)."""
        return format_eps(self.eps, self.norm)

    # ---- describing

    def settings(self) -> dict[str, Any]:
        """Every hyper-parameter, for summaries and reports (eps also in 1/255 units)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "name"}
        return {"kind": self.kind, "norm": self.norm, **fields, "eps_255": round(self.eps * 255, 4)}

    def identity(self) -> str:
        """The full settings as canonical text: two attacks with the same identity compute the same thing."""
        settings = {k: v for k, v in self.settings().items() if k not in ("role", "eps_255")}
        return json.dumps(settings, sort_keys=True)

    def key(self) -> str:
        """A short hash of ``identity``: what an evaluation's state is keyed by (not the name)."""
        return hashlib.sha256(self.identity().encode()).hexdigest()[:16]

    def seed_key(self) -> str:
        """What the random start of restart r depends on: the settings less restarts and source path.

        Two attacks that differ only in their number of restarts share their first restarts exactly; a transfer
        attack adds its source's content hash to the seed (the runner does), never its path.
        """
        settings = {k: v for k, v in self.settings().items() if k not in ("role", "eps_255", "restarts", "source")}
        return json.dumps(settings, sort_keys=True)

    def describe(self) -> str:
        """One line for a report: the kind and every hyper-parameter that matters."""
        raise NotImplementedError

    def stages(self) -> list[str]:
        """Names of the stages that ``AttackOutcome.found_at`` counts (restarts by default)."""
        return [f"restart {r + 1}" for r in range(getattr(self, "restarts", 1))]

    # ---- running

    def build(self, model: nn.Module, num_classes: int, seed: int) -> torchattacks.Attack:
        """The torchattacks attack against ``model``; targeted attacks take their targets as labels."""
        raise NotImplementedError

    def run(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        num_classes: int,
        targets: torch.Tensor | None = None,
        seed_for: Callable[[int], int] = lambda stage: stage,
        source: nn.Module | None = None,
        first: AttackOutcome | None = None,
        on_stage: Callable[[int], None] | None = None,
    ) -> AttackOutcome:
        """Attack a batch with ``restarts`` restarts, keeping each sample's worst case for the defender.

        Untargeted, a restart counts when it misclassifies; targeted, only when it hits the target (torchattacks'
        MultiAttack rule, prediction != label, is untargeted). ``seed_for(r)`` seeds the global RNG of restart r
        (torchattacks' random start draws from it). ``source`` crafts the examples (a transfer attack);
        predictions are ``model``'s. ``first`` is restart 0 when already computed (the same attack with one
        restart and the same seeds). Modes and ``requires_grad`` of both models are restored afterwards.
        """
        if self.targeted and targets is None:
            raise ValueError("a targeted attack needs targets")
        if targets is not None and bool((targets == labels).any()):
            raise ValueError("a target equals the true label")
        crafter = source if source is not None else model
        goal = targets if self.targeted else labels
        restarts = getattr(self, "restarts", 1)
        with eval_mode(model, crafter), frozen(model, crafter):
            if first is not None:
                kept, kept_pred = first.adv_images.clone(), first.adv_pred.clone()
                success, found_at = first.success.clone(), first.found_at.clone()
                if on_stage is not None:
                    on_stage(0)
            else:
                kept, kept_pred = images.clone(), torch.empty_like(labels)
                success = torch.zeros_like(labels, dtype=torch.bool)
                found_at = torch.full_like(labels, -1)
            for restart in range(0 if first is None else 1, restarts):
                todo = torch.arange(len(labels), device=labels.device) if restart == 0 else (~success).nonzero()[:, 0]
                if len(todo) == 0:
                    break
                seed = seed_for(restart)
                torch.manual_seed(seed)
                adv = self.build(crafter, num_classes, seed)(images[todo], goal[todo]).detach()
                pred = predict(model, adv)
                hit = pred == goal[todo] if self.targeted else pred != labels[todo]
                keep = todo if restart == 0 else todo[hit]
                new = slice(None) if restart == 0 else hit
                kept[keep] = adv[new]
                kept_pred[keep] = pred[new]
                success[keep] = hit[new]
                found_at[todo[hit]] = restart
                if on_stage is not None:
                    on_stage(restart)
        return AttackOutcome(kept, kept_pred, success, targets if self.targeted else None, found_at)
