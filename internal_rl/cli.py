"""The `internal-rl` command line: parses arguments and calls the library; holds no logic.

Every user-facing failure is an `InternalRLError`; it is printed as one line and the exit status is 2.
"""

import argparse
import sys
from pathlib import Path

from internal_rl.common.errors import InternalRLError


def _generate(args: argparse.Namespace) -> None:
    from internal_rl.data.generate import generate_dataset

    generate_dataset(args.env, episodes=args.episodes, out=Path(args.out), seed=args.seed, force=args.force)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="internal-rl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write expert trajectories to a dataset folder")
    p.add_argument("env", choices=["gridworld"], help="which environment's expert to roll out")
    p.add_argument("--episodes", type=int, required=True, help="number of successful episodes to keep")
    p.add_argument("--out", required=True, help="dataset folder to create")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite an existing dataset")
    p.set_defaults(func=_generate)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except InternalRLError as err:
        print(f"internal-rl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"internal-rl {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
