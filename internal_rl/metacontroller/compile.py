"""CompILE (Kipf et al., 2019), adapted as the paper's baseline (Sec. 7): a segmentation VAE in place of the
metacontroller, acting on the frozen base model through the same controller decoder.

It reads the residual stream e_{1:T} [B,T,d] at the controlled hook and explains an episode as at most
M segments, each with one latent code:

    h_t            = sigmoid(f_b(e_t))                          boundary hazard (causal: e_t only)
    q(b_i = t)     = h_t * prod_{b_{i-1} < u < t} (1 - h_u)     where segment i+1 starts, after segment i's start
    b_i            ~ GumbelSoftmax(q(b_i), temperature)         relaxed in training, the mode in evaluation
    m_i(t)         = [started segment i by t] - [started segment i+1 by t]        (soft) segment masks
    z_i            ~ N(f_z(mean of e over segment i))           one code per segment
    z_t            = sum_i m_i(t) z_i,   U_t = f_hyp(z_t)       the controller at step t

Loss: the controlled base model's action NLL plus alpha * (KL(z_i || N(0, I)) + KL(q(b_i) || p(b_i))),
p a Poisson prior on segment lengths. Each episode's KL is charged at its first step (`kl_steps`), so the
metacontroller's trainer, analysis and checkpoints serve CompILE unchanged.

Choices where the paper is silent (it gives M = 4, the prior rate 10, the temperature, n_z = 8, n_h = 32):
- The encoder is the base model's own first half: CompILE reads the frozen residual stream at the hook,
  as the metacontroller does, so the two differ only in how they segment and encode. (The paper's CompILE
  reads raw inputs through an encoder of that architecture, initialised from pretraining.)
- The boundary distribution is parameterised by a per-step hazard instead of a softmax over positions.
  Both describe any distribution over positions, but the hazard at t depends on e_{1:t} only, which
  gives internal RL a causal termination rule: a code ends where h_t >= 0.5, as the metacontroller's
  ends where beta_t >= 0.5. In RL the number of segments is not capped at M.
- The prior rate 10 is the mean segment length of a zero-truncated Poisson prior (lengths >= 1). One alpha
  weights both KL terms (the paper sweeps each over the same grid).
- A boundary may fall on the slot one past the last step, which leaves the remaining segments empty.
"""

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from internal_rl.common.device import standard_normal
from internal_rl.common.errors import check
from internal_rl.models.controller import ControllerDecoder, ControllerParams



@dataclass(frozen=True)
class CompILEConfig:
    """Sizes of the CompILE baseline (paper Sec. 7; grid-world values). `hook` None: the base model's layer L/2."""

    d_model: int = 256
    hook: str | None = None
    n_z: int = 8
    hidden: int = 32  # n_h of the one-hidden-layer boundary and latent MLPs
    dec_hidden: int = 32
    rank: int | None = 16
    max_segments: int = 4  # M
    length_rate: float = 10.0  # the prior's mean segment length, in steps
    temperature: float = 1.0  # of the relaxed boundaries (paper: 0.5 or 1)
    alpha: float = 0.1  # weight of both KL terms
    hazard_bias_init: float = -2.0  # initial hazard sigmoid(-2) = 0.12: segments of about 8 steps

    # What the metacontroller's trainer and internal RL ask of every segmenter: CompILE always learns its switches.
    force_switch: ClassVar[bool] = False
    label_switches: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for name in ("d_model", "n_z", "hidden", "dec_hidden", "max_segments"):
            value = getattr(self, name)
            check(isinstance(value, int) and value > 0, f"CompILEConfig.{name}={value!r}; expected a positive int")
        check(self.max_segments >= 2, f"CompILEConfig.max_segments={self.max_segments}; expected >= 2")
        check(self.length_rate > 0, f"CompILEConfig.length_rate={self.length_rate}; expected > 0")
        check(self.temperature > 0, f"CompILEConfig.temperature={self.temperature}; expected > 0")
        check(self.alpha >= 0, f"CompILEConfig.alpha={self.alpha}; expected >= 0")
        check(self.rank is None or 0 < self.rank <= self.d_model,
              f"CompILEConfig.rank={self.rank}; expected None (full rank) or 1..{self.d_model}")


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def boundary_log_probs(log_start: Tensor, logits: Tensor, lengths: Tensor) -> Tensor:
    """log q(b = t) over positions 0..T for the boundary after a segment starting at log_start [B,T+1].

    logits [B,T] are the per-step hazard logits; position t < length means the next segment starts at
    step t (never at 0), position `length` that there is none (it also keeps the start's own mass there).
    """
    b, t = logits.shape
    cum = F.logsigmoid(-logits).cumsum(1)  # C[u] = sum_{v<=u} log(1 - h_v)
    reach = torch.logcumsumexp(log_start[:, :t] - cum, dim=1)  # logsumexp_{s<=u} (log start(s) - C[s])
    out = torch.full((b, t + 1), -math.inf, dtype=logits.dtype, device=logits.device)
    out[:, 1:t] = F.logsigmoid(logits[:, 1:]) + cum[:, :-1] + reach[:, :-1]
    steps = torch.arange(t + 1, device=logits.device)
    out = out.masked_fill(steps[None] >= lengths[:, None], -math.inf)
    last = (lengths - 1).clamp_min(0)[:, None]
    survive = cum.gather(1, last) + reach.gather(1, last)  # no boundary anywhere before the end
    end = torch.logaddexp(survive, log_start.gather(1, lengths[:, None]))
    return out.scatter(1, lengths[:, None], end)


def poisson_length_log_probs(start: Tensor, lengths: Tensor, rate: float) -> Tensor:
    """log p(b = t) over positions 0..T under a zero-truncated Poisson(rate) segment length after `start` [B,T+1]."""
    b, t1 = start.shape
    t = t1 - 1
    k = torch.arange(t1, dtype=start.dtype, device=start.device)
    log_pmf = k * math.log(rate) - rate - torch.lgamma(k + 1) - math.log1p(-math.exp(-rate))
    pmf = torch.where(k >= 1, log_pmf.exp(), torch.zeros_like(k))  # P(length = k), k = 0..T
    survival = (1.0 - pmf.cumsum(0)).clamp_min(0.0)  # P(length > k)
    gap = k[None, :t] - k[:t, None]  # [s, u] = u - s
    kernel = torch.where(gap >= 1, pmf[gap.clamp(0, t).long()], torch.zeros_like(gap))
    p = torch.zeros_like(start)
    p[:, :t] = start[:, :t] @ kernel
    steps = torch.arange(t1, device=start.device)
    p = p.masked_fill(steps[None] >= lengths[:, None], 0.0)
    left = (lengths[:, None] - 1 - steps[None, :t]).clamp(0, t).long()  # steps from s to the last one
    tail = (start[:, :t] * survival[left] * (steps[None, :t] < lengths[:, None])).sum(1)
    p = p.scatter(1, lengths[:, None], (tail + start.gather(1, lengths[:, None]).squeeze(1))[:, None])
    return p.clamp_min(1e-30).log()


class CompILE(nn.Module):
    """The CompILE baseline; see the module docstring. Same interface as the Metacontroller."""

    def __init__(self, config: CompILEConfig):
        super().__init__()
        c = self.config = config
        self.input_norm = nn.LayerNorm(c.d_model)
        self.switching_unit = _mlp(c.d_model, c.hidden, 1)  # the boundary hazard's logit
        nn.init.constant_(self.switching_unit[-1].bias, c.hazard_bias_init)
        self.latent = _mlp(c.d_model, c.hidden, 2 * c.n_z)
        self.controller_decoder = ControllerDecoder(c.n_z, c.d_model, c.rank, c.dec_hidden)

    def forward(
        self,
        e: Tensor,
        mask: Tensor | None = None,
        *,
        sample: bool = True,
        generator: torch.Generator | None = None,
        beta: Tensor | None = None,
    ) -> dict[str, Any]:
        """Segment and encode a padded batch e [B,T,d] (mask [B,T], True on real steps, padding at the end).

        `sample` draws relaxed boundaries and z_i = mu_i + sigma_i eps; False takes the boundaries' modes and
        z_i = mu_i. Returns z [B,T,n_z], beta [B,T] (where a segment starts), segments [B,M,T] (the masks),
        mu and logvar [B,M,n_z], kl_steps [B,T] (the episode's KL at its first step) and `controller`.
        """
        check(beta is None, "CompILE infers its own boundaries; it takes no given beta")
        b, t, d = e.shape
        check(d == self.config.d_model, f"CompILE got activations of width {d}; expected d_model={self.config.d_model}")
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=e.device)
        c = self.config
        x = self.input_norm(e)
        logits = self.switching_unit(x).squeeze(-1)  # [B,T]
        lengths = mask.sum(1)
        start = F.one_hot(torch.zeros(b, dtype=torch.long, device=e.device), t + 1).to(x.dtype)  # segment 1 at step 0
        started = torch.ones(b, t, dtype=x.dtype, device=e.device)
        masks, boundaries, kl_b = [], [], x.new_zeros(b)
        for _ in range(c.max_segments - 1):
            log_q = boundary_log_probs(start.clamp_min(1e-30).log(), logits, lengths)
            log_p = poisson_length_log_probs(start, lengths, c.length_rate)
            q = log_q.exp()
            kl_b = kl_b + torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q)).sum(1)
            if sample:
                uniform = torch.rand(log_q.shape, generator=generator, dtype=x.dtype).to(e.device)
                gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))
                boundary = torch.softmax((log_q + gumbel) / c.temperature, dim=1)
            else:
                boundary = F.one_hot(log_q.argmax(1), t + 1).to(x.dtype)
            next_started = boundary[:, :t].cumsum(1)
            masks.append((started - next_started).clamp_min(0.0))
            boundaries.append(boundary[:, :t])
            started, start = next_started, boundary
        masks.append(started)
        segments = torch.stack(masks, 1) * mask[:, None].to(x.dtype)  # [B,M,T]
        pooled = (segments[..., None] * x[:, None]).sum(2) / segments.sum(2)[..., None].clamp_min(1e-6)
        mu, logvar = self.latent(pooled).chunk(2, dim=-1)  # [B,M,n_z]
        z_seg = mu + torch.exp(0.5 * logvar) * standard_normal(mu.shape, generator, mu) if sample else mu
        z = torch.einsum("bmt,bmz->btz", segments, z_seg)
        beta = torch.stack(boundaries, 0).sum(0).clamp(0.0, 1.0)
        beta = torch.cat([beta.new_ones(b, 1), beta[:, 1:]], dim=1)  # the first step opens a segment
        kl = kl_b + (0.5 * (logvar.exp() + mu.square() - 1.0 - logvar)).sum((1, 2))
        kl_steps = torch.cat([kl[:, None], kl.new_zeros(b, t - 1)], dim=1)
        return {"z": z, "beta": beta, "segments": segments, "mu": mu, "logvar": logvar, "kl_steps": kl_steps,
                "controller": self.controller_decoder(z)}

    def init_switch_state(self, batch_size: int) -> Tensor:
        """The causal switching state before the first step, [B, 1]: a 'started' flag (0), so that the first
        step always opens a segment."""
        return self.input_norm.weight.new_zeros(batch_size, 1)

    def switch_step(self, e_t: Tensor, state: Tensor, z_prev: Tensor) -> tuple[Tensor, Tensor]:
        """One causal step for internal RL: e_t [B,d], state [B,1] -> (the hazard h_t as beta_t [B], next state);
        beta is 1 at the first step. z_prev is not used: CompILE's boundaries do not depend on the code."""
        hazard = torch.sigmoid(self.switching_unit(self.input_norm(e_t)).squeeze(-1))
        started = state[:, 0]
        return torch.where(started > 0, hazard, torch.ones_like(hazard)), torch.ones_like(state)

    def decode(self, z: Tensor) -> ControllerParams:
        """The controller U(z) for codes z [..., n_z]."""
        return self.controller_decoder(z)
