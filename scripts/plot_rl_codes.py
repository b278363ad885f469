"""Learning curves of `rl_over_subgoal_controllers.py` results (and `internal-rl rl` seed files), one figure.

    .venv/bin/python scripts/plot_rl_codes.py OUT.png LABEL=RESULT.json [LABEL=RESULT.json ...] [--title T] [--ymax Y]

A RESULT is either a `rl_over_subgoal_controllers.py` output (every seed in it) or a folder of `internal-rl rl`
seed files (RUN/rl/<method>). Draws the expert-normalised success against episodes (log axis), median over
seeds with the 25-75% band, each curve starting at its held-out success before training; a result with a
true-choice ceiling also gets it as a dashed line.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from internal_rl.analysis.plots import plot_curves


def seed_results(path: Path) -> tuple[list[dict], float | None]:
    if path.is_dir():
        return [json.loads(p.read_text()) for p in sorted(path.glob("seed_*.json"))], None
    result = json.loads(path.read_text())
    return list(result["seeds"].values()), result.get("true_choice_success")


def normalised_curve(seed: dict) -> list[tuple[float, float]]:
    expert = seed["expert_eval"]["success_rate"]
    points = [(1.0, seed["initial_eval"]["success_rate"] / expert)]
    return points + [(r["episodes"], r["success_rate"] / expert) for r in seed["curve"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("results", nargs="+", help="LABEL=RESULT")
    parser.add_argument("--title", default="internal RL over codes that pick supervised subgoal controllers")
    parser.add_argument("--ymax", type=float, default=1.0)
    args = parser.parse_args()
    if any("=" not in a for a in args.results):
        sys.exit(__doc__.splitlines()[2].strip())
    out = args.out
    curves, references = {}, {}
    for arg in args.results:
        label, path = arg.split("=", 1)
        seeds, ceiling = seed_results(Path(path))
        curves[label] = [normalised_curve(s) for s in seeds]
        if ceiling is not None:
            expert = float(np.mean([s["expert_eval"]["success_rate"] for s in seeds]))
            references[f"ceiling: {label}"] = ceiling / expert
    plot_curves(curves, "episodes", "success / expert's", out, stat="median", logx=True, ylim=(0, args.ymax),
                references=references, title=args.title)
    print(out)


if __name__ == "__main__":
    main()
