"""Continuous pinpad and point-pinpad: Gymnasium contracts, the paper's rules, the scripted expert, videos."""

from collections import deque

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env, data_equivalence
from PIL import Image

import internal_rl  # noqa: F401  (registers internal_rl/PointPinpad-v0)
from internal_rl.common.config import config_from_dict, config_to_dict
from internal_rl.common.errors import ConfigError
from internal_rl.envs.gridworld import MOVES
from internal_rl.envs.pinpad import (
    PinpadConfig,
    PinpadLogic,
    cell_centres,
    cells_of,
    shortest_path_directions,
    solvable,
)
from internal_rl.envs.pinpad_expert import PointExpert, PointExpertConfig, point_expert_episodes, rollout_expert
from internal_rl.envs.point_pinpad import BatchedPointPinpad, PointPinpadConfig, PointPinpadEnv
from internal_rl.envs.tasks import PINPAD_POSTTRAIN_TASK, PINPAD_PRETRAIN_TASKS
from internal_rl.envs.video import record_episode, write_gif

# 4x4: row 0 = [0, 1, ., .], row 1 = [., wall, ., .], row 2 = [., ., 2, .], row 3 = [3, ., ., .].
LAYOUT = np.array([[0, 1, -1, -1], [-1, 4, -1, -1], [-1, -1, 2, -1], [3, -1, -1, -1]], dtype=np.int8)


def centre(row: int, col: int, config: PinpadConfig = PinpadConfig()) -> np.ndarray:
    return cell_centres(np.array(row), np.array(col), config)


def logic_at(start: tuple[int, int], task: tuple[int, ...], horizon: int = 500) -> tuple[PinpadLogic, np.ndarray]:
    config = PinpadConfig(horizon=horizon)
    logic = PinpadLogic(config, 1)
    xy = logic.reset_envs(np.ones(1, bool), np.random.default_rng(0), [task], layouts=LAYOUT[None], start_cells=[start])
    return logic, xy


def walk(logic: PinpadLogic, cells: list[tuple[int, int]], failed_at: int = -1) -> list[tuple]:
    """Move the body to the centre of each cell in turn; returns (reward, terminated, truncated, visited)."""
    out = []
    for k, (row, col) in enumerate(cells):
        reward, info = logic.update(centre(row, col)[None], failed=np.array([k == failed_at]))
        out.append((float(reward[0]), bool(logic.terminated[0]), bool(logic.truncated[0]), int(info["visited"][0])))
    return out


# ------------------------------------------------------------------------------------------- Gymnasium API


def test_check_env_passes() -> None:
    check_env(PointPinpadEnv(render_mode="rgb_array"))
    check_env(gym.make("internal_rl/PointPinpad-v0").unwrapped, skip_render_check=True)


def test_defaults_are_the_papers_and_make_takes_overrides() -> None:
    config = PointPinpadConfig()
    assert (config.size, config.n_colours, config.n_walls, config.horizon) == (4, 4, 1, 500)
    assert config.tasks == PINPAD_PRETRAIN_TASKS and len(config.tasks) == 16
    assert PINPAD_POSTTRAIN_TASK == (0, 1, 2, 3)
    assert config.n_features == 14 and config.obs_dim == 16
    env = gym.make("internal_rl/PointPinpad-v0", horizon=50, tasks=((0, 1, 2, 3),))
    obs, info = env.reset(seed=0)
    assert obs.shape == (16,) and obs.dtype == np.float32 and info["task"] == (0, 1, 2, 3)
    assert env.unwrapped.config.horizon == 50


def test_config_round_trips_through_json() -> None:
    config = PointPinpadConfig(cell_size=1.5, tasks=((0, 1), (2, 3, 0)), damping=3.0)
    assert config_from_dict(PointPinpadConfig, config_to_dict(config)) == config


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cell_size": -1.0}, "cell_size"),
        ({"cell_size": float("nan")}, "cell_size"),
        ({"size": 2, "n_colours": 4}, "too many objects"),
        ({"tasks": ((0, 4),)}, "unknown colour 4"),
        ({"tasks": ()}, "non-empty"),
        ({"start_noise": 2.0}, "start_noise"),
        ({"horizon": 0}, "horizon"),
        ({"dt": 0}, "dt"),
        ({"size": True}, "size"),
    ],
)
def test_bad_config_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PointPinpadConfig(**kwargs)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown PointPinpadConfig field"):
        gym.make("internal_rl/PointPinpad-v0", cell_sise=2.0)
    env = PointPinpadEnv()
    with pytest.raises(ConfigError, match="unknown reset option"):
        env.reset(options={"agent_pos": (0, 0)})
    with pytest.raises(ConfigError, match="needs option 'layout'"):
        env.reset(options={"start_cell": (0, 0)})
    with pytest.raises(ConfigError, match="not an empty cell"):
        env.reset(options={"layout": LAYOUT, "start_cell": (0, 0)})
    with pytest.raises(ConfigError, match="exactly once"):
        env.reset(options={"layout": np.where(LAYOUT == 4, -1, LAYOUT)})
    env.reset(seed=0)
    with pytest.raises(ConfigError, match="actions must be"):
        env.step(np.zeros(3))
    with pytest.raises(ConfigError, match="finite"):
        env.step(np.array([np.nan, 0.0]))


def test_same_seed_same_episode_and_fresh_layouts() -> None:
    def episode(seed: int) -> list[np.ndarray]:
        env = PointPinpadEnv()
        obs = [env.reset(seed=seed)[0]]
        actions = np.random.default_rng(0).uniform(-1, 1, (40, 2))
        obs += [env.step(a)[0] for a in actions]
        return obs

    assert data_equivalence(episode(3), episode(3))
    assert not data_equivalence(episode(3), episode(4))
    env = BatchedPointPinpad(PointPinpadConfig(), 64)
    env.reset(seed=1)
    assert len({layout.tobytes() for layout in env.logic.layouts}) == 64


# ------------------------------------------------------------------------------------ layout and observation


def test_layouts_hold_every_object_once_and_the_body_starts_inside_an_empty_cell() -> None:
    env = BatchedPointPinpad(PointPinpadConfig(), 256)
    env.reset(seed=0)
    flat = env.logic.layouts.reshape(256, -1)
    for code in range(5):
        assert ((flat == code).sum(axis=1) == 1).all()
    cells = cells_of(env.pos, env.config)
    assert (env.logic.layouts[np.arange(256), cells[:, 0], cells[:, 1]] == -1).all()
    assert np.array_equal(cells, env.logic.cells)
    # The grid world's batched-env names read the same state.
    assert env.terminated is env.logic.terminated and env.done is env.logic.done and (env.t == 0).all()
    assert np.array_equal(env.target(), env.tasks[:, 0]) and (env.task_lengths == 3).all()
    # Start noise spreads the start over the whole cell (paper: uniform within it).
    local = env.pos - cell_centres(cells[:, 0], cells[:, 1], env.config)
    assert np.abs(local).max() > 0.4 and np.abs(local).max() < 0.5


def test_cell_geometry_row_zero_is_the_top() -> None:
    config = PinpadConfig(cell_size=2.0)
    assert np.allclose(centre(0, 0, config), (-3.0, 3.0)) and np.allclose(centre(3, 2, config), (1.0, -3.0))
    assert tuple(cells_of(np.array([-3.9, 3.9]), config)) == (0, 0)
    assert tuple(cells_of(np.array([3.9, -3.9]), config)) == (3, 3)
    assert tuple(cells_of(np.array([9.0, 0.1]), config)) == (1, 3), "outside counts as the nearest border cell"


def test_observation_features_are_the_papers() -> None:
    env = PointPinpadEnv()
    obs, info = env.reset(options={"layout": LAYOUT, "start_cell": (2, 0), "task": (0, 1)})
    xy = info["xy"]
    assert np.allclose(obs[:2], 0.0), "at rest: symlog velocity 0"
    features = obs[2:]
    assert np.allclose(features[:2], xy / 2.0, atol=1e-6), "position normalised by the arena's half width"
    relative = features[2:12].reshape(5, 2)
    expected = [centre(0, 0), centre(0, 1), centre(2, 2), centre(3, 0), centre(1, 1)]  # colours 0..3, wall
    assert np.allclose(relative, (np.array(expected) - xy) / 4.0, atol=1e-6)
    assert np.allclose(features[12:], (xy - centre(2, 0)) / 0.5, atol=1e-6), "local coordinate in [-1, 1]"
    assert np.abs(features).max() <= 1.0


# ------------------------------------------------------------------------------------------ the paper's rules


def test_success_only_on_in_order_completion_by_entering_cells() -> None:
    logic, _ = logic_at((1, 0), (0, 1))
    steps = walk(logic, [(1, 0), (0, 0), (0, 0), (0, 1)])
    assert steps == [(0.0, False, False, -1), (0.0, False, False, 0), (0.0, False, False, -1), (1.0, True, False, 1)]
    assert logic.success[0] and logic.target()[0] == -1


def test_staying_does_not_visit_and_reentering_does() -> None:
    logic, _ = logic_at((1, 0), (0, 0))
    steps = walk(logic, [(0, 0), (0, 0), (1, 0), (0, 0)])
    assert [s[3] for s in steps] == [0, -1, -1, 0]
    assert [s[0] for s in steps] == [0.0, 0.0, 0.0, 1.0]


def test_wrong_colour_wall_and_body_failure_end_the_episode() -> None:
    logic, _ = logic_at((1, 0), (1, 0))
    assert walk(logic, [(0, 0)]) == [(0.0, True, False, 0)], "a colour out of order is a mine"
    logic, _ = logic_at((2, 1), (0,))
    assert walk(logic, [(1, 1)]) == [(0.0, True, False, -1)], "entering the wall cell"
    logic, _ = logic_at((1, 0), (0,))
    assert walk(logic, [(1, 0), (0, 0)], failed_at=1) == [(0.0, False, False, -1), (0.0, True, False, 0)]
    assert not logic.success[0] and logic.progress[0] == 0, "no visit counts on the step the body fails"


def test_truncated_at_horizon_then_frozen() -> None:
    logic, _ = logic_at((1, 0), (0,), horizon=3)
    steps = walk(logic, [(2, 0), (1, 0), (2, 0), (0, 0)])
    assert [s[2] for s in steps] == [False, False, True, True]
    assert steps[-1] == (0.0, False, True, -1), "frozen: the late visit of colour 0 does not count"
    assert logic.t[0] == 3


def test_point_mass_moves_with_the_force_and_stays_inside_the_fence() -> None:
    env = BatchedPointPinpad(PointPinpadConfig(tasks=((0,),)), 1)
    env.reset(layouts=LAYOUT[None], start_cells=[(3, 3)])
    start = env.pos.copy()
    env.step(np.array([[1.0, 0.0]]))
    assert env.pos[0, 0] > start[0, 0] and env.pos[0, 1] == start[0, 1]
    for _ in range(60):
        env.step(np.array([[5.0, -1.0]]))  # clipped to [1, -1]: pushed into the south-east corner
    assert np.all(np.abs(env.pos) <= 2.0) and np.allclose(env.vel, 0.0)
    assert abs(env.vel).max() <= env.config.max_speed


# ------------------------------------------------------------------------------------------------ the expert


def bfs(layout: np.ndarray, start: tuple[int, int], colour: int) -> int | None:
    """Fewest moves from `start` onto `colour`, entering only empty cells before it."""
    size = len(layout)
    seen, queue = {start}, deque([(start, 0)])
    while queue:
        (row, col), d = queue.popleft()
        for dr, dc in MOVES:
            r, c = row + int(dr), col + int(dc)
            if 0 <= r < size and 0 <= c < size:
                if layout[r, c] == colour:
                    return d + 1
                if layout[r, c] == -1 and (r, c) not in seen:
                    seen.add((r, c))
                    queue.append(((r, c), d + 1))
    return None


def test_shortest_path_directions_follow_breadth_first_search() -> None:
    config = PinpadConfig()
    env = BatchedPointPinpad(PointPinpadConfig(), 40)
    env.reset(seed=2)
    layouts = env.logic.layouts
    priority = np.argsort(np.random.default_rng(0).random((40, 4)), axis=1)
    directions = shortest_path_directions(layouts, config, priority)
    for i in range(40):
        for colour in range(4):
            for row in range(4):
                for col in range(4):
                    if layouts[i, row, col] in (colour, 4):
                        continue
                    expected = bfs(layouts[i], (row, col), colour)
                    move = directions[i, colour, row, col]
                    assert (move >= 0) == (expected is not None)
                    if expected is not None:
                        r, c = row + MOVES[move][0], col + MOVES[move][1]
                        after = 0 if layouts[i, r, c] == colour else bfs(layouts[i], (r, c), colour)
                        assert after == expected - 1


@pytest.mark.parametrize("tasks", [PINPAD_PRETRAIN_TASKS, (PINPAD_POSTTRAIN_TASK,)])
@pytest.mark.parametrize("noise_std", [0.0, 0.3])
def test_expert_succeeds_on_every_solvable_episode(tasks: tuple, noise_std: float) -> None:
    config = PointPinpadConfig(tasks=tasks)
    env = BatchedPointPinpad(config, 256)
    env.rng = np.random.default_rng(0)
    expert = PointExpert(config, PointExpertConfig(noise_std=noise_std))
    arrays = rollout_expert(env, lambda e, r: expert.act(e, r)[0], np.random.default_rng(1))
    can = solvable(arrays["layouts"], arrays["start_cells"], arrays["tasks"], config)
    assert can.mean() > 0.8
    assert arrays["success"][can].mean() >= 0.98
    assert not arrays["success"][~can].any()
    assert arrays["lengths"][arrays["success"]].max() < config.horizon // 2


def test_expert_episodes_are_padded_arrays_with_subgoal_labels() -> None:
    config = PointPinpadConfig()
    a = point_expert_episodes(50, seed=7, env_config=config, batch_size=64)
    b = point_expert_episodes(50, seed=7, env_config=config, batch_size=64)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    n, horizon = a["actions"].shape[:2]
    assert n == 50 and a["observations"].shape == (50, horizon, 16) and a["actions"].shape == (50, horizon, 2)
    assert a["observations"].dtype == np.float32 and a["actions"].dtype == np.float32
    assert a["success"].all() and horizon == a["lengths"].max()
    assert 0.8 < float(a["expert_success_rate"]) <= 1.0
    real = np.arange(horizon)[None, :] < a["lengths"][:, None]
    assert (a["targets"][~real] == -1).all() and (a["targets"][real] >= 0).all()
    assert np.array_equal(a["subgoals"], a["targets"])
    assert (a["rewards"].sum(axis=1) == 1.0).all()
    for i in range(5):
        # The subgoal label runs through the task's colours in order, each for one contiguous segment.
        labels = a["targets"][i, : a["lengths"][i]]
        changes = labels[np.r_[True, labels[1:] != labels[:-1]]]
        assert tuple(changes) == tuple(a["tasks"][i, : len(changes)])
    with pytest.raises(ConfigError, match="episodes"):
        point_expert_episodes(0, seed=0)


# ------------------------------------------------------------------------------------------------ rendering


def test_render_and_gif(tmp_path) -> None:
    env = PointPinpadEnv(render_mode="rgb_array", tasks=((0, 1, 2, 3),))
    expert, rng = PointExpert(env.config), np.random.default_rng(0)
    frames, summary = record_episode(env, lambda obs, info: expert.act(env.batch, rng)[0][0], seed=0, every=4)
    assert frames[0].shape == (256, 256, 3) and frames[0].dtype == np.uint8
    assert summary["length"] > 0 and len(frames) == 1 + -(-summary["length"] // 4)
    path = write_gif(frames, tmp_path / "episode.gif", fps=10)
    with Image.open(path) as gif:
        assert gif.n_frames == len(frames)
    with pytest.raises(ConfigError, match=".gif"):
        write_gif(frames, tmp_path / "episode.mp4")


def test_resetting_no_env_changes_nothing():
    env = BatchedPointPinpad(PointPinpadConfig(), 3)
    env.reset(seed=0)
    before = (env.observations().copy(), env.rng.bit_generator.state)
    env.reset_envs(np.zeros(3, dtype=bool))
    assert np.array_equal(env.observations(), before[0]) and env.rng.bit_generator.state == before[1]


def test_unstable_point_dynamics_are_refused():
    with pytest.raises(ConfigError, match="dt \\* damping = 1.75; expected < 1"):
        PointPinpadConfig(dt=0.5, damping=3.5)
