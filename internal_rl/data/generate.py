"""Expert rollouts: successful episodes of the scripted expert, as in-memory datasets or dataset folders.

The grid-world expert is rolled out in batches of vectorised environments (`BatchedGridWorld`); the only
Python loop is over time steps within a batch. Only successful episodes are kept (paper App. C.1: the
pretraining data are "successful trajectories"), in the order their environments were created, so the
same seed gives the same arrays.

Work is planned in rounds of chunks: each round's chunk sizes and seeds depend only on the seed and the
results of earlier rounds, never on who rolls the chunks out or in which order they finish. A chunk is a
pure function of (config, size, seed, epsilon) (`rollout_chunk`), so `internal_rl.distributed` rolls the
very same chunks out on Ray workers and the merged arrays are byte-identical to the local ones.
"""

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from internal_rl.common.config import config_to_dict, config_from_dict
from internal_rl.common.errors import ConfigError, DatasetError
from internal_rl.common.logging import progress
from internal_rl.common.seeding import derive_seed
from internal_rl.data.dataset import TrajectoryDataset, check_writable, save_dataset
from internal_rl.envs.batched_gridworld import BatchedGridWorld
from internal_rl.envs.expert import GridExpert
from internal_rl.envs.gridworld import GridWorldConfig
from internal_rl.envs.registry import env_spec
from internal_rl.envs.tasks import Task, with_tasks


# Give up when the expert succeeds this rarely: generation would not finish in reasonable time.
_MIN_SUCCESS_RATE = 0.01


def _check_env(env: str) -> None:
    env_spec(env)


def env_config_from_manifest(manifest: dict[str, Any]) -> Any:
    """The environment config a dataset was generated with (e.g. a `GridWorldConfig`), from its manifest."""
    spec = env_spec(manifest.get("env"))
    return config_from_dict(spec.config_type, manifest["env_config"])


def _grid_config(config: Any, tasks: Sequence[Task] | None) -> Any:
    return with_tasks(GridWorldConfig() if config is None else config, tasks)


def rollout_chunk(config: Any, num_envs: int, seed: int, epsilon: float,
                  noiseless: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Roll the expert out in `num_envs` fresh environments until all are done.

    Returns (arrays in the dataset format for the successful episodes, success flags [num_envs]).
    """
    env = BatchedGridWorld(config, num_envs)
    expert = GridExpert(config, epsilon=epsilon, noiseless=noiseless)
    rng = np.random.default_rng(derive_seed(seed, "expert"))
    subgoal_table = env_spec("gridworld").subgoal_table(config.n_colours)

    obs = env.reset(seed=derive_seed(seed, "reset"))
    final_obs = np.zeros((num_envs, obs.shape[1]), dtype=np.uint8)
    lengths = np.zeros(num_envs, dtype=np.int64)
    steps: dict[str, list[np.ndarray]] = {"observations": [], "actions": [], "rewards": [], "targets": []}
    alive = ~env.done
    while alive.any():  # loop over time: the recurrence of the environment demands it
        targets = env.target()
        actions = expert.act(env, rng)
        steps["observations"].append(obs.astype(np.uint8))
        steps["targets"].append(targets.astype(np.int8))
        steps["actions"].append(np.asarray(actions, dtype=np.int64))
        obs, reward, terminated, truncated, _ = env.step(actions)
        steps["rewards"].append(np.asarray(reward, dtype=np.float32))
        lengths += alive
        finished = alive & (terminated | truncated)
        final_obs[finished] = obs[finished]
        alive &= ~finished

    success = env.success
    keep = np.flatnonzero(success)
    kept_lengths = lengths[keep]
    # [T, N, ...] time-major buffers -> flat steps of the kept episodes, each episode's steps in order.
    horizon = len(steps["actions"])
    real = np.arange(horizon)[None, :] < kept_lengths[:, None]  # [K, T]
    arrays = {name: np.stack(values, axis=1)[keep][real] for name, values in steps.items()}
    arrays["subgoals"] = subgoal_table[arrays["targets"]].astype(np.int8)
    arrays["episode_lengths"] = kept_lengths
    arrays["episode_starts"] = (np.cumsum(kept_lengths) - kept_lengths).astype(np.int64)
    arrays["tasks"] = env.tasks[keep].astype(np.int8)
    arrays["final_observations"] = final_obs[keep]
    return arrays, success


# map_chunks(config, epsilon, noiseless, [(num_envs, seed), ...]) -> the `rollout_chunk` results, in order.
MapChunks = Callable[[Any, float, bool, list[tuple[int, int]]], Iterable[tuple[dict[str, np.ndarray], np.ndarray]]]


def map_chunks_locally(config: Any, epsilon: float, noiseless: bool,
                       chunks: list[tuple[int, int]]) -> Iterable[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Roll the chunks out one after another in this process (the default `MapChunks`)."""
    return (rollout_chunk(config, num_envs, seed, epsilon, noiseless) for num_envs, seed in chunks)


def plan_round(needed: int, rate: float, batch_size: int) -> list[int]:
    """Chunk sizes for the next round: enough environments for `needed` successes at success rate `rate`
    (plus 5% and 8 spare), in chunks of at most `batch_size`."""
    total = int(np.ceil(needed / max(rate, _MIN_SUCCESS_RATE) * 1.05) + 8)
    return [batch_size] * (total // batch_size) + ([total % batch_size] if total % batch_size else [])


def _concatenate(parts: list[dict[str, np.ndarray]], episodes: int) -> dict[str, np.ndarray]:
    """Join per-batch arrays and keep the first `episodes` episodes."""
    arrays = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    lengths = arrays["episode_lengths"][:episodes]
    num_steps = int(lengths.sum())
    for name in ("observations", "actions", "rewards", "targets", "subgoals"):
        arrays[name] = arrays[name][:num_steps]
    for name in ("tasks", "final_observations"):
        arrays[name] = arrays[name][:episodes]
    arrays["episode_lengths"] = lengths
    arrays["episode_starts"] = (np.cumsum(lengths) - lengths).astype(np.int64)
    return arrays


def flatten_episodes(padded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Padded per-episode arrays (`pinpad_expert.collect_episodes`: [N, T, ...] and `lengths` [N]) in the
    dataset's flat format (steps of all episodes back to back)."""
    lengths = padded["lengths"].astype(np.int64)
    real = np.arange(padded["actions"].shape[1])[None, :] < lengths[:, None]  # [N, T]
    return {
        "observations": padded["observations"][real].astype(np.float32),
        "actions": padded["actions"][real].astype(np.float32),
        "rewards": padded["rewards"][real].astype(np.float32),
        "targets": padded["targets"][real].astype(np.int8),
        "subgoals": padded["subgoals"][real].astype(np.int8),
        "episode_lengths": lengths,
        "episode_starts": (np.cumsum(lengths) - lengths).astype(np.int64),
        "tasks": padded["tasks"].astype(np.int8),
        "final_observations": padded["final_observations"].astype(np.float32),
    }


def _pinpad_trajectories(
    env: str, episodes: int, seed: int, tasks: Sequence[Task] | None, config: Any, mean_actions: bool,
    show_progress: bool,
) -> TrajectoryDataset:
    """Successful episodes of a pinpad env's expert (its Gaussian policy, or its mean with `mean_actions`).

    The manifest records the env config the expert actually rolled out in (the ant's: the one it was
    trained in) and the expert's own config.
    """
    data = env_spec(env).expert(config, tasks, episodes, seed, mean_actions, show_progress)
    manifest = {
        "env": env,
        "env_config": config_to_dict(data.env_config),
        "seed": int(seed),
        "expert": data.expert,
        "expert_config": data.expert_config,
        "expert_epsilon": 0.0,
        "expert_mean_actions": bool(mean_actions),
        "expert_success_rate": float(data.arrays["expert_success_rate"]),
        "episodes_attempted": int(data.arrays["episodes_attempted"]),
    }
    return TrajectoryDataset.from_arrays(flatten_episodes(data.arrays), manifest)


def generate_trajectories(
    env: str,
    episodes: int,
    seed: int,
    epsilon: float = 0.0,
    tasks: Sequence[Task] | None = None,
    *,
    config: Any = None,
    batch_size: int = 1024,
    show_progress: bool = False,
    map_chunks: MapChunks = map_chunks_locally,
    mean_actions: bool = False,
) -> TrajectoryDataset:
    """`episodes` successful expert episodes as an in-memory `TrajectoryDataset` (nothing is written).

    `tasks` (default: the config's pretraining tasks) are sampled uniformly per episode; `config` is the
    environment config (default `GridWorldConfig()`); `epsilon` is the expert's random-action probability.
    The manifest holds the provenance that `save_dataset` writes; `checksum` is None until saved.
    `map_chunks` rolls out each round's chunks (default: here, one after another); any implementation that
    returns `rollout_chunk`'s results in order gives the same arrays.
    For the pinpad envs (`config` default: the env's; the ant's: the one its expert was trained in), the
    expert's Gaussian force noise replaces epsilon (which must be 0), and `mean_actions` records its
    noiseless mean actions instead (the paper's D*); for the grid world `mean_actions` is the noiseless
    expert (`GridExpert`: a fixed order among the shortest-path actions). Either way `show_progress` shows
    a bar of the kept episodes, and the manifest's `episodes_attempted` counts every episode rolled out.
    """
    _check_env(env)
    if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ConfigError(f"episodes {episodes!r} must be a positive integer")
    if not 0.0 <= epsilon <= 1.0:
        raise ConfigError(f"epsilon {epsilon} must be in [0, 1]")
    if batch_size < 1:
        raise ConfigError(f"batch_size {batch_size} must be >= 1")
    if env != "gridworld":
        if epsilon != 0.0:
            raise ConfigError(f"epsilon {epsilon} applies to the grid world only; {env} experts have Gaussian noise")
        if map_chunks is not map_chunks_locally:
            raise ConfigError(f"distributed generation (--ray) supports gridworld only, not {env}")
        return _pinpad_trajectories(env, episodes, seed, tasks, config, mean_actions, show_progress)
    if mean_actions and epsilon:
        raise ConfigError(f"mean_actions (--mean-actions) is the noiseless expert; it takes no epsilon (got {epsilon})")
    config = _grid_config(config, tasks)

    parts: list[dict[str, np.ndarray]] = []
    collected = attempted = succeeded = 0
    bar = progress(total=episodes, desc=f"generate {env}", disable=not show_progress)
    batch_index = 0
    with bar:
        while collected < episodes:
            # Each round is sized to what is still needed at the success rate seen so far; the plan
            # depends only on earlier rounds, so it is the same wherever the chunks are rolled out.
            rate = succeeded / attempted if attempted else 1.0
            if attempted >= 2 * batch_size and rate < _MIN_SUCCESS_RATE:
                raise DatasetError(
                    f"the {env} expert succeeded in only {succeeded} of {attempted} episodes "
                    f"(epsilon={epsilon}); use a smaller epsilon or easier tasks"
                )
            sizes = plan_round(episodes - collected, rate, batch_size)
            chunks = [(size, derive_seed(seed, "batch", batch_index + i)) for i, size in enumerate(sizes)]
            batch_index += len(chunks)
            for (num_envs, _), (arrays, success) in zip(chunks, map_chunks(config, epsilon, mean_actions, chunks), strict=True):
                attempted += num_envs
                succeeded += int(success.sum())
                parts.append(arrays)
                bar.update(max(0, min(episodes - collected, arrays["episode_lengths"].shape[0])))
                collected += arrays["episode_lengths"].shape[0]
                bar.set_postfix(success=f"{succeeded / attempted:.3f}")

    manifest = {
        "env": env,
        "env_config": config_to_dict(config),
        "seed": int(seed),
        "expert": "GridExpert",
        "expert_epsilon": float(epsilon),
        "expert_mean_actions": bool(mean_actions),
        "expert_success_rate": succeeded / attempted,
        "episodes_attempted": attempted,
        "generation_batch_size": int(batch_size),
    }
    return TrajectoryDataset.from_arrays(_concatenate(parts, episodes), manifest)


def generate_dataset(
    env: str,
    episodes: int,
    out: str | Path,
    seed: int,
    force: bool = False,
    epsilon: float = 0.0,
    tasks: Sequence[Task] | None = None,
    *,
    config: Any = None,
    batch_size: int = 1024,
    show_progress: bool = True,
    map_chunks: MapChunks = map_chunks_locally,
    mean_actions: bool = False,
) -> Path:
    """Roll out the expert (see `generate_trajectories`) and write the dataset folder `out` atomically.

    Refuses to overwrite an existing dataset unless `force`; that is checked before any rollout.
    Returns `out`.
    """
    out = Path(out)
    check_writable(out, force)
    data = generate_trajectories(
        env, episodes, seed, epsilon, tasks, config=config, batch_size=batch_size, show_progress=show_progress,
        map_chunks=map_chunks, mean_actions=mean_actions,
    )
    return save_dataset(out, data.arrays, data.manifest, force=force)
