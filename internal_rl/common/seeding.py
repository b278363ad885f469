"""Explicit seeds: the same seed gives the same numbers on CPU."""

import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch global generators; return a torch generator seeded with `seed`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def derive_seed(seed: int, *keys: int | str) -> int:
    """A child seed derived deterministically from `seed` and `keys` (e.g. a worker or stage index)."""
    entropy = [seed] + [k if isinstance(k, int) else int.from_bytes(k.encode(), "little") for k in keys]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] % 2**63)
