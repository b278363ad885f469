"""The scripted point-pinpad expert and vectorised expert rollouts for the continuous pinpad tasks.

`PointExpert` plans on the cell grid and steers in the plane. For each env it follows a grid-level
shortest path to the next colour of its task that avoids the wall and every other colour
(`shortest_path_directions`; ties broken by a route preference drawn once per episode, so the route is
random across episodes but does not flicker within one), and tracks it with a velocity controller: the
desired velocity is `speed` along the path's next move plus a pull (`lateral_gain`) towards the centre
line of the current cell, so the body crosses cell edges away from corners and never cuts across a
forbidden neighbour; the force is a proportional velocity error plus the push that holds the desired
speed against damping. Gaussian noise of standard deviation `noise_std` on the force makes the
demonstrations stochastic (the paper's pretraining data D are sampled from the stochastic expert, the
cleaner data D* from its mean: `noise_std=0`). Where the next colour cannot be reached (the wall and the
other colours block it) the expert holds still at its cell centre, and the episode times out.

`rollout_expert` rolls any batched pinpad environment and expert out until every episode ends and returns
padded per-episode arrays; `collect_episodes` repeats it until enough episodes are kept;
`point_expert_episodes` is the point-pinpad data generator.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from internal_rl.common.errors import ConfigError
from internal_rl.common.logging import progress
from internal_rl.envs.pinpad import DIRECTIONS_XY, cell_centres, check_positive_float, shortest_path_directions
from internal_rl.envs.point_pinpad import BatchedPointPinpad, PointPinpadConfig
from internal_rl.envs.tasks import Task, with_tasks


@dataclass(frozen=True)
class PointExpertConfig:
    """Gains of the scripted point-mass expert (tuned by hand for the default dynamics)."""

    speed: float = 1.0  # desired speed along the path, m/s (the point's terminal speed is 1.5)
    lateral_gain: float = 2.0  # desired velocity towards the cell's centre line per metre off it
    velocity_gain: float = 2.0  # force per m/s of velocity error
    noise_std: float = 0.3  # Gaussian noise on the force; 0 gives the mean action

    def __post_init__(self) -> None:
        for name in ("speed", "lateral_gain", "velocity_gain"):
            check_positive_float(type(self).__name__, name, getattr(self, name))
        check_positive_float(type(self).__name__, "noise_std", self.noise_std, allow_zero=True)


class ShortestPaths:
    """Where a pinpad expert heads: the grid-level shortest path to each env's next colour.

    Caches `shortest_path_directions` per env and recomputes it, with a fresh random route preference,
    whenever an env's layout changes (a new episode), so routes vary across episodes but never flicker
    within one.
    """

    def __init__(self, env_config: Any):
        self.env_config = env_config
        self._layouts: np.ndarray | None = None  # the layouts the cached directions were computed for
        self._directions: np.ndarray | None = None  # int8 [N, n_colours, G, G]

    def direction(self, logic: Any, xy: np.ndarray, rng: np.random.Generator, lateral_gain: float) -> np.ndarray:
        """float64 [N, 2]: the unit vector of the path's next move from each body's cell, plus
        `lateral_gain` times the offset to that cell's centre line (across the move). With no move (the
        colour is unreachable) only the pull to the cell's centre remains."""
        self._refresh(logic.layouts, rng)
        n = len(xy)
        rows, cols = logic.cells[:, 0], logic.cells[:, 1]
        move = self._directions[np.arange(n), np.maximum(logic.target(), 0), rows, cols].astype(np.int64)
        heading = np.where((move >= 0)[:, None], DIRECTIONS_XY[np.maximum(move, 0)], 0.0)
        offset = cell_centres(rows, cols, self.env_config) - xy
        across = offset - (offset * heading).sum(axis=1, keepdims=True) * heading
        return heading + lateral_gain * across

    def _refresh(self, layouts: np.ndarray, rng: np.random.Generator) -> None:
        n = len(layouts)
        if self._layouts is None or self._layouts.shape != layouts.shape:
            changed = np.ones(n, dtype=bool)
            self._layouts = layouts.copy()
            self._directions = np.zeros((n, self.env_config.n_colours) + layouts.shape[1:], dtype=np.int8)
        else:
            changed = (layouts != self._layouts).reshape(n, -1).any(axis=1)
        if changed.any():
            priority = np.argsort(rng.random((int(changed.sum()), 4)), axis=1)
            self._layouts[changed] = layouts[changed]
            self._directions[changed] = shortest_path_directions(layouts[changed], self.env_config, priority)


class PointExpert:
    """Scripted shortest-path expert for a `BatchedPointPinpad` (see the module docstring)."""

    def __init__(self, env_config: PointPinpadConfig, config: PointExpertConfig | None = None):
        self.env_config = env_config
        self.config = config if config is not None else PointExpertConfig()
        self.paths = ShortestPaths(env_config)

    def act(self, env: BatchedPointPinpad, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(sampled actions, mean actions), float32 [N, 2] each, zero for done envs."""
        if env.config != self.env_config:
            raise ConfigError("PointExpert was built for a different PointPinpadConfig than the env it acts in")
        ec, c = self.env_config, self.config
        # Speed along the path, and the pull towards the cell's centre line.
        desired = c.speed * self.paths.direction(env.logic, env.pos, rng, c.lateral_gain / c.speed)
        mean = c.velocity_gain * (desired - env.vel) + ec.damping / ec.force_gain * desired
        mean = np.clip(mean, -1.0, 1.0)
        noise = rng.normal(size=(env.num_envs, 2)) * c.noise_std
        sampled = np.clip(mean + noise, -1.0, 1.0)
        alive = ~env.logic.done[:, None]
        return np.where(alive, sampled, 0.0).astype(np.float32), np.where(alive, mean, 0.0).astype(np.float32)


def rollout_expert(
    env: Any,
    act: Callable[[Any, np.random.Generator], np.ndarray],
    rng: np.random.Generator,
    tasks: Sequence[Task] | None = None,
) -> dict[str, np.ndarray]:
    """Reset every env of a batched pinpad `env` (drawing from `env.rng`) and run `act` until all are done.

    `act(env, rng)` returns actions [N, act_dim]. `tasks` gives one task per env (default: sampled from
    the env config's tasks). Returns padded arrays, T = the longest episode:
    observations float32 [N, T, obs_dim] (before each action), actions float32 [N, T, act_dim],
    rewards float32 [N, T], targets int8 [N, T] (the next colour to visit = the subgoal, -1 in padding),
    lengths int64 [N], final_observations float32 [N, obs_dim], tasks int8 [N, Lmax] (-1 padded),
    task_ids int64 [N], success bool [N], layouts int8 [N, G, G], start_cells int64 [N, 2].
    """
    obs = env.reset(tasks=tasks)
    n = env.num_envs
    start_cells = env.logic.cells.copy()
    steps: dict[str, list[np.ndarray]] = {"observations": [], "actions": [], "rewards": [], "targets": []}
    final_obs = np.zeros_like(obs)
    lengths = np.zeros(n, dtype=np.int64)
    alive = ~env.done
    while alive.any():  # loop over time: the recurrence of the environment demands it
        actions = np.asarray(act(env, rng), dtype=np.float32)
        steps["observations"].append(np.where(alive[:, None], obs, 0.0).astype(np.float32))
        steps["targets"].append(env.target().astype(np.int8))
        steps["actions"].append(np.where(alive[:, None], actions, 0.0).astype(np.float32))
        obs, reward, terminated, truncated, _ = env.step(actions)
        steps["rewards"].append(np.asarray(reward, dtype=np.float32))
        lengths += alive
        finished = alive & (terminated | truncated)
        final_obs[finished] = obs[finished]
        alive &= ~finished
    arrays = {name: np.stack(values, axis=1) for name, values in steps.items()}
    arrays["lengths"] = lengths
    arrays["final_observations"] = final_obs.astype(np.float32)
    arrays["tasks"] = env.logic.tasks.copy()
    arrays["layouts"] = env.logic.layouts.copy()
    arrays["start_cells"] = start_cells
    arrays["task_ids"] = env.logic.task_ids.copy()
    arrays["success"] = env.success.copy()
    return arrays


def point_expert_episodes(
    episodes: int,
    seed: int,
    *,
    env_config: PointPinpadConfig | None = None,
    expert_config: PointExpertConfig | None = None,
    tasks: Sequence[Task] | None = None,
    successful_only: bool = True,
    batch_size: int = 1024,
    max_batches: int = 1000,
    show_progress: bool = False,
) -> dict[str, np.ndarray]:
    """`episodes` point-pinpad expert episodes (successful ones only, by default) as padded arrays.

    Tasks are sampled uniformly per episode from `tasks` (default: the config's, i.e. the paper's 16
    pretraining tasks). The same seed gives the same arrays. Returns `collect_episodes`' arrays.
    """
    if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ConfigError(f"episodes must be an integer >= 1, got {episodes!r}")
    env_config = with_tasks(env_config if env_config is not None else PointPinpadConfig(), tasks)
    expert = PointExpert(env_config, expert_config)
    env = BatchedPointPinpad(env_config, batch_size)
    return collect_episodes(
        env, lambda e, r: expert.act(e, r)[0], episodes, seed, successful_only=successful_only,
        max_batches=max_batches, show_progress=show_progress, desc="generate point-pinpad",
    )


def collect_episodes(
    env: Any,
    act: Callable[[Any, np.random.Generator], np.ndarray],
    episodes: int,
    seed: int,
    *,
    successful_only: bool = True,
    max_batches: int = 1000,
    show_progress: bool = False,
    desc: str = "expert episodes",
) -> dict[str, np.ndarray]:
    """Roll `act` out in batches of the batched pinpad `env` until `episodes` episodes are kept, with a
    progress bar (`desc`) of the kept episodes if `show_progress`.

    Returns `rollout_expert`'s arrays for the first `episodes` kept episodes (T = the longest of them),
    plus "subgoals" (= "targets": a pinpad subgoal is one colour), "expert_success_rate" (0-d float64:
    the fraction of all rolled-out episodes that succeeded) and "episodes_attempted" (0-d int64: how many
    episodes were rolled out). The same seed gives the same arrays.
    """
    if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ConfigError(f"episodes must be an integer >= 1, got {episodes!r}")
    env.rng = np.random.default_rng([seed, 0])
    rng = np.random.default_rng([seed, 1])
    batch_size = env.num_envs
    parts: list[dict[str, np.ndarray]] = []
    kept, rolled, succeeded = 0, 0, 0
    with progress(total=episodes, desc=desc, disable=not show_progress) as bar:
        for _ in range(max_batches):
            arrays = rollout_expert(env, act, rng)
            rolled += batch_size
            succeeded += int(arrays["success"].sum())
            keep = arrays["success"] if successful_only else np.ones(batch_size, dtype=bool)
            parts.append({name: value[keep] for name, value in arrays.items()})
            bar.update(min(int(keep.sum()), episodes - kept))
            kept += int(keep.sum())
            bar.set_postfix(success=f"{succeeded / rolled:.3f}")
            if kept >= episodes:
                break
        else:
            raise ConfigError(
                f"the expert succeeded in only {succeeded} of {rolled} episodes; cannot collect {episodes}"
            )
    horizon = max(int(p["lengths"].max(initial=0)) for p in parts)
    out: dict[str, np.ndarray] = {}
    for name in parts[0]:
        values = []
        for part in parts:
            value = part[name]
            if name in ("observations", "actions", "rewards", "targets") and value.shape[1] < horizon:
                pad = np.full((len(value), horizon - value.shape[1]) + value.shape[2:], -1 if name == "targets" else 0)
                value = np.concatenate([value, pad.astype(value.dtype)], axis=1)
            elif name in ("observations", "actions", "rewards", "targets"):
                value = value[:, :horizon]
            values.append(value)
        out[name] = np.concatenate(values)[:episodes]
    out["subgoals"] = out["targets"].copy()
    out["expert_success_rate"] = np.array(succeeded / rolled)
    out["episodes_attempted"] = np.array(rolled, dtype=np.int64)
    return out


@dataclass(frozen=True)
class ExpertEpisodes:
    """A pinpad expert's episodes with what a dataset manifest records of where they came from."""

    arrays: dict[str, np.ndarray]  # `collect_episodes`' padded arrays
    env_config: Any  # the environment config the episodes were rolled out in
    expert: str  # which expert, e.g. "PointExpert"
    expert_config: dict[str, Any]  # the expert's own configuration, as JSON
