"""Continuous pinpad (paper App. A.2): the cell-grid rules shared by the point-mass and ant tasks.

The plane is a `size` x `size` grid of square cells of side `cell_size`, centred on the origin. Each
episode places `n_colours` coloured cells, `n_walls` wall cells and the start cell at random without
overlap (the grid world's `sample_layouts`, so the layout encoding is the grid world's: int8 [G, G],
-1 empty, c colour c, n_colours + k wall k). A body moves continuously over it; only the cell under its
centre matters to the task:

- a colour is *visited* when the body's centre enters its cell from a different cell;
- visiting the next colour of the task advances it, visiting any other colour ends the episode
  (failure), completing the task ends it with reward 1.0 (the only reward);
- entering a wall cell ends the episode (failure), as does any extra failure the body reports (the ant's
  torso leaving its height range);
- episodes are truncated after `horizon` steps.

Cell (row, col) has its centre at x = (col + 1/2) c - H, y = H - (row + 1/2) c, with c the cell size and
H = size * c / 2 the arena's half width: row 0 is the top (largest y) row, as in a top-down picture and
in the grid world's `render_ansi`. "Up" (row - 1) is +y, "right" (col + 1) is +x.

The task-related part of the observation (`PinpadLogic.features`, 2 + 2 (O + W) + 2 = 14 values by
default) is the paper's: the body's (x, y) normalised to [-1, 1]; the position of every coloured cell
(colours 0..O-1 in order) and wall cell relative to the body, divided by the arena width so that it lies
in [-1, 1]; the body's coordinate within its current cell, in [-1, 1]. It never holds the task.

`PinpadLogic` keeps this bookkeeping for N episodes in numpy arrays; the point-mass and ant environments
add their physics on top.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from internal_rl.common.errors import ConfigError
from internal_rl.envs.batched_gridworld import EpisodeBatch, draw_layouts
from internal_rl.envs.expert import distance_maps
from internal_rl.envs.gridworld import EMPTY, GridWorldConfig
from internal_rl.envs.tasks import PINPAD_PRETRAIN_TASKS, Task, validate_task

# Unit (x, y) vector of each grid move, in the grid world's action order: 0 up (+y), 1 right (+x),
# 2 down (-y), 3 left (-x).
DIRECTIONS_XY = np.array([(0.0, 1.0), (1.0, 0.0), (0.0, -1.0), (-1.0, 0.0)])
# Drawing colours (RGB) of the coloured cells 0..3; further colours cycle.
COLOUR_RGB = np.array([(230, 57, 70), (42, 157, 80), (38, 103, 227), (240, 190, 30)], dtype=np.uint8)
WALL_RGB = np.array((60, 60, 60), dtype=np.uint8)
FLOOR_RGB = np.array((225, 225, 225), dtype=np.uint8)


def check_positive_int(cls: str, name: str, value: Any, minimum: int = 1) -> None:
    # bool is an int subclass, but `size=True` is always a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{cls}.{name} must be an integer >= {minimum}, got {value!r}")


def check_positive_float(cls: str, name: str, value: Any, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and np.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(f"{cls}.{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")


@dataclass(frozen=True)
class PinpadConfig:
    """Continuous-pinpad layout and task parameters; the defaults are the paper's ant-pinpad (App. A.2)."""

    size: int = 4
    n_colours: int = 4
    n_walls: int = 1
    # Side of one cell in metres (the paper does not give it; the ant environment uses 2.0).
    cell_size: float = 1.0
    horizon: int = 500
    # Sampled uniformly at every reset unless a task is given (Table A2).
    tasks: tuple[Task, ...] = field(default=PINPAD_PRETRAIN_TASKS)
    # The start position is the start cell's centre plus uniform noise of +-start_noise * cell_size / 2
    # per axis (1.0: anywhere in the cell, as in the paper).
    start_noise: float = 1.0

    def __post_init__(self) -> None:
        cls = type(self).__name__
        check_positive_int(cls, "size", self.size)
        check_positive_int(cls, "n_colours", self.n_colours)
        check_positive_int(cls, "n_walls", self.n_walls, minimum=0)
        check_positive_int(cls, "horizon", self.horizon)
        check_positive_float(cls, "cell_size", self.cell_size)
        check_positive_float(cls, "start_noise", self.start_noise, allow_zero=True)
        if self.start_noise > 1.0:
            raise ConfigError(f"{cls}.start_noise must be in [0, 1] (a fraction of the cell), got {self.start_noise!r}")
        n_objects = self.n_colours + self.n_walls
        if n_objects + 1 > self.size * self.size:
            raise ConfigError(
                f"too many objects for a {self.size}x{self.size} grid: n_colours + n_walls + 1 start cell = "
                f"{n_objects + 1} > {self.size * self.size} cells"
            )
        if n_objects > np.iinfo(np.int8).max:
            raise ConfigError(f"n_colours + n_walls = {n_objects} too large; at most {np.iinfo(np.int8).max}")
        if isinstance(self.tasks, (str, bytes)) or len(self.tasks) == 0:
            raise ConfigError(f"{cls}.tasks must be a non-empty sequence of tasks, got {self.tasks!r}")
        tasks = []
        for task in self.tasks:
            if isinstance(task, (str, bytes, int, np.integer)):
                raise ConfigError(f"bad task {task!r} in {cls}.tasks: expected a sequence of colours")
            tasks.append(validate_task(task, self.n_colours))
        object.__setattr__(self, "tasks", tuple(tasks))
        object.__setattr__(self, "cell_size", float(self.cell_size))
        object.__setattr__(self, "start_noise", float(self.start_noise))

    @property
    def half_width(self) -> float:
        """Half the arena's side: the arena is [-half_width, half_width]^2."""
        return self.size * self.cell_size / 2.0

    @property
    def n_features(self) -> int:
        """Length of the task-related observation: (x, y), relative cell positions, local coordinate."""
        return 2 + 2 * (self.n_colours + self.n_walls) + 2

    @property
    def max_task_length(self) -> int:
        return max(len(task) for task in self.tasks)

    def grid_config(self) -> GridWorldConfig:
        """The grid world with the same cells, whose layout sampling and shortest paths this task reuses."""
        return GridWorldConfig(
            size=self.size, n_colours=self.n_colours, n_walls=self.n_walls, horizon=self.horizon, tasks=self.tasks
        )


def cell_centres(rows: np.ndarray, cols: np.ndarray, config: PinpadConfig) -> np.ndarray:
    """(x, y) centres of cells (rows, cols) (any matching shapes), float64 [..., 2]."""
    x = (np.asarray(cols) + 0.5) * config.cell_size - config.half_width
    y = config.half_width - (np.asarray(rows) + 0.5) * config.cell_size
    return np.stack([x, y], axis=-1)


def cells_of(xy: np.ndarray, config: PinpadConfig) -> np.ndarray:
    """The (row, col) of the cell under each position [..., 2], int64 [..., 2]; positions outside the arena
    count as the nearest border cell (the environments keep bodies inside it)."""
    xy = np.asarray(xy, dtype=np.float64)
    col = np.floor((xy[..., 0] + config.half_width) / config.cell_size)
    row = np.floor((config.half_width - xy[..., 1]) / config.cell_size)
    cells = np.stack([row, col], axis=-1).astype(np.int64)
    return np.clip(cells, 0, config.size - 1)


def shortest_path_directions(
    layouts: np.ndarray, config: PinpadConfig, priority: np.ndarray | None = None
) -> np.ndarray:
    """Grid-level shortest-path move from every cell towards every colour: int8 [n, n_colours, G, G].

    Entry [i, c, r, k] is the move (0 up, 1 right, 2 down, 3 left) that starts a shortest path from cell
    (r, k) to colour c in layout i through empty cells only (walls and other colours are forbidden,
    because entering them ends the episode; the path may start on one); -1 at colour c's own cell and
    where c is unreachable. Ties
    go to the first optimal move in `priority` [n, 4] (a permutation of 0..3 per layout; default
    up, right, down, left), so that a caller can make the expert's route choice random but fixed per episode.
    """
    layouts = np.asarray(layouts)
    n, size = len(layouts), config.size
    dist = distance_maps(layouts, config.grid_config()).astype(np.int32)  # [n, C, G, G], -1 forbidden
    big = np.iinfo(np.int32).max // 2
    dist = np.where(dist < 0, big, dist)
    padded = np.full((n, config.n_colours, size + 2, size + 2), big, dtype=np.int32)
    padded[:, :, 1:-1, 1:-1] = dist
    # Distance at the neighbour each move leads to: [n, C, G, G, 4].
    neighbours = np.stack(
        [
            padded[:, :, 0:-2, 1:-1],  # up: row - 1
            padded[:, :, 1:-1, 2:],  # right: col + 1
            padded[:, :, 2:, 1:-1],  # down: row + 1
            padded[:, :, 1:-1, 0:-2],  # left: col - 1
        ],
        axis=-1,
    )
    if priority is None:
        priority = np.tile(np.arange(4), (n, 1))
    priority = np.asarray(priority, dtype=np.int64)
    ordered = np.take_along_axis(neighbours, priority[:, None, None, None, :], axis=-1)
    best = ordered.argmin(axis=-1)  # first minimum in priority order
    moves = np.broadcast_to(priority[:, None, None, None, :], ordered.shape)
    move = np.take_along_axis(moves, best[..., None], axis=-1)[..., 0]
    best_dist = ordered.min(axis=-1)
    # Every cell but the colour's own gets a move towards a reachable colour, also cells a path may not
    # cross: the body stands on the colour it has just visited, from where it heads for the next one.
    valid = (dist != 0) & (best_dist < big)
    return np.where(valid, move, -1).astype(np.int8)


def solvable(layouts: np.ndarray, start_cells: np.ndarray, tasks: np.ndarray, config: PinpadConfig) -> np.ndarray:
    """Whether each task can be completed at all on the cell grid: bool [n].

    `layouts` [n, G, G], `start_cells` [n, 2] (row, col), `tasks` int [n, L] (-1 padded). A task is
    solvable when every next colour is reachable from the cell of the previous one (the start cell first)
    through empty cells; the expert can succeed on at most these episodes.
    """
    n = len(layouts)
    directions = shortest_path_directions(layouts, config)  # [n, C, G, G]
    ids = np.arange(n)
    cells = np.asarray(start_cells, dtype=np.int64).copy()
    ok = np.ones(n, dtype=bool)
    for k in range(tasks.shape[1]):
        colour = tasks[:, k].astype(np.int64)
        active = colour >= 0
        safe = np.maximum(colour, 0)
        ok &= ~active | (directions[ids, safe, cells[:, 0], cells[:, 1]] >= 0)
        where = np.argwhere(layouts == safe[:, None, None].astype(layouts.dtype))  # [n, 3], one hit per layout
        cells = np.where(active[:, None], where[:, 1:], cells)
    return ok


class PinpadLogic(EpisodeBatch):
    """The task bookkeeping of N continuous-pinpad episodes (no physics, no autoreset).

    Public state (read it, don't write it): `layouts` int8 [N, G, G], `cells` int64 [N, 2] the (row, col)
    under each body, `object_xy` float64 [N, O + W, 2] centres of the coloured cells then the walls,
    `tasks` int8 [N, Lmax] (-1 padded), `task_lengths` int64 [N], `task_ids` int64 [N] (index into
    config.tasks, -1 for a given task), `progress` int64 [N] colours completed, `t` int64 [N] steps taken,
    `terminated` / `truncated` / `done` bool [N], `success` bool [N]. Done episodes stay frozen.
    """

    def __init__(self, config: PinpadConfig, num_envs: int):
        super().__init__(config, num_envs)
        n = self.num_envs
        self._grid = config.grid_config()
        n_objects = config.n_colours + config.n_walls
        self.layouts = np.full((n, config.size, config.size), EMPTY, dtype=np.int8)
        self.cells = np.zeros((n, 2), dtype=np.int64)
        self.object_xy = np.zeros((n, n_objects, 2))

    def reset_envs(
        self,
        env_mask: np.ndarray,
        rng: np.random.Generator,
        tasks: Sequence[Sequence[int]] | None = None,
        *,
        layouts: np.ndarray | None = None,
        start_cells: np.ndarray | None = None,
    ) -> np.ndarray:
        """Start new episodes where `env_mask` [N] is True; returns their start positions float64 [k, 2].

        Draw order: layouts and start cells (unless `layouts` is given; then start cells unless given),
        task indices (unless `tasks` is given), start noise. `tasks`, `layouts` [k, G, G] and
        `start_cells` [k, 2] hold one entry per selected env.
        """
        ids = self._selected_envs(env_mask)
        k = len(ids)
        config = self.config
        new_layouts, new_cells = draw_layouts(rng, k, self._grid, layouts, start_cells, "start_cells")
        self._start_episodes(ids, rng, tasks)

        self.layouts[ids] = new_layouts
        self.cells[ids] = new_cells
        # Object code o sits at the cell where the layout holds o (each exactly once).
        flat = new_layouts.reshape(k, -1)
        n_objects = config.n_colours + config.n_walls
        where = np.argmax(flat[:, None, :] == np.arange(n_objects, dtype=np.int8)[None, :, None], axis=2)  # [k, O+W]
        self.object_xy[ids] = cell_centres(where // config.size, where % config.size, config)
        noise = rng.uniform(-1.0, 1.0, size=(k, 2)) * config.start_noise * config.cell_size / 2
        # Stay strictly inside the start cell, whatever the noise.
        limit = config.cell_size / 2 * (1 - 1e-6)
        return cell_centres(new_cells[:, 0], new_cells[:, 1], config) + np.clip(noise, -limit, limit)

    def update(self, xy: np.ndarray, failed: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Apply the rules after the bodies moved to `xy` [N, 2]; `failed` [N] flags extra failures.

        Only envs not yet done advance. Returns (reward float32 [N], info) with info "visited" (the colour
        entered this step, or -1), "progress" and "target" (after the update; -1 once done).
        """
        alive = ~self.done
        config = self.config
        new_cells = cells_of(xy, config)
        entered = alive & (new_cells != self.cells).any(axis=1)
        self.cells = np.where(alive[:, None], new_cells, self.cells)
        self.t += alive
        code = self.layouts[np.arange(self.num_envs), self.cells[:, 0], self.cells[:, 1]].astype(np.int64)
        is_colour = entered & (code >= 0) & (code < config.n_colours)
        target = self.target()
        extra = np.zeros(self.num_envs, dtype=bool) if failed is None else alive & np.asarray(failed, dtype=bool)
        # A visit on the step the body fails does not count: then, as in the grid world, an episode has
        # succeeded exactly when it terminated with progress == task length.
        correct = is_colour & (code == target) & ~extra
        self.progress += correct
        # A body never starts in a wall, so being in one means it entered it.
        wall = alive & (code >= config.n_colours)
        completed = correct & (self.progress == self.task_lengths)
        failure = alive & ((is_colour & ~correct) | wall | extra)
        self.terminated |= completed | failure
        self.truncated |= alive & ~self.terminated & (self.t >= config.horizon)
        self.done = self.terminated | self.truncated
        reward = completed.astype(np.float32)
        info = {"visited": np.where(is_colour, code, -1), "progress": self.progress.copy(), "target": self.target()}
        return reward, info

    def features(self, xy: np.ndarray) -> np.ndarray:
        """The task-related observation of each env at positions `xy` [N, 2], float32 [N, n_features]."""
        config = self.config
        xy = np.asarray(xy, dtype=np.float64)
        position = np.clip(xy / config.half_width, -1.0, 1.0)
        relative = (self.object_xy - xy[:, None, :]) / (2 * config.half_width)  # [N, O+W, 2]
        centre = cell_centres(self.cells[:, 0], self.cells[:, 1], config)
        local = np.clip((xy - centre) / (config.cell_size / 2), -1.0, 1.0)
        return np.concatenate([position, relative.reshape(self.num_envs, -1), local], axis=1).astype(np.float32)


class PinpadBatchState:
    """What the batched pinpad envs share: the episode bookkeeping (`self.logic`) under the names
    `BatchedGridWorld` uses, so that code driving batched environments (rollouts, RL) treats every env
    alike, and the resets, which leave placing the bodies to each env's `_place_bodies`."""

    def __init__(self, config: PinpadConfig, num_envs: int):
        self.config = config
        self.logic = PinpadLogic(config, num_envs)
        self.num_envs = self.logic.num_envs
        self.rng = np.random.default_rng()

    def reset(
        self,
        seed: int | None = None,
        tasks: Sequence[Sequence[int]] | None = None,
        *,
        layouts: np.ndarray | None = None,
        start_cells: np.ndarray | None = None,
    ) -> np.ndarray:
        """Start a new episode in every env; returns observations float32 [N, obs_dim]."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        all_envs = np.ones(self.num_envs, dtype=bool)
        self.reset_envs(all_envs, tasks, layouts=layouts, start_cells=start_cells)
        return self.observations()

    def reset_envs(
        self,
        env_mask: np.ndarray,
        tasks: Sequence[Sequence[int]] | None = None,
        *,
        layouts: np.ndarray | None = None,
        start_cells: np.ndarray | None = None,
    ) -> None:
        """Start new episodes where `env_mask` [N] is True, drawing from `self.rng` (see `PinpadLogic.reset_envs`
        for the task's draws; the body's own draws follow)."""
        mask = np.array(env_mask, dtype=bool)  # a copy: callers pass `done`, which the reset rewrites
        if not mask.any():  # nothing to start (as in the grid world): draw nothing
            return
        start = self.logic.reset_envs(mask, self.rng, tasks, layouts=layouts, start_cells=start_cells)
        self._place_bodies(mask, start)

    def _place_bodies(self, mask: np.ndarray, start: np.ndarray) -> None:
        """Put the bodies of the envs in `mask` [N] at their start positions `start` [k, 2]."""
        raise NotImplementedError

    def observations(self) -> np.ndarray:
        """float32 [N, obs_dim]: the body's own observation, then the pinpad features."""
        raise NotImplementedError

    @property
    def done(self) -> np.ndarray:
        return self.logic.done

    def target(self) -> np.ndarray:
        return self.logic.target()

    @property
    def terminated(self) -> np.ndarray:
        return self.logic.terminated

    @property
    def truncated(self) -> np.ndarray:
        return self.logic.truncated

    @property
    def progress(self) -> np.ndarray:
        return self.logic.progress

    @property
    def task_lengths(self) -> np.ndarray:
        return self.logic.task_lengths

    @property
    def tasks(self) -> np.ndarray:
        return self.logic.tasks

    @property
    def t(self) -> np.ndarray:
        return self.logic.t

    @property
    def success(self) -> np.ndarray:
        return self.logic.success


def single_env_info(logic: PinpadLogic, step_info: dict[str, np.ndarray], xy: np.ndarray) -> dict[str, Any]:
    """The Gymnasium info of a batch of one at body position `xy`: "task", "progress", "target", "visited"
    (from `step_info`, the batch's step info), "cell" ((row, col)) and "xy"."""
    task = tuple(int(c) for c in logic.tasks[0, : logic.task_lengths[0]])
    return {
        "task": task,
        "progress": int(logic.progress[0]),
        "target": int(logic.target()[0]),
        "visited": int(step_info["visited"][0]),
        "cell": tuple(int(v) for v in logic.cells[0]),
        "xy": xy,
    }


def symlog(x: np.ndarray) -> np.ndarray:
    """sign(x) log(1 + |x|): compresses large velocities while keeping small ones nearly linear."""
    return np.sign(x) * np.log1p(np.abs(x))


def render_topdown(
    layout: np.ndarray,
    xy: np.ndarray,
    config: PinpadConfig,
    *,
    pixels: int = 256,
    trail: np.ndarray | None = None,
    target: int = -1,
) -> np.ndarray:
    """A top-down picture of one episode's state, uint8 [pixels, pixels, 3].

    Cells are drawn in their colour (walls dark grey, empty cells light grey) with thin grid lines; the
    body is a black disc at `xy`; `trail` [T, 2] (past positions) is drawn as small dark dots; the next
    colour to visit (`target`, if >= 0) gets a black frame.
    """
    size = config.size
    cell_px = pixels / size
    image = np.empty((pixels, pixels, 3), dtype=np.uint8)
    pix = np.arange(pixels)
    rows = np.minimum((pix / cell_px).astype(int), size - 1)
    codes = np.asarray(layout)[rows[:, None], rows[None, :]].astype(np.int64)  # [pixels, pixels]
    image[:] = FLOOR_RGB
    is_colour = (codes >= 0) & (codes < config.n_colours)
    image[is_colour] = COLOUR_RGB[codes[is_colour] % len(COLOUR_RGB)]
    image[codes >= config.n_colours] = WALL_RGB
    edge = (pix % cell_px) < 1.0
    image[edge, :] = 160
    image[:, edge] = 160
    if target >= 0:
        r, c = np.argwhere(np.asarray(layout) == target)[0]
        top, left = int(r * cell_px), int(c * cell_px)
        width = max(2, pixels // 100)
        span = int(cell_px)
        image[top : top + width, left : left + span] = 0
        image[top + span - width : top + span, left : left + span] = 0
        image[top : top + span, left : left + width] = 0
        image[top : top + span, left + span - width : left + span] = 0

    def to_pixels(points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        px = (points[:, 0] + config.half_width) / config.cell_size * cell_px
        py = (config.half_width - points[:, 1]) / config.cell_size * cell_px
        return np.stack([py, px], axis=1)  # (row, col) in pixels

    yy, xx = np.mgrid[0:pixels, 0:pixels]
    if trail is not None and len(trail):
        for r, c in to_pixels(trail):
            r0, c0 = int(np.clip(r, 0, pixels - 1)), int(np.clip(c, 0, pixels - 1))
            image[max(r0 - 1, 0) : r0 + 2, max(c0 - 1, 0) : c0 + 2] = 90
    r, c = to_pixels(xy)[0]
    disc = (yy - r) ** 2 + (xx - c) ** 2 <= (cell_px * 0.12) ** 2
    image[disc] = 0
    return image
