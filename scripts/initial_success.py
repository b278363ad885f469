"""Initial success of RL methods on many sampled episodes, so that a zero is a measured zero (issue G3).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/initial_success.py --run RUN --task 0-1-2-3-4-5 --episodes 100000 \\
        --method raw | --method codes --controllers C --switch subgoal|learned|hmm [--hmm SWITCH] [--out OUT.json]

Rolls out each method's policy before any update, as `train_rl` does for its held-out evaluation (the
same collectors, layouts drawn from a held-out seed): raw-action RL's initial policy is the base model
itself; internal RL's is a fresh code policy over the codes of `rl_over_subgoal_controllers.py`
(`--method codes`). Reports the success rate with a 95% Wilson interval, the noiseless expert's success on
the same layouts and the ratio. Prints one line and writes OUT.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from internal_rl.common.errors import InternalRLError
from internal_rl.common.seeding import derive_seed, seed_everything
from internal_rl.envs.tasks import parse_task
from internal_rl.pipeline.rl_stage import env_config_of_run
from internal_rl.pipeline.run_folder import RunFolder
from internal_rl.rl.ppo import PPOConfig
from internal_rl.rl.training import RLConfig, evaluate, expert_ceiling, method_setup

sys.path.insert(0, str(Path(__file__).parent))
from rl_over_subgoal_controllers import controller_codes  # noqa: E402


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial rate (meaningful at 0 successes, unlike the normal one)."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--method", choices=["raw", "codes"], required=True)
    parser.add_argument("--controllers", type=Path)
    parser.add_argument("--switch", choices=["subgoal", "learned", "hmm"], default="subgoal")
    parser.add_argument("--hmm", type=Path)
    parser.add_argument("--task", default="0-1-2-3-4-5")
    parser.add_argument("--episodes", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    try:
        run = RunFolder(args.run)
        base_model = run.base_model()
        env_config = env_config_of_run(args.run, base_model, parse_task(args.task))
        env_switch = "learned" if args.switch == "hmm" else args.switch
        config = RLConfig(ppo=PPOConfig(episodes_per_batch=args.batch_size), policy_width=64, policy_heads=4,
                          switch=env_switch)
        codes = None if args.method == "raw" else controller_codes(run, base_model, args.controllers, args.switch, args.hmm)
        generator = seed_everything(derive_seed(args.seed, "rl", "raw" if args.method == "raw" else "internal"))
        _, collect = method_setup("raw" if args.method == "raw" else "internal", base_model, codes, env_config, config, generator)
        start = time.perf_counter()
        with torch.no_grad():
            result = evaluate(collect, derive_seed(args.seed, "held-out"), args.episodes, args.batch_size)
        expert = expert_ceiling(env_config, derive_seed(args.seed, "held-out"), args.episodes, args.batch_size)
        successes = round(result["success_rate"] * args.episodes)
        low, high = wilson(successes, args.episodes)
        out = {"run": str(args.run), "method": args.method, "controllers": str(args.controllers), "switch": args.switch,
               "hmm": str(args.hmm) if args.hmm else None, "task": args.task, "seed": args.seed, **result,
               "successes": successes, "wilson_95": [low, high], "expert_success": expert,
               "normalised_success": result["success_rate"] / expert, "seconds": time.perf_counter() - start}
        print(f"{args.method} on {args.task}: {successes} / {args.episodes} = {result['success_rate']:.2e} "
              f"(95%: {low:.1e}-{high:.1e}); expert {expert:.3f}; {out['seconds']:.0f} s", file=sys.stderr)
        if args.out is not None:
            args.out.write_text(json.dumps(out, indent=1))
    except InternalRLError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
