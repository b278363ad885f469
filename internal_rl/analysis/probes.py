"""Linear probing of the residual stream for the current subgoal (paper Sec. 4, Fig. 3, App. C.2).

For every hook point of the frozen base model we fit a multinomial logistic-regression probe
p(g_t | e_t) = softmax(W e_t + b) from the activation at that hook to the ground-truth subgoal g_t (the
colour pair being pursued; 4 classes in the grid world) on expert trajectories, and report its accuracy on
held-out episodes next to the majority-class baseline. The paper's finding: decodability rises with depth
and jumps around mid-depth (about 30% -> 50% at layers 3-4 of 6), staying high up to the output.

Activations of all hooks come from one forward pass per batch (`cache_hooks`), and all probes are fitted
at once as one batched linear map [H, d, C] (each probe only sees its own hook, so this is H independent
fits that share the optimiser loop). Features are standardised with the training mean and standard
deviation per hook: the probe class is still linear in e, but the optimisation no longer depends on the
residual stream's scale, so a few hundred AdamW steps suffice for the quick preset.
"""

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from internal_rl.analysis.plots import plot_layers
from internal_rl.common.errors import ConfigError, DatasetError, check
from internal_rl.common.logging import progress as progress_bar
from internal_rl.models.hooks import layer_hook, validate_hook


@dataclass(frozen=True)
class ProbeConfig:
    """How probes are fitted; defaults are the paper's (Table A6: AdamW lr 1e-3, wd 0, 8000 steps, batch 512)."""

    steps: int = 8000
    batch_size: int = 512  # steps (activation vectors) per optimiser step
    lr: float = 1e-3
    weight_decay: float = 0.0
    holdout_fraction: float = 0.2  # share of episodes held out for the reported accuracy
    max_episodes: int | None = None  # episodes used (before the split); None = the whole dataset
    n_classes: int = 4  # the grid world's four subgoals (colour pairs 0-1, 2-3, 4-5, 6-7)
    standardize: bool = True
    forward_batch: int = 256  # episodes per forward pass when collecting activations
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.steps >= 1, f"ProbeConfig steps={self.steps}; expected >= 1")
        check(self.batch_size >= 1, f"ProbeConfig batch_size={self.batch_size}; expected >= 1")
        check(self.lr > 0, f"ProbeConfig lr={self.lr}; expected > 0")
        check(self.weight_decay >= 0, f"ProbeConfig weight_decay={self.weight_decay}; expected >= 0")
        check(0 < self.holdout_fraction < 1,
              f"ProbeConfig holdout_fraction={self.holdout_fraction}; expected in (0, 1)")
        check(self.max_episodes is None or self.max_episodes >= 2,
              f"ProbeConfig max_episodes={self.max_episodes}; expected None or >= 2")
        check(self.n_classes >= 2, f"ProbeConfig n_classes={self.n_classes}; expected >= 2")
        check(self.forward_batch >= 1, f"ProbeConfig forward_batch={self.forward_batch}; expected >= 1")


PROBE_PRESETS: dict[str, ProbeConfig] = {
    # The paper does not state how many episodes the probes see; 4000 (about 125k steps) keeps the
    # activations of all 18 hooks at d_model 256 within a few GB.
    "paper": ProbeConfig(max_episodes=4000),
    # < 1 min for all 18 hooks of a 6-layer model on 2 CPU cores: fewer episodes, larger steps.
    "quick": ProbeConfig(steps=300, batch_size=1024, lr=1e-2, max_episodes=1500),
}


def probe_preset(name: str) -> ProbeConfig:
    """The named preset ('quick' or 'paper'), or ConfigError listing the valid names."""
    if name not in PROBE_PRESETS:
        raise ConfigError(f"unknown probe preset {name!r}; valid: {sorted(PROBE_PRESETS)}")
    return PROBE_PRESETS[name]


@dataclass
class Activations:
    """Activations at several hooks for every real (unpadded) step of some episodes, flattened over steps."""

    features: dict[str, Tensor]  # hook -> [N, d] float32
    labels: Tensor  # [N] int64 subgoal g_t
    segment_position: Tensor  # [N] int64 steps since the subgoal label last changed (0 at a segment's start)


@torch.no_grad()
def collect_activations(
    model: torch.nn.Module, dataset, hooks: Sequence[str], *, forward_batch: int = 256, show_progress: bool = True
) -> Activations:
    """Run the frozen model over every episode of `dataset` once and keep the activations at `hooks`.

    Steps whose subgoal label is negative (no subgoal) are dropped. `dataset` is a TrajectoryDataset.
    """
    feats: dict[str, list[Tensor]] = {h: [] for h in hooks}
    labels, positions = [], []
    starts = range(0, dataset.num_episodes, forward_batch)
    for start in progress_bar(starts, desc="activations", disable=not show_progress):
        batch = dataset.batch(np.arange(start, min(start + forward_batch, dataset.num_episodes)))
        out = model(batch["observations"], cache_hooks=hooks)
        subgoals = batch["subgoals"]  # [B,T]
        keep = batch["mask"] & (subgoals >= 0)
        for h in hooks:
            feats[h].append(out.cache[h][keep].float())
        labels.append(subgoals[keep])
        positions.append(_segment_positions(subgoals)[keep])
    return Activations(
        features={h: torch.cat(v) for h, v in feats.items()},
        labels=torch.cat(labels).long(),
        segment_position=torch.cat(positions).long(),
    )


def _segment_positions(labels: Tensor) -> Tensor:
    """For labels [B,T], the number of steps since the label last changed within each row."""
    t = torch.arange(labels.shape[1]).expand_as(labels)
    change = torch.ones_like(labels, dtype=torch.bool)
    change[:, 1:] = labels[:, 1:] != labels[:, :-1]
    segment_start = torch.cummax(torch.where(change, t, torch.zeros_like(t)), dim=1).values
    return t - segment_start


def probe_logits(features: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Logits of H probes at once: features [H, N, d], weight [H, d, C], bias [H, C] -> [H, N, C]."""
    return torch.einsum("hnd,hdc->hnc", features, weight) + bias[:, None, :]


@dataclass
class LinearProbes:
    """H fitted probes, one per hook: logits = standardise(x) @ weight[k] + bias[k]."""

    hooks: list[str]
    weight: Tensor  # [H, d, C]
    bias: Tensor  # [H, C]
    mean: dict[str, Tensor]  # hook -> [d_h] training mean (zeros when not standardising)
    std: dict[str, Tensor]  # hook -> [d_h]

    def features(self, hook: str, x: Tensor) -> Tensor:
        """Standardise x [N, d_h] with `hook`'s training statistics and zero-pad it to the common width d."""
        x = (x.float() - self.mean[hook]) / self.std[hook]
        return F.pad(x, (0, self.weight.shape[1] - x.shape[-1]))

    @torch.no_grad()
    def logits(self, hook: str, x: Tensor) -> Tensor:
        """Probe logits [N, C] of `hook`'s probe for activations x [N, d_h]."""
        k = self.hooks.index(hook)
        return self.features(hook, x) @ self.weight[k] + self.bias[k]


def train_linear_probes(
    train: Mapping[str, Tensor], labels: Tensor, config: ProbeConfig = ProbeConfig(), *, show_progress: bool = True
) -> LinearProbes:
    """Fit one multinomial logistic probe per key of `train` (hook -> features [N, d]) to `labels` [N].

    All probes share the minibatch indices and the optimiser loop, each with its own weights (the loss is
    the sum of the per-probe mean cross-entropies, so each probe gets exactly its own gradient).
    """
    hooks = list(train)
    if not hooks:
        raise ConfigError("train_linear_probes: no features to probe")
    n = int(labels.shape[0])
    if n == 0:
        raise DatasetError("train_linear_probes: no labelled training steps")
    C = config.n_classes
    if int(labels.min()) < 0 or int(labels.max()) >= C:
        raise DatasetError(f"subgoal labels span {int(labels.min())}..{int(labels.max())}; expected 0..{C - 1}")
    d = max(train[h].shape[-1] for h in hooks)
    if config.standardize:
        mean = {h: train[h].float().mean(0) for h in hooks}
        std = {h: train[h].float().std(0).clamp_min(1e-6) for h in hooks}
    else:
        mean = {h: torch.zeros(train[h].shape[-1]) for h in hooks}
        std = {h: torch.ones(train[h].shape[-1]) for h in hooks}
    probes = LinearProbes(hooks, torch.zeros(len(hooks), d, C), torch.zeros(len(hooks), C), mean, std)
    probes.weight.requires_grad_(True)
    probes.bias.requires_grad_(True)
    opt = torch.optim.AdamW([probes.weight, probes.bias], lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    batch_size = min(config.batch_size, n)
    # Standardise once into one [H, N, d] tensor so that a minibatch is a single gather.
    x_all = torch.empty(len(hooks), n, d)
    for k, h in enumerate(hooks):
        x_all[k] = probes.features(h, train[h])
    for _ in progress_bar(range(config.steps), desc="probes", disable=not show_progress):
        idx = torch.randint(n, (batch_size,), generator=gen)
        logits = probe_logits(x_all.index_select(1, idx), probes.weight, probes.bias)  # [H, B, C]
        loss = F.cross_entropy(logits.reshape(-1, C), labels[idx].repeat(len(hooks)), reduction="sum") / batch_size
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    probes.weight.requires_grad_(False)
    probes.bias.requires_grad_(False)
    return probes


def score_probes(probes: LinearProbes, features: Mapping[str, Tensor], labels: Tensor) -> dict[str, dict[str, float]]:
    """{hook: {"accuracy", "nll"}} of each probe on `features` (hook -> [N, d]) and `labels` [N]."""
    if int(labels.shape[0]) == 0:
        raise DatasetError("score_probes: no labelled steps to score")
    out = {}
    for h in probes.hooks:
        correct, nll = 0.0, 0.0
        for i in range(0, labels.shape[0], 65536):
            logits = probes.logits(h, features[h][i : i + 65536])
            y = labels[i : i + 65536]
            correct += float((logits.argmax(-1) == y).sum())
            nll += float(F.cross_entropy(logits, y, reduction="sum"))
        out[h] = {"accuracy": correct / labels.shape[0], "nll": nll / labels.shape[0]}
    return out


def accuracy_by_segment_position(
    probes: LinearProbes, hook: str, data: Activations, max_position: int = 10
) -> dict[str, list]:
    """Accuracy of `hook`'s probe as a function of the step within the current subgoal segment.

    Positions >= `max_position` are pooled into the last bin. Shows whether the subgoal becomes more
    decodable as a segment goes on (the paper: belief concentrates on the correct subgoal over time).
    """
    correct = probes.logits(hook, data.features[hook]).argmax(-1) == data.labels
    pos = data.segment_position.clamp_max(max_position)
    accuracy, count = [], []
    for p in range(max_position + 1):
        sel = pos == p
        count.append(int(sel.sum()))
        accuracy.append(float(correct[sel].float().mean()) if sel.any() else None)
    return {"hook": hook, "position": list(range(max_position + 1)), "accuracy": accuracy, "count": count}


def probe_layers(
    model: torch.nn.Module,
    dataset,
    config: ProbeConfig = ProbeConfig(),
    *,
    hooks: Sequence[str] | None = None,
    show_progress: bool = True,
) -> dict:
    """Probe every hook of `model` (default: all `model.hook_names`) for the current subgoal.

    The dataset's episodes (at most `config.max_episodes`, a seeded random subset) are split into train
    and held-out episodes (`config.holdout_fraction`, seed `config.seed`); probes are fitted on the train
    steps and scored on the held-out steps. Returns a JSON-ready dict:
    - "hooks": {hook: {"accuracy", "train_accuracy", "heldout_nll"}} for every probed hook;
    - "layers": [{"layer": l, "hook", "accuracy"}] for the paper's residual layers l = 0..L (l = 0 the
      first block's input, l >= 1 block l's output) whose hook was probed;
    - "majority_class", "majority_baseline" (held-out accuracy of always predicting the most frequent
      train label), "chance" (1 / n_classes);
    - "best_hook", "best_layer" (argmax accuracy over hooks / over residual layers);
    - "by_segment_position": held-out accuracy of the best layer's probe vs steps into the segment;
    - "n_train", "n_heldout" (labelled steps), "n_episodes", "config".
    """
    n_layers = int(model.n_layers)
    hooks = list(model.hook_names if hooks is None else hooks)
    for h in hooks:
        validate_hook(h, n_layers)
    used = dataset
    if config.max_episodes is not None and dataset.num_episodes > config.max_episodes:
        chosen = np.random.default_rng(config.seed).choice(dataset.num_episodes, config.max_episodes, replace=False)
        used = dataset.subset(np.sort(chosen))
    train_set, test_set = used.split(config.holdout_fraction, config.seed)
    collect = dict(forward_batch=config.forward_batch, show_progress=show_progress)
    train = collect_activations(model, train_set, hooks, **collect)
    test = collect_activations(model, test_set, hooks, **collect)
    if train.labels.numel() == 0 or test.labels.numel() == 0:
        raise DatasetError("dataset has no steps with a subgoal label (subgoals >= 0); cannot probe")

    probes = train_linear_probes(train.features, train.labels, config, show_progress=show_progress)
    train_scores = score_probes(probes, train.features, train.labels)
    test_scores = score_probes(probes, test.features, test.labels)
    per_hook = {
        h: {"accuracy": test_scores[h]["accuracy"], "train_accuracy": train_scores[h]["accuracy"],
            "heldout_nll": test_scores[h]["nll"]}
        for h in hooks
    }
    counts = torch.bincount(train.labels, minlength=config.n_classes)
    majority = int(counts.argmax())
    majority_baseline = float((test.labels == majority).float().mean())

    layers = []
    for layer in range(n_layers + 1):
        h = layer_hook(layer, n_layers)
        if h in per_hook:
            layers.append({"layer": layer, "hook": h, "accuracy": per_hook[h]["accuracy"]})
    best_hook = max(per_hook, key=lambda h: per_hook[h]["accuracy"])
    best_layer = max(layers, key=lambda r: r["accuracy"])["layer"] if layers else None
    position_hook = layer_hook(best_layer, n_layers) if best_layer is not None else best_hook
    by_position = accuracy_by_segment_position(probes, position_hook, test)
    return {
        "hooks": per_hook,
        "layers": layers,
        "majority_class": majority,
        "majority_baseline": majority_baseline,
        "chance": 1.0 / config.n_classes,
        "best_hook": best_hook,
        "best_layer": best_layer,
        "by_segment_position": by_position,
        "n_train": int(train.labels.numel()),
        "n_heldout": int(test.labels.numel()),
        "n_episodes": int(used.num_episodes),
        "n_layers": n_layers,
        "config": asdict(config),
    }


def plot_probe_results(results: Mapping, path) -> None:
    """Draw probes.png: held-out accuracy vs residual layer 0..L against the majority baseline and chance."""
    series = {"probe accuracy (residual layer)": {r["layer"]: r["accuracy"] for r in results["layers"]}}
    references = {
        f"majority class ({results['majority_baseline']:.2f})": results["majority_baseline"],
        f"chance ({results['chance']:.2f})": results["chance"],
    }
    n_layers = results.get("n_layers")
    plot_layers(
        series,
        path,
        ylabel="held-out subgoal accuracy",
        title="Linear probe: current subgoal from the residual stream",
        references=references,
        highlight=n_layers // 2 if n_layers else None,
    )
