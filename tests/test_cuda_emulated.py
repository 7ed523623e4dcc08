"""The CUDA kernels (csrc/cuda, paper Sec. 4) run in the CPU emulator against the reference, on every machine.

``csrc/cuda/emu/check_emulated.py --quick`` compiles the very kernel and launcher source nvcc compiles for the
host (fibers for threads, barriers, warp shuffles, NaN-filled shared memory) and checks the forward
and all four gradients in the shared-memory and global-memory variants, the planner's tile clipping, batch
splits and tile runs, several thread and block schedules (bitwise equal), low precision and non-finite inputs.
It catches wrong index math, tiles, halos and missing barriers before a GPU ever runs the kernels.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "csrc", "cuda", "emu", "check_emulated.py")


@pytest.mark.slow
@pytest.mark.early  # compiles the kernels for the emulator: a minute in one process
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler")
def test_cuda_kernels_agree_with_the_reference_in_the_emulator():
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, SCRIPT, "--quick"], capture_output=True, text=True, env=env, check=False,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "all emulated checks passed" in result.stdout
    assert "gather batch split, waves minimum and tile runs OK" in result.stdout
