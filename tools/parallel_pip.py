"""Installs requirements into this interpreter's environment with two pip processes at once.

pip unpacks one wheel after another on one core, and torch's CUDA build is 5.5 GB of wheels (torch, cuDNN, cuBLAS,
NCCL, ...): on a fresh 2-core machine its install leaves one core idle for over a minute. This resolves the
requirements once (``pip install --dry-run --report``), splits the distributions to install into two groups of about
equal size (local wheel files by their size; the largest first, each to the lighter group), and installs the two
groups at the same time, each with ``pip install --no-deps`` (the resolution is done). Requirements already met
install nothing.

    python tools/parallel_pip.py torch==2.14.1 torchvision==0.29.1
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from urllib.parse import unquote, urlparse

PIP = [sys.executable, "-m", "pip"]


def resolve(requirements: list[str]) -> list[tuple[str, int]]:
    """What pip would install for ``requirements``: (name==version, size in bytes; 0 when not a local file)."""
    with tempfile.TemporaryDirectory() as folder:
        report = os.path.join(folder, "report.json")
        subprocess.run([*PIP, "install", "--quiet", "--dry-run", "--report", report, *requirements], check=True)
        with open(report, encoding="utf-8") as f:
            items = json.load(f)["install"]
    found = []
    for item in items:
        url = urlparse(item["download_info"]["url"])
        path = unquote(url.path)
        size = os.path.getsize(path) if url.scheme == "file" and os.path.isfile(path) else 0
        found.append((f"{item['metadata']['name']}=={item['metadata']['version']}", size))
    return found


def split(found: list[tuple[str, int]]) -> tuple[list[str], list[str]]:
    """Two groups of about equal total size: the largest first, each to the group with less so far."""
    groups: tuple[list[str], list[str]] = ([], [])
    sizes = [0, 0]
    for name, size in sorted(found, key=lambda x: -x[1]):
        lighter = 0 if sizes[0] <= sizes[1] else 1
        groups[lighter].append(name)
        sizes[lighter] += size
    return groups


def main(requirements: list[str]) -> int:
    if not requirements:
        print("usage: python tools/parallel_pip.py REQUIREMENT...", file=sys.stderr)
        return 2
    groups = [g for g in split(resolve(requirements)) if g]
    pips = [subprocess.Popen([*PIP, "install", "--quiet", "--no-deps", *group]) for group in groups]
    return max([p.wait() for p in pips], default=0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
