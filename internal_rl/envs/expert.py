"""The grid-world expert that generates pretraining data (paper App. C.1): a stochastic shortest-path policy.

For each environment the expert heads for the next colour of its task along a shortest path, choosing
uniformly among the actions that start one (this randomness is what makes the demonstrations
"stochastic"). Paths may not cross walls or any other colour, because stepping on a non-target colour
ends the episode. With probability epsilon per step the action is instead drawn uniformly among the
actions that do not end the episode in failure (the paper's Fig. A2 robustness study; default 0). If
the target cannot be reached it also acts randomly among the non-failing actions. The `noiseless` expert
takes the first shortest-path action in a fixed order (up, right, down, left) instead of a random one: the
grid world's counterpart of the pinpad experts' mean actions, for the cleaner data D* (paper App. C.4.4;
the paper says only that D* is cleaner; the fixed order is ours).

Shortest-path distances are computed by dynamic programming for every (environment, colour) pair at
once: a min-plus relaxation of the whole batch of distance maps, repeated until nothing changes (a
breadth-first search run in parallel). Distances depend only on the layout, so the expert caches them
and recomputes only the environments whose layout changed since its last call (i.e. after a reset);
acting is then a handful of gathers.
"""

import numpy as np

from internal_rl.common.errors import ConfigError
from internal_rl.envs.batched_gridworld import BatchedGridWorld
from internal_rl.envs.gridworld import EMPTY, MOVES, N_ACTIONS, GridWorldConfig


def _distance_dtype(config: GridWorldConfig) -> type:
    # Distances stay below G*G; the smallest unsigned type keeps the relaxation memory-light.
    return np.uint8 if config.size * config.size < _unreachable(np.uint8) else np.uint16


def _unreachable(dtype: type) -> int:
    """The distance that marks forbidden or disconnected cells: one below the dtype's maximum, so that
    unreachable + 1 still fits and the relaxation needs no saturation."""
    return int(np.iinfo(dtype).max) - 1


def _padded_codes(layouts: np.ndarray, config: GridWorldConfig) -> np.ndarray:
    """Layouts [n, G, G] with a border of walls, flattened: int8 [n, (G+2)^2]."""
    n, width = len(layouts), config.size + 2
    codes = np.full((n, width, width), config.n_colours + config.n_walls, dtype=np.int8)
    codes[:, 1:-1, 1:-1] = layouts
    return codes.reshape(n, -1)


def _padded_distance_maps(layouts: np.ndarray, config: GridWorldConfig) -> np.ndarray:
    """Distances to each colour over the padded grid: unsigned [n, n_colours, (G+2)^2].

    Entry [i, c, p] is the number of moves from padded cell p to colour c's cell in layout i, moving only
    through empty cells; `_unreachable(dtype)` marks forbidden or disconnected cells.
    """
    dtype = _distance_dtype(config)
    unreachable = _unreachable(dtype)
    width = config.size + 2
    codes = _padded_codes(layouts, config)[:, None, :]  # [n, 1, P]
    colours = np.arange(config.n_colours, dtype=np.int8).reshape(1, -1, 1)
    # 0 where a path to colour c may pass (empty cells and c itself), `unreachable` elsewhere: the maximum
    # with it keeps walls, other colours and the border unreachable after every relaxation.
    forbidden = np.where((codes == EMPTY) | (codes == colours), 0, unreachable).astype(dtype)
    dist = np.where(codes == colours, 0, unreachable).astype(dtype)  # [n, C, P]
    # Relax dist[p] = min(dist[p], 1 + min over the 4 neighbours) until nothing changes (Jacobi min-plus
    # iteration = BFS level by level). All maps are relaxed as one flat array, shifted by +-1 and +-width:
    # every interior cell's neighbours lie in its own map, and border cells stay blocked whatever their
    # shifted "neighbours" hold, so one contiguous pass covers the whole batch.
    flat, flat_blocked = dist.reshape(-1), forbidden.reshape(-1)
    lo, hi = width, flat.size - width
    inner, blocked = flat[lo:hi], flat_blocked[lo:hi]
    candidate, scratch = np.empty_like(inner), np.empty_like(inner)
    for _ in range(config.size * config.size):
        np.minimum(flat[lo - 1 : hi - 1], flat[lo + 1 : hi + 1], out=candidate)
        np.minimum(flat[lo - width : hi - width], flat[lo + width : hi + width], out=scratch)
        np.minimum(candidate, scratch, out=candidate)
        candidate += 1  # at most unreachable + 1 = the dtype's maximum: no overflow
        np.maximum(candidate, blocked, out=candidate)
        if not (candidate < inner).any():
            break
        np.minimum(inner, candidate, out=inner)
    return dist


def distance_maps(layouts: np.ndarray, config: GridWorldConfig) -> np.ndarray:
    """Shortest-path move counts to every colour: int16 [n, n_colours, G, G], -1 where unreachable.

    Entry [i, c, r, k] counts the moves from cell (r, k) to colour c's cell in layout i through empty
    cells only (walls and every other colour are forbidden); forbidden cells themselves read -1.
    """
    size = config.size
    dist = _padded_distance_maps(np.asarray(layouts), config)
    grid = dist.reshape(len(layouts), config.n_colours, size + 2, size + 2)[:, :, 1:-1, 1:-1]
    return np.where(grid == _unreachable(dist.dtype), -1, grid.astype(np.int16))


class GridExpert:
    """Stochastic shortest-path expert for a `BatchedGridWorld` (paper App. C.1)."""

    def __init__(self, config: GridWorldConfig, epsilon: float = 0.0, noiseless: bool = False):
        if not 0.0 <= epsilon <= 1.0:
            raise ConfigError(f"expert epsilon must be in [0, 1], got {epsilon!r}")
        if noiseless and epsilon:
            raise ConfigError(f"the noiseless expert takes no random actions; got epsilon={epsilon}")
        self.config = config
        self.epsilon = float(epsilon)
        self.noiseless = bool(noiseless)
        width = config.size + 2
        # Padded-grid index displacement of each action (0 up, 1 right, 2 down, 3 left).
        self._deltas = np.array([-width, 1, width, -1], dtype=np.int64)
        self._layouts: np.ndarray | None = None  # the layouts the cached maps were computed for
        self._codes: np.ndarray | None = None  # int16 [N, (G+2)^2] padded layouts
        self._dist: np.ndarray | None = None  # [N, n_colours, (G+2)^2], see _padded_distance_maps
        self._unreachable = _unreachable(_distance_dtype(config))

    def act(self, env: BatchedGridWorld, rng: np.random.Generator) -> np.ndarray:
        """One action per env, int64 [N] (0 for envs that are done). Draws a fixed amount from `rng`."""
        if env.config != self.config:
            raise ConfigError("GridExpert was built for a different GridWorldConfig than the env it acts in")
        self._refresh(env)
        n = env.num_envs
        target = env.target()  # [N], -1 when done
        safe_target = np.maximum(target, 0)
        width = self.config.size + 2
        agent_pos = env.agent_pos
        padded_pos = (agent_pos[:, 0] + 1) * width + agent_pos[:, 1] + 1
        next_pos = padded_pos[:, None] + self._deltas[None, :]  # [N, 4] padded cells the actions lead to
        next_code = np.take_along_axis(self._codes, next_pos, axis=1).astype(np.int64)
        # Stepping on a colour other than the target ends the episode in failure.
        fails = (next_code >= 0) & (next_code < self.config.n_colours) & (next_code != safe_target[:, None])
        flat_index = (np.arange(n) * self.config.n_colours + safe_target)[:, None] * self._dist.shape[2] + next_pos
        # A blocked move keeps the agent in place, which is never on a shortest path; blocked cells are
        # unreachable in the maps, so only moves onto the path's next cell attain the minimum.
        action_dist = self._dist.reshape(-1).take(flat_index)  # [N, 4]
        best = action_dist.min(axis=1, keepdims=True)
        optimal = action_dist == best
        # Unreachable targets and epsilon steps: any action that does not fail (all of them if every
        # action fails, which needs the agent boxed in by other colours).
        safe = ~fails
        safe[~safe.any(axis=1)] = True
        explore = (rng.random(n) < self.epsilon) | (best[:, 0] == self._unreachable)
        allowed = np.where(explore[:, None], safe, optimal)
        # Uniform choice among the allowed actions: the largest of i.i.d. uniform scores; the noiseless
        # expert scores them by a fixed order instead (the draw is kept, so both use `rng` alike).
        scores = rng.random((n, N_ACTIONS))
        if self.noiseless:
            scores = np.broadcast_to(np.linspace(1.0, 0.5, N_ACTIONS), (n, N_ACTIONS))
        scores = np.where(allowed, scores, -1.0)
        actions = scores.argmax(axis=1)
        return np.where(target >= 0, actions, 0)

    def _refresh(self, env: BatchedGridWorld) -> None:
        """Recompute the distance maps of the envs whose layout changed since the last call."""
        if self._layouts is None or self._layouts.shape != env.layouts.shape:
            self._layouts = env.layouts.copy()
            self._codes = _padded_codes(self._layouts, self.config)
            self._dist = _padded_distance_maps(self._layouts, self.config)
            return
        changed = (env.layouts != self._layouts).reshape(env.num_envs, -1).any(axis=1)
        if changed.any():
            self._layouts[changed] = env.layouts[changed]
            self._codes[changed] = _padded_codes(self._layouts[changed], self.config)
            self._dist[changed] = _padded_distance_maps(self._layouts[changed], self.config)


def expert_action_distribution(
    first_observations: np.ndarray,
    observations: np.ndarray,
    targets: np.ndarray,
    episode: np.ndarray,
    config: GridWorldConfig,
    epsilon: float = 0.0,
) -> np.ndarray:
    """The expert's action distribution at recorded steps, from what the steps show: float [S, n_actions].

    `first_observations` [N, obs_dim] are the episodes' first observations (their layouts), `observations`
    [S, obs_dim] the steps' (the agent's position), `targets` [S] the colour each step heads for and
    `episode` [S] the episode (row of `first_observations`) of each step. The rule is the expert's: uniform
    over shortest-path actions (paths avoid walls and other colours) with probability 1 - epsilon, else
    uniform over the actions that do not step on a wrong colour.
    """
    size, n_colours = config.size, config.n_colours
    n_objects = n_colours + config.n_walls
    first = first_observations.reshape(len(first_observations), size, size, n_objects + 1)
    # Layout code = the object channel that is on; the agent channel is the last one.
    layouts = np.where(first[..., :n_objects].any(-1), first[..., :n_objects].argmax(-1), -1).astype(np.int8)
    dist = distance_maps(layouts, config).astype(np.int64)  # [N, C, G, G], -1 where forbidden

    obs = observations.reshape(-1, size * size, n_objects + 1)
    row, col = np.divmod(obs[..., -1].argmax(-1), size)
    target = np.asarray(targets).astype(np.int64)
    next_row, next_col = row[:, None] + MOVES[:, 0], col[:, None] + MOVES[:, 1]  # [S, 4]
    inside = (next_row >= 0) & (next_row < size) & (next_col >= 0) & (next_col < size)
    r, c = np.clip(next_row, 0, size - 1), np.clip(next_col, 0, size - 1)
    code = layouts[episode[:, None], r, c]
    next_dist = np.where(inside, dist[episode[:, None], target[:, None], r, c], -1)
    # A move is on a shortest path iff it reaches the cell of least distance (blocked moves never do).
    reachable = next_dist >= 0
    best = np.where(reachable, next_dist, np.iinfo(np.int64).max).min(-1, keepdims=True)
    optimal = reachable & (next_dist == best)
    safe = ~(inside & (code >= 0) & (code < n_colours) & (code != target[:, None]))
    safe[~safe.any(-1)] = True  # boxed in by other colours: the expert then picks any action
    optimal = np.where(optimal.any(-1, keepdims=True), optimal, safe)  # unreachable target: a random safe move
    return (1 - epsilon) * optimal / optimal.sum(-1, keepdims=True) + epsilon * safe / safe.sum(-1, keepdims=True)
