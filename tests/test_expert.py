"""The grid-world expert: exact shortest paths, success on every solvable task, uniform ties, safe epsilon."""

from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from internal_rl.common.errors import ConfigError
from internal_rl.envs.batched_gridworld import BatchedGridWorld
from internal_rl.envs.expert import GridExpert, distance_maps
from internal_rl.envs.gridworld import MOVES, GridWorldConfig, sample_layouts

FAST = settings(max_examples=30, deadline=None)


def bfs_moves(layout: np.ndarray, start: tuple[int, int], colour: int) -> int | None:
    """Fewest moves from `start` until the agent steps onto `colour`, entering only empty cells before it."""
    size = len(layout)
    seen, queue = {start}, deque([(start, 0)])
    while queue:
        (row, col), d = queue.popleft()
        for dr, dc in MOVES:
            r, c = row + int(dr), col + int(dc)
            if not (0 <= r < size and 0 <= c < size):
                continue
            if layout[r, c] == colour:
                return d + 1
            if layout[r, c] == -1 and (r, c) not in seen:
                seen.add((r, c))
                queue.append(((r, c), d + 1))
    return None


def optimal_episode_length(layout: np.ndarray, start: tuple[int, int], task: tuple[int, ...]) -> int | None:
    """Moves of the shortest successful episode, or None if some colour cannot be reached safely."""
    total, position = 0, start
    for colour in task:
        moves = bfs_moves(layout, position, colour)
        if moves is None:
            return None
        total += moves
        position = tuple(int(x) for x in np.argwhere(layout == colour)[0])
    return total


def test_distance_maps_match_breadth_first_search() -> None:
    config = GridWorldConfig()
    layouts, _ = sample_layouts(np.random.default_rng(0), 6, config)
    maps = distance_maps(layouts, config)
    assert maps.shape == (6, 8, 7, 7)
    for i, layout in enumerate(layouts):
        for colour in range(config.n_colours):
            for (row, col), code in np.ndenumerate(layout):
                # Empty cells: fewest moves through empty cells; the target: 0; walls and other colours: -1.
                expected = bfs_moves(layout, (row, col), colour) if code == -1 else (0 if code == colour else None)
                assert maps[i, colour, row, col] == (-1 if expected is None else expected), (i, colour, row, col)


@FAST
@given(seed=st.integers(0, 2**31 - 1), task=st.lists(st.integers(0, 7), min_size=1, max_size=12).map(tuple),
       noiseless=st.booleans())
def test_expert_solves_every_solvable_task_on_a_shortest_path(seed: int, task: tuple[int, ...], noiseless: bool) -> None:
    config = GridWorldConfig()
    n = 16
    env = BatchedGridWorld(config, n)
    env.reset(seed=seed, tasks=[task] * n)
    layouts, starts = env.layouts.copy(), env.agent_pos.copy()
    expert, rng = GridExpert(config, noiseless=noiseless), np.random.default_rng(seed)
    success = np.zeros(n, dtype=bool)
    while not env.done.all():
        _, reward, _, _, _ = env.step(expert.act(env, rng), with_obs=False)
        success |= reward == 1.0
    for i in range(n):
        optimal = optimal_episode_length(layouts[i], tuple(starts[i]), task)
        solvable = optimal is not None and optimal <= config.horizon
        assert success[i] == solvable, (i, optimal)
        if solvable:
            assert env.t[i] == optimal, "the expert walks shortest paths only"


def test_noiseless_expert_takes_the_first_shortest_path_action_whatever_the_rng():
    config = GridWorldConfig()
    env = BatchedGridWorld(config, 64)
    env.reset(seed=3)
    noisy, noiseless = GridExpert(config), GridExpert(config, noiseless=True)
    first = noiseless.act(env, np.random.default_rng(0))
    assert np.array_equal(first, noiseless.act(env, np.random.default_rng(1)))
    # Every action the noisy expert ever takes here is optimal; the noiseless one takes the lowest of them.
    seen = np.stack([noisy.act(env, np.random.default_rng(k)) for k in range(64)])  # [draws, N]
    assert np.array_equal(first, seen.min(axis=0))
    assert (seen != first).any(), "some states have several shortest-path actions"
    with pytest.raises(ConfigError, match="noiseless"):
        GridExpert(config, epsilon=0.1, noiseless=True)


def failing_actions(env: BatchedGridWorld) -> np.ndarray:
    """bool [N, 4]: the action moves onto a colour other than the env's target (the episode fails)."""
    size = env.config.size
    cells = env.agent_pos[:, None, :] + MOVES[None, :, :]  # [N, 4, 2]
    on_grid = ((cells >= 0) & (cells < size)).all(axis=2)
    clipped = np.clip(cells, 0, size - 1)
    codes = env.layouts[np.arange(env.num_envs)[:, None], clipped[..., 0], clipped[..., 1]]
    return on_grid & (codes >= 0) & (codes < env.config.n_colours) & (codes != env.target()[:, None])


@pytest.mark.parametrize("epsilon", [0.2, 1.0])
def test_epsilon_actions_never_fail(epsilon: float) -> None:
    config = GridWorldConfig()
    env = BatchedGridWorld(config, 256)
    env.reset(seed=0)
    expert, rng = GridExpert(config, epsilon=epsilon), np.random.default_rng(0)
    while not env.done.all():
        actions = expert.act(env, rng)
        fails = failing_actions(env)
        chose_failure = fails[np.arange(env.num_envs), actions] & ~env.done
        # Only an agent boxed in by other colours on all four sides has no safe move.
        assert not (chose_failure & ~fails.all(axis=1)).any()
        env.step(actions, with_obs=False)
    success = (env.progress == env.task_lengths).mean()
    assert success > (0.5 if epsilon < 1 else 0.0)


def test_ties_are_broken_uniformly() -> None:
    # Agent in the top-left corner, colour 0 two cells down and two right: right and down are both optimal.
    config = GridWorldConfig(size=5, n_colours=2, n_walls=1, tasks=((0,),))
    layout = np.full((5, 5), -1, dtype=np.int8)
    layout[2, 2], layout[4, 4], layout[4, 0] = 0, 1, 2
    n = 2000
    env = BatchedGridWorld(config, n)
    env.reset(seed=0, layouts=np.repeat(layout[None], n, axis=0), agent_pos=np.zeros((n, 2), dtype=np.int64))
    actions = GridExpert(config).act(env, np.random.default_rng(0))
    assert set(actions.tolist()) == {1, 2}
    assert abs((actions == 1).mean() - 0.5) < 0.05


def test_unreachable_target_gives_safe_random_actions() -> None:
    # Colour 0 is walled into the corner by walls (codes 2, 3): the expert must wander without touching colour 1.
    config = GridWorldConfig(size=4, n_colours=2, n_walls=2, horizon=30, tasks=((0,),))
    layout = np.full((4, 4), -1, dtype=np.int8)
    layout[0, 0], layout[0, 1], layout[1, 0], layout[2, 2] = 0, 2, 3, 1
    n = 64
    env = BatchedGridWorld(config, n)
    env.reset(seed=0, layouts=np.repeat(layout[None], n, axis=0), agent_pos=np.tile([3, 3], (n, 1)))
    expert, rng = GridExpert(config), np.random.default_rng(0)
    positions = set()
    while not env.done.all():
        env.step(expert.act(env, rng), with_obs=False)
        positions.update(map(tuple, env.agent_pos.tolist()))
    assert env.truncated.all() and not env.terminated.any()
    assert len(positions) > 5, "it moves around rather than standing still"


def test_cached_distances_follow_partial_resets() -> None:
    config = GridWorldConfig()
    n = 32
    env = BatchedGridWorld(config, n)
    env.reset(seed=1)
    expert, rng = GridExpert(config), np.random.default_rng(1)
    for step in range(40):
        actions = expert.act(env, rng)
        maps = distance_maps(env.layouts, config)
        target, pos = env.target(), env.agent_pos
        for i in np.flatnonzero(target >= 0):
            row, col = pos[i] + MOVES[actions[i]]
            here = bfs_moves(env.layouts[i], tuple(pos[i]), int(target[i]))
            if here is not None:
                # An optimal move lands on the target or on a cell one move closer.
                assert env.layouts[i, row, col] == target[i] or maps[i, target[i], row, col] == here - 1
        env.step(actions, with_obs=False)
        if step % 5 == 4:
            env.reset_envs(env.done | (np.arange(n) % 3 == step % 3))


def test_bad_expert_arguments_are_refused() -> None:
    with pytest.raises(ConfigError, match="epsilon must be in \\[0, 1\\], got 1.5"):
        GridExpert(GridWorldConfig(), epsilon=1.5)
    env = BatchedGridWorld(GridWorldConfig(horizon=50), 2)
    env.reset(seed=0)
    with pytest.raises(ConfigError, match="different GridWorldConfig"):
        GridExpert(GridWorldConfig()).act(env, np.random.default_rng(0))
