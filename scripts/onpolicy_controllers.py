"""Can a linear controller at L/2 make the base model do what it never saw? Controllers fitted on their own rollouts.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/onpolicy_controllers.py --run RUN --init CONTROLLERS \
        --tasks pretrain|compositions --rounds 8 --save OUT_CONTROLLERS --out OUT.json

The supervised subgoal controllers (analysis/subgoal_controllers.py) are fitted by teacher forcing on the
expert's data D*: every history they see heads straight for its subgoal. Rolled out, the controlled model
samples its own steps, and one step towards another colour makes the history point elsewhere, a context
no fit saw. This diagnostic (a DAgger-style deviation, Ross et al. 2011) fits the same controllers on the
controlled model's own rollouts instead: each round rolls the current controllers out (sampled actions,
the controller of each env's current subgoal, as in `analysis.steering`), labels every visited step with
the noiseless expert's action distribution towards the colour the env heads for
(`envs.expert.expert_action_distribution`: uniform over shortest-path moves), adds the episodes to the
aggregate and trains the decoder further on it by cross-entropy to those distributions.

`--tasks pretrain` rolls out the pretraining tasks and single subgoals only (no unseen transition is ever
practised: a legitimate fit); `--tasks compositions` rolls out random sequences of 6 subgoals (every
transition, seen or not, except the post-training task itself): an upper bound on what linear control at
this layer can do. Rollout layouts come from seeds the evaluation never uses. Evaluate the saved
controllers with `scripts/steering_diagnostics.py --run RUN --controllers OUT_CONTROLLERS`.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from internal_rl.analysis.steering import _colour_to_subgoal, _next_actions
from internal_rl.analysis.subgoal_controllers import controller_intervention, subgoal_codes
from internal_rl.common.errors import InternalRLError
from internal_rl.common.logging import progress
from internal_rl.common.seeding import derive_seed
from internal_rl.envs.expert import expert_action_distribution
from internal_rl.envs.registry import make_batched_env, spec_of_config
from internal_rl.models.controller import load_controller_decoder, save_controller_decoder
from internal_rl.models.hooks import layer_hook
from internal_rl.pipeline.run_folder import RunFolder


def composition_tasks(rng: np.random.Generator, n: int, subgoal_tasks, length: int, exclude) -> list[tuple[int, ...]]:
    """`n` random tasks chaining `length` of `subgoal_tasks` (each subgoal's colours) with no subgoal repeated
    back to back, none equal to `exclude`."""
    k = len(subgoal_tasks)
    tasks = []
    while len(tasks) < n:
        subgoals = [int(rng.integers(k))]
        while len(subgoals) < length:
            subgoals.append(int((subgoals[-1] + 1 + rng.integers(k - 1)) % k))
        task = tuple(c for g in subgoals for c in subgoal_tasks[g])
        if task != tuple(exclude):
            tasks.append(task)
    return tasks


@torch.no_grad()
def controlled_rollout(model, env_config, decoder, hook: str, tasks, seed: int):
    """Roll the controlled model out on `tasks` (sampled actions): per episode its alive steps' observations
    (uint8), subgoals and the expert's action distribution towards each step's target colour; and the
    episodes' success (bool [N])."""
    n = len(tasks)
    env = make_batched_env(env_config, n)
    obs = env.reset(seed=seed, tasks=tasks)
    state = model.init_state(n, env_config.horizon + 1)
    generator = torch.Generator().manual_seed(seed)
    table = _colour_to_subgoal(spec_of_config(env_config), env_config.n_colours)
    steps_obs, steps_target, steps_alive = [], [], []
    for _ in range(env_config.horizon):
        alive = ~np.asarray(env.done)
        if not alive.any():
            break
        target = env.target()
        steps_obs.append(obs.astype(np.uint8))
        steps_target.append(target)
        steps_alive.append(alive)
        z = subgoal_codes(torch.from_numpy(table[target]), decoder.n_z)[:, None, :]
        out = model.step(torch.as_tensor(obs, dtype=torch.float32), state,
                         interventions={hook: controller_intervention(decoder, z)})
        obs, _, _, _, _ = env.step(_next_actions(model, out.action_params, generator, greedy=False).numpy())
    observations, targets, alive = np.stack(steps_obs, 1), np.stack(steps_target, 1), np.stack(steps_alive, 1)
    episode, step = np.nonzero(alive)
    dist = expert_action_distribution(observations[:, 0], observations[episode, step], targets[episode, step],
                                      episode, env_config)
    lengths = alive.sum(1)
    dist_of = np.split(dist, np.cumsum(lengths)[:-1])
    return [{"observations": observations[i, :lengths[i]], "subgoals": table[targets[i, :lengths[i]]],
             "expert": dist_of[i].astype(np.float32)} for i in range(n)], np.asarray(env.success).copy()


def padded_batch(episodes: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Pad a list of episodes to one batch: observations [B,T,D], subgoals [B,T] (-1 padded), expert [B,T,A], mask."""
    T = max(len(e["subgoals"]) for e in episodes)
    B, D, A = len(episodes), episodes[0]["observations"].shape[1], episodes[0]["expert"].shape[1]
    obs, sub = np.zeros((B, T, D), np.float32), np.full((B, T), -1, np.int64)
    expert, mask = np.zeros((B, T, A), np.float32), np.zeros((B, T), bool)
    for i, e in enumerate(episodes):
        L = len(e["subgoals"])
        obs[i, :L], sub[i, :L], expert[i, :L], mask[i, :L] = e["observations"], e["subgoals"], e["expert"], True
    return {k: torch.from_numpy(v) for k, v in
            dict(observations=obs, subgoals=sub, expert=expert, mask=mask).items()}


def cross_entropy(model, decoder, hook: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Masked mean of -sum_a p*(a) log p(a | o_{1:t}, U_g) over a batch, p* the expert's distribution."""
    z = subgoal_codes(batch["subgoals"], decoder.n_z)
    out = model(batch["observations"], interventions={hook: controller_intervention(decoder, z)})
    logp = torch.log_softmax(out.action_params[..., : batch["expert"].shape[-1]], -1)
    ce = -(batch["expert"] * logp).sum(-1)
    mask = batch["mask"].float()
    return (ce * mask).sum() / mask.sum().clamp_min(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--init", type=Path, required=True, help="controllers to start from (steering_diagnostics --save)")
    parser.add_argument("--layer", type=int, help="residual layer the controllers act on (default L/2)")
    parser.add_argument("--tasks", choices=("pretrain", "compositions"), default="pretrain")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=512, help="rollout episodes per round")
    parser.add_argument("--steps", type=int, default=250, help="fitting steps per round")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        run = RunFolder(args.run)
        model = run.base_model()
        hook = layer_hook(args.layer if args.layer is not None else model.n_layers // 2, model.n_layers)
        env_config = run.env_config()
        spec = spec_of_config(env_config)
        decoder = load_controller_decoder(args.init).train().requires_grad_(True)
        opt = torch.optim.AdamW(decoder.parameters(), lr=args.lr, weight_decay=0.03)
        rng = np.random.default_rng(derive_seed(args.seed, "onpolicy"))
        aggregate: list[dict[str, np.ndarray]] = []
        history = []
        for r in range(args.rounds):
            start = time.time()
            seed = derive_seed(args.seed, "onpolicy-round", r)
            half = args.episodes // 2
            singles = [spec.subgoal_tasks[g] for g in rng.integers(len(spec.subgoal_tasks), size=half)]
            if args.tasks == "pretrain":
                multi = [tuple(env_config.tasks[i]) for i in rng.integers(len(env_config.tasks), size=half)]
            else:
                multi = composition_tasks(rng, half, spec.subgoal_tasks, 6, spec.posttrain_task)
            decoder.eval()
            fresh, success = controlled_rollout(model, env_config, decoder, hook, singles + multi, seed)
            aggregate += fresh
            decoder.train()
            losses = []
            for _ in progress(range(args.steps), desc=f"round {r}"):
                picks = rng.integers(len(aggregate), size=args.batch_size)
                loss = cross_entropy(model, decoder, hook, padded_batch([aggregate[i] for i in picks]))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
            steps_per_episode = float(np.mean([len(e["subgoals"]) for e in fresh]))
            history.append({"round": r, "episodes": len(aggregate), "rollout_success_single": float(success[:half].mean()),
                            "rollout_success_multi": float(success[half:].mean()), "fresh_steps_per_episode": steps_per_episode,
                            "loss": float(np.mean(losses[-max(1, args.steps // 10):])), "seconds": time.time() - start})
            print(json.dumps(history[-1]), file=sys.stderr)
            # After every round, so a stopped run leaves its record and its controllers so far.
            save_controller_decoder(args.save, decoder)
            args.out.write_text(json.dumps({"hook": hook, "init": str(args.init), "tasks": args.tasks,
                                            "args": {k: str(v) for k, v in vars(args).items()}, "rounds": history},
                                           indent=1))
    except InternalRLError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
