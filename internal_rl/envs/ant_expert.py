"""The ant-pinpad expert (paper App. C.1): a PPO agent with a privileged, task-aware observation.

One agent covers every task because its observation is augmented, for every grid cell, with a 4-dim
one-hot of the cardinal direction of the grid-level shortest path from that cell to the next colour of
the task (`shortest_path_directions`; zeros where there is none), 16 x 4 = 64 values after the 41 of the
environment. We add the direction of the current cell rotated into the torso's frame (2 values): the
per-cell one-hots are in world axes, and turning them into a gait for a randomly oriented ant is what a
small MLP on a short CPU budget failed to learn (a first 1M-step run without it did not improve). For
training only, the reward adds a dense term, the dot product of the torso's (x, y) velocity with the
direction of the cell it is in, to the sparse task reward, and (our addition) a small bonus for every
step that does not end in failure. The data the base model learns from keep only the environment's
41-dim observation.

PPO, CleanRL-style: `AntPPOConfig` holds every hyperparameter, `train_ant_expert` runs the loop in one
readable function (collect a rollout from a `BatchedAntPinpad` with autoreset, compute GAE advantages,
clipped-surrogate updates). Differences from the paper, for a CPU budget: an MLP actor-critic instead of
the paper's 6-layer SSM (the augmented observation already says where to go, so the policy needs no
memory), running observation normalisation, the survival bonus, and far fewer steps.

The trained actor is an `AntExpert`: `act(env, rng)` gives sampled and mean actions for a
`BatchedAntPinpad`, so `pinpad_expert.rollout_expert` rolls it out like the point-mass expert.
"""

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from internal_rl.common.checkpoint import CONFIG as CHECKPOINT_CONFIG, load_checkpoint, save_checkpoint
from internal_rl.common.config import config_from_dict, config_to_dict, load_json
from internal_rl.common.errors import CheckpointError, ConfigError
from internal_rl.common.logging import ScalarLogger, progress
from internal_rl.envs.ant_pinpad import ACT_DIM, AntPinpadConfig, BatchedAntPinpad
from internal_rl.envs.pinpad import DIRECTIONS_XY, shortest_path_directions
from internal_rl.envs.pinpad_expert import ExpertEpisodes, collect_episodes
from internal_rl.envs.tasks import Task, with_tasks


@dataclass(frozen=True)
class AntPPOConfig:
    """PPO hyperparameters for the ant expert (paper Table A3 where it applies: AdamW, lr 3e-4, weight
    decay 0.03, entropy 3e-4, betas (0.9, 0.999), constant learning rate)."""

    total_steps: int = 2_000_000  # environment steps
    num_envs: int = 16
    rollout_steps: int = 128  # per env and update
    epochs: int = 6
    minibatch_size: int = 512
    lr: float = 3e-4
    weight_decay: float = 0.03
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    entropy_coef: float = 3e-4
    value_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: int = 256
    dense_reward_scale: float = 1.0  # weight of the velocity-alignment reward
    task_reward_scale: float = 10.0  # weight of the environment's sparse reward in training
    # Reward per step alive (not in the paper; Ant-v5's "healthy reward"): random torques often throw the
    # torso above 1 m, and without it an early end costs nothing until the ant already walks.
    survival_bonus: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("total_steps", "num_envs", "rollout_steps", "epochs", "minibatch_size", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"AntPPOConfig.{name} must be an integer >= 1, got {value!r}")


def direction_features(env: BatchedAntPinpad, directions: np.ndarray) -> np.ndarray:
    """Per-cell one-hot of the shortest-path move to each env's next colour, float32 [N, G*G*4].

    `directions` is `shortest_path_directions` of the envs' layouts, int8 [N, C, G, G].
    """
    n = env.num_envs
    target = np.maximum(env.logic.target(), 0)
    moves = directions[np.arange(n), target].reshape(n, -1).astype(np.int64)  # [N, G*G]
    onehot = (moves[..., None] == np.arange(4)).astype(np.float32)  # -1 -> all zeros
    onehot[env.logic.done] = 0.0
    return onehot.reshape(n, -1)


def expert_obs_dim(config: AntPinpadConfig) -> int:
    """Length of the expert's observation: the env's, the per-cell one-hots, the body-frame direction."""
    return config.obs_dim + config.size**2 * 4 + 2


def body_frame(env: BatchedAntPinpad, vectors: np.ndarray) -> np.ndarray:
    """World (x, y) vectors [N, 2] rotated into each torso's heading frame (x forward, y left)."""
    quat = np.array([d.qpos[3:7] for d in env.data])  # (w, x, y, z)
    w, x, y, z = quat.T
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y**2 + z**2))
    cos, sin = np.cos(yaw), np.sin(yaw)
    return np.stack([cos * vectors[:, 0] + sin * vectors[:, 1], -sin * vectors[:, 0] + cos * vectors[:, 1]], axis=1)


def current_direction(env: BatchedAntPinpad, directions: np.ndarray) -> np.ndarray:
    """Unit (x, y) direction of the shortest path from each env's current cell, float64 [N, 2] (0 if none)."""
    n = env.num_envs
    target = np.maximum(env.logic.target(), 0)
    move = directions[np.arange(n), target, env.logic.cells[:, 0], env.logic.cells[:, 1]].astype(np.int64)
    return np.where((move >= 0)[:, None], DIRECTIONS_XY[np.maximum(move, 0)], 0.0)


class RunningNorm(nn.Module):
    """Observation normaliser with running mean and variance (kept in the saved weights)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.tensor(1e-4))

    def update(self, x: torch.Tensor) -> None:
        batch_mean, batch_var, batch_count = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta, total = batch_mean - self.mean, self.count + batch_count
        self.mean += delta * batch_count / total
        combined = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var = combined / total
        self.count = total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / torch.sqrt(self.var + 1e-8)).clamp(-10.0, 10.0)


class ActorCritic(nn.Module):
    """MLP Gaussian policy with a learned state-independent log standard deviation, and a value head."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.norm = RunningNorm(obs_dim)

        def mlp(out: int, gain: float) -> nn.Sequential:
            layers = [
                nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, out)
            ]
            for layer in layers[::2]:
                nn.init.orthogonal_(layer.weight, np.sqrt(2))
                nn.init.zeros_(layer.bias)
            nn.init.orthogonal_(layers[-1].weight, gain)
            return nn.Sequential(*layers)

        self.actor_mean = mlp(act_dim, 0.01)
        self.critic = mlp(1, 1.0)
        self.log_std = nn.Parameter(torch.full((act_dim,), -0.5))

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Normal:
        mean = self.actor_mean(self.norm(obs))
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(self.norm(obs)).squeeze(-1)


class AntExpert:
    """A trained ant expert acting in a `BatchedAntPinpad` from the augmented observation."""

    def __init__(self, model: ActorCritic, env_config: AntPinpadConfig):
        self.model = model.eval()
        self.env_config = env_config
        self._layouts: np.ndarray | None = None
        self._directions: np.ndarray | None = None

    def augmented_observations(self, env: BatchedAntPinpad) -> np.ndarray:
        """The env's observation, the per-cell direction one-hots and the current cell's direction in the
        torso's frame, float32 [N, 41 + 64 + 2]."""
        if self._layouts is None or not np.array_equal(self._layouts, env.logic.layouts):
            self._layouts = env.logic.layouts.copy()
            self._directions = shortest_path_directions(self._layouts, env.config)
        heading = body_frame(env, current_direction(env, self._directions)).astype(np.float32)
        return np.concatenate([env.observations(), direction_features(env, self._directions), heading], axis=1)

    @torch.no_grad()
    def act(self, env: BatchedAntPinpad, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(sampled actions, mean actions), float32 [N, 8]; the sample uses `rng` (Gaussian policy)."""
        dist = self.model.distribution(torch.as_tensor(self.augmented_observations(env)))
        mean = dist.mean.numpy()
        sampled = mean + dist.stddev.numpy() * rng.normal(size=mean.shape)
        return np.clip(sampled, -1, 1).astype(np.float32), np.clip(mean, -1, 1).astype(np.float32)


def ant_expert_episodes(
    expert: AntExpert,
    episodes: int,
    seed: int,
    *,
    tasks: Sequence[Task] | None = None,
    mean_actions: bool = False,
    successful_only: bool = True,
    batch_size: int = 64,
    max_batches: int = 1000,
    show_progress: bool = False,
) -> dict[str, np.ndarray]:
    """`episodes` ant-pinpad episodes of `expert` as padded arrays (see `pinpad_expert.collect_episodes`),
    in the environment the expert acts in (`expert.env_config`) with `tasks` (default: its own).

    Actions are sampled from the Gaussian policy (data D), or its mean with `mean_actions` (data D*);
    observations are the environment's 41 values, not the expert's augmented ones.
    """
    env = BatchedAntPinpad(with_tasks(expert.env_config, tasks), batch_size)
    pick = 1 if mean_actions else 0
    return collect_episodes(
        env, lambda e, r: expert.act(e, r)[pick], episodes, seed, successful_only=successful_only,
        max_batches=max_batches, show_progress=show_progress, desc="generate ant-pinpad",
    )


def ant_expert_data(
    path: Path,
    config: AntPinpadConfig | None,
    tasks: Sequence[Task] | None,
    episodes: int,
    seed: int,
    *,
    mean_actions: bool = False,
    show_progress: bool = False,
) -> ExpertEpisodes:
    """Successful episodes of the ant expert saved at `path`, for a dataset, with their provenance.

    The episodes come from the environment the expert was trained in (its saved config), on `tasks`
    (default: `config`'s, else the pretraining tasks of `AntPinpadConfig`). A `config` that differs from the
    expert's in anything but the tasks is refused: the expert cannot act in another environment. The
    returned `env_config` is the one the episodes were rolled out in; `expert_config` holds the expert's
    folder and the environment and PPO configs it was trained with.
    """
    meta = load_expert_meta(path)
    expert = load_expert(path)
    trained = expert.env_config
    if config is not None:
        if not isinstance(config, AntPinpadConfig):
            raise ConfigError(f"the ant expert needs an AntPinpadConfig, got a {type(config).__name__}")
        differing = [f.name for f in dataclasses.fields(trained)
                     if f.name != "tasks" and getattr(config, f.name) != getattr(trained, f.name)]
        if differing:
            raise ConfigError(
                f"the ant expert at {path} was trained with "
                f"{', '.join(f'{n}={getattr(trained, n)!r}' for n in differing)}, not "
                f"{', '.join(f'{n}={getattr(config, n)!r}' for n in differing)}; its data can change only the tasks"
            )
    if tasks is None:
        tasks = (config if config is not None else AntPinpadConfig()).tasks
    env_config = with_tasks(trained, tasks)
    arrays = ant_expert_episodes(expert, episodes, seed, tasks=env_config.tasks, mean_actions=mean_actions,
                                 show_progress=show_progress)
    expert_config = {"path": str(Path(path).resolve()), **{key: meta[key] for key in ("env_config", "ppo_config")}}
    return ExpertEpisodes(arrays, env_config, "AntExpert", expert_config)


# The key under which an ant expert's checkpoint config.json holds its configs and training statistics.
EXPERT_KEY = "ant_expert"


def save_expert(
    path: Path, model: ActorCritic, env_config: AntPinpadConfig, ppo: AntPPOConfig, stats: dict[str, Any]
) -> None:
    """Write the expert as a checkpoint folder (weights, and its configs and training statistics in config.json)."""
    meta = {"env_config": config_to_dict(env_config), "ppo_config": asdict(ppo), "stats": stats}
    save_checkpoint(Path(path), model, {EXPERT_KEY: meta})


def load_expert_meta(path: Path) -> dict[str, Any]:
    """The configs and training statistics of the expert saved at `path` (CheckpointError if there is none)."""
    path = Path(path)
    if not (path / CHECKPOINT_CONFIG).is_file():
        raise CheckpointError(f"no ant expert at {path}: expected {CHECKPOINT_CONFIG} and model.safetensors")
    meta = load_json(path / CHECKPOINT_CONFIG)
    if not isinstance(meta, dict) or not isinstance(meta.get(EXPERT_KEY), dict):
        raise CheckpointError(f"{path / CHECKPOINT_CONFIG} has no {EXPERT_KEY!r} entry; not an ant expert")
    return meta[EXPERT_KEY]


def load_expert(path: Path) -> AntExpert:
    """The `AntExpert` saved at `path` by `save_expert`."""
    meta = load_expert_meta(path)
    weights, _, _ = load_checkpoint(Path(path))
    try:
        env_config = config_from_dict(AntPinpadConfig, meta["env_config"])
        ppo = config_from_dict(AntPPOConfig, meta["ppo_config"])
        model = ActorCritic(expert_obs_dim(env_config), ACT_DIM, ppo.hidden)
        model.load_state_dict(weights)
    except (KeyError, RuntimeError) as err:
        raise CheckpointError(f"the ant expert at {path} does not match its config: {str(err).splitlines()[0]}") from None
    return AntExpert(model, env_config)


def train_ant_expert(
    env_config: AntPinpadConfig,
    ppo: AntPPOConfig,
    *,
    out: Path | None = None,
    logdir: Path | None = None,
    max_seconds: float | None = None,
    show_progress: bool = True,
    on_update: Any = None,
) -> tuple[AntExpert, list[dict[str, float]]]:
    """Train the ant expert with PPO; returns (the expert, one statistics row per update).

    Stops after `ppo.total_steps` environment steps or `max_seconds` of wall time. A row holds the
    environment steps so far, the mean dense and task reward per step of the rollout, the episodes that
    ended in it, and their success rate; `on_update(row)` is called with each. With `out`, the weights
    are saved there at the end.
    """
    torch.manual_seed(ppo.seed)
    env = BatchedAntPinpad(env_config, ppo.num_envs)
    env.reset(seed=ppo.seed)
    obs_dim, act_dim, n, steps = expert_obs_dim(env_config), env.act_dim, ppo.num_envs, ppo.rollout_steps
    model = ActorCritic(obs_dim, act_dim, ppo.hidden)
    expert = AntExpert(model, env_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=ppo.lr, weight_decay=ppo.weight_decay, betas=(0.9, 0.999))
    logger = ScalarLogger(logdir)
    dt = env.model.opt.timestep * env_config.frame_skip
    updates = max(1, ppo.total_steps // (n * steps))
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    obs = torch.as_tensor(expert.augmented_observations(env))
    for update in progress(range(updates), desc="ant expert PPO", disable=not show_progress):
        model.eval()
        buf_obs = torch.zeros(steps, n, obs_dim)
        buf_act = torch.zeros(steps, n, act_dim)
        buf_logp, buf_val, buf_rew, buf_done = (torch.zeros(steps, n) for _ in range(4))
        dense_sum, task_sum, ended, succeeded = 0.0, 0.0, 0, 0
        for t in range(steps):  # the rollout: a loop over time, all envs at once
            with torch.no_grad():
                dist = model.distribution(obs)
                action = dist.sample()
                buf_logp[t] = dist.log_prob(action).sum(-1)
                buf_val[t] = model.value(obs)
            buf_obs[t], buf_act[t] = obs, action
            direction = current_direction(env, expert._directions)
            xy_before = env.xy
            _, reward, terminated, truncated, _ = env.step(action.clamp(-1, 1).numpy())
            velocity = (env.xy - xy_before) / dt
            dense = np.where(env.logic.t > 0, (velocity * direction).sum(axis=1), 0.0)
            done = terminated | truncated
            alive_bonus = ppo.survival_bonus * ~(terminated & ~env.logic.success)
            shaped = ppo.dense_reward_scale * dense + ppo.task_reward_scale * reward + alive_bonus
            buf_rew[t] = torch.as_tensor(shaped, dtype=torch.float32)
            # Truncation is treated as termination (a slight bias the short horizon makes negligible).
            buf_done[t] = torch.as_tensor(done, dtype=torch.float32)
            dense_sum += float(dense.mean())
            task_sum += float(reward.mean())
            ended += int(done.sum())
            succeeded += int((done & env.logic.success).sum())
            if done.any():
                env.reset_envs(done)
            obs = torch.as_tensor(expert.augmented_observations(env))

        with torch.no_grad():  # generalised advantage estimation
            next_value = model.value(obs)
            advantages = torch.zeros(steps, n)
            last = torch.zeros(n)
            for t in reversed(range(steps)):
                value_next = next_value if t == steps - 1 else buf_val[t + 1]
                nonterminal = 1.0 - buf_done[t]
                delta = buf_rew[t] + ppo.gamma * value_next * nonterminal - buf_val[t]
                last = delta + ppo.gamma * ppo.gae_lambda * nonterminal * last
                advantages[t] = last
            returns = advantages + buf_val

        model.train()
        flat = {
            "obs": buf_obs.reshape(-1, obs_dim), "act": buf_act.reshape(-1, act_dim), "logp": buf_logp.reshape(-1),
            "adv": advantages.reshape(-1), "ret": returns.reshape(-1),
        }
        for _ in range(ppo.epochs):
            for idx in torch.randperm(steps * n).split(ppo.minibatch_size):
                dist = model.distribution(flat["obs"][idx])
                logp = dist.log_prob(flat["act"][idx]).sum(-1)
                ratio = (logp - flat["logp"][idx]).exp()
                adv = flat["adv"][idx]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                policy_loss = -torch.min(ratio * adv, ratio.clamp(1 - ppo.clip, 1 + ppo.clip) * adv).mean()
                value_loss = 0.5 * (model.value(flat["obs"][idx]) - flat["ret"][idx]).pow(2).mean()
                entropy = dist.entropy().sum(-1).mean()
                loss = policy_loss + ppo.value_coef * value_loss - ppo.entropy_coef * entropy
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), ppo.max_grad_norm)
                optimizer.step()

        # Normalise with statistics that include this rollout only from the next one on, so that the
        # rollout's log-probabilities and the update's are computed with the same normaliser.
        model.norm.update(flat["obs"])
        row = {
            "env_steps": float((update + 1) * n * steps),
            "seconds": time.perf_counter() - start,
            "dense_reward": dense_sum / steps,
            "task_reward": task_sum / steps,
            "episodes_ended": float(ended),
            "success_rate": succeeded / ended if ended else float("nan"),
            "policy_loss": float(policy_loss.detach()),
            "value_loss": float(value_loss.detach()),
        }
        history.append(row)
        if on_update is not None:
            on_update(row)
        logger.log(int(row["env_steps"]), **{k: v for k, v in row.items() if k != "env_steps"})
        if max_seconds is not None and row["seconds"] > max_seconds:
            break
    logger.close()
    model.eval()
    if out is not None:
        save_expert(out, model, env_config, ppo, {"history": history})
    return expert, history
