"""lrrobust study: the grid planner, spec validation before any work, resume cell by cell, a tiny study end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SUITES
from typer.testing import CliRunner

from lrrobust.errors import UserError
from lrrobust.study import load_study, plan_study, run_cell, run_study

STUDIES = Path(__file__).resolve().parents[1] / "studies"


def test_the_papers_imagenet_grid_is_planned_without_running(tmp_path):
    from lrrobust.training import resolve_config

    study = load_study(STUDIES / "table9-imagenet.toml", tmp_path / "s")
    assert [(c.network, c.training, c.seed) for c in study.cells] == [
        (n, t, 0) for n in ("lrnet26", "resnet26", "resnet50") for t in ("regular", "adversarial")]
    adv = resolve_config(study.cells[1].config)
    assert (adv.epochs, adv.batch_size, adv.lr, adv.milestones) == (110, 1024, 0.4, [30, 60, 90])
    assert (adv.eps, adv.steps, adv.targeted, adv.model_kwargs) == (16 / 255, 16, True, {})
    assert study.suite_name == "table9" and not (tmp_path / "s").exists()  # planning writes nothing


def test_the_mnist_grid_has_the_papers_three_rows_with_three_seeds(tmp_path):
    study = load_study(STUDIES / "table9-mnist.toml", tmp_path / "s")
    assert len(study.cells) == 18 and {c.network for c in study.cells} == {"lrnet26", "resnet26", "resnet50"}
    assert {c.config.model_kwargs["width"] for c in study.cells} == {0.125}
    assert {c.config.model_kwargs["stem"] for c in study.cells} == {"half"}
    assert {c.seed for c in study.cells} == {0, 1, 2} and study.dataset == "mnist"
    assert len({c.run_dir for c in study.cells}) == 18


BASE = {"dataset": "digits", "suite": "digits", "networks": ["resnet18"], "trainings": ["regular"], "seeds": [0]}


@pytest.mark.parametrize("change, message", [
    ({"networks": ["resnet27"]}, "unknown network resnet27"),
    ({"networks": []}, "networks must be a non-empty list"),
    ({"seeds": []}, "seeds must be a non-empty list"),
    ({"trainings": ["fgsm"]}, "trainings must be regular and/or adversarial"),
    ({"suite": "nosuch"}, "suite 'nosuch' not found"),
    ({"dataset": "no-such-dataset"}, "unknown dataset"),
    ({"epochz": 3}, "unknown key epochz"),
    ({"training": {"epochs": 0}}, "--epochs must be at least 1"),
    ({"training": {"seed": 3}}, "may not set seed"),
    ({"training": {"epocs": 3}}, "unknown training config keys"),
    ({"transfer": {"resnet26": "resnet18"}}, "unknown key resnet26 in \\[transfer\\]; valid keys: resnet18"),
    ({"transfer": {"resnet18": "resnet18"}}, "\\[transfer\\] resnet18 must name another network of the study"),
    ({"networks": ["resnet18", "lrnet26"], "transfer": {"resnet18": "resnet50"}},
     "another network of the study \\(lrnet26\\), got 'resnet50'"),
    ({"report": {"prior": True}}, "unknown key prior in \\[report\\]; valid keys: priors"),
    ({"networks": ["lrnet26"], "model": {"geo_prior": "none"}, "report": {"priors": True}},
     "priors needs LR-Nets with a geometric prior"),
])
def test_a_bad_spec_is_refused_before_any_work(tmp_path, change, message):
    with pytest.raises(UserError, match=message):
        plan_study({**BASE, **change}, tmp_path / "s")
    missing = {k: v for k, v in BASE.items() if k != "seeds"}
    with pytest.raises(UserError, match="missing seeds"):
        plan_study(missing, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_the_cli_says_one_line_and_exits_2_on_a_bad_spec(tmp_path):
    from lrrobust.cli import app

    spec = tmp_path / "bad.toml"
    spec.write_text('dataset = "digits"\nsuite = "digits"\nnetworks = ["resnet27"]\ntrainings = ["regular"]\n'
                    'seeds = [0]\n')
    result = CliRunner().invoke(app, ["study", str(spec), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and result.output.strip().startswith("error:") and "resnet27" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "s").exists()


TINY_SUITE = (SUITES / "study_tiny.toml").read_text()


def test_transfer_sources_are_cells_of_the_same_training_and_seed_trained_first(tmp_path):
    """[transfer]: a network's transfer check crafts on another network's cell of the same training kind and seed;
    the cells that are sources train before any cell is attacked (``SourceTraining``), done once every epoch is in."""
    from lrrobust.study import epochs_done, source_trainings

    spec = {**BASE, "networks": ["resnet18", "resnet26", "lrnet26"], "trainings": ["regular", "adversarial"],
            "seeds": [0, 1], "transfer": {"lrnet26": "resnet18"}, "training": {"epochs": 2}}
    study = plan_study(spec, tmp_path / "s")
    runs = tmp_path / "s" / "runs"
    for cell in study.cells:
        expected = runs / f"resnet18-{cell.training}-s{cell.seed}" / "best.pt" if cell.network == "lrnet26" else None
        assert cell.transfer_from == (None if expected is None else str(expected))
    trainings = source_trainings(study)
    assert [t.cell.network for t in trainings] == ["resnet18"] * 4 and {t.epochs for t in trainings} == {2}
    assert trainings[0].label == "resnet18 regular seed 0 (training)" and not trainings[0].done()
    run = trainings[0].run_dir
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    assert epochs_done(run) == 0 and not trainings[0].done()  # not a record the typed reader accepts
    assert source_trainings(plan_study(BASE, tmp_path / "s")) == []  # no [transfer]: the cells alone


def test_shipped_specs_are_found_by_name_and_a_path_wins(tmp_path, monkeypatch):
    from lrrobust.study import resolve_study_path, study_names

    assert {"demo", "table9-mnist", "table9-imagenet"} <= set(study_names())
    assert resolve_study_path("demo") == STUDIES / "demo.toml"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_text("x")  # a file of that name is the user's
    assert resolve_study_path("demo") == Path("demo")
    assert resolve_study_path("demo.toml") == Path("demo.toml")
    one_line(study_cli("nosuch", "--out", tmp_path / "s"), 2, "study spec not found: nosuch")
    result = study_cli(STUDIES / "demo.toml", "--out", tmp_path / "s", "--plan")
    assert result.exit_code == 0, result.output
    assert "lrnet26 adversarial seed 0: " in result.output and "transfer check from" in result.output
    assert not (tmp_path / "s").exists()


def test_a_report_directory_that_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    one_line(study_cli(_spec_file(tmp_path), "--out", tmp_path / "s", "--report", tmp_path / "afile"), 1, "--report",
             "afile")
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_a_tiny_study_resumes_cell_by_cell_and_reports_its_seeds(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY_SUITE)
    spec = {**BASE, "suite": str(tmp_path / "tiny.toml"), "seeds": [0, 1], "model": {"width": 0.125},
            "training": {"epochs": 2, "batch_size": 256}, "name": ":smile: [bold]tiny[/bold]"}
    study = plan_study(spec, tmp_path / "s")
    first, second = study.cells
    run_cell(first, study, "cpu")  # a finished cell
    from lrrobust.training import train

    half = plan_study({**spec, "training": {"epochs": 1, "batch_size": 256}}, tmp_path / "s").cells[1]
    train(half.config, progress=False)  # a cell killed after one of its two epochs
    done_at = (first.eval_dir / "summary.json").stat().st_mtime_ns
    from rich.console import Console

    console = Console(record=True, width=300, force_terminal=False)
    report = run_study(study, jobs=2, console=console)
    assert (first.eval_dir / "summary.json").stat().st_mtime_ns == done_at  # a done cell is never redone
    from lrrobust.training.run_files import read_metrics

    assert [r.epoch for r in read_metrics(second.run_dir)] == [1, 2]  # the killed cell finished its training
    assert second.done() and report.is_file()
    text = report.read_text()
    assert "2 seeds" in text and "seed 1" in text
    # each finished cell's line gives its training-convergence verdict (issue 20)
    from lrrobust.evaluation.summary import read_summary

    verdict = read_summary(second.eval_dir).convergence["verdict"]
    log = console.export_text()
    line = next(x for x in log.splitlines() if "done: resnet18 regular seed 1;" in x)
    assert line.endswith(f"training: {verdict}")
    # the spec's name as written, though rich would render ':smile:' as an emoji and eat '[bold]' (issue 23)
    assert "study :smile: [bold]tiny[/bold]: 2 cells, 1 done, 1 to run" in log
    assert "## Training convergence" in text
    # every finished cell is kept beside its evaluation, weights only, whether it finished in this run or before
    from lrrobust.checkpoint import is_weights_only, read_checkpoint
    from lrrobust.study import WEIGHTS_FILE, kept_dir

    for cell in study.cells:
        kept = kept_dir(cell, study)
        assert is_weights_only(read_checkpoint(kept / WEIGHTS_FILE))
        assert (kept / cell.eval_dir.name / "summary.json").read_bytes() == (cell.eval_dir / "summary.json").read_bytes()
    assert not (study.out / "sweep.json").exists() and "Recipe sweep" not in text  # no [sweep]: none


# ------------------------------------------------------------------------------------- issue 23: every mistake
# checked before any directory is created, one line each; one study per output directory


def _wrong_value(annotation: str) -> object:
    kind = annotation.split("|")[0].split("[")[0].strip()
    return {"int": "x", "float": "x", "str": 3, "bool": "yes", "list": "x", "dict": 3}[kind]


def _every_wrong_field() -> list[tuple[dict, str]]:
    """(a spec change, the key its message must name): every field of a spec, each with a value of a wrong type."""
    import dataclasses

    from lrrobust.models.zoo import COMMON_OPTIONS, LR_OPTIONS
    from lrrobust.sweep import SWEEP_KEYS
    from lrrobust.training import TrainConfig
    from lrrobust.training.convergence import CONVERGENCE_KEYS

    top = {"name": {"a": 1}, "description": ["x"], "dataset": 3, "root": 3, "suite": ["digits"],
           "networks": "resnet18", "trainings": "regular", "seeds": 0, "model": 3, "training": [1],
           "convergence": "x", "sweep": 1, "transfer": "lrnet26", "report": True, "cluster": 2}
    cases = [({key: value}, key) for key, value in top.items()]
    cases += [({"networks": [3]}, "networks"), ({"trainings": [True]}, "trainings"), ({"seeds": ["0"]}, "seeds")]
    study_sets = {"model", "model_kwargs", "dataset", "root", "seed", "out", "resume", "adversarial", "validation"}
    for field in dataclasses.fields(TrainConfig):
        if field.name not in study_sets:
            value = _wrong_value(str(field.type))
            cases.append(({"training": {field.name: value}}, field.name))
            cases.append(({"training": {"adversarial": {field.name: value}}}, field.name))  # a table no cell uses
    cases += [({"training": {kind: 3}}, kind) for kind in ("regular", "adversarial")]
    for option in COMMON_OPTIONS + LR_OPTIONS:
        cases.append(({"networks": ["lrnet26"], "model": {option: "x" if option != "stem" else 3}}, option))
    cases.append(({"model": {"nosuch": 1}}, "nosuch"))  # not a create_model option (issue 23, finding 8)
    cases.append(({"networks": ["resnet18"], "model": {"geo_prior": "mlp"}}, "geo_prior"))  # an LR-Net's only
    cases += [({"convergence": {key: "x"}}, key) for key in CONVERGENCE_KEYS]
    cases += [({"sweep": {key: "x"}}, key) for key in SWEEP_KEYS]
    cases += [({"sweep": {"lr": [0.1], "seed": "x"}}, "seed")]
    cases += [({"networks": ["resnet18", "lrnet26"], "transfer": {"lrnet26": 3}}, "lrnet26"),
              ({"report": {"priors": "yes"}}, "priors")]
    return cases


def test_every_spec_field_with_a_wrong_type_is_refused_in_one_line_naming_it(tmp_path):
    """Issue 23, findings 8 and 9: `name = {a = 1}` ran as "study {'a': 1}", `[model] nosuch = 1` failed inside a
    worker after runs/ was created."""
    cases = _every_wrong_field()
    assert len(cases) > 60
    for change, key in cases:
        with pytest.raises(UserError) as err:
            plan_study({**BASE, **change}, tmp_path / "s", "spec.toml")
        message = str(err.value)
        assert key in message and "\n" not in message, (change, message)
    assert not (tmp_path / "s").exists()


def study_cli(*args) -> object:
    import os

    from lrrobust.cli import app

    env = {k: v for k, v in os.environ.items() if k != "LRROBUST_DEBUG"}
    return CliRunner().invoke(app, ["study", *map(str, args)], env=env)


def one_line(result, code: int, *fragments: str) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == code and len(lines) == 1, result.output
    assert lines[0].startswith("error:") and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _spec_file(tmp_path: Path, **fields: object) -> Path:
    import json

    spec = tmp_path / "spec.toml"
    spec.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in {**BASE, **fields}.items()))
    return spec


@pytest.mark.parametrize("jobs", ["99999999999999999999", "0", "-1", "257", "two", "1.5"])
def test_jobs_out_of_range_or_not_a_number_is_one_line(tmp_path, jobs):
    """Issue 23, findings 7 and 10: --jobs 99999999999999999999 raised OverflowError; --jobs two printed typer's
    boxed usage message."""
    one_line(study_cli(_spec_file(tmp_path), "--out", tmp_path / "s", "--jobs", jobs), 2, "--jobs")
    assert not (tmp_path / "s").exists()


def test_usage_errors_are_one_line_with_exit_2(tmp_path):
    one_line(study_cli(_spec_file(tmp_path)), 2, "Missing option '--out'", "lrrobust study --help")
    one_line(study_cli(_spec_file(tmp_path), "--out", tmp_path / "s", "--jbos", "2"), 2, "--jbos")
    one_line(study_cli(), 2, "Missing argument")
    assert not (tmp_path / "s").exists()


def test_a_spec_that_is_a_directory_or_a_symlink_loop_is_the_users_mistake(tmp_path):
    """Issue 23, finding 10: both exited 1, the code of a failing environment."""
    one_line(study_cli(tmp_path, "--out", tmp_path / "s"), 2, f"study spec {tmp_path} is a directory")
    loop = tmp_path / "loop.toml"
    loop.symlink_to(loop)
    one_line(study_cli(loop, "--out", tmp_path / "s"), 2, f"study spec {loop} is a symbolic link loop")
    (tmp_path / "latin1.toml").write_bytes("name = 'caf\u00e9'\n".encode("latin-1"))
    one_line(study_cli(tmp_path / "latin1.toml", "--out", tmp_path / "s"), 2, "not UTF-8")
    assert not (tmp_path / "s").exists()


def test_data_roots_and_output_paths_are_checked_before_any_directory_is_created(tmp_path):
    """Issue 23, finding 8: imagefolder without a root failed inside a worker after runs/ was created; an --out that
    is a file or under /proc was reported after the study had started, /proc's cause as "No such file or
    directory". A missing root is the user's mistake (2); an output that cannot be written the machine's (1)."""
    out = tmp_path / "s"
    one_line(study_cli(_spec_file(tmp_path, dataset="imagefolder"), "--out", out), 2, "imagefolder needs root")
    one_line(study_cli(_spec_file(tmp_path, dataset="imagefolder", root=str(tmp_path / "nope")), "--out", out), 2,
             "ImageFolder tree not found", str(tmp_path / "nope" / "train"))
    one_line(study_cli(_spec_file(tmp_path, dataset="cifar10", root=str(tmp_path)), "--out", out), 2,
             "CIFAR-10 not found")
    assert not out.exists()
    spec = _spec_file(tmp_path)
    (tmp_path / "afile").write_text("x")
    one_line(study_cli(spec, "--out", tmp_path / "afile"), 1, "cannot write in", "afile", "is a file")
    one_line(study_cli(spec, "--out", tmp_path / "afile" / "s"), 1, "afile is a file, not a directory")
    assert (tmp_path / "afile").read_text() == "x"
    line = one_line(study_cli(spec, "--out", "/proc/lrrobust-study"), 1, "cannot write in /proc", "virtual")
    assert "No such file or directory" not in line


HOLD = """
import sys, time
from lrrobust.core.lock import locked_directory
with locked_directory(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_study_into_a_held_directory_stops_at_once_and_touches_nothing(tmp_path):
    """Issue 23, finding 3: two studies on one --out stopped each other at the cells each held. The study holds
    its output directory's lock: the second one names the holder and exits 2 before it creates anything."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "s"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = sorted(p.name for p in out.iterdir())
        one_line(study_cli(_spec_file(tmp_path), "--out", out), 2, f"{out} is in use by another lrrobust process "
                 f"(PID {holder.pid})")
        assert sorted(p.name for p in out.iterdir()) == before == [".lock"]  # no runs/, no report/
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_a_cell_killed_before_its_first_checkpoint_is_emptied_and_restarts(tmp_path):
    """Issue 23, finding 1: a cell holding config.json, manifest.json and an empty metrics.jsonl (killed before its
    first epoch ended) starts again from scratch, with the study's recipe of now; a cell with a checkpoint is left to
    resume, and files the study does not know are left alone."""
    from lrrobust.core.lock import LOCK_NAME
    from lrrobust.study import restart_unstarted

    run = tmp_path / "runs" / "resnet18-regular-s0"
    run.mkdir(parents=True)
    for name, text in (("config.json", '{"model": "resnet18", "lr": 0.5}'), ("manifest.json", "{}"),
                       ("metrics.jsonl", ""), (".config.json.abc.tmp", "{"), ("notes.txt", "mine")):
        (run / name).write_text(text)
    restart_unstarted(run)
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME, "notes.txt"]
    (run / "config.json").write_text("{}")
    (run / "last.pt").write_bytes(b"checkpoint")
    restart_unstarted(run)
    assert (run / "config.json").is_file()  # a started run resumes from last.pt
    restart_unstarted(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


def test_die_with_parent_ends_a_worker_when_its_parent_is_killed(tmp_path):
    """Issue 23, finding 2 (tests/test_fault_injection.py kills a real study's main process): a worker that called
    die_with_parent ends within seconds of a SIGKILL of its parent; without it, it would sleep on."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing, time\n"
        "from lrrobust.core.children import die_with_parent\n\n"
        "def child(parent):\n"
        "    die_with_parent(parent)\n"
        "    time.sleep(120)\n\n"
        "if __name__ == '__main__':\n"
        "    import os\n"
        "    worker = multiprocessing.get_context('spawn').Process(target=child, args=(os.getpid(),))\n"
        "    worker.start()\n"
        "    print(worker.pid, flush=True)\n"
        "    time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    time.sleep(1.0)  # the worker has called die_with_parent
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(worker):
        assert time.monotonic() < deadline, "the worker outlived its parent"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    import os

    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
