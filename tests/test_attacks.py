"""The attack registry (lrrobust.attacks): invariants of every kind, restarts' per-sample worst case, AutoAttack's
cascade, seeding, suites."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from lrrobust.attacks import KINDS, attack_from_options, attack_from_table, predict
from lrrobust.attacks.autoattack import AutoAttack
from lrrobust.core.seeding import derive_seed
from lrrobust.errors import UserError
from lrrobust.evaluation.loop import target_offsets
from lrrobust.evaluation.suite import load_suite, parse_suite, suites_dir

NUM_CLASSES = 5




def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.1), nn.Flatten(),
        nn.Linear(6 * 8 * 8, NUM_CLASSES),
    )
    with torch.no_grad():
        model[-1].weight.mul_(8)  # logits that depend on the input, so small perturbations change predictions
    return model


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(12, 1, 8, 8, generator=generator)
    images[0] = 0.0  # pixels at the box edges must stay inside [0, 1]
    images[1] = 1.0
    labels = torch.randint(0, NUM_CLASSES, (12,), generator=generator)
    targets = (labels + target_offsets(12, NUM_CLASSES, seed=3)) % NUM_CLASSES
    return images, labels, targets


def make_attack(name, kind, eps, **settings):
    return attack_from_table({"name": name, "kind": kind, "eps": eps, **settings}, 1)


def run_attack(model, spec, images, labels, **kw):
    return spec.run(model, images, labels, **kw)


SPECS = [
    make_attack("pgd", "pgd", "16/255", steps=5),
    make_attack("pgd-t", "pgd", 0.1, targeted=True, step_size="2/255", steps=4, restarts=3),
    make_attack("pgd-fixed", "pgd", 0.3, steps=3, random_start=False, restarts=2),
    make_attack("fgsm", "fgsm", 0.05),
    make_attack("fgsm-t", "fgsm", 0.05, targeted=True),
    make_attack("aa", "autoattack", 0.1, steps=3, n_queries=10),
    make_attack("transfer", "pgd", 0.1, steps=3, source="other"),
    make_attack("pgd-l2", "pgd-l2", 1.5, steps=5),
    make_attack("pgd-l2-t", "pgd-l2", 0.5, targeted=True, steps=4, restarts=2),
    make_attack("aa-l2", "autoattack-l2", 1.0, steps=3, n_queries=10),
]


def distance(adv, images, norm):
    """Per-image distance in the attack's norm."""
    delta = (adv - images).flatten(1)
    return delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_every_attack_keeps_its_invariants(spec, batch):
    images, labels, targets = batch
    model, source = tiny_model(0), tiny_model(1)
    model.train()
    model[1].eval()  # a mixed mode must come back exactly as it was
    before = [m.training for m in model.modules()]
    outcome = run_attack(model, spec, images, labels, num_classes=NUM_CLASSES, targets=targets,
                         seed_for=lambda r: 10 + r, source=source if getattr(spec, "source", None) else None)
    adv = outcome.adv_images
    assert adv.shape == images.shape
    assert float(distance(adv, images, spec.norm).max()) <= spec.eps + 1e-5
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert [m.training for m in model.modules()] == before
    assert all(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())
    assert source.training  # the source model's mode is restored too
    model.eval()
    assert torch.equal(outcome.adv_pred, predict(model, adv))
    assert bool(((outcome.found_at >= 0) <= outcome.success).all())  # a stage is named only for a success
    if spec.targeted:
        assert torch.equal(outcome.targets, targets)
        assert torch.equal(outcome.success, outcome.adv_pred == targets)
    else:
        assert outcome.targets is None
        assert torch.equal(outcome.success, outcome.adv_pred != labels)


def test_attacks_change_predictions(batch):
    """A strong untargeted PGD must actually break a random network: the attack is not a no-op."""
    images, labels, _ = batch
    model = tiny_model(0).eval()
    outcome = run_attack(model, make_attack("p", "pgd", 0.5, steps=10), images, labels, num_classes=NUM_CLASSES)
    assert outcome.success.float().mean() > 0.5


def test_targets_are_never_the_label():
    offsets = target_offsets(5000, NUM_CLASSES, seed=0)
    labels = torch.arange(5000) % NUM_CLASSES
    targets = (labels + offsets) % NUM_CLASSES
    assert not bool((targets == labels).any())
    assert set(offsets.tolist()) == set(range(1, NUM_CLASSES))  # every wrong class is drawn
    assert torch.equal(offsets, target_offsets(5000, NUM_CLASSES, seed=0))
    assert not torch.equal(offsets, target_offsets(5000, NUM_CLASSES, seed=1))


def test_a_target_equal_to_the_label_is_refused(batch):
    images, labels, _ = batch
    with pytest.raises(ValueError):
        run_attack(tiny_model(), make_attack("t", "pgd", 0.1, targeted=True, steps=1), images, labels,
                   num_classes=NUM_CLASSES, targets=labels)


@pytest.mark.parametrize("targeted", [False, True])
def test_restarts_keep_the_first_successful_restart_per_sample(targeted):
    """Restart 0 equals a single run; later restarts replace a sample only when they succeed (targeted: only when
    they hit the target, so a wrong non-target prediction of a later restart is never kept)."""
    model = tiny_model(1).eval()
    images = torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = predict(model, images)  # all correct at first: every success is the attack's
    targets = (labels + target_offsets(24, NUM_CLASSES, seed=3)) % NUM_CLASSES
    # One short step from a random start: where the start lands decides success, so restarts matter.
    one = make_attack("one", "pgd", 0.1, targeted=targeted, step_size=0.005, steps=1)
    many = make_attack("many", "pgd", 0.1, targeted=targeted, step_size=0.005, steps=1, restarts=6)
    kw = {"num_classes": NUM_CLASSES, "targets": targets, "seed_for": lambda r: 100 + r}
    first = run_attack(model, one, images, labels, **kw)
    best = run_attack(model, many, images, labels, **kw)
    assert bool((best.success | ~first.success).all())  # never loses a success
    assert best.success.sum() > first.success.sum()  # and the extra restarts found more
    unchanged = first.success | ~best.success  # succeeded at once, or never: restart 0's example is kept
    assert torch.equal(best.adv_images[unchanged], first.adv_images[unchanged])
    assert torch.equal(best.adv_pred[unchanged], first.adv_pred[unchanged])
    reused = run_attack(model, many, images, labels, first=first, **kw)  # restart 0 given, not recomputed
    for field in ("adv_images", "adv_pred", "success"):
        assert torch.equal(getattr(reused, field), getattr(best, field))
    goal = targets if targeted else labels
    gained = best.success & ~first.success
    if targeted:
        assert torch.equal(best.adv_pred[gained], goal[gained])
    else:
        assert bool((best.adv_pred[gained] != goal[gained]).all())


def test_seeded_attacks_reproduce_exactly(batch):
    images, labels, targets = batch
    model = tiny_model(0).eval()
    spec = make_attack("p", "pgd", 0.1, targeted=True, steps=3, restarts=2)
    kw = {"num_classes": NUM_CLASSES, "targets": targets}
    a = run_attack(model, spec, images, labels, seed_for=lambda r: 5 + r, **kw)
    torch.manual_seed(12345)  # the global RNG state before the call must not matter
    b = run_attack(model, spec, images, labels, seed_for=lambda r: 5 + r, **kw)
    c = run_attack(model, spec, images, labels, seed_for=lambda r: 6 + r, **kw)
    assert torch.equal(a.adv_images, b.adv_images)
    assert not torch.equal(a.adv_images, c.adv_images)


def test_derive_seed_is_stable_across_machines():
    assert derive_seed(0, 3, "pgd", 1) == derive_seed(0, 3, "pgd", 1)
    assert derive_seed(0, 3, "pgd", 1) != derive_seed(0, 3, "pgd", 2)
    assert derive_seed(0, 3, "pgd", 1) == 1418058440008232629  # sha256-based, not Python's salted hash()


def test_autoattack_uses_the_dataset_classes_and_the_original_iterations():
    apgd, apgdt, fab, square = AutoAttack(name="aa", eps=16 / 255).components(tiny_model(), num_classes=1000, seed=0)
    assert [apgd.steps, apgdt.steps, fab.steps] == [100, 100, 100]
    assert apgdt.n_target_classes == 9 and fab.n_target_classes == 9
    assert square.n_queries == 5000
    assert apgd.loss == "ce" and fab.multi_targeted
    small = AutoAttack(name="aa", eps=0.1).components(tiny_model(), num_classes=3, seed=0)
    assert small[1].n_target_classes == 2
    cheaper = make_attack("aa", "autoattack", 0.1, target_classes=3, n_queries=500, steps=20)
    apgd, apgdt, fab, square = cheaper.components(tiny_model(), num_classes=10, seed=0)
    assert (apgdt.n_target_classes, fab.n_target_classes, square.n_queries, apgd.steps) == (3, 3, 500, 20)
    assert "3 target classes" in cheaper.describe()
    with pytest.raises(UserError, match="target_classes must be an integer >= 1"):
        make_attack("aa", "autoattack", 0.1, target_classes=0)


def test_autoattack_runs_its_components_in_cascade(batch):
    """Each component attacks only what is still standing; found_at names the component that broke an image."""
    images, labels, _ = batch
    model = tiny_model(0).eval()
    spec = AutoAttack(name="aa", eps=0.1, steps=3, n_queries=20)
    outcome = spec.run(model, images, labels, num_classes=NUM_CLASSES, seed_for=lambda k: 7 + k)
    clean_right = predict(model, images) == labels
    assert bool((outcome.found_at[~clean_right] == -1).all())  # never attacked: already wrong
    assert bool((outcome.success == (outcome.adv_pred != labels)).all())
    broken = outcome.found_at >= 0
    assert bool((broken == (clean_right & outcome.success)).all())
    assert int(broken.sum()) > 0 and set(outcome.found_at[broken].tolist()) <= set(range(4))
    assert spec.stages() == ["apgd-ce", "apgd-t", "fab-t", "square"]


def test_adding_an_attack_kind_is_one_module():
    """Every module of the package but base and registry registers exactly one kind, found without a list."""
    import pkgutil

    import lrrobust.attacks as package

    modules = {f"lrrobust.attacks.{m.name}" for m in pkgutil.iter_modules(package.__path__)} - {
        "lrrobust.attacks.base", "lrrobust.attacks.registry"}
    assert sorted(cls.__module__ for cls in KINDS.values()) == sorted(modules)
    assert {"pgd", "fgsm", "autoattack", "pgd-l2", "autoattack-l2"} <= set(KINDS)


def test_cli_options_and_suite_tables_read_the_same_spec():
    from_table = make_attack("p", "pgd", "8/255", steps=7, restarts=2, targeted=True)
    from_options = attack_from_options("pgd", "p", {"eps": "8/255", "steps": 7, "restarts": 2, "targeted": True,
                                                    "step_size": None})
    assert from_table == from_options and from_table.key() == from_options.key()
    with pytest.raises(UserError, match="--steps does not apply to fgsm"):
        attack_from_options("fgsm", "f", {"eps": 0.1, "steps": 3})
    with pytest.raises(UserError, match="--eps must"):
        attack_from_options("pgd", "p", {"eps": "2/0"})


def test_the_key_follows_every_setting_but_not_the_name():
    a = make_attack("a", "pgd", 0.1, steps=5)
    assert make_attack("b", "pgd", 0.1, steps=5).key() == a.key()
    assert make_attack("a", "pgd", 0.1, steps=6).key() != a.key()
    assert make_attack("a", "pgd", 0.1, steps=5, restarts=2).key() != a.key()
    assert make_attack("a", "pgd", 0.1, steps=5, restarts=2).seed_key() == a.seed_key()


# ---------------------------------------------------------------- suites


def test_suite_unknown_keys_list_the_valid_ones():
    with pytest.raises(UserError, match="unknown key epz.*valid keys for pgd: .*eps"):
        parse_suite({"attack": [{"name": "a", "kind": "pgd", "epz": 0.1}]})
    with pytest.raises(UserError, match="unknown key bach_size.*valid keys: .*batch_size"):
        parse_suite({"bach_size": 3, "attack": [{"name": "a", "eps": 0.1}]})
    with pytest.raises(UserError, match="unknown key step.*valid keys"):
        parse_suite({"checks": {"step": [1, 2]}, "attack": [{"name": "a", "eps": 0.1}]})
    with pytest.raises(UserError, match="step_size does not apply to fgsm"):
        parse_suite({"attack": [{"name": "a", "kind": "fgsm", "eps": 0.1, "step_size": 0.01}]})


@pytest.mark.parametrize("eps", [0, -0.1, 1.5, "2/1", "abc", True])
def test_suite_eps_outside_the_unit_interval_is_refused(eps):
    with pytest.raises(UserError, match="eps"):
        parse_suite({"attack": [{"name": "a", "eps": eps}]})


def test_suite_resolves_fractions_and_defaults():
    suite = parse_suite({"attack": [{"name": "a", "eps": "16/255", "steps": 10}, {"name": "b", "eps": "16/255",
                                                                                  "steps": 100}]})
    a, b = suite.attacks
    assert a.eps == pytest.approx(16 / 255)
    assert a.step_size == pytest.approx(1.6 / 255)  # Feature Denoising: 1/255 raised to eps/steps
    assert b.step_size == pytest.approx(1 / 255)
    assert a.random_start and a.restarts == 1 and not a.targeted
    with pytest.raises(UserError, match="unique"):
        parse_suite({"attack": [{"name": "a", "eps": 0.1}, {"name": "a", "eps": 0.2}]})
    with pytest.raises(UserError, match="targeted does not apply to autoattack"):
        parse_suite({"attack": [{"name": "a", "kind": "autoattack", "eps": 0.1, "targeted": True}]})


def test_repository_suites():
    table9 = load_suite("table9")
    assert {(a.targeted, round(a.eps * 255, 6), round(a.step_size * 255, 6)) for a in table9.attacks
            if a.kind == "pgd"} == {(True, 16, 1), (False, 16, 1)}
    fd = load_suite(suites_dir() / "fd_steps.toml")
    assert sorted({a.steps for a in fd.attacks}) == [10, 100, 1000, 2000]
    assert all(a.targeted for a in fd.attacks) and all(a.eps == pytest.approx(16 / 255) for a in fd.attacks)
    assert sorted({round(a.step_size * 255, 6) for a in fd.attacks}) == [1.0, 1.6]
    digits = load_suite("digits")
    assert {a.targeted for a in digits.attacks if a.kind == "pgd"} == {True, False}
    assert "autoattack" in {a.kind for a in digits.attacks} and "autoattack" in {a.kind for a in table9.attacks}
    from lrrobust.training.config import PRESETS

    assert {a.eps for a in digits.attacks} == {PRESETS["digits"].eps}  # the eps the demo's models trained at


# ---------------------------------------------------------------- the L2 threat model


def test_l2_pgd_uses_its_whole_ball_and_breaks_a_model(batch):
    """PGD-L2 is no L-inf attack in disguise: its images reach beyond an L-inf box of the same radius per pixel and
    sit on the L2 sphere, and a large radius breaks a random network."""
    images, labels, _ = batch
    model = tiny_model(0).eval()
    spec = make_attack("p", "pgd-l2", 2.0, steps=10)
    assert (spec.norm, spec.step_size) == ("l2", pytest.approx(2.5 * 2.0 / 10))
    outcome = run_attack(model, spec, images, labels, num_classes=NUM_CLASSES)
    norms = distance(outcome.adv_images, images, "l2")
    assert float(norms.max()) <= 2.0 + 1e-5 and float(norms.median()) > 1.0
    assert float(distance(outcome.adv_images, images, "linf").max()) > 2.0 / 8  # not spread evenly like a sign step
    assert outcome.success.float().mean() > 0.5


def test_l2_budgets_above_one_are_read_and_linf_ones_refused():
    assert make_attack("p", "pgd-l2", 3, steps=2).eps == 3.0
    assert make_attack("a", "autoattack-l2", "5/2").eps == 2.5
    with pytest.raises(UserError, match=r"must lie in \(0, 1\]"):
        make_attack("p", "pgd", 3)
    assert attack_from_options("pgd-l2", "cli", {"eps": "2", "steps": 4}).eps == 2.0
    assert "2 (L2)" in make_attack("p", "pgd-l2", 2, steps=2).describe()
    assert "AutoAttack standard L2" in make_attack("a", "autoattack-l2", 0.5).describe()


def test_a_suite_never_mixes_norms():
    tables = [{"name": "linf", "kind": "pgd", "eps": 0.3}, {"name": "l2", "kind": "pgd-l2", "eps": 0.3}]
    with pytest.raises(UserError, match="mix norms .*suite of their own"):
        parse_suite({"attack": tables})


def test_an_l2_suite_checks_itself_with_l2_attacks():
    from lrrobust.evaluation.checks import plan_attacks

    suite = parse_suite({"attack": [{"name": "p", "kind": "pgd-l2", "eps": 2.0, "steps": 8}],
                         "checks": {"steps": [1, 8], "eps_grid": [1.0, 4.0], "eps_steps": 8, "restarts": 2}})
    assert (suite.norm, suite.eps) == ("l2", 2.0)
    attacks, plan = plan_attacks(suite)
    assert {a.norm for a in attacks} == {"l2"}
    one_step = next(a for a in attacks if a.name == "check/fgm")
    assert (one_step.steps, one_step.step_size, one_step.random_start) == (1, 2.0, False)  # FGM
    assert {a.eps for a in attacks if a.name.startswith("check/eps-")} == {1.0, 4.0}
    assert plan["restarts"][0][1] == "p"  # the suite's own PGD-L2-8 is the checks' one-start PGD
    from lrrobust.evaluation.checks import evaluate_checks

    accuracy = {a.name: 0.5 for a in attacks}
    verdict = next(c for c in evaluate_checks(suite, plan, accuracy, 100, None) if c["check"] == "fgsm")
    assert verdict["claim"] == "PGD is stronger than FGM" and "vs FGM 0.500" in verdict["detail"]


def test_repository_l2_suites():
    for name, eps in (("digits-l2", 0.5), ("mnist-l2", 2.0), ("cifar10-l2", 0.5)):
        suite = load_suite(name)
        assert (suite.norm, suite.eps) == ("l2", eps)
        assert {a.kind for a in suite.attacks} == {"pgd-l2", "autoattack-l2"}
        assert {a.targeted for a in suite.attacks if a.kind == "pgd-l2"} == {True, False}


# ---------------------------------------------------------------- an attack's settings have one home


@pytest.fixture()
def noisy_fgsm(monkeypatch):
    """A kind with a hyper-parameter no other kind has, registered for one test as a module of lrrobust/attacks
    registers itself: FGSM from a uniformly perturbed start."""
    import dataclasses

    from lrrobust.attacks.base import BUDGET, setting
    from lrrobust.attacks.fgsm import FGSM

    @dataclasses.dataclass(frozen=True)
    class NoisyFGSM(FGSM):
        noise: float = setting(BUDGET, "Noisy FGSM's start: uniform noise of this size (default 1/255).", 1 / 255,
                               shown=True)

        kind = "fgsm-noise"

    monkeypatch.setitem(KINDS, NoisyFGSM.kind, NoisyFGSM)
    return NoisyFGSM


def test_a_new_hyper_parameter_reaches_tables_options_summaries_and_the_report(noisy_fgsm):
    from lrrobust.attacks import attack_from_row, attack_options, recorded_settings, shown_settings
    from lrrobust.commands.evaluate import eval_attack, with_attack_options
    from lrrobust.evaluation.summary import summary_columns
    from lrrobust.report.table9 import attack_signature
    from lrrobust.report.tables import linf_attack_cols

    spec = make_attack("n", "fgsm-noise", 0.1, noise="2/255")  # a suite table
    assert spec.noise == pytest.approx(2 / 255) and spec.key() != make_attack("n", "fgsm-noise", 0.1).key()
    assert attack_from_options("fgsm-noise", "n", {"eps": "0.1", "noise": "2/255"}) == spec  # an option
    with pytest.raises(UserError, match="attack 'n': noise must"):
        make_attack("n", "fgsm-noise", 0.1, noise=-1)
    with pytest.raises(UserError, match="noise does not apply to pgd"):
        make_attack("p", "pgd", 0.1, noise=0.1)
    assert "noise" in recorded_settings() and "noise" in summary_columns() and "noise" in shown_settings()
    assert next(c for c in linf_attack_cols() if c.key == "noise").title == "noise"  # the report's attack tables
    option = next(o for o in attack_options() if o.key == "noise")
    assert option.flag == "--noise" and option.option_type is str and "uniform noise" in option.help
    assert "noise" in inspect.signature(with_attack_options(eval_attack)).parameters
    row = {"attack": "n", "num_samples": 10, **spec.settings()}  # a summary.json row
    assert attack_from_row(row) == spec
    other = {**row, "noise": 3 / 255}
    assert attack_signature(row) != attack_signature(other)  # never one table for evaluations differing in it


def test_evaluations_differing_only_in_autoattacks_target_classes_never_share_a_table():
    from lrrobust.report.table9 import attack_signature

    rows = [{"attack": "aa", **make_attack("aa", "autoattack", 0.1, target_classes=n).settings()} for n in (3, 9)]
    assert attack_signature(rows[0]) != attack_signature(rows[1])
    old = {k: v for k, v in rows[1].items() if k != "target_classes"}  # a summary written before the setting
    assert attack_signature(old) == attack_signature(rows[1])  # read with its default, 9


def test_every_kind_is_run_from_the_command_line_the_untargeted_ones_untargeted():
    from lrrobust.commands.evaluate import AttackKind, Mode, _suite_from_options

    for kind, cls in KINDS.items():
        suite = _suite_from_options(AttackKind(kind), None, {"eps": "0.5"})
        assert {a.kind for a in suite.attacks} == {kind}
        targeted = "targeted" in cls.table_keys()
        assert sorted(a.targeted for a in suite.attacks) == ([False, True] if targeted else [False])
        if not targeted:
            with pytest.raises(UserError, match=f"--attack {kind} is untargeted"):
                _suite_from_options(AttackKind(kind), Mode.targeted, {"eps": "0.5"})
