"""Rollouts: whole batches of episodes with a method's policy, and the held-out evaluation built on them.

`collect_internal_rollouts` runs a code policy through `BatchedInternalEnv` (queried only where the switch
fires); `collect_raw_rollouts` runs the raw-action policy in the task's batched env. Both return a
`RolloutBatch` for `rl/ppo.py`. `evaluate` measures a method's success rate on held-out layouts through
any `Collect`, and `expert_ceiling` the scripted expert's on the same layouts.
"""

import math
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from internal_rl.common.device import module_device
from internal_rl.common.seeding import derive_seed
from internal_rl.envs.batched_env import BatchedEnv
from internal_rl.envs.registry import expert_successes
from internal_rl.rl.internal_env import BatchedInternalEnv, drop_finished
from internal_rl.rl.policies import CodePolicy, RawActionPolicy, gaussian_log_prob, sample_gaussian, select_state, update_state
from internal_rl.rl.ppo import RolloutBatch

Collect = Callable[[int, int], RolloutBatch]  # (seed, num_envs) -> a batch of finished episodes


@torch.no_grad()
def collect_internal_rollouts(
    policy: CodePolicy, env: BatchedInternalEnv, seed: int, generator: torch.Generator
) -> RolloutBatch:
    """Run N episodes of internal RL to the end; the policy is queried only where the switch fires.

    Returns the decisions (e and z at each decision time, [N, M, ...]) with their log-probabilities.
    """
    n, horizon, device = env.num_envs, env.horizon, env.device
    env.reset(seed)
    policy_state = policy.initial_state(n)
    inputs = torch.zeros(n, horizon, env.d_model, device=device)  # e at decision m
    codes = torch.zeros(n, horizon, env.n_z, device=device)  # z chosen at decision m
    log_probs = torch.zeros(n, horizon, device=device)
    decisions = torch.zeros(n, dtype=torch.long, device=device)

    def decide(e: Tensor, env_ids: Tensor) -> Tensor:
        nonlocal policy_state
        mean, log_std, new_state = policy.step(e, select_state(policy_state, env_ids))
        z = sample_gaussian(mean, log_std, generator)
        slot = decisions[env_ids]
        inputs[env_ids, slot] = e
        codes[env_ids, slot] = z
        log_probs[env_ids, slot] = gaussian_log_prob(z, mean, log_std)
        decisions[env_ids] += 1
        policy_state = update_state(policy_state, env_ids, new_state)
        return z

    returns = torch.zeros(n, device=device)
    env_steps = torch.zeros(n, dtype=torch.long, device=device)
    while not bool(env.done.all()):
        step = env.step(decide)
        returns += step.reward
        env_steps += step.active.long()

    m = int(decisions.max())
    return RolloutBatch(
        inputs=inputs[:, :m],
        actions=codes[:, :m],
        log_probs=log_probs[:, :m],
        mask=torch.arange(m, device=device)[None, :] < decisions[:, None],
        returns=returns,
        successes=env.successes,
        env_steps=env_steps,
        decisions=decisions,
    )


@torch.no_grad()
def collect_raw_rollouts(
    policy: RawActionPolicy, env: BatchedEnv, seed: int, generator: torch.Generator
) -> RolloutBatch:
    """Run N episodes with the raw-action policy (KV-cached stepping) in a batched env (`envs/registry.py`);
    every action is a decision, discrete or continuous."""
    n, horizon, device = env.num_envs, env.config.horizon, module_device(policy)
    obs = torch.from_numpy(env.reset(seed=derive_seed(seed, "layouts"))).to(device)
    state = policy.init_state(n, horizon)
    observations = torch.zeros(n, horizon, env.config.obs_dim, device=device)
    actions = policy.model.placeholder_actions(n, horizon)
    log_probs = torch.zeros(n, horizon, device=device)
    mask = torch.zeros(n, horizon, dtype=torch.bool, device=device)
    returns = torch.zeros(n, device=device)

    rows = torch.arange(n, device=device)  # the episodes in the model's batch: finished ones get dropped
    t = 0
    while not env.done.all():
        active = torch.from_numpy(~env.done).to(device)
        state, rows = drop_finished(state, rows, ~active)
        action = policy.model.placeholder_actions(n)  # finished episodes ignore their action
        action[rows], log_probs[rows, t] = policy.act(obs[rows], state, generator)
        observations[:, t], actions[:, t], mask[:, t] = obs, action, active
        next_obs, reward, _, _, _ = env.step(action.cpu().numpy())
        obs = torch.from_numpy(next_obs).to(device)
        returns += torch.from_numpy(reward).to(device)
        t += 1

    env_steps = mask.sum(1)
    return RolloutBatch(
        inputs=observations[:, :t],
        actions=actions[:, :t],
        log_probs=log_probs[:, :t] * mask[:, :t],
        mask=mask[:, :t],
        returns=returns,
        successes=torch.from_numpy(env.success.copy()).to(device),
        env_steps=env_steps,
        decisions=env_steps.clone(),
    )


def evaluate(collect: Collect, seed: int, episodes: int, batch_size: int) -> dict[str, float]:
    """Success rate, mean episode length and decisions over `episodes` held-out episodes."""
    successes, env_steps, decisions = [], [], []
    for i in range(math.ceil(episodes / batch_size)):
        batch = collect(derive_seed(seed, "eval", i), min(batch_size, episodes - i * batch_size))
        successes.append(batch.successes.float())
        env_steps.append(batch.env_steps.float())
        decisions.append(batch.decisions.float())
    return {
        "success_rate": torch.cat(successes).mean().item(),
        "mean_env_steps": torch.cat(env_steps).mean().item(),
        "mean_decisions": torch.cat(decisions).mean().item(),
        "episodes": episodes,
    }


def expert_ceiling(env_config: Any, seed: int, episodes: int, batch_size: int) -> float:
    """The scripted expert's success rate on the layouts and tasks that `evaluate(collect, seed, episodes,
    batch_size)` rolls out (both collectors reset the env with `derive_seed(batch seed, "layouts")`): the
    ceiling every method's held-out success is normalised by, since some layouts cannot be solved."""
    successes = [
        expert_successes(env_config, min(batch_size, episodes - i * batch_size),
                         derive_seed(derive_seed(seed, "eval", i), "layouts"))
        for i in range(math.ceil(episodes / batch_size))
    ]
    return float(np.concatenate(successes).mean())
