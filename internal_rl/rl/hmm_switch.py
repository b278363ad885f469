"""A switch found without labels: a sticky Gaussian HMM over the residual stream's principal components.

A diagnostic stand-in for the metacontroller's switching unit. On some base models the learned switching
collapses (one segment per episode) while the residual at the controlled layer is plainly organised by the
task's phases. This asks whether those phases, found label-free, can end codes in closed loop: a K-state
HMM with diagonal Gaussian emissions is fitted (Baum-Welch, hmmlearn) to the standardised residual at the
controlled hook, projected on its first principal components; in internal RL the state is filtered online
(the forward recursion, causal) and the switch fires wherever the most probable state changes.

It reads the residual *before* the controller is added (what the controlled hook hands the switching unit),
i.e. the frozen model's own reading of the history. It never sees a subgoal label.
"""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hmmlearn.hmm import GaussianHMM
from sklearn.decomposition import PCA
from torch import Tensor, nn

from internal_rl.common.checkpoint import load_checkpoint, save_checkpoint
from internal_rl.common.errors import CheckpointError, check

CONFIG_KEY = "hmm_switch"


@dataclass(frozen=True)
class HMMSwitchConfig:
    d_model: int
    n_states: int
    n_components: int
    hook: str


class HMMSwitch(nn.Module):
    """Filters a fitted HMM's state from e_t [B, d_model]; beta = 1 where the most probable state changes."""

    def __init__(self, config: HMMSwitchConfig):
        super().__init__()
        self.config = config
        d, k, p = config.d_model, config.n_states, config.n_components
        self.register_buffer("centre", torch.zeros(d))  # subtracted before scaling: residual mean
        self.register_buffer("scale", torch.ones(d))  # residual std
        self.register_buffer("pca_mean", torch.zeros(d))
        self.register_buffer("components", torch.zeros(p, d))
        self.register_buffer("log_start", torch.full((k,), -float(np.log(k))))
        self.register_buffer("log_trans", torch.full((k, k), -float(np.log(k))))
        self.register_buffer("means", torch.zeros(k, p))
        self.register_buffer("variances", torch.ones(k, p))
        self.eval()
        self.requires_grad_(False)

    def project(self, e: Tensor) -> Tensor:
        """[.., d_model] residual -> [.., n_components] the HMM's observation."""
        return ((e - self.centre) / self.scale - self.pca_mean) @ self.components.T

    def log_emission(self, x: Tensor) -> Tensor:
        """[.., n_components] -> [.., n_states] log N(x; mean_k, diag var_k)."""
        diff = x[..., None, :] - self.means
        return -0.5 * ((diff**2 / self.variances) + torch.log(2 * torch.pi * self.variances)).sum(-1)

    def init_switch_state(self, batch_size: int) -> Tensor:
        """[B, K + 2]: the filtered log posterior over states, the previous most probable state, a 'started' flag."""
        return self.centre.new_zeros(batch_size, self.config.n_states + 2)

    def switch_step(self, e_t: Tensor, state: Tensor, z_prev: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One causal step: (beta_t [B] in {0, 1}, next state). beta is 1 at the first step, as the
        metacontroller's; `z_prev` is ignored (the HMM does not read the codes)."""
        k = self.config.n_states
        log_alpha, prev, started = state[:, :k], state[:, k], state[:, k + 1] > 0
        emission = self.log_emission(self.project(e_t))
        predicted = torch.logsumexp(log_alpha[:, :, None] + self.log_trans, dim=1)
        log_alpha = torch.where(started[:, None], predicted, self.log_start) + emission
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=1, keepdim=True)
        current = log_alpha.argmax(1).to(state.dtype)
        beta = torch.where(started, (current != prev).to(state.dtype), torch.ones_like(current))
        return beta, torch.cat([log_alpha, current[:, None], torch.ones_like(current)[:, None]], dim=1)

    @torch.no_grad()
    def filter(self, residual: Tensor) -> tuple[Tensor, Tensor]:
        """Offline run of `switch_step` over one batch of sequences [B, T, d_model]: (beta [B, T], the
        most probable state [B, T])."""
        state = self.init_switch_state(residual.shape[0])
        betas, states = [], []
        for t in range(residual.shape[1]):
            beta, state = self.switch_step(residual[:, t], state)
            betas.append(beta)
            states.append(state[:, self.config.n_states].long())
        return torch.stack(betas, 1), torch.stack(states, 1)


def fit_hmm_switch(residual: np.ndarray, lengths: np.ndarray, hook: str, n_states: int = 8, n_components: int = 32,
                   stay: float = 0.99, iterations: int = 30, seed: int = 0) -> HMMSwitch:
    """Fit the HMM to per-step residuals [N, d_model] of episodes of `lengths` (in order): standardise,
    project on `n_components` principal components, then Baum-Welch on the means and variances with the
    transitions held at `stay` on the diagonal (a prior for long segments) and a uniform start."""
    check(residual.ndim == 2 and len(residual) == int(np.sum(lengths)),
          f"residual {residual.shape} does not hold {int(np.sum(lengths))} steps")
    check(1 < n_states and 0 < stay < 1, f"need n_states > 1 and 0 < stay < 1 (got {n_states}, {stay})")
    centre, scale = residual.mean(0), residual.std(0) + 1e-6
    pca = PCA(n_components, random_state=seed).fit((residual - centre) / scale)
    x = pca.transform((residual - centre) / scale)
    trans = np.full((n_states, n_states), (1 - stay) / (n_states - 1))
    np.fill_diagonal(trans, stay)
    hmm = GaussianHMM(n_states, covariance_type="diag", n_iter=iterations, random_state=seed,
                      init_params="mc", params="mc")
    hmm.startprob_, hmm.transmat_ = np.full(n_states, 1 / n_states), trans
    hmm.fit(x, lengths)
    switch = HMMSwitch(HMMSwitchConfig(d_model=residual.shape[1], n_states=n_states, n_components=n_components, hook=hook))
    values = {"centre": centre, "scale": scale, "pca_mean": pca.mean_, "components": pca.components_,
              "log_start": np.log(hmm.startprob_), "log_trans": np.log(hmm.transmat_), "means": hmm.means_,
              "variances": np.diagonal(hmm.covars_, axis1=1, axis2=2)}
    for name, value in values.items():
        getattr(switch, name).copy_(torch.tensor(np.array(value), dtype=torch.float32))
    return switch


def save_hmm_switch(path: Path, switch: HMMSwitch, extra: dict[str, Any] | None = None) -> None:
    """Write the switch as a checkpoint folder (its config, and `extra` provenance, in config.json)."""
    save_checkpoint(Path(path), switch, {CONFIG_KEY: asdict(switch.config), **(extra or {})})


def load_hmm_switch(path: Path) -> HMMSwitch:
    """A switch written by `save_hmm_switch`, frozen."""
    weights, config, _ = load_checkpoint(Path(path))
    try:
        switch = HMMSwitch(HMMSwitchConfig(**config[CONFIG_KEY]))
        switch.load_state_dict(weights)
    except (KeyError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{path} is not an HMM switch checkpoint: {str(err).splitlines()[0]}") from None
    return switch
