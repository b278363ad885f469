"""Does the metacontroller switch where the subgoals change? (paper Sec. 5, Fig. A3 / Fig. 6 / Fig. 7)

Definitions (the paper gives none; these are ours):
- A predicted switch is a step t with beta_t > 0.5 (the threshold internal RL uses).
- A true switch is a step t >= 1 where the ground-truth subgoal label changes (g_t != g_{t-1}).
- The first step: the metacontroller always switches there (beta_1 = 1 by construction) and every episode
  starts a subgoal there, so it carries no information. The headline metrics drop step 0 from both sets;
  `include_start=True` counts it as a (always matched) true switch, for reference.
- Matching: a predicted and a true switch match if they are at most `tolerance` (2) steps apart; each is
  matched at most once (greedy in time order, which is a maximum matching for this interval structure).
  precision = matched / predicted, recall = matched / true, F1 their harmonic mean, all pooled over episodes.
- Segments: a predicted segment runs from one switch (step 0 included) to the next or to the episode end;
  true segments are the runs of equal subgoal labels.
- NMI between k-means clusters of z and subgoal labels (sklearn), k = number of distinct subgoals:
  "step" clusters the z_t of every valid step; "segment" clusters each predicted segment's mean z against
  the segment's majority label (the unit an abstract action is). The "segment" k-means centres are the
  metacontroller's discovered controllers (`discovered_controllers`; the pinpad videos drive the base model
  with each).
- Code probe: does a segment's code name its subgoal? A multinomial logistic regression (5-fold
  cross-validation) from the mean z over each true segment to its subgoal, against always guessing the
  most common subgoal; and the same within each previous subgoal (a segment's successor is one of a few,
  so a code could name "the first or the second option" without naming the subgoal), pooled over groups.
- What the codes explain: the held-out action NLL of the controlled base model against the base model alone
  on the same steps, and the rate (KL to the prior, nats per episode) paid for the difference. A posterior
  collapse shows as no NLL gain at zero rate.
Everything is computed with the posterior mean (z~ = mu), so results are deterministic.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import normalized_mutual_info_score
from sklearn.model_selection import cross_val_predict
from threadpoolctl import threadpool_limits

from internal_rl.analysis.plots import colour
from internal_rl.common.errors import ConfigError

THRESHOLD = 0.5
TOLERANCE = 2


@dataclass
class EpisodeTrace:
    """One episode's metacontroller outputs (valid steps only) and ground-truth labels."""

    beta: np.ndarray  # [T]
    z: np.ndarray  # [T, n_z]
    nll: np.ndarray  # [T] action NLL under the controlled base model
    subgoals: np.ndarray  # [T]
    targets: np.ndarray  # [T]
    base_nll: np.ndarray | None = None  # [T] action NLL of the uncontrolled base model
    kl: np.ndarray | None = None  # [T] KL(N(mu_t, Sigma_t) || N(0, I)), nats


def label_switches(labels: np.ndarray) -> np.ndarray:
    """Steps t >= 1 where the label changes, as sorted indices."""
    labels = np.asarray(labels)
    return np.flatnonzero(labels[1:] != labels[:-1]) + 1


def predicted_switches(beta: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Steps t where beta_t > threshold, as sorted indices (step 0 included when it fires)."""
    return np.flatnonzero(np.asarray(beta) > threshold)


def count_matches(predicted: Sequence[int], true: Sequence[int], tolerance: int = TOLERANCE) -> int:
    """Largest number of one-to-one pairs (p, t) with |p - t| <= tolerance.

    Greedy in time order: each true switch takes the earliest unused prediction within its window. For
    windows of equal width on a line this is a maximum matching.
    """
    predicted = sorted(int(p) for p in predicted)
    used = [False] * len(predicted)
    matched = 0
    start = 0
    for t in sorted(int(x) for x in true):
        while start < len(predicted) and predicted[start] < t - tolerance:
            start += 1
        for i in range(start, len(predicted)):
            if predicted[i] > t + tolerance:
                break
            if not used[i]:
                used[i] = True
                matched += 1
                break
    return matched


def switch_metrics(
    betas: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    tolerance: int = TOLERANCE,
    threshold: float = THRESHOLD,
    include_start: bool = False,
) -> dict[str, float]:
    """Pooled switch-detection precision, recall and F1 over episodes (see the module docstring)."""
    if len(betas) != len(labels):
        raise ConfigError(f"switch_metrics: {len(betas)} beta traces but {len(labels)} label sequences")
    n_pred = n_true = n_match = 0
    for beta, label in zip(betas, labels):
        pred = predicted_switches(beta, threshold)
        true = label_switches(label)
        if include_start:
            true = np.concatenate([[0], true])
        else:
            pred = pred[pred > 0]
        n_pred += len(pred)
        n_true += len(true)
        n_match += count_matches(pred, true, tolerance)
    precision = n_match / n_pred if n_pred else 0.0
    recall = n_match / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "matched": n_match, "predicted": n_pred, "true": n_true}


def segment_lengths(starts: np.ndarray, length: int) -> np.ndarray:
    """Lengths of the segments that begin at `starts` (step 0 always begins one) in an episode of `length` steps."""
    starts = np.union1d([0], np.asarray(starts, dtype=np.int64))
    return np.diff(np.concatenate([starts, [length]]))


def _length_stats(lengths: np.ndarray) -> dict[str, Any]:
    lengths = np.asarray(lengths)
    values, counts = np.unique(lengths, return_counts=True)
    return {
        "mean": float(lengths.mean()) if lengths.size else 0.0,
        "median": float(np.median(lengths)) if lengths.size else 0.0,
        "count": int(lengths.size),
        "histogram": {int(v): int(c) for v, c in zip(values, counts)},
    }


def clustering_nmi(traces: Sequence[EpisodeTrace], seed: int = 0, threshold: float = THRESHOLD) -> dict[str, float]:
    """NMI between k-means clusters of z and subgoal labels, at step level and at predicted-segment level."""
    z = np.concatenate([tr.z for tr in traces])
    labels = np.concatenate([tr.subgoals for tr in traces])
    k = len(np.unique(labels))
    out = {"n_clusters": k}
    if k < 2:
        return {**out, "step": 0.0, "segment": 0.0}
    # scikit-learn's own threading dependency: k-means on a few thousand points is fastest on one thread,
    # and OpenMP threads on a busy machine made it 10x slower.
    with threadpool_limits(1):
        return {**out, **_nmi(traces, z, labels, k, seed, threshold)}


def _nmi(traces: Sequence[EpisodeTrace], z: np.ndarray, labels: np.ndarray, k: int, seed: int,
         threshold: float) -> dict[str, float]:
    out = {}
    km = KMeans(n_clusters=k, n_init=10, random_state=seed)
    out["step"] = float(normalized_mutual_info_score(labels, km.fit_predict(z)))
    seg_z, seg_labels = segment_codes(traces, threshold)
    if len(seg_z) >= k:
        clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(seg_z)
        out["segment"] = float(normalized_mutual_info_score(seg_labels, clusters))
    else:
        out["segment"] = 0.0
    return out


def segment_codes(traces: Sequence[EpisodeTrace], threshold: float = THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """The mean code z of every predicted segment and the segment's majority subgoal: [S, n_z], int [S]."""
    seg_z, seg_labels = [], []
    for tr in traces:
        starts = np.union1d([0], predicted_switches(tr.beta, threshold))
        for a, b in zip(starts, np.concatenate([starts[1:], [len(tr.beta)]])):
            seg_z.append(tr.z[a:b].mean(0))
            seg_labels.append(np.bincount(tr.subgoals[a:b]).argmax())
    return np.stack(seg_z), np.array(seg_labels, dtype=np.int64)


def code_dimensions(traces: Sequence[EpisodeTrace], threshold: float = THRESHOLD) -> dict[str, Any]:
    """The spread of each latent dimension over the predicted segments' mean codes, and how many
    dimensions are active (variance above 0.01, the active-unit count of Burda et al., 2016). A dimension
    that does not vary across segments carries nothing, whatever n_z is."""
    seg_z, _ = segment_codes(traces, threshold)
    std = seg_z.std(0)
    return {"std": std.tolist(), "active": int((std**2 > 0.01).sum()), "n_z": int(seg_z.shape[1])}


def discovered_controllers(traces: Sequence[EpisodeTrace], k: int, seed: int = 0) -> dict[str, list]:
    """The metacontroller's k discovered controllers: k-means centres of its segment codes (those the NMI
    scores), each with its number of segments and their majority subgoal, and for each subgoal the
    controller holding most of its segments ("controller_of_subgoal"; -1 for a subgoal no segment shows):
    the labels only name the controllers, for the evaluation. JSON-ready lists."""
    seg_z, seg_labels = segment_codes(traces)
    k = min(k, len(seg_z))
    with threadpool_limits(1):
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(seg_z)
    counts = np.stack([np.bincount(seg_labels[km.labels_ == c], minlength=int(seg_labels.max()) + 1)
                       for c in range(k)])  # [controller, subgoal] segments
    return {
        "codes": km.cluster_centers_.tolist(),
        "segments": counts.sum(1).tolist(),
        "subgoal": counts.argmax(1).tolist(),
        "controller_of_subgoal": np.where(counts.sum(0) > 0, counts.argmax(0), -1).tolist(),
    }


def code_probe(traces: Sequence[EpisodeTrace], folds: int = 5) -> dict[str, Any]:
    """How well a linear read-out of the segment codes predicts the subgoal, against the majority guess."""
    codes, labels, previous = [], [], []
    for tr in traces:
        bounds = np.concatenate([[0], label_switches(tr.subgoals), [len(tr.subgoals)]])
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            codes.append(tr.z[a:b].mean(0))
            labels.append(int(tr.subgoals[a]))
            previous.append(int(tr.subgoals[bounds[k - 1]]) if k else -1)
    codes, labels, previous = np.stack(codes), np.array(labels), np.array(previous)
    overall = probe_accuracy(codes, labels, folds)
    correct = chance = counted = 0.0
    for p in np.unique(previous[previous >= 0]):
        group = previous == p
        accuracy = probe_accuracy(codes[group], labels[group], folds)
        if accuracy is not None:
            n = group.sum()
            correct, chance, counted = correct + accuracy["accuracy"] * n, chance + accuracy["majority"] * n, counted + n
    return {
        "segments": int(len(labels)),
        **(overall or {"accuracy": None, "majority": None}),
        "given_previous": {"accuracy": correct / counted, "majority": chance / counted} if counted else None,
    }


def probe_accuracy(x: np.ndarray, y: np.ndarray, folds: int) -> dict[str, float] | None:
    """Cross-validated accuracy of a logistic regression x -> y; None when there are too few examples."""
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2 or counts.min() < folds:
        return None
    with threadpool_limits(1):
        predicted = cross_val_predict(LogisticRegression(max_iter=2000), x, y, cv=folds)
    return {"accuracy": float((predicted == y).mean()), "majority": float(counts.max() / len(y))}


@torch.no_grad()
def collect_traces(base: torch.nn.Module, metacontroller: torch.nn.Module, dataset: Any, max_episodes: int,
                   batch_size: int = 256) -> list[EpisodeTrace]:
    """Run the controlled base model over the first `max_episodes` of `dataset` (z~ = mu) and keep per-episode traces."""
    from internal_rl.metacontroller.training import controlled_forward

    n = min(max_episodes, dataset.num_episodes)
    traces = []
    for start in range(0, n, batch_size):
        batch = dataset.batch(np.arange(start, min(start + batch_size, n)))
        nll, out = controlled_forward(base, metacontroller, batch, sample=False)
        base_nll = base.action_nll(base(batch["observations"]).action_params, batch["actions"])
        kl = out["kl_steps"]
        lengths = batch["mask"].sum(1).tolist()
        for i, length in enumerate(lengths):
            traces.append(EpisodeTrace(
                beta=out["beta"][i, :length].numpy(),
                z=out["z"][i, :length].numpy(),
                nll=nll[i, :length].numpy(),
                subgoals=batch["subgoals"][i, :length].numpy(),
                targets=batch["targets"][i, :length].numpy(),
                base_nll=base_nll[i, :length].numpy(),
                kl=kl[i, :length].numpy(),
            ))
    return traces


def switching_report(traces: Sequence[EpisodeTrace], seed: int = 0) -> dict[str, Any]:
    """All switching metrics of a set of episode traces, as a JSON-ready dict."""
    if not traces:
        raise ConfigError("switching_report: no episodes to analyse")
    betas = [tr.beta for tr in traces]
    pred_lengths = np.concatenate([segment_lengths(predicted_switches(tr.beta), len(tr.beta)) for tr in traces])
    true_lengths = np.concatenate([segment_lengths(label_switches(tr.subgoals), len(tr.subgoals)) for tr in traces])
    steps = sum(len(tr.beta) for tr in traces)
    binary = np.concatenate([(b < 0.1) | (b > 0.9) for b in betas])
    nmi = clustering_nmi(traces, seed=seed)
    return {
        "episodes": len(traces),
        "steps": steps,
        "threshold": THRESHOLD,
        "tolerance": TOLERANCE,
        "subgoal_switches": switch_metrics(betas, [tr.subgoals for tr in traces]),
        "subgoal_switches_with_start": switch_metrics(betas, [tr.subgoals for tr in traces], include_start=True),
        "colour_switches": switch_metrics(betas, [tr.targets for tr in traces]),
        "nmi": nmi,
        "controllers": discovered_controllers(traces, nmi["n_clusters"], seed=seed),
        "code_probe": code_probe(traces),
        "code_dimensions": code_dimensions(traces),
        "segment_length": _length_stats(pred_lengths),
        "true_subgoal_length": _length_stats(true_lengths),
        "switches_per_episode": float(np.mean([len(predicted_switches(b)) for b in betas])),
        "true_subgoals_per_episode": float(np.mean([len(label_switches(tr.subgoals)) + 1 for tr in traces])),
        "beta_quasi_binary_fraction": float(binary.mean()),
        "action_nll": float(np.concatenate([tr.nll for tr in traces]).mean()),
        **_explained(traces),
    }


def _explained(traces: Sequence[EpisodeTrace]) -> dict[str, float]:
    """The base model's own action NLL on the same steps and the rate paid, when the traces carry them."""
    if any(tr.base_nll is None or tr.kl is None for tr in traces):
        return {}
    return {
        "base_action_nll": float(np.concatenate([tr.base_nll for tr in traces]).mean()),
        "kl_per_step": float(np.concatenate([tr.kl for tr in traces]).mean()),
        "kl_per_episode": float(np.mean([tr.kl.sum() for tr in traces])),
    }


def plot_beta_traces(traces: Sequence[EpisodeTrace], path: Path, n_episodes: int = 6, title: str | None = None) -> Path:
    """beta_t of the first `n_episodes` episodes, one panel each, with true subgoal switches as dashed lines."""
    shown = list(traces[:n_episodes])
    if not shown:
        raise ConfigError("plot_beta_traces: no episodes to plot")
    fig = Figure(figsize=(8.0, 1.3 * len(shown) + 0.8), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(shown), 1, squeeze=False)[:, 0]
    for i, (ax, tr) in enumerate(zip(axes, shown)):
        t = np.arange(len(tr.beta))
        for s in label_switches(tr.subgoals):
            ax.axvline(s, color="0.3", ls="--", lw=1)
        for start, stop in zip(np.union1d([0], label_switches(tr.subgoals)),
                               np.concatenate([label_switches(tr.subgoals), [len(t)]])):
            ax.axvspan(start - 0.5, stop - 0.5, color=colour(int(tr.subgoals[start]) + 2), alpha=0.12, lw=0)
        ax.plot(t, tr.beta, color=colour(0), marker=".", ms=4, lw=1.5)
        ax.axhline(THRESHOLD, color="0.6", ls=":", lw=1)
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel(f"ep {i}\nbeta")
        ax.spines[["top", "right"]].set_visible(False)
    axes[-1].set_xlabel("time step (dashed: true subgoal switch; shading: subgoal)")
    fig.suptitle(title or "switching unit beta_t on held-out episodes")
    fig.tight_layout()
    return _save_png(fig, Path(path))


def plot_alpha_sweep(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """The rate-distortion trade-off of an alpha sweep: held-out action NLL and switches per episode vs alpha."""
    rows = sorted(rows, key=lambda r: r["alpha"])
    alphas = [r["alpha"] for r in rows]
    fig = Figure(figsize=(9.0, 3.5), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    panels = (("action_nll", "held-out action NLL"), ("switches_per_episode", "switches / episode"), ("f1", "switch F1"))
    for i, (ax, (key, label)) in enumerate(zip(axes, panels)):
        ax.plot(alphas, [r[key] for r in rows], color=colour(i), marker="o")
        if key == "switches_per_episode":
            ax.axhline(np.mean([r["true_subgoals_per_episode"] for r in rows]), color="0.4", ls="--", lw=1, label="true subgoals")
            ax.legend(frameon=False, fontsize=8)
        ax.set_xlabel("alpha (KL strength)")
        ax.set_ylabel(label)
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _save_png(fig, Path(path))


def _save_png(fig: Figure, path: Path) -> Path:
    """Write the figure atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path


def _held_out_of(metacontroller_config: dict[str, Any], data: Path | None) -> Any:
    """The held-out episodes the metacontroller was not trained on (same split as its training)."""
    from internal_rl.data.dataset import load_dataset

    data_dir = Path(data) if data is not None else Path(metacontroller_config["dataset"]["path"])
    dataset = load_dataset(data_dir)
    train = metacontroller_config["train"]
    return dataset.split(train["holdout_fraction"], train["seed"])[1]
