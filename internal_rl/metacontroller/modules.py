"""The metacontroller (paper Sec. 5, App. C.4 / D.2): a stochastic recurrent hypernetwork over the residual stream.

It reads the residual-stream activations e_{1:T} [B,T,d] at the controlled hook and produces, per step,
a linear controller U_t that is applied as e_t + U_t e_t:

    s            = f_emb(e_{1:T})                        internal sequence embedder (non-causal), s in R^{n_s}
    h_t          = GRU(e_t, h_{t-1}),  h_0 = 0           history (causal)
    mu_t, logvar = f_enc(e_t, h_{t-1}, s)                controller encoder, z~_t ~ N(mu_t, diag exp(logvar_t))
    beta_t       = f_switch(e_t, h_{t-1}, z_{t-1})       switching unit (causal), one scalar in [0, 1] per step
    z_t          = beta_t z~_t + (1 - beta_t) z_{t-1},  z_0 = 0     temporal integration
    U_t          = f_hyp(z_t)                            controller decoder (models/controller.py)

Choices where the paper is silent (section 10 of the spec), all configurable:
- Embedder: `embedder_layers` Hawk blocks (width `embedder_width`) run forward over the whole sequence after a
  linear projection of e; s is a linear map of [masked mean over valid steps ; output at the last valid
  step]. A single vector per sequence is the paper's description ("a first pass through the entire
  sequence"); the last-step output carries order information that the mean alone would lose, and the mean
  keeps early steps from fading out of the recurrence.
- Every reader of e (embedder, GRU, encoder, switching unit) sees a LayerNorm of e, because the residual
  stream's scale grows with depth and differs between base models; the controller itself acts on raw e.
- The switching unit is an MLP with one hidden layer of `switch_hidden` units (ReLU), output sigmoid.
- z_0 = 0 and beta_1 = 1: the first step always opens a segment (spec gap 10). Internal RL queries its
  policy at the episode start anyway (Algorithm 3), so training and RL agree on it.
- `force_switch` is the "no temporal abstraction" ablation: beta == 1 in training and in RL.
- `label_switches` is a diagnostic, not a method: beta is 1 where the true subgoal changes and 0 elsewhere,
  so training measures the objective (action NLL + alpha KL) that subgoal-aligned switching reaches. A
  learned switching unit that stops above it is in a local optimum. It needs labels, so it cannot act in RL.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from internal_rl.common.device import standard_normal
from internal_rl.common.errors import CheckpointError, check
from internal_rl.metacontroller.compile import CompILE, CompILEConfig
from internal_rl.metacontroller.segmenter import Segmenter
from internal_rl.models.base_model import CHECKPOINT_SUBDIR
from internal_rl.models.controller import ControllerDecoder, ControllerParams
from internal_rl.models.hawk import HawkBlock, HawkConfig


EMBEDDER_MODES = ("sequence", "reverse")


@dataclass(frozen=True)
class MetacontrollerConfig:
    """Sizes and switches of the metacontroller (defaults: paper Table A9, grid world).

    `hook` names the controlled residual-stream point; None means the base model's `controlled_hook`
    (layer L/2), resolved when training starts and saved resolved. `rank` None gives a full-rank U (ant).
    `alpha` is the KL strength in the loss (swept {0, 0.05, 0.1, 0.17, 0.3, 0.5, 1} in the paper).
    """

    d_model: int = 256
    hook: str | None = None
    n_z: int = 8
    enc_hidden: int = 64
    dec_hidden: int = 32
    n_h: int = 32
    n_s: int = 32
    rank: int | None = 16
    switch_hidden: int = 32
    # Initial beta = sigmoid(switch_bias_init) = 0.95: training starts from per-step codes and the switching
    # unit learns where to hold them (the paper gives no initialisation).
    switch_bias_init: float = 3.0
    logvar_init: float = 0.0  # initial log-variance of the proposals z~ (0: the prior's)
    embedder_layers: int = 1
    embedder_width: int = 64
    embedder: str = "sequence"  # or "reverse" (per-step summary of the future); see InternalSequenceEmbedder
    alpha: float = 0.1
    force_switch: bool = False
    label_switches: bool = False

    def __post_init__(self) -> None:
        for name in ("d_model", "n_z", "enc_hidden", "dec_hidden", "n_h", "n_s", "switch_hidden", "embedder_width"):
            value = getattr(self, name)
            check(isinstance(value, int) and value > 0, f"MetacontrollerConfig.{name}={value!r}; expected a positive int")
        check(self.embedder_layers >= 1, f"MetacontrollerConfig.embedder_layers={self.embedder_layers}; expected >= 1")
        check(
            self.rank is None or 0 < self.rank <= self.d_model,
            f"MetacontrollerConfig.rank={self.rank}; expected None (full rank) or 1..{self.d_model}",
        )
        check(self.embedder in EMBEDDER_MODES, f"unknown embedder {self.embedder!r}; valid: {', '.join(EMBEDDER_MODES)}")
        check(self.alpha >= 0, f"MetacontrollerConfig.alpha={self.alpha}; expected >= 0")
        check(not (self.force_switch and self.label_switches), "MetacontrollerConfig: force_switch and label_switches exclude each other")


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def reverse_valid(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each row's first lengths[i] steps in time, leaving its padding in place: x [B,T,...]."""
    t = torch.arange(x.shape[1], device=x.device)[None]  # [1,T]
    index = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # [B,T]; an involution
    return torch.gather(x, 1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))


class InternalSequenceEmbedder(nn.Module):
    """f_emb: e [B,T,d] (normalised), mask [B,T] -> s, the only part that sees the future.

    mode "sequence" (default, the paper's description): one vector per sequence, s [B,n_s], from a forward
    Hawk pass over the whole sequence (masked mean and last valid output). mode "reverse": one vector per
    step, s [B,T,n_s], from a Hawk pass run backwards in time, so s_t summarises e_{t..T} (the reading
    some re-implementations use; it hands the encoder "what comes next" directly). Beware: e_{t+1} encodes
    o_{t+1}, which reveals a_t, so "reverse" lets per-step codes carry the next action itself (measured on
    the quick grid model with beta == 1 and alpha = 0: action NLL 0.02, below the expert's own floor of
    0.17); only a large alpha makes that leak more expensive than subgoal codes. The single vector of
    "sequence" is a bottleneck against it.
    """

    def __init__(self, d_model: int, width: int, n_layers: int, n_s: int, mode: str = "sequence"):
        super().__init__()
        self.mode = mode
        self.in_proj = nn.Linear(d_model, width)
        hawk = HawkConfig(d_model=width, n_heads=1, mlp_hidden=2 * width)
        self.blocks = nn.ModuleList(HawkBlock(hawk) for _ in range(n_layers))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(2 * width if mode == "sequence" else width, n_s)

    def forward(self, e: Tensor, mask: Tensor) -> Tensor:
        lengths = mask.sum(1)
        x = self.in_proj(e)
        if self.mode == "reverse":
            x = reverse_valid(x, lengths)
        for block in self.blocks:
            x, _ = block(x)  # causal: padding after a row's end cannot reach its valid steps
        x = self.norm(x)
        if self.mode == "reverse":
            return self.out(reverse_valid(x, lengths))
        m = mask.to(x.dtype)[..., None]  # [B,T,1]
        mean = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
        last = lengths.clamp_min(1) - 1  # index of the last valid step, [B]
        final = x[torch.arange(x.shape[0], device=x.device), last]
        return self.out(torch.cat([mean, final], dim=-1))


class ControllerEncoder(nn.Module):
    """f_enc: (e_t, h_{t-1}, s) -> (mu_t, logvar_t) of the proposal z~_t, diagonal Gaussian over n_z."""

    def __init__(self, d_model: int, n_h: int, n_s: int, hidden: int, n_z: int, logvar_init: float = 0.0):
        super().__init__()
        self.mlp = _mlp(d_model + n_h + n_s, hidden, 2 * n_z)
        nn.init.constant_(self.mlp[-1].bias[n_z:], logvar_init)

    def forward(self, e: Tensor, h_prev: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """e [B,T,d], h_prev [B,T,n_h], s [B,n_s] -> mu, logvar [B,T,n_z]."""
        if s.dim() == 2:  # one vector per sequence: the same at every step
            s = s[:, None].expand(-1, e.shape[1], -1)
        mu, logvar = self.mlp(torch.cat([e, h_prev, s], dim=-1)).chunk(2, dim=-1)
        return mu, logvar


class SwitchingUnit(nn.Module):
    """f_switch: beta_t = sigmoid(MLP(e_t, h_{t-1}, z_{t-1})), one scalar per step (broadcast over z)."""

    def __init__(self, d_model: int, n_h: int, n_z: int, hidden: int, bias_init: float = 0.0):
        super().__init__()
        self.n_context = d_model + n_h
        self.hidden = nn.Linear(d_model + n_h + n_z, hidden)
        self.out = nn.Linear(hidden, 1)
        nn.init.constant_(self.out.bias, bias_init)

    def context(self, e: Tensor, h_prev: Tensor) -> Tensor:
        """The part of the hidden pre-activation that does not depend on z: computable for all t at once."""
        w = self.hidden.weight[:, : self.n_context]
        return F.linear(torch.cat([e, h_prev], dim=-1), w, self.hidden.bias)

    def from_context(self, context: Tensor, z_prev: Tensor) -> Tensor:
        """beta [...] from `context(e_t, h_{t-1})` [..., hidden] and z_{t-1} [..., n_z]."""
        pre = context + F.linear(z_prev, self.hidden.weight[:, self.n_context :])
        return torch.sigmoid(self.out(F.relu(pre))).squeeze(-1)

    def forward(self, e: Tensor, h_prev: Tensor, z_prev: Tensor) -> Tensor:
        return self.from_context(self.context(e, h_prev), z_prev)


def label_switch_gate(labels: Tensor, mask: Tensor) -> Tensor:
    """beta [B,T] from ground-truth labels [B,T]: 1 at the first step and where the label changes, else 0
    (padding: 0). The `label_switches` diagnostic's gate."""
    change = torch.ones_like(mask)
    change[:, 1:] = labels[:, 1:] != labels[:, :-1]
    return (change & mask).to(torch.get_default_dtype())


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) summed over the last dim: [..., n_z] -> [...]."""
    return 0.5 * (logvar.exp() + mu.square() - 1.0 - logvar).sum(-1)


class Metacontroller(nn.Module):
    """The full metacontroller; see the module docstring for the equations."""

    def __init__(self, config: MetacontrollerConfig):
        super().__init__()
        c = self.config = config
        self.input_norm = nn.LayerNorm(c.d_model)
        self.sequence_embedder = InternalSequenceEmbedder(c.d_model, c.embedder_width, c.embedder_layers, c.n_s, c.embedder)
        self.history = nn.GRU(c.d_model, c.n_h, batch_first=True)
        self.encoder = ControllerEncoder(c.d_model, c.n_h, c.n_s, c.enc_hidden, c.n_z, c.logvar_init)
        self.switching_unit = SwitchingUnit(c.d_model, c.n_h, c.n_z, c.switch_hidden, c.switch_bias_init)
        self.controller_decoder = ControllerDecoder(c.n_z, c.d_model, c.rank, c.dec_hidden)

    def forward(
        self,
        e: Tensor,
        mask: Tensor | None = None,
        *,
        sample: bool = True,
        generator: torch.Generator | None = None,
        beta: Tensor | None = None,
        hard_switch: bool = False,
    ) -> dict[str, Any]:
        """Run over a (padded) batch of residual-stream sequences.

        e [B,T,d]; mask [B,T] bool, True on real steps (None: all real; padding must be at the end).
        `sample` draws z~_t = mu_t + sigma_t eps (reparameterised); False uses z~_t = mu_t (analysis).
        `beta` [B,T] replaces the switching unit's gate (the `label_switches` diagnostic); it must be 1 at t = 0.
        `hard_switch` thresholds the switching unit's gate at 0.5 inside the recurrence, as internal RL does
        (a code is then held exactly until the next switch); training uses the soft gate.
        Returns z, z_tilde, mu, logvar [B,T,n_z], beta [B,T], kl_steps [B,T] (KL to the prior), s ([B,n_s], or
        [B,T,n_s] per step) and `controller`: ControllerParams with batch shape [B,T]. Values at padded steps
        are meaningless and must be masked by the caller.
        """
        b, t, d = e.shape
        check(d == self.config.d_model, f"Metacontroller got activations of width {d}; expected d_model={self.config.d_model}")
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=e.device)
        x = self.input_norm(e)
        s = self.sequence_embedder(x, mask)
        h, _ = self.history(x)  # h_1..h_T
        h_prev = torch.cat([h.new_zeros(b, 1, h.shape[-1]), h[:, :-1]], dim=1)
        mu, logvar = self.encoder(x, h_prev, s)
        if sample:
            eps = standard_normal(mu.shape, generator, mu)
            z_tilde = mu + torch.exp(0.5 * logvar) * eps
        else:
            z_tilde = mu
        if self.config.force_switch:
            beta = torch.ones(b, t, dtype=e.dtype, device=e.device)
            z = z_tilde
        elif beta is not None:
            check(beta.shape == (b, t) and bool((beta[:, 0] == 1).all()), "a given beta must be [B,T] and 1 at t = 0")
            beta = beta.to(z_tilde.dtype)
            z = self._hold(beta, z_tilde)
        else:
            beta, z = self._integrate(self.switching_unit.context(x, h_prev), z_tilde, hard_switch)
        return {
            "z": z,
            "z_tilde": z_tilde,
            "mu": mu,
            "logvar": logvar,
            "beta": beta,
            "s": s,
            "kl_steps": kl_to_standard_normal(mu, logvar),  # charged at every step, not weighted by beta
            "controller": self.controller_decoder(z),
        }

    def _integrate(self, context: Tensor, z_tilde: Tensor, hard: bool = False) -> tuple[Tensor, Tensor]:
        """The causal loop z_t = beta_t z~_t + (1 - beta_t) z_{t-1}, beta_t from (context_t, z_{t-1}); with
        `hard`, beta_t is H(beta_t - 0.5) (the internal-RL gate, BETA_THRESHOLD there)."""
        z_prev = z_tilde.new_zeros(z_tilde.shape[0], z_tilde.shape[-1])
        betas, zs = [], []
        for t in range(z_tilde.shape[1]):
            if t == 0:
                beta_t = z_tilde.new_ones(z_tilde.shape[0])  # the first step always opens a segment
            else:
                beta_t = self.switching_unit.from_context(context[:, t], z_prev)  # [B]
                if hard:
                    beta_t = (beta_t >= 0.5).to(beta_t.dtype)
            z_prev = beta_t[:, None] * z_tilde[:, t] + (1.0 - beta_t[:, None]) * z_prev
            betas.append(beta_t)
            zs.append(z_prev)
        return torch.stack(betas, dim=1), torch.stack(zs, dim=1)

    @staticmethod
    def _hold(beta: Tensor, z_tilde: Tensor) -> Tensor:
        """z_t = beta_t z~_t + (1 - beta_t) z_{t-1} for a given gate beta [B,T]."""
        z_prev, zs = z_tilde[:, 0], []
        for t in range(z_tilde.shape[1]):
            z_prev = beta[:, t, None] * z_tilde[:, t] + (1.0 - beta[:, t, None]) * z_prev
            zs.append(z_prev)
        return torch.stack(zs, dim=1)

    def init_switch_state(self, batch_size: int) -> Tensor:
        """The causal switching state before the first step, [B, n_h + 1]: the history GRU's h_0 = 0 and a
        'started' flag (0), so that `switch_step` forces beta = 1 at the first step exactly as `forward` does."""
        return self.input_norm.weight.new_zeros(batch_size, self.config.n_h + 1)

    def switch_step(self, e_t: Tensor, state: Tensor, z_prev: Tensor) -> tuple[Tensor, Tensor]:
        """One causal step for internal RL: e_t [B,d], state [B,n_h+1] (from `init_switch_state` or the previous
        step), z_{t-1} [B,n_z] -> (beta_t [B], next state).

        Uses only the history GRU and the switching unit, exactly as `forward` does: beta is 1 at the first
        step (and always under `force_switch`).
        """
        check(not self.config.label_switches, "this metacontroller switched on true subgoal labels (a diagnostic); "
              "internal RL needs one with a learned switching unit")
        x = self.input_norm(e_t)
        h_prev, started = state[:, :-1], state[:, -1]
        if self.config.force_switch:
            beta = x.new_ones(x.shape[0])
        else:
            beta = torch.where(started > 0, self.switching_unit(x, h_prev, z_prev), torch.ones_like(started))
        _, h = self.history(x[:, None], h_prev[None].contiguous())
        return beta, torch.cat([h[0], torch.ones_like(started)[:, None]], dim=-1)

    def decode(self, z: Tensor) -> ControllerParams:
        """The controller U(z) for codes z [..., n_z] (the frozen decoder internal RL acts through)."""
        return self.controller_decoder(z)


def find_metacontroller_checkpoint(path: Path) -> Path:
    """The checkpoint folder for `path`: the checkpoint itself, or a stage folder holding it in ./checkpoint
    (a run folder's is `RunFolder(run).metacontroller_checkpoint(stage)`)."""
    path = Path(path)
    for candidate in (path, path / CHECKPOINT_SUBDIR):
        if (candidate / "config.json").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    raise CheckpointError(f"no metacontroller checkpoint in {path} (looked for it and ./{CHECKPOINT_SUBDIR}); "
                          f"pass a checkpoint or stage folder (a run's default is RUN/metacontroller)")


def segmenter_key(config: dict[str, Any], path: Path | str = "this checkpoint") -> str:
    """The key of a checkpoint config that holds the model's config: "metacontroller", or "compile" for CompILE."""
    for key in ("metacontroller", "compile"):
        if key in config:
            return key
    raise CheckpointError(f"{path} is not a metacontroller checkpoint: its config.json has no 'metacontroller' "
                          f"or 'compile' key")


def load_metacontroller(path: Path) -> Segmenter:
    """Load a trained metacontroller (or CompILE baseline), frozen (eval mode, no gradients), from a checkpoint
    folder (or the stage folder holding it)."""
    from internal_rl.common.checkpoint import load_checkpoint
    from internal_rl.common.config import config_from_dict

    path = find_metacontroller_checkpoint(path)
    weights, config, _ = load_checkpoint(path)
    key = segmenter_key(config, path)
    model_class, config_class = (CompILE, CompILEConfig) if key == "compile" else (Metacontroller, MetacontrollerConfig)
    model = model_class(config_from_dict(config_class, config[key]))
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"weights in {path} do not match its config: {str(err).splitlines()[0]}") from None
    model.eval()
    model.requires_grad_(False)
    return model
