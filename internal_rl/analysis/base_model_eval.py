"""Evaluating a pretrained base model (paper App. D.1): next-action accuracy and NLL on held-out episodes,
grouped by the target's position in the task; the grid-world expert's own noise level on the same steps
(the best any model could do); and free rollouts in fresh grid worlds, scored by the tasks and subgoals the
model completes when nobody tells it the task. `evaluate_base_model` is everything the pretraining stage
writes to its eval.json.
"""

from typing import Any, Sequence

import numpy as np
import torch

from internal_rl.common.device import module_device
from internal_rl.common.seeding import derive_seed
from internal_rl.data.dataset import TrajectoryDataset
from internal_rl.data.generate import env_config_from_manifest
from internal_rl.envs.expert import expert_action_distribution
from internal_rl.envs.free_running_grid import FreeRunningGrid
from internal_rl.envs.gridworld import GridWorldConfig
from internal_rl.envs.tasks import GRID_SUBGOAL_PAIRS
from internal_rl.models.base_model import BaseModel


@torch.no_grad()
def evaluate_held_out(
    model: BaseModel, dataset: TrajectoryDataset, expert_probabilities: np.ndarray | None = None, batch_size: int = 256
) -> dict[str, Any]:
    """Next-action accuracy (most likely action; categorical heads) and NLL per step, and next-observation
    NLL, on `dataset`: overall, and in `by_target` grouped by the target's position in the task (entry k:
    the steps heading to the task's k-th colour), with the expert's accuracy ceiling there when its action
    probabilities (`expert_action_probabilities`, same step order) are given.

    In the grid world a subgoal is a colour pair: even positions are a pair's first colour, which the
    model must infer from the task's history, odd ones its second, which follows from the colour just
    visited. Whether a model has learned the subgoals shows in the odd positions first.
    """
    per_step: dict[str, list[np.ndarray]] = {"action_nll": [], "obs_nll": [], "correct": []}
    for start in range(0, dataset.num_episodes, batch_size):
        batch = dataset.batch(np.arange(start, min(start + batch_size, dataset.num_episodes)), module_device(model))
        out = model(batch["observations"])
        mask = batch["mask"]
        per_step["action_nll"].append(model.action_nll(out.action_params, batch["actions"])[mask].double().cpu().numpy())
        per_step["obs_nll"].append(model.obs_head.nll(out.obs_params, batch["next_observations"])[mask].double().cpu().numpy())
        if model.config.action_head == "categorical":
            per_step["correct"].append((out.action_params.argmax(-1) == batch["actions"])[mask].cpu().numpy())
    steps = {name: np.concatenate(values) for name, values in per_step.items() if values}

    def summary(at: np.ndarray | slice) -> dict[str, float]:
        return {"action_nll": float(steps["action_nll"][at].mean()), "obs_nll": float(steps["obs_nll"][at].mean()),
                "action_accuracy": float(steps["correct"][at].mean()) if "correct" in steps else float("nan")}

    arrays = dataset.arrays
    lengths = arrays["episode_lengths"][dataset.episode_ids]
    step_index = np.concatenate([np.arange(s, s + n) for s, n in zip(arrays["episode_starts"][dataset.episode_ids], lengths)])
    position = target_indices(arrays["targets"][step_index], lengths)
    ceiling = expert_probabilities.max(-1) if expert_probabilities is not None else None
    by_target = []
    for k in range(int(position.max()) + 1):
        at = position == k
        group = {"target_index": k, "steps": int(at.sum()), **summary(at)}
        if ceiling is not None:
            group["accuracy_ceiling"] = float(ceiling[at].mean())
        by_target.append(group)
    return {**summary(slice(None)), "episodes": dataset.num_episodes, "steps": len(position), "by_target": by_target}


def target_indices(targets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The position of each step's target colour in its task (0 for the first, +1 at each change of
    target), for steps of episodes laid end to end with `lengths`: int [S].

    A change of target is the move to the task's next colour; a colour repeated back to back in a task
    (none of the paper's tasks has one) would count as one position.
    """
    targets = np.asarray(targets)
    changed = np.ones(len(targets), dtype=np.int64)
    changed[1:] = targets[1:] != targets[:-1]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    changed[starts] = 0
    count = np.cumsum(changed)
    return count - np.repeat(count[starts], lengths)


def expert_action_probabilities(
    dataset: TrajectoryDataset, env_config: GridWorldConfig, epsilon: float = 0.0
) -> np.ndarray:
    """The grid-world expert's action distribution at every step of `dataset`: float [S, n_actions].

    Reconstructed from the observations (layout and agent position) and the recorded target colours with
    the expert's rule (`envs.expert.expert_action_distribution`). Steps are those of the dataset's episodes
    in order (episode after episode).
    """
    arrays = dataset.arrays
    ids = dataset.episode_ids
    starts, lengths = arrays["episode_starts"][ids], arrays["episode_lengths"][ids]
    step_index = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)])
    episode = np.repeat(np.arange(len(ids)), lengths)
    return expert_action_distribution(
        arrays["observations"][starts], arrays["observations"][step_index], arrays["targets"][step_index], episode,
        env_config, epsilon,
    )


def expert_noise_level(expert_probabilities: np.ndarray, epsilon: float = 0.0) -> dict[str, float]:
    """The best next-action accuracy and NLL achievable on a dataset by a predictor that knows the target,
    from the expert's action probabilities at its steps (`expert_action_probabilities`).

    The expert is stochastic, so even a perfect model is right only with probability max_a p(a) per step
    ((1 - eps)/n_optimal + eps/n_safe), and its NLL is at least the entropy of p. A model that must also
    infer the task from the observations can only do worse in expectation, so these are bounds, not targets.
    """
    p = expert_probabilities
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)
    return {"accuracy_ceiling": float(p.max(-1).mean()), "nll_floor": float(entropy.mean()), "epsilon": float(epsilon)}


def valid_task_mask(sequences: np.ndarray, tasks: Sequence[Sequence[int]]) -> np.ndarray:
    """Per row of entered colours [N, L] (-1 padded): do its first len(task) colours form one of `tasks`?"""
    valid = np.zeros(len(sequences), dtype=bool)
    for task in tasks:
        if len(task) <= sequences.shape[1]:
            valid |= (sequences[:, : len(task)] == np.asarray(task)).all(axis=1)
    return valid


def leading_subgoals(sequences: np.ndarray, pairs: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Per row of colour sequences [N, L]: how many leading consecutive pairs are subgoal pairs."""
    n_pairs = sequences.shape[1] // 2
    is_pair = np.zeros((len(sequences), n_pairs), dtype=bool)
    for a, b in pairs:
        is_pair |= (sequences[:, 0 : 2 * n_pairs : 2] == a) & (sequences[:, 1 : 2 * n_pairs : 2] == b)
    return np.cumprod(is_pair, axis=1).sum(axis=1)


@torch.no_grad()
def evaluate_rollouts(
    model: BaseModel,
    env_config: GridWorldConfig,
    episodes: int = 256,
    seed: int = 0,
    pairs: tuple[tuple[int, int], ...] = GRID_SUBGOAL_PAIRS,
) -> dict[str, float]:
    """Let the model act freely in fresh grid worlds (sampled actions, KV cache, no task given).

    The colours the agent enters are recorded with `FreeRunningGrid` until it has entered as many as the
    longest task or the horizon is reached. An episode is a valid pretraining task if its first L colours
    entered form one of `env_config.tasks` (L = that task's length), i.e. the environment would have
    ended it with success under some pretraining task; subgoals completed counts the leading colour pairs
    that are subgoal pairs (0-1, 2-3, 4-5, 6-7).
    """
    grid = FreeRunningGrid(env_config, episodes, derive_seed(seed, "rollout-env"))
    obs = grid.obs.copy()
    generator = torch.Generator().manual_seed(derive_seed(seed, "rollout-actions"))
    max_colours = max(len(task) for task in env_config.tasks)
    sequences = np.full((episodes, max_colours), -1, dtype=np.int64)
    count = np.zeros(episodes, dtype=np.int64)
    steps_taken = np.zeros(episodes, dtype=np.int64)
    state = model.init_state(episodes, env_config.horizon)
    device = module_device(model)
    was_training = model.training
    model.eval()
    for _ in range(env_config.horizon):
        active = count < max_colours
        if not active.any():
            break
        out = model.step(torch.from_numpy(obs).to(device), state)
        actions = model.sample_actions(out.action_params[:, 0], generator).cpu().numpy()
        obs, entered_colour = grid.step(actions)
        entered = (entered_colour >= 0) & active
        sequences[entered, count[entered]] = entered_colour[entered]
        count += entered
        steps_taken += active
    model.train(was_training)
    valid = valid_task_mask(sequences, env_config.tasks)
    distinct = {tuple(s) for s, v in zip(sequences.tolist(), valid) if v}
    return {
        "episodes": episodes,
        "valid_task_fraction": float(valid.mean()),
        "mean_subgoals_completed": float(leading_subgoals(sequences, pairs).mean()),
        "mean_colours_entered": float(count.mean()),
        "mean_steps": float(steps_taken.mean()),
        "distinct_valid_tasks": len(distinct),
    }


def evaluate_base_model(
    model: BaseModel, held_out: TrajectoryDataset, *, rollouts: int = 256, seed: int = 0
) -> dict[str, Any]:
    """Everything in eval.json: held-out metrics, the expert's noise level, and (grid world) rollouts."""
    env_config = env_config_from_manifest(held_out.manifest) if held_out.manifest.get("env") == "gridworld" else None
    if env_config is None:
        result: dict[str, Any] = {"held_out": evaluate_held_out(model, held_out)}
        result["expert"] = "not computed: only the grid-world expert is known in closed form"
        # Free rollouts score the grid world's colour pairs; for a pinpad env the uncontrolled baseline of
        # the steering stage (the base model acting alone on single colours and whole tasks) plays that role.
        result["rollouts"] = "not computed: free rollouts are grid-world only (see steering's uncontrolled baseline)"
        return result
    epsilon = float(held_out.manifest.get("expert_epsilon", 0.0))
    expert_probabilities = expert_action_probabilities(held_out, env_config, epsilon)
    result = {"held_out": evaluate_held_out(model, held_out, expert_probabilities),
              "expert": expert_noise_level(expert_probabilities, epsilon)}
    if rollouts > 0:
        result["rollouts"] = evaluate_rollouts(model, env_config, episodes=rollouts, seed=seed)
    return result
