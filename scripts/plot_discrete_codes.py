"""Figure: discrete codes found by hard EM, from random starts and from the true subgoals.

    .venv/bin/python scripts/plot_discrete_codes.py --runs NAME=OUT.json ... [--reference NAME=NLL ...] \\
        --out docs/figures/discrete_codes.png

For each `scripts/discrete_code_discovery.py` output, by EM round: the held-out action NLL with the codes
inferred segment by segment (left; a reference line per `--reference`, e.g. the supervised subgoal
controllers' NLL) and how well the codes name the subgoal (right: majority-map accuracy, with the majority
rate dotted).
"""

import argparse
import json
import sys
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def _pairs(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, _, value = item.rpartition("=")
        if not name:
            sys.exit(f"error: {item!r}: expected NAME=VALUE")
        out.append((name, value))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="NAME=discrete_code_discovery.json")
    parser.add_argument("--reference", nargs="*", default=[], help="NAME=NLL: a horizontal line on the NLL panel")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = []
    for name, path in _pairs(args.runs):
        if not Path(path).is_file():
            sys.exit(f"error: {path}: no such file")
        runs.append((name, json.loads(Path(path).read_text())["rounds"]))
    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    nll_ax, name_ax = fig.subplots(1, 2)
    colours = {}
    for name, rounds in runs:
        x = [r["round"] for r in rounds]
        line, = nll_ax.plot(x, [r["heldout_nll"] for r in rounds], marker="o", label=name)
        colours[name] = line.get_color()
        name_ax.plot(x, [r["held_out"]["subgoal_accuracy"] for r in rounds], marker="o", color=line.get_color(), label=name)
    for name, value in _pairs(args.reference):
        nll_ax.axhline(float(value), linestyle="--", color="grey", linewidth=1)
        nll_ax.annotate(name, (0, float(value)), textcoords="offset points", xytext=(2, 3), fontsize=7, color="grey")
    majority = runs[0][1][0]["held_out"]["subgoal_majority_rate"]
    name_ax.axhline(majority, linestyle=":", color="grey", linewidth=1)
    name_ax.annotate("majority", (0, majority), textcoords="offset points", xytext=(2, 3), fontsize=7, color="grey")
    nll_ax.set(xlabel="EM round", ylabel="held-out action NLL per step (codes inferred)",
               title="what 4 discrete codes explain")
    name_ax.set(xlabel="EM round", ylabel="codes -> subgoal, majority-map accuracy", ylim=(0, 1),
                title="do they name subgoals?")
    for ax in (nll_ax, name_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    nll_ax.legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
