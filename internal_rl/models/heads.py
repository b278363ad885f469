"""Output heads of the base model: swappable maps from the final residual stream to distributions.

Action heads give p(a_t | o_{1:t}): categorical (the grid world's 4 moves) or Gaussian with a learned,
state-dependent diagonal covariance (the ant's torques). Observation heads give p(o_{t+1} | o_{1:t}), the
paper's auxiliary loss: independent Bernoulli per element for binary observations (the grid world's
one-hot cells) or a unit-variance Gaussian (squared error) for continuous ones. The paper leaves the
observation likelihood open (App. D.1); these two are our choice.

Every head maps h [B,T,d] to a parameter tensor; `distribution(params)` (action heads) and
`nll(params, target)` give the per-step negative log-likelihood [B,T], summed over vector dimensions.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from internal_rl.common.device import standard_normal
from internal_rl.common.errors import ConfigError
from internal_rl.models.transformer import init_linear

# Bounds on the Gaussian action head's log standard deviation: keep the likelihood finite.
LOG_STD_MIN, LOG_STD_MAX = -7.0, 2.0


class CategoricalActionHead(nn.Module):
    """h [B,T,d] -> logits [B,T,n_actions]."""

    def __init__(self, d_model: int, n_actions: int, init_scale: float):
        super().__init__()
        self.proj = init_linear(nn.Linear(d_model, n_actions), init_scale)

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(h)

    def distribution(self, params: Tensor) -> Distribution:
        return Categorical(logits=params)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One action per step: logits [...,A] -> int64 [...]."""
        probs = F.softmax(params, dim=-1).reshape(-1, params.shape[-1]).cpu()  # drawn on the CPU: common/device.py
        return torch.multinomial(probs, 1, generator=generator).view(params.shape[:-1]).to(params.device)

    def nll(self, params: Tensor, actions: Tensor) -> Tensor:
        """-log p(a_t) [B,T] for integer actions [B,T] (any value where masked out: it is clamped)."""
        logp = F.log_softmax(params, dim=-1)
        index = actions.long().clamp(0, params.shape[-1] - 1)
        return -logp.gather(-1, index[..., None])[..., 0]


class GaussianActionHead(nn.Module):
    """h [B,T,d] -> [mean, log_std] concatenated, [B,T,2*action_dim]: a diagonal Gaussian."""

    def __init__(self, d_model: int, action_dim: int, init_scale: float):
        super().__init__()
        self.action_dim = action_dim
        self.proj = init_linear(nn.Linear(d_model, 2 * action_dim), init_scale)

    def forward(self, h: Tensor) -> Tensor:
        mean, log_std = self.proj(h).chunk(2, dim=-1)
        return torch.cat([mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)], dim=-1)

    def distribution(self, params: Tensor) -> Distribution:
        mean, log_std = params.chunk(2, dim=-1)
        return Independent(Normal(mean, log_std.exp()), 1)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One action vector per step: [...,2*action_dim] -> [...,action_dim]."""
        mean, log_std = params.chunk(2, dim=-1)
        return mean + log_std.exp() * standard_normal(mean.shape, generator, mean)

    def nll(self, params: Tensor, actions: Tensor) -> Tensor:
        """-log p(a_t) [B,T] for action vectors [B,T,action_dim]."""
        return -self.distribution(params).log_prob(actions)


class _LinearObsHead(nn.Module):
    """h [B,T,d] -> one parameter per observation element, [B,T,obs_dim]; subclasses say what it means."""

    def __init__(self, d_model: int, obs_dim: int, init_scale: float):
        super().__init__()
        self.proj = init_linear(nn.Linear(d_model, obs_dim), init_scale)

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(h)


class BernoulliObsHead(_LinearObsHead):
    """Logits of independent Bernoulli observation elements."""

    def nll(self, params: Tensor, target: Tensor) -> Tensor:
        """-log p(o_{t+1}) [B,T], summed over elements, for binary targets [B,T,obs_dim]."""
        return F.binary_cross_entropy_with_logits(params, target, reduction="none").sum(-1)


class GaussianObsHead(_LinearObsHead):
    """The mean of a unit-variance Gaussian over the next observation."""

    def nll(self, params: Tensor, target: Tensor) -> Tensor:
        """-log N(o_{t+1}; mean, I) [B,T], summed over elements."""
        return (0.5 * (target - params) ** 2 + 0.5 * math.log(2 * math.pi)).sum(-1)


ACTION_HEADS: dict[str, type[nn.Module]] = {"categorical": CategoricalActionHead, "gaussian": GaussianActionHead}
OBS_HEADS: dict[str, type[nn.Module]] = {"bernoulli": BernoulliObsHead, "gaussian": GaussianObsHead}


def make_action_head(kind: str, d_model: int, action_dim: int, init_scale: float) -> nn.Module:
    """The action head called `kind` ("categorical": action_dim = number of actions; "gaussian": vector size)."""
    if kind not in ACTION_HEADS:
        raise ConfigError(f"unknown action head {kind!r}; valid: {sorted(ACTION_HEADS)}")
    return ACTION_HEADS[kind](d_model, action_dim, init_scale)


def make_obs_head(kind: str, d_model: int, obs_dim: int, init_scale: float) -> nn.Module:
    """The observation head called `kind` ("bernoulli" or "gaussian")."""
    if kind not in OBS_HEADS:
        raise ConfigError(f"unknown observation head {kind!r}; valid: {sorted(OBS_HEADS)}")
    return OBS_HEADS[kind](d_model, obs_dim, init_scale)
