"""InternalEnv: the Gymnasium contract, abstract steps over low-level steps, and agreement with the batched core."""

import warnings

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from internal_rl.common.config import replace
from internal_rl.common.errors import ConfigError
from internal_rl.envs.gridworld import GridWorldConfig
from internal_rl.metacontroller.modules import Metacontroller, MetacontrollerConfig
from internal_rl.models.base_model import BaseModel, BaseModelConfig
from internal_rl.models.controller import apply_controller
from internal_rl.rl.internal_env import BatchedInternalEnv, InternalEnv

from helpers import TINY_TRUNK

GRID = GridWorldConfig(size=4, n_colours=2, n_walls=1, horizon=15, tasks=((0,), (1,)))
HOOK = "blocks.0.hook_resid_post"


def tiny_models(force_switch: bool = False, seed: int = 0) -> tuple[BaseModel, Metacontroller]:
    """A random 2-layer base model and a random metacontroller whose switch fires now and then and whose
    decoder's U depends on z (a fresh decoder has U = 0 exactly)."""
    torch.manual_seed(seed)
    transformer = TINY_TRUNK
    base = BaseModel(BaseModelConfig(obs_dim=GRID.obs_dim, transformer=transformer, init_scale=1.0)).freeze()
    config = MetacontrollerConfig(d_model=16, hook=HOOK, n_z=3, rank=2, embedder_width=8, force_switch=force_switch)
    metacontroller = Metacontroller(config)
    with torch.no_grad():
        metacontroller.switching_unit.out.weight.mul_(40.0)  # quasi-binary beta that depends on e
        torch.nn.init.normal_(metacontroller.controller_decoder.b_head.weight, std=1.0)
    return base, metacontroller.eval().requires_grad_(False)


def make_env(force_switch: bool = False) -> InternalEnv:
    base, metacontroller = tiny_models(force_switch)
    return InternalEnv(base, metacontroller, GRID, task=(0,))


def test_check_env():
    # The checker fails an env whose first step ends the episode by truncation, which an internal env whose
    # random switch happens never to fire after t = 1 does on some platforms' rounding. A switch that fires at
    # every step keeps the first abstract step one low-level step long on any platform.
    env = make_env(force_switch=True)
    with warnings.catch_warnings():
        # Unbounded Box spaces are the honest spaces here (z in R^n_z, e in R^d); the checker only advises.
        warnings.filterwarnings("ignore", message=".*(infinity|normalized space).*")
        check_env(env, skip_render_check=True)


def test_spaces():
    env = make_env()
    assert env.observation_space == gymnasium.spaces.Box(-np.inf, np.inf, (16,), np.float32)
    assert env.action_space.shape == (3,)
    obs, info = env.reset(seed=0)
    assert obs.shape == (16,) and obs.dtype == np.float32
    assert info["low_level_steps"] == 0 and info["task"] == (0,)


def run_episode(env: InternalEnv, seed: int, z_seed: int = 0) -> list[tuple]:
    rng = np.random.default_rng(z_seed)
    obs, _ = env.reset(seed=seed)
    steps = []
    while True:
        z = rng.standard_normal(env.action_space.shape).astype(np.float32)
        obs, reward, terminated, truncated, info = env.step(z)
        steps.append((obs, reward, terminated, truncated, info))
        if terminated or truncated:
            return steps


def test_abstract_steps_cover_the_episode_and_termination_propagates():
    env = make_env()
    lengths = []
    for seed in range(6):
        steps = run_episode(env, seed)
        assert all(info["low_level_steps"] >= 1 for *_, info in steps)
        assert sum(info["low_level_steps"] for *_, info in steps) == env._core.env.t[0]
        assert not any(t or tr for _, _, t, tr, _ in steps[:-1])
        *_, terminated, truncated, info = steps[-1]
        assert terminated == bool(env._core.env.terminated[0]) and truncated == bool(env._core.env.truncated[0])
        assert info["success"] == (steps[-1][1] == 1.0)
        lengths.append(len(steps))
        with pytest.raises(ConfigError, match="after the episode ended"):
            env.step(np.zeros(3, np.float32))
    assert max(lengths) > 1  # the planted switch does fire inside episodes


def test_reward_is_the_sum_of_low_level_rewards():
    env = make_env()
    grid = env._core.env
    grid_step = grid.step

    def rewarding_step(actions, **kwargs):  # one unit of reward for every low-level step
        obs, reward, terminated, truncated, info = grid_step(actions, **kwargs)
        return obs, np.ones_like(reward), terminated, truncated, info

    grid.step = rewarding_step
    for *_, reward, _, _, info in [step for seed in range(3) for step in run_episode(env, seed)]:
        assert reward == info["low_level_steps"]


def test_no_switch_decides_every_low_level_step():
    env = make_env(force_switch=True)
    for seed in range(3):
        assert all(info["low_level_steps"] == 1 for *_, info in run_episode(env, seed))


def test_seeded_reset_is_reproducible_and_seeds_differ():
    env = make_env()
    first = run_episode(env, seed=3)
    again = run_episode(env, seed=3)
    other = run_episode(env, seed=4)
    assert len(first) == len(again)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:4] == b[1:4]
    assert len(first) != len(other) or any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other))


def test_gym_env_matches_the_batched_core():
    """Handing e back at a switch (abort the base-model step, redo it with the new z) changes nothing."""
    base, metacontroller = tiny_models()
    env = InternalEnv(base, metacontroller, GRID, task=(0,))
    codes = torch.randn(40, 3, generator=torch.Generator().manual_seed(1))
    obs, _ = env.reset(seed=5)
    gym_obs, gym_rewards, k = [obs], [], 0
    done = False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(codes[k].numpy())
        gym_obs.append(obs)
        gym_rewards.append(reward)
        k, done = k + 1, terminated or truncated

    core = BatchedInternalEnv(base, metacontroller, replace(GRID, tasks=((0,),)), 1)
    core.reset(int(gymnasium.utils.seeding.np_random(5)[0].integers(2**62)))
    core_obs, core_rewards, used = [], [], 0

    def decide(e, env_ids):
        nonlocal used
        core_obs.append(e[0].numpy())
        core_rewards.append(0.0)
        used += 1
        return codes[used - 1][None]

    while not bool(core.done[0]):
        step = core.step(decide)
        core_rewards[-1] += float(step.reward[0])
    assert used == k
    for a, b in zip(gym_obs[:-1], core_obs):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert gym_rewards == core_rewards


def test_batched_env_queries_only_fired_envs_and_controls_from_the_decision_on():
    """decide() sees exactly the envs whose switch fired, with the uncontrolled activation at the hook; the
    actions come from the base model with e + U(z) e applied at every step (checked against a full uncached
    forward pass with the same per-step codes)."""
    base, metacontroller = tiny_models()
    n = 16
    env = BatchedInternalEnv(base, metacontroller, replace(GRID, tasks=((0,),)), n)
    env.reset(seed=11)
    generator = torch.Generator().manual_seed(0)
    action_params = []
    sample = base.sample_actions

    def spy(params, gen):
        action_params.append(params.clone())
        return sample(params, gen)

    base.sample_actions = spy
    observations, codes, active, rows, decided_e, seen = [], [], [], [], [], []

    def decide(e, env_ids):
        seen.append((env_ids.clone(), e.clone()))
        return torch.randn(len(env_ids), 3, generator=generator)

    while not bool(env.done.all()):
        observations.append(torch.from_numpy(env.env.observations()))
        seen.clear()
        step = env.step(decide)
        fired = torch.zeros(n, dtype=torch.bool)
        for env_ids, e in seen:
            fired[env_ids] = True
            decided_e.append((len(observations) - 1, env_ids, e))
        assert torch.equal(fired, step.decided)
        assert not (step.decided & ~step.active).any()
        active.append(step.active)
        rows.append(env.rows.clone())  # the episodes the base model stepped (finished ones get dropped)
        codes.append(env.z.clone())
    assert torch.equal(decided_e[0][1], torch.arange(n))  # every episode decides at t = 1
    assert len(decided_e) > 1  # and the switch fires later too

    obs = torch.stack(observations, 1)  # [N, T, obs_dim]
    z = torch.stack(codes, 1)  # [N, T, n_z], the code in force at each step
    with torch.no_grad():
        uncontrolled = base(obs, cache_hooks=[HOOK]).cache[HOOK]
        controlled = base(obs, interventions={HOOK: lambda e: apply_controller(e, metacontroller.decode(z))})
    for t, env_ids, e in decided_e:
        torch.testing.assert_close(e, uncontrolled[env_ids, t], atol=1e-5, rtol=1e-5)
    assert min(len(r) for r in rows) < n  # finished episodes were dropped from the batch
    for t, (params, stepped, running) in enumerate(zip(action_params, rows, active)):
        live = running[stepped]
        torch.testing.assert_close(params[live], controlled.action_params[stepped[live], t], atol=1e-4, rtol=1e-4)
