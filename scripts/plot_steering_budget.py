"""Supervised controllers' success against their fitting budget, from `steering_diagnostics.py` results.

    .venv/bin/python scripts/plot_steering_budget.py OUT.png RESULT.json [RESULT.json ...]

Each result is one fit (its `fit.steps` x `fit.batch_size` episodes; the demo's steering-stage controllers,
`--steps 0`, count as 100 x 48). Draws expert-normalised success on the single-subgoal, override and
chained 12-colour evaluations, sampled and greedy, against the episodes the fit saw (log axis), with the
uncontrolled base model's single-subgoal rate as a reference line.
"""

import json
import sys
from pathlib import Path

from internal_rl.analysis.plots import plot_curves

EVALUATIONS = {"single": "single subgoal", "override": "override h-g", "chained_posttrain": "chained, 12 colours"}
DEMO_FIT = (100, 48)  # the quick steering preset: steps x batch


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__.splitlines()[2].strip())
    out, paths = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
    curves: dict[str, list[tuple[float, float]]] = {}
    uncontrolled = []
    for path in paths:
        result = json.loads(path.read_text())
        fit = result["fit"]
        steps, batch = (fit["steps"], fit["batch_size"]) if fit["steps"] else DEMO_FIT
        for mode, evaluation in result["modes"].items():
            if mode not in ("sampled", "greedy"):
                continue
            for key, name in EVALUATIONS.items():
                row = evaluation["controlled"][key]
                curves.setdefault(f"{name}, {mode}", []).append((steps * batch, row["normalised_success"]))
            if mode == "sampled":
                row = evaluation["uncontrolled"]["single"]
                uncontrolled.append(row["normalised_success"])
    curves = {label: sorted(points) for label, points in curves.items()}
    plot_curves(curves, "episodes seen by the fit (log scale)", "success / expert's success on the same layouts",
                out, logx=True, ylim=(-0.02, 1.02),
                references={"single subgoal, no control": sum(uncontrolled) / len(uncontrolled)},
                title="Supervised controllers at layer L/2 by fitting budget")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
