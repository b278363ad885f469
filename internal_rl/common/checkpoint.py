"""Checkpoints: safetensors weights, a JSON config, and the training state needed to resume exactly.

A checkpoint is a folder written atomically: it is assembled in a temporary sibling and renamed
into place, so an interrupted save never leaves a folder that looks complete.
"""

import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file

from internal_rl.common.config import load_json, save_json
from internal_rl.common.errors import CheckpointError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAINING_STATE = "training_state.pt"


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        path.rename(old)
    tmp.rename(path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    config: dict[str, Any],
    training_state: dict[str, Any] | None = None,
) -> None:
    """Save weights (safetensors), `config` (JSON) and, if given, `training_state` (optimizer, RNG, step)."""
    with atomic_directory(path) as tmp:
        tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS))
        save_json(tmp / CONFIG, config)
        if training_state is not None:
            torch.save(training_state, tmp / TRAINING_STATE)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any] | None]:
    """Return (weights, config, training_state or None) from a checkpoint folder."""
    path = Path(path)
    if not (path / WEIGHTS).is_file() or not (path / CONFIG).is_file():
        raise CheckpointError(f"no checkpoint at {path}: expected {WEIGHTS} and {CONFIG}")
    weights = load_file(str(path / WEIGHTS))
    config = load_json(path / CONFIG)
    state_file = path / TRAINING_STATE
    # Onto the CPU, whatever device wrote it: the optimizer's load_state_dict moves its state to the parameters'.
    state = torch.load(state_file, map_location="cpu", weights_only=False) if state_file.is_file() else None
    return weights, config, state


def rng_state() -> dict[str, Any]:
    """The global RNG states a resumed run must restore to continue with identical numbers."""
    import random

    import numpy as np

    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
