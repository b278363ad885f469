"""Internal RL warm-started from a code policy cloned from expert demonstrations (a diagnostic).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/rl_from_cloned_codes.py --run RUN --task 0-1-2-3 --lr 1e-4 --seeds 2

Internal RL starts its code policy at the prior N(0, I), as the paper does. Where it does not learn, this
tells whether RL cannot improve on the code space at all, or only does not find its good codes from the
prior: the expert solves the task on `--demonstrations` layouts, the metacontroller's encoder reads each
demonstration and gives its codes at its switches, the code policy is fitted to them
(`analysis.code_replay.clone_demonstration_codes`), and RL then runs with the grid world's `long` preset
from there. Results go to OUT/rl/internal/seed_<k>.json (default OUT: RUN/cloned-codes), one line per seed.
Grid world only (it needs the grid expert); the metacontroller should have trained on the data whose
expert it is compared with (`--noiseless` for a metacontroller trained on D*, as `reproduce --preset long`).
"""

import argparse
import json
import sys
from pathlib import Path

from internal_rl.analysis.code_replay import clone_demonstration_codes, demonstration_codes
from internal_rl.common.errors import InternalRLError
from internal_rl.data.dataset import TrajectoryDataset
from internal_rl.data.generate import rollout_chunk
from internal_rl.envs.tasks import parse_task, with_tasks
from internal_rl.pipeline.rl_stage import env_config_of_run, load_method_metacontroller, run_rl
from internal_rl.pipeline.run_folder import RunFolder
from internal_rl.rl.training import rl_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--task", default="0-1-2-3")
    parser.add_argument("--out", type=Path, help="results folder (default: RUN/cloned-codes)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4, help="RL learning rate after cloning")
    parser.add_argument("--episodes", type=int, help="RL episodes (default: the long preset's 32,768)")
    parser.add_argument("--demonstrations", type=int, default=4096, help="expert episodes to clone from")
    parser.add_argument("--clone-steps", type=int, default=500)
    parser.add_argument("--noiseless", action="store_true", help="the noiseless expert's demonstrations (D*)")
    args = parser.parse_args()

    task = parse_task(args.task)
    base = RunFolder(args.run).base_model()
    metacontroller = load_method_metacontroller(args.run, "internal")
    env_config = with_tasks(env_config_of_run(args.run, base, task), [task])
    # Layouts from their own seed: RL trains and evaluates on layouts drawn from its seeds.
    arrays, _ = rollout_chunk(env_config, args.demonstrations, 12345, 0.0, args.noiseless)
    demos = demonstration_codes(base, metacontroller, TrajectoryDataset.from_arrays(arrays))
    config = rl_config("long", "internal", episodes=args.episodes, lr=args.lr)
    for seed in range(args.seeds):
        losses: list[float] = []

        def clone(policy):
            losses.extend(clone_demonstration_codes(policy, demos, steps=args.clone_steps, seed=seed))

        result = run_rl("internal", args.run, task, seed, config, show_progress=False,
                        results_dir=args.out or args.run / "cloned-codes", init_policy=clone)
        print(json.dumps({
            "seed": seed, "demonstrations": len(demos), "clone_nll": [round(losses[0], 2), round(losses[-1], 2)],
            "held_out_success": [result["initial_eval"]["success_rate"], result["final_eval"]["success_rate"]],
            "training_success_every_16_updates": [round(c["success_rate"], 3) for c in result["curve"][::16]],
        }))


if __name__ == "__main__":
    try:
        main()
    except InternalRLError as err:
        sys.exit(f"error: {err}")
