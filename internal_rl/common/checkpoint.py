"""Checkpoints: safetensors weights, a JSON config, and the training state needed to resume exactly.

A checkpoint is a folder written atomically: it is assembled in a temporary sibling, flushed to disk, and
renamed into place, so neither a killed process nor a lost machine leaves a folder that looks complete.
Beside its files it records their sizes and SHA-256 digests (`checksums.json`); loading verifies them, so
a truncated or damaged file is named in a one-line error instead of failing deep inside a reader.
Temporary folders left by a save that was killed are removed by the next save to the same place.
"""

import hashlib
import os
import random
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from internal_rl.common.config import load_json, save_json
from internal_rl.common.errors import CheckpointError, ConfigError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAINING_STATE = "training_state.pt"
CHECKSUMS = "checksums.json"


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of_file(path: Path) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _remove_stale(path: Path) -> None:
    """Remove the temporary siblings that an interrupted save of `path` left behind."""
    for pattern in (f".{path.name}.tmp-*", f".{path.name}.old-*"):
        for stale in path.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        for item in tmp.rglob("*"):
            if item.is_file():
                _fsync(item)
        _fsync(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        path.rename(old)
    tmp.rename(path)
    _fsync(path.parent)
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
        _write_checksums(tmp)


def _write_checksums(folder: Path) -> None:
    files = [name for name in (WEIGHTS, CONFIG, TRAINING_STATE) if (folder / name).is_file()]
    save_json(folder / CHECKSUMS, {name: {"bytes": (folder / name).stat().st_size,
                                          "sha256": sha256_of_file(folder / name)} for name in files})


def copy_weights(source: Path, destination: Path, config_update: dict[str, Any] | None = None) -> None:
    """Copy checkpoint `source`'s weights and config (verified first; not its training state) to a new
    checkpoint folder `destination`: a model to use, not a run to resume. `config_update` replaces top-level
    keys of the copied config (e.g. where its dataset now lives)."""
    verify_checkpoint(source)
    with atomic_directory(Path(destination)) as tmp:
        for name in (WEIGHTS, CONFIG):
            if not (Path(source) / name).is_file():
                raise CheckpointError(f"no checkpoint at {source}: expected {WEIGHTS} and {CONFIG}")
            shutil.copyfile(Path(source) / name, tmp / name)
        if config_update:
            save_json(tmp / CONFIG, {**load_json(tmp / CONFIG), **config_update})
        _write_checksums(tmp)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any] | None]:
    """Return (weights, config, training_state or None) from a checkpoint folder."""
    path = Path(path)
    if not (path / WEIGHTS).is_file() or not (path / CONFIG).is_file():
        raise CheckpointError(f"no checkpoint at {path}: expected {WEIGHTS} and {CONFIG}")
    verify_checkpoint(path)
    state_file = path / TRAINING_STATE
    try:
        weights = load_file(str(path / WEIGHTS))
        config = load_json(path / CONFIG)
        # Onto the CPU, whatever device wrote it: the optimizer's load_state_dict moves its state to the parameters'.
        state = torch.load(state_file, map_location="cpu", weights_only=False) if state_file.is_file() else None
    except CheckpointError:
        raise
    except Exception as err:  # a checkpoint from before checksums were kept, damaged: any reader's error
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is damaged ({reason}); retrain that stage or restore the folder") from None
    return weights, config, state


def verify_checkpoint(path: Path) -> None:
    """Check each file listed in PATH/checksums.json for its recorded size and SHA-256 (CheckpointError naming
    the first that differs or is missing); a checkpoint saved before checksums were kept passes unchecked."""
    path = Path(path)
    if not (path / CHECKSUMS).is_file():
        return
    try:
        recorded = load_json(path / CHECKSUMS)
        entries = [(name, int(entry["bytes"]), str(entry["sha256"])) for name, entry in recorded.items()]
    except (AttributeError, KeyError, TypeError, ValueError, ConfigError):
        raise CheckpointError(f"{path / CHECKSUMS} is malformed; retrain that stage or restore the folder") from None
    for name, size, digest in entries:
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} is missing {name}; retrain that stage or restore the folder")
        if file.stat().st_size != size:
            raise CheckpointError(f"{file} has {file.stat().st_size} bytes, {size} when saved: it is truncated or "
                                  "damaged; retrain that stage or restore the folder")
        if sha256_of_file(file) != digest:
            raise CheckpointError(f"{file} does not match its recorded SHA-256: it is damaged; retrain that stage "
                                  "or restore the folder")


def rng_state() -> dict[str, Any]:
    """The global RNG states a resumed run must restore to continue with identical numbers."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
