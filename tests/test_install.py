"""lrrobust as an installed package: a wheel built from the source tree, installed into a fresh virtual environment
outside the repository, works from another directory (the suites and the study specs come with it as package
data, the compiled op as lrrobust/_C).

The wheel packages the extension this environment's install compiled (setup.py's LRROBUST_PREBUILT_EXTENSION): the
compile itself is what ``make install`` and ``make test`` check; here, the packaging. LRROBUST_WHEEL_COMPILE=1
compiles it again inside ``pip wheel`` (the CPU kernel only: a few minutes)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

COMPILE = os.environ.get("LRROBUST_WHEEL_COMPILE") == "1"

pytestmark = [pytest.mark.slow] + ([pytest.mark.early] if COMPILE else [])  # a compile starts first


def run(args: list[str], cwd: Path, timeout: float = 900, **env: str) -> str:
    """Runs a command without PYTHONPATH (which could reach the source tree), with these variables added."""
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **env}
    result = subprocess.run(args, check=False, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"{' '.join(map(str, args))} exited {result.returncode}:\n{result.stdout}\n" \
                                   f"{result.stderr}"
    return result.stdout


def source_copy(dest: Path) -> Path:
    """The files git would commit (tracked, and untracked ones it does not ignore), so no build output leaks in."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], ROOT).split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(src.read_bytes())
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv with the wheel installed, reusing this environment's torch and other dependencies (no network: they
    are reached through a .pth file pointing at this interpreter's site-packages, read after the venv's own)."""
    base = tmp_path_factory.mktemp("install")
    source = source_copy(base / "src")
    wheels = base / "wheels"
    built = {} if COMPILE else {"LRROBUST_PREBUILT_EXTENSION": importlib.util.find_spec("lrrobust._C").origin}
    run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--quiet", "-w", str(wheels),
         str(source)], base, timeout=1800, LRROBUST_CPU_ONLY="1", **built)
    wheel = next(wheels.glob("lrrobust-*.whl"))
    assert "lrrobust/_C.abi3.so" in zipfile.ZipFile(wheel).namelist()
    venv = base / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], base)  # this pip installs into it (--python)
    python = venv / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base).strip())
    (site / "lrrobust-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--force-reinstall",
         "--quiet", str(wheel)], base)
    return venv


def test_the_wheel_ships_the_suites_and_runs_from_elsewhere(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lrrobust = str(installed / "bin" / "lrrobust")
    code = ("import lrrobust, lrrobust.ops, lrrobust.evaluation.suite as s, lrrobust.study as st; "
            "print(lrrobust.__file__); print(s.suite_names()); print(lrrobust.ops.kernel_available('cpu')); "
            "print(st.studies_dir()); print(st.study_names())")
    where = run([str(installed / "bin" / "python"), "-c", code], elsewhere)
    module, suites, kernel, folder, studies = where.splitlines()
    assert module.startswith(str(installed)) and not module.startswith(str(ROOT))  # the wheel, not the source tree
    assert kernel == "True"  # the wheel's compiled op
    assert {"digits", "mnist", "table9", "fd_steps", "mnist-l2"} <= set(eval(suites))
    assert folder.startswith(str(installed)) and folder.endswith("lrrobust/studies")  # the wheel's own copy
    assert {"demo", "table9-mnist", "table9-imagenet"} <= set(eval(studies))
    plan = run([lrrobust, "study", "demo", "--out", "demo-runs", "--plan"], elsewhere)
    assert "lrnet26 adversarial seed 0: " in plan and not (elsewhere / "demo-runs").exists()

    models = run([lrrobust, "models"], elsewhere)
    assert "lrnet26" in models and "resnet50" in models
    assert "--out" in run([lrrobust, "demo", "--help"], elsewhere)

    run([lrrobust, "train", "--model", "resnet18", "--width", "0.125", "--dataset", "digits", "--epochs", "1",
         "--out", "tiny", "--device", "cpu", "--no-progress"], elsewhere)
    run([lrrobust, "eval-attack", "tiny", "--suite", "digits", "--limit", "20", "--no-checks", "--out", "tiny/eval",
         "--device", "cpu"], elsewhere)
    summary = (elsewhere / "tiny" / "eval" / "summary.json").read_text()
    assert '"suite": "digits"' in summary and '"num_samples": 20' in summary
