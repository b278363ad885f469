"""The RL method runner: internal RL, raw-action RL, the no-switch ablation and the co-training baseline, on
one shared budget.

Every method runs the same loop (paper Algorithm 3, App. C.5): collect a batch of B whole episodes with
the current policy, then one critic-free PPO update on it (`rl/ppo.py`). The budget is counted the same
way for every method: episodes (the paper's x-axis, Fig. 8) and low-level environment steps. The methods
differ only in the policy and in what it acts on:

    method      policy                             acts on                       decides
    internal    CodePolicy (1-layer Hawk, N(0,I))  InternalEnv (metacontroller)   when the switch fires
    no-switch   CodePolicy                         InternalEnv (force_switch MC)  every low-level step
    raw         RawActionPolicy (base model copy)  the task env (grid, pinpad)    every low-level step
    cotrained   CodePolicy                         InternalEnv (a metacontroller  when the switch fires
                                                   and base model co-trained)
    compile     CodePolicy                         InternalEnv (CompILE)          when its boundary hazard fires
    label-free  CodePolicy                         InternalEnv (k-means codes,    when the HMM's state changes
                                                   an HMM switch; a deviation)

Learning curve: one record per update with the cumulative episodes and env steps and the success rate of
that batch (sampled from the training policy). Evaluation: the success rate of the policy *as it acts in
training* (codes sampled from the Gaussian policy, low-level actions sampled from the base model; no greedy
decoding, which can loop forever in a grid world), on episodes with layouts held out from training (their
own seed stream), before and after training, on the same layouts for every method.
"""

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from internal_rl.common.checkpoint import load_checkpoint, save_checkpoint
from internal_rl.common.config import config_to_dict, replace
from internal_rl.common.device import describe_device, resolve_device
from internal_rl.common.errors import CheckpointError, ConfigError, check
from internal_rl.common.logging import ScalarLogger, progress
from internal_rl.common.seeding import derive_seed, seed_everything
from internal_rl.envs.gridworld import GridWorldConfig
from internal_rl.envs.registry import make_batched_env
from internal_rl.metacontroller.segmenter import Segmenter
from internal_rl.models.base_model import BaseModel
from internal_rl.rl.internal_env import BETA_THRESHOLD, SWITCHES, BatchedInternalEnv
from internal_rl.rl.policies import CodePolicy, RawActionPolicy
from internal_rl.rl.ppo import PPOConfig, RolloutBatch, make_optimizer, ppo_update
from internal_rl.rl.rollouts import Collect, collect_internal_rollouts, collect_raw_rollouts, evaluate, expert_ceiling

# The paper's method and the baselines every pipeline runs; and all, with the co-training and CompILE baselines.
BASE_METHODS: tuple[str, ...] = ("internal", "raw", "no-switch")
METHODS: tuple[str, ...] = (*BASE_METHODS, "cotrained", "compile")
# A named deviation from the paper (analysis/label_free_codes.py): internal RL over codes and a switch found
# without labels by clustering, run only by the pipelines that name it.
LABEL_FREE = "label-free"
ALL_METHODS: tuple[str, ...] = (*METHODS, LABEL_FREE)


@dataclass(frozen=True)
class RLConfig:
    """One RL run: the PPO hyperparameters, the episode budget, the policy size and the evaluation."""

    ppo: PPOConfig = field(default_factory=PPOConfig)
    # Fig. 8: baselines "fail to learn within a million episodes"; Table A13's "100,000 train steps,
    # batch 1024" is ambiguous (spec section 6), so the budget is counted in episodes, as the figure is.
    total_episodes: int = 1_000_000
    policy_width: int = 256  # Table A13: 1-layer SSM, width 256
    policy_heads: int = 8
    beta_threshold: float = BETA_THRESHOLD
    # Where a code ends (rl/internal_env.SWITCHES): the switching unit's beta, or the env's subgoal changes
    # (a diagnostic that reads the subgoal labels).
    switch: str = "learned"
    eval_episodes: int = 1024

    def __post_init__(self) -> None:
        check(self.total_episodes >= 1, f"RLConfig.total_episodes={self.total_episodes}; expected >= 1")
        check(self.eval_episodes >= 1, f"RLConfig.eval_episodes={self.eval_episodes}; expected >= 1")
        check(self.policy_width >= 1, f"RLConfig.policy_width={self.policy_width}; expected >= 1")
        check(self.switch in SWITCHES, f"RLConfig.switch={self.switch!r}; valid: {', '.join(SWITCHES)}")

    @property
    def num_updates(self) -> int:
        return math.ceil(self.total_episodes / self.ppo.episodes_per_batch)


# Learning rates: the paper's tables list 3e-5 for every method (picked from a scan over
# {3e-6, 1e-5, 3e-5, 1e-4, 3e-4} at batch 1024 over ~1e6 episodes). The quick preset makes ~1000x fewer
# updates, so it uses larger rates, picked by a scan in the tiny one-colour setting of tests/test_rl.py
# with this preset's policy size and budget (code policy: 3e-3 > 1e-2 > 3e-2). For raw-action RL the tiny
# model preferred 3e-3 > 1e-3 > 3e-4, but on the quick grid base model 1e-3 already moves the policy by
# ~1.6 nats (approx. KL) per update, so 3e-4. Neither is tuned on the post-training task.
_QUICK_LR = {"internal": 3e-3, "no-switch": 3e-3, "cotrained": 3e-3, "compile": 3e-3, LABEL_FREE: 3e-3, "raw": 3e-4}
_QUICK = RLConfig(
    ppo=PPOConfig(episodes_per_batch=64, epochs=4),
    total_episodes=1_024,
    policy_width=64,
    policy_heads=4,
    eval_episodes=256,
)
# The grid world's long preset: the quick policy at batch 256 over 32,768 episodes, the budget at which
# raw-action RL learns the unseen composition 0-1-2-3 on the long base model (docs/results.md). The code
# policies use 1e-3 there (a scan of 3e-4, 3e-3 and 1e-2 at this batch ended within 0.02 of it on the long
# base model; docs/results.md), raw actions 3e-4.
_LONG_LR = {"internal": 1e-3, "no-switch": 1e-3, "cotrained": 1e-3, "compile": 1e-3, LABEL_FREE: 1e-3, "raw": 3e-4}
_LONG = replace(_QUICK, ppo=replace(_QUICK.ppo, episodes_per_batch=256), total_episodes=32_768)
_PRESET_LR = {"quick": _QUICK_LR, "long": _LONG_LR}
PRESETS: dict[str, RLConfig] = {
    "quick": _QUICK,
    "long": _LONG,
    "paper": RLConfig(),
    # Table A14 (ant): batch 256; the budget is counted in episodes as for the grid world.
    "paper-ant": RLConfig(ppo=PPOConfig(episodes_per_batch=256)),
}


def rl_preset(name: str, method: str) -> RLConfig:
    """The named preset for `method` (ConfigError listing the valid names otherwise)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown RL preset {name!r}; valid: {sorted(PRESETS)}")
    check_method(method)
    config = PRESETS[name]
    if name in _PRESET_LR:
        config = replace(config, ppo=replace(config.ppo, lr=_PRESET_LR[name][method]))
    return config


def check_method(method: str) -> str:
    if method not in ALL_METHODS:
        raise ConfigError(f"unknown RL method {method!r}; valid: {', '.join(ALL_METHODS)}")
    return method


# --- training -------------------------------------------------------------------------------------------


class RolloutWorkers(Protocol):
    """Collects episodes away from the learner (e.g. on Ray actors: `internal_rl.distributed.rollouts`)."""

    def bind(
        self,
        method: str,
        base_model: BaseModel,
        metacontroller: Segmenter | None,
        env_config: GridWorldConfig,
        config: RLConfig,
        policy: torch.nn.Module,
    ) -> Collect:
        """A `Collect` that rolls out `policy`'s current weights (read at each call) on the workers."""
        ...


def method_setup(
    method: str,
    base_model: BaseModel,
    metacontroller: Segmenter | None,
    env_config: GridWorldConfig,
    config: RLConfig,
    generator: torch.Generator,
) -> tuple[torch.nn.Module, Collect]:
    """The policy a method trains and its rollout function (envs are built once per batch size)."""
    envs: dict[int, Any] = {}
    if method == "raw":
        raw_policy = RawActionPolicy(base_model)

        def collect_raw(seed: int, num_envs: int) -> RolloutBatch:
            if num_envs not in envs:
                envs[num_envs] = make_batched_env(env_config, num_envs)
            env = envs[num_envs]
            return collect_raw_rollouts(raw_policy, env, seed, generator)

        return raw_policy, collect_raw

    if metacontroller is None:
        raise ConfigError(f"method {method!r} needs a metacontroller")
    if (method == "no-switch") != metacontroller.config.force_switch:
        raise ConfigError(
            f"method {method!r} needs a metacontroller trained with force_switch={method == 'no-switch'}, "
            f"got force_switch={metacontroller.config.force_switch}"
        )
    code_policy = CodePolicy(base_model.d_model, metacontroller.config.n_z, config.policy_width, config.policy_heads)

    def collect_internal(seed: int, num_envs: int) -> RolloutBatch:
        if num_envs not in envs:
            envs[num_envs] = BatchedInternalEnv(
                base_model, metacontroller, env_config, num_envs, config.beta_threshold, config.switch
            )
        return collect_internal_rollouts(code_policy, envs[num_envs], seed, generator)

    return code_policy, collect_internal


def _run_identity(method: str, seed: int, env_config: Any, config: RLConfig) -> dict[str, Any]:
    """What a resumed run must share with its checkpoint: all but the episode budget, which may grow."""
    settings = config_to_dict(config)
    settings.pop("total_episodes")
    identity = {"method": method, "seed": seed, "task": [int(c) for c in env_config.tasks[0]], "config": settings}
    return json.loads(json.dumps(identity))  # as a checkpoint's config.json reads back


def _load_progress(checkpoint: Path, identity: dict[str, Any], policy: torch.nn.Module) -> dict[str, Any]:
    """Load an interrupted run's policy weights into `policy`; return its training state (CheckpointError if
    the checkpoint is another run's)."""
    weights, saved, state = load_checkpoint(checkpoint)
    if saved.get("rl") != identity or state is None:
        differ = sorted(k for k in identity if (saved.get("rl") or {}).get(k) != identity[k]) or ["training state"]
        raise CheckpointError(f"cannot resume from {checkpoint}: it differs from this run in {', '.join(differ)}; "
                              "delete it (or pass --force) to start over")
    policy.load_state_dict(weights)
    return state


def train_rl(
    method: str,
    base_model: BaseModel,
    metacontroller: Segmenter | None,
    env_config: GridWorldConfig,
    seed: int,
    config: RLConfig,
    *,
    logdir: Path | None = None,
    show_progress: bool = False,
    workers: RolloutWorkers | None = None,
    device: str | torch.device = "cpu",
    init_policy: Callable[[torch.nn.Module], None] | None = None,
    checkpoint: Path | None = None,
    checkpoint_every: int = 8,
) -> dict[str, Any]:
    """Train one method for `config.total_episodes` episodes of `env_config`'s task(s); return the results.

    The result holds the learning curve (one record per PPO update), the held-out evaluation before and
    after training, and timings (rollout throughput in episodes/s and env steps/s). With `workers`, the
    episodes are collected by them (same rollout functions, their own sampling seeds, on their CPUs) and
    learned here. The models are moved to `device`, where the policy learns (and, without workers, acts).
    `init_policy` warm-starts the freshly initialised policy in place before anything runs (e.g.
    `analysis.code_replay.clone_demonstration_codes`); RL's own initialisation is the paper's.

    With `checkpoint`, the policy, optimiser, random state and curve are written there every
    `checkpoint_every` updates, and a run that finds one there continues it: the same updates on the same
    episodes as an uninterrupted run (each batch's layouts come from its update's own seed). The budget may
    be raised on resumption; nothing else may change.
    """
    check_method(method)
    check(checkpoint_every >= 1, f"checkpoint_every={checkpoint_every}; expected >= 1")
    device = resolve_device(device)
    generator = seed_everything(derive_seed(seed, "rl", method))  # also seeds the policy's initialisation
    policy, collect = method_setup(method, base_model, metacontroller, env_config, config, generator)
    if init_policy is not None:
        init_policy(policy)
    identity = _run_identity(method, seed, env_config, config)
    resumed = None
    if checkpoint is not None and Path(checkpoint).is_dir():
        resumed = _load_progress(Path(checkpoint), identity, policy)
    if workers is not None:  # the same rollout code, run by the workers with the learner's weights
        collect = workers.bind(method, base_model, metacontroller, env_config, config, policy)  # CPU copies
    for module in (base_model, metacontroller, policy):  # initialised on the CPU: the same policy on every device
        if module is not None:
            module.to(device)
    optimizer = make_optimizer(policy, config.ppo)
    logger = ScalarLogger(logdir)
    batch_size = config.ppo.episodes_per_batch
    eval_seed = derive_seed(seed, "held-out")  # never used for training layouts
    eval_batch = min(config.eval_episodes, max(batch_size, 256))

    start = time.perf_counter()
    if resumed is None:
        initial_eval = evaluate(collect, eval_seed, config.eval_episodes, eval_batch)
        curve: list[dict[str, float]] = []
        episodes = env_steps = first_update = 0
        rollout_seconds = update_seconds = earlier_seconds = 0.0
    else:
        optimizer.load_state_dict(resumed["optimizer"])
        generator.set_state(resumed["generator"])
        torch.set_rng_state(resumed["torch_rng"])
        initial_eval, curve = resumed["initial_eval"], resumed["curve"]
        episodes, env_steps, first_update = resumed["episodes"], resumed["env_steps"], len(curve)
        rollout_seconds, update_seconds = resumed["rollout_seconds"], resumed["update_seconds"]
        earlier_seconds = resumed["seconds"]
    resumes = [] if resumed is None else [*resumed["resumes"], first_update]

    def save_progress() -> None:
        state = {"optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                 "torch_rng": torch.get_rng_state(), "initial_eval": initial_eval, "curve": curve,
                 "episodes": episodes, "env_steps": env_steps, "rollout_seconds": rollout_seconds,
                 "update_seconds": update_seconds, "seconds": earlier_seconds + time.perf_counter() - start,
                 "resumes": resumes}
        save_checkpoint(Path(checkpoint), policy, {"rl": identity}, state)

    bar = progress(range(first_update, config.num_updates), desc=f"rl {method}", disable=not show_progress)
    for update in bar:
        num_envs = min(batch_size, config.total_episodes - episodes)
        if num_envs < 2:  # a one-episode batch has no advantage signal (its return equals the mean)
            break
        tic = time.perf_counter()
        batch = collect(derive_seed(seed, "train", update), num_envs).to(device)
        toc = time.perf_counter()
        stats = ppo_update(policy, optimizer, batch, config.ppo, generator)
        update_seconds += time.perf_counter() - toc
        rollout_seconds += toc - tic

        episodes += batch.num_episodes
        env_steps += int(batch.env_steps.sum())
        record = {
            "update": update,
            "episodes": episodes,
            "env_steps": env_steps,
            "success_rate": batch.successes.float().mean().item(),
            "mean_return": batch.returns.mean().item(),
            "mean_env_steps": batch.env_steps.float().mean().item(),
            "mean_decisions": batch.decisions.float().mean().item(),
            # -log pi of the decisions taken, per decision: a sample estimate of the policy's entropy, to
            # see exploration collapse (the paper's entropy bonus is 0).
            "entropy": -(batch.log_probs * batch.mask).sum().item() / max(int(batch.mask.sum()), 1),
            **stats,
        }
        curve.append(record)
        logger.log(episodes, **{k: v for k, v in record.items() if k not in ("update", "episodes")})
        bar.set_postfix(success=f"{record['success_rate']:.3f}")
        if checkpoint is not None and (update + 1) % checkpoint_every == 0:
            save_progress()
    final_eval = evaluate(collect, eval_seed, config.eval_episodes, eval_batch)
    seconds = earlier_seconds + time.perf_counter() - start
    expert = expert_ceiling(env_config, eval_seed, config.eval_episodes, eval_batch)
    logger.log(episodes, eval_success_rate=final_eval["success_rate"])
    logger.close()

    return {
        "method": method,
        "seed": seed,
        "task": [int(c) for c in env_config.tasks[0]],
        "config": config_to_dict(config),
        "eval_mode": "sampled (training policy; base model samples low-level actions)",
        "device": describe_device(device),
        "initial_eval": initial_eval,
        "final_eval": final_eval,
        "expert_eval": {"success_rate": expert, "episodes": config.eval_episodes},
        "episodes": episodes,
        "env_steps": env_steps,
        "resumed_at_updates": resumes,
        "curve": curve,
        "timing": {
            "seconds": seconds,
            "rollout_seconds": rollout_seconds,
            "update_seconds": update_seconds,
            "rollout_episodes_per_second": episodes / max(rollout_seconds, 1e-9),
            "rollout_env_steps_per_second": env_steps / max(rollout_seconds, 1e-9),
        },
    }


def rl_config(preset: str, method: str, *, episodes: int | None = None, lr: float | None = None,
              batch: int | None = None) -> RLConfig:
    """The named preset for `method` with the episode budget, learning rate and episodes per PPO batch
    overridden where given."""
    config = rl_preset(preset, method)
    if episodes is not None:
        config = replace(config, total_episodes=episodes)
    if lr is not None:
        config = replace(config, ppo=replace(config.ppo, lr=lr))
    if batch is not None:
        config = replace(config, ppo=replace(config.ppo, episodes_per_batch=batch))
    return config
