"""Train the ant-pinpad PPO expert (paper App. C.1) and save its weights; prints one line per update.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/train_ant_expert.py --out runs/ant_expert \
        [--steps 2000000] [--minutes 30] [--envs 16] [--seed 0] [--logdir runs/ant_expert/tb]

Writes OUT/model.safetensors and OUT/config.json (configs and the per-update statistics).
"""

import argparse
import sys
from pathlib import Path

from internal_rl.common.errors import InternalRLError
from internal_rl.envs.ant_expert import AntPPOConfig, train_ant_expert
from internal_rl.envs.ant_pinpad import AntPinpadConfig


def print_row(row: dict) -> None:
    print(
        f"steps {row['env_steps']:>9,.0f}  {row['seconds']:7.0f}s  dense/step {row['dense_reward']:+.3f}  "
        f"task/step {row['task_reward']:.4f}  episodes {row['episodes_ended']:4.0f}  success {row['success_rate']:.2f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=AntPPOConfig.total_steps, help="environment steps")
    parser.add_argument("--minutes", type=float, default=None, help="stop after this much wall time")
    parser.add_argument("--envs", type=int, default=AntPPOConfig.num_envs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logdir", type=Path, default=None, help="TensorBoard folder")
    args = parser.parse_args()
    try:
        ppo = AntPPOConfig(total_steps=args.steps, num_envs=args.envs, seed=args.seed)
        _, history = train_ant_expert(
            AntPinpadConfig(), ppo, out=args.out, logdir=args.logdir,
            max_seconds=None if args.minutes is None else 60 * args.minutes, show_progress=False,
            on_update=print_row,
        )
    except InternalRLError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"{len(history)} updates; ", end="")
    print(f"wrote {args.out}/model.safetensors")


if __name__ == "__main__":
    main()
