"""Code replay: the expert's layouts are replayed exactly, and every layout the expert solves is scored."""

import numpy as np
import pytest
import torch

from internal_rl.analysis.code_replay import fit_linear_policy, demonstration_codes, replay_codes
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
    demos = demonstration_codes(base, metacontroller, TrajectoryDataset.from_arrays(arrays))
    assert len(demos) == int(solved.sum()) > 0
    for z, e in demos:
        assert z.ndim == 2 and 1 <= len(z) and z.shape[1] == metacontroller.config.n_z
        assert e.shape == (len(z), base.d_model)
    assert max(len(z) for z, _ in demos) > 1  # the tiny switch fires now and then


def test_the_linear_policy_has_one_map_for_first_decisions_and_one_for_later_ones():
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(6, 3, generator=generator)
    demos = []
    for _ in range(2000):  # enough that the ridge penalty barely shrinks the fit
        e = torch.randn(3, 6, generator=generator)
        demos.append((torch.cat([e[:1] @ weights, -e[1:] @ weights]), e))
    first, later = fit_linear_policy(demos)
    probe = torch.randn(50, 6, generator=generator)
    assert np.allclose(first.predict(probe.numpy()), (probe @ weights).numpy(), atol=0.1)
    assert np.allclose(later.predict(probe.numpy()), -(probe @ weights).numpy(), atol=0.1)


@pytest.mark.parametrize("noiseless", [False, True])
def test_replay_scores_the_solvable_layouts(noiseless):
    base, metacontroller = tiny_models()
    result = replay_codes(base, metacontroller, TASK, episodes=16, seed=2, env_config=GRID, noiseless=noiseless,
                          fit_episodes=16)
    assert 0 < result["solvable_layouts"] <= 16 and result["noiseless_demonstrations"] is noiseless
    for key in ("demonstration", "residual_linear", "mean_code", "prior"):
        r = result[key]
        assert 0.0 <= r["success"] <= 1.0 and 0.0 <= r["colours_reached"] <= len(TASK)
        assert r["decisions_per_episode"] >= 1.0


def test_cloning_fits_the_code_policy_to_demonstration_codes():
    """A code that is a linear function of the residual is learnt: the cloned policy's mean explains most
    of its variance on new residuals (not all: the policy reads the residual through a LayerNorm)."""
    from internal_rl.analysis.code_replay import clone_demonstration_codes
    from internal_rl.rl.policies import CodePolicy

    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(16, 4, generator=generator) / 4
    demos = []
    for _ in range(256):
        e = torch.randn(int(torch.randint(1, 4, (1,), generator=generator)), 16, generator=generator)
        demos.append((e @ weights, e))
    torch.manual_seed(0)
    policy = CodePolicy(d_model=16, n_z=4, width=32, n_heads=4)
    losses = clone_demonstration_codes(policy, demos, steps=300, batch_size=64)
    assert losses[-1] < losses[0] - 5  # from the prior's ~5.7 nats per decision to a narrow policy
    e = torch.randn(64, 3, 16, generator=generator)
    mean, _ = policy.sequence(e)
    target = e @ weights
    explained = 1 - (mean - target).square().mean() / target.var()
    assert explained > 0.8
