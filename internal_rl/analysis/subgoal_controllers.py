"""Supervised linear controllers, fitted: one residual-stream controller per subgoal (paper Sec. 4, App. C.3)

One controller per subgoal g is the controller decoder (the metacontroller's hypernetwork, shared via
`models/controller.py`) fed the one-hot code z = onehot(g, K=4) with beta = 1, so U_g = f_hyp(onehot(g))
and the activation e at the chosen hook becomes e + U_g e. The decoder is trained on expert data by
next-action likelihood with the ground-truth subgoal of every step, the base model frozen, no observation
loss (lambda = 0). One decoder is fitted per hook (layer) to find where control works best; the paper
finds mid-depth best, while linear decodability (probes.py) peaks later.

Their rollout evaluation, layer by layer, is `analysis/steering.py`.
"""

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from internal_rl.common.device import module_device
from internal_rl.common.errors import ConfigError, check
from internal_rl.common.logging import ScalarLogger
from internal_rl.common.logging import progress as progress_bar
from internal_rl.common.seeding import derive_seed
from internal_rl.envs.tasks import GRID_SUBGOAL_PAIRS
from internal_rl.models.controller import ControllerDecoder, apply_controller
from internal_rl.models.hooks import validate_hook


@dataclass(frozen=True)
class SteeringConfig:
    """Supervised controller fitting and evaluation; defaults are the paper's grid settings (Tables A7/A8)."""

    rank: int | None = 16  # low-rank U = A B^T (None: full d x d)
    hidden: int = 32  # controller decoder hidden width
    steps: int = 3200
    batch_size: int = 512  # episodes per optimiser step
    lr: float = 1e-3
    weight_decay: float = 0.03
    holdout_fraction: float = 0.2  # episodes held out for the reported action NLL
    nll_episodes: int = 512  # held-out episodes scored for the NLL (at most)
    episodes: int = 1024  # rollout episodes per evaluation (single: split evenly over the subgoals)
    greedy: bool = False  # argmax actions instead of sampling
    temperature: float = 1.0  # sampling temperature of a categorical action head (1: the model's own)
    shift: bool = False  # e + U_g e + c_g instead of the paper's e + U_g e (a diagnostic variant)
    n_subgoals: int = len(GRID_SUBGOAL_PAIRS)
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.rank is None or self.rank >= 1, f"SteeringConfig rank={self.rank}; expected None or >= 1")
        check(self.hidden >= 1, f"SteeringConfig hidden={self.hidden}; expected >= 1")
        check(self.steps >= 0, f"SteeringConfig steps={self.steps}; expected >= 0")
        check(self.batch_size >= 1, f"SteeringConfig batch_size={self.batch_size}; expected >= 1")
        check(self.lr > 0, f"SteeringConfig lr={self.lr}; expected > 0")
        check(self.weight_decay >= 0, f"SteeringConfig weight_decay={self.weight_decay}; expected >= 0")
        check(0 < self.holdout_fraction < 1,
              f"SteeringConfig holdout_fraction={self.holdout_fraction}; expected in (0, 1)")
        check(self.nll_episodes >= 1, f"SteeringConfig nll_episodes={self.nll_episodes}; expected >= 1")
        check(self.episodes >= self.n_subgoals,
              f"SteeringConfig episodes={self.episodes}; expected >= n_subgoals ({self.n_subgoals})")
        check(self.n_subgoals >= 1, f"SteeringConfig n_subgoals={self.n_subgoals}; expected >= 1")
        check(math.isfinite(self.temperature) and self.temperature > 0,
              f"SteeringConfig temperature={self.temperature}; expected a finite value > 0")


STEER_PRESETS: dict[str, SteeringConfig] = {
    "paper": SteeringConfig(),
    # About 2 minutes for the 5 inner layers of the quick 6-layer d_model-128 model on 2 CPU cores
    # (measured 20 s of CPU per layer: 100 fitting steps and 3 x 256 rollout episodes); a higher lr than
    # the paper's makes up for the 32x fewer steps.
    "quick": SteeringConfig(steps=100, batch_size=48, lr=3e-3, nll_episodes=256, episodes=256),
    # The ant's (Table A8): full-rank linear controllers, batch 256, lr 3e-4; and its CPU-budget version.
    "paper-ant": SteeringConfig(rank=None, batch_size=256, lr=3e-4),
    "quick-pinpad": SteeringConfig(rank=None, steps=100, batch_size=32, lr=1e-3, nll_episodes=128, episodes=128),
}


def steer_preset(name: str) -> SteeringConfig:
    """The named preset ('quick' or 'paper'), or ConfigError listing the valid names."""
    if name not in STEER_PRESETS:
        raise ConfigError(f"unknown steering preset {name!r}; valid: {sorted(STEER_PRESETS)}")
    return STEER_PRESETS[name]


def subgoal_codes(subgoals: Tensor, n_subgoals: int) -> Tensor:
    """One-hot codes z [..., n_subgoals] float32 for integer subgoals [...]; negative labels (padding) give 0."""
    valid = subgoals >= 0
    z = F.one_hot(subgoals.clamp_min(0).long(), n_subgoals).float()
    return z * valid.unsqueeze(-1)


def controller_intervention(decoder: ControllerDecoder, z: Tensor) -> Callable[[Tensor], Tensor]:
    """The intervention e -> e + U(z) e for activations e [..., d] whose leading shape is z's [..., n_z]."""
    params = decoder(z)
    return lambda e: apply_controller(e, params)


def action_nll(model: torch.nn.Module, batch: Mapping[str, Tensor], interventions=None) -> Tensor:
    """Masked mean of -log p(a_t | o_{1:t}) over a dataset batch, under the given interventions."""
    out = model(batch["observations"], interventions=interventions)
    nll = model.action_nll(out.action_params, batch["actions"])  # [B,T]
    mask = batch["mask"].to(nll.dtype)
    return (nll * mask).sum() / mask.sum().clamp_min(1)


def fit_subgoal_controllers(
    model: torch.nn.Module,
    dataset,
    hook: str,
    config: SteeringConfig = SteeringConfig(),
    *,
    show_progress: bool = True,
    logger: ScalarLogger | None = None,
) -> tuple[ControllerDecoder, dict[str, float]]:
    """Train a controller decoder at `hook` so that U_g = decoder(onehot(g)) maximises the expert's action
    likelihood on steps whose ground-truth subgoal is g (base model frozen), on the model's device.

    `dataset` (a TrajectoryDataset with "subgoals") is split by `config.holdout_fraction` (seed
    `config.seed`); returns the decoder and {"heldout_nll_controlled": action NLL on held-out episodes with
    the true subgoals' controllers, "train_nll": mean training loss over the final 10% of steps}.
    """
    validate_hook(hook, int(model.n_layers))
    train, held_out = dataset.split(config.holdout_fraction, config.seed)
    with torch.random.fork_rng(devices=[]):  # a seeded decoder init that leaves the global RNG untouched
        torch.manual_seed(derive_seed(config.seed, "controller", hook))
        decoder = ControllerDecoder(config.n_subgoals, int(model.d_model), config.rank, config.hidden, config.shift)
    device = module_device(model)
    decoder.to(device)
    opt = torch.optim.AdamW(decoder.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    batch_size = min(config.batch_size, train.num_episodes)
    batches = train.infinite_batches(batch_size, seed=derive_seed(config.seed, "batches"), device=device)
    tail = []
    for step in progress_bar(range(config.steps), desc=f"controllers {hook}", disable=not show_progress):
        batch = next(batches)
        z = subgoal_codes(batch["subgoals"], config.n_subgoals)  # [B,T,K]
        loss = action_nll(model, batch, {hook: controller_intervention(decoder, z)})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= config.steps - max(1, config.steps // 10):
            tail.append(loss.item())
        if logger is not None:
            logger.log(step, **{f"steering/{hook}/nll": float(loss)})
    decoder.eval().requires_grad_(False)

    metrics = {
        "heldout_nll_controlled": heldout_action_nll(model, held_out, config, decoder=decoder, hook=hook),
        "train_nll": float(np.mean(tail)) if tail else float("nan"),
    }
    return decoder, metrics


@torch.no_grad()
def heldout_action_nll(
    model: torch.nn.Module,
    held_out,
    config: SteeringConfig,
    *,
    decoder: ControllerDecoder | None = None,
    hook: str | None = None,
) -> float:
    """Mean action NLL per step over the first `config.nll_episodes` episodes of `held_out`, with each step's
    ground-truth subgoal controller applied at `hook` (or the base model alone when `decoder` is None)."""
    n_eval = min(config.nll_episodes, held_out.num_episodes)
    total, weight = 0.0, 0
    for start in range(0, n_eval, 128):
        batch = held_out.batch(np.arange(start, min(start + 128, n_eval)), module_device(model))
        interventions = None
        if decoder is not None:
            interventions = {hook: controller_intervention(decoder, subgoal_codes(batch["subgoals"], decoder.n_z))}
        steps = int(batch["mask"].sum())
        total += float(action_nll(model, batch, interventions)) * steps
        weight += steps
    return total / max(weight, 1)
