"""The batched-env contract (`envs/batched_env.py`): every registered environment meets it, and `success`
is the task completed, the definition every caller reads."""

import numpy as np
import pytest

from internal_rl.envs.batched_env import BatchedEnv
from internal_rl.envs.registry import ENVS, make_batched_env


@pytest.mark.parametrize("name", list(ENVS))
def test_every_batched_env_meets_the_protocol_and_success_is_the_task_completed(name):
    config = ENVS[name].default_config()
    env = make_batched_env(config, 8)
    assert isinstance(env, BatchedEnv)
    env.reset(seed=0, tasks=[(0,)] * 8)  # one colour: some episodes succeed within a few random steps
    rng = np.random.default_rng(0)
    for _ in range(config.horizon):
        if env.done.all():
            break
        if hasattr(env, "act_dim"):  # the pinpads: continuous actions
            actions = rng.uniform(-1, 1, size=(8, env.act_dim))
        else:
            actions = rng.integers(0, 4, size=8)
        env.step(actions)
    np.testing.assert_array_equal(env.success, env.terminated & (env.progress == env.task_lengths))
    assert env.success.dtype == bool and env.success.shape == (8,)
