"""Learning curves of `rl_over_subgoal_controllers.py` results (and `internal-rl rl` seed files), one figure.

    .venv/bin/python scripts/plot_rl_codes.py OUT.png LABEL=RESULT.json [LABEL=RESULT.json ...]

A RESULT is either a `rl_over_subgoal_controllers.py` output (every seed in it) or a folder of `internal-rl rl`
seed files (RUN/rl/<method>). Draws the expert-normalised success against episodes (log axis), median over
seeds with the 25-75% band, each curve starting at its held-out success before training; a result with a
true-choice ceiling also gets it as a dashed line.
"""

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
    if len(sys.argv) < 3 or any("=" not in a for a in sys.argv[2:]):
        sys.exit(__doc__.splitlines()[2].strip())
    out = Path(sys.argv[1])
    curves, references = {}, {}
    for arg in sys.argv[2:]:
        label, path = arg.split("=", 1)
        seeds, ceiling = seed_results(Path(path))
        curves[label] = [normalised_curve(s) for s in seeds]
        if ceiling is not None:
            expert = float(np.mean([s["expert_eval"]["success_rate"] for s in seeds]))
            references[f"ceiling: {label}"] = ceiling / expert
    plot_curves(curves, "episodes", "success / expert's", out, stat="median", logx=True, ylim=(0, 1),
                references=references, title="internal RL over codes that pick supervised subgoal controllers")
    print(out)


if __name__ == "__main__":
    main()
