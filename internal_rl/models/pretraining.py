"""Pretraining the base model on expert trajectories (paper App. C.1, Table A4).

Read top to bottom: the config and its presets, then the training loop (AdamW; optional warmup, cosine
decay and gradient clipping). The evaluation of a trained model is `analysis/base_model_eval.py`; the
pretraining stage of a run folder (checkpoint, TensorBoard scalars, eval.json) is `pipeline/pretrain_stage.py`.

A resumed run continues with the losses an uninterrupted run would have had: the data order is a
function of (seed, step), and the optimizer state and step are restored from the checkpoint.
"""

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from internal_rl.common.checkpoint import load_checkpoint, rng_state, set_rng_state
from internal_rl.common.config import config_to_dict, replace
from internal_rl.common.device import resolve_device
from internal_rl.common.errors import CheckpointError, ConfigError, check
from internal_rl.common.logging import ScalarLogger, progress
from internal_rl.common.seeding import derive_seed, seed_everything
from internal_rl.data.dataset import TrajectoryDataset
from internal_rl.models.base_model import BaseModel, BaseModelConfig, save_base_model
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
# The same at the paper's width (d_model 256, 4 heads x 64, MLP 512): whether the quick presets' half width is
# what limits steering (docs/results.md).
PRESETS["quick-offsets-w256"] = replace(
    PRESETS["quick-offsets"], model=replace(PRESETS["quick-offsets"].model, transformer=TransformerConfig())
)


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
