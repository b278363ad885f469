"""Critic-free PPO-clip ("GRPO without groups"), the one RL algorithm every method here uses.

Paper App. C.5.2: the advantage of a whole trajectory is its batch-normalised terminal return,
    A_tau = (R(tau) - mean_batch R) / (std_batch R + delta),   delta = 1e-3,
and the policy maximises
    E_tau  sum_t  min(ratio_t A_tau, clip(ratio_t, 1 - eps, 1 + eps) A_tau),
summed over the policy's decisions t (abstract decisions for internal RL, every low-level action for
raw-action RL). There is no value function, the entropy coefficient is 0 and no KL-to-reference term
is used. The paper does not give the clip eps nor the number of epochs per batch; we choose eps = 0.2
(the PPO default) and 4 epochs over each batch in one minibatch (documented in `PPOConfig`).

The algorithm is independent of the method: a policy only has to return the log-probability of the
decisions it took, `policy.log_prob(inputs, actions, mask) -> [B, M]`.
"""

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from internal_rl.common.errors import check


@dataclass(frozen=True)
class PPOConfig:
    """Hyperparameters of the critic-free PPO update (paper Tables A13/A14 where given)."""

    lr: float = 3e-5  # Tables A13/A14; App. C.5.5 scans {3e-6, 1e-5, 3e-5, 1e-4, 3e-4}
    weight_decay: float = 0.0  # Tables A13/A14
    betas: tuple[float, float] = (0.9, 0.999)  # Tables A13/A14
    episodes_per_batch: int = 1024  # "batch 1024" (grid, Table A13)
    clip_eps: float = 0.2  # not in the paper: the PPO default
    epochs: int = 4  # not in the paper: gradient epochs over each batch of episodes
    minibatches: int = 1  # minibatches per epoch (of episodes)
    advantage_eps: float = 1e-3  # delta in the advantage's denominator (App. C.5.2)
    max_grad_norm: float = 1.0  # not in the paper: a safety net against rare huge ratios

    def __post_init__(self) -> None:
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.episodes_per_batch >= 2, f"episodes_per_batch must be >= 2, got {self.episodes_per_batch}")
        check(0 < self.clip_eps < 1, f"clip_eps must be in (0, 1), got {self.clip_eps}")
        check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        check(
            1 <= self.minibatches <= self.episodes_per_batch,
            f"minibatches must be in 1..episodes_per_batch={self.episodes_per_batch}, got {self.minibatches}",
        )


@dataclass
class RolloutBatch:
    """A batch of B finished episodes, as the PPO update needs them.

    `inputs` and `actions` are whatever the policy's `log_prob` reads (internal RL: residual
    activations [B, M, d_model] and codes [B, M, n_z] at the M decision times; raw-action RL:
    observations [B, T, obs_dim] and actions [B, T]). `mask` [B, M] marks real decisions.
    """

    inputs: Tensor
    actions: Tensor
    log_probs: Tensor  # [B, M] log-probability of each decision under the policy that acted
    mask: Tensor  # [B, M] bool
    returns: Tensor  # [B] summed (sparse, terminal) reward
    successes: Tensor  # [B] bool, task completed
    env_steps: Tensor  # [B] low-level environment steps taken
    decisions: Tensor  # [B] policy decisions taken (== env_steps for raw-action RL)

    @property
    def num_episodes(self) -> int:
        return int(self.returns.shape[0])

    def select(self, index: Tensor) -> "RolloutBatch":
        """The sub-batch of episodes `index`."""
        return RolloutBatch(*(getattr(self, f)[index] for f in self.__dataclass_fields__))

    def to(self, device: torch.device) -> "RolloutBatch":
        """This batch on `device` (itself if it is there already)."""
        if self.returns.device == device:
            return self
        return RolloutBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    @staticmethod
    def concatenate(batches: "list[RolloutBatch]") -> "RolloutBatch":
        """One batch of all episodes of `batches`, in order; per-decision fields are zero-padded to the
        longest M (padding is masked out, as inside a batch)."""
        m = max(b.mask.shape[1] for b in batches)

        def pad(x: Tensor) -> Tensor:  # [B, M_b, ...] -> [B, m, ...]
            return torch.nn.functional.pad(x, (0, 0) * (x.dim() - 2) + (0, m - x.shape[1]))

        per_decision = ("inputs", "actions", "log_probs", "mask")
        return RolloutBatch(
            *(
                torch.cat([pad(getattr(b, f)) if f in per_decision else getattr(b, f) for b in batches])
                for f in RolloutBatch.__dataclass_fields__
            )
        )


class DecisionPolicy(Protocol):
    def log_prob(self, inputs: Tensor, actions: Tensor, mask: Tensor) -> Tensor:
        """Log-probability [B, M] of `actions` given `inputs` (0 where `mask` is False)."""
        ...

    def parameters(self) -> Any: ...


def normalised_advantages(returns: Tensor, eps: float = 1e-3) -> Tensor:
    """A_tau = (R - mean_batch R) / (std_batch R + eps), one advantage per episode ([B] -> [B]).

    The standard deviation is the population one (no Bessel correction). A batch where every return
    is equal gets zero advantages: it carries no learning signal.
    """
    returns = returns.float()
    return (returns - returns.mean()) / (returns.std(unbiased=False) + eps)


def clipped_surrogate(
    log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float
) -> tuple[Tensor, dict[str, float]]:
    """PPO-clip policy loss: -mean_tau sum_t min(ratio A_tau, clip(ratio, 1-eps, 1+eps) A_tau).

    `log_probs`, `old_log_probs`, `mask`: [B, M]; `advantages`: [B] (broadcast over the episode's
    decisions). Returns the loss (to minimise) and diagnostics.
    """
    mask = mask.float()
    log_ratio = (log_probs - old_log_probs) * mask
    ratio = log_ratio.exp()
    advantage = advantages[:, None]
    unclipped_objective = ratio * advantage
    clipped_objective = ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantage
    objective = torch.minimum(unclipped_objective, clipped_objective) * mask
    policy_loss = -objective.sum(dim=1).mean()

    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        clip_fraction = (((ratio - 1).abs() > clip_eps).float() * mask).sum() / n
        approx_kl = (((ratio - 1) - log_ratio) * mask).sum() / n  # the k3 estimator of KL(old || new)
    return policy_loss, {"clip_fraction": clip_fraction.item(), "approx_kl": approx_kl.item()}


def make_optimizer(policy: torch.nn.Module, config: PPOConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, constant learning rate (Tables A13/A14)."""
    params = [p for p in policy.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


def ppo_update(
    policy: DecisionPolicy,
    optimizer: torch.optim.Optimizer,
    batch: RolloutBatch,
    config: PPOConfig,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Run `config.epochs` epochs of PPO-clip on one batch of episodes; return mean diagnostics.

    The advantages are normalised once over the whole batch (not per minibatch).
    """
    advantages = normalised_advantages(batch.returns, config.advantage_eps)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    stats: dict[str, list[float]] = {"policy_loss": [], "clip_fraction": [], "approx_kl": [], "grad_norm": []}
    if bool((advantages == 0).all()):
        # No episode differs from the mean (e.g. no success yet): the gradient is exactly zero. Skip the
        # step rather than let Adam's momentum keep moving the policy on a batch without signal.
        return {"policy_loss": 0.0, "clip_fraction": 0.0, "approx_kl": 0.0, "grad_norm": 0.0, "skipped": 1.0}

    for _epoch in range(config.epochs):
        order = torch.randperm(batch.num_episodes, generator=generator).to(batch.returns.device)
        for index in order.chunk(config.minibatches):
            minibatch = batch.select(index)
            log_probs = policy.log_prob(minibatch.inputs, minibatch.actions, minibatch.mask)
            policy_loss, info = clipped_surrogate(
                log_probs, minibatch.log_probs, advantages[index], minibatch.mask, config.clip_eps
            )
            # The paper's objective is a mean over episodes of a sum over decisions; a minibatch
            # estimates it with its own episode mean, so no rescaling is needed.
            optimizer.zero_grad(set_to_none=True)
            policy_loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()

            stats["policy_loss"].append(policy_loss.item())
            stats["clip_fraction"].append(info["clip_fraction"])
            stats["approx_kl"].append(info["approx_kl"])
            stats["grad_norm"].append(grad_norm.item())
    return {name: sum(values) / len(values) for name, values in stats.items()} | {"skipped": 0.0}
