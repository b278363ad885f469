"""Gridworld-pinpad: Gymnasium contracts, the paper's rules, batched == scalar, vector env == SyncVectorEnv."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env, data_equivalence
from gymnasium.utils.env_match import check_environments_match
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from hypothesis import given, settings
from hypothesis import strategies as st

import internal_rl  # noqa: F401  (registers internal_rl/GridWorld-v0)
from internal_rl.common.config import config_from_dict, config_to_dict
from internal_rl.common.errors import ConfigError
from internal_rl.envs.batched_gridworld import BatchedGridWorld, GridWorldVectorEnv
from internal_rl.envs.gridworld import MOVES, GridWorldConfig, GridWorldEnv, sample_layouts
from internal_rl.envs.tasks import GRID_PRETRAIN_TASKS

FAST = settings(max_examples=30, deadline=None)


@st.composite
def small_configs(draw: st.DrawFn) -> GridWorldConfig:
    """Tiny grids with short tasks and horizons, so random play hits every outcome (success, mine, timeout)."""
    size = draw(st.integers(2, 5))
    n_colours = draw(st.integers(1, min(4, size * size - 1)))
    n_walls = draw(st.integers(0, min(2, size * size - 1 - n_colours)))
    task = st.lists(st.integers(0, n_colours - 1), min_size=1, max_size=3).map(tuple)
    tasks = tuple(draw(st.lists(task, min_size=1, max_size=3)))
    horizon = draw(st.integers(1, 12))
    return GridWorldConfig(size=size, n_colours=n_colours, n_walls=n_walls, horizon=horizon, tasks=tasks)


def agent_cell(obs: np.ndarray, config: GridWorldConfig) -> tuple[int, int]:
    grid = obs.reshape(config.size, config.size, config.n_channels)
    rows, cols = np.nonzero(grid[:, :, -1])
    assert len(rows) == 1, "exactly one agent"
    return int(rows[0]), int(cols[0])


# ------------------------------------------------------------------------------------------- Gymnasium API


def test_check_env_passes() -> None:
    check_env(GridWorldEnv(), skip_render_check=True)
    check_env(gym.make("internal_rl/GridWorld-v0").unwrapped)


def test_make_by_id_with_config_overrides() -> None:
    env = gym.make("internal_rl/GridWorld-v0", size=5, n_colours=3, n_walls=1, tasks=((0, 1, 2),))
    obs, info = env.reset(seed=0)
    assert obs.shape == (5 * 5 * 5,) and obs.dtype == np.float32
    assert info["task"] == (0, 1, 2) and info["target"] == 0
    assert gym.make("internal_rl/GridWorld-v0").observation_space.shape == (637,)


def test_defaults_are_the_papers() -> None:
    config = GridWorldConfig()
    assert (config.size, config.n_colours, config.n_walls, config.horizon, config.obs_dim) == (7, 8, 4, 100, 637)
    assert config.tasks == GRID_PRETRAIN_TASKS


def test_config_round_trips_through_json() -> None:
    config = GridWorldConfig(size=5, n_colours=4, n_walls=2, tasks=((0, 1), (2, 3, 0)))
    assert config_from_dict(GridWorldConfig, config_to_dict(config)) == config
    assert hash(config) == hash(GridWorldConfig(size=5, n_colours=4, n_walls=2, tasks=[[0, 1], [2, 3, 0]]))


def test_observation_is_one_hot_of_objects_and_agent() -> None:
    env = GridWorldEnv()
    obs, _ = env.reset(seed=3)
    grid = obs.reshape(7, 7, 13)
    assert set(np.unique(obs)) == {0.0, 1.0}
    assert (grid[:, :, :12].sum(axis=(0, 1)) == 1).all(), "every colour and wall appears exactly once"
    assert grid[:, :, :12].sum(axis=2).max() == 1, "no two objects share a cell"
    row, col = agent_cell(obs, env.config)
    assert grid[row, col, :12].sum() == 0, "the agent starts on an empty cell"
    for code in range(12):
        assert grid[..., code][env.layout == code].sum() == 1


def test_same_seed_same_layouts_and_fresh_layouts_each_episode() -> None:
    config = GridWorldConfig()
    a, pa = sample_layouts(np.random.default_rng(5), 64, config)
    b, pb = sample_layouts(np.random.default_rng(5), 64, config)
    assert np.array_equal(a, b) and np.array_equal(pa, pb)
    assert len({layout.tobytes() for layout in a}) == 64
    env = GridWorldEnv()
    first, _ = env.reset(seed=1)
    second, _ = env.reset()
    assert not np.array_equal(first, second)
    assert np.array_equal(env.reset(seed=1)[0], first)


# ---------------------------------------------------------------------------------------- the paper's rules

# 3x3 grid, colours 0..2, one wall: row 0 = [0, 1, wall], row 1 = [., ., 2], row 2 = [., ., .].
TINY = GridWorldConfig(size=3, n_colours=3, n_walls=1, horizon=8, tasks=((0, 1),))
TINY_LAYOUT = np.array([[0, 1, 3], [-1, -1, 2], [-1, -1, -1]], dtype=np.int8)
UP, RIGHT, DOWN, LEFT = 0, 1, 2, 3


def run_script(task: tuple[int, ...], actions: list[int]) -> list[tuple]:
    env = GridWorldEnv(TINY)
    env.reset(options={"layout": TINY_LAYOUT, "agent_pos": (1, 0), "task": task})
    return [env.step(a)[1:] for a in actions]


def test_success_only_on_in_order_completion() -> None:
    steps = run_script((0, 1), [UP, RIGHT])
    assert steps[0][:3] == (0.0, False, False) and steps[0][3]["visited"] == 0 and steps[0][3]["target"] == 1
    assert steps[1][:3] == (1.0, True, False) and steps[1][3]["progress"] == 2 and steps[1][3]["target"] == -1


def test_wrong_colour_is_a_mine() -> None:
    reward, terminated, truncated, info = run_script((1, 0), [UP])[0]
    assert (reward, terminated, truncated, info["visited"], info["progress"]) == (0.0, True, False, 0, 0)


def test_bumping_and_standing_still_do_not_visit() -> None:
    # Up onto 0, then up again (off the grid) and left (off the grid): no new visit, so 0-0 is not done.
    steps = run_script((0, 0), [UP, UP, LEFT, DOWN, UP])
    assert [s[3]["visited"] for s in steps] == [0, -1, -1, -1, 0]
    assert [s[0] for s in steps] == [0.0, 0.0, 0.0, 0.0, 1.0]
    # From colour 1, moving right hits the wall: a no-op, not a visit.
    steps = run_script((0, 1, 2), [UP, RIGHT, RIGHT])
    assert steps[2][3]["visited"] == -1 and not steps[2][1]


def test_truncated_at_horizon_then_frozen() -> None:
    steps = run_script((0, 1), [DOWN, LEFT] * 4 + [UP])
    assert [s[2] for s in steps] == [False] * 7 + [True, True]
    assert steps[-1][:3] == (0.0, False, True) and steps[-1][3]["target"] == -1


@FAST
@given(
    config=small_configs(),
    seed=st.integers(0, 2**31 - 1),
    actions=st.lists(st.integers(0, 3), min_size=1, max_size=15),
)
def test_reward_and_termination_follow_the_rules(config: GridWorldConfig, seed: int, actions: list[int]) -> None:
    env = GridWorldEnv(config)
    obs, info = env.reset(seed=seed)
    task, layout = info["task"], env.layout.copy()
    visits: list[int] = []
    for t, action in enumerate(actions, start=1):
        old = agent_cell(obs, config)
        obs, reward, terminated, truncated, info = env.step(action)
        new = agent_cell(obs, config)
        row, col = old[0] + MOVES[action][0], old[1] + MOVES[action][1]
        legal = 0 <= row < config.size and 0 <= col < config.size and layout[row, col] < config.n_colours
        assert new == ((row, col) if legal else old)
        entered = int(layout[new]) if new != old else -1
        assert info["visited"] == entered
        if entered >= 0:
            visits.append(entered)
        is_prefix = tuple(visits) == task[: len(visits)]
        assert reward == float(tuple(visits) == task)
        assert terminated == (not is_prefix or tuple(visits) == task)
        assert truncated == (not terminated and t >= config.horizon)
        assert info["progress"] == (len(visits) if is_prefix else len(visits) - 1)
        if terminated or truncated:
            break


# ------------------------------------------------------------------------------------ batched == scalar


@FAST
@given(
    config=st.one_of(small_configs(), st.just(GridWorldConfig())),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_batched_agrees_with_scalar_step_for_step(config: GridWorldConfig, seed: int, data: st.DataObject) -> None:
    n = 5
    batched = BatchedGridWorld(config, n)
    obs = batched.reset(seed=seed)
    scalars = [GridWorldEnv(config) for _ in range(n)]
    for i, env in enumerate(scalars):
        task = tuple(batched.tasks[i, : batched.task_lengths[i]])
        options = {"layout": batched.layouts[i], "agent_pos": batched.agent_pos[i], "task": task}
        scalar_obs, info = env.reset(options=options)
        assert np.array_equal(scalar_obs, obs[i]) and info["target"] == batched.target()[i]
    rng = np.random.default_rng(seed)
    for _ in range(data.draw(st.integers(1, config.horizon + 3), label="steps")):
        actions = rng.integers(0, 4, n)
        obs, reward, terminated, truncated, info = batched.step(actions)
        for i, env in enumerate(scalars):
            o, r, term, trunc, inf = env.step(int(actions[i]))
            assert np.array_equal(o, obs[i]) and r == reward[i] and term == terminated[i] and trunc == truncated[i]
            for key in ("progress", "target", "visited"):
                assert inf[key] == info[key][i], key
            assert env.agent_pos == tuple(batched.agent_pos[i]) and env.t == batched.t[i]
        assert np.array_equal(batched.observations(), obs)
        assert np.array_equal(batched.done, terminated | truncated)


class _SingleBatched(gym.Env):
    """A BatchedGridWorld of one env seen as a gym.Env, to compare it with GridWorldEnv via Gymnasium."""

    def __init__(self, config: GridWorldConfig):
        self.env = BatchedGridWorld(config, 1)
        self.observation_space = GridWorldEnv(config).observation_space
        self.action_space = gym.spaces.Discrete(4)

    def _info(self, visited: int) -> dict:
        task = tuple(int(c) for c in self.env.tasks[0, : self.env.task_lengths[0]])
        progress, target = int(self.env.progress[0]), int(self.env.target()[0])
        return {"task": task, "progress": progress, "target": target, "visited": visited}

    def reset(self, *, seed=None, options=None):
        return self.env.reset(seed=seed)[0], self._info(-1)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(np.array([action]))
        return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), self._info(int(info["visited"][0]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_seed_same_episode_in_both_implementations(seed: int) -> None:
    config = GridWorldConfig(size=4, n_colours=3, n_walls=2, horizon=20, tasks=((0, 1), (2,), (1, 2, 0)))
    check_environments_match(GridWorldEnv(config), _SingleBatched(config), num_steps=40, seed=seed)
    check_environments_match(GridWorldEnv(), _SingleBatched(GridWorldConfig()), num_steps=30, seed=seed)


def test_batched_reset_with_given_tasks_layouts_and_partial_resets() -> None:
    config = GridWorldConfig()
    env = BatchedGridWorld(config, 3)
    layouts, positions = sample_layouts(np.random.default_rng(0), 3, config)
    long_task = tuple(range(8)) * 2
    env.reset(seed=0, tasks=[(0, 1), long_task, (7,)], layouts=layouts, agent_pos=positions)
    assert np.array_equal(env.layouts, layouts) and np.array_equal(env.agent_pos, positions)
    assert env.tasks.shape == (3, 16) and list(env.task_lengths) == [2, 16, 1] and list(env.target()) == [0, 0, 7]
    env.step(np.array([0, 1, 2]))
    before = env.layouts.copy()
    env.reset_envs(np.array([False, True, False]))
    assert np.array_equal(env.layouts[[0, 2]], before[[0, 2]]) and env.t[1] == 0 and env.t[0] == 1
    assert env.task_lengths[1] == 6, "a sampled pretraining task replaces the long one"
    assert (env.tasks[1, 6:] == -1).all()


# ------------------------------------------------------------------------------------------------ vector env


class _Mirror(gym.Wrapper):
    """A GridWorldEnv whose every reset copies env i of a GridWorldVectorEnv, so both play the same episodes."""

    def __init__(self, vector_env: GridWorldVectorEnv, i: int):
        super().__init__(GridWorldEnv(vector_env.config))
        self.vector_env, self.i = vector_env, i

    def reset(self, *, seed=None, options=None):
        b, i = self.vector_env.env, self.i
        task = tuple(b.tasks[i, : b.task_lengths[i]])
        return self.env.reset(options={"layout": b.layouts[i], "agent_pos": b.agent_pos[i], "task": task})


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_vector_env_matches_sync_vector_env(mode: AutoresetMode) -> None:
    config = GridWorldConfig(size=4, n_colours=3, n_walls=1, horizon=6, tasks=((0, 1), (2, 0), (1,)))
    vector_env = GridWorldVectorEnv(6, config, autoreset_mode=mode)
    sync = SyncVectorEnv([lambda i=i: _Mirror(vector_env, i) for i in range(6)], autoreset_mode=mode)
    assert vector_env.observation_space == sync.observation_space and vector_env.action_space == sync.action_space
    assert vector_env.metadata["autoreset_mode"] == mode
    obs, info = vector_env.reset(seed=0)
    sync_obs, sync_info = sync.reset(seed=0)
    assert data_equivalence(obs, sync_obs, exact=True) and data_equivalence(info, sync_info, exact=True)
    vector_env.action_space.seed(0)
    outcomes = 0
    for _ in range(60):
        actions = vector_env.action_space.sample()
        obs, reward, terminated, truncated, info = vector_env.step(actions)
        assert vector_env.observation_space.contains(obs)
        s_obs, s_reward, s_terminated, s_truncated, s_info = sync.step(actions)
        assert np.array_equal(obs, s_obs) and np.array_equal(reward, s_reward)
        assert np.array_equal(terminated, s_terminated) and np.array_equal(truncated, s_truncated)
        assert data_equivalence(info, s_info, exact=True)
        outcomes |= 1 * reward.any() | 2 * (terminated & (reward == 0)).any() | 4 * truncated.any()
    assert outcomes == 7, "the run covered successes, mines and timeouts"


def test_vector_env_works_with_make_vec_and_gymnasium_vector_wrappers() -> None:
    test_id = "internal_rl_test/GridWorldVector-v0"
    if test_id not in gym.registry:
        gym.register(test_id, vector_entry_point="internal_rl.envs.batched_gridworld:GridWorldVectorEnv")
    envs = gym.make_vec(test_id, num_envs=8, size=4, n_colours=2, n_walls=1, tasks=((0, 1),), horizon=10)
    assert envs.unwrapped.config.size == 4 and envs.observation_space.shape == (8, 4 * 4 * 4)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    envs.reset(seed=0)
    lengths = []
    for _ in range(30):
        *_, info = envs.step(envs.action_space.sample())
        if "episode" in info:
            lengths.extend(info["episode"]["l"][info["_episode"]].tolist())
    assert lengths and max(lengths) <= 10


def test_vector_env_reset_mask_disabled_mode_and_fresh_data() -> None:
    vector_env = GridWorldVectorEnv(4, GridWorldConfig(), autoreset_mode="Disabled")
    obs, info = vector_env.reset(seed=1)
    obs2, _, _, _, info2 = vector_env.step(np.zeros(4, dtype=np.int64))
    assert not np.shares_memory(obs, obs2) and not np.shares_memory(info["progress"], info2["progress"])
    while not vector_env.env.done.any():
        vector_env.step(vector_env.action_space.sample())
    with pytest.raises(gym.error.ResetNeeded):
        vector_env.step(np.zeros(4, dtype=np.int64))
    done = vector_env.env.done.copy()
    before = vector_env.env.layouts.copy()
    _, info = vector_env.reset(options={"reset_mask": done})
    assert np.array_equal(info["_progress"], done) and not vector_env.env.done.any()
    assert np.array_equal(vector_env.env.layouts[~done], before[~done])


# ----------------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"size": 0}, "size must be an integer >= 1, got 0"),
        ({"size": 2.5}, "size must be an integer >= 1, got 2.5"),
        ({"n_colours": -1}, "n_colours must be an integer >= 1, got -1"),
        ({"n_walls": -2}, "n_walls must be an integer >= 0, got -2"),
        ({"horizon": 0}, "horizon must be an integer >= 1, got 0"),
        ({"size": 3, "n_walls": 1}, "too many objects for a 3x3 grid: n_colours + n_walls + 1 agent = 10 > 9 cells"),
        ({"tasks": ()}, "tasks must be a non-empty sequence"),
        ({"tasks": ((0, 9),)}, "unknown colour 9 in task 0-9; valid: 0..7"),
        ({"tasks": ((),)}, "empty task"),
        ({"tasks": (3,)}, "bad task 3"),
        ({"n_colours": 130}, "too many objects"),
        ({"size": 20, "n_colours": 130, "tasks": ((0,),)}, "n_colours + n_walls = 134 too large; at most 127"),
    ],
)
def test_bad_config_is_refused_clearly(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("+", r"\+")):
        GridWorldConfig(**overrides)


def test_unknown_override_and_render_mode_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown GridWorldConfig field"):
        GridWorldEnv(sise=5)
    with pytest.raises(ConfigError, match="unknown render_mode 'human'"):
        GridWorldEnv(render_mode="human")


def test_bad_reset_options_and_actions_are_refused() -> None:
    env = GridWorldEnv(TINY)
    cases = [
        ({"colour": 1}, "unknown reset option"),
        ({"layout": np.zeros((3, 3), dtype=np.int8)}, "exactly once"),
        ({"layout": np.full((3, 3), 7)}, "layout value 7 out of range"),
        ({"layout": np.zeros((2, 3), dtype=np.int8)}, r"layout must have shape \(3, 3\)"),
        ({"layout": TINY_LAYOUT, "agent_pos": (0, 2)}, r"agent_pos \(0, 2\) is not an empty cell"),
        ({"layout": TINY_LAYOUT, "agent_pos": (3, 0)}, "off the 3x3 grid"),
        ({"agent_pos": (1, 0)}, "needs option 'layout'"),
        ({"task": (0, 5)}, "unknown colour 5 in task 0-5; valid: 0..2"),
    ]
    for options, message in cases:
        with pytest.raises(ConfigError, match=message):
            env.reset(options=options)
    env.reset(seed=0)
    with pytest.raises(ConfigError, match="invalid action 4"):
        env.step(4)
    batched = BatchedGridWorld(TINY, 2)
    with pytest.raises(ConfigError, match="expected 2 tasks"):
        batched.reset(seed=0, tasks=[(0, 1)])
    with pytest.raises(ConfigError, match="num_envs must be an integer >= 1, got 0"):
        BatchedGridWorld(TINY, 0)
    batched.reset(seed=0)
    with pytest.raises(ConfigError, match="action out of range"):
        batched.step(np.array([0, 4]))
    with pytest.raises(ConfigError, match=r"shape \(2,\)"):
        batched.step(np.array([0]))
    with pytest.raises(ConfigError, match=r"env_mask must have shape \(2,\)"):
        batched.reset_envs(np.array([True]))
    with pytest.raises(ConfigError, match="unknown autoreset_mode"):
        GridWorldVectorEnv(2, TINY, autoreset_mode="sometimes")


def test_unseen_transition_tasks_are_the_posttraining_transitions():
    from internal_rl.envs.tasks import GRID_SUBGOAL_PAIRS, SPLITS, subgoal_transitions, unseen_transition_tasks

    grid = unseen_transition_tasks(SPLITS["gridworld"], GRID_SUBGOAL_PAIRS)
    assert grid == ((0, 1, 2, 3), (2, 3, 4, 5), (4, 5, 6, 7), (6, 7, 0, 1))
    # The post-training task uses exactly these transitions (paper App. A.1).
    assert subgoal_transitions(SPLITS["gridworld"].posttrain, GRID_SUBGOAL_PAIRS) == {(0, 1), (1, 2), (2, 3), (3, 0)}
    pinpad = unseen_transition_tasks(SPLITS["pinpad"], ((0,), (1,), (2,), (3,)))
    assert pinpad == ((0, 1), (1, 2), (2, 3), (3, 0))


def test_expert_success_is_the_ceiling_on_the_evaluation_layouts():
    from internal_rl.envs.batched_gridworld import BatchedGridWorld
    from internal_rl.envs.registry import expert_successes

    config = GridWorldConfig()
    tasks = [(0, 1, 2, 3)] * 512
    success = expert_successes(config, 512, seed=7, tasks=tasks)
    assert np.array_equal(success, expert_successes(config, 512, seed=7, tasks=tasks))
    # Some layouts cannot be solved (a target walled in by walls and other colours), most can.
    assert 0.8 < success.mean() < 1.0
    # It scores the layouts that an evaluation with the same seed and tasks sees: a layout the expert fails
    # has a target it cannot reach without crossing another colour or a wall.
    env = BatchedGridWorld(config, 512)
    env.reset(seed=7, tasks=tasks)
    from internal_rl.envs.expert import distance_maps

    dist = distance_maps(env.layouts, config)  # [N, C, G, G], -1 where unreachable
    rows, cols = env.agent_pos[:, 0], env.agent_pos[:, 1]
    reach_first = dist[np.arange(512), 0, rows, cols] >= 0
    assert (~reach_first).any() and not success[~reach_first].any()
