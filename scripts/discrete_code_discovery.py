"""Would K discrete codes, found without labels, name subgoals? (a diagnostic for the G2 link)

    OMP_NUM_THREADS=1 .venv/bin/python scripts/discrete_code_discovery.py --run RUN --codes 4 --out OUT.json \\
        [--init random|subgoal] [--save CONTROLLERS]

The metacontroller's Gaussian codes name places on the grid world. This asks whether the objective itself
prefers subgoals once a code is one of K discrete values, as the supervised controllers are: K controllers
U_1..U_K at layer L/2 (the controller decoder fed one-hot codes, as `analysis.subgoal_controllers`) and one
code per segment, found by hard EM on D* (RUN/data-clean) by next-action likelihood alone. The segments are
the true ones (the subgoal changes, as `--label-switches`), or with `--segments hmm --hmm SWITCH` those of a
label-free HMM over the residual (scripts/fit_hmm_switch.py: a new segment wherever its filtered state
changes); the subgoal names are never read, except to score the result. Each round reassigns every segment to the code that best explains its actions, segment by
segment in time order (the base model is causal, so the choice for segment j depends only on segments <= j),
then refits the controllers on the new assignment, warm-started.

`--init random` draws the first assignment at random (label-free discovery); `--init residual` clusters the
segments' mean residual at layer L/2 into K groups by k-means (label-free, and a start near the subgoals if
the base model's residual is organised by them; `--lookahead` clusters [the segment's mean ; the next
segment's mean], for segments that end before their subgoal shows in the residual); `--init subgoal` starts from the true subgoals, which tests
whether they are a fixed point of the objective. Writes OUT after every round:
held-out NLL with the inferred codes, how often assignments changed, and how well the codes name the
subgoal (majority-map accuracy and normalised mutual information) against the target's cell (NMI).
`--save` writes the final controllers for `scripts/rl_over_subgoal_controllers.py`.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

from internal_rl.analysis.code_content import dataset_code_content, place_labels
from internal_rl.analysis.label_free_codes import (
    MAX_SEGMENTS,
    batch_segments,
    cluster_segments,
    fit_controllers,
    hmm_segments,
    step_codes,
    step_nll,
)
from internal_rl.analysis.switching import EpisodeTrace
from internal_rl.common.errors import ConfigError, InternalRLError
from internal_rl.common.seeding import derive_seed
from internal_rl.data.dataset import TrajectoryDataset, load_dataset
from internal_rl.data.generate import env_config_from_manifest
from internal_rl.models.controller import ControllerDecoder, load_controller_decoder, save_controller_decoder
from internal_rl.models.hooks import layer_hook
from internal_rl.pipeline.run_folder import RunFolder
from internal_rl.rl.hmm_switch import load_hmm_switch

def segment_index(subgoals: torch.Tensor) -> torch.Tensor:
    """[B,T] index of each step's true segment within its episode (a new one wherever the subgoal changes);
    -1 on padding (subgoal -1)."""
    change = torch.ones_like(subgoals, dtype=torch.long)
    change[:, 1:] = (subgoals[:, 1:] != subgoals[:, :-1]).long()
    return torch.where(subgoals >= 0, change.cumsum(1) - 1, -1)


def flat_segments(dataset: TrajectoryDataset) -> np.ndarray:
    """Int [N_steps] over the stored flat arrays: each step's true segment within its episode (-1 on no subgoal)."""
    subgoals = dataset.arrays["subgoals"].astype(np.int64)
    segments = np.full(len(subgoals), -1, dtype=np.int64)
    for start, length in zip(dataset.arrays["episode_starts"], dataset.arrays["episode_lengths"]):
        segments[start:start + length] = segment_index(torch.from_numpy(subgoals[start:start + length])[None])[0].numpy()
    return segments


@torch.no_grad()
def reassign(model, dataset: TrajectoryDataset, segment_ids: np.ndarray, hook: str, decoder, assign: np.ndarray,
             batch: int = 256) -> float:
    """Give every segment of `dataset` the code that best explains its actions (in time order; in place);
    returns the mean action NLL per step under the new assignment."""
    total, steps = 0.0, 0
    for start in range(0, dataset.num_episodes, batch):
        local = np.arange(start, min(start + batch, dataset.num_episodes))
        ids = dataset.episode_ids[local]
        data = dataset.batch(local)
        segments = batch_segments(dataset, local, segment_ids)
        codes = step_codes(assign, ids, segments)
        for j in range(min(int(segments.max()) + 1, MAX_SEGMENTS)):
            inside = segments == j
            costs = torch.stack([(step_nll(model, data, hook, decoder, torch.where(inside, k, codes)) * inside).sum(1)
                                 for k in range(decoder.n_z)], 1)  # [B, K]
            best = costs.argmin(1)
            has = inside.any(1)
            codes = torch.where(inside, best[:, None], codes)
            assign[ids[has.numpy()], j] = best[has].numpy()
        nll = step_nll(model, data, hook, decoder, codes)
        total += float(nll.sum())
        steps += int(data["mask"].sum())
    return total / max(steps, 1)


def segment_table(dataset: TrajectoryDataset, segment_ids: np.ndarray, assign: np.ndarray,
                  labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(code, subgoal, other label) of every segment of `dataset`: its most frequent subgoal (the true one, for
    true segments), and `labels` read at its first step."""
    codes, subgoals, others = [], [], []
    starts, lengths = dataset.arrays["episode_starts"], dataset.arrays["episode_lengths"]
    flat_subgoals = dataset.arrays["subgoals"]
    for i in dataset.episode_ids:
        s, seg = flat_subgoals[starts[i]: starts[i] + lengths[i]], segment_ids[starts[i]: starts[i] + lengths[i]]
        for j in range(min(int(seg.max()) + 1, MAX_SEGMENTS)):
            inside = (seg == j) & (s >= 0)
            if not inside.any():
                continue
            codes.append(assign[i, j])
            subgoals.append(np.bincount(s[inside]).argmax())
            others.append(labels[starts[i] + np.flatnonzero(inside)[0]])
    return np.array(codes), np.array(subgoals), np.array(others)


def content(dataset: TrajectoryDataset, segment_ids: np.ndarray, assign: np.ndarray, n_codes: int) -> dict:
    """`analysis.code_content` read-outs of the one-hot codes of `dataset`'s segments: what they name if not
    subgoals (first action, the target's displacement or place, the subgoal through the layout)."""
    traces = []
    for local, i in enumerate(dataset.episode_ids):
        episode = dataset.episode(local)
        codes = step_codes(assign, np.array([i]), batch_segments(dataset, np.array([local]), segment_ids))[0]
        z = np.eye(n_codes, dtype=np.float32)[codes.numpy()]
        traces.append(EpisodeTrace(beta=np.zeros(len(z)), z=z, nll=np.zeros(len(z)), subgoals=episode["subgoals"],
                                   targets=episode["targets"]))
    return dataset_code_content(traces, dataset)


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information I(a;b) / sqrt(H(a) H(b)) of two label arrays."""
    return float(normalized_mutual_info_score(a, b, average_method="geometric"))


def naming(codes: np.ndarray, subgoals: np.ndarray, places: np.ndarray) -> dict:
    """How the codes name subgoals: majority-map accuracy (each code read as its most frequent subgoal), NMI
    with the subgoal and with the held place, and the segment count of each code."""
    majority = sum(np.bincount(subgoals[codes == k]).max() for k in np.unique(codes))
    return {"subgoal_accuracy": float(majority / len(codes)),
            "subgoal_majority_rate": float(np.bincount(subgoals).max() / len(subgoals)),
            "nmi_subgoal": nmi(codes, subgoals), "nmi_held_place": nmi(codes, places),
            "code_counts": np.bincount(codes, minlength=int(codes.max()) + 1).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--codes", type=int, default=4, help="number of discrete codes K")
    parser.add_argument("--init", choices=["random", "residual", "subgoal"], default="random")
    parser.add_argument("--segments", choices=["true", "hmm"], default="true",
                        help="true: where the subgoal changes; hmm: where the --hmm switch's filtered state changes")
    parser.add_argument("--hmm", type=Path, help="HMM switch checkpoint (scripts/fit_hmm_switch.py) for --segments hmm")
    parser.add_argument("--lookahead", action="store_true",
                        help="--init residual: cluster each segment's mean residual followed by the next segment's")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--first-steps", type=int, default=300, help="fitting steps before the first reassignment")
    parser.add_argument("--steps", type=int, default=100, help="fitting steps after each reassignment")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--train-episodes", type=int, default=4000, help="training episodes reassigned each round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path, help="write the final controllers to this checkpoint folder")
    parser.add_argument("--load", type=Path,
                        help="start from these controllers (from --save); with --rounds 0 --first-steps 0 it only reads them")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        run = RunFolder(args.run)
        model = run.base_model()
        hook = layer_hook(model.n_layers // 2, model.n_layers)
        dataset = load_dataset(run.clean_data)
        env_config = env_config_from_manifest(load_dataset(run.data).manifest)
        train, held_out = dataset.split(0.2, 0)  # the steering fits' split (holdout 0.2, seed 0)
        train = train.subset(np.arange(min(args.train_episodes, train.num_episodes)))
        held_out = held_out.subset(np.arange(min(1000, held_out.num_episodes)))
        places = place_labels(dataset.arrays, env_config, held=True)
        if args.segments == "hmm":
            if args.hmm is None or args.init == "subgoal":
                raise ConfigError("--segments hmm needs --hmm, and a label-free --init (random or residual)")
            switch = load_hmm_switch(args.hmm)
            segment_ids = np.maximum(hmm_segments(model, train, hook, switch), hmm_segments(model, held_out, hook, switch))
        else:
            segment_ids = flat_segments(dataset)
        rng = np.random.default_rng(derive_seed(args.seed, "discrete-codes"))
        n_total = dataset.arrays["episode_starts"].shape[0]
        if args.init in ("random", "residual"):
            assign = rng.integers(0, args.codes, size=(n_total, MAX_SEGMENTS))
            if args.init == "residual":
                clusters = cluster_segments(model, train, segment_ids, hook, args.codes, args.seed, args.lookahead)
                assign[train.episode_ids] = clusters[train.episode_ids]
        else:
            assign = np.zeros((n_total, MAX_SEGMENTS), dtype=np.int64)
            for i in range(n_total):  # segment j's true subgoal, folded into K codes
                s = dataset.arrays["subgoals"][dataset.arrays["episode_starts"][i]:][:dataset.arrays["episode_lengths"][i]]
                firsts = s[np.flatnonzero(np.r_[True, s[1:] != s[:-1]] & (s >= 0))][:MAX_SEGMENTS]
                assign[i, :len(firsts)] = firsts % args.codes
        torch.manual_seed(derive_seed(args.seed, "discrete-decoder"))
        decoder = (ControllerDecoder(args.codes, int(model.d_model), 16, 32) if args.load is None
                   else load_controller_decoder(args.load).requires_grad_(True))
        opt = torch.optim.AdamW(decoder.parameters(), lr=args.lr, weight_decay=0.03)
        out = {"run": str(args.run), "hook": hook, "codes": args.codes, "init": args.init, "seed": args.seed,
               "segments": args.segments, "hmm": str(args.hmm) if args.hmm else None, "lookahead": args.lookahead,
               "train_episodes": train.num_episodes, "held_out_episodes": held_out.num_episodes,
               "first_steps": args.first_steps, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
               "rounds": []}
        start = time.perf_counter()
        for r in range(args.rounds + 1):
            steps = args.first_steps if r == 0 else args.steps
            before = assign.copy()
            if r > 0:
                train_nll = reassign(model, train, segment_ids, hook, decoder, assign)
            loss = fit_controllers(model, train, segment_ids, hook, decoder, opt, assign, steps, args.batch_size, rng)
            held_nll = reassign(model, held_out, segment_ids, hook, decoder, assign)
            changed = segment_table(train, segment_ids, before, places)[0] != segment_table(train, segment_ids, assign, places)[0]
            row = {"round": r, "fit_loss": loss, "heldout_nll": held_nll,
                   "train_nll_after_reassign": train_nll if r > 0 else None,
                   "changed": float(changed.mean()) if r > 0 else None,
                   "held_out": naming(*segment_table(held_out, segment_ids, assign, places)),
                   "train": naming(*segment_table(train, segment_ids, assign, places)),
                   "content": content(held_out, segment_ids, assign, args.codes),
                   "seconds": time.perf_counter() - start}
            out["rounds"].append(row)
            args.out.write_text(json.dumps(out, indent=1))
            h = row["held_out"]
            print(f"round {r}: held-out NLL {held_nll:.4f}, changed {row['changed']}, subgoal accuracy "
                  f"{h['subgoal_accuracy']:.3f} (majority {h['subgoal_majority_rate']:.3f}), NMI subgoal "
                  f"{h['nmi_subgoal']:.3f}, NMI held place {h['nmi_held_place']:.3f}, counts {h['code_counts']}, "
                  f"{row['seconds']:.0f} s; content {json.dumps(row['content'])}", file=sys.stderr, flush=True)
        if args.save is not None:
            save_controller_decoder(args.save, decoder.eval().requires_grad_(False))
    except InternalRLError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
