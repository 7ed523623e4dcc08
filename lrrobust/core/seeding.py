"""Seeds: one derivation rule for every seed lrrobust draws, and one call that seeds every generator.

A derived seed is a hash of its parts (run seed, epoch, rank, batch, attack settings, restart ...), so it is the
same on every machine and Python version, and two different part lists practically never share a seed.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

MAX_SEED = 2**63 - 1  # the largest seed every generator takes


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across machines: SHA-256 of their text joined by '|'."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded from ``derive_seed(*parts)``."""
    return torch.Generator().manual_seed(derive_seed(*parts))
