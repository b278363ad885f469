"""Codes and a switch found without labels, for internal RL (a named deviation from the paper).

The paper's metacontroller finds both at once. Where its switching collapses or its Gaussian codes name
places (docs/results.md), two label-free steps can stand in for it on a base model whose residual stream
is organised by subgoal:

1. the switch: a sticky Gaussian HMM over the residual at the controlled layer (`rl/hmm_switch`), which
   fires wherever its filtered state changes;
2. the codes: the HMM's segments of the noiseless expert's data D*, clustered by k-means of each
   segment's mean residual followed by the next segment's (the lookahead: a segment can end before its
   subgoal shows in the residual), with one low-rank controller U_k per cluster fitted by next-action
   likelihood, base model frozen (the supervised controllers' fit with a cluster in place of the subgoal).

Internal RL then acts through `SubgoalCodes(controllers, hook, switch)`: a code picks a controller and the
HMM ends it. No subgoal label is read. Measured in docs/results.md ("A switch found without labels").
"""

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits
from torch import Tensor

from internal_rl.analysis.subgoal_controllers import controller_intervention, subgoal_codes
from internal_rl.common.errors import check
from internal_rl.common.seeding import derive_seed
from internal_rl.data.dataset import TrajectoryDataset
from internal_rl.models.controller import ControllerDecoder
from internal_rl.rl.hmm_switch import HMMSwitch, fit_hmm_switch

# Segments per episode that get their own code; later ones share the last (an HMM can fire often).
MAX_SEGMENTS = 16


@dataclass(frozen=True)
class LabelFreeConfig:
    """The settings measured in docs/results.md (offsets model, 0-1-2-3-4-5)."""

    n_states: int = 8  # HMM states
    n_components: int = 32  # principal components of the standardised residual the HMM reads
    stay: float = 0.99  # the HMM's fixed self-transition probability
    switch_episodes: int = 1500  # D* training episodes the HMM is fitted on
    n_codes: int = 8  # k-means clusters, one controller each
    code_episodes: int = 4000  # D* training episodes whose segments are clustered and fitted on
    steps: int = 300  # controller fitting steps
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.03
    rank: int = 16  # of each U_k (the paper's grid rank)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_states", "n_components", "switch_episodes", "n_codes", "code_episodes", "steps", "batch_size"):
            check(getattr(self, name) >= 1, f"LabelFreeConfig.{name}={getattr(self, name)}; expected >= 1")
        check(self.n_states > 1 and 0 < self.stay < 1, "LabelFreeConfig: need n_states > 1 and 0 < stay < 1")


@torch.no_grad()
def batched_residuals(model: torch.nn.Module, dataset: TrajectoryDataset, hook: str,
                      batch: int = 256) -> Iterator[tuple[np.ndarray, dict[str, Tensor], Tensor]]:
    """`dataset`'s episodes in batches, in order: (their local indices, `dataset.batch` of them, the padded
    residual at `hook` [B,T,d])."""
    for start in range(0, dataset.num_episodes, batch):
        local = np.arange(start, min(start + batch, dataset.num_episodes))
        data = dataset.batch(local)
        yield local, data, model(data["observations"], cache_hooks=[hook]).cache[hook].float()


def episode_residuals(model: torch.nn.Module, dataset: TrajectoryDataset, hook: str) -> list[np.ndarray]:
    """The residual at `hook` of every episode of `dataset`, [T_i, d] each, in order."""
    return [residual[b, :length].numpy() for _, data, residual in batched_residuals(model, dataset, hook)
            for b, length in enumerate(data["lengths"].tolist())]


def fit_switch(model: torch.nn.Module, dataset: TrajectoryDataset, hook: str, config: LabelFreeConfig) -> HMMSwitch:
    """The HMM switch fitted on the residual of `dataset`'s first `config.switch_episodes` episodes."""
    residuals = episode_residuals(model, dataset.subset(np.arange(min(config.switch_episodes, dataset.num_episodes))), hook)
    return fit_hmm_switch(np.concatenate(residuals), np.array([len(r) for r in residuals]), hook, config.n_states,
                          config.n_components, config.stay, seed=config.seed)


@torch.no_grad()
def hmm_segments(model: torch.nn.Module, dataset: TrajectoryDataset, hook: str, switch: HMMSwitch) -> np.ndarray:
    """Int [N_steps] over `dataset`'s stored flat arrays: for its episodes, a new segment wherever the HMM's
    filtered state changes, up to MAX_SEGMENTS (-1 on steps of other episodes)."""
    segments = np.full(len(dataset.arrays["subgoals"]), -1, dtype=np.int64)
    starts, lengths = dataset.arrays["episode_starts"], dataset.arrays["episode_lengths"]
    for local, _, residual in batched_residuals(model, dataset, hook):
        beta, _ = switch.filter(residual)
        index = ((beta > 0.5).long().cumsum(1) - 1).clamp(max=MAX_SEGMENTS - 1)
        for b, i in enumerate(dataset.episode_ids[local]):
            segments[starts[i]:starts[i] + lengths[i]] = index[b, :lengths[i]].numpy()
    return segments


def batch_segments(dataset: TrajectoryDataset, local: np.ndarray, segments: np.ndarray) -> Tensor:
    """[B,T] segment index of episodes `local` of `dataset` (padded as `dataset.batch(local)` pads them), -1 on padding."""
    ids = dataset.episode_ids[local]
    starts, lengths = dataset.arrays["episode_starts"][ids], dataset.arrays["episode_lengths"][ids]
    t = np.arange(int(lengths.max()))
    out = segments[starts[:, None] + np.minimum(t[None, :], lengths[:, None] - 1)]
    return torch.from_numpy(np.where(t[None, :] < lengths[:, None], out, -1))


def step_codes(assign: np.ndarray, ids: np.ndarray, segments: Tensor) -> Tensor:
    """[B,T] code of each step from the per-episode segment codes `assign` [N_episodes, MAX_SEGMENTS] of
    episodes `ids`; -1 on padding."""
    codes = torch.gather(torch.from_numpy(assign[ids]), 1, segments.clamp(0, MAX_SEGMENTS - 1))
    return torch.where(segments >= 0, codes, -1)


def step_nll(model: torch.nn.Module, batch: dict[str, Tensor], hook: str, decoder: ControllerDecoder, codes: Tensor) -> Tensor:
    """[B,T] -log p(a_t | o_{1:t}) with controller U_{code_t} at `hook` (0 on padding)."""
    z = subgoal_codes(codes, decoder.n_z)
    out = model(batch["observations"], interventions={hook: controller_intervention(decoder, z)})
    return model.action_nll(out.action_params, batch["actions"]) * batch["mask"]


def segment_features(residual: Tensor, segments: Tensor, lookahead: bool = True) -> tuple[Tensor, Tensor]:
    """For residuals [B,T,d] and segment indices [B,T] (-1: none): each segment's mean residual, followed
    with `lookahead` by the next segment's (an episode's last segment repeats its own), [B,S,d or 2d], and
    each segment's step count [B,S]."""
    n_seg = max(int(segments.max()) + 1, 1)
    inside = torch.stack([segments == j for j in range(n_seg)], 1).to(residual.dtype)  # [B,S,T]
    count = inside.sum(2)
    mean = inside @ residual / count.clamp(min=1)[..., None]
    if lookahead:
        later = torch.cat([mean[:, 1:], mean[:, -1:]], 1)
        later = torch.where(count.roll(-1, 1)[..., None] > 0, later, mean)
        mean = torch.cat([mean, later], -1)
    return mean, count


@torch.no_grad()
def cluster_segments(model: torch.nn.Module, dataset: TrajectoryDataset, segments: np.ndarray, hook: str,
                     n_codes: int, seed: int, lookahead: bool = True) -> np.ndarray:
    """Codes [N_episodes, MAX_SEGMENTS] (over all of the dataset's stored episodes; 0 where no segment): each
    segment of `dataset`'s episodes in one of `n_codes` k-means clusters of its `segment_features`,
    standardised per dimension."""
    features, where = [], []
    for local, _, residual in batched_residuals(model, dataset, hook):
        mean, count = segment_features(residual, batch_segments(dataset, local, segments), lookahead)
        for j in range(mean.shape[1]):
            has = count[:, j] > 0
            features.append(mean[has, j].numpy())
            where.extend((int(i), j) for i in dataset.episode_ids[local[has.numpy()]])
    x = np.concatenate(features)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    with threadpool_limits(1):
        clusters = KMeans(n_clusters=n_codes, n_init=10, random_state=seed).fit_predict(x)
    assign = np.zeros((len(dataset.arrays["episode_starts"]), MAX_SEGMENTS), dtype=np.int64)
    for (i, j), k in zip(where, clusters):
        assign[i, j] = k
    return assign


def fit_controllers(model: torch.nn.Module, dataset: TrajectoryDataset, segments: np.ndarray, hook: str,
                    decoder: ControllerDecoder, opt: torch.optim.Optimizer, assign: np.ndarray, steps: int, batch: int,
                    rng: np.random.Generator) -> float:
    """`steps` optimiser steps of `decoder`'s controllers on the segment codes `assign` (base model frozen);
    the mean loss over the last tenth of the steps."""
    tail = []
    for step in range(steps):
        local = rng.choice(dataset.num_episodes, size=min(batch, dataset.num_episodes), replace=False)
        data = dataset.batch(local)
        codes = step_codes(assign, dataset.episode_ids[local], batch_segments(dataset, local, segments))
        loss = step_nll(model, data, hook, decoder, codes).sum() / data["mask"].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= steps - max(1, steps // 10):
            tail.append(loss.item())
    return float(np.mean(tail)) if tail else float("nan")


def discover_codes(model: torch.nn.Module, dataset: TrajectoryDataset, switch: HMMSwitch,
                   config: LabelFreeConfig) -> tuple[ControllerDecoder, dict[str, Any]]:
    """The label-free codes on `dataset`'s first `config.code_episodes` episodes: k-means clusters of the
    HMM's segments with lookahead, and a controller per cluster at the switch's hook (the base `model` given
    frozen; the controllers returned frozen); returns them
    with a summary (segments per episode, each code's share of segments, the fit's final loss)."""
    data = dataset.subset(np.arange(min(config.code_episodes, dataset.num_episodes)))
    hook = switch.config.hook
    segments = hmm_segments(model, data, hook, switch)
    assign = cluster_segments(model, data, segments, hook, config.n_codes, config.seed)
    rng = np.random.default_rng(derive_seed(config.seed, "label-free-codes"))
    torch.manual_seed(derive_seed(config.seed, "label-free-decoder"))
    decoder = ControllerDecoder(config.n_codes, int(model.d_model), config.rank)
    opt = torch.optim.AdamW(decoder.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss = fit_controllers(model, data, segments, hook, decoder, opt, assign, config.steps, config.batch_size, rng)
    per_episode = np.array([segments[s:s + n].max() + 1 for s, n in zip(data.arrays["episode_starts"][data.episode_ids],
                                                                        data.arrays["episode_lengths"][data.episode_ids])])
    used = np.concatenate([assign[i, :n] for i, n in zip(data.episode_ids, per_episode)])  # n <= MAX_SEGMENTS
    summary = {"episodes": data.num_episodes, "segments_per_episode": float(per_episode.mean()),
               "code_shares": (np.bincount(used, minlength=config.n_codes) / len(used)).tolist(), "fit_loss": loss}
    return decoder.eval().requires_grad_(False), summary
