"""Pretraining the base model on expert trajectories, and evaluating it (paper App. C.1, D.1, Table A4).

Read top to bottom: the config and its presets, the training loop (AdamW; optional warmup, cosine decay
and gradient clipping), the evaluations (held-out next-action accuracy and NLL, the expert's own noise
level, free rollouts in the grid world), and `run_pretraining`, which ties them to a stage folder:

    STAGE/checkpoint/   model.safetensors, config.json (model config, pretrain config, dataset checksum),
                        training_state.pt (optimizer, RNG, step): replaced atomically every checkpoint
    STAGE/tb/           TensorBoard scalars
    STAGE/eval.json     the final evaluation

A resumed run continues with the losses an uninterrupted run would have had: the data order is a
function of (seed, step), and the optimizer state and step are restored from the checkpoint.
"""

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from internal_rl.common.checkpoint import load_checkpoint, rng_state, set_rng_state
from internal_rl.common.config import config_to_dict, replace, save_json
from internal_rl.common.device import describe_device, module_device, resolve_device
from internal_rl.common.errors import CheckpointError, ConfigError, check
from internal_rl.common.logging import ScalarLogger, progress
from internal_rl.common.seeding import derive_seed, seed_everything
from internal_rl.data.dataset import TrajectoryDataset, load_dataset
from internal_rl.envs.tasks import GRID_SUBGOAL_PAIRS
from internal_rl.models.base_model import CHECKPOINT_SUBDIR, BaseModel, BaseModelConfig, save_base_model
from internal_rl.models.hawk_trunk import HawkTrunkConfig
from internal_rl.models.transformer import TransformerConfig

SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class PretrainConfig:
    """Hyperparameters of base-model pretraining (defaults: the paper's grid-world run, Table A4)."""

    model: BaseModelConfig = field(default_factory=BaseModelConfig)
    steps: int = 256_000
    batch_size: int = 1024  # episodes per step
    lr: float = 3e-4
    weight_decay: float = 0.03  # AdamW, on weight matrices (not biases or norm gains)
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "constant"  # or "cosine" (decays to min_lr_fraction * lr at the last step)
    warmup_steps: int = 0
    min_lr_fraction: float = 0.1
    grad_clip: float = 0.0  # max global gradient norm; 0 disables clipping
    bf16_autocast: bool = False  # bfloat16 matmuls in training (used only where the CPU supports them natively)
    holdout_fraction: float = 0.05  # episodes held out for evaluation
    holdout_seed: int = 0  # fixed apart from `seed`, so runs with different seeds share one held-out set
    seed: int = 0
    log_every: int = 25
    eval_every: int = 500  # held-out loss on a fixed subset during training; 0 disables
    checkpoint_every: int = 1000
    eval_rollouts: int = 256  # free-running grid-world episodes in the final evaluation

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            value = getattr(self, name)
            check(isinstance(value, int) and value > 0, f"PretrainConfig.{name}={value!r}; expected a positive int")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "eval_rollouts"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 0, f"PretrainConfig.{name}={value!r}; expected an int >= 0")
        check(self.lr > 0, f"PretrainConfig.lr={self.lr}; expected > 0")
        check(self.weight_decay >= 0, f"PretrainConfig.weight_decay={self.weight_decay}; expected >= 0")
        check(self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        check(self.grad_clip >= 0, f"PretrainConfig.grad_clip={self.grad_clip}; expected >= 0 (0 disables)")
        check(0 < self.holdout_fraction < 1, f"PretrainConfig.holdout_fraction={self.holdout_fraction}; expected in (0, 1)")


# Quick: a budget at which the base model learns the subgoal, on a 200,000-episode dataset (15 to 30
# minutes with evaluation on 2 CPU cores, by CPU). Held-out action NLL sits on a plateau near 0.5 until the
# model starts to remember the colour it last stepped on, after which a pair's second colour is predicted
# better than its first (accuracy 0.86 against 0.76 at 12,000 steps). That happens between steps 4,000
# and 6,500 in the runs measured, and when varies with floating-point rounding alone, so the preset trains
# about 6,000 steps past the latest: a model that left the plateau late gives a metacontroller that
# switches at colours as well as subgoals. 3,000 steps on 50,000 episodes never left it
# (docs/results.md). Depth stays 6 so that mid-depth analysis means what it does in the paper; width,
# heads and MLP are halved. A higher learning rate with warmup and cosine decay, gradient clipping and
# bfloat16 matmuls (where the CPU has them) buy what they can of the paper's 256k x 1024-episode budget in
# 12,000 x 64 episodes. The egocentric observation embedding (see EgocentricObsEmbedding) is the
# largest single gain at this budget: held-out action accuracy 0.74 against 0.60 with the paper's linear
# embedding at 3,000 steps, and 5x more subgoals completed in free rollouts (0.32 against 0.07 per
# episode), same data and steps.
_QUICK_MODEL = BaseModelConfig(
    obs_embedding="egocentric", transformer=TransformerConfig(d_model=128, n_heads=4, d_head=32, d_mlp=256)
)

# The continuous pinpad (paper Table A5, the ant): a Hawk trunk, a Gaussian action head with learned
# diagonal covariance, a Gaussian next-observation head and lambda = 10. obs_dim and action_dim are
# set from the dataset when pretraining starts.
_PINPAD_MODEL = BaseModelConfig(
    obs_dim=41, action_head="gaussian", action_dim=8, obs_head="gaussian", obs_loss_weight=10.0, trunk="hawk",
    hawk=HawkTrunkConfig(),
)
# Quick pinpad: a 4-block, width-64 Hawk (controlled layer 2 = L/2). Measured on 2 shared CPU cores, a
# training step of 32 point-pinpad episodes (~70 steps each) takes ~0.15 s at this size, ~0.5 s at width
# 128; the sequential RG-LRU scan dominates.
_QUICK_PINPAD_MODEL = replace(
    _PINPAD_MODEL, hawk=HawkTrunkConfig(d_model=64, n_layers=4, lru_width=64, n_heads=4, mlp_hidden=128)
)

PRESETS: dict[str, PretrainConfig] = {
    "paper": PretrainConfig(),
    "paper-ant": PretrainConfig(model=_PINPAD_MODEL, steps=204_800, batch_size=512, lr=3e-4, weight_decay=0.03),
    "quick-pinpad": PretrainConfig(
        model=_QUICK_PINPAD_MODEL,
        steps=1500,
        batch_size=32,
        lr=3e-3,
        warmup_steps=100,
        schedule="cosine",
        grad_clip=1.0,
        eval_every=250,
        checkpoint_every=250,
        eval_rollouts=0,
    ),
    "quick": PretrainConfig(
        model=_QUICK_MODEL,
        steps=12000,
        batch_size=64,
        lr=1e-3,
        warmup_steps=100,
        schedule="cosine",
        grad_clip=1.0,
        bf16_autocast=True,
        eval_every=500,
        checkpoint_every=500,
    ),
}
# A deviation to test why subgoal controllers steer weakly (docs/results.md): the quick preset with every
# object's offset from the agent added to the input (ObjectOffsets).
PRESETS["quick-offsets"] = replace(PRESETS["quick"], model=replace(_QUICK_MODEL, obs_embedding="egocentric-offsets"))


def pretrain_preset(name: str, **overrides: Any) -> PretrainConfig:
    """The preset called `name` with `overrides` applied (None values are ignored)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(sorted(PRESETS))}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


def learning_rate(config: PretrainConfig, step: int) -> float:
    """The learning rate at `step` (0-based): linear warmup, then constant or cosine decay."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    progress_fraction = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress_fraction)))
    return config.lr * (config.min_lr_fraction + (1 - config.min_lr_fraction) * cosine)


def bf16_supported(device: torch.device = torch.device("cpu")) -> bool:
    """Whether `device` runs bfloat16 matmuls natively: a CUDA GPU that has them, or a CPU with oneDNN and
    AVX512-BF16/AMX (emulated ones are slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def make_optimizer(model: torch.nn.Module, config: PretrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: decaying biases and LayerNorm gains only adds noise."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


# Fields that may differ between a run and its resumption: they change neither the numbers nor the data order.
_RESUMABLE_CHANGES = {"steps", "log_every", "eval_every", "checkpoint_every", "eval_rollouts"}


def _check_resumable(saved: dict[str, Any], config: PretrainConfig, checksum: str | None) -> None:
    """Refuse to resume a checkpoint trained on other data or with other hyperparameters."""
    if saved.get("dataset", {}).get("checksum") != checksum:
        raise CheckpointError(
            f"checkpoint was trained on dataset {str(saved.get('dataset', {}).get('checksum'))[:12]}..., "
            f"not {str(checksum)[:12]}...; use the same --data or a new --out"
        )
    ours = config_to_dict(config)
    theirs = saved.get("pretrain", {})
    fixed = set(ours) - _RESUMABLE_CHANGES
    if config.schedule == "cosine":
        fixed.add("steps")  # the cosine schedule depends on the total step count
    differ = sorted(k for k in fixed if theirs.get(k) != ours[k])
    if differ == ["steps"]:  # the one rule for both trainers: a longer budget is refused only where it changes the past
        raise CheckpointError(f"cannot resume with --steps {ours['steps']}: the cosine learning-rate schedule of the "
                              f"checkpoint's {theirs.get('steps')} steps would change; use a new --out")
    if differ:
        raise CheckpointError(f"cannot resume: config differs from the checkpoint's in {differ}; use a new --out")


def length_grouped_batches(
    dataset: TrajectoryDataset,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    group_batches: int = 32,
    device: torch.device | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Training batches of `batch_size` episodes of similar length, a resumable stream like `infinite_batches`.

    Each epoch shuffles the episodes, cuts them into groups of `group_batches` batches, sorts each group
    by length and cuts it into batches, then shuffles the batch order. Batches are padded to their longest
    episode, so this wastes far less compute on padding than random batches (grid-world lengths range
    roughly 10-70). The stream depends only on `seed`; starting at `start_step` yields what an
    uninterrupted stream yields from that step on. Batches are placed on `device` (default: the CPU).
    """
    n = dataset.num_episodes
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ConfigError(f"batch_size {batch_size} must be in 1..{n} (the number of training episodes)")
    lengths = dataset.episode_lengths
    epoch, offset = divmod(start_step, per_epoch)
    while True:
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(n)[: per_epoch * batch_size]
        group = group_batches * batch_size
        chunks = [order[i : i + group] for i in range(0, len(order), group)]
        order = np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in chunks])
        batches = order.reshape(per_epoch, batch_size)[rng.permutation(per_epoch)]
        for indices in batches[offset:]:
            yield dataset.batch(indices, device)
        epoch, offset = epoch + 1, 0


@dataclass
class TrainResult:
    """What `train_base_model` returns: the model, the losses of the steps it ran, and throughput."""

    model: BaseModel
    losses: list[float]  # training loss of each step run here (steps start_step..config.steps-1)
    start_step: int
    bf16: bool  # whether bfloat16 autocast was used
    device: torch.device
    seconds: float
    tokens_per_second: float


def train_base_model(
    config: PretrainConfig,
    train_set: TrajectoryDataset,
    *,
    held_out: TrajectoryDataset | None = None,
    checkpoint_dir: Path | None = None,
    log_dir: Path | None = None,
    resume: bool = False,
    extra_config: dict[str, Any] | None = None,
    show_progress: bool = True,
    device: str | torch.device = "cpu",
) -> TrainResult:
    """Train a base model on `train_set` for `config.steps` steps on `device` and return it with its losses.

    With `checkpoint_dir`, a checkpoint (weights, config incl. `extra_config`, optimizer/RNG/step) is
    written every `checkpoint_every` steps and at the end; with `resume`, training continues from the
    checkpoint there (if any, from any device) and gives the losses an uninterrupted run on this device
    would have given.
    """
    if config.model.obs_dim != train_set.obs_dim:
        raise ConfigError(f"model obs_dim {config.model.obs_dim} != dataset obs_dim {train_set.obs_dim}")
    if config.batch_size > train_set.num_episodes:
        raise ConfigError(f"batch_size {config.batch_size} exceeds the {train_set.num_episodes} training episodes")
    device = resolve_device(device)
    seed_everything(config.seed)
    torch.manual_seed(derive_seed(config.seed, "init"))
    model = BaseModel(config.model).to(device)  # initialised on the CPU: the same weights on every device
    optimizer = make_optimizer(model, config)
    checkpoint_config = {"pretrain": config_to_dict(config), **(extra_config or {})}

    start_step = 0
    if resume and checkpoint_dir is not None and (Path(checkpoint_dir) / "config.json").is_file():
        weights, saved, state = load_checkpoint(Path(checkpoint_dir))
        _check_resumable(saved, config, checkpoint_config.get("dataset", {}).get("checksum"))
        if state is None:
            raise CheckpointError(f"{checkpoint_dir} has no training state to resume from")
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start_step = int(state["step"])
        if start_step > config.steps:
            raise CheckpointError(f"checkpoint is at step {start_step}, past the requested --steps {config.steps}")

    def save(step: int) -> None:
        if checkpoint_dir is not None:
            state = {"optimizer": optimizer.state_dict(), "rng": rng_state(), "step": step}
            save_base_model(checkpoint_dir, model, {**checkpoint_config, "step": step}, state)

    logger = ScalarLogger(log_dir)
    eval_batch = held_out.batch(np.arange(min(256, held_out.num_episodes)), device) if held_out is not None else None
    batches = length_grouped_batches(
        train_set, config.batch_size, derive_seed(config.seed, "data"), start_step, device=device
    )
    use_bf16 = config.bf16_autocast and bf16_supported(device)
    losses: list[float] = []
    tokens = 0
    start_time = time.perf_counter()
    model.train()
    with progress(total=config.steps, desc="pretrain", disable=not show_progress) as bar:
        bar.update(start_step)
        for step in range(start_step, config.steps):
            batch = next(batches)
            lr = learning_rate(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss, metrics = model.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
            optimizer.step()
            losses.append(metrics["loss"])
            tokens += int(batch["mask"].sum())
            bar.update(1)
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                rate = tokens / (time.perf_counter() - start_time)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics.get('action_accuracy', 0):.3f}", tok_s=f"{rate:.0f}")
                logger.log(done, lr=lr, tokens_per_second=rate, **{f"train/{k}": v for k, v in metrics.items()})
            if eval_batch is not None and config.eval_every and done % config.eval_every == 0:
                with torch.no_grad():
                    _, held_metrics = model.loss(eval_batch)
                logger.log(done, **{f"held_out/{k}": v for k, v in held_metrics.items()})
            if config.checkpoint_every and done % config.checkpoint_every == 0 and done != config.steps:
                save(done)
    save(config.steps)
    logger.close()
    seconds = time.perf_counter() - start_time
    return TrainResult(model, losses, start_step, use_bf16, device, seconds, tokens / max(seconds, 1e-9))


# --- evaluation ---------------------------------------------------------------------------------------


@torch.no_grad()
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


def expert_action_probabilities(dataset: TrajectoryDataset, env_config: Any, epsilon: float = 0.0) -> np.ndarray:
    """The grid-world expert's action distribution at every step of `dataset`: float [S, n_actions].

    Reconstructed from the observations (layout and agent position) and the recorded target colours,
    with the expert's rule: uniform over shortest-path actions (paths avoid walls and other colours)
    with probability 1 - epsilon, else uniform over the actions that do not step on a wrong colour.
    Steps are those of the dataset's episodes in order (episode after episode).
    """
    from internal_rl.envs.expert import distance_maps
    from internal_rl.envs.gridworld import MOVES

    size, n_colours = env_config.size, env_config.n_colours
    n_objects = n_colours + env_config.n_walls
    arrays = dataset.arrays
    ids = dataset.episode_ids
    starts, lengths = arrays["episode_starts"][ids], arrays["episode_lengths"][ids]
    first_obs = arrays["observations"][starts].reshape(len(ids), size, size, n_objects + 1)
    # Layout code = the object channel that is on; the agent channel is the last one.
    layouts = np.where(first_obs[..., :n_objects].any(-1), first_obs[..., :n_objects].argmax(-1), -1).astype(np.int8)
    dist = distance_maps(layouts, env_config).astype(np.int64)  # [N, C, G, G], -1 where forbidden

    episode = np.repeat(np.arange(len(ids)), lengths)
    step_index = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)])
    obs = arrays["observations"][step_index].reshape(-1, size * size, n_objects + 1)
    row, col = np.divmod(obs[..., -1].argmax(-1), size)
    target = arrays["targets"][step_index].astype(np.int64)
    next_row, next_col = row[:, None] + MOVES[:, 0], col[:, None] + MOVES[:, 1]  # [S, 4]
    inside = (next_row >= 0) & (next_row < size) & (next_col >= 0) & (next_col < size)
    r, c = np.clip(next_row, 0, size - 1), np.clip(next_col, 0, size - 1)
    code = layouts[episode[:, None], r, c]
    next_dist = np.where(inside, dist[episode[:, None], target[:, None], r, c], -1)
    # A move is on a shortest path iff it reaches the cell of least distance (blocked moves never do).
    reachable = next_dist >= 0
    best = np.where(reachable, next_dist, np.iinfo(np.int64).max).min(-1, keepdims=True)
    optimal = reachable & (next_dist == best)
    safe = ~(inside & (code >= 0) & (code < n_colours) & (code != target[:, None]))
    safe[~safe.any(-1)] = True  # boxed in by other colours: the expert then picks any action
    optimal = np.where(optimal.any(-1, keepdims=True), optimal, safe)  # unreachable target: a random safe move
    return (1 - epsilon) * optimal / optimal.sum(-1, keepdims=True) + epsilon * safe / safe.sum(-1, keepdims=True)


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


class FreeRunningGrid:
    """Grid worlds without a task: the agent moves until we stop it, and we record the colours it enters.

    The real environment ends an episode at the first colour that is not its task's next one, and it cannot
    restart with the agent standing on a colour, so a model that is not told the task cannot be followed
    past its first "wrong" colour there. This class takes layouts, start positions and the initial
    observations from `BatchedGridWorld.reset` (so the encoding is the environment's) and applies the
    environment's documented dynamics itself: a move into a wall or off the grid does nothing, and a colour
    is entered when the agent moves onto its cell from another cell. Only the agent channel of the
    observation changes. A test checks it against `BatchedGridWorld` step for step.
    """

    def __init__(self, env_config: Any, num_envs: int, seed: int):
        from internal_rl.envs.batched_gridworld import BatchedGridWorld
        from internal_rl.envs.gridworld import MOVES

        env = BatchedGridWorld(env_config, num_envs)
        self.config = env_config
        self.obs = env.reset(seed=seed)  # [N, obs_dim] float32
        self.layouts = env.layouts.copy()  # [N, G, G] int8
        self.agent_pos = env.agent_pos.copy()  # [N, 2] (row, col)
        self._moves = MOVES

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Move every agent; returns (observations [N, obs_dim], colour entered [N] or -1)."""
        size, channels = self.config.size, self.config.n_channels
        ids = np.arange(len(actions))
        target = self.agent_pos + self._moves[actions]
        inside = ((target >= 0) & (target < size)).all(axis=1)
        clipped = np.clip(target, 0, size - 1)
        code = self.layouts[ids, clipped[:, 0], clipped[:, 1]].astype(np.int64)
        moved = inside & (code < self.config.n_colours)  # empty (-1) or a colour; walls block
        new_pos = np.where(moved[:, None], target, self.agent_pos)
        agent_channel = channels - 1
        self.obs[ids, (self.agent_pos[:, 0] * size + self.agent_pos[:, 1]) * channels + agent_channel] = 0.0
        self.obs[ids, (new_pos[:, 0] * size + new_pos[:, 1]) * channels + agent_channel] = 1.0
        self.agent_pos = new_pos
        return self.obs.copy(), np.where(moved & (code >= 0), code, -1)


@torch.no_grad()
def evaluate_rollouts(
    model: BaseModel,
    env_config: Any,
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
    env_config = None
    if held_out.manifest.get("env") == "gridworld":
        from internal_rl.data.generate import env_config_from_manifest

        env_config = env_config_from_manifest(held_out.manifest)
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


# --- the stage ----------------------------------------------------------------------------------------


def run_pretraining(
    config: PretrainConfig,
    data_dir: Path,
    stage_dir: Path,
    *,
    resume: bool = False,
    show_progress: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Pretrain on the dataset at `data_dir` into `stage_dir` (checkpoint/, tb/, eval.json) on `device`;
    return eval.json's content.

    Refuses to overwrite an existing checkpoint unless `resume` (which continues it, or starts afresh
    when there is none).
    """
    stage_dir = Path(stage_dir)
    checkpoint_dir = stage_dir / CHECKPOINT_SUBDIR
    dataset = load_dataset(Path(data_dir))
    if checkpoint_dir.exists() and not resume:
        raise CheckpointError(f"{stage_dir} already holds a pretrained model; pass --resume to continue it or use a new --out")
    model = dataclasses.replace(config.model, obs_dim=dataset.obs_dim)
    actions = dataset.arrays["actions"]
    if (actions.ndim == 2) != (model.action_head == "gaussian"):
        raise ConfigError(
            f"the dataset's actions are {'vectors' if actions.ndim == 2 else 'integers'}; the model's "
            f"{model.action_head!r} action head needs {'vectors' if model.action_head == 'gaussian' else 'integers'}"
        )
    if actions.ndim == 2:
        model = dataclasses.replace(model, action_dim=int(actions.shape[1]))
    config = dataclasses.replace(config, model=model)
    train_set, held_out = dataset.split(config.holdout_fraction, config.holdout_seed)
    extra = {"dataset": {"path": str(Path(data_dir).resolve()), "checksum": dataset.checksum, "episodes": dataset.num_episodes}}
    result = train_base_model(
        config,
        train_set,
        held_out=held_out,
        checkpoint_dir=checkpoint_dir,
        log_dir=stage_dir / "tb",
        resume=resume,
        extra_config=extra,
        show_progress=show_progress,
        device=device,
    )
    start = time.perf_counter()
    evaluation = evaluate_base_model(result.model, held_out, rollouts=config.eval_rollouts, seed=config.seed)
    evaluation.update(
        {
            "step": config.steps,
            "final_train_loss": result.losses[-1] if result.losses else None,
            "train_seconds": result.seconds,
            "train_tokens_per_second": result.tokens_per_second,
            "train_bf16_autocast": result.bf16,
            "train_device": describe_device(result.device),
            "eval_seconds": time.perf_counter() - start,
            "dataset": extra["dataset"],
        }
    )
    save_json(stage_dir / "eval.json", evaluation)
    return evaluation
