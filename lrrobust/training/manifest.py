"""The run manifest: what produced a run (versions, git commit, device, seed, command line, world size)."""

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
        return __import__(module).__version__
    except (ImportError, AttributeError):
        return None


def build_manifest(device: torch.device, seed: int, world_size: int) -> dict[str, Any]:
    from lrrobust.ops import kernel_available

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
        "compiled_op_kernel": kernel_available(device.type),
        "seed": seed,
        "world_size": world_size,
        "command_line": list(sys.argv),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
