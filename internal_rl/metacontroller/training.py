"""Self-supervised metacontroller training against a frozen base model (paper Eq. 3 / 9, Table A9), and two
baselines (paper Sec. 7): co-training, which trains the base model jointly on the same loss, and CompILE
(metacontroller/compile.py), trained by the same loop with its own KL terms.

The loss of one batch, per valid step t and averaged over valid steps:

    L(phi) = -log p_theta(a_t | o_{1:t}, with e_t -> e_t + U_t e_t at the controlled hook)
             + alpha * KL(N(mu_t, Sigma_t) || N(0, I))

with lambda = 0 (no observation term, Tables A9/A10). The KL is charged at every step and is not
weighted by beta; there is no loss of any kind on beta. Only the metacontroller's parameters phi are
trained: the base model is frozen (eval mode, requires_grad False) but differentiated through, so the
action NLL reaches phi via the upper blocks. Co-training trains the base model's parameters theta too,
with the same optimizer. z~_t is sampled with the reparameterisation trick.

Presets: "paper" (Table A9: 64k steps, batch 512, AdamW lr 1e-3, wd 0.03, constant LR), and "quick", "long" and
"quick-pinpad" at CPU budgets. These add a schedule that the paper does not have (0 in "paper"):
- alpha is 0 for `alpha_delay_steps`, then ramps linearly to its target over `alpha_warmup_steps`. Short
  runs otherwise fall into posterior collapse: the decoder's U starts at 0, so the action likelihood gives
  z no gradient at first, and any KL pressure silences z before the decoder learns to read it (grid world,
  alpha = 0.1: KL 0.001 nats per step, and a ramp from 0 over 800 steps still gave 0.02 by step 100).
- the switching unit is not trained for `switch_freeze_steps`, so beta stays near its initial 0.95 (per-step
  codes) until alpha has reached its target. Trained from the start, it learns while alpha is 0, when one
  code per episode explains everything, and it then holds a single segment for good (measured: 1.0 switch
  per episode, switch F1 0.00). Released under the KL, it learns to hold codes within subgoals: on the
  grid world's long-budget base model, "long" gave switch F1 0.97 (see docs/results.md).
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from internal_rl.common.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from internal_rl.common.config import config_to_dict, replace
from internal_rl.common.device import describe_device, module_device, resolve_device
from internal_rl.common.errors import CheckpointError, ConfigError, check
from internal_rl.common.logging import ScalarLogger, progress
from internal_rl.common.seeding import derive_seed, seed_everything
from internal_rl.metacontroller.compile import CompILE, CompILEConfig
from internal_rl.metacontroller.modules import Metacontroller, label_switch_gate, segmenter_key
from internal_rl.metacontroller.segmenter import Segmenter, SegmenterConfig
from internal_rl.models.controller import apply_controller
from internal_rl.models.hooks import controlled_hook, validate_hook


@dataclass(frozen=True)
class MetacontrollerTrainConfig:
    """Optimisation settings (defaults: paper Table A9, grid world; AdamW, constant learning rate)."""

    steps: int = 64_000
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.03
    betas: tuple[float, float] = (0.9, 0.999)
    seed: int = 0
    # The alpha schedule (not in the paper; see the module docstring): alpha = 0 for `alpha_delay_steps`,
    # then a linear ramp over `alpha_warmup_steps`; 0 and 0 give the paper's constant alpha. The target
    # alpha is unchanged and, once reached, charged at every step, never weighted by beta.
    alpha_delay_steps: int = 0
    alpha_warmup_steps: int = 0
    # The switching unit is not trained for this many steps (0: trained from the start, as in the paper);
    # see the module docstring.
    switch_freeze_steps: int = 0
    holdout_fraction: float = 0.1  # episodes kept out of training, for the held-out NLL and the analysis
    eval_episodes: int = 256  # held-out episodes scored at each evaluation
    log_every: int = 25
    eval_every: int = 500
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_episodes", "log_every", "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            check(isinstance(value, int) and value > 0, f"MetacontrollerTrainConfig.{name}={value!r}; expected a positive int")
        check(self.lr > 0, f"MetacontrollerTrainConfig.lr={self.lr}; expected > 0")
        check(self.weight_decay >= 0, f"MetacontrollerTrainConfig.weight_decay={self.weight_decay}; expected >= 0")
        for name in ("alpha_delay_steps", "alpha_warmup_steps", "switch_freeze_steps"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 0, f"MetacontrollerTrainConfig.{name}={value!r}; expected an int >= 0")
        check(0 < self.holdout_fraction < 1, f"MetacontrollerTrainConfig.holdout_fraction={self.holdout_fraction}; expected in (0, 1)")

    def alpha_scale(self, step: int) -> float:
        """The fraction of the target alpha charged at (0-based) training step `step`."""
        if step < self.alpha_delay_steps:
            return 0.0
        return min(1.0, (step - self.alpha_delay_steps) / self.alpha_warmup_steps) if self.alpha_warmup_steps else 1.0


PRESETS: dict[str, MetacontrollerTrainConfig] = {
    "paper": MetacontrollerTrainConfig(),
    # Paper settings at a CPU budget: about 3 minutes on 2 idle CPU cores on top of a quick-preset base model
    # (0.3-0.4 s per step at T ~ 50; 1-2 s per step measured on a shared, overloaded 2-core machine).
    "quick": MetacontrollerTrainConfig(steps=600, batch_size=64, alpha_delay_steps=200, alpha_warmup_steps=200,
                                       switch_freeze_steps=400, eval_episodes=128, eval_every=200, checkpoint_every=200),
    # The schedule measured to give subgoal-aligned switching on the grid world's long-budget base model.
    "long": MetacontrollerTrainConfig(steps=1600, batch_size=64, alpha_delay_steps=300, alpha_warmup_steps=300,
                                      switch_freeze_steps=600, eval_episodes=128, eval_every=400, checkpoint_every=400),
    # The ant's (Table A10: 32k steps, batch 128, lr 3e-4), and a CPU budget for the point-mass pinpad,
    # whose episodes (~70 steps, Hawk trunk) cost about as much per step as the grid world's.
    "paper-ant": MetacontrollerTrainConfig(steps=32_000, batch_size=128, lr=3e-4),
    # CompILE's (Tables A11 / A12): grid 32k steps, batch 512, lr 1e-3; ant 32k steps, batch 128, lr 3e-4.
    "paper-compile": MetacontrollerTrainConfig(steps=32_000, batch_size=512),
    "paper-ant-compile": MetacontrollerTrainConfig(steps=32_000, batch_size=128, lr=3e-4),
    "quick-pinpad": MetacontrollerTrainConfig(
        steps=300, batch_size=32, alpha_delay_steps=100, alpha_warmup_steps=100, switch_freeze_steps=200,
        eval_episodes=128, eval_every=100, checkpoint_every=100,
    ),
}


# The preset CompILE trains with where a pipeline names the metacontroller's: the paper's own for CompILE, else
# the same CPU budget.
COMPILE_PRESETS = {"paper": "paper-compile", "paper-ant": "paper-ant-compile"}


def preset(name: str) -> MetacontrollerTrainConfig:
    """The named training preset; ConfigError listing the valid names otherwise."""
    if name not in PRESETS:
        raise ConfigError(f"unknown metacontroller preset {name!r}; valid: {sorted(PRESETS)}")
    return PRESETS[name]


def _valid_actions(actions: Tensor, mask: Tensor) -> Tensor:
    """Actions with padded steps replaced by 0, so that log_prob is defined everywhere (they are masked)."""
    m = mask.view(*mask.shape, *([1] * (actions.dim() - mask.dim())))
    return torch.where(m, actions, torch.zeros_like(actions))


def controlled_forward(
    base: nn.Module,
    metacontroller: Segmenter,
    batch: Mapping[str, Tensor],
    *,
    sample: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """Run the base model with the metacontroller's controller at its hook.

    Returns (action NLL [B,T] under the controlled model, the metacontroller's outputs: z, beta, mu, ...,
    and e [B,T,d], the uncontrolled activations at the hook).
    The metacontroller sees the whole uncontrolled sequence e_{1:T} at the hook (its embedder is non-causal);
    each step's controlled activation e_t + U_t e_t then flows causally through the upper blocks.
    """
    outputs: dict[str, Any] = {}

    beta = label_switch_gate(batch["subgoals"], batch["mask"]) if metacontroller.config.label_switches else None

    def intervene(e: Tensor) -> Tensor:  # e [B,T,d]
        outputs.update(metacontroller(e, batch["mask"], sample=sample, generator=generator, beta=beta), e=e)
        return apply_controller(e, outputs["controller"])

    model_out = base(batch["observations"], interventions={metacontroller.config.hook: intervene})
    dist = base.action_distribution(model_out.action_params)
    nll = -dist.log_prob(_valid_actions(batch["actions"], batch["mask"]))
    return nll, outputs


def metacontroller_loss(
    base: nn.Module,
    metacontroller: Segmenter,
    batch: Mapping[str, Tensor],
    *,
    generator: torch.Generator | None = None,
    sample: bool = True,
    alpha: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The training loss (masked mean over valid steps of NLL + alpha * KL) and its named parts.

    `alpha` defaults to the metacontroller's configured KL strength.
    """
    nll, out = controlled_forward(base, metacontroller, batch, sample=sample, generator=generator)
    kl = out["kl_steps"]  # [B,T]
    mask = batch["mask"].to(nll.dtype)
    n_valid = mask.sum()
    nll_mean = (nll * mask).sum() / n_valid
    kl_mean = (kl * mask).sum() / n_valid
    alpha = metacontroller.config.alpha if alpha is None else alpha
    loss = nll_mean + alpha * kl_mean
    switches = ((out["beta"] > 0.5).to(nll.dtype) * mask).sum(1)
    metrics = {
        "loss": loss.item(),
        "alpha": float(alpha),
        "nll": nll_mean.item(),
        "kl": kl_mean.item(),
        "beta_mean": ((out["beta"] * mask).sum() / n_valid).item(),
        "switches_per_episode": switches.mean().item(),
    }
    return loss, metrics


@torch.no_grad()
def evaluate(base: nn.Module, metacontroller: Segmenter, dataset: Any, max_episodes: int, batch_size: int = 256) -> dict[str, float]:
    """Held-out action NLL, KL and switch rate with z~ = mu (deterministic), over the first `max_episodes`."""
    n = min(max_episodes, dataset.num_episodes)
    totals = {"nll": 0.0, "kl": 0.0, "switches_per_episode": 0.0}
    steps = 0
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        batch = dataset.batch(idx, module_device(base))
        nll, out = controlled_forward(base, metacontroller, batch, sample=False)
        mask = batch["mask"].to(nll.dtype)
        totals["nll"] += (nll * mask).sum().item()
        totals["kl"] += (out["kl_steps"] * mask).sum().item()
        totals["switches_per_episode"] += ((out["beta"] > 0.5).to(nll.dtype) * mask).sum().item()
        steps += int(mask.sum().item())
    return {
        "nll": totals["nll"] / steps,
        "kl": totals["kl"] / steps,
        "switches_per_episode": totals["switches_per_episode"] / n,
    }


def freeze(base: nn.Module) -> nn.Module:
    """Put the base model in eval mode with no trainable parameters (it is part of the environment)."""
    base.eval()
    base.requires_grad_(False)
    return base


def resolve_config(config: SegmenterConfig, base: nn.Module) -> SegmenterConfig:
    """Fill in the base model's width and controlled hook; refuse a hook the base model does not have."""
    hook = controlled_hook(base.n_layers) if config.hook is None else validate_hook(config.hook, base.n_layers)
    return replace(config, d_model=base.d_model, hook=hook)


COTRAIN_INITS = ("scratch", "pretrained")  # the co-trained base model's start: random (paper, grid) or pretrained (ant)


def train_metacontroller(
    base: nn.Module,
    dataset: Any,
    config: SegmenterConfig,
    train: MetacontrollerTrainConfig,
    *,
    checkpoint_dir: Path | None = None,
    log_dir: Path | None = None,
    resume: bool = False,
    extra_config: Mapping[str, Any] | None = None,
    show_progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    device: str | torch.device = "cpu",
    cotrain: bool = False,
) -> tuple[Segmenter, dict[str, Any]]:
    """Train a metacontroller (or, given a CompILEConfig, the CompILE baseline) on `dataset` (a TrajectoryDataset)
    against the frozen `base` on `device` (where `base` is moved); return it and a summary. With `cotrain`,
    `base` is trained jointly on the same loss (the paper's co-training baseline; its weights are part of the
    checkpoint's training state) and frozen at the end.

    With `checkpoint_dir`, checkpoints (weights, config, optimizer and RNG state) replace it atomically every
    `checkpoint_every` steps and at the end; `log_dir` receives TensorBoard scalars. `resume=True` continues
    from the checkpoint in `checkpoint_dir` if one exists, and the result equals an uninterrupted run's.
    `extra_config` is stored in the checkpoint's config (e.g. the dataset path and checksum).
    """
    device = resolve_device(device)
    if cotrain:
        base.to(device).train().requires_grad_(True)
    else:
        freeze(base).to(device)
    config = resolve_config(config, base)
    train_part, held_out = dataset.split(train.holdout_fraction, train.seed)
    check(
        train.batch_size <= train_part.num_episodes,
        f"batch_size {train.batch_size} exceeds the {train_part.num_episodes} training episodes; use a smaller batch or more data",
    )
    seed_everything(train.seed)
    compile_baseline = isinstance(config, CompILEConfig)
    # initialised on the CPU: the same weights on every device
    model = (CompILE if compile_baseline else Metacontroller)(config).to(device)
    params = [*model.parameters(), *(base.parameters() if cotrain else ())]
    optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay, betas=train.betas)
    generator = torch.Generator().manual_seed(derive_seed(train.seed, "z-noise"))
    saved_config = {
        "compile" if compile_baseline else "metacontroller": config_to_dict(config),
        "train": config_to_dict(train),
        "cotrain": cotrain,
        **dict(extra_config or {}),
    }
    cotrained_base = base if cotrain else None
    start_step, history = 0, []
    if checkpoint_dir is not None and resume and (Path(checkpoint_dir) / "config.json").is_file():
        start_step, history = _restore(Path(checkpoint_dir), model, optimizer, generator, saved_config, cotrained_base)
    logger = ScalarLogger(log_dir)
    batches = train_part.infinite_batches(
        train.batch_size, seed=derive_seed(train.seed, "batches"), start_step=start_step, device=device
    )
    model.train()
    started = time.perf_counter()
    bar = progress(range(start_step, train.steps), total=train.steps - start_step, desc="metacontroller", disable=not show_progress)
    for step in bar:
        alpha = config.alpha * train.alpha_scale(step)
        model.switching_unit.requires_grad_(step >= train.switch_freeze_steps)
        loss, metrics = metacontroller_loss(base, model, next(batches), generator=generator, alpha=alpha)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = step + 1
        if done % train.log_every == 0 or done == train.steps:
            logger.log(done, **{f"train/{k}": v for k, v in metrics.items()})
            bar.set_postfix(nll=f"{metrics['nll']:.3f}", kl=f"{metrics['kl']:.2f}", sw=f"{metrics['switches_per_episode']:.1f}")
        if done % train.eval_every == 0 or done == train.steps:
            model.eval()
            base.eval()
            scores = evaluate(base, model, held_out, train.eval_episodes)
            model.train()
            base.train(cotrain)
            logger.log(done, **{f"heldout/{k}": v for k, v in scores.items()})
            history.append({"step": done, **{f"train_{k}": v for k, v in metrics.items()}, **{f"heldout_{k}": v for k, v in scores.items()}})
        if on_step is not None:
            on_step(done, metrics)
        if checkpoint_dir is not None and (done % train.checkpoint_every == 0 or done == train.steps):
            _save(Path(checkpoint_dir), model, optimizer, generator, saved_config, done, history, cotrained_base)
    logger.close()
    model.eval()
    freeze(base)
    summary = {
        "steps": train.steps,
        "resumed_from": start_step,
        "train_seconds": time.perf_counter() - started,
        "device": describe_device(device),
        "final": history[-1] if history else {},
        "history": history,
    }
    return model, summary


def _save(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
          config: dict[str, Any], step: int, history: list[dict[str, float]], base: nn.Module | None) -> None:
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "rng": rng_state(),
        "history": history,
    }
    if base is not None:  # co-training: the base model's weights are training state, saved with the rest at once
        state["base"] = {name: value.detach().cpu() for name, value in base.state_dict().items()}
    save_checkpoint(out, model, {**config, "step": step}, state)


def _restore(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
             config: dict[str, Any], base: nn.Module | None) -> tuple[int, list[dict[str, float]]]:
    weights, saved, state = load_checkpoint(out)
    if state is None:
        raise CheckpointError(f"{out} has no training state to resume from; delete it or train without --resume")
    # The step budget may grow on resume; anything else changed would silently train another model.
    ignored = {"steps"}
    for key in (segmenter_key(config), "train"):
        have = {k: v for k, v in (saved.get(key) or {}).items() if k not in ignored}
        want = {k: v for k, v in config[key].items() if k not in ignored}
        if have != want:
            diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            raise CheckpointError(f"cannot resume {out}: its {key} config differs from the requested one in {diff}")
    if bool(saved.get("cotrain")) != (base is not None):
        raise CheckpointError(f"cannot resume {out}: it was {'' if saved.get('cotrain') else 'not '}trained jointly "
                              f"with its base model, unlike the requested run")
    model.load_state_dict(weights)
    if base is not None:
        base.load_state_dict(state["base"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    set_rng_state(state["rng"])
    return int(state["step"]), list(state["history"])
