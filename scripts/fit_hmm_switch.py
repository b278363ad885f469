"""Fit a label-free switch: a sticky Gaussian HMM over the residual at the controlled layer (a diagnostic).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/fit_hmm_switch.py --run RUN --out SWITCH [--states 8]
    OMP_NUM_THREADS=1 .venv/bin/python scripts/rl_over_subgoal_controllers.py --run RUN --controllers C \\
        --switch hmm --hmm SWITCH --task 0-1-2-3-4-5 --out OUT.json

Fits `rl/hmm_switch.HMMSwitch` on the residual at layer L/2 of the first `--episodes` training episodes of
RUN/data-clean (D*; the split of scripts/discrete_code_discovery.py), never reading their labels, then
scores it on held-out episodes against the true subgoal changes: switch precision / recall / F1 (the
metacontroller's metric, `analysis/switching.switch_metrics`) and switches per episode, and how well the
filtered state names the expert's current target colour and subgoal (majority-map accuracy, NMI).
Writes SWITCH (a checkpoint folder whose config.json also holds these scores).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from internal_rl.analysis.label_free_codes import episode_residuals
from internal_rl.common.errors import InternalRLError
from internal_rl.data.dataset import TrajectoryDataset, load_dataset
from internal_rl.models.hooks import controlled_hook
from internal_rl.pipeline.label_free_stage import switch_scores
from internal_rl.pipeline.run_folder import RunFolder
from internal_rl.rl.hmm_switch import HMMSwitch, fit_hmm_switch, save_hmm_switch

sys.path.insert(0, str(Path(__file__).parent))
from discrete_code_discovery import nmi  # noqa: E402


def residuals(model, dataset: TrajectoryDataset, hook: str) -> list[dict[str, np.ndarray]]:
    """Per episode: the residual at `hook` [T, d], the subgoal and target labels [T] (for scoring only)."""
    episodes = [dataset.episode(i) for i in range(dataset.num_episodes)]
    return [{"residual": residual, "subgoal": episode["subgoals"], "target": episode["targets"]}
            for residual, episode in zip(episode_residuals(model, dataset, hook), episodes)]


def majority(states: np.ndarray, labels: np.ndarray) -> float:
    return float(sum(np.bincount(labels[states == s]).max() for s in np.unique(states)) / len(labels))


def score(switch: HMMSwitch, episodes: list[dict[str, np.ndarray]]) -> dict:
    betas, states = [], []
    for e in episodes:
        beta, state = switch.filter(torch.from_numpy(e["residual"])[None])
        betas.append(beta[0].numpy())
        states.append(state[0].numpy())
    s = np.concatenate(states)
    scores = switch_scores(betas, [e["subgoal"] for e in episodes])
    for name in ("subgoal", "target"):
        labels = np.concatenate([e[name] for e in episodes])
        keep = labels >= 0
        scores[name] = {"accuracy": majority(s[keep], labels[keep]), "nmi": nmi(s[keep], labels[keep]),
                        "majority": float(np.bincount(labels[keep]).max() / keep.sum())}
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="run folder with pretrain/ and data-clean/")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--states", type=int, default=8)
    parser.add_argument("--components", type=int, default=32)
    parser.add_argument("--stay", type=float, default=0.99, help="the transitions' fixed diagonal")
    parser.add_argument("--episodes", type=int, default=1500, help="training episodes to fit on")
    parser.add_argument("--eval-episodes", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        run = RunFolder(args.run)
        model = run.base_model()
        hook = controlled_hook(model.n_layers)
        train, test = load_dataset(run.clean_data).split(0.2, 0)
        fit_on = residuals(model, train.subset(np.arange(min(args.episodes, train.num_episodes))), hook)
        switch = fit_hmm_switch(np.concatenate([e["residual"] for e in fit_on]), np.array([len(e["residual"]) for e in fit_on]),
                                hook, args.states, args.components, args.stay, seed=args.seed)
        held_out = score(switch, residuals(model, test.subset(np.arange(min(args.eval_episodes, test.num_episodes))), hook))
        provenance = {"run": str(args.run), "episodes": len(fit_on), "stay": args.stay, "seed": args.seed, "held_out": held_out}
        save_hmm_switch(args.out, switch, {"provenance": provenance})
        print(json.dumps(held_out, indent=1))
    except InternalRLError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
