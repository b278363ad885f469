"""Why do the supervised subgoal controllers steer the base model so little? (a diagnostic)

    OMP_NUM_THREADS=1 .venv/bin/python scripts/steering_diagnostics.py --run RUN --steps 2000 --out OUT.json

Fits (or, with `--steps 0`, loads the steering stage's) supervised controllers U_g at one hook of RUN's base
model on the noiseless expert's data D* (RUN/data-clean, as `reproduce` does), then rolls them out
(`analysis.steering.evaluate_controllers`: single subgoal, override of an unseen transition, chained on the
post-training and the pretraining tasks) with sampled, temperature-0.5 and greedy low-level actions, each
beside the uncontrolled base model and the noiseless expert on the same layouts. Every failed episode is
then put in one of four classes by the colour that ended it, measured against the colour the episode was
heading for:

- another subgoal: the first colour of another pair, i.e. the model went for another subgoal (weak steering);
- own pair reversed: the other colour of the pair it should be completing (order within the pair);
- stray colour: the second colour of another pair, which no subgoal heads for first: a navigation slip;
- timeout: no colour at all within the horizon.

For the override tasks h-g the first class is split once h is done: the habitual successors of h (the
pairs that follow h in some pretraining task) against any other pair. On the post-training task,
"reached" gives the fraction of episodes that complete at least k subgoals, k = 1, 2, ...: where along
the composition the chain breaks. `--gain` scales the controllers (on every step, or only on the first
`--gain-steps` steps after each switch). `--finetune-lr` trains the base model's weights with the controllers
(a goal-conditioned policy given the true subgoal through the same path): not steering, but the ceiling of
what this architecture, data and budget execute when told the subgoal. Prints one table and writes OUT.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from internal_rl.analysis.code_content import colour_cells, place_labels
from internal_rl.analysis.steering import evaluate_controllers
from internal_rl.analysis.subgoal_controllers import (
    SteeringConfig,
    action_nll,
    controller_intervention,
    fit_subgoal_controllers,
    heldout_action_nll,
    steer_preset,
    subgoal_codes,
)
from internal_rl.common.logging import progress
from internal_rl.common.seeding import derive_seed
from internal_rl.models.controller import (
    ControllerDecoder,
    ControllerParams,
    load_controller_decoder,
    save_controller_decoder,
)
from internal_rl.common.config import replace
from internal_rl.common.errors import InternalRLError, check
from internal_rl.data.dataset import TrajectoryDataset, load_dataset
from internal_rl.envs.registry import spec_of_config
from internal_rl.envs.tasks import GRID_SUBGOAL_PAIRS, SPLITS, subgoal_transitions
from internal_rl.models.hooks import layer_hook
from internal_rl.pipeline.run_folder import RunFolder
from internal_rl.pipeline.run_steps import load_steering_decoder

LABELS = ("subgoal", "shared", "colour", "place", "held-place")
MODES = {"sampled": dict(greedy=False, temperature=1.0), "t0.5": dict(greedy=False, temperature=0.5),
         "greedy": dict(greedy=True, temperature=1.0)}


def failure_classes(rollout: dict[str, np.ndarray], tasks: np.ndarray) -> dict[str, float]:
    """Fractions of all episodes in each failure class (module docstring); tasks int [N, L] (-1 padded)."""
    n = len(rollout["success"])
    heading = tasks[np.arange(n), np.minimum(rollout["progress"], tasks.shape[1] - 1)]  # the colour it was heading for
    last = rollout["last_colour"]
    wrong = rollout["wrong_colour"]
    same_pair = (last // 2) == (heading // 2)
    return {
        "another_subgoal": float((wrong & ~same_pair & (last % 2 == 0)).mean()),
        "own_pair_reversed": float((wrong & same_pair).mean()),
        "stray_colour": float((wrong & ~same_pair & (last % 2 == 1)).mean()),
        "timeout": float(rollout["timeout"].mean()),
    }


def habit_split(rollout: dict[str, np.ndarray], tasks: np.ndarray) -> dict[str, float]:
    """Override tasks h-g: of the episodes that completed h, the fractions that then entered the first colour
    of a habitual successor of h (seen after h in pretraining), of g (success or on the way), or another."""
    seen = subgoal_transitions(SPLITS["gridworld"].pretrain, GRID_SUBGOAL_PAIRS)
    done_h = rollout["progress"] >= 2
    h = tasks[:, 0] // 2
    last = rollout["last_colour"]
    to_habit = done_h & rollout["wrong_colour"] & (last % 2 == 0) & np.array(
        [(int(a), int(b) // 2) in seen for a, b in zip(h, last)])
    count = max(int(done_h.sum()), 1)
    return {"completed_h": float(done_h.mean()), "then_habitual_successor": float(to_habit.sum() / count),
            "then_g": float((done_h & (rollout["progress"] >= 3)).sum() / count)}


def place_of(held: bool):
    """label_of for controllers fitted on place labels: the cell of each env's target colour, or with `held`
    of its subgoal's first colour (0 once an env is done)."""

    def label_of(env) -> np.ndarray:
        target = env.target()
        return colour_cells(env.layouts, np.where(target >= 0, (target // 2) * 2, -1) if held else target)

    return label_of


class GainedDecoder(torch.nn.Module):
    """Controllers U_g at two strengths: codes 0..K-1 give `decoder`'s U_g, codes K..2K-1 give `gain` U_g
    (U scaled through its A factor; an affine shift too), so a rollout can pick the strength per step."""

    def __init__(self, decoder: ControllerDecoder, gain: float):
        super().__init__()
        self.decoder, self.gain, self.n_z = decoder, gain, 2 * decoder.n_z

    def forward(self, z: torch.Tensor) -> ControllerParams:
        k = self.decoder.n_z
        params = self.decoder(z[..., :k] + z[..., k:])
        scale = 1 + (self.gain - 1) * z[..., k:].sum(-1)
        shift = None if params.shift is None else params.shift * scale[..., None]
        return ControllerParams(params.a * scale[..., None, None], params.b, shift)


def gained_labels(label_of, n_labels: int, steps: int):
    """label_of for a GainedDecoder: `label_of(env)`'s controller, at the gained strength on the first `steps`
    steps after each env's controller changes (0: always)."""
    state: dict = {}

    def gained(env) -> np.ndarray:
        labels = label_of(env)
        if state.get("env") is not env:  # a new rollout
            state.update(env=env, last=np.full_like(labels, -1), age=np.zeros_like(labels))
        state["age"] = np.where(labels == state["last"], state["age"] + 1, 0)
        state["last"] = labels
        strong = (state["age"] < steps) if steps > 0 else np.ones_like(labels, dtype=bool)
        return np.where(strong, labels + n_labels, labels)

    return gained


def evaluate_mode(model, env_config, config: SteeringConfig, decoder, hook, label_of=None) -> dict:
    """evaluate_controllers plus the failure classes of the single, override and post-training rollouts."""
    classes: dict[str, dict] = {}

    def classify(name: str, tasks, rollout: dict[str, np.ndarray]) -> None:
        if tasks is None:  # the pretraining tasks, sampled by the env: not classified
            return
        padded = np.full((len(tasks), max(map(len, tasks))), -1)
        for i, task in enumerate(tasks):
            padded[i, :len(task)] = task
        classes[name] = {"failures": failure_classes(rollout, padded)}
        if name == "override":
            classes[name]["after_h"] = habit_split(rollout, padded)
        if name == "posttrain":  # where along the composition episodes stop
            pairs = rollout["progress"] // 2
            classes[name]["reached"] = [float((pairs >= k).mean()) for k in range(1, padded.shape[1] // 2 + 1)]

    result = evaluate_controllers(model, env_config, config, decoder=decoder, hook=hook, on_rollout=classify,
                                  label_of=label_of)
    for name, key in (("single", "single"), ("override", "override"), ("posttrain", "chained_posttrain")):
        result[key].update(classes[name])
    return result


def segment_start_weights(subgoals: torch.Tensor, mask: torch.Tensor, weight: float, steps: int) -> torch.Tensor:
    """[B, T] weights: `weight` on the first `steps` steps of every subgoal segment, 1 elsewhere, 0 on padding."""
    change = torch.ones_like(mask)
    change[:, 1:] = subgoals[:, 1:] != subgoals[:, :-1]
    start = torch.zeros_like(mask)
    for lag in range(steps):  # within `steps` of a segment start
        start[:, lag:] |= change[:, : change.shape[1] - lag]
    return torch.where(start, weight, 1.0) * mask


def fit_weighted(model, dataset, hook: str, config: SteeringConfig, weight: float, steps: int):
    """`fit_subgoal_controllers` with the NLL weighted towards segment starts (a deviation, for this diagnostic)."""
    train, held_out = dataset.split(config.holdout_fraction, config.seed)
    torch.manual_seed(derive_seed(config.seed, "controller", hook))
    decoder = ControllerDecoder(config.n_subgoals, int(model.d_model), config.rank, config.hidden, config.shift)
    opt = torch.optim.AdamW(decoder.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    batches = train.infinite_batches(min(config.batch_size, train.num_episodes), seed=derive_seed(config.seed, "batches"))
    for _ in progress(range(config.steps), desc=f"weighted controllers {hook}"):
        batch = next(batches)
        z = subgoal_codes(batch["subgoals"], config.n_subgoals)
        out = model(batch["observations"], interventions={hook: controller_intervention(decoder, z)})
        nll = model.action_nll(out.action_params, batch["actions"])
        w = segment_start_weights(batch["subgoals"], batch["mask"], weight, steps)
        loss = (nll * w).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    decoder.eval().requires_grad_(False)
    return decoder, {"heldout_nll_controlled": heldout_action_nll(model, held_out, config, decoder=decoder, hook=hook)}


def fit_finetuned(model, dataset, hook: str, config: SteeringConfig, base_lr: float):
    """`fit_subgoal_controllers` with the base model's weights trained too, at `base_lr` (a goal-conditioned
    upper bound for this diagnostic; the model is changed in place and frozen again afterwards)."""
    train, held_out = dataset.split(config.holdout_fraction, config.seed)
    torch.manual_seed(derive_seed(config.seed, "controller", hook))
    decoder = ControllerDecoder(config.n_subgoals, int(model.d_model), config.rank, config.hidden, config.shift)
    model.requires_grad_(True)
    opt = torch.optim.AdamW([{"params": decoder.parameters(), "lr": config.lr},
                             {"params": model.parameters(), "lr": base_lr}], weight_decay=config.weight_decay)
    batches = train.infinite_batches(min(config.batch_size, train.num_episodes), seed=derive_seed(config.seed, "batches"))
    for _ in progress(range(config.steps), desc=f"fine-tuned model and controllers {hook}"):
        batch = next(batches)
        z = subgoal_codes(batch["subgoals"], config.n_subgoals)
        loss = action_nll(model, batch, {hook: controller_intervention(decoder, z)})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval().requires_grad_(False)
    decoder.eval().requires_grad_(False)
    return decoder, {"heldout_nll_controlled": heldout_action_nll(model, held_out, config, decoder=decoder, hook=hook)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--layer", type=int, help="residual layer to control (default L/2)")
    parser.add_argument("--steps", type=int, default=0, help="fitting steps (0: load the steering stage's controller)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--data", type=Path, help="training data (default RUN/data-clean, D*)")
    parser.add_argument("--episodes", type=int, default=1024, help="rollout episodes per evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated of {', '.join(MODES)}; empty: fit only")
    parser.add_argument("--rank", default="16", help="rank of each U_g, or full (default 16, the paper's grid)")
    parser.add_argument("--start-weight", type=float, default=1.0,
                        help="weight of the NLL on a subgoal segment's first --start-steps steps (default 1: the "
                             "paper's plain mean); where the subgoal must be chosen, the rest of a segment follows")
    parser.add_argument("--start-steps", type=int, default=3)
    parser.add_argument("--shift", action="store_true",
                        help="affine controllers e + U_g e + c_g (a deviation): an added vector c_g does not depend on "
                             "the context e, so it can push towards g where the context points elsewhere")
    parser.add_argument("--labels", choices=LABELS, default="subgoal",
                        help="what indexes the fitted controllers: subgoal (the default); shared, one controller for "
                             "every step (what a controller gains without the subgoal, e.g. from the data's "
                             "tie-breaking; evaluated as controller 0 throughout); colour, the colour the expert heads for; "
                             "place, that colour's cell; held-place, the cell of the segment's first colour, held for "
                             "the segment (rolled out with the controller of the target's cell, or of its pair's "
                             "first colour's). colour fits only (no rollouts).")
    parser.add_argument("--save", type=Path,
                        help="also write the fitted controllers to this checkpoint folder (for rl_over_subgoal_controllers.py)")
    parser.add_argument("--controllers", type=Path,
                        help="with --steps 0: roll out the controllers saved here (by --save) instead of the steering stage's")
    parser.add_argument("--gain", type=float, default=1.0,
                        help="roll out e + G U_g e instead of e + U_g e (controller strength; default 1, as fitted)")
    parser.add_argument("--gain-steps", type=int, default=0,
                        help="apply --gain only on the first N steps after each controller switch (0: on every step)")
    parser.add_argument("--finetune-lr", type=float, default=0.0,
                        help="also train the base model's weights at this lr (0, the default: frozen, as the paper); "
                             "the goal-conditioned ceiling, not steering")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        run = RunFolder(args.run)
        model = run.base_model()
        hook = layer_hook(args.layer if args.layer is not None else model.n_layers // 2, model.n_layers)
        # The env as the data were generated (the pretraining tasks); the chained evaluation runs on the
        # env's post-training task.
        env_config = run.env_config()
        config = replace(steer_preset("quick"), episodes=args.episodes, seed=args.seed)
        fit: dict = {"steps": args.steps}
        if args.steps > 0:
            dataset = load_dataset(args.data or run.clean_data)
            n_labels = config.n_subgoals
            if args.labels != "subgoal":
                arrays = dict(dataset.arrays)
                if args.labels == "shared":
                    arrays["subgoals"] = np.where(arrays["subgoals"] >= 0, 0, arrays["subgoals"])
                elif args.labels == "colour":
                    arrays["subgoals"] = np.where(arrays["subgoals"] >= 0, arrays["targets"], -1)
                    n_labels = env_config.n_colours
                else:
                    arrays["subgoals"] = place_labels(arrays, env_config, held=args.labels == "held-place")
                    n_labels = env_config.size**2
                dataset = TrajectoryDataset.from_arrays(arrays, dataset.manifest)
            rank = None if args.rank == "full" else int(args.rank)
            fit_config = replace(config, steps=args.steps, batch_size=args.batch_size, lr=args.lr, rank=rank,
                                 shift=args.shift, n_subgoals=n_labels)
            if args.finetune_lr > 0:
                check(args.start_weight == 1.0, "--finetune-lr takes the plain mean (no --start-weight)")
                decoder, metrics = fit_finetuned(model, dataset, hook, fit_config, args.finetune_lr)
            elif args.start_weight == 1.0:
                decoder, metrics = fit_subgoal_controllers(model, dataset, hook, fit_config)
            else:
                decoder, metrics = fit_weighted(model, dataset, hook, fit_config, args.start_weight, args.start_steps)
            fit.update(metrics, batch_size=args.batch_size, lr=args.lr, data=str(args.data or run.clean_data),
                       labels=args.labels, rank=args.rank, shift=args.shift, finetune_lr=args.finetune_lr, start_weight=args.start_weight, start_steps=args.start_steps,
                       heldout_nll_uncontrolled=heldout_action_nll(
                           model, dataset.split(fit_config.holdout_fraction, fit_config.seed)[1], fit_config))
            print(f"held-out NLL {fit['heldout_nll_uncontrolled']:.4f} -> {fit['heldout_nll_controlled']:.4f}",
                  file=sys.stderr)
            if args.save is not None:
                save_controller_decoder(args.save, decoder)
        elif args.controllers is not None:
            decoder = load_controller_decoder(args.controllers)
            fit["source"] = str(args.controllers)
        else:
            decoder = load_steering_decoder(args.run, hook)
            fit["source"] = "the steering stage's controller"
        results = {"hook": hook, "fit": fit, "gain": args.gain, "gain_steps": args.gain_steps, "modes": {}}
        modes = [m for m in args.modes.split(",") if m] if args.labels != "colour" else []
        label_of = place_of(args.labels == "held-place") if args.labels in ("place", "held-place") else None
        if args.gain != 1.0:
            if label_of is None:
                table = np.maximum(spec_of_config(env_config).subgoal_table(env_config.n_colours), 0)
                label_of = lambda env: table[env.target()]  # noqa: E731 (the rollout's own default, as a function)
            label_of = gained_labels(label_of, decoder.n_z, args.gain_steps)
            decoder = GainedDecoder(decoder, args.gain)
        for mode in modes:
            mode_config = replace(config, **MODES[mode])
            results["modes"][mode] = {
                "controlled": evaluate_mode(model, env_config, mode_config, decoder, hook, label_of),
                "uncontrolled": evaluate_mode(model, env_config, mode_config, None, None),
            }
            print(f"{mode}:", file=sys.stderr)
            for name in ("single", "override", "chained_posttrain", "chained_pretrain"):
                c, u = (results["modes"][mode][k][name] for k in ("controlled", "uncontrolled"))
                print(f"  {name:18s} {c['success']:.3f} (uncontrolled {u['success']:.3f}, expert "
                      f"{c['expert_success']:.3f}, normalised {c['normalised_success']:.3f}) "
                      f"{json.dumps(c.get('failures', {}))} {json.dumps(c.get('after_h', c.get('reached', {})))}", file=sys.stderr)
        args.out.write_text(json.dumps(results, indent=1))
    except InternalRLError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
