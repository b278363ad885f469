"""Gridworld-pinpad as arrays: N environments stepped together with no Python loop over environments.

`BatchedGridWorld` has the same dynamics as the reference `gridworld.GridWorldEnv` (a test checks they
agree step for step) but keeps the state of all N environments in arrays. It does not reset
environments by itself: once an episode ends that environment stays frozen (no-op steps, reward 0,
still flagged done) until `reset` or `reset_envs`. `GridWorldVectorEnv` puts Gymnasium's vector-env
interface, with autoreset, on top of it.

Speed: internally the grid is padded with a one-cell border of walls and positions are flat indices
into it, so a move is one add and one gather, and "off the grid" needs no bounds check. The observation
is kept in a persistent buffer in which a step only moves the agent's one-hot; `step(..., with_obs=False)`
skips copying it out, for callers that read `observations()` only when they need it.
"""

from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from internal_rl.common.config import with_overrides
from internal_rl.common.errors import ConfigError
from internal_rl.envs.gridworld import (
    EMPTY,
    N_ACTIONS,
    GridWorldConfig,
    sample_agent_positions,
    sample_layouts,
    sample_task_indices,
    validate_agent_positions,
    validate_layouts,
)
from internal_rl.envs.tasks import validate_task


def tasks_to_array(tasks: Sequence[Sequence[int]], n_colours: int, width: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Validate tasks and pack them as (int8 [n, L] padded with -1, int64 lengths [n]), L >= `width`."""
    checked = []
    for task in tasks:
        if isinstance(task, (str, bytes, int, np.integer)):
            raise ConfigError(f"bad task {task!r}: expected a sequence of colours")
        checked.append(validate_task(task, n_colours))
    lengths = np.array([len(t) for t in checked], dtype=np.int64)
    array = np.full((len(checked), max(width, int(lengths.max(initial=0)))), -1, dtype=np.int8)
    for i, task in enumerate(checked):
        array[i, : len(task)] = task
    return array, lengths


class EpisodeBatch:
    """Task progress of N pinpad episodes, shared by the batched grid world and the continuous pinpads.

    Public state (read it, don't write it): `tasks` int8 [N, Lmax] (-1 padded), `task_lengths` int64 [N],
    `task_ids` int64 [N] (index into config.tasks, -1 for a task given to a reset), `progress` int64 [N]
    colours completed, `t` int64 [N] steps taken, `terminated` / `truncated` / `done` bool [N]. Each
    environment's step rules update these; this class starts episodes and reads the next colour.
    """

    def __init__(self, config: Any, num_envs: int):
        # `config` is a GridWorldConfig or a PinpadConfig: both have `tasks`, `n_colours`, `max_task_length`.
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ConfigError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        self.config = config
        self.num_envs = n = int(num_envs)
        self._env_ids = np.arange(n)
        self._config_tasks, self._config_task_lengths = tasks_to_array(config.tasks, config.n_colours)
        self.tasks = np.full((n, config.max_task_length), -1, dtype=np.int8)
        self.task_lengths = np.ones(n, dtype=np.int64)
        self.task_ids = np.full(n, -1, dtype=np.int64)
        self.progress = np.zeros(n, dtype=np.int64)
        self.t = np.zeros(n, dtype=np.int64)
        self.terminated = np.zeros(n, dtype=bool)
        self.truncated = np.zeros(n, dtype=bool)
        self.done = np.ones(n, dtype=bool)  # nothing to step until the first reset

    @property
    def success(self) -> np.ndarray:
        """bool [N]: the episode completed its task (every colour visited in order), the one definition of
        success every caller reads."""
        return self.progress == self.task_lengths

    def target(self) -> np.ndarray:
        """The next colour to visit per env, int64 [N]; -1 once the episode is over."""
        return np.where(self.done, -1, self._current_targets())

    def _selected_envs(self, env_mask: np.ndarray) -> np.ndarray:
        """The indices of the envs where `env_mask` [N] is True, refusing a mask of the wrong shape."""
        env_mask = np.asarray(env_mask, dtype=bool)
        if env_mask.shape != (self.num_envs,):
            raise ConfigError(f"env_mask must have shape ({self.num_envs},), got {env_mask.shape}")
        return np.flatnonzero(env_mask)

    def _start_episodes(
        self, ids: np.ndarray, rng: np.random.Generator, tasks: Sequence[Sequence[int]] | None
    ) -> None:
        """Give envs `ids` new tasks (`tasks`, one per env, else drawn from config.tasks with `rng`) and clear
        their progress, step count and end flags."""
        k = len(ids)
        if tasks is None:
            task_ids = sample_task_indices(rng, k, self.config)
            new_tasks, new_lengths = self._config_tasks[task_ids], self._config_task_lengths[task_ids]
        else:
            if isinstance(tasks, (str, bytes)) or len(tasks) != k:
                raise ConfigError(f"expected {k} tasks (one per env), got {tasks!r}")
            new_tasks, new_lengths = tasks_to_array(tasks, self.config.n_colours)
            task_ids = -1
        if new_tasks.shape[1] > self.tasks.shape[1]:
            wider = np.full((self.num_envs, new_tasks.shape[1]), -1, dtype=np.int8)
            wider[:, : self.tasks.shape[1]] = self.tasks
            self.tasks = wider
        self.tasks[ids] = -1
        self.tasks[ids, : new_tasks.shape[1]] = new_tasks
        self.task_lengths[ids] = new_lengths
        self.task_ids[ids] = task_ids
        self.t[ids] = 0
        self.progress[ids] = 0
        self.terminated[ids] = False
        self.truncated[ids] = False
        self.done[ids] = False

    def _current_targets(self) -> np.ndarray:
        # A finished env (progress == task length) reads the -1 padding or, for the longest task, the next
        # row ('clip' keeps the last env in bounds); finished envs are done, so the value is never used.
        width = self.tasks.shape[1]
        return self.tasks.ravel().take(self._env_ids * width + self.progress, mode="clip").astype(np.int64)


def draw_layouts(
    rng: np.random.Generator,
    k: int,
    config: GridWorldConfig,
    layouts: np.ndarray | None,
    starts: np.ndarray | None,
    starts_name: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Layouts int8 [k, G, G] and start cells int64 [k, 2] for k new episodes.

    Given `layouts` are checked, and so are given `starts` (else drawn on those layouts); without layouts
    both are sampled. `starts_name` is the caller's name for the start cells, for the error message.
    """
    if layouts is not None:
        new_layouts = validate_layouts(layouts, config)
        if len(new_layouts) != k:
            raise ConfigError(f"expected {k} layouts, got {len(new_layouts)}")
        if starts is None:
            return new_layouts, sample_agent_positions(rng, new_layouts)
        return new_layouts, validate_agent_positions(starts, new_layouts)
    if starts is not None:
        raise ConfigError(f"{starts_name} needs layouts too")
    return sample_layouts(rng, k, config)


class BatchedGridWorld(EpisodeBatch):
    """N gridworld-pinpad environments in numpy arrays (no autoreset; done envs stay frozen).

    Public state (read it, don't write it; `agent_pos` is computed on access):
    `layouts` int8 [N, G, G], `agent_pos` int64 [N, 2], `t` int64 [N] steps taken, `progress` int64 [N]
    colours completed, `tasks` int8 [N, Lmax] (-1 padded), `task_lengths` int64 [N], `task_ids` int64 [N]
    (index into config.tasks, -1 for a task given to `reset`), `done` bool [N] (terminated or truncated),
    `terminated` / `truncated` bool [N].
    """

    def __init__(self, config: GridWorldConfig, num_envs: int):
        super().__init__(config, num_envs)
        n = self.num_envs
        size = config.size
        self._width = width = size + 2  # padded grid side
        self._n_cells = width * width
        self._wall_code = config.n_colours + config.n_walls  # the padding border: blocks like a wall
        # Flat displacement of each action in the padded grid (0 up, 1 right, 2 down, 3 left).
        self._deltas = np.array([-width, 1, width, -1], dtype=np.int64)
        rows, cols = np.divmod(np.arange(self._n_cells), width)
        interior = (rows >= 1) & (rows <= size) & (cols >= 1) & (cols <= size)
        # Padded cell -> flat index of its agent channel in the observation (border cells are never occupied).
        agent_channel = ((rows - 1) * size + (cols - 1)) * config.n_channels + config.n_channels - 1
        self._agent_channel = np.where(interior, agent_channel, 0)
        self._interior = np.flatnonzero(interior)  # padded index of grid cell r*G + c
        self._cell_offsets = self._env_ids * self._n_cells
        self._obs_offsets = self._env_ids * config.obs_dim

        self.rng = np.random.default_rng()
        self.layouts = np.full((n, size, size), EMPTY, dtype=np.int8)
        self._cells = np.full((n, self._n_cells), self._wall_code, dtype=np.int8)  # padded layouts
        self._pos = np.zeros(n, dtype=np.int64)  # flat padded agent position
        self._obs = np.zeros((n, config.obs_dim), dtype=np.float32)

    @property
    def agent_pos(self) -> np.ndarray:
        """Agent (row, col) per env, int64 [N, 2]."""
        rows, cols = np.divmod(self._pos, self._width)
        return np.stack([rows - 1, cols - 1], axis=1)

    def reset(
        self,
        seed: int | None = None,
        tasks: Sequence[Sequence[int]] | None = None,
        *,
        layouts: np.ndarray | None = None,
        agent_pos: np.ndarray | None = None,
    ) -> np.ndarray:
        """Start a new episode in every env; returns observations float32 [N, obs_dim].

        `seed` reseeds `self.rng`; `tasks` gives one task per env (else sampled from config.tasks);
        `layouts` [N, G, G] and `agent_pos` [N, 2] fix the layouts and starts (else sampled).
        """
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.reset_envs(np.ones(self.num_envs, dtype=bool), tasks, layouts=layouts, agent_pos=agent_pos)
        return self.observations()

    def reset_envs(
        self,
        env_mask: np.ndarray,
        tasks: Sequence[Sequence[int]] | None = None,
        *,
        layouts: np.ndarray | None = None,
        agent_pos: np.ndarray | None = None,
    ) -> None:
        """Start a new episode in the envs where `env_mask` [N] is True, drawing from `self.rng`.

        `tasks`, `layouts` and `agent_pos`, if given, hold one entry per selected env.
        """
        ids = self._selected_envs(env_mask)
        k = len(ids)
        if k == 0:
            return
        config = self.config
        new_layouts, new_pos = draw_layouts(self.rng, k, config, layouts, agent_pos, "agent_pos")
        self._start_episodes(ids, self.rng, tasks)

        self.layouts[ids] = new_layouts
        self._cells[ids[:, None], self._interior[None, :]] = new_layouts.reshape(k, -1)
        self._pos[ids] = (new_pos[:, 0] + 1) * self._width + new_pos[:, 1] + 1

        # The layout code of an object is its observation channel.
        obs = np.zeros((k, config.size * config.size, config.n_channels), dtype=np.float32)
        flat_layouts = new_layouts.reshape(k, -1)
        env_index, cell_index = np.nonzero(flat_layouts != EMPTY)
        obs[env_index, cell_index, flat_layouts[env_index, cell_index]] = 1.0
        obs[np.arange(k), new_pos[:, 0] * config.size + new_pos[:, 1], -1] = 1.0
        self._obs[ids] = obs.reshape(k, -1)

    def step(
        self, actions: np.ndarray, *, with_obs: bool = True
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Move every env one step; returns (obs, reward f32, terminated, truncated, info), all [N].

        Envs already done do not move and return reward 0 with their final flags. info holds
        "progress", "target" (-1 once done) and "visited" (colour entered this step, or -1).
        With `with_obs=False` the observation is not copied out and None is returned in its place.
        """
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or actions.dtype.kind not in "iu":
            raise ConfigError(
                f"actions must be an integer array of shape ({self.num_envs},), got {actions.dtype} {actions.shape}"
            )
        if actions.min() < 0 or actions.max() >= N_ACTIONS:
            raise ConfigError(
                f"action out of range: min {actions.min()}, max {actions.max()}; valid: 0..{N_ACTIONS - 1}"
            )
        n_colours = self.config.n_colours
        active = ~self.done
        old_pos = self._pos
        next_pos = old_pos + self._deltas.take(actions)
        code = self._cells.ravel().take(self._cell_offsets + next_pos)
        # Walls (and the padding border) block; frozen envs do not move.
        moved = active & (code < n_colours)
        new_pos = np.where(moved, next_pos, old_pos)
        entered = moved & (code != EMPTY)  # moved onto a colour
        visited = np.where(entered, code, -1).astype(np.int64)
        correct = entered & (visited == self._current_targets())
        wrong = entered & ~correct
        self.progress += correct
        success = correct & (self.progress == self.task_lengths)
        terminated_now = success | wrong
        self.t += active
        truncated_now = active & ~terminated_now & (self.t >= self.config.horizon)
        self.terminated |= terminated_now
        self.truncated |= truncated_now
        self.done |= terminated_now | truncated_now

        # Move the agent's one-hot: clear the old cell first so an env that did not move keeps its 1.
        obs_flat = self._obs.reshape(-1)
        obs_flat[self._obs_offsets + self._agent_channel.take(old_pos)] = 0.0
        obs_flat[self._obs_offsets + self._agent_channel.take(new_pos)] = 1.0
        self._pos = new_pos

        info = {"progress": self.progress.copy(), "target": self.target(), "visited": visited}
        obs = self._obs.copy() if with_obs else None
        return obs, success.astype(np.float32), self.terminated.copy(), self.truncated.copy(), info

    def observations(self, dtype: type = np.float32) -> np.ndarray:
        """A fresh copy of the current observations [N, obs_dim] (e.g. `dtype=np.uint8` for storage)."""
        return self._obs.astype(dtype)


class GridWorldVectorEnv(gymnasium.vector.VectorEnv):
    """Gymnasium's vector-env interface over `BatchedGridWorld`, with autoreset.

    It behaves like `gymnasium.vector.SyncVectorEnv` over `GridWorldEnv`s (same observations, rewards,
    flags and info layout, including the `_key` masks and, in same-step mode, "final_obs"/"final_info"),
    but steps all environments with array operations. reset options: "reset_mask" (bool [N]) resets only
    those environments, as in SyncVectorEnv. Keyword `overrides` replace fields of `config` (so that
    `gymnasium.make_vec(id, num_envs, size=5)` works when registered as a vector entry point).
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int,
        config: GridWorldConfig | None = None,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        **overrides: Any,
    ):
        self.config = with_overrides(config, GridWorldConfig, overrides)
        self.env = BatchedGridWorld(self.config, num_envs)
        self.num_envs = self.env.num_envs
        try:
            self.autoreset_mode = AutoresetMode(autoreset_mode)
        except ValueError:
            raise ConfigError(
                f"unknown autoreset_mode {autoreset_mode!r}; valid: {[m.value for m in AutoresetMode]}"
            ) from None
        self.metadata = {"autoreset_mode": self.autoreset_mode}
        self.single_observation_space = spaces.Box(0.0, 1.0, (self.config.obs_dim,), dtype=np.float32)
        self.single_action_space = spaces.Discrete(N_ACTIONS)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._ones = np.ones(self.num_envs, dtype=bool)
        # The "task" info entries (tuples, as GridWorldEnv reports them), per env and per config task.
        self._task_tuples = np.full(self.num_envs, None, dtype=object)
        self._config_task_tuples = np.empty(len(self.config.tasks), dtype=object)
        for i, task in enumerate(self.config.tasks):
            self._config_task_tuples[i] = task

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is not None:
            self.env.rng = np.random.default_rng(seed)
        options = dict(options or {})
        reset_mask = options.pop("reset_mask", None)
        if options:
            raise ConfigError(f"unknown reset option(s) {sorted(options)}; valid: ['reset_mask']")
        if reset_mask is None:
            reset_mask = self._ones
        else:
            reset_mask = np.asarray(reset_mask)
            if reset_mask.shape != (self.num_envs,) or reset_mask.dtype != np.bool_ or not reset_mask.any():
                raise ConfigError(
                    f"reset_mask must be a bool array of shape ({self.num_envs},) with a True, got {reset_mask!r}"
                )
        self._reset_envs(reset_mask)
        info = self._info(np.full(self.num_envs, -1, dtype=np.int64), reset_mask)
        return self.env.observations(), info

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        env = self.env
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            # Envs that ended last step start their next episode now instead of stepping (frozen envs
            # ignore their action in env.step).
            autoreset = env.done.copy()
            _, reward, terminated, truncated, step_info = env.step(actions, with_obs=False)
            if autoreset.any():
                self._reset_envs(autoreset)
                reward[autoreset] = 0.0
                terminated[autoreset] = False
                truncated[autoreset] = False
            info = self._info(np.where(autoreset, -1, step_info["visited"]), self._ones)
            return env.observations(), reward, terminated, truncated, info

        if self.autoreset_mode == AutoresetMode.DISABLED and env.done.any():
            raise gymnasium.error.ResetNeeded(
                f"envs {np.flatnonzero(env.done).tolist()} are done; reset them with options={{'reset_mask': ...}}"
            )
        _, reward, terminated, truncated, step_info = env.step(actions, with_obs=False)
        ended = terminated | truncated
        if self.autoreset_mode == AutoresetMode.DISABLED or not ended.any():
            return env.observations(), reward, terminated, truncated, self._info(step_info["visited"], self._ones)

        # Same-step autoreset: report the final observation and info of ended envs, then reset them.
        final_obs = np.full(self.num_envs, None, dtype=object)
        observations = env.observations()
        for i in np.flatnonzero(ended):
            final_obs[i] = observations[i]
        final_info = self._info(step_info["visited"], ended)
        self._reset_envs(ended)
        info = {
            "final_obs": final_obs,
            "_final_obs": ended.copy(),
            "final_info": final_info,
            "_final_info": ended.copy(),
        }
        info.update(self._info(np.where(ended, -1, step_info["visited"]), self._ones))
        return env.observations(), reward, terminated, truncated, info

    def _reset_envs(self, mask: np.ndarray) -> None:
        self.env.reset_envs(mask)  # tasks sampled from config.tasks, so every task id is >= 0
        self._task_tuples[mask] = self._config_task_tuples[self.env.task_ids[mask]]

    def _info(self, visited: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        # SyncVectorEnv's layout: one array per key plus a "_key" mask of the envs that reported it;
        # entries of unmasked envs hold zeros (None for objects).
        def masked(values: np.ndarray) -> np.ndarray:
            return values.copy() if mask is self._ones else np.where(mask, values, 0)

        tasks = self._task_tuples.copy()
        if mask is not self._ones:
            tasks[~mask] = None
        return {
            "task": tasks,
            "_task": mask.copy(),
            "progress": masked(self.env.progress),
            "_progress": mask.copy(),
            "target": masked(self.env.target()),
            "_target": mask.copy(),
            "visited": masked(visited),
            "_visited": mask.copy(),
        }
