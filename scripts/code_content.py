"""What do a grid-world metacontroller's segment codes carry? (`internal_rl.analysis.code_content`)

    OMP_NUM_THREADS=1 .venv/bin/python scripts/code_content.py --run RUN [--stage metacontroller] \
        [--data RUN/data-clean] [--episodes 1000] [--out FILE.json]

Reads the stage's held-out episodes (the split it was not trained on), runs the metacontroller with z~ = mu,
and prints one JSON object: the subgoal, first-action, displacement, place and "subgoal through the layout"
read-outs of every true segment's code.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from internal_rl.analysis.code_content import code_content, segments_of
from internal_rl.analysis.switching import _held_out_of, collect_traces
from internal_rl.common.checkpoint import load_checkpoint
from internal_rl.common.errors import InternalRLError
from internal_rl.data.dataset import read_manifest
from internal_rl.data.generate import env_config_from_manifest
from internal_rl.envs.tasks import GRID_SUBGOAL_PAIRS
from internal_rl.metacontroller.modules import load_metacontroller
from internal_rl.pipeline.run_folder import RunFolder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--stage", default="metacontroller")
    parser.add_argument("--data", type=Path, default=None, help="dataset folder (default: the one the stage trained on)")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    run = RunFolder(args.run)
    checkpoint = run.metacontroller_checkpoint(args.stage)
    _, config, _ = load_checkpoint(checkpoint)
    held_out = _held_out_of(config, args.data)
    data_path = Path(args.data) if args.data is not None else Path(config["dataset"]["path"])
    env_config = env_config_from_manifest(read_manifest(data_path))
    traces = collect_traces(run.base_model(args.stage), load_metacontroller(checkpoint), held_out,
                            args.episodes)
    episodes = [held_out.episode(i) for i in range(len(traces))]
    segments = segments_of(traces, [e["observations"] for e in episodes], [e["actions"] for e in episodes],
                           [pair[0] for pair in GRID_SUBGOAL_PAIRS], env_config)
    result = {"run": str(args.run), "stage": args.stage, "episodes": len(traces), **code_content(segments)}
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    except InternalRLError as error:
        sys.exit(f"error: {error}")
