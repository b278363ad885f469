"""The policies RL trains: a causal Gaussian code policy (internal RL) and the base model itself (raw-action RL).

Both expose `log_prob(inputs, actions, mask) -> [B, M]`, the only thing the PPO update needs
(`rl/ppo.py`), and a stepping method used while collecting rollouts.

- `CodePolicy`, pi(z_t | e_{1:t}) (paper Sec. 6, D.3): a 1-layer Hawk SSM over the sequence of residual
  activations at the policy's decision times (the switch times; every step for the no-switch ablation),
  and a diagonal Gaussian head over the n_z-dimensional code. The head starts at mean 0 and log-std 0, so
  the untrained policy samples exactly from the metacontroller's prior N(0, I) (exploration starts where
  the metacontroller was trained; the paper notes that internal RL has the highest initial success).
- `RawActionPolicy`: a trainable copy of the pretrained base model; its action head is the policy over the
  4 grid actions, or the Gaussian over continuous forces/torques (pinpad), whose log-probability is the
  Gaussian head's (paper Sec. 7, baseline 1: raw-action RL finetuning from the pretrained model).
"""

import copy

import torch
from torch import Tensor, nn

from internal_rl.common.device import standard_normal
from internal_rl.common.errors import check
from internal_rl.models.base_model import BaseModel, DecodingState
from internal_rl.models.hawk import HawkBlock, HawkConfig, HawkState

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class CodePolicy(nn.Module):
    """pi(z | e_{1:t}): LayerNorm -> Linear(d_model, width) -> Hawk block -> LayerNorm -> Gaussian head."""

    def __init__(self, d_model: int, n_z: int, width: int = 256, n_heads: int = 8):
        super().__init__()
        check(width > 0 and width % n_heads == 0, f"CodePolicy width={width}; expected a positive multiple of n_heads={n_heads}")
        self.d_model, self.n_z, self.width = d_model, n_z, width
        # The residual stream's scale grows with depth: normalise before reading it.
        self.input_norm = nn.LayerNorm(d_model)
        self.in_proj = nn.Linear(d_model, width)
        self.core = HawkBlock(HawkConfig(d_model=width, n_heads=n_heads, mlp_hidden=2 * width))
        self.out_norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 2 * n_z)  # [mean, log_std]
        # Start at the prior N(0, I): zero bias, and weights small enough that the state barely moves it.
        nn.init.normal_(self.head.weight, std=1e-3 / width**0.5)
        nn.init.zeros_(self.head.bias)

    def initial_state(self, batch_size: int) -> HawkState:
        """The recurrent state before an episode's first decision."""
        return self.core.init_state(batch_size)

    def _gaussian(self, features: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.head(self.out_norm(features)).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def step(self, e: Tensor, state: HawkState) -> tuple[Tensor, Tensor, HawkState]:
        """One decision: e [K, d_model] and the K episodes' states -> (mean, log_std [K, n_z], new state)."""
        features, state = self.core.step(self.in_proj(self.input_norm(e)), state)
        mean, log_std = self._gaussian(features)
        return mean, log_std, state

    def sequence(self, e: Tensor) -> tuple[Tensor, Tensor]:
        """All decisions of a batch of episodes at once: e [B, M, d_model] -> mean, log_std [B, M, n_z]."""
        features, _ = self.core(self.in_proj(self.input_norm(e)))
        return self._gaussian(features)

    def log_prob(self, inputs: Tensor, actions: Tensor, mask: Tensor) -> Tensor:
        """log pi(z_m | e_{1:m}) [B, M] for codes `actions` [B, M, n_z]; 0 where `mask` is False.

        Padding sits after each episode's last decision, and the Hawk block is causal, so it cannot
        change the log-probabilities of real decisions.
        """
        mean, log_std = self.sequence(inputs)
        return gaussian_log_prob(actions, mean, log_std) * mask


def gaussian_log_prob(x: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log N(x; mean, diag exp(log_std)^2), summed over the last dim."""
    var_term = ((x - mean) * torch.exp(-log_std)).square()
    return -0.5 * (var_term + 2 * log_std + torch.log(torch.tensor(2 * torch.pi))).sum(-1)


def sample_gaussian(mean: Tensor, log_std: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """z = mean + std * eps with eps ~ N(0, I) from an explicit generator (seeded rollouts)."""
    return mean + log_std.exp() * standard_normal(mean.shape, generator, mean)


def select_state(state: HawkState, index: Tensor) -> HawkState:
    """The recurrent states of the episodes `index`."""
    return HawkState(*(part[index] for part in state))


def update_state(state: HawkState, index: Tensor, new: HawkState) -> HawkState:
    """`state` with the episodes `index` replaced by `new` (out of place)."""
    return HawkState(*(part.index_copy(0, index, part_new) for part, part_new in zip(state, new)))


class RawActionPolicy(nn.Module):
    """A trainable copy of the pretrained base model, acting in raw action space."""

    def __init__(self, base_model: BaseModel):
        super().__init__()
        self.model = copy.deepcopy(base_model)
        self.model.requires_grad_(True)
        self.model.train()  # the base model has no dropout: train and eval modes compute the same function

    def init_state(self, batch_size: int, max_len: int) -> DecodingState:
        """A fresh KV cache for acting in `batch_size` episodes of up to `max_len` steps."""
        return self.model.init_state(batch_size, max_len)

    @torch.no_grad()
    def act(self, obs: Tensor, state: DecodingState, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Sample a_t ~ p(a | o_{1:t}) with the KV cache: obs [N, obs_dim] -> (actions [N], log-probs [N])."""
        params = self.model.step(obs, state).action_params[:, 0]
        actions = self.model.sample_actions(params, generator)
        return actions, self.model.action_distribution(params).log_prob(actions)

    def log_prob(self, inputs: Tensor, actions: Tensor, mask: Tensor) -> Tensor:
        """log p(a_t | o_{1:t}) [B, T] for observations `inputs` [B, T, obs_dim]; 0 where `mask` is False."""
        params = self.model(inputs).action_params
        return -self.model.action_nll(params, actions) * mask

