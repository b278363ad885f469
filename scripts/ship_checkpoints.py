"""Ship a run's trained models with the package (internal_rl/shipped/NAME), for `reproduce --preset demo`.

    .venv/bin/python scripts/ship_checkpoints.py --run runs/demo --name gridworld-quick \\
        --command "internal-rl --threads 1 reproduce gridworld --preset quick --out runs/demo" --commit COMMIT

Copies the base model and the metacontrollers (weights, config, checksums and their summaries; no
optimizer state) and writes provenance.json: the command and commit that trained them, the run's
reproduce record, the dataset's checksum, and the base model's NLL on fresh held-out episodes.
"""

import argparse
import sys
from pathlib import Path

from internal_rl.common.errors import InternalRLError
from internal_rl.pipeline.shipped import ship_run

STAGES = ("pretrain", "metacontroller", "metacontroller-no-switch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--command", required=True, help="the command that trained RUN")
    parser.add_argument("--commit", required=True, help="the commit of the code that trained RUN")
    parser.add_argument("--stages", nargs="+", default=list(STAGES))
    args = parser.parse_args()
    try:
        out = ship_run(args.run, args.name, args.command, args.commit, tuple(args.stages))
    except InternalRLError as err:
        sys.exit(f"error: {err}")
    print(out)


if __name__ == "__main__":
    main()
