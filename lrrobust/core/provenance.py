"""Provenance: what produced a result (lrrobust's git commit, library versions, torch's build, machine, CPU model and
thread counts, command line).

Training writes it into a run's manifest.json and each checkpoint; evaluation into summary.json; the report
shows it beside every figure. Paths are recorded relative to the working directory (the program as its name), so a
committed manifest names no machine's directories.
"""

from __future__ import annotations

import datetime
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import lrrobust


def git_commit() -> tuple[str | None, bool | None]:
    """The commit of the lrrobust source tree and whether it has uncommitted changes; (None, None) outside git."""
    source = Path(lrrobust.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10,
                                check=False)
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                                capture_output=True, text=True, timeout=10, check=False)
        return commit.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def _version(module: str) -> str | None:
    try:
        return str(__import__(module).__version__)
    except (ImportError, AttributeError):
        return None


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC 7B13"): /proc/cpuinfo on Linux, else what the platform reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def threads() -> dict[str, int | None]:
    """torch's intra-op and inter-op thread counts and the cores the process may use (timings depend on all three)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads(),
            "usable_cores": usable, "cpu_count": os.cpu_count()}


def torch_build() -> dict[str, Any]:
    """How the torch in use was built: CUDA/ROCm version, its git commit, debug, OpenMP and oneDNN."""
    return {"cuda": torch.version.cuda, "hip": getattr(torch.version, "hip", None),
            "git_version": getattr(torch.version, "git_version", None), "debug": bool(torch.version.debug),
            "openmp": torch.backends.openmp.is_available(), "mkldnn": torch.backends.mkldnn.is_available(),
            "cxx11_abi": torch.compiled_with_cxx11_abi()}


def relative_path(text: str, base: Path | None = None) -> str:
    """An absolute path as a path relative to ``base`` (the working directory), for any other text ``text``."""
    if not os.path.isabs(text):
        return text
    try:
        return os.path.relpath(text, base or Path.cwd())
    except ValueError:  # another drive (Windows)
        return text


def command_line(argv: list[str] | None = None) -> list[str]:
    """The command as typed, its program as a name ("lrrobust") and absolute paths relative to the working
    directory."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return []
    return [Path(argv[0]).name] + [relative_path(a) for a in argv[1:]]


def provenance(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Versions, commit, machine, device and command line, as plain JSON values."""
    device = torch.device(device)
    commit, dirty = git_commit()
    return {
        "lrrobust_version": lrrobust.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "torch_version": str(torch.__version__),
        "torch_build": torch_build(),
        "torchvision_version": _version("torchvision"),
        "torchattacks_version": _version("torchattacks"),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "threads": threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "command_line": command_line(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
