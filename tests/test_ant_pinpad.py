"""Ant-pinpad: Gymnasium contracts, the paper's initial state, observation and terminations, rendering."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env, data_equivalence

import internal_rl  # noqa: F401  (registers internal_rl/AntPinpad-v0)
from internal_rl.common.errors import ConfigError
from internal_rl.envs.ant_pinpad import FENCE_GAP, AntPinpadConfig, AntPinpadEnv, BatchedAntPinpad
from internal_rl.envs.pinpad import cell_centres, symlog

# row 0 = [0, 1, ., .], row 1 = [., wall, ., .], row 2 = [., ., 2, .], row 3 = [3, ., ., .].
LAYOUT = np.array([[0, 1, -1, -1], [-1, 4, -1, -1], [-1, -1, 2, -1], [3, -1, -1, -1]], dtype=np.int8)


def test_check_env_passes() -> None:
    check_env(gym.make("internal_rl/AntPinpad-v0").unwrapped, skip_render_check=True)


def test_defaults_and_bad_config() -> None:
    config = AntPinpadConfig()
    assert (config.size, config.n_colours, config.n_walls, config.horizon, config.obs_dim) == (4, 4, 1, 500, 41)
    assert (config.min_torso_height, config.max_torso_height, config.cell_size) == (0.2, 1.0, 2.0)
    env = gym.make("internal_rl/AntPinpad-v0", horizon=20)
    assert env.observation_space.shape == (41,) and env.action_space.shape == (8,)
    with pytest.raises(ConfigError, match="frame_skip"):
        AntPinpadConfig(frame_skip=0)
    with pytest.raises(ConfigError, match="torso height range"):
        AntPinpadConfig(max_torso_height=0.5)
    with pytest.raises(ConfigError, match="camera"):
        AntPinpadEnv(camera="side")


def test_initial_state_is_the_papers() -> None:
    env = BatchedAntPinpad(AntPinpadConfig(), 64)
    obs = env.reset(seed=0)
    qpos = np.array([d.qpos for d in env.data])
    qvel = np.array([d.qvel for d in env.data])
    centres = cell_centres(env.logic.cells[:, 0], env.logic.cells[:, 1], env.config)
    assert np.abs(qpos[:, :2] - centres).max() < 1.0, "x, y within the start cell"
    assert np.abs(qpos[:, :2] - centres).max() > 0.6, "spread over the cell"
    assert np.allclose(qpos[:, 2], 0.75)
    yaw = 2 * np.arctan2(qpos[:, 6], qpos[:, 3])
    assert np.allclose(qpos[:, 4:6], 0.0) and np.ptp(yaw) > 3.0, "a random yaw about the vertical only"
    assert np.abs(qpos[:, 7:]).max() <= 0.1 and np.abs(qvel).max() <= 0.1
    proprio = np.concatenate([qpos[:, 2:], qvel], axis=1)
    assert np.allclose(obs[:, :27], symlog(proprio), atol=1e-6)
    assert np.allclose(obs[:, 27:29], qpos[:, :2] / 4.0, atol=1e-6)


def test_same_seed_same_episode() -> None:
    def episode(seed: int) -> list[np.ndarray]:
        env = AntPinpadEnv()
        obs = [env.reset(seed=seed)[0]]
        obs += [env.step(a)[0] for a in np.random.default_rng(0).uniform(-1, 1, (10, 8))]
        return obs

    assert data_equivalence(episode(1), episode(1))


def teleport(env: AntPinpadEnv, row: int, col: int, height: float = 0.75) -> tuple:
    data = env.batch.data[0]
    data.qpos[:2] = cell_centres(np.array(row), np.array(col), env.config)
    data.qpos[2] = height
    data.qvel[:] = 0.0
    return env.step(np.zeros(8))


def test_visits_wall_and_torso_height() -> None:
    env = AntPinpadEnv()
    env.reset(seed=0, options={"layout": LAYOUT, "start_cell": (1, 0), "task": (0, 1)})
    _, reward, terminated, _, info = teleport(env, 0, 0)
    assert (reward, terminated, info["visited"], info["progress"]) == (0.0, False, 0, 1)
    _, reward, terminated, _, info = teleport(env, 0, 1)
    assert (reward, terminated, info["visited"]) == (1.0, True, 1)

    env.reset(seed=0, options={"layout": LAYOUT, "start_cell": (2, 1), "task": (0, 1)})
    _, reward, terminated, _, info = teleport(env, 1, 1)
    assert (reward, terminated, info["cell"]) == (0.0, True, (1, 1)), "the wall cell ends the episode"

    env.reset(seed=0, options={"layout": LAYOUT, "start_cell": (2, 1), "task": (0, 1)})
    _, _, terminated, _, info = teleport(env, 2, 1, height=1.5)
    assert terminated and info["torso_height"] > 1.0, "torso above the healthy range"


def test_fence_keeps_the_ant_in_the_arena() -> None:
    env = BatchedAntPinpad(AntPinpadConfig(tasks=((0,),)), 1)
    env.reset(seed=0, layouts=LAYOUT[None], start_cells=[(3, 3)])
    data = env.data[0]
    data.qvel[0] = 5.0  # thrown east at 5 m/s
    for _ in range(40):
        env.step(np.zeros((1, 8)))
        if env.done[0]:
            break
    assert data.qpos[0] < 4.0 + FENCE_GAP + 0.3, "stopped by the fence (plus at most the torso radius)"


def test_render_shows_the_layout() -> None:
    env = AntPinpadEnv(render_mode="rgb_array", camera="top")
    env.reset(seed=0, options={"layout": LAYOUT, "start_cell": (2, 1)})
    image = env.render()
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    # The wall tile (dark) and colour 2's tile (blue) are where the layout puts them.
    def pixel(row: int, col: int) -> np.ndarray:
        # The top camera sees the arena in the middle 1/1.35 of the image.
        margin = 256 * (1 - 1 / 1.35) / 2
        cell = (256 - 2 * margin) / 4
        return image[int(margin + (row + 0.5) * cell), int(margin + (col + 0.5) * cell)].astype(int)

    assert pixel(1, 1).max() < pixel(2, 1).min() - 50, "the wall tile is darker than an empty one"
    r, g, b = pixel(2, 2)
    assert b > r + 60 and b > g
    env.close()
