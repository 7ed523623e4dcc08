"""Provenance: what produced a result (lrrobust's git commit, library versions, machine, command line).

Training writes it into a run's manifest.json and each checkpoint; evaluation into summary.json; the report
shows it beside every figure.
"""

from __future__ import annotations

import datetime
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


def provenance(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Versions, commit, machine, device and command line, as plain JSON values."""
    device = torch.device(device)
    commit, dirty = git_commit()
    return {
        "lrrobust_version": lrrobust.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "torch_version": str(torch.__version__),
        "torchvision_version": _version("torchvision"),
        "torchattacks_version": _version("torchattacks"),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "command_line": list(sys.argv),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
