"""Gridworld-pinpad (paper App. A.1): visit coloured cells of a small grid in a given order.

A G x G grid holds `n_colours` uniquely coloured cells, `n_walls` wall cells and the agent, placed at
random without overlap at every reset. The agent moves in the four cardinal directions; moving into a
wall or off the grid does nothing. A colour is *visited* when the agent moves onto its cell from another
cell. Visiting the next colour of the task advances it; visiting any other colour ends the episode at
once (the other colours are "mines"); completing the whole task ends it with reward 1. Episodes are
truncated after `horizon` steps. The observation is a one-hot picture of the grid and does not show the
task, so a model must infer the task in context.

This module is the plain, readable reference implementation, one environment at a time.
`batched_gridworld.BatchedGridWorld` is the fast array version; both draw layouts with the shared
`sample_layouts`, so the same seed gives the same episodes, and a test checks they agree step for step.

Layout encoding (int8 [G, G]): -1 empty, c in 0..n_colours-1 colour c, n_colours + k wall k. The layout
code of an object is also its observation channel; the last channel is the agent.
"""

from dataclasses import dataclass, field
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from internal_rl.common.config import with_overrides
from internal_rl.common.errors import ConfigError
from internal_rl.envs.tasks import GRID_PRETRAIN_TASKS, Task, validate_task

EMPTY = -1
ACTION_NAMES: tuple[str, ...] = ("up", "right", "down", "left")
N_ACTIONS = len(ACTION_NAMES)
# (row, col) displacement of each action: 0 up (row-1), 1 right (col+1), 2 down (row+1), 3 left (col-1).
MOVES = np.array([(-1, 0), (0, 1), (1, 0), (0, -1)], dtype=np.int64)


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    # bool is an int subclass, but `size=True` is always a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"GridWorldConfig.{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class GridWorldConfig:
    """Gridworld-pinpad parameters; the defaults are the paper's (App. A.1)."""

    size: int = 7
    n_colours: int = 8
    n_walls: int = 4
    horizon: int = 100
    # Sampled uniformly at every reset unless a task is given.
    tasks: tuple[Task, ...] = field(default=GRID_PRETRAIN_TASKS)

    def __post_init__(self) -> None:
        _positive_int("size", self.size)
        _positive_int("n_colours", self.n_colours)
        _positive_int("n_walls", self.n_walls, minimum=0)
        _positive_int("horizon", self.horizon)
        n_objects = self.n_colours + self.n_walls
        if n_objects + 1 > self.size * self.size:
            raise ConfigError(
                f"too many objects for a {self.size}x{self.size} grid: n_colours + n_walls + 1 agent = "
                f"{n_objects + 1} > {self.size * self.size} cells"
            )
        # Layouts are int8 arrays of object codes.
        if n_objects > np.iinfo(np.int8).max:
            raise ConfigError(f"n_colours + n_walls = {n_objects} too large; at most {np.iinfo(np.int8).max}")
        if isinstance(self.tasks, (str, bytes)) or len(self.tasks) == 0:
            raise ConfigError(f"GridWorldConfig.tasks must be a non-empty sequence of tasks, got {self.tasks!r}")
        tasks = []
        for task in self.tasks:
            if isinstance(task, (str, bytes, int, np.integer)):
                raise ConfigError(f"bad task {task!r} in GridWorldConfig.tasks: expected a sequence of colours")
            tasks.append(validate_task(task, self.n_colours))
        # Normalise (lists from JSON, numpy ints) so that equal configs compare and hash equal.
        object.__setattr__(self, "tasks", tuple(tasks))

    @property
    def n_channels(self) -> int:
        """One channel per colour, one per wall, one for the agent."""
        return self.n_colours + self.n_walls + 1

    @property
    def obs_dim(self) -> int:
        """Length of the flat observation, G*G*(n_colours + n_walls + 1) (637 by default)."""
        return self.size * self.size * self.n_channels

    @property
    def max_task_length(self) -> int:
        return max(len(task) for task in self.tasks)


# ---------------------------------------------------------------------------------------------------------
# Sampling and validation shared by the scalar and batched environments (same seed -> same episodes).
# Draw order at a reset: layouts (unless given), agent positions (only if a layout is given without one),
# then task indices (unless tasks are given).


def sample_layouts(rng: np.random.Generator, n: int, config: GridWorldConfig) -> tuple[np.ndarray, np.ndarray]:
    """Draw `n` random layouts and agent starts with no overlaps.

    Returns (layouts int8 [n, G, G], agent_pos int64 [n, 2]) where the agent starts on an empty cell.
    """
    cells = config.size * config.size
    n_objects = config.n_colours + config.n_walls
    # A uniformly random permutation of the cells per env: its first n_objects cells get the objects in
    # code order, the next one is the agent's start.
    order = np.argsort(rng.random((n, cells)), axis=1)
    layouts = np.full((n, cells), EMPTY, dtype=np.int8)
    np.put_along_axis(layouts, order[:, :n_objects], np.arange(n_objects, dtype=np.int8)[None, :], axis=1)
    start = order[:, n_objects]
    agent_pos = np.stack([start // config.size, start % config.size], axis=1).astype(np.int64)
    return layouts.reshape(n, config.size, config.size), agent_pos


def sample_agent_positions(rng: np.random.Generator, layouts: np.ndarray) -> np.ndarray:
    """Draw an agent start uniformly among the empty cells of each layout [n, G, G]; returns int64 [n, 2]."""
    n, size, _ = layouts.shape
    scores = rng.random((n, size * size))
    scores[layouts.reshape(n, -1) != EMPTY] = -1.0
    start = scores.argmax(axis=1)
    return np.stack([start // size, start % size], axis=1).astype(np.int64)


def sample_task_indices(rng: np.random.Generator, n: int, config: GridWorldConfig) -> np.ndarray:
    """Indices into `config.tasks`, uniform, for `n` episodes."""
    return rng.integers(len(config.tasks), size=n)


def validate_layouts(layouts: Any, config: GridWorldConfig) -> np.ndarray:
    """Check layouts [n, G, G] hold every colour and every wall exactly once; return them as int8."""
    size, n_objects = config.size, config.n_colours + config.n_walls
    arr = np.asarray(layouts)
    if arr.ndim != 3 or arr.shape[1:] != (size, size):
        shape = arr.shape[1:] if arr.ndim == 3 else arr.shape
        raise ConfigError(f"layout must have shape ({size}, {size}), got {shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ConfigError(f"layout must hold integers, got dtype {arr.dtype}")
    flat = arr.reshape(len(arr), -1).astype(np.int64)
    valid = f"-1 (empty), 0..{config.n_colours - 1} (colours), {config.n_colours}..{n_objects - 1} (walls)"
    out_of_range = (flat < EMPTY) | (flat >= n_objects)
    if out_of_range.any():
        raise ConfigError(f"layout value {flat[out_of_range][0]} out of range; valid: {valid}")
    # Exactly once each: the n_objects largest values are 0..n_objects-1 and all the others are empty.
    tail = np.sort(flat, axis=1)[:, flat.shape[1] - n_objects :]
    ok = (tail == np.arange(n_objects)).all(axis=1) & ((flat == EMPTY).sum(axis=1) == flat.shape[1] - n_objects)
    if not ok.all():
        raise ConfigError(
            f"layout {int(np.flatnonzero(~ok)[0])} must hold each of the codes 0..{n_objects - 1} exactly once "
            f"({config.n_colours} colours, {config.n_walls} walls) and -1 elsewhere"
        )
    return flat.astype(np.int8).reshape(arr.shape)


def validate_agent_positions(agent_pos: Any, layouts: np.ndarray) -> np.ndarray:
    """Check agent positions [n, 2] lie on empty cells of `layouts` [n, G, G]; return them as int64."""
    n, size, _ = layouts.shape
    pos = np.asarray(agent_pos)
    if pos.shape != (n, 2) or not np.issubdtype(pos.dtype, np.integer):
        raise ConfigError(f"agent_pos must be {n} integer (row, col) pairs, got {pos.tolist()!r}")
    pos = pos.astype(np.int64)
    outside = ((pos < 0) | (pos >= size)).any(axis=1)
    if outside.any():
        raise ConfigError(f"agent_pos {tuple(pos[outside][0].tolist())} is off the {size}x{size} grid")
    occupied = layouts[np.arange(n), pos[:, 0], pos[:, 1]] != EMPTY
    if occupied.any():
        raise ConfigError(f"agent_pos {tuple(pos[occupied][0].tolist())} is not an empty cell of its layout")
    return pos


def check_render_mode(render_mode: str | None, metadata: dict[str, Any]) -> None:
    """Refuse a `render_mode` that the environment's `metadata` does not list."""
    if render_mode not in (None, *metadata["render_modes"]):
        raise ConfigError(f"unknown render_mode {render_mode!r}; valid: {metadata['render_modes']}")


def render_ansi(layout: np.ndarray, agent_pos: tuple[int, int], n_colours: int) -> str:
    """Text picture of a layout: '.' empty, digits colours, '#' walls, '@' the agent."""
    rows = []
    for r, row in enumerate(layout):
        chars = []
        for c, code in enumerate(row):
            if (r, c) == tuple(agent_pos):
                chars.append("@")
            elif code == EMPTY:
                chars.append(".")
            elif code < n_colours:
                chars.append(str(code) if code < 10 else chr(ord("a") + code - 10))
            else:
                chars.append("#")
        rows.append(" ".join(chars))
    return "\n".join(rows) + "\n"


class GridWorldEnv(gymnasium.Env):
    """One gridworld-pinpad environment (reference implementation).

    reset options (all optional): "task" (sequence of colours), "layout" (int8 [G, G]), "agent_pos"
    ((row, col); requires "layout"). info: "task", "progress" (colours completed), "target" (the next
    colour, -1 once the episode is over), "visited" (the colour entered this step, or -1).
    After the episode ends the env stays frozen, like `BatchedGridWorld`: further steps change nothing and
    return reward 0 with the final flags, until `reset`.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, config: GridWorldConfig | None = None, render_mode: str | None = None, **overrides: Any):
        config = with_overrides(config, GridWorldConfig, overrides)
        check_render_mode(render_mode, self.metadata)
        self.config = config
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0.0, 1.0, (config.obs_dim,), dtype=np.float32)
        self.action_space = spaces.Discrete(N_ACTIONS)
        self.layout = np.full((config.size, config.size), EMPTY, dtype=np.int8)
        self.agent_pos = (0, 0)
        self.task: Task = config.tasks[0]
        self.progress = 0
        self.t = 0
        self.terminated = False
        self.truncated = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = sorted(set(options) - {"task", "layout", "agent_pos"})
        if unknown:
            raise ConfigError(f"unknown reset option(s) {unknown}; valid: ['agent_pos', 'layout', 'task']")
        if "layout" in options:
            layout = validate_layouts(np.asarray(options["layout"])[None], self.config)
            if "agent_pos" in options:
                agent_pos = validate_agent_positions(np.asarray(options["agent_pos"])[None], layout)
            else:
                agent_pos = sample_agent_positions(self.np_random, layout)
        elif "agent_pos" in options:
            raise ConfigError("reset option 'agent_pos' needs option 'layout' too")
        else:
            layout, agent_pos = sample_layouts(self.np_random, 1, self.config)
        if "task" in options:
            task = options["task"]
            if isinstance(task, (str, bytes, int, np.integer)):
                raise ConfigError(f"bad task {task!r}: expected a sequence of colours")
            self.task = validate_task(task, self.config.n_colours)
        else:
            self.task = self.config.tasks[int(sample_task_indices(self.np_random, 1, self.config)[0])]
        self.layout = layout[0]
        self.agent_pos = (int(agent_pos[0, 0]), int(agent_pos[0, 1]))
        self.progress = 0
        self.t = 0
        self.terminated = False
        self.truncated = False
        return self._observation(), self._info(visited=-1)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        if not self.action_space.contains(action):
            raise ConfigError(f"invalid action {action!r}; valid: 0..3 ({', '.join(ACTION_NAMES)})")
        if self.terminated or self.truncated:
            return self._observation(), 0.0, self.terminated, self.truncated, self._info(visited=-1)

        self.t += 1
        reward, visited = 0.0, -1
        row = self.agent_pos[0] + int(MOVES[action][0])
        col = self.agent_pos[1] + int(MOVES[action][1])
        on_grid = 0 <= row < self.config.size and 0 <= col < self.config.size
        # Off the grid or into a wall: the agent stays where it is.
        if on_grid and not self._is_wall(int(self.layout[row, col])):
            self.agent_pos = (row, col)
            cell = int(self.layout[row, col])
            if cell != EMPTY:
                visited = cell
                if cell == self.task[self.progress]:
                    self.progress += 1
                    if self.progress == len(self.task):
                        self.terminated, reward = True, 1.0
                else:
                    self.terminated = True  # a colour out of order is a mine
        if not self.terminated and self.t >= self.config.horizon:
            self.truncated = True
        return self._observation(), reward, self.terminated, self.truncated, self._info(visited=visited)

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return render_ansi(self.layout, self.agent_pos, self.config.n_colours)
        return None

    def target(self) -> int:
        """The next colour to visit, or -1 once the episode is over."""
        if self.terminated or self.truncated:
            return -1
        return self.task[self.progress]

    def _is_wall(self, code: int) -> bool:
        return code >= self.config.n_colours

    def _observation(self) -> np.ndarray:
        grid = np.zeros((self.config.size, self.config.size, self.config.n_channels), dtype=np.float32)
        rows, cols = np.nonzero(self.layout != EMPTY)
        grid[rows, cols, self.layout[rows, cols]] = 1.0
        grid[self.agent_pos[0], self.agent_pos[1], -1] = 1.0
        return grid.reshape(-1)

    def _info(self, visited: int) -> dict[str, Any]:
        return {"task": self.task, "progress": self.progress, "target": self.target(), "visited": visited}
