"""The trajectory dataset format: a folder with `manifest.json` and `trajectories.npz`, verified on load.

A dataset holds N episodes as flat arrays over all S steps; episode i is the step range
`episode_starts[i] : episode_starts[i] + episode_lengths[i]` (episodes are stored back to back, in order).

    observations       [S, obs_dim]  uint8 (grid world) or float32; o_t, seen before a_t
    actions            [S] int64, or [S, act_dim] float32 for continuous actions
    rewards            [S] float32
    targets            [S] int8      the colour being sought at step t
    subgoals           [S] int8      the subgoal (colour pair) of that colour, -1 where a colour has none
    episode_starts     [N] int64
    episode_lengths    [N] int64     T_i >= 1
    tasks              [N, Lmax] int8, -1 padded
    final_observations [N, obs_dim]  o_{T+1}, the observation after the last action

`manifest.json` records where the data came from (env, env config, seed, expert epsilon and success rate,
package version, creation time) and what the folder must contain (each file's sha256 and size, each array's
shape and dtype). `load_dataset` checks all of it, so a truncated, corrupted or foreign folder is refused
with a `DatasetError` instead of training on bad data. Writing is atomic: an interrupted write leaves no
folder that looks complete.
"""

import json
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

import internal_rl
from internal_rl.common.checkpoint import atomic_directory, sha256_of_file
from internal_rl.common.errors import ConfigError, DatasetError
from internal_rl.envs.gridworld import N_ACTIONS as GRID_ACTIONS

FORMAT_NAME = "internal-rl-trajectories"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TRAJECTORIES = "trajectories.npz"

STEP_ARRAYS = ("observations", "actions", "rewards", "targets", "subgoals")
EPISODE_ARRAYS = ("episode_starts", "episode_lengths", "tasks", "final_observations")
REQUIRED_ARRAYS = STEP_ARRAYS + EPISODE_ARRAYS

# Padding written into `batch()` beyond an episode's end. Labels use -1 ("no label") so that an unmasked
# use of a padded step fails loudly (e.g. in one_hot) instead of silently counting as colour/subgoal 0.
LABEL_PAD = -1

# What a damaged npz can raise while being opened or decompressed.
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError)


def validate_arrays(arrays: Mapping[str, np.ndarray], where: str = "arrays") -> None:
    """Raise `DatasetError` unless `arrays` hold the required arrays with consistent shapes and boundaries.

    `where` names the source (a file path or "arrays") in the message.
    """
    missing = [name for name in REQUIRED_ARRAYS if name not in arrays]
    if missing:
        raise DatasetError(f"{where}: missing array(s) {missing}; required: {list(REQUIRED_ARRAYS)}")
    obs = arrays["observations"]
    if obs.ndim != 2:
        raise DatasetError(f"{where}: observations must be [S, obs_dim], got shape {obs.shape}")
    num_steps, obs_dim = obs.shape
    for name in STEP_ARRAYS:
        if arrays[name].shape[:1] != (num_steps,):
            raise DatasetError(f"{where}: {name} has shape {arrays[name].shape}; expected {num_steps} steps first")
    for name in ("rewards", "targets", "subgoals"):
        if arrays[name].ndim != 1:
            raise DatasetError(f"{where}: {name} must be [S], got shape {arrays[name].shape}")
    starts, lengths = arrays["episode_starts"], arrays["episode_lengths"]
    if starts.ndim != 1 or lengths.shape != starts.shape or starts.shape[0] == 0:
        raise DatasetError(
            f"{where}: episode_starts {starts.shape} and episode_lengths {lengths.shape} must be equal, non-empty [N]"
        )
    if not (np.issubdtype(starts.dtype, np.integer) and np.issubdtype(lengths.dtype, np.integer)):
        raise DatasetError(f"{where}: episode boundaries must be integers, got {starts.dtype}, {lengths.dtype}")
    num_episodes = starts.shape[0]
    if arrays["tasks"].ndim != 2 or arrays["tasks"].shape[0] != num_episodes:
        raise DatasetError(f"{where}: tasks has shape {arrays['tasks'].shape}; expected [{num_episodes}, Lmax]")
    if arrays["final_observations"].shape != (num_episodes, obs_dim):
        raise DatasetError(
            f"{where}: final_observations has shape {arrays['final_observations'].shape}; "
            f"expected ({num_episodes}, {obs_dim})"
        )
    expected_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    if lengths.min() < 1 or not np.array_equal(starts, expected_starts) or lengths.sum() != num_steps:
        raise DatasetError(
            f"{where}: episode boundaries inconsistent: starts/lengths must tile the {num_steps} steps "
            f"back to back (lengths sum to {int(lengths.sum())}, min length {int(lengths.min())})"
        )


class TrajectoryDataset:
    """Expert episodes in memory (a whole dataset or a subset of its episodes), served as padded batches.

    Subsets made by `split` or `subset` share the parent's arrays; `num_episodes` and the indices passed to
    `batch` refer to the subset's own episodes 0..num_episodes-1.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        manifest: Mapping[str, Any],
        checksum: str | None = None,
        episode_ids: np.ndarray | None = None,
    ):
        """Wrap already validated `arrays` (see `from_arrays` for unvalidated ones).

        `checksum` is the sha256 of the trajectories file, None for data never written to disk;
        `episode_ids` selects a subset of the episodes in `arrays` (default: all).
        """
        self._arrays = dict(arrays)
        self.manifest: dict[str, Any] = dict(manifest)
        self.checksum = checksum
        total = self._arrays["episode_starts"].shape[0]
        ids = np.arange(total) if episode_ids is None else np.asarray(episode_ids, dtype=np.int64)
        self._episode_ids = ids
        self._starts = self._arrays["episode_starts"].astype(np.int64)
        self._lengths = self._arrays["episode_lengths"].astype(np.int64)

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], manifest: Mapping[str, Any] | None = None
    ) -> "TrajectoryDataset":
        """An in-memory dataset (e.g. fresh expert data) after checking the arrays; `checksum` is None."""
        validate_arrays(arrays)
        return cls(arrays, manifest or {})

    # --- sizes and raw access -------------------------------------------------------------------------

    @property
    def num_episodes(self) -> int:
        return int(self._episode_ids.shape[0])

    @property
    def num_steps(self) -> int:
        """Total number of steps in this dataset's (or subset's) episodes."""
        return int(self._lengths[self._episode_ids].sum())

    @property
    def obs_dim(self) -> int:
        return int(self._arrays["observations"].shape[1])

    @property
    def episode_ids(self) -> np.ndarray:
        """Indices of this subset's episodes in the stored arrays (identity for a whole dataset)."""
        return self._episode_ids.copy()

    @property
    def episode_lengths(self) -> np.ndarray:
        """[num_episodes] int64 number of actions in each episode."""
        return self._lengths[self._episode_ids]

    @property
    def arrays(self) -> Mapping[str, np.ndarray]:
        """The stored flat arrays of the whole dataset (not just this subset); treat as read-only."""
        return self._arrays

    def episode(self, index: int) -> dict[str, np.ndarray]:
        """Episode `index` as unpadded numpy arrays (step arrays sliced, episode arrays indexed)."""
        i = int(self._episode_ids[self._check_indices(np.array([index]))[0]])
        start, length = self._starts[i], self._lengths[i]
        out = {name: self._arrays[name][start : start + length] for name in STEP_ARRAYS}
        out["tasks"] = self._arrays["tasks"][i]
        out["final_observation"] = self._arrays["final_observations"][i]
        return out

    # --- subsets --------------------------------------------------------------------------------------

    def subset(self, episode_indices: Sequence[int] | np.ndarray) -> "TrajectoryDataset":
        """A dataset of the given episodes of this one (indices into this dataset), sharing its arrays."""
        local = self._check_indices(np.asarray(episode_indices, dtype=np.int64))
        return TrajectoryDataset(self._arrays, self.manifest, self.checksum, self._episode_ids[local])

    def split(self, holdout_fraction: float, seed: int) -> tuple["TrajectoryDataset", "TrajectoryDataset"]:
        """(train, held_out): a seeded random partition of the episodes, `holdout_fraction` of them held out.

        The same seed gives the same partition; each part keeps the episodes in stored order.
        """
        if not 0.0 < holdout_fraction < 1.0:
            raise ConfigError(f"holdout_fraction {holdout_fraction} must be in (0, 1)")
        n = self.num_episodes
        n_held = int(round(holdout_fraction * n))
        if n_held < 1 or n_held > n - 1:
            raise ConfigError(
                f"holdout_fraction {holdout_fraction} of {n} episodes leaves an empty part; use more episodes"
            )
        order = np.random.default_rng(seed).permutation(n)
        return self.subset(np.sort(order[n_held:])), self.subset(np.sort(order[:n_held]))

    # --- batches --------------------------------------------------------------------------------------

    def batch(
        self, episode_indices: Sequence[int] | np.ndarray, device: torch.device | str | None = None
    ) -> dict[str, torch.Tensor]:
        """Episodes `episode_indices` as torch tensors padded to the longest of them (T steps).

        Returns `observations` and `next_observations` [B,T,obs_dim] float32 (next_observations[:, t] is
        o_{t+1}: the following step's observation, or the final observation at an episode's last step),
        `actions` [B,T] int64 (or [B,T,act_dim] float32), `rewards` [B,T] float32, `targets` and `subgoals`
        [B,T] int64, `mask` [B,T] bool (True on real steps), `lengths` [B] int64 and `tasks` [B,Lmax] int64.
        Padded steps hold 0, except targets and subgoals which hold -1.
        """
        local = self._check_indices(np.asarray(episode_indices, dtype=np.int64))
        if local.size == 0:
            raise ConfigError("batch() needs at least one episode index")
        ids = self._episode_ids[local]
        starts, lengths = self._starts[ids], self._lengths[ids]
        batch_size, horizon = ids.shape[0], int(lengths.max())
        t = np.arange(horizon)
        mask = t[None, :] < lengths[:, None]  # [B,T]
        # Gather indices into the flat step arrays; padded positions repeat the episode's last step and
        # are overwritten below, so every gather is one vectorised take.
        step_index = starts[:, None] + np.minimum(t[None, :], lengths[:, None] - 1)  # [B,T]
        observations = self._arrays["observations"]
        num_steps = observations.shape[0]
        obs = observations[step_index]  # [B,T,obs_dim]
        next_obs = observations[np.minimum(step_index + 1, num_steps - 1)]
        next_obs[np.arange(batch_size), lengths - 1] = self._arrays["final_observations"][ids]
        pad = ~mask
        obs[pad] = 0
        next_obs[pad] = 0
        out = {
            # numpy's uint8 -> float32 cast is ~20x faster than torch's on CPU
            "observations": torch.from_numpy(obs.astype(np.float32, copy=False)),
            "next_observations": torch.from_numpy(next_obs.astype(np.float32, copy=False)),
            "mask": torch.from_numpy(mask),
            "lengths": torch.from_numpy(lengths.copy()),
            "tasks": torch.from_numpy(self._arrays["tasks"][ids].astype(np.int64)),
        }
        for name, fill in (("actions", 0), ("rewards", 0), ("targets", LABEL_PAD), ("subgoals", LABEL_PAD)):
            values = self._arrays[name][step_index]
            if np.issubdtype(values.dtype, np.integer):
                values = values.astype(np.int64)
            values[pad] = fill
            out[name] = torch.from_numpy(values)
        if device is not None:
            out = {name: tensor.to(device) for name, tensor in out.items()}
        return out

    def iter_batches(
        self, batch_size: int, seed: int, epoch: int = 0, *, shuffle: bool = True, drop_last: bool = False
    ) -> Iterator[dict[str, torch.Tensor]]:
        """One pass over the episodes in batches of `batch_size`, in an order fixed by (seed, epoch)."""
        for indices in self._epoch_indices(batch_size, seed, epoch, shuffle, drop_last):
            yield self.batch(indices)

    def infinite_batches(
        self, batch_size: int, seed: int, start_step: int = 0, device: torch.device | str | None = None
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of exactly `batch_size` episodes for step-based training, epoch after shuffled epoch, on
        `device` (default: the CPU).

        The stream is a function of `seed` alone; starting at `start_step` yields the same batches an
        uninterrupted stream yields from that step on, so a resumed run sees the data it would have seen.
        """
        per_epoch = self.num_episodes // batch_size if batch_size >= 1 else 0
        if per_epoch == 0:
            raise ConfigError(f"batch_size {batch_size} must be in 1..{self.num_episodes} (the number of episodes)")
        epoch, offset = divmod(start_step, per_epoch)
        while True:
            batches = self._epoch_indices(batch_size, seed, epoch, shuffle=True, drop_last=True)
            for indices in batches[offset:]:
                yield self.batch(indices, device)
            epoch, offset = epoch + 1, 0

    def _epoch_indices(
        self, batch_size: int, seed: int, epoch: int, shuffle: bool, drop_last: bool
    ) -> list[np.ndarray]:
        if batch_size < 1:
            raise ConfigError(f"batch_size {batch_size} must be >= 1")
        n = self.num_episodes
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        stop = n - n % batch_size if drop_last else n
        return [order[i : i + batch_size] for i in range(0, stop, batch_size)]

    def _check_indices(self, local: np.ndarray) -> np.ndarray:
        if local.ndim != 1:
            raise ConfigError(f"episode indices must be a flat sequence, got shape {local.shape}")
        if local.size and (local.min() < -self.num_episodes or local.max() >= self.num_episodes):
            raise ConfigError(f"episode index out of range; valid: 0..{self.num_episodes - 1}")
        return local % max(self.num_episodes, 1)

    def __len__(self) -> int:
        return self.num_episodes

    def __repr__(self) -> str:
        return (
            f"TrajectoryDataset(env={self.manifest.get('env')!r}, episodes={self.num_episodes}, "
            f"steps={self.num_steps}, obs_dim={self.obs_dim})"
        )

    # --- writing --------------------------------------------------------------------------------------

    def save(self, path: str | Path, force: bool = False) -> Path:
        """Write this dataset (a subset is written as its own episodes only) to `path`; see `save_dataset`."""
        if np.array_equal(self._episode_ids, np.arange(self._starts.shape[0])):
            arrays = self._arrays
        else:
            arrays = _select_episodes(self._arrays, self._episode_ids)
        return save_dataset(path, arrays, self.manifest, force=force)


def _select_episodes(arrays: Mapping[str, np.ndarray], ids: np.ndarray) -> dict[str, np.ndarray]:
    """New flat arrays holding only episodes `ids`, back to back."""
    starts, lengths = arrays["episode_starts"][ids], arrays["episode_lengths"][ids]
    steps = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)])
    out = {name: arrays[name][steps] for name in STEP_ARRAYS}
    out.update({name: arrays[name][ids] for name in ("tasks", "final_observations")})
    out["episode_lengths"] = lengths.astype(np.int64)
    out["episode_starts"] = (np.cumsum(lengths) - lengths).astype(np.int64)
    return out


def check_writable(path: str | Path, force: bool) -> None:
    """Raise `DatasetError` if writing a dataset to `path` would overwrite something it should not.

    An existing dataset is replaced only with `force`; an empty folder may be used; anything else
    (a file, a folder that is not a dataset) is never overwritten, even with `force`.
    """
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise DatasetError(f"{path} exists and is not a folder; choose another dataset path")
    if not any(path.iterdir()):
        return
    if not (path / MANIFEST).is_file():
        raise DatasetError(
            f"{path} is a non-empty folder without {MANIFEST}; refusing to overwrite it, even with --force"
        )
    if not force:
        raise DatasetError(f"dataset already exists at {path}; pass --force to overwrite it")


def save_dataset(
    path: str | Path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any], force: bool = False
) -> Path:
    """Write `arrays` and a manifest (provenance `metadata` plus sizes, checksums, shapes) to folder `path`.

    The folder is built in a temporary sibling and renamed into place, so an interrupted write leaves
    no dataset. Returns `path`.
    """
    path = Path(path)
    validate_arrays(arrays)
    check_writable(path, force)
    with atomic_directory(path) as tmp:
        np.savez_compressed(tmp / TRAJECTORIES, **{name: np.ascontiguousarray(a) for name, a in arrays.items()})
        manifest = dict(metadata)
        manifest.update(
            {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "episodes": int(arrays["episode_starts"].shape[0]),
                "steps": int(arrays["observations"].shape[0]),
                "package_version": internal_rl.__version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "files": {
                    TRAJECTORIES: {"sha256": sha256_of_file(tmp / TRAJECTORIES),
                                   "bytes": (tmp / TRAJECTORIES).stat().st_size}
                },
                "arrays": {name: {"shape": list(a.shape), "dtype": a.dtype.str} for name, a in arrays.items()},
            }
        )
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the dataset at `path`, checked for format and version (DatasetError otherwise)."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"no dataset at {path}: folder does not exist (create one with `internal-rl generate`)")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise DatasetError(f"{manifest_path}: missing; {path} is not a complete dataset")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{manifest_path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise DatasetError(f"{manifest_path}: not an {FORMAT_NAME} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DatasetError(
            f"{manifest_path}: format version {version!r}, this internal-rl reads version {FORMAT_VERSION}; "
            "regenerate the dataset"
        )
    for key in ("files", "arrays"):
        entries = manifest.get(key)
        if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
            raise DatasetError(f"{manifest_path}: missing or malformed '{key}' entry")
    if TRAJECTORIES not in manifest["files"]:
        raise DatasetError(f"{manifest_path}: lists no {TRAJECTORIES}")
    return manifest


def load_dataset(path: str | Path) -> TrajectoryDataset:
    """Load and verify the dataset at `path`: manifest, file size and sha256, array shapes and dtypes,
    episode boundaries. Any failure raises a one-line `DatasetError` naming the file and the problem."""
    path = Path(path)
    manifest = read_manifest(path)
    file = path / TRAJECTORIES
    if not file.is_file():
        raise DatasetError(f"{file}: missing")
    expected = manifest["files"][TRAJECTORIES]
    size = file.stat().st_size
    if size != expected.get("bytes"):
        raise DatasetError(f"{file}: {size} bytes, manifest says {expected.get('bytes')} (truncated or replaced)")
    checksum = sha256_of_file(file)
    if checksum != expected.get("sha256"):
        raise DatasetError(f"{file}: sha256 {checksum[:12]}... does not match the manifest (file is corrupted)")
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(file, allow_pickle=False) as npz:
            for name, spec in manifest["arrays"].items():
                if name not in npz.files:
                    raise DatasetError(f"{file}: lacks array '{name}' listed in the manifest")
                array = npz[name]
                if list(array.shape) != spec.get("shape") or array.dtype.str != spec.get("dtype"):
                    raise DatasetError(
                        f"{file}: array '{name}' is {array.dtype.str}{list(array.shape)}, "
                        f"manifest says {spec.get('dtype')}{spec.get('shape')}"
                    )
                arrays[name] = array
    except _READ_ERRORS as err:
        raise DatasetError(f"{file}: unreadable ({type(err).__name__}: {err})") from None
    validate_arrays(arrays, where=str(file))
    actions = arrays["actions"]
    grid = manifest.get("env", "gridworld") == "gridworld" and actions.dtype.kind in "iu"
    if grid and (actions.min() < 0 or actions.max() >= GRID_ACTIONS):
        raise DatasetError(f"{file}: grid-world actions range over {actions.min()}..{actions.max()}; "
                           f"valid: 0..{GRID_ACTIONS - 1} (the file does not hold grid-world actions)")
    return TrajectoryDataset(arrays, manifest, checksum)
