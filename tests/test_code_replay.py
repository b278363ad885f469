"""Code replay: the expert's layouts are replayed exactly, and every layout the expert solves is scored."""

import numpy as np
import pytest

from internal_rl.analysis.code_replay import demonstration_codes, replay_codes
from internal_rl.common.config import replace
from internal_rl.common.seeding import derive_seed
from internal_rl.data.dataset import TrajectoryDataset
from internal_rl.data.generate import rollout_chunk
from internal_rl.envs.batched_gridworld import BatchedGridWorld
from internal_rl.rl.internal_env import BatchedInternalEnv
from test_internal_env import GRID, tiny_models

TASK = (0, 1)


def test_layout_seed_gives_the_expert_rollouts_layouts():
    config = replace(GRID, tasks=(TASK,))
    expert_env = BatchedGridWorld(config, 8)
    expert_env.reset(seed=derive_seed(5, "reset"))
    base, metacontroller = tiny_models()
    env = BatchedInternalEnv(base, metacontroller, config, 8)
    env.reset(0, tasks=[TASK] * 8, layout_seed=derive_seed(5, "reset"))
    assert np.array_equal(env.env.layouts, expert_env.layouts)
    assert np.array_equal(env.env.agent_pos, expert_env.agent_pos)
    env.reset(0, tasks=[TASK] * 8)  # without it, the layouts come from the RL seed
    assert not np.array_equal(env.env.layouts, expert_env.layouts)


def test_demonstration_codes_start_at_step_zero_and_follow_the_switch():
    base, metacontroller = tiny_models()
    arrays, solved = rollout_chunk(replace(GRID, tasks=(TASK,)), 12, 1, 0.0)
    codes = demonstration_codes(base, metacontroller, TrajectoryDataset.from_arrays(arrays))
    assert len(codes) == int(solved.sum()) > 0
    assert all(c.ndim == 2 and 1 <= len(c) and c.shape[1] == metacontroller.config.n_z for c in codes)
    assert max(len(c) for c in codes) > 1  # the tiny switch fires now and then


@pytest.mark.parametrize("noiseless", [False, True])
def test_replay_scores_the_solvable_layouts(noiseless):
    base, metacontroller = tiny_models()
    result = replay_codes(base, metacontroller, TASK, episodes=16, seed=2, env_config=GRID, noiseless=noiseless)
    assert 0 < result["solvable_layouts"] <= 16 and result["noiseless_demonstrations"] is noiseless
    for key in ("demonstration", "prior"):
        r = result[key]
        assert 0.0 <= r["success"] <= 1.0 and 0.0 <= r["colours_reached"] <= len(TASK)
        assert r["decisions_per_episode"] >= 1.0
